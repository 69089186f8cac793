#!/usr/bin/env bash
# Test impact on real suites (docs/impact.md): is `gorgon start --changed` safe? For a suite of
# bench/real-suites.sh (networkx's pytest suite, RuboCop's RSpec suite):
#   1. once: a git repository of the pristine tree, a recording run (`--record-impact`, the
#      map) and a plain run; the files that fail in either are the suite's own failures;
#   2. for each of N seeded random single-line mutations of its source files (not its tests:
#      a comparison flipped, a decimal constant plus one, a line dropped; bench/impact_mutants.py
#      draws them, and rejects those that do not parse or, in Python, change no syntax tree):
#      the full run with the mutation, `gorgon start --local -j 2`, kept as
#      $state_dir/full/ID.events (made once: a later judgement takes the kept one), and the
#      selection, from a dry run that runs nothing, `gorgon start --local -j 2 --changed BASE
#      --explain --dry-run`: its list of files, or everything when it says "Running all". A
#      test file that fails in the full run and in neither pristine run is broken by the
#      mutation; a broken file the selection left out is run again alone with the mutation,
#      and is a miss if it fails there too.
#   3. the figures: recall (over the mutations that broke a file, over all of them, over the
#      broken files), the mean share of files and of time selected (time: the full run's
#      per-file seconds), the worst case, and every miss with its mutation.
# Resumable: each mutation's result is a line of the state file, under
# $GORGON_SUITES/impact/SUITE/ with the tree, the map, the kept full runs and the list of
# mutations; a second invocation continues after the last line. Recall is not a timing: no
# lock is needed, and `nice -n 19` suits the loop. FRESH=1 starts again from nothing (a new
# tree and map).
# Usage: bench/impact.sh networkx|rubocop [N]   (N default 100; SEED default 32;
# GORGON_BIN=path to skip the build; RUN_TIMEOUT seconds per run, default 1800;
# SUMMARY_ONLY=1 prints the figures of the state file and runs nothing;
# FULL_ONLY=1 makes and keeps the full runs only, see full_one;
# REMAP=1 first records the map again (and makes a plain run) on the pristine tree with this
# binary, see remap;
# RESELECT=1 judges again, with this binary and map, every mutation whose full run is kept,
# into results-seedSEED.reselect.jsonl (its own state: remove it, or REMAP, to start it
# again), running no full run: a reselection costs the dry runs and the misses' runs alone.
# After a change to the selection: REMAP=1 RESELECT=1 bench/impact.sh SUITE N)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/real-suites.sh
. "$bench_repo/bench/real-suites.sh"

suite=${1:-}
count=${2:-100}
seed=${SEED:-32}
run_timeout=${RUN_TIMEOUT:-1800}
helper=$bench_repo/bench/impact_mutants.py
case $suite in
networkx)
    prepare_pytest
    pristine=$pytest_tree language=python glob="networkx/**/test_*.py"
    runner="{\"kind\": \"pytest\", \"command\": \"$pytest_venv/bin/python\", \"args\": [\"-p\", \"no:cacheprovider\"]}"
    file_timeout=120
    ignored='__pycache__/\n*.pyc\n'
    ;;
rubocop)
    prepare_rspec
    # Defined order: RuboCop's spec_helper asks for random order, whose failures vary by seed.
    pristine=$rspec_tree language=ruby glob="spec/**/*_spec.rb"
    runner='{"kind": "rspec", "args": ["--order", "defined"]}'
    file_timeout=300
    ignored='spec/examples.txt\ntmp/\n.cache/\n'
    ;;
*)
    echo "usage: $0 networkx|rubocop [N]" >&2
    exit 2
    ;;
esac
state_dir=$suites_root/impact/$suite
tree=$state_dir/tree
state=$state_dir/results-seed$seed.jsonl
reselected=$state_dir/results-seed$seed.reselect.jsonl
# RESELECT=1 judges the kept full runs again, into a state file of its own.
[ -z "${RESELECT:-}" ] || state=$reselected
mutants=$state_dir/mutants-seed$seed.jsonl
runtime=$tree/gorgon-runtime.json

# run NAME ARGS...: `gorgon start --local` in the tree with ARGS, its events in
# $state_dir/NAME.events and its output in $state_dir/NAME.out, from the pristine runtime
# file (the same order and splitting for every run). A failing run is normal.
run() {
    local name=$1
    shift
    cp "$state_dir/runtime.json" "$runtime"
    (cd "$tree" && timeout -k 30 "$run_timeout" "$gorgon" start --local "$@" \
        --events "$state_dir/$name.events") </dev/null >"$state_dir/$name.out" 2>&1 || true
}

# check_clean: fails when the runs left files git sees (a selection would then run everything).
check_clean() {
    if [ -n "$(git -C "$tree" status --porcelain)" ]; then
        echo "error: the runs left files that git sees (the selection would run everything):" >&2
        git -C "$tree" status --porcelain | head >&2
        exit 1
    fi
}

# prepare: the tree as a git repository, the map, and the pristine failures.
prepare() {
    [ -z "${FRESH:-}" ] || rm -rf "$state_dir"
    [ ! -s "$state_dir/pristine.json" ] || return 0
    echo "impact: preparing $tree" >&2
    rm -rf "$tree"
    mkdir -p "$state_dir"
    cp -a "$pristine" "$tree"
    cat >"$tree/gorgon.json" <<JSON
{"files": ["$glob"], "runtime_file": "gorgon-runtime.json", "failed_files": "$state_dir/failed.json",
 "job": {"runner": $runner, "file_timeout": $file_timeout}}
JSON
    printf 'gorgon-*.json\n%b' "$ignored" >"$tree/.gitignore"
    git -C "$tree" init -q -b main
    git -C "$tree" add -A
    git -C "$tree" -c user.name=bench -c user.email=bench@example.com commit -q -m pristine
    echo '{}' >"$state_dir/runtime.json"
    run recording -j 2 --record-impact
    cp "$runtime" "$state_dir/runtime.json"
    run plain -j 2
    check_clean
    python3 "$helper" pristine "$state_dir/recording.events" "$state_dir/plain.events" \
        >"$state_dir/pristine.json"
}

