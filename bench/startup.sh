#!/usr/bin/env bash
# The start-up a user feels with the built-in RSpec runner, in one sitting:
#
# 1. A one-file run on a warm listener with 4 slots (the tree already synced by a first run)
#    against `rspec FILE` run locally in the same project, RUNS times each, taking turns
#    (target: gorgon no slower than the local `rspec FILE`).
# 2. A skewed RSpec suite on two listeners with four slots each: 64 spec files whose single
#    example sleeps, 4 x 8 s, 12 x 2 s and 48 x 0.5 s, named so that the 8 s files sort last.
#    The lower bound is max(longest file, total / slots) = max(8, 80 / 8) = 10 s. Each round
#    runs it once without history and once with the history that run wrote (targets: 1.05x
#    the lower bound with history).
# Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc, ruby and ruby-rspec (.ci/run installs them).
# Usage: bench/startup.sh  (RUNS, default 5 one-file runs and 3 skewed rounds; GORGON_BIN=path
# to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-5}
rounds=${ROUNDS:-3}
lower_bound=10

start_file_server
start_listener one 4

# 1. One file.
single=$work/single
EXAMPLES=3 spec_files "$single/spec" 1
write_config "$single" "spec/**/*_spec.rb" '{"kind": "rspec"}'
wait_for_listeners "$single" 1
# The first run syncs the tree into each listener's warm workspace.
(cd "$single" && EXPECT="1 files: 1 passed" seconds "$gorgon" start >/dev/null)
file=$(cd "$single" && ls spec/*_spec.rb)
gorgon_runs=()
rspec_runs=()
for _ in $(seq 1 "$runs"); do
    gorgon_runs+=("$(cd "$single" && EXPECT="1 files: 1 passed" seconds "$gorgon" start)")
    rspec_runs+=("$(cd "$single" && EXPECT="3 examples, 0 failures" seconds rspec "$file")")
done
gorgon_median=$(median "${gorgon_runs[@]}")
rspec_median=$(median "${rspec_runs[@]}")
echo "== one spec file (3 examples), built-in rspec runner, a warm listener with 4 slots"
echo "gorgon start:      ${gorgon_runs[*]}; median $gorgon_median s"
echo "local rspec FILE:  ${rspec_runs[*]}; median $rspec_median s"
echo "gorgon / rspec FILE: $(ratio "$gorgon_median" "$rspec_median") (target: at most 1.00)"
echo

# 2. The skewed suite, on a second listener too.
start_listener two 4
skewed=$work/skewed
mkdir -p "$skewed/spec"
sleeper() { printf 'RSpec.describe "%s" do\n  it("sleeps") { sleep %s }\nend\n' "$1" "$2" >"$skewed/spec/$1_spec.rb"; }
for i in $(seq -w 1 48); do sleeper "a_$i" 0.5; done
for i in $(seq -w 1 12); do sleeper "m_$i" 2; done
for i in $(seq -w 1 4); do sleeper "z_$i" 8; done
write_config "$skewed" "spec/*_spec.rb" '{"kind": "rspec"}' '"runtime_file": "runtime.json",'
wait_for_listeners "$skewed" 2
first=()
again=()
for _ in $(seq 1 "$rounds"); do
    rm -f "$skewed/runtime.json"
    first+=("$(cd "$skewed" && EXPECT="64 files: 64 passed" seconds "$gorgon" start)")
    again+=("$(cd "$skewed" && EXPECT="64 files: 64 passed" seconds "$gorgon" start)")
done
first_median=$(median "${first[@]}")
again_median=$(median "${again[@]}")
echo "== skewed RSpec suite (64 files, 80 s of sleeps), built-in rspec runner, 2 x 4 slots"
echo "lower bound: $lower_bound s"
echo "first run (no history): ${first[*]}"
echo "  median $first_median s, $(ratio "$first_median" "$lower_bound") x the lower bound"
echo "with history:           ${again[*]}"
echo "  median $again_median s, $(ratio "$again_median" "$lower_bound") x the lower bound (target: at most 1.05)"
