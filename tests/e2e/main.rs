//! The end-to-end tests, in one test binary: the real `gorgon` binary, listeners, worker
//! managers and workers against the real RabbitMQ and rsync (see `support`). The tests that
//! stop the shared broker or load the machine run in binaries of their own:
//! `tests/broker_restart.rs`, `tests/broker_cluster.rs`, `tests/chaos.rs` and
//! `tests/broker_scale.rs`.

#[path = "../support/mod.rs"]
mod support;

mod apps;
mod artifacts;
mod ci_nodes;
mod clean_logs;
mod config_errors;
mod config_mistakes;
mod contain;
mod docs;
mod drain;
mod far;
mod faults;
mod fresh_broker;
mod impact;
mod local;
mod manager;
mod metrics;
mod neighbours;
mod ops;
mod packed;
mod phases;
mod pipeline;
mod retries;
mod runners;
mod slots;
mod spare;
mod status;
mod tree;
mod trust;
