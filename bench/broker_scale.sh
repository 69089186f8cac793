#!/usr/bin/env bash
# The broker's side of a large fleet: for each K of SCALE_HOSTS (default 10,100,1000),
# K simulated hosts (each with a listener and a worker manager connection, as a real host
# has, answering every file at once: its start and result in one message, or in two with
# SCALE_APART=1) serve one real `gorgon start` of SCALE_FILES files
# (default 2000), whose runtime file says each took 2 ms, so that the originator packs them
# several to a message (job.pack_seconds); a batch's replies go 64 to a message, as a manager
# sends replies ready together, or each file's in a message of its own with
# SCALE_FILE_BY_FILE=1; prints each run's wall time, files per second, the most broker connections
# seen and the broker's memory and CPU during the run (see docs/benchmarks.md). Needs RabbitMQ
# on this machine (AMQP_HOST/AMQP_PORT), started with enough open files for 2 connections
# per host (scripts/lib/prerequisites.sh starts it with the hard limit), and rsync.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SCALE_HOSTS=${SCALE_HOSTS:-10,100,1000}
export SCALE_FILES=${SCALE_FILES:-2000}
cargo test --release --quiet --test broker_scale -- --ignored --nocapture
