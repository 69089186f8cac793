#!/usr/bin/env bash
# Real third-party suites, fetched from package registries by bench/real-suites.sh (cached
# under GORGON_SUITES, default /var/cache/gorgon-bench-suites): networkx's pytest suite, RuboCop's
# RSpec suite, Active Record's Minitest suite (sqlite3 in memory, with upstream Rails' fixture
# loading line that a Debian patch replaced; see bench_minitest), and the same Active Record
# suite on PostgreSQL (`postgresql`: a pair of databases per worker, see bench_postgresql;
# its gorgon-rs runs are on the 2 listeners, without and with history, and it has no
# per-file measurement). For each suite, in one
# sitting and on a fresh copy of its tree: the framework's serial run, the framework's own
# parallel runner with 2 processes (pytest -n 2, parallel_rspec -n 2, parallel_test -n 2),
# `gorgon start --local -j 2` on a first run (no history: files in glob order) and again with
# the runtime history the first run wrote (slowest first, slow files split into their
# tests), and `gorgon start` on 2 listeners x 2 slots with that history, each with the
# built-in runner of the framework. Prints each run's wall time and test counts side by side
# (as each tool reports them, mapped to passed/failed/errored/skipped/pending/xfailed/xpassed),
# and the ratios of gorgon's times to the serial and parallel runs. Failing tests are expected:
# the serial run's counts are the baseline the others should match.
#
# Then the built-in runner's cost per file: the framework alone in one process over the
# first PER_FILE files (default 60, in glob order) against `gorgon start --local -j 1` over
# the same files, without history, taking turns PER_FILE_ROUNDS times (default 3) and
# comparing the medians (target: at most 10 % more). PER_FILE_ONLY=1 measures only that.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc, and root for the first run (apt-get).
# Usage: bench/real.sh [pytest] [rspec] [minitest] [postgresql]   (default: the first three;
# postgresql also needs the project's PostgreSQL server, which it starts if needed; GORGON_BIN=path to
# skip the build; RUN_TIMEOUT seconds per run, default 1800; FILE_TIMEOUT for gorgon, default
# 600; REAL_LOGS=DIR keeps every run's output there)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/real-suites.sh
. "$bench_repo/bench/real-suites.sh"

run_timeout=${RUN_TIMEOUT:-1800}
file_timeout=${FILE_TIMEOUT:-600}
logs=${REAL_LOGS:-$work/logs}
mkdir -p "$logs"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(pytest rspec minitest)
for suite in "${suites[@]}"; do
    case $suite in
    pytest | rspec | minitest | postgresql) ;;
    *)
        echo "usage: $0 [pytest] [rspec] [minitest] [postgresql]" >&2
        exit 2
        ;;
    esac
done

# timed NAME DIR COMMAND...: runs COMMAND in DIR under RUN_TIMEOUT, its output (stdout and
# stderr) in $logs/NAME.out; sets `elapsed` (seconds) and `status`. A non-zero status is
# normal (the suites have failing tests); a run that times out is reported as such.
timed() {
    local name=$1 dir=$2 start end
    shift 2
    start=$(date +%s.%N)
    set +e
    (cd "$dir" && exec timeout -k 30 "$run_timeout" "$@") </dev/null >"$logs/$name.out" 2>&1
    status=$?
    set -e
    end=$(date +%s.%N)
    elapsed=$(echo "$end - $start" | bc -l | awk '{printf "%.1f\n", $1}')
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "warning: $name timed out after $run_timeout s" >&2
    fi
}

