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

start_one_host one 4

# 1. One file.
single=$work/single
EXAMPLES=3 spec_files "$single/spec" 1
write_config "$single" "spec/**/*_spec.rb" '{"kind": "rspec"}'
wait_for_listeners "$single" 1
# The first run syncs the tree into each listener's warm workspace.
(cd "$single" && EXPECT="1 file: 1 passed" seconds "$gorgon" start >/dev/null)
file=$(cd "$single" && ls spec/*_spec.rb)
gorgon_runs=()
rspec_runs=()
for _ in $(seq 1 "$runs"); do
    gorgon_runs+=("$(cd "$single" && EXPECT="1 file: 1 passed" seconds "$gorgon" start)")
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
write_spec() { printf 'RSpec.describe "%s" do\n  it("sleeps") { sleep %s }\nend\n' "$1" "$2" >"$skewed/spec/$1_spec.rb"; }
skewed_suite write_spec
write_config "$skewed" "spec/*_spec.rb" '{"kind": "rspec"}' '"runtime_file": "runtime.json",'
wait_for_listeners "$skewed" 2
echo "== skewed RSpec suite (64 files, 80 s of sleeps), built-in rspec runner, 2 x 4 slots"
EXPECT="64 files: 64 passed" skewed_rounds "$skewed" "$rounds" ""
