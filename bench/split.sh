#!/usr/bin/env bash
# Slow files split into their tests: one RSpec file of 30 one-second examples (30 s) among 60
# quick files, one listener with 8 slots, the built-in `rspec` runner. The first run records
# timings (the slow file's examples too); the next runs split the slow file into its examples,
# because alone it is longer than the run's lower bound would otherwise be. Prints the first
# run and the median of RUNS later runs (default 3). Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc, ruby and ruby-rspec. Usage: bench/split.sh
# (RUNS; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}

start_one_host wide 8
project=$work/split
spec_files "$project/spec" 60
{
    echo 'RSpec.describe "slow" do'
    for i in $(seq 1 30); do
        echo "  it(\"takes a second $i\") { sleep 1; expect($i).to eq($i) }"
    done
    echo 'end'
} >"$project/spec/slow_spec.rb"
write_config "$project" "spec/**/*_spec.rb" '{"kind": "rspec"}' '"runtime_file": "runtime.json",'
wait_for_listeners "$project" 1

first=$(cd "$project" && EXPECT="61 files: 61 passed" seconds "$gorgon" start)
EXPECT="90 files: 90 passed" gorgon_runs "$project" "$runs"
split=("${times[@]}")
split_median=$(median "${split[@]}")
echo "one 30 s file of 30 tests among 60 quick files, 8 slots; lower bound with splitting: about 30 s / 8 = 3.75 s"
echo "first run (no history, the file runs whole): $first s"
echo "later runs (split into its 30 tests): ${split[*]}; median $split_median s"
echo "splitting made the run $(ratio "$first" "$split_median")x faster"
