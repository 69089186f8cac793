#!/usr/bin/env bash
# gorgon-rs's own overhead, measured against what a run cannot avoid:
#   1. a one-file run with a warm listener and an unchanged tree (target: at most 0.3 s);
#   2. 2,000 empty files with the `command` runner (`sh {file}`) on one listener with four
#      slots, against GNU parallel running the same files four at a time (target: at most
#      1.5 times parallel's time);
#   3. memory: an idle listener's RSS (target: at most 10 MB) and the originator's peak RSS
#      with 100,000 queued files (target: at most 100 MB).
# Prints medians of RUNS runs (default 5) and the ratios. Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc and GNU parallel (apt-get install parallel bc).
# Usage: bench/overhead.sh    (RUNS=N, GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-5}

start_one_host one 4
mkdir -p "$work/single/tests" "$work/many/tests" "$work/huge/tests"
echo 'exit 0' >"$work/single/tests/only_test.sh"
write_config "$work/single" "tests/*_test.sh" '{"command": "sh {file}"}'
wait_for_listeners "$work/single" 1

echo "== one-file run, warm listener, unchanged tree"
(cd "$work/single" && "$gorgon" start >/dev/null 2>&1) # warms the file server's copy
times=()
for _ in $(seq 1 "$runs"); do
    times+=("$(cd "$work/single" && seconds "$gorgon" start)")
done
one_file=$(median "${times[@]}")
echo "runs: ${times[*]}"
echo "median: $one_file s (target: at most 0.3 s)"

echo
echo "== 2,000 empty files, command runner, 1 listener x 4 slots, against GNU parallel -j4"
for i in $(seq -w 1 2000); do
    : >"$work/many/tests/empty_${i}_test.sh"
done
write_config "$work/many" "tests/*_test.sh" '{"command": "sh {file}"}'
gorgon_times=()
parallel_times=()
for _ in $(seq 1 "$runs"); do
    gorgon_times+=("$(cd "$work/many" && seconds "$gorgon" start)")
    parallel_times+=("$(cd "$work/many" && seconds sh -c 'parallel -j4 sh ::: tests/*_test.sh')")
done
gorgon_median=$(median "${gorgon_times[@]}")
parallel_median=$(median "${parallel_times[@]}")
echo "gorgon runs:   ${gorgon_times[*]}"
echo "parallel runs: ${parallel_times[*]}"
echo "median: gorgon $gorgon_median s, parallel $parallel_median s, ratio $(ratio "$gorgon_median" "$parallel_median") (target: at most 1.5)"

echo
echo "== memory"
listener_rss=$(awk '/VmRSS/ {print $2}' "/proc/${listener_pids[0]}/status")
echo "idle listener RSS: $((listener_rss / 1024)) MB ($listener_rss kB) (target: at most 10 MB)"
unserved_project "$work/huge"
originator_rss=$(peak_rss "$work/huge")
echo "originator peak RSS with 100,000 queued files: $((originator_rss / 1024)) MB ($originator_rss kB) (target: at most 100 MB)"
