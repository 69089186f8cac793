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

start_file_server
start_listener left 4
start_listener right 4
project=$work/skewed
mkdir -p "$project/tests"
write_test() { echo "sleep $2" >"$project/tests/$1_test.sh"; }
skewed_suite write_test
write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}' '"runtime_file": "runtime.json",'
wait_for_listeners "$project" 2
skewed_rounds "$project" "$runs" 1.3