# counts KIND FILE: the run's test counts as `word=N` pairs, from the summary line KIND
# (pytest, rspec, minitest or gorgon) prints; nothing if there is none.
counts() {
    local kind=$1 file=$2
    case $kind in
    pytest)
        # `5837 passed, 371 skipped, 1 xfailed in 107.46s (0:01:47)`, maybe between `=`s.
        grep -E '[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b.* in [0-9.]+s' "$file" |
            tail -n 1 | sed 's/ in [0-9.]*s.*//' | tr -d '=' | tr ',' '\n' |
            awk '
            NF == 2 { if ($2 ~ /^errors?$/) $2 = "errored"; n[$2] = $1; seen = 1 }
            END {
                # pytest leaves out the zero counts; it has no "pending".
                if (!seen) exit
                split("passed failed errored skipped xfailed xpassed", words, " ")
                for (i = 1; i <= 6; i++) printf "%s=%d ", words[i], n[words[i]]
                for (w in n) if (w != "warnings" && w != "warning" && index(" passed failed errored skipped xfailed xpassed ", " " w " ") == 0) printf "%s=%d ", w, n[w]
            }' || true
        ;;
    rspec)
        # `19439 examples, 108 failures, 1 pending[, 2 errors occurred outside of examples]`;
        # RSpec's pending includes skipped examples.
        grep -E '^[0-9]+ examples?, [0-9]+ failures?' "$file" | tail -n 1 | awk -F', ' '{
            e = $1 + 0; f = $2 + 0; p = 0; o = 0
            for (i = 3; i <= NF; i++) { if ($i ~ /pending/) p = $i + 0; if ($i ~ /outside/) o = $i + 0 }
            printf "passed=%d failed=%d pending=%d", e - f - p, f, p
            if (o) printf " outside_errors=%d", o
        }' || true
        ;;
    minitest)
        # `7035 runs, 18755 assertions, 3 failures, 18 errors, 21 skips`; parallel_test sums
        # them up in another order (`18751 assertions, 18 errors, 3 failures, 7035 runs, 21 skips`).
        grep -E '^[0-9]+ [a-z]+(, [0-9]+ [a-z]+)+$' "$file" | grep -E '[0-9]+ runs?\b' |
            grep -E '[0-9]+ assertions?\b' | tail -n 1 | tr ',' '\n' | awk '
            NF == 2 { n[substr($2, 1, 3)] = $1 }
            END {
                if (!("run" in n)) exit
                printf "passed=%d failed=%d errored=%d skipped=%d", n["run"] - n["fai"] - n["err"] - n["ski"],
                    n["fai"], n["err"], n["ski"]
                # gorgon-rs counts tests, not assertions: only the framework'"'"'s own runs have them.
                if ("ass" in n) printf " assertions=%d", n["ass"]
            }' || true
        ;;
    gorgon)
        # `Tests: 5837 passed, 0 failed, 0 errored, 371 skipped, 0 pending[, 1 xfailed...]`
        grep -E '^Tests: ' "$file" | tail -n 1 | sed 's/^Tests: //' | tr ',' '\n' |
            awk 'NF == 2 {printf "%s=%s ", $2, $1}' || true
        ;;
    esac
}

# count_of PAIRS WORD: N of `WORD=N` in PAIRS, or `-`.
count_of() {
    local pair
    for pair in $1; do
        if [ "${pair%%=*}" = "$2" ]; then
            echo "${pair#*=}"
            return
        fi
    done
    echo "-"
}

columns=(passed failed errored skipped pending xfailed xpassed)

# row LABEL SECONDS STATUS PAIRS: one line of the table; categories outside `columns` follow.
row() {
    local label=$1 seconds=$2 exit_status=$3 pairs=$4 column pair extra=""
    printf '  %-30s %8s %5s' "$label" "$seconds" "$exit_status"
    for column in "${columns[@]}"; do
        printf ' %8s' "$(count_of "$pairs" "$column")"
    done
    for pair in $pairs; do
        # shellcheck disable=SC2076  # a literal match of the word
        [[ " ${columns[*]} " =~ " ${pair%%=*} " ]] || extra+=" ${pair#*=} ${pair%%=*}"
    done
    [ -z "$pairs" ] && extra=" (no summary line)"
    echo "$extra"
}

header() {
    printf '  %-30s %8s %5s' "run" "wall s" "exit"
    printf ' %8s' "${columns[@]}"
    echo
}

listeners_started=""
# start_listeners: the file server and 2 listeners x 2 slots, once for all suites.
start_listeners() {
    if [ -z "$listeners_started" ]; then
        start_file_server
        start_listener one 2
        start_listener two 2
        listeners_started=yes
    fi
}

# glob_count DIR GLOB: how many files GLOB matches in DIR (** spans folders).
glob_count() {
    (
        cd "$1"
        shopt -s globstar nullglob
        # shellcheck disable=SC2206  # the glob is meant to expand
        local matches=($2)
        echo "${#matches[@]}"
    )
}

# The gorgon-rs runs of a suite, in turn after the framework's own two, each
# `NAME|LABEL|ARGUMENTS` (ARGUMENTS, split on spaces, go before the listed files): without
# history, again with the history the first run wrote, and on the 2 listeners. A suite's
# bench_* function may declare its own `local gorgon_runs=(...)` (as before_run and job_extra
# below), which `bench` then sees.
gorgon_runs=("gorgon-first|gorgon --local -j 2, first run|--local -j 2"
    "gorgon-local|gorgon --local -j 2|--local -j 2"
    "gorgon|gorgon 2 listeners x 2 slots|")
