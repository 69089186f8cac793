#!/usr/bin/env bash
# Benchmark of the built-in persistent `rspec` runner against the `command` runner
# (`rspec {file}`, one Ruby process per file): generates 300 trivial spec files, starts an rsync
# daemon and one listener with 4 slots on loopback, runs `gorgon start` with each runner
# several times and prints the median wall times and their ratio. Results: docs/benchmarks.md.
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), rsync, ruby and ruby-rspec
# (scripts/lib/prerequisites.sh installs them).
#
# Usage: bench/runners.sh
#   RUNS=5       runs per runner (default 3)
#   FILES=300    spec files generated
#   GORGON_BIN   an already built gorgon; otherwise `cargo build --release`
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-3}
files=${FILES:-300}

if [ -z "${GORGON_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --quiet)
    GORGON_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/gorgon
fi
gorgon=$(cd "$(dirname "$GORGON_BIN")" && pwd)/$(basename "$GORGON_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/gorgon-bench.XXXXXX")
listener_pid=""
rsync_port=""
# shellcheck disable=SC2317  # only reached through the EXIT trap
cleanup() {
    if [ -n "$listener_pid" ]; then
        kill -TERM "$listener_pid" 2>/dev/null || true
        wait "$listener_pid" 2>/dev/null || true
    fi
    if [ -n "$rsync_port" ]; then
        "$gorgon" stop_rsync --port "$rsync_port" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cluster_id="bench-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
mkdir -p "$work/file_server" "$work/workspaces" "$work/project/spec"
for _attempt in 1 2 3 4 5; do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if "$gorgon" start_rsync "$work/file_server" --port "$port" --address 127.0.0.1 >/dev/null 2>&1; then
        rsync_port=$port
        break
    fi
done
[ -n "$rsync_port" ] || { echo "error: could not start an rsync daemon" >&2; exit 1; }

# The same 300 files every time: each a group of three trivial examples.
for i in $(seq -w 1 "$files"); do
    n=$((10#$i))
    cat >"$work/project/spec/generated_${i}_spec.rb" <<RUBY
RSpec.describe "generated $i" do
  it("adds") { expect($n + 1).to eq($((n + 1))) }
  it("compares") { expect("$i").to eq("$i") }
  it("collects") { expect([$n].size).to eq(1) }
end
RUBY
done

cat >"$work/gorgon_listener.json" <<JSON
{
  "connection": { "host": "127.0.0.1", "port": 5672 },
  "worker_slots": 4,
  "name": "bench",
  "workspace_root": "$work/workspaces",
  "cluster_id": "$cluster_id"
}
JSON
setsid "$gorgon" listen --config "$work/gorgon_listener.json" </dev/null >"$work/listener.log" 2>&1 &
listener_pid=$!

write_config() {
    cat >"$work/project/gorgon.json" <<JSON
{
  "connection": { "host": "127.0.0.1", "port": 5672 },
  "file_server": { "host": "127.0.0.1", "port": $rsync_port },
  "files": ["spec/**/*_spec.rb"],
  "cluster_id": "$cluster_id",
  "job": { "runner": $1, "listener_wait": 30 }
}
JSON
}

# Waits (at most 30 s) until `gorgon ping` sees the listener.
write_config '{"kind": "rspec"}'
deadline=$((SECONDS + 30))
until (cd "$work/project" && "$gorgon" ping --timeout 1 2>/dev/null) | grep -q "1 listener"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "error: the listener did not come up" >&2; cat "$work/listener.log" >&2; exit 1; }
done

# Runs `gorgon start` once and prints its wall time in seconds; fails unless every file passed.
time_run() {
    local start end
    start=$(date +%s.%N)
    if ! (cd "$work/project" && "$gorgon" start </dev/null >"$work/last.out" 2>"$work/last.err"); then
        echo "error: gorgon start failed:" >&2
        tail -n 20 "$work/last.out" "$work/last.err" >&2
        exit 1
    fi
    grep -q "$files files: $files passed" "$work/last.out" || { cat "$work/last.out" >&2; exit 1; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

median() {
    sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A medians
for runner in persistent command; do
    case $runner in
        persistent) write_config '{"kind": "rspec"}' ;;
        command) write_config '{"kind": "command", "command": "rspec {file}"}' ;;
    esac
    times=()
    for run in $(seq 1 "$runs"); do
        t=$(time_run)
        times+=("$t")
        printf '%-10s run %d: %6.2f s\n' "$runner" "$run" "$t"
    done
    medians[$runner]=$(printf '%s\n' "${times[@]}" | median)
done

printf '\n%d spec files, 1 listener with 4 slots, %d runs each\n' "$files" "$runs"
printf 'built-in rspec runner (persistent): median %6.2f s\n' "${medians[persistent]}"
printf 'command runner (rspec {file}):      median %6.2f s\n' "${medians[command]}"
printf 'ratio: the persistent runner is %.1fx faster\n' "$(echo "${medians[command]} / ${medians[persistent]}" | bc -l)"
