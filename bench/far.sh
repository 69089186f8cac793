#!/usr/bin/env bash
# Far hosts: the same suite on two listeners with two slots each, near (on loopback beside
# the broker and the file server) and far (behind a delaying TCP proxy, examples/delay_proxy.rs,
# that delays every chunk by D ms each way on their links to both the broker and the file
# server), in turns in one sitting, at each D of DELAYS. The originator stays beside the
# broker. Then the same suite as a CI build on three `gorgon work` nodes of two slots each
# (docs/ci-builds.md), near and with the nodes' links to the broker behind the proxy, its
# reporter (`gorgon report`) beside the broker. Prints each series, the medians, far / near,
# far - near in round trips, and the lower bound (FILES x 0.05 s / slots). Results:
# docs/benchmarks.md.
#
# The listeners' rsync pulls reach the file server through the proxy by RSYNC_CONNECT_PROG
# (socat), so that the originator's push stays near.
#
# Both keep a runtime file, outside the tree (an unchanged tree is not pulled again), so
# that every run but the first has the history a real suite has.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, socat and bc. Usage: bench/far.sh  (RUNS rounds,
# default 3; FILES, default 200; DELAYS in ms each way, default "25 5"; CI_NODES, default 3,
# 0 for no CI build; GORGON_BIN=path to skip the build of gorgon, DELAY_PROXY=path that of
# the proxy; LOGS=folder to keep the listeners' logs and the builds' output there, with
# GORGON_LOG=debug to count a run's round trips).
#
# SUITE=rubocop runs a real suite instead: RuboCop's cop specs (bench/real-suites.sh fetches
# them) with the built-in rspec runner, on the listeners only; every run's summary line must
# be the same, near and far, and far / near is the figure (target: at most 1.10).
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
files=${FILES:-200}
delays=${DELAYS:-25 5}

ci_nodes=${CI_NODES:-3}
suite_kind=${SUITE:-sleep}
case $suite_kind in
sleep) ;;
rubocop)
    # shellcheck source=bench/real-suites.sh
    . "$bench_repo/bench/real-suites.sh"
    prepare_rspec
    ci_nodes=0
    ;;
*)
    echo "usage: SUITE=sleep|rubocop $0" >&2
    exit 2
    ;;
esac

if [ -z "${DELAY_PROXY:-}" ]; then
    (cd "$bench_repo" && cargo build --release --quiet --example delay_proxy)
    DELAY_PROXY=${CARGO_TARGET_DIR:-$bench_repo/target}/release/examples/delay_proxy
fi
delay_proxy=$DELAY_PROXY
proxy_pids=()
# shellcheck disable=SC2317  # only reached through the EXIT trap
far_cleanup() {
    for pid in "${proxy_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "${LOGS:-}" ]; then
        mkdir -p "$LOGS"
        for log in "$work"/listeners/*/log "$work"/*.out; do
            [ -e "$log" ] && cp "$log" "$LOGS/$(basename "$(dirname "$log")")-$(basename "$log")"
        done
    fi
    bench_cleanup
}
trap far_cleanup EXIT

start_file_server
base_cluster=$cluster_id

# suite PROJECT: the suite and its gorgon.json, its runtime file beside the project.
suite() {
    local project=$1
    if [ "$suite_kind" = rubocop ]; then
        cp -a "$rspec_tree" "$project"
        write_config "$project" "spec/rubocop/cop/**/*_spec.rb" \
            '{"kind": "rspec", "command": "", "file_timeout": 600}' \
            "\"runtime_file\": \"$project.runtime.json\","
        return
    fi
    mkdir -p "$project/tests"
    for i in $(seq -w 1 "$files"); do echo "sleep 0.05" >"$project/tests/t_${i}_test.sh"; done
    write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}' \
        "\"runtime_file\": \"$project.runtime.json\","
}

# place NAME AMQP_PORT [FILE_SERVER_PORT]: two listeners of 2 slots in a cluster of their own
# whose broker is at AMQP_PORT (and file server, for their pulls, at FILE_SERVER_PORT), and a
# project that runs the suite on them.
place() {
    local name=$1 amqp_port=$2 fs_port=${3:-} project=$work/$1
    cluster_id=$base_cluster-$name
    suite "$project"
    for side in left right; do
        if [ -n "$fs_port" ]; then
            RSYNC_CONNECT_PROG="socat - TCP:127.0.0.1:$fs_port" start_listener "$name-$side" 2 "$amqp_port"
        else
            start_listener "$name-$side" 2 "$amqp_port"
        fi
    done
    wait_for_listeners "$project" 2
}

# checkouts NAME: the suite in CI_NODES checkouts of its own (NAME-ci-1, ...), for `gorgon
# work`, and one for the reporter (NAME-ci-0).
checkouts() {
    local name=$1 node
    suite "$work/$name-ci-0"
    for node in $(seq 1 "$ci_nodes"); do
        cp -r "$work/$name-ci-0" "$work/$name-ci-$node"
    done
}

