#!/usr/bin/env bash
# A skewed suite on two listeners with four slots each: 64 files whose single test sleeps,
# 4 x 8 s, 12 x 2 s and 48 x 0.5 s, named so that the 8 s files sort last. The lower bound is
# max(longest file, total / slots) = max(8, 80 / 8) = 10 s. Each round runs the suite once
# without history (no runtime file) and once with the history that run wrote, and prints the
# medians and their ratios to the lower bound (targets: 1.3 without history, 1.05 with).
# Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync and bc. Usage: bench/skewed.sh  (RUNS=N rounds,
# default 3; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
lower_bound=10

start_file_server
start_listener left 4
start_listener right 4
project=$work/skewed
mkdir -p "$project/tests"
for i in $(seq -w 1 48); do echo 'sleep 0.5' >"$project/tests/a_${i}_test.sh"; done
for i in $(seq -w 1 12); do echo 'sleep 2' >"$project/tests/m_${i}_test.sh"; done
for i in $(seq -w 1 4); do echo 'sleep 8' >"$project/tests/z_${i}_test.sh"; done
write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}' '"runtime_file": "runtime.json",'
wait_for_listeners "$project" 2

first=()
again=()
for _ in $(seq 1 "$runs"); do
    rm -f "$project/runtime.json"
    first+=("$(cd "$project" && seconds "$gorgon" start)")
    again+=("$(cd "$project" && seconds "$gorgon" start)")
done
first_median=$(median "${first[@]}")
again_median=$(median "${again[@]}")
echo "lower bound: $lower_bound s"
echo "first run (no history): ${first[*]}"
echo "  median $first_median s, $(ratio "$first_median" "$lower_bound") x the lower bound (target: at most 1.3)"
echo "with history:           ${again[*]}"
echo "  median $again_median s, $(ratio "$again_median" "$lower_bound") x the lower bound (target: at most 1.05)"
