#!/usr/bin/env bash
# The HTML report on a large generated run: an event stream of FILES files (default 10,000)
# over LANES workers (default 200, on 20 hosts), every 50th failing with some output, made
# into a page by `gorgon report EVENTS --html PAGE`. Prints the time to make the page, its
# size and how many bars it draws (one per file). Results: docs/benchmarks.md.
#
# Needs python3. Usage: bench/html.sh  (FILES, LANES, RUNS; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
files=${FILES:-10000}
lanes=${LANES:-200}
runs=${RUNS:-3}
events=$work/events.jsonl
python3 - "$files" "$lanes" "$events" <<'PY'
import json, sys
from datetime import datetime, timedelta, timezone
files, lanes, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
start = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
def at(seconds):
    return (start + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
hosts = 20
with open(path, "w") as out:
    def emit(when, **event):
        out.write(json.dumps({"schema": 1, "time": at(when), **event}) + "\n")
    emit(0, event="run_started", job_id="generated", project="generated", cluster="bench", files=[])
    for host in range(hosts):
        emit(0.1, event="listener_joined", host=f"host{host}", slots=lanes // hosts)
    # Each lane runs its files back to back, each 0.5-1.5 s long.
    clock = [0.2] * lanes
    for number in range(files):
        lane = number % lanes
        host, worker = f"host{lane % hosts}", lane // hosts + 1
        seconds = 0.5 + (number * 7919 % 1000) / 1000
        name = f"spec/models/file_{number:05}_spec.rb"
        emit(clock[lane], event="file_started", file=name, host=host, worker_id=worker)
        failed = number % 50 == 7
        clock[lane] += seconds
        emit(clock[lane], event="file_finished", verdict="failed" if failed else "passed", file=name,
             host=host, worker_id=worker, status="failed" if failed else "passed", seconds=seconds,
             exit="exit status 1" if failed else "exit status 0",
             output="expected 1, got 2\n" * 20 if failed else "",
             tests=[{"name": f"file {number} test {t}", "status": "failed" if failed and t == 0 else "passed",
                     "seconds": seconds / 5, "message": "expected 1, got 2" if failed and t == 0 else None}
                    for t in range(5)])
    end = max(clock)
    emit(end, event="run_finished", exit_code=1, seconds=end,
         totals={"files": files, "passed": files - files // 50, "failed": files // 50})
PY
echo "$files files on $lanes lanes: event stream $(du -h "$events" | cut -f1)"
times=()
for _ in $(seq 1 "$runs"); do
    times+=("$(seconds "$gorgon" report "$events" --html "$work/report.html")")
done
bars=$(grep -o '<rect class="bar ' "$work/report.html" | wc -l)
echo "gorgon report: ${times[*]}; median $(median "${times[@]}") s"
echo "page: $(du -h "$work/report.html" | cut -f1), $bars bars (one per file: $files)"
[ "$bars" -eq "$files" ] || { echo "error: the page draws $bars bars for $files files" >&2; exit 1; }
if [ -n "${HTML_KEEP:-}" ]; then
    cp "$work/report.html" "$HTML_KEEP"
    echo "kept the page in $HTML_KEEP"
fi
