#!/usr/bin/env bash
# The chaos harness: CHAOS_RUNS runs (default 100) of a mixed suite on three listeners on
# loopback, each with one or two faults injected at a random moment from the seeded sequence
# CHAOS_SEED (kill -9 of a worker, a worker manager or a whole listener; a listener's process
# tree frozen past the heartbeat and thawed; a file hanging past its timeout; the broker
# restarted with rabbitmqctl stop_app / start_app). It checks every
# run's exit code, that each file has exactly one result and the right one, and that no
# process or queue of the job is left, then prints the counts and the seed (see
# docs/reliability.md). Needs RabbitMQ on 127.0.0.1:5672 (or AMQP_HOST/AMQP_PORT),
# rabbitmqctl and rsync; .ci/run or scripts/quickstart.sh installs them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CHAOS_RUNS=${CHAOS_RUNS:-100}
export CHAOS_SEED=${CHAOS_SEED:-$(date +%s)}
echo "chaos: $CHAOS_RUNS runs, seed $CHAOS_SEED (replay with CHAOS_SEED=$CHAOS_SEED)"
cargo test --release --quiet --test chaos -- --ignored --nocapture
