#!/usr/bin/env bash
# Far hosts: the same suite on two listeners with two slots each, near (on loopback beside
# the broker and the file server) and far (behind a delaying TCP proxy, examples/delay_proxy.rs,
# that delays every chunk by D ms each way on their links to both the broker and the file
# server), in turns in one sitting, at each D of DELAYS. The originator stays beside the
# broker. Prints each series, the medians, far / near, far - near in round trips, and the
# lower bound (FILES x 0.05 s / 4 slots). Results: docs/benchmarks.md.
#
# The listeners' rsync pulls reach the file server through the proxy by RSYNC_CONNECT_PROG
# (socat), so that the originator's push stays near.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, socat and bc. Usage: bench/far.sh  (RUNS rounds,
# default 3; FILES, default 200; DELAYS in ms each way, default "25 5"; GORGON_BIN=path to
# skip the build of gorgon)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
files=${FILES:-200}
delays=${DELAYS:-25 5}

(cd "$bench_repo" && cargo build --release --quiet --example delay_proxy)
delay_proxy=${CARGO_TARGET_DIR:-$bench_repo/target}/release/examples/delay_proxy
proxy_pids=()
# shellcheck disable=SC2317  # only reached through the EXIT trap
far_cleanup() {
    for pid in "${proxy_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    bench_cleanup
}
trap far_cleanup EXIT

start_file_server
base_cluster=$cluster_id

# place NAME AMQP_PORT [FILE_SERVER_PORT]: two listeners of 2 slots in a cluster of their own
# whose broker is at AMQP_PORT (and file server, for their pulls, at FILE_SERVER_PORT), and a
# project that runs the suite on them.
place() {
    local name=$1 amqp_port=$2 fs_port=${3:-} project=$work/$1
    cluster_id=$base_cluster-$name
    mkdir -p "$project/tests"
    for i in $(seq -w 1 "$files"); do echo "sleep 0.05" >"$project/tests/t_${i}_test.sh"; done
    write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}'
    for side in left right; do
        if [ -n "$fs_port" ]; then
            RSYNC_CONNECT_PROG="socat - TCP:127.0.0.1:$fs_port" start_listener "$name-$side" 2 "$amqp_port"
        else
            start_listener "$name-$side" 2 "$amqp_port"
        fi
    done
    wait_for_listeners "$project" 2
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

# One round: near, then each distance, so that the machine's moods fall on all of them.
declare -A walls
for _ in $(seq 1 "$runs"); do
    for place in near $(printf 'far%s ' $delays); do
        walls[$place]+="$(cd "$work/$place" && EXPECT="$files files: $files passed" seconds "$gorgon" start) "
    done
done

lower_bound=$(echo "$files * 0.05 / 4" | bc -l | awk '{printf "%.2f\n", $1}')
# shellcheck disable=SC2086  # the walls are words
near_median=$(median ${walls[near]})
echo "$files files of sleep 0.05 on 2 listeners x 2 slots, $runs rounds; lower bound $lower_bound s"
echo "near:        ${walls[near]}; median $near_median s"
for delay in $delays; do
    # shellcheck disable=SC2086
    far_median=$(median ${walls[far$delay]})
    round_trips=$(echo "($far_median - $near_median) / (2 * $delay / 1000)" | bc -l | awk '{printf "%.0f\n", $1}')
    echo "far, $delay ms: ${walls[far$delay]}; median $far_median s, $(ratio "$far_median" "$near_median") x near, $(echo "$far_median - $near_median" | bc -l | awk '{printf "%+.2f", $1}') s = $round_trips round trips"
done
