#!/usr/bin/env bash
# Shared pieces of the benchmark scripts: build or find the binary, start an rsync daemon and
# listeners on loopback with a private cluster id, write a project's gorgon.json, time runs,
# take medians, and stop everything on exit. Source it; it sets `set -euo pipefail`.
set -euo pipefail

bench_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -z "${GORGON_BIN:-}" ]; then
    (cd "$bench_repo" && cargo build --release --quiet)
    GORGON_BIN=${CARGO_TARGET_DIR:-$bench_repo/target}/release/gorgon
fi
gorgon=$(cd "$(dirname "$GORGON_BIN")" && pwd)/$(basename "$GORGON_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/gorgon-bench.XXXXXX")
cluster_id="bench-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
rsync_port=""
listener_pids=()

# shellcheck disable=SC2317  # only reached through the EXIT trap
bench_cleanup() {
    for pid in "${listener_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${listener_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$rsync_port" ]; then
        "$gorgon" stop_rsync --port "$rsync_port" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap bench_cleanup EXIT

# Starts the file server on a free port.
start_file_server() {
    mkdir -p "$work/file_server"
    for _attempt in 1 2 3 4 5 6 7 8; do
        local port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if "$gorgon" start_rsync "$work/file_server" --port "$port" --address 127.0.0.1 --anonymous >/dev/null 2>&1; then
            rsync_port=$port
            return
        fi
    done
    echo "error: could not start an rsync daemon" >&2
    exit 1
}

# start_listener NAME SLOTS [BROKER_PORT]: starts a listener of the bench cluster, whose broker
# is at 127.0.0.1:BROKER_PORT (default 5672).
start_listener() {
    local name=$1 slots=$2 broker_port=${3:-5672}
    mkdir -p "$work/listeners/$name"
    cat >"$work/listeners/$name/gorgon_listener.json" <<JSON
{"connection": {"host": "127.0.0.1", "port": $broker_port}, "worker_slots": $slots, "name": "$name",
 "workspace_root": "$work/listeners/$name/workspaces", "cluster_id": "$cluster_id",
 "allow_root": true}
JSON
    setsid "$gorgon" listen --config "$work/listeners/$name/gorgon_listener.json" \
        </dev/null >"$work/listeners/$name/log" 2>&1 &
    listener_pids+=($!)
}

# start_one_host NAME SLOTS: the file server and one listener, the cluster most benches use.
start_one_host() {
    start_file_server
    start_listener "$1" "$2"
}

# wait_for_listeners PROJECT_DIR COUNT: until `gorgon ping` counts COUNT listeners (60 s).
wait_for_listeners() {
    local dir=$1 count=$2
    for _ in $(seq 1 300); do
        if (cd "$dir" && "$gorgon" ping --timeout 0.5 2>/dev/null) | grep -q "^$count listener(s)"; then
            return
        fi
        sleep 0.2
    done
    echo "error: $count listeners did not come up" >&2
    exit 1
}

# write_config PROJECT_DIR GLOB RUNNER_JSON [EXTRA_JSON_KEYS [EXTRA_JOB_KEYS]]: the project's
# gorgon.json; each EXTRA is keys with a trailing comma (EXTRA_JOB_KEYS inside `job`).
write_config() {
    local dir=$1 glob=$2 runner=$3 extra=${4:-} job_extra=${5:-}
    cat >"$dir/gorgon.json" <<JSON
{
  "connection": {"host": "127.0.0.1", "port": 5672},
  "file_server": {"host": "127.0.0.1", "port": $rsync_port},
  "files": ["$glob"],
  "cluster_id": "$cluster_id",
  "failed_files": "$work/failed.json",
  ${extra}
  "job": {${job_extra} "runner": $runner, "listener_wait": 60}
}
JSON
}

# unserved_project DIR: a project of 100,000 empty files whose job no listener takes (a
# cluster of its own, a listener wait of 3 s): the originator queues them all, waits, gives up.
unserved_project() {
    local dir=$1
    mkdir -p "$dir/tests"
    seq 1 100000 | sed 's|.*|tests/f_&_test.sh|' | (cd "$dir" && xargs touch)
    write_config "$dir" "tests/*_test.sh" '{"command": "sh {file}"}'
    sed -i "s/\"cluster_id\": \"$cluster_id\"/\"cluster_id\": \"$cluster_id-nobody\"/; s/\"listener_wait\": 60/\"listener_wait\": 3/" "$dir/gorgon.json"
}

# impact_dry_run DIR BASE LIST TOLD [ARG...]: what `gorgon start --local -j 2 --changed BASE
# --explain --dry-run [ARG...]` in DIR would run, from a dry run that runs nothing: the files
# in LIST, what it says of them (the reasons; "Running all" when everything runs) in TOLD.
# Fails, printing what it said, when the dry run fails: its empty list would count as a
# selection of nothing. RUN_TIMEOUT bounds it (seconds, default 1800).
impact_dry_run() {
    local dir=$1 base=$2 list=$3 told=$4
    shift 4
    if ! (cd "$dir" && timeout -k 30 "${RUN_TIMEOUT:-1800}" "$gorgon" start --local -j 2 \
        --changed "$base" --explain --dry-run "$@") </dev/null >"$list" 2>"$told"; then
        echo "error: the dry run of the selection failed:" >&2
        cat "$told" >&2
        return 1
    fi
}

