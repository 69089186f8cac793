#!/usr/bin/env bash
# Runs the example suite (examples/shell-suite) end to end on this machine, through the same path
# as a real cluster: RabbitMQ, an rsync daemon as the file server, one listener, `gorgon start`.
#
# Installs rsync and RabbitMQ with apt-get when they are missing (root or sudo needed for that),
# starts the broker when nothing listens on 127.0.0.1:5672 and leaves it running; stops the rsync
# daemon and the listener it started, removes its temporary files, and exits with the exit code
# of `gorgon start`.
#
# Usage: scripts/quickstart.sh [FILE...]
#   FILE...     passed on to `gorgon start`, e.g. failing/broken_test.sh to see a failure report
#   GORGON_BIN  path of an already built gorgon binary; skips `cargo build`
#   GORGON_LISTENER_NAME, GORGON_CLUSTER_ID, GORGON_LISTENER_PASSWORD
#               a listener that already runs (named so, in that cluster, with that password
#               for the file server): the suite runs there, and no listener is started
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/prerequisites.sh
. "$repo/scripts/lib/prerequisites.sh"

step() { printf '\n==> %s\n' "$*"; }

work=""
listener_pid=""
rsync_port=""
gorgon=""

# shellcheck disable=SC2317  # only reached through the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$listener_pid" ] && kill -0 "$listener_pid" 2>/dev/null; then
        step "Stopping the listener"
        kill -TERM "$listener_pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$listener_pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$listener_pid" 2>/dev/null || true
        wait "$listener_pid" 2>/dev/null || true
    fi
    if [ -n "$rsync_port" ]; then
        step "Stopping the rsync daemon on port $rsync_port"
        "$gorgon" stop_rsync --port "$rsync_port" || true
    fi
    if [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Checking rsync and RabbitMQ"
install_missing_packages
start_rabbitmq 60

if [ -n "${GORGON_BIN:-}" ]; then
    step "Using $GORGON_BIN"
    gorgon=$GORGON_BIN
    if [ ! -x "$gorgon" ]; then
        echo "error: GORGON_BIN=$gorgon is not an executable file" >&2
        exit 1
    fi
else
    step "Building gorgon (cargo build --release; a few minutes the first time)"
    (
        cd "$repo"
        cargo build --release --locked || {
            echo "retrying without --locked"
            cargo build --release
        }
    )
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    case $target_dir in
        /*) ;;
        *) target_dir=$repo/$target_dir ;;
    esac
    gorgon=$target_dir/release/gorgon
fi
gorgon=$(cd "$(dirname "$gorgon")" && pwd)/$(basename "$gorgon")
if [ ! -x "$gorgon" ]; then
    echo "error: no gorgon binary at $gorgon" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gorgon-quickstart.XXXXXX")
mkdir -p "$work/file_server" "$work/workspaces"
# A cluster id of our own, so that listeners already on this broker never take this job and this
# listener never takes theirs.
cluster_id=${GORGON_CLUSTER_ID:-"quickstart-$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"}
listener_name=${GORGON_LISTENER_NAME:-quickstart-listener}

step "Starting the file server (gorgon start_rsync)"
# Its two users: the originator, which may write, and the listener, which may only read.
originator_password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
listener_password=${GORGON_LISTENER_PASSWORD:-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')}
file_server_secrets=$work/file_server_secrets.json
(umask 077 && cat >"$file_server_secrets" <<JSON
{"file_server": {"originator_password": "$originator_password", "listener_password": "$listener_password"}}
JSON
)
for _attempt in 1 2 3 4 5; do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if port_open 127.0.0.1 "$port"; then
        continue
    fi
    if "$gorgon" start_rsync "$work/file_server" --port "$port" --address 127.0.0.1 \
        --secrets "$file_server_secrets"; then
        rsync_port=$port
        break
    fi
done
if [ -z "$rsync_port" ]; then
    echo "error: could not start an rsync daemon on a free port" >&2
    exit 1
fi
echo "rsync daemon on 127.0.0.1:$rsync_port serving $work/file_server"

step "Preparing the example project"
project=$work/project
cp -R "$repo/examples/shell-suite" "$project"
cat >"$project/gorgon.json" <<JSON
// Written by scripts/quickstart.sh for this run.
{
  "connection": { "host": "127.0.0.1", "port": 5672, "username": "guest", "password": "guest", "vhost": "/" },
  "file_server": { "host": "127.0.0.1", "port": $rsync_port },
  "files": ["tests/**/*_test.sh"],
  "job": {
    "sync": { "exclude": [".git", "gorgon-runtime.json"], "rsync_transport": "daemon" },
    "runner": { "command": "sh {file}" },
    "listener_wait": 30
  },
  "runtime_file": "gorgon-runtime.json",
  "cluster_id": "$cluster_id"
}
JSON
# The originator's file-server password, kept out of gorgon.json as a team would.
(umask 077 && cat >"$project/gorgon_secret.json" <<JSON
{"file_server": {"originator_password": "$originator_password"}}
JSON
)
echo "project copied to $project (cluster $cluster_id)"

