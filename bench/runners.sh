#!/usr/bin/env bash
# The built-in persistent `rspec` runner (one Ruby per worker loads RSpec once and forks per
# file or batch of quick files) against the `command` runner `rspec {file}` (one Ruby per file): 300 trivial spec files
# of three examples each, one listener with four slots, RUNS runs each (default 3); prints the
# medians and the ratio (target: the persistent runner at least 5 times faster end to end).
# Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc, ruby and ruby-rspec (.ci/run installs them).
# Usage: bench/runners.sh  (RUNS, FILES; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
files=${FILES:-300}

start_one_host bench 4
project=$work/project
EXAMPLES=3 spec_files "$project/spec" "$files"
write_config "$project" "spec/**/*_spec.rb" '{"kind": "rspec"}'
wait_for_listeners "$project" 1

persistent=()
command=()
for _ in $(seq 1 "$runs"); do
    write_config "$project" "spec/**/*_spec.rb" '{"kind": "rspec"}'
    persistent+=("$(cd "$project" && EXPECT="$files files: $files passed" seconds "$gorgon" start)")
    write_config "$project" "spec/**/*_spec.rb" '{"kind": "command", "command": "rspec {file}"}'
    command+=("$(cd "$project" && EXPECT="$files files: $files passed" seconds "$gorgon" start)")
done
persistent_median=$(median "${persistent[@]}")
command_median=$(median "${command[@]}")
echo "$files spec files, 1 listener with 4 slots, $runs runs each"
echo "built-in rspec runner: ${persistent[*]}; median $persistent_median s"
echo "rspec {file}:          ${command[*]}; median $command_median s"
echo "the persistent runner is $(ratio "$command_median" "$persistent_median")x faster (target: at least 5x)"
