//! The wire shared by every gorgon-rs process: messages, queue and exchange names, the broker
//! client, exit codes and the job definition that travels from the originator to each worker.
//! The broker client (`broker`, the only module that uses lapin) comes with the `broker`
//! feature, on by default; crates that never talk to RabbitMQ (`gorgon-exec`) go without it.

#[cfg(feature = "broker")]
pub mod broker;
pub mod config_file;
pub mod connection;
pub mod exit_code;
pub mod impact;
pub mod job;
pub mod manager_report;
pub mod message;
pub mod names;
pub mod runner_protocol;
pub mod signing;

#[cfg(feature = "broker")]
pub use broker::{Broker, BrokerError, ConsumerChannel, Inbox, Incoming, Unconfirmed};
pub use connection::{BrokerSettings, ConnectionError};
pub use impact::{FileImpact, SourceUse};
pub use job::{
    batch_size, ArtifactFile, Artifacts, Callbacks, FileGlob, Isolation, JobDefinition, LiveOutput,
    PhaseRunner, RunnerChoice, RunnerChoiceError, RunnerKind, RunnerSettings, SyncSettings,
    SyncTransport, TreeSeal, MAX_BATCH_FILES,
};
pub use manager_report::ManagerReport;
pub use message::{
    CallbackName, DecodeError, Envelope, FileResult, FileStatus, FleetOutcome, ListenerInfo,
    ListenerJob, Message, RetryOf, TestResult, TestStatus, WorkerAssignment,
};
pub use runner_protocol::{
    BatchRequest, FileDone, RunOutcome, RunRequest, RunnerMessage, WorkerRequest,
    RUNNER_PROTOCOL_VERSION,
};

/// Version of the wire protocol. A process drops a message whose `protocol` differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of gorgon-rs itself, reported by `gorgon ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
