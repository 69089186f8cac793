#!/usr/bin/env bash
# A trivial suite: 1,000 RSpec files with one passing example each, one listener with four
# slots, the built-in `rspec` runner, against one serial `rspec` process running the same files
# on this machine. Prints the medians of RUNS runs (default 3) and the ratio (target: gorgon at
# most 3 times the serial time). Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc, ruby and ruby-rspec (.ci/run installs them).
# Usage: bench/trivial.sh  (RUNS, FILES; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
files=${FILES:-1000}

start_one_host bench 4
project=$work/project
spec_files "$project/spec" "$files"
write_config "$project" "spec/**/*_spec.rb" '{"kind": "rspec"}'
wait_for_listeners "$project" 1

gorgon_times=()
serial_times=()
for _ in $(seq 1 "$runs"); do
    gorgon_times+=("$(cd "$project" && EXPECT="$files files: $files passed" seconds "$gorgon" start)")
    serial_times+=("$(cd "$project" && EXPECT="$files examples, 0 failures" seconds rspec spec)")
done
gorgon_median=$(median "${gorgon_times[@]}")
serial_median=$(median "${serial_times[@]}")
echo "$files spec files of one example, 1 listener with 4 slots, $runs runs each"
echo "gorgon start (built-in rspec): ${gorgon_times[*]}; median $gorgon_median s"
echo "one serial rspec process:      ${serial_times[*]}; median $serial_median s"
echo "gorgon takes $(ratio "$gorgon_median" "$serial_median")x the serial time (target: at most 3x)"
