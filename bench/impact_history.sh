#!/usr/bin/env bash
# Test impact over a real history (docs/impact.md): what `gorgon start --changed` would have
# run for each of the last N commits of networkx's main branch (first parent, oldest first),
# ending at networkx 3.6.1, against the whole suite. For each commit C with parent P, as a CI
# that records the map on every merge to main would have it:
#   1. the map: recorded on P (`gorgon start --local -j 2 --record-impact`) in a clone of
#      networkx's repository checked out at P, made runnable as bench/real-suites.sh's tree from
#      the wheel is (a dist-info in its root, from pyproject.toml, for the entry points that
#      networkx's conftest.py looks for; the bench's venv runs it, untouched);
#   2. C checked out, and what `gorgon start --local -j 2 --changed P --explain --dry-run`
#      would run (a dry run runs nothing), with the files outside the suite's reach ignored
#      (`job.impact.ignore`, IGNORE below), and again without that list;
#   3. with FULL=1, the full runs at P and at C (a recording is one: with the default variant
#      the full run at C is the next commit's recording): the test files C broke (failing at C,
#      not at P) and fixed, and whether the selection held the broken ones (one left out is run
#      alone at C, and is a miss if it fails there too).
# The variant (MAP): `each` (default) records on every parent; `carry` records once on the
# oldest parent and carries the map forward, recording again on P only when the selection
# runs everything because the map no longer matches (it was recorded from another version of
# a changed file, or does not know one, which may be newer than the map): cheaper, and less
# safe, since what a test file depends on may have changed since the recording.
# Prints per commit: its short sha, subject, files changed, test files selected of all, the
# share of the time (the per-file seconds of the recording the map came from), or
# "everything" with the reason; then the mean and median shares, the commits that selected
# everything (grouped by reason) and those that selected nothing.
# Resumable: each commit's result is a file under $GORGON_SUITES/impact/history/results-MAP/
# (with the clone, the outcome of each full run under runs/, and the map); a second invocation
# continues with the first commit without one. Not a timing: no lock, and `nice -n 19` suits
# it. FRESH=1 starts again from nothing but the clone.
# Usage: NETWORKX_GIT=PATH bench/impact_history.sh [N]   (N default 50; PATH: networkx's
# repository, bare or not, with the tag networkx-3.6.1, needed the first time only;
# GORGON_BIN=path to skip the build; RUN_TIMEOUT seconds per run, default 1800; MAP=each|carry;
# FULL=1 for the full runs; SUMMARY_ONLY=1 prints the table so far and runs nothing)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/real-suites.sh
. "$bench_repo/bench/real-suites.sh"

count=${1:-50}
# networkx 3.6.1 (the tag networkx-3.6.1, on main's first-parent line): the tree of the
# bench's wheel, whose tests run with the bench's venv (Python 3.11, pytest 9.2).
end_commit=7530809bfa1ea7ed6fdf918a4d1431488953cb1f
run_timeout=${RUN_TIMEOUT:-1800}
variant=${MAP:-each}
helper=$bench_repo/bench/impact_history.py
mutants_helper=$bench_repo/bench/impact_mutants.py
state_dir=$suites_root/impact/history
tree=$state_dir/tree
results=$state_dir/results-$variant
runs=$state_dir/runs
commits=$state_dir/commits.txt
map_commit=$state_dir/map.commit
# What no test file of the suite can reach: the documentation, the examples, the benchmarks,
# the release tools, CI's settings and the top-level texts. (requirements/ stays: it would
# change the environment a CI builds.)
ignore='["doc/**", "examples/**", "benchmarks/**", "tools/**", ".github/**", ".circleci/**",
  "*.rst", "*.md", "*.txt", "MANIFEST.in", ".gitignore", ".mailmap", ".git-blame-ignore-revs",
  ".pre-commit-config.yaml"]'
runner="{\"kind\": \"pytest\", \"command\": \"$pytest_venv/bin/python\", \"args\": [\"-p\", \"no:cacheprovider\"]}"
case $variant in
each | carry) ;;
*)
    echo "error: MAP is each or carry, not $variant" >&2
    exit 2
    ;;
esac

# prepare_tree: the clone of networkx's repository (from NETWORKX_GIT), whose files of the
# bench git does not see.
prepare_tree() {
    [ -z "${FRESH:-}" ] || rm -rf "$results" "$runs" "$map_commit" "$tree/gorgon-runtime.impact.json"
    mkdir -p "$results" "$runs"
    if [ ! -d "$tree/.git" ]; then
        if [ -z "${NETWORKX_GIT:-}" ]; then
            echo "error: set NETWORKX_GIT to networkx's repository (docs/benchmarks.md says how to get one)" >&2
            exit 1
        fi
        rm -rf "$tree"
        git clone -q --no-checkout "$NETWORKX_GIT" "$tree"
        printf '%s\n' gorgon.json 'gorgon-*.json' '*.dist-info/' __pycache__/ '*.pyc' \
            >>"$tree/.git/info/exclude"
    fi
    if ! git -C "$tree" cat-file -e "$end_commit^{commit}" 2>/dev/null; then
        echo "error: $tree lacks networkx 3.6.1 ($end_commit): remove it and set NETWORKX_GIT to a full clone" >&2
        exit 1
    fi
}