start_listener() {
    step "Starting a listener (gorgon listen)"
    listener_config=$work/gorgon_listener.json
    listener_log=$work/listener.log
    cat >"$listener_config" <<JSON
// Written by scripts/quickstart.sh for this run.
{
  "connection": { "host": "127.0.0.1", "port": 5672, "username": "guest", "password": "guest", "vhost": "/" },
  "worker_slots": 2,
  "name": "$listener_name",
  "workspace_root": "$work/workspaces",
  "cluster_id": "$cluster_id",
  "file_server": { "listener_password": "$listener_password" },
  // This listener lives only for this run (and CI machines run it as root).
  "allow_root": true
}
JSON
    # In a session of its own (setsid), so that a Ctrl-C in this terminal reaches `gorgon start`,
    # which cancels the job cleanly, and not the listener, which this script stops afterwards.
    launcher=()
    if command -v setsid >/dev/null 2>&1; then
        launcher=(setsid)
    fi
    GORGON_LOG=${GORGON_LOG:-info} "${launcher[@]}" "$gorgon" listen --config "$listener_config" \
        </dev/null >"$listener_log" 2>&1 &
    listener_pid=$!
}

listener_log=""
if [ -n "${GORGON_LISTENER_NAME:-}" ]; then
    step "Using the running listener $listener_name"
else
    start_listener
fi

# Ready once the listener logs that it listens, or once `gorgon ping` sees it: at most 30 s.
ready=""
deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -n "$listener_pid" ] && ! kill -0 "$listener_pid" 2>/dev/null; then
        echo "error: the listener exited; its log:" >&2
        cat "$listener_log" >&2
        listener_pid=""
        exit 1
    fi
    if [ -n "$listener_log" ] && grep -qi "listening as" "$listener_log"; then
        ready=yes
        break
    fi
    pong=$("$gorgon" ping --config "$project/gorgon.json" --timeout 2 </dev/null 2>/dev/null || true)
    case $pong in
        *"$listener_name"*)
            ready=yes
            break
            ;;
    esac
    sleep 0.5
done
if [ -z "$ready" ]; then
    echo "error: the listener did not become ready within 30 s; its log:" >&2
    [ -z "$listener_log" ] || cat "$listener_log" >&2
    exit 1
fi
echo "listener $listener_name is ready${listener_log:+ (log: $listener_log)}"

step "Running the suite: gorgon start $*"
status=0
(cd "$project" && "$gorgon" start "$@") || status=$?

step "gorgon start exited with $status"
# Exit 1 is a test failure, which the report above explains; anything else is worth the log.
if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
    if [ -n "$listener_log" ]; then
        echo "--- listener log ---"
        tail -n 40 "$listener_log" || true
    fi
fi
exit "$status"