# remap: prepare's two runs again on the pristine tree with the current binary: the map
# recorded anew (the old one kept as map-before-remap.json) and a plain run. The pristine
# failures become those of the earlier runs and of these; the runtime file stays the one
# every kept full run was ordered by. Selections judged with the old map (a RESELECT state
# file) are put aside.
remap() {
    echo "impact: recording the map again in $tree" >&2
    git -C "$tree" checkout -q -- .
    if [ -e "$tree/gorgon-runtime.impact.json" ]; then
        mv "$tree/gorgon-runtime.impact.json" "$state_dir/map-before-remap.json"
    fi
    run remap-recording -j 2 --record-impact
    run remap-plain -j 2
    check_clean
    python3 "$helper" pristine --union "$state_dir/pristine.json" \
        "$state_dir/remap-recording.events" "$state_dir/remap-plain.events" \
        >"$state_dir/pristine.json.tmp"
    mv "$state_dir/pristine.json.tmp" "$state_dir/pristine.json"
    [ ! -e "$reselected" ] || mv "$reselected" "$reselected.before-remap"
}

# full_one MUTATION_JSON ID: the full run with the mutation, kept as $state_dir/full/ID.events
# (and .out), which judge_one then takes instead of running it again. The full runs do not
# depend on the selection: FULL_ONLY=1 makes them alone, so that a selector changed later is
# judged against them without running the suite again.
full_one() {
    local mutation=$1 id=$2
    git -C "$tree" checkout -q -- .
    python3 "$helper" apply "$tree" "$mutation"
    run full -j 2
    mkdir -p "$state_dir/full"
    cp "$state_dir/full.out" "$state_dir/full/$id.out"
    cp "$state_dir/full.events" "$state_dir/full/$id.events"
    git -C "$tree" checkout -q -- .
}

# select_dry BASE: what `--changed BASE` selects in the tree as it is (lib.sh's
# impact_dry_run): the files in $state_dir/selected.list, what it says of them in
# $state_dir/selected.out. A dry run that fails stops the bench.
select_dry() {
    cp "$state_dir/runtime.json" "$runtime"
    if ! impact_dry_run "$tree" "$1" "$state_dir/selected.list" "$state_dir/selected.out"; then
        git -C "$tree" checkout -q -- .
        exit 1
    fi
}

# judge_one MUTATION_JSON ID: the mutation's full run (the kept one, else made and kept),
# then, with the mutation applied, its selection (select_dry); runs the broken files it left
# out alone, appends the result to the state file and takes the mutation back.
judge_one() {
    local mutation=$1 id=$2 base result file alone=() i=0
    base=$(git -C "$tree" rev-parse HEAD)
    [ -s "$state_dir/full/$id.events" ] || full_one "$mutation" "$id"
    git -C "$tree" checkout -q -- .
    python3 "$helper" apply "$tree" "$mutation"
    select_dry "$base"
    result=$(python3 "$helper" judge "$mutation" "$state_dir/pristine.json" \
        "$state_dir/full/$id.events" "$state_dir/selected.list" "$state_dir/selected.out")
    while read -r file; do
        [ -n "$file" ] || continue
        i=$((i + 1))
        run "alone-$i" -j 1 "$file"
        alone+=("$state_dir/alone-$i.events")
    done < <(python3 "$helper" missed "$result")
    result=$(python3 "$helper" alone "$result" "${alone[@]}")
    git -C "$tree" checkout -q -- .
    echo "$result" >>"$state"
}

if [ -z "${SUMMARY_ONLY:-}" ]; then
    prepare
    [ -z "${REMAP:-}" ] || remap
    if [ ! -s "$mutants" ] || [ "$(grep -c '"rejected": null' "$mutants")" -lt "$count" ]; then
        python3 "$helper" mutants "$pristine" "$language" "$seed" "$count" >"$mutants.tmp"
        mv "$mutants.tmp" "$mutants"
    fi
    touch "$state"
    done_ids=" $(python3 "$helper" "done" "$state") "
    judged=$(grep -c . "$state" || true)
    while read -r mutation; do
        [ "$judged" -lt "$count" ] || break
        id=$(python3 "$helper" valid_id "$mutation")
        [ -n "$id" ] || continue
        [[ $done_ids == *" $id "* ]] && continue
        start=$(date +%s)
        if [ -n "${FULL_ONLY:-}" ]; then
            [ -s "$state_dir/full/$id.events" ] || full_one "$mutation" "$id"
            judged=$((judged + 1))
            echo "impact: $suite mutation #$id ($judged of $count): full run in $(($(date +%s) - start)) s" >&2
            continue
        fi
        # A reselection runs no suite: a mutation without a kept full run waits for one.
        if [ -n "${RESELECT:-}" ] && [ ! -s "$state_dir/full/$id.events" ]; then
            echo "impact: $suite mutation #$id has no kept full run (FULL_ONLY=1 makes it): not judged" >&2
            continue
        fi
        judge_one "$mutation" "$id"
        judged=$((judged + 1))
        echo "impact: $suite mutation #$id ($judged of $count) in $(($(date +%s) - start)) s: $(python3 "$helper" brief "$(tail -n 1 "$state")")" >&2
    done <"$mutants"
fi
echo "== $suite: bench/impact.sh (seed $seed; state $state)"
python3 "$helper" summary "$state" "$mutants"