# before_run: a command run (untimed) in the project before each of the framework's own runs,
# to give each the same start as gorgon-rs' callbacks give its workers; empty for none.
before_run=""
# job_extra: more keys of gorgon.json's `job` (with a trailing comma), such as callbacks.
job_extra=""

# measure SUITE PROJECT NAME LABEL KIND COMMAND...: one timed run of COMMAND in PROJECT, its
# output in $logs/SUITE-NAME.out, its row added to the suite's table (the arrays run_names,
# run_labels, run_times, run_codes and run_counts).
measure() {
    local suite=$1 project=$2 name=$3 label=$4 kind=$5
    shift 5
    echo "$suite: running $label" >&2
    timed "$suite-$name" "$project" "$@"
    run_names+=("$name") run_labels+=("$label") run_times+=("$elapsed") run_codes+=("$status")
    run_counts+=("$(counts "$kind" "$logs/$suite-$name.out")")
}

# bench SUITE PROJECT FILES SERIAL_LABEL SERIAL_KIND PARALLEL_LABEL RUNNER_JSON -- SERIAL... --
# PARALLEL... [-- FILE...]: the runs of one suite in PROJECT (serial, parallel, then
# gorgon_runs), whose test files match the glob FILES (or, when given, are exactly FILE...),
# and the table.
bench() {
    local suite=$1 project=$2 glob=$3 serial_label=$4 kind=$5 parallel_label=$6 runner=$7
    shift 7
    local serial=() parallel=() listed=()
    [ "$1" = "--" ] && shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do serial+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do parallel+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    listed=("$@")

    if [ -n "${PER_FILE_ONLY:-}" ]; then
        [ -n "$rsync_port" ] || start_file_server
        write_config "$project" "$glob" "$runner" "" "$job_extra"
        return
    fi
    start_listeners
    write_config "$project" "$glob" "$runner" "\"runtime_file\": \"$work/$suite-runtime.json\"," "$job_extra"
    rm -f "$work/$suite-runtime.json"
    wait_for_listeners "$project" 2

    run_names=() run_labels=() run_times=() run_codes=() run_counts=()
    [ -z "$before_run" ] || (cd "$project" && $before_run)
    measure "$suite" "$project" serial "$serial_label" "$kind" "${serial[@]}"
    [ -z "$before_run" ] || (cd "$project" && $before_run)
    measure "$suite" "$project" parallel "$parallel_label" "$kind" "${parallel[@]}"
    local run name label args
    for run in "${gorgon_runs[@]}"; do
        IFS='|' read -r name label args <<<"$run"
        # shellcheck disable=SC2086  # the arguments are separate words
        measure "$suite" "$project" "$name" "$label" gorgon "$gorgon" start $args "${listed[@]}"
    done
    bench_table "$suite" "$project" "$glob" "$parallel_label" "${#listed[@]}"
}

# bench_table SUITE PROJECT GLOB PARALLEL_LABEL LISTED: the table of the runs `bench` measured,
# each gorgon-rs run's files line, and its ratios to the serial and parallel runs.
bench_table() {
    local suite=$1 project=$2 glob=$3 parallel_label=$4 listed=$5 files i line
    if [ "$listed" -gt 0 ]; then
        files="$listed files (listed on the command line)"
    else
        files="$(glob_count "$project" "$glob") files ($glob)"
    fi
    echo
    echo "== $suite: $suite_name, $files"
    header
    for i in "${!run_names[@]}"; do
        row "${run_labels[$i]}" "${run_times[$i]}" "${run_codes[$i]}" "${run_counts[$i]}"
    done
    for i in "${!run_names[@]}"; do
        [ "$i" -ge 2 ] || continue
        line=$(grep -E '^[0-9]+ files?: ' "$logs/$suite-${run_names[$i]}.out" | tail -n 1 || true)
        printf '  %-32s %s\n' "${run_labels[$i]}:" "${line:-(no files line)}"
    done
    for i in "${!run_names[@]}"; do
        [ "$i" -ge 2 ] || continue
        echo "  ${run_labels[$i]} / serial $(ratio "${run_times[$i]}" "${run_times[0]}"), / $parallel_label $(ratio "${run_times[$i]}" "${run_times[1]}")"
    done
    echo
}

per_file=${PER_FILE:-60}
per_file_rounds=${PER_FILE_ROUNDS:-3}

