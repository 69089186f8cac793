#!/usr/bin/env bash
# Scale on one machine: 20 listeners with 10 slots each (200 workers) and 2,000 files that
# each sleep 0.1 s. The lower bound is 2,000 x 0.1 s / 200 slots = 1 s. Prints, for each of
# RUNS runs (default 3) and as medians: the wall time of `gorgon start`, that of the same
# files run with `xargs -P 200` and no distribution (targets: gorgon at most 1.3x xargs),
# and the most connections to the broker seen during the run, sampled with `ss` every
# 50 ms (target: at most 2 per listener plus the originator's). Results:
# docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc and ss (iproute2). Usage: bench/scale.sh  (LISTENERS, SLOTS,
# FILES, RUNS; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
listeners=${LISTENERS:-20}
slots=${SLOTS:-10}
files=${FILES:-2000}

start_file_server
for i in $(seq 1 "$listeners"); do
    start_listener "host$i" "$slots"
done
project=$work/scale
mkdir -p "$project/tests"
for i in $(seq -w 1 "$files"); do echo 'sleep 0.1' >"$project/tests/f_${i}_test.sh"; done
write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}'
wait_for_listeners "$project" "$listeners"
lower_bound=$(echo "$files * 0.1 / ($listeners * $slots)" | bc -l | awk '{printf "%.2f\n", $1}')

times=()
floor_times=()
slots_total=$((listeners * slots))
broker_pid=$(pgrep -f beam.smp | head -1 || true)
cpu_report=()
connections=()

# Counts the established connections to the broker's port every 50 ms until killed and
# writes the highest count to $1.
sample_connections() {
    local most=0 now
    trap 'echo "$most" >"$1"; exit 0' TERM
    while true; do
        now=$(ss -Htn state established '( dport = :5672 )' | wc -l)
        [ "$now" -gt "$most" ] && most=$now
        sleep 0.05
    done
}

for run in $(seq 1 "$runs"); do
    listeners_cpu=$(cpu_seconds "${listener_pids[@]}")
    broker_cpu=$([ -n "$broker_pid" ] && cpu_seconds "$broker_pid" || echo 0)
    sample_connections "$work/connections" &
    sampler=$!
    times+=("$(cd "$project" && seconds "$gorgon" start)")
    kill -TERM "$sampler"
    wait "$sampler" || true
    connections+=("$(cat "$work/connections")")
    listeners_cpu=$(echo "$(cpu_seconds "${listener_pids[@]}") - $listeners_cpu" | bc -l)
    broker_cpu=$([ -n "$broker_pid" ] && echo "$(cpu_seconds "$broker_pid") - $broker_cpu" | bc -l || echo "?")
    # What this machine needs just to start the files' processes with the same parallelism,
    # with no distribution at all: the practical floor here.
    TIMEFORMAT='%R %U %S'
    floor=$( { time (cd "$project" && printf '%s\0' tests/*_test.sh | xargs -0 -P "$slots_total" -n 1 sh) ; } 2>&1 )
    read -r floor_wall floor_user floor_system <<<"$floor"
    floor_times+=("$floor_wall")
    cpu_report+=("run $run: listeners and everything under them $listeners_cpu s, RabbitMQ $broker_cpu s; xargs $(echo "$floor_user + $floor_system" | bc -l) s")
done
result=$(median "${times[@]}")
floor=$(median "${floor_times[@]}")
echo "$listeners listeners x $slots slots, $files files of 0.1 s; lower bound $lower_bound s"
echo "runs: ${times[*]}"
echo "median: $result s, lower bound + $(echo "$result - $lower_bound" | bc -l | awk '{printf "%.2f", $1}') s (target: at most + 1 s)"
echo "the same files with xargs -P $slots_total (no distribution): ${floor_times[*]}; median $floor s"
echo "gorgon / xargs: $(ratio "$result" "$floor")x (target: at most 1.3x)"
echo "most broker connections during a run: ${connections[*]} (target: at most $((2 * listeners + 1)): 2 per listener plus the originator's)"
echo "CPU seconds (2 cores):"
printf '  %s\n' "${cpu_report[@]}"
