#!/usr/bin/env bash
# The cost of test impact (docs/impact.md), on this machine with `gorgon start --local -j 2`:
#   1. recording: a run with --record-impact against the same run without, in turns
#      (plain, recording, plain, recording...), medians of RUNS rounds (target: at most 1.5);
#   2. selecting: a --changed run after a change to one function, against a run of exactly
#      the files it selected named on the command line (target: about 1, the map's reading).
# Suites: `fixture` (generated here: a Python package of 40 modules, each with a pytest file
# whose tests make ~20,000 calls into it) and `networkx` (bench/real-suites.sh pytest, with
# its venv's python) and `rubocop` (bench/real-suites.sh rspec, RuboCop's RSpec suite).
# Usage: bench/impact_cost.sh [fixture] [networkx] [rubocop]   (RUNS=N, GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
runs=${RUNS:-3}
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(fixture)

# fixture_suite DIR: the generated package and its tests.
fixture_suite() {
    local dir=$1 i
    mkdir -p "$dir/pkg" "$dir/tests"
    : >"$dir/pkg/__init__.py"
    for i in $(seq -w 1 40); do
        cat >"$dir/pkg/mod_$i.py" <<PY
SCALE = $((10#$i))


def step(x):
    return (x * 31 + SCALE) % 1009


def walk(n):
    total = 0
    for k in range(n):
        total = step(total + k)
    return total


class Counter:
    def __init__(self):
        self.count = 0

    def add(self, n):
        for _ in range(n):
            self.count = step(self.count)
        return self.count
PY
        cat >"$dir/tests/test_mod_$i.py" <<PY
from pkg.mod_$i import Counter, walk


def test_walk():
    assert walk(10000) >= 0


def test_counter():
    assert Counter().add(10000) >= 0
PY
    done
}

# local_config DIR GLOB RUNNER: a gorgon.json for --local runs (no broker, no file server)
# with a runtime file, so the impact map lands beside it.
local_config() {
    cat >"$1/gorgon.json" <<JSON
{"files": ["$2"], "runtime_file": "gorgon-runtime.json", "failed_files": "$work/failed.json",
 "job": {"runner": $3}}
JSON
}

# committed DIR: makes DIR a git repository with everything committed, for --changed.
committed() {
    git -C "$1" init -q -b main
    printf 'gorgon-*.json\n__pycache__/\n*.pyc\nspec/examples.txt\ntmp/\n' >"$1/.gitignore"
    git -C "$1" add -A
    git -C "$1" -c user.name=bench -c user.email=bench@example.com commit -q -m base
}

# compared NAME_A NAME_B [NOTE]: the runs of `first` (NAME_A) and `second` (NAME_B), their
# medians and the ratio of the second to the first.
compared() {
    printf '%-10s %s\n' "$1:" "${first[*]}" "$2:" "${second[*]}"
    local a b
    a=$(median "${first[@]}")
    b=$(median "${second[@]}")
    echo "median $1 $a s, $2 $b s: $(ratio "$b" "$a") ${3:-}"
}

# recording_cost DIR: rounds of plain and recording runs, in turns.
recording_cost() {
    local dir=$1 map=$1/gorgon-runtime.impact.json
    first=() second=()
    (cd "$dir" && seconds "$gorgon" start --local -j 2 >/dev/null) # warms the page cache
    for _ in $(seq 1 "$runs"); do
        first+=("$(cd "$dir" && seconds "$gorgon" start --local -j 2)")
        second+=("$(cd "$dir" && seconds "$gorgon" start --local -j 2 --record-impact)")
    done
    compared plain recording "(target: at most 1.5)"
    echo "map: $(wc -c <"$map") bytes, $(grep -o '"digest"' "$map" | wc -l) source entries"
}

# selecting_cost DIR FILE LINE: a change to LINE of FILE, then --changed against the same
# selected files named.
selecting_cost() {
    local dir=$1 file=$2 line=$3 selected
    first=() second=()
    sed -i "${line}s/\$/  # changed/" "$dir/$file"
    selected=$(cd "$dir" && "$gorgon" start --local -j 2 --changed --explain 2>&1 >/dev/null |
        sed -n 's/^  \([^:]*\): .*/\1/p')
    echo "the change to $file:$line selects $(echo "$selected" | wc -l) files"
    for _ in $(seq 1 "$runs"); do
        # shellcheck disable=SC2086  # one file a word
        first+=("$(cd "$dir" && seconds "$gorgon" start --local -j 2 $selected)")
        second+=("$(cd "$dir" && seconds "$gorgon" start --local -j 2 --changed)")
    done
    compared named --changed
    git -C "$dir" checkout -q -- "$file"
}

for suite in "${suites[@]}"; do
    case $suite in
    fixture)
        dir=$work/fixture
        fixture_suite "$dir"
        local_config "$dir" "tests/test_*.py" '{"kind": "pytest"}'
        committed "$dir"
        echo "== fixture: 40 modules, 80 tests, ~20,000 calls a test"
        recording_cost "$dir"
        selecting_cost "$dir" pkg/mod_07.py 5
        ;;
    networkx)
        . "$bench_repo/bench/real-suites.sh" pytest
        dir=$work/networkx
        cp -a "$pytest_tree" "$dir"
        local_config "$dir" "networkx/**/test_*.py" \
            "{\"kind\": \"pytest\", \"command\": \"$pytest_venv/bin/python\", \"args\": [\"-p\", \"no:cacheprovider\"]}"
        committed "$dir"
        echo "== networkx $NETWORKX_VERSION"
        recording_cost "$dir"
        # The body of `single_source_shortest_path_length`'s helper.
        selecting_cost "$dir" networkx/algorithms/shortest_paths/unweighted.py \
            "$(grep -n 'nextlevel = \[source\]' "$dir/networkx/algorithms/shortest_paths/unweighted.py" | head -1 | cut -d: -f1)"
        ;;
    rubocop)
        . "$bench_repo/bench/real-suites.sh" rspec
        dir=$work/rubocop
        cp -a "$rspec_tree" "$dir"
        local_config "$dir" "spec/**/*_spec.rb" '{"kind": "rspec"}'
        committed "$dir"
        echo "== rubocop ${RUBOCOP_SOURCE#*=}"
        recording_cost "$dir"
        # A line of `Style/SymbolLiteral`'s `on_str`.
        selecting_cost "$dir" lib/rubocop/cop/style/symbol_literal.rb \
            "$(grep -n 'return unless' "$dir/lib/rubocop/cop/style/symbol_literal.rb" | head -1 | cut -d: -f1)"
        ;;
    *)
        echo "usage: $0 [fixture] [networkx] [rubocop]" >&2
        exit 2
        ;;
    esac
done