# per_file_cost SUITE PROJECT KIND -- ALONE... -- FILE...: the framework alone in one
# process (ALONE followed by the files) against `gorgon start --local -j 1` over the same
# files, in PROJECT, taking turns PER_FILE_ROUNDS times (default 3) so that both see the same
# moments of a shared machine; prints every round, the medians and their ratio.
per_file_cost() {
    local suite=$1 project=$2 kind=$3 alone=() files=() round
    local alone_times=() one_times=() alone_rc one_rc alone_counts one_counts
    shift 3
    [ "$1" = "--" ] && shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do alone+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    files=("${@:1:$per_file}")
    # The runner's cost alone: no history, so no file is split into its tests.
    sed -i '/"runtime_file"/d' "$project/gorgon.json"
    for round in $(seq "$per_file_rounds"); do
        echo "$suite: round $round: the framework alone over ${#files[@]} files" >&2
        timed "$suite-alone" "$project" "${alone[@]}" "${files[@]}"
        alone_times+=("$elapsed") alone_rc=$status
        echo "$suite: round $round: gorgon start --local -j 1 over the same files" >&2
        timed "$suite-gorgon-one" "$project" "$gorgon" start --local -j 1 "${files[@]}"
        one_times+=("$elapsed") one_rc=$status
    done
    alone_counts=$(counts "$kind" "$logs/$suite-alone.out")
    one_counts=$(counts gorgon "$logs/$suite-gorgon-one.out")
    local alone_s one_s
    alone_s=$(median "${alone_times[@]}")
    one_s=$(median "${one_times[@]}")
    echo "== $suite: cost per file, ${#files[@]} files, median of $per_file_rounds rounds"
    header
    row "one process" "$alone_s" "$alone_rc" "$alone_counts"
    row "gorgon --local -j 1" "$one_s" "$one_rc" "$one_counts"
    echo "  rounds: one process ${alone_times[*]}; gorgon ${one_times[*]}"
    echo "  gorgon --local -j 1 / one process $(ratio "$one_s" "$alone_s") (target: at most 1.10)"
    echo
}

# sorted_files PROJECT GLOB: the files GLOB matches in PROJECT, sorted, one a line.
sorted_files() {
    (
        cd "$1"
        shopt -s globstar nullglob
        # shellcheck disable=SC2206  # the glob is meant to expand
        local matches=($2)
        printf '%s\n' "${matches[@]}" | sort
    )
}

bench_pytest() {
    prepare_pytest
    local project=$work/pytest python=$pytest_venv/bin/python
    cp -a "$pytest_tree" "$project"
    suite_name="networkx $NETWORKX_VERSION, pytest $("$python" -c 'import pytest; print(pytest.__version__)')"
    bench pytest "$project" "networkx/**/test_*.py" "pytest" pytest "pytest -n 2" \
        "{\"kind\": \"pytest\", \"command\": \"$python\", \"args\": [\"-p\", \"no:cacheprovider\"], \"file_timeout\": $file_timeout}" \
        -- "$python" -m pytest -q -p no:cacheprovider networkx \
        -- "$python" -m pytest -q -p no:cacheprovider -n 2 networkx
    local files=()
    mapfile -t files < <(sorted_files "$project" "networkx/**/test_*.py")
    per_file_cost pytest "$project" pytest -- "$python" -m pytest -q -p no:cacheprovider -- "${files[@]}"
}

bench_rspec() {
    prepare_rspec
    local project=$work/rspec
    cp -a "$rspec_tree" "$project"
    suite_name="rubocop ${RUBOCOP_SOURCE#*=} (Debian source), rspec $(ruby -rrspec/core -e 'print RSpec::Core::Version::STRING')"
    # RuboCop's .rspec requires spec_helper, which sets random order and
    # example_status_persistence_file_path = spec/examples.txt. There is a Gemfile but no
    # bundler: parallel_rspec is told to run plain `rspec`.
    bench rspec "$project" "spec/**/*_spec.rb" "rspec" rspec "parallel_rspec -n 2" \
        "{\"kind\": \"rspec\", \"file_timeout\": $file_timeout}" \
        -- rspec \
        -- env PARALLEL_TESTS_EXECUTABLE=rspec parallel_rspec -n 2
    local files=()
    mapfile -t files < <(sorted_files "$project" "spec/**/*_spec.rb")
    per_file_cost rspec "$project" rspec -- rspec -- "${files[@]}"
}