# peak_rss DIR: the peak RSS (kB) of one `gorgon start` in DIR, which may fail.
peak_rss() {
    (cd "$1" && /usr/bin/time -f "%M" -o "$work/peak.rss" "$gorgon" start >/dev/null 2>&1) || true
    tail -1 "$work/peak.rss"
}

# seconds COMMAND...: runs COMMAND quietly and prints its wall time in seconds; fails the
# benchmark when the command fails, or when EXPECT is set and its output lacks that text.
seconds() {
    local start end
    start=$(date +%s.%N)
    if ! "$@" </dev/null >"$work/last.out" 2>"$work/last.err"; then
        echo "error: $* failed:" >&2
        tail -n 20 "$work/last.out" "$work/last.err" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    if [ -n "${EXPECT:-}" ] && ! grep -q "$EXPECT" "$work/last.out"; then
        echo "error: the output of $* lacks '$EXPECT':" >&2
        tail -n 20 "$work/last.out" >&2
        exit 1
    fi
    echo "$end - $start" | bc -l | awk '{printf "%.3f\n", $1}'
}

# gorgon_runs PROJECT RUNS: RUNS runs of `gorgon start` in PROJECT, their wall times (in the
# array `times`), each checked against EXPECT as `seconds` does.
gorgon_runs() {
    local project=$1 runs=$2
    times=()
    for _ in $(seq 1 "$runs"); do
        times+=("$(cd "$project" && seconds "$gorgon" start)")
    done
}

# median NUMBER...: the median of the numbers.
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# skewed_suite WRITE: the skewed suite of skewed.sh and startup.sh, 64 files whose single
# test sleeps: 48 x 0.5 s, 12 x 2 s and 4 x 8 s, named (a_, m_, z_) so that the 8 s files
# sort last. `WRITE NAME SECONDS` writes one file. On 8 slots its lower bound is
# max(longest file, total / slots) = max(8, 80 / 8) = 10 s.
skewed_lower_bound=10
skewed_suite() {
    local write=$1 i
    for i in $(seq -w 1 48); do "$write" "a_$i" 0.5; done
    for i in $(seq -w 1 12); do "$write" "m_$i" 2; done
    for i in $(seq -w 1 4); do "$write" "z_$i" 8; done
}

# skewed_rounds DIR ROUNDS FIRST_TARGET: runs the skewed suite in DIR (its config writes
# runtime.json there) ROUNDS times without history and each time again with the history that
# run wrote, with EXPECT as `seconds` takes it; prints both series, their medians and their
# ratios to the lower bound (FIRST_TARGET, when not empty, is the first run's target).
skewed_rounds() {
    local dir=$1 rounds=$2 first_target=$3 first=() again=() first_median again_median
    for _ in $(seq 1 "$rounds"); do
        rm -f "$dir/runtime.json"
        first+=("$(cd "$dir" && seconds "$gorgon" start)")
        again+=("$(cd "$dir" && seconds "$gorgon" start)")
    done
    first_median=$(median "${first[@]}")
    again_median=$(median "${again[@]}")
    echo "lower bound: $skewed_lower_bound s"
    echo "first run (no history): ${first[*]}"
    echo "  median $first_median s, $(ratio "$first_median" "$skewed_lower_bound") x the lower bound${first_target:+ (target: at most $first_target)}"
    echo "with history:           ${again[*]}"
    echo "  median $again_median s, $(ratio "$again_median" "$skewed_lower_bound") x the lower bound (target: at most 1.05)"
}

# spec_files DIR COUNT: COUNT trivial spec files, the same every time, each with EXAMPLES
# (default 1) passing examples.
spec_files() {
    local dir=$1 count=$2 examples=${EXAMPLES:-1}
    mkdir -p "$dir"
    for i in $(seq -w 1 "$count"); do
        {
            echo "RSpec.describe \"generated $i\" do"
            for e in $(seq 1 "$examples"); do
                echo "  it(\"passes $e\") { expect($((10#$i)) + $e).to eq($((10#$i + e))) }"
            done
            echo "end"
        } >"$dir/generated_${i}_spec.rb"
    done
}

# cpu_seconds PID...: CPU seconds used so far by the processes and by their descendants that
# have been waited for (user + system, /proc/PID/stat fields 14 to 17).
cpu_seconds() {
    local ticks=0 pid
    for pid in "$@"; do
        ticks=$((ticks + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
    done
    echo "$ticks / $(getconf CLK_TCK)" | bc -l | awk '{printf "%.2f\n", $1}'
}

# ratio A B: A / B with two decimals.
ratio() {
    echo "$1 / $2" | bc -l | awk '{printf "%.2f\n", $1}'
}