# write_project_config FILE IGNORE_JSON: the project's configuration, as bench/impact.sh's
# networkx (named apart from lib.sh's write_config, which it would otherwise replace).
write_project_config() {
    cat >"$tree/$1" <<JSON
{"files": ["networkx/**/test_*.py"], "runtime_file": "gorgon-runtime.json", "failed_files": "$state_dir/failed.json",
 "job": {"runner": $runner, "file_timeout": 120, "impact": {"ignore": $2}}}
JSON
}

# checkout COMMIT: the tree at COMMIT as the bench runs it, without what the runs left.
checkout() {
    git -C "$tree" checkout -q --force --detach "$1"
    git -C "$tree" clean -q -fd
    "$pytest_venv/bin/python" "$helper" dist_info "$tree"
    write_project_config gorgon.json "$ignore"
    write_project_config gorgon-noignore.json '[]'
}

# run NAME ARGS...: `gorgon start --local -j 2 ARGS` in the tree, its events in
# $state_dir/NAME.events and its output in $state_dir/NAME.out. A failing run is normal.
run() {
    local name=$1
    shift
    (cd "$tree" && timeout -k 30 "$run_timeout" "$gorgon" start --local -j 2 "$@" \
        --events "$state_dir/$name.events") </dev/null >"$state_dir/$name.out" 2>&1 || true
}

# full_run COMMIT [ARGS...]: a full run at COMMIT (with ARGS), its outcome in runs/COMMIT.json.
full_run() {
    local commit=$1
    shift
    checkout "$commit"
    run full "$@"
    python3 "$mutants_helper" outcome "$state_dir/full.events" >"$runs/$commit.json"
}

# record COMMIT: the map recorded afresh at COMMIT (the run's outcome kept as any full run's).
record() {
    echo "impact_history: recording the map at ${1:0:9}" >&2
    rm -f "$tree/gorgon-runtime.impact.json" "$map_commit"
    full_run "$1" --record-impact
    if [ ! -s "$tree/gorgon-runtime.impact.json" ]; then
        echo "error: the recording at $1 wrote no map:" >&2
        tail -n 20 "$state_dir/full.out" >&2
        exit 1
    fi
    echo "$1" >"$map_commit"
}

# full_at COMMIT: the outcome of a full run at COMMIT, made if there is none (a recording with
# the variant `each`, whose map the next commit takes).
full_at() {
    [ ! -s "$runs/$1.json" ] || return 0
    if [ "$variant" = each ]; then record "$1"; else full_run "$1"; fi
}

# select_at COMMIT PARENT: COMMIT checked out, and the dry runs of `--changed PARENT`, with
# the ignore list (selected.*) and without (selected-all.*).
select_at() {
    checkout "$1"
    impact_dry_run "$tree" "$2" "$state_dir/selected.list" "$state_dir/selected.out"
    impact_dry_run "$tree" "$2" "$state_dir/selected-all.list" "$state_dir/selected-all.out" \
        --config gorgon-noignore.json
}

# judge COMMIT: the commit's selection against its parent's map (and its full runs, FULL=1)
# into results-MAP/COMMIT.json.
judge() {
    local commit=$1 parent map_from result file alone=() i=0
    parent=$(git -C "$tree" rev-parse "$commit^1")
    map_from=$(cat "$map_commit" 2>/dev/null || true)
    if [ -z "$map_from" ] || { [ "$variant" = each ] && [ "$map_from" != "$parent" ]; }; then
        record "$parent"
    fi
    select_at "$commit" "$parent"
    if [ "$variant" = carry ] && [ "$(cat "$map_commit")" != "$parent" ] &&
        grep -Eq "^Running all .*(recorded from another version|does not know it)" \
            "$state_dir/selected.out"; then
        record "$parent"
        select_at "$commit" "$parent"
    fi
    map_from=$(cat "$map_commit")
    local args=(commit="$commit" subject="$(git -C "$tree" log -1 --format=%s "$commit")"
        changed="$(git -C "$tree" diff --name-only "$parent" "$commit" | grep -c .)"
        variant="$variant" map_from="$map_from" times="$runs/$map_from.json"
        list="$state_dir/selected.list" told="$state_dir/selected.out"
        list_all="$state_dir/selected-all.list" told_all="$state_dir/selected-all.out")
    if [ -n "${FULL:-}" ]; then
        full_at "$parent"
        full_at "$commit"
        args+=(before="$runs/$parent.json" after="$runs/$commit.json")
    fi
    result=$(python3 "$helper" result "${args[@]}")
    if [ -n "${FULL:-}" ]; then
        checkout "$commit"
        while read -r file; do
            [ -n "$file" ] || continue
            i=$((i + 1))
            run "alone-$i" "$file"
            alone+=("$state_dir/alone-$i.events")
        done < <(python3 "$mutants_helper" missed "$result")
        result=$(python3 "$mutants_helper" alone "$result" "${alone[@]}")
    fi
    echo "$result" >"$results/$commit.json"
}

if [ -z "${SUMMARY_ONLY:-}" ]; then
    prepare_pytest
    prepare_tree
    git -C "$tree" rev-list --first-parent --reverse -n "$count" "$end_commit" >"$commits"
    while read -r commit; do
        [ ! -s "$results/$commit.json" ] || continue
        start=$(date +%s)
        judge "$commit"
        echo "impact_history: $(python3 "$helper" line "$(cat "$results/$commit.json")") ($(($(date +%s) - start)) s)" >&2
    done <"$commits"
fi
touch "$commits"
echo "== networkx: bench/impact_history.sh, the last $(grep -c . "$commits" || true) commits to ${end_commit:0:9} (networkx 3.6.1), map: $variant"
python3 "$helper" summary "$results" "$commits"