bench_minitest() {
    prepare_minitest
    local project=$work/minitest files=()
    cp -a "$minitest_tree/activerecord" "$project"
    # The suite's own configuration: every connection is an sqlite3 database in memory, so
    # concurrent workers in one tree share no database file. Some files define no test on
    # sqlite3 in memory (their tests are for other adapters or for file databases): a serial
    # run just has nothing from them, hence allow_empty_files.
    sed 's/^default_connection: .*/default_connection: sqlite3_mem/' \
        "$project/test/config.example.yml" >"$project/test/config.yml"
    # Upstream Rails loads a table's fixtures with sqlite3's `execute_batch2` (rails/rails#35844);
    # Debian's relax-dependency-sqlite3.patch went back to `execute_batch` for the sqlite3 gem
    # 1.3 it then shipped, whose loop copies the rest of the batch once per statement, so
    # loading the 65,536 rows of eager_test.rb's `citations` takes minutes of copying and GC
    # (one file then bounds every run, serial or parallel). Debian's gem is 1.4 now, which has
    # `execute_batch2`: the suite runs with upstream's line, the same tree for every runner.
    local adapter=$project/lib/active_record/connection_adapters/sqlite3/database_statements.rb
    sed -i 's/@connection\.execute_batch(sql)/@connection.execute_batch2(sql)/' "$adapter"
    grep -q '@connection.execute_batch2(sql)' "$adapter" || {
        echo "error: $adapter no longer has the line to restore; check the Debian patch" >&2
        exit 1
    }
    mapfile -t files < <(cd "$project" && minitest_files)
    suite_name="Active Record $rails_version (Debian source rails, upstream's execute_batch2) on sqlite3_mem, minitest $(ruby -rminitest -e 'print Minitest::VERSION')"
    bench minitest "$project" "test/cases/**/*_test.rb" "rake test:sqlite3_mem" minitest \
        "parallel_test -n 2" \
        "{\"kind\": \"minitest\", \"allow_empty_files\": true, \"file_timeout\": $file_timeout}" \
        -- rake test:sqlite3_mem \
        -- env RUBYOPT=-Ilib parallel_test -n 2 "${files[@]}" \
        -- "${files[@]}"
    # As rake's test loader does: one Ruby that requires every file.
    per_file_cost minitest "$project" minitest -- ruby -w -Ilib:test \
        -e 'ARGV.each { |f| require File.expand_path(f) }' -- "${files[@]}"
}

# pg_databases: the databases of the framework's own runs on PostgreSQL, made by the commands
# of gorgon-rs' callbacks: the template, then the pair of parallel_test's two processes
# (TEST_ENV_NUMBER empty and 2; the serial run uses the first). Run in the project.
pg_databases() {
    sh gorgon-databases.sh template
    TEST_ENV_NUMBER="" sh gorgon-databases.sh worker
    TEST_ENV_NUMBER=2 sh gorgon-databases.sh worker
}

# Active Record's suite on PostgreSQL: the tree of the minitest suite, with a pair of
# databases per worker (bench/activerecord_pg), made once per host and copied per worker by
# gorgon-rs' callbacks (docs/databases.md), and by pg_databases before the framework's runs.
# gorgon-rs runs on the 2 listeners, without history and again with it.
bench_postgresql() {
    prepare_postgresql
    local project=$work/postgresql files=()
    cp -a "$minitest_tree/activerecord" "$project"
    cp "$bench_repo/bench/activerecord_pg/config.yml" "$project/test/config.yml"
    cp "$bench_repo/bench/activerecord_pg/databases.sh" "$project/gorgon-databases.sh"
    mapfile -t files < <(cd "$project" && minitest_files postgresql)
    local server
    server=$(psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -Atc 'show server_version' postgres)
    suite_name="Active Record $rails_version (Debian source rails) on PostgreSQL $server, pg $(ruby -rpg -e 'print PG::VERSION'), minitest $(ruby -rminitest -e 'print Minitest::VERSION')"
    # Seen by `bench` (bash's dynamic scope), for this suite only.
    local before_run=pg_databases
    local job_extra='"callbacks": {"before_creating_workers": "sh gorgon-databases.sh template", "before_start": "sh gorgon-databases.sh worker"},'
    local gorgon_runs=("gorgon-first|gorgon 2x2, first run|"
        "gorgon|gorgon 2x2, with history|")
    bench postgresql "$project" "test/cases/**/*_test.rb" "rake test:postgresql" minitest \
        "parallel_test -n 2" \
        "{\"kind\": \"minitest\", \"allow_empty_files\": true, \"file_timeout\": $file_timeout}" \
        -- rake test:postgresql \
        -- env RUBYOPT=-Ilib parallel_test -n 2 "${files[@]}" \
        -- "${files[@]}"
}

for suite in "${suites[@]}"; do
    "bench_$suite"
done
if [ -n "${REAL_LOGS:-}" ]; then
    echo "outputs of every run: $logs"
fi
