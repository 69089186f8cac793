#!/usr/bin/env bash
# A large tree: 50,000 files of 20 KB (about 1 GB) and one test file, one listener. Measures
# plain `rsync -a` pushing the tree to the file server and pulling it into a fresh folder (what
# a first run cannot avoid), then gorgon-rs's first run (cold file server, cold listener) and an
# unchanged re-run (warm workspace). Targets: first run at most 1.2 times plain rsync; the
# unchanged re-run at most 1 s more than a one-file run (bench/overhead.sh, about 0.1 s).
# Results: docs/benchmarks.md. Needs about 3 GB of free disk in TMPDIR.
#
# Needs RabbitMQ on 127.0.0.1:5672, rsync, bc and python3. Usage: bench/large_tree.sh
# (FILES, RUNS for the re-run; GORGON_BIN=path to skip the build)
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
files=${FILES:-50000}
runs=${RUNS:-3}

start_one_host big 2
project=$work/large
mkdir -p "$project/tests"
echo 'exit 0' >"$project/tests/only_test.sh"
python3 - "$project/data" "$files" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(count):
    folder = os.path.join(root, f"d{i // 500:03d}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"f{i:05d}.bin"), "wb") as f:
        f.write(rng.randbytes(20_000))
PY
echo "tree: $(du -sh "$project" | cut -f1), $(find "$project" -type f | wc -l) files"
write_config "$project" "tests/*_test.sh" '{"command": "sh {file}"}'
wait_for_listeners "$project" 1

plain_push=$(seconds rsync -a --delete "$project/" "rsync://127.0.0.1:$rsync_port/src/plain/")
plain_pull=$(seconds rsync -a --delete "rsync://127.0.0.1:$rsync_port/src/plain/" "$work/plain-pull/")
plain=$(echo "$plain_push + $plain_pull" | bc -l)
first=$(cd "$project" && EXPECT="1 file: 1 passed" seconds "$gorgon" start)
EXPECT="1 file: 1 passed" gorgon_runs "$project" "$runs"
again=("${times[@]}")
again_median=$(median "${again[@]}")
echo "plain rsync -a: push $plain_push s + pull $plain_pull s = $plain s"
echo "gorgon first run: $first s, $(ratio "$first" "$plain")x plain rsync (target: at most 1.2x)"
echo "gorgon unchanged re-run: ${again[*]}; median $again_median s (target: at most the one-file run + 1 s)"