# ci_build NAME AMQP_PORT: one build of the suite on the CI_NODES nodes of NAME, their broker
# at AMQP_PORT, reported beside the broker; prints its wall time, from the nodes' start to
# the end of the last of them and the reporter. Their configs name one runtime file, which
# the reporter writes and the nodes read, as a CI's cache would give it them.
ci_build() {
    local name=$1 amqp_port=$2 build node pids=() start end
    build="far-$name-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    start=$(date +%s.%N)
    for node in $(seq 1 "$ci_nodes"); do
        (cd "$work/$name-ci-$node" &&
            GORGON_BROKER_URL="amqp://guest:guest@127.0.0.1:$amqp_port/%2f" \
                "$gorgon" work --build-id "$build" --worker-id "node-$node" -j 2 -q \
                </dev/null >"$work/$name-ci-$node.out" 2>&1) &
        pids+=($!)
    done
    if ! (cd "$work/$name-ci-0" && "$gorgon" report --build-id "$build" \
        </dev/null >"$work/$name-ci-0.out" 2>&1); then
        echo "error: build $build failed:" >&2
        tail -n 20 "$work/$name-ci-0.out" >&2
        exit 1
    fi
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "error: a node of build $build failed" >&2; exit 1; }
    done
    end=$(date +%s.%N)
    grep -q "$files files: $files passed" "$work/$name-ci-0.out" || {
        echo "error: build $build lacks its files:" >&2
        tail -n 20 "$work/$name-ci-0.out" >&2
        exit 1
    }
    echo "$end - $start" | bc -l | awk '{printf "%.3f\n", $1}'
}

place near 5672
for delay in $delays; do
    "$delay_proxy" "$delay" 127.0.0.1:5672 "127.0.0.1:$rsync_port" >"$work/proxy-$delay" &
    proxy_pids+=($!)
    for _ in $(seq 1 50); do
        [ "$(cat "$work/proxy-$delay" 2>/dev/null | wc -l)" -ge 2 ] && break
        sleep 0.1
    done
    place "far$delay" "$(sed -n 1p "$work/proxy-$delay")" "$(sed -n 2p "$work/proxy-$delay")"
done

declare -A amqp_ports=([near]=5672)
for delay in $delays; do
    amqp_ports[far$delay]=$(sed -n 1p "$work/proxy-$delay")
done
if [ "$ci_nodes" -gt 0 ]; then
    for place in near $(printf 'far%s ' $delays); do checkouts "$place"; done
fi

# timed_start PLACE: the wall time of one `gorgon start` of PLACE's project. The sleep suite
# must pass whole; a real suite's summary line must be the same in every run (its own
# failures in this environment are its own, and the same near and far).
timed_start() {
    local place=$1
    if [ "$suite_kind" = sleep ]; then
        (cd "$work/$place" && EXPECT="$files files: $files passed" seconds "$gorgon" start)
        return
    fi
    local start end summary
    start=$(date +%s.%N)
    (cd "$work/$place" && "$gorgon" start </dev/null >"$work/last.out" 2>&1) || true
    end=$(date +%s.%N)
    summary="$(grep -E "^[0-9]+ files: " "$work/last.out" | tail -n 1 | sed 's/ in [0-9.]* s$//') | $(grep -E "^Tests: " "$work/last.out" | tail -n 1)"
    echo "$place: $summary" >>"$work/summaries"
    if ! grep -qE "^[0-9]+ files: " "$work/last.out" || ! grep -qE "^Tests: " "$work/last.out"; then
        echo "error: a run of $place has no report:" >&2
        tail -n 20 "$work/last.out" >&2
        exit 1
    fi
    echo "$end - $start" | bc -l | awk '{printf "%.3f\n", $1}'
}

# One round: near, then each distance, so that the machine's moods fall on all of them.
declare -A walls ci_walls
for _ in $(seq 1 "$runs"); do
    for place in near $(printf 'far%s ' $delays); do
        walls[$place]+="$(timed_start "$place") "
        if [ "$ci_nodes" -gt 0 ]; then
            ci_walls[$place]+="$(ci_build "$place" "${amqp_ports[$place]}") "
        fi
    done
done

# report TITLE SLOTS WALLS_ARRAY_NAME: the series, medians and far - near in round trips.
report() {
    local title=$1 slots=$2 delay far_median near_median round_trips lower_bound
    local -n series=$3
    lower_bound=$(echo "$files * 0.05 / $slots" | bc -l | awk '{printf "%.2f\n", $1}')
    # shellcheck disable=SC2086  # the walls are words
    near_median=$(median ${series[near]})
    if [ "$suite_kind" = sleep ]; then
        echo "$files files of sleep 0.05 on $title, $runs rounds; lower bound $lower_bound s"
    else
        echo "RuboCop's cop specs on $title, $runs rounds"
    fi
    echo "near:        ${series[near]}; median $near_median s"
    for delay in $delays; do
        # shellcheck disable=SC2086
        far_median=$(median ${series[far$delay]})
        round_trips=$(echo "($far_median - $near_median) / (2 * $delay / 1000)" | bc -l | awk '{printf "%.0f\n", $1}')
        echo "far, $delay ms: ${series[far$delay]}; median $far_median s, $(ratio "$far_median" "$near_median") x near, $(echo "$far_median - $near_median" | bc -l | awk '{printf "%+.2f", $1}') s = $round_trips round trips"
    done
}

report "2 listeners x 2 slots" 4 walls
if [ "$suite_kind" != sleep ]; then
    echo "summaries (each must be the same):"
    sort "$work/summaries" | uniq -c
    if [ "$(cut -d: -f2- "$work/summaries" | sort -u | wc -l)" -ne 1 ]; then
        echo "error: the runs' summaries differ" >&2
        exit 1
    fi
fi
if [ "$ci_nodes" -gt 0 ]; then
    report "$ci_nodes gorgon work nodes x 2 slots" $((ci_nodes * 2)) ci_walls
fi
