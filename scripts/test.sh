#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test of the workspace.
#
# The end-to-end tests drive the real `gorgon` binary against a real RabbitMQ (AMQP_HOST and
# AMQP_PORT, default 127.0.0.1:5672, guest/guest) and rsync; .ci/run or scripts/quickstart.sh installs and starts them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --locked keeps CI on the dependency versions in Cargo.lock.
locked=()
if [ -f Cargo.lock ]; then
    locked=(--locked)
fi

if ! (exec 3<>"/dev/tcp/${AMQP_HOST:-127.0.0.1}/${AMQP_PORT:-5672}") 2>/dev/null; then
    echo "warning: nothing listens on ${AMQP_HOST:-127.0.0.1}:${AMQP_PORT:-5672}; the tests that need RabbitMQ will fail" >&2
    echo "         (run .ci/run, or scripts/quickstart.sh once, to install and start it)" >&2
fi
if ! command -v rsync >/dev/null 2>&1; then
    echo "warning: rsync is not installed; the tests that sync a project will fail" >&2
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check

echo "==> cargo clippy --workspace --all-targets ${locked[*]} -- -D warnings"
cargo clippy --workspace --all-targets "${locked[@]}" -- -D warnings

echo "==> cargo test --workspace ${locked[*]}"
cargo test --workspace "${locked[@]}"
