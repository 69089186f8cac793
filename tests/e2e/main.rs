//! The end-to-end tests, in one test binary: the real `gorgon` binary, listeners, worker
//! managers and workers against the real RabbitMQ and rsync (see `support`). Only the broker
//! restart, which stops the shared broker, runs in a binary of its own
//! (`tests/broker_restart.rs`).

#[path = "../support/mod.rs"]
mod support;

mod ci_nodes;
mod config_errors;
mod docs;
mod faults;
mod local;
mod manager;
mod ops;
mod phases;
mod pipeline;
mod retries;
mod runners;
mod trust;
