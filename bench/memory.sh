#!/usr/bin/env bash
# The two memory targets of bench/overhead.sh alone, quicker to repeat while tracing:
#   1. the originator's peak RSS with 100,000 queued files that no listener takes (first run:
#      every file hashed; second run: the digests come from the cache);
#   2. a listener's RSS fresh, and idle after each of three jobs of 500 empty files.
# Usage: bench/memory.sh    (GORGON_BIN=path to skip the build; FILES=N for the jobs of 2)
# Results: docs/benchmarks.md ("Tracing the memory targets").
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_one_host one 4
mkdir -p "$work/many/tests"
unserved_project "$work/huge"
echo "== originator peak RSS with 100,000 queued files (target: at most 100 MB)"
for round in "first run" "second run"; do
    echo "$round: $(peak_rss "$work/huge") kB"
done

echo "== listener RSS (target: at most 10 MB idle)"
for i in $(seq 1 "${FILES:-500}"); do echo 'exit 0' >"$work/many/tests/f${i}_test.sh"; done
write_config "$work/many" "tests/*_test.sh" '{"command": "sh {file}"}'
wait_for_listeners "$work/many" 1
rss() { awk '/VmRSS/ {print $2}' "/proc/${listener_pids[0]}/status"; }
echo "fresh: $(rss) kB"
for job in 1 2 3; do
    (cd "$work/many" && "$gorgon" start >/dev/null 2>&1)
    sleep 1
    echo "idle after job $job: $(rss) kB"
done
