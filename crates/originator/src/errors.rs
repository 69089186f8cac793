//! Why a run of the originator ends other than by running every file: the errors that keep
//! it from starting or going on ([`StartError`]), why an engine stops early ([`Stop`]), and
//! the one table that maps each of them, and a run's verdict, to the exit code users see
//! ([`exit_code`]).

use std::path::PathBuf;

use gorgon_exec::rsync;
use gorgon_exec::signals::StopSignal;
use gorgon_protocol::{exit_code, BrokerError};

use crate::files::FilesError;
use crate::rerun::RerunError;
use crate::settings::ConfigError;

/// A run that could not start or went wrong outside the tests.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] FilesError),
    /// A tree that cannot be pushed as it is (links that lead out of the project, an
    /// exclude pattern that cannot be matched): refused before the push.
    #[error(transparent)]
    Tree(#[from] crate::tree::SealError),
    #[error(transparent)]
    Rerun(#[from] RerunError),
    /// `--changed` could not tell what changed, or read the impact map.
    #[error(transparent)]
    Impact(#[from] crate::impact::ImpactError),
    #[error(transparent)]
    Quarantine(#[from] crate::quarantine::QuarantineError),
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error(transparent)]
    Runner(#[from] gorgon_protocol::RunnerChoiceError),
    #[error("cannot write the events file {}: {source}", path.display())]
    EventsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there are no files to test: no file matches {0}")]
    NoFiles(String),
    #[error("{0} belongs to no phase: it matches the files of none of the configuration's phases")]
    NoPhase(String),
    /// A CI build (`gorgon work`, `gorgon report --build-id`) that this node or reporter
    /// cannot take part in as configured (no build id, a checkout that differs).
    #[error("{0}")]
    Build(String),
    /// A file of a CI node's checkout that cannot be read for its digest.
    #[error("cannot read {}: {source}", path.display())]
    BuildFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CI build that did not run: no node came, or its results are gone.
    #[error("{0}")]
    BuildLost(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("pushing the source tree to the file server failed: {0}")]
    Push(#[source] rsync::RsyncError),
    /// `before_originate` failed: the failure, then what the callback printed.
    #[error("{failure}\n{output}")]
    BeforeOriginate {
        #[source]
        failure: gorgon_exec::CallbackFailure,
        output: String,
    },
    #[error("cannot start the local workers: {0}")]
    LocalWorkers(#[source] std::io::Error),
    /// A stop signal before the job was published (during `before_originate`, the push).
    #[error("{} while {during}", stopped_by(*.signal))]
    Stopped {
        signal: StopSignal,
        during: &'static str,
    },
}

/// How a stop signal reads in a sentence.
fn stopped_by(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Interrupt => "interrupted",
        StopSignal::Terminate => "terminated",
    }
}

/// Why an engine stopped before every file had a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Interrupted,
    Terminated,
    Failed(String),
    /// The broker stayed away past `connection.outage_limit`.
    BrokerLost(String),
}

impl From<StopSignal> for Stop {
    fn from(signal: StopSignal) -> Stop {
        match signal {
            StopSignal::Interrupt => Stop::Interrupted,
            StopSignal::Terminate => Stop::Terminated,
        }
    }
}

impl Stop {
    /// The reason shown in the report and sent with a cancel.
    pub(crate) fn reason(&self) -> String {
        match self {
            Stop::Interrupted => "interrupted (Ctrl-C)".to_owned(),
            Stop::Terminated => "terminated (SIGTERM)".to_owned(),
            Stop::Failed(reason) | Stop::BrokerLost(reason) => reason.clone(),
        }
    }
}

/// How a command of the originator ended, as far as its exit code goes.
#[derive(Clone, Copy, Debug)]
pub enum Ending<'a> {
    /// A run that went to its end (or stopped, `stop`), with its verdict.
    Run {
        passed: bool,
        stop: Option<&'a Stop>,
    },
    /// A stop signal that ended a command (a CI node's part).
    Signal(StopSignal),
    /// An error that ended a command.
    Error(&'a StartError),
}

/// The exit code of each way a command of the originator ends: the one table of them
/// (`gorgon_protocol::exit_code`, documented in the README and pinned by the end-to-end
/// tests). The binary's other commands map their own errors beside it.
pub fn exit_code(ending: Ending<'_>) -> i32 {
    match ending {
        Ending::Signal(signal) | Ending::Error(&StartError::Stopped { signal, .. }) => {
            signal_code(signal)
        }
        Ending::Run {
            stop: Some(Stop::Interrupted),
            ..
        } => signal_code(StopSignal::Interrupt),
        Ending::Run {
            stop: Some(Stop::Terminated),
            ..
        } => signal_code(StopSignal::Terminate),
        // The broker lost for good is the broker's code, whatever ran before.
        Ending::Run {
            stop: Some(Stop::BrokerLost(_)),
            ..
        } => exit_code::CONFIG_OR_BROKER,
        // A stop for a failure leaves files without results or a problem that fails the
        // run: the verdict says so.
        Ending::Run { passed: true, .. } => exit_code::SUCCESS,
        Ending::Run { passed: false, .. } => exit_code::FAILURE,
        Ending::Error(StartError::Push(_)) => exit_code::SYNC_FAILED,
        Ending::Error(
            StartError::BeforeOriginate { .. }
            | StartError::LocalWorkers(_)
            | StartError::BuildLost(_),
        ) => exit_code::FAILURE,
        Ending::Error(
            StartError::Config(_)
            | StartError::Files(_)
            | StartError::Tree(_)
            | StartError::Rerun(_)
            | StartError::Impact(_)
            | StartError::Quarantine(_)
            | StartError::Replay(_)
            | StartError::Runner(_)
            | StartError::EventsFile { .. }
            | StartError::NoFiles(_)
            | StartError::NoPhase(_)
            | StartError::Build(_)
            | StartError::BuildFile { .. }
            | StartError::Broker(_),
        ) => exit_code::CONFIG_OR_BROKER,
    }
}

/// A signal's exit code: 128 + its number, as shells report it.
fn signal_code(signal: StopSignal) -> i32 {
    match signal {
        StopSignal::Interrupt => exit_code::INTERRUPTED,
        StopSignal::Terminate => exit_code::TERMINATED,
    }
}

impl Stop {
    /// The exit code of a run that this stopped whatever its results, from [`exit_code`].
    pub(crate) fn exit_code(&self) -> i32 {
        exit_code(Ending::Run {
            passed: false,
            stop: Some(self),
        })
    }
}

impl StartError {
    /// This error's exit code, from [`exit_code`].
    pub fn exit_code(&self) -> i32 {
        exit_code(Ending::Error(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_documented_code() {
        let run = |passed, stop: Option<&Stop>| exit_code(Ending::Run { passed, stop });
        assert_eq!(run(true, None), exit_code::SUCCESS);
        assert_eq!(run(false, None), exit_code::FAILURE);
        let failed = Stop::Failed("a callback failed".into());
        assert_eq!(run(false, Some(&failed)), exit_code::FAILURE);
        assert_eq!(run(true, Some(&Stop::Interrupted)), exit_code::INTERRUPTED);
        assert_eq!(run(false, Some(&Stop::Terminated)), exit_code::TERMINATED);
        let lost = Stop::BrokerLost("gone".into());
        assert_eq!(run(true, Some(&lost)), exit_code::CONFIG_OR_BROKER);
        assert_eq!(
            exit_code(Ending::Signal(StopSignal::Interrupt)),
            exit_code::INTERRUPTED
        );
        assert_eq!(
            exit_code(Ending::Signal(StopSignal::Terminate)),
            exit_code::TERMINATED
        );
        let error = |error: StartError| error.exit_code();
        assert_eq!(
            error(StartError::NoFiles("x".into())),
            exit_code::CONFIG_OR_BROKER
        );
        assert_eq!(error(StartError::BuildLost("x".into())), exit_code::FAILURE);
        let io = || std::io::Error::other("no");
        assert_eq!(error(StartError::LocalWorkers(io())), exit_code::FAILURE);
        let stopped = StartError::Stopped {
            signal: StopSignal::Terminate,
            during: "pushing the source tree",
        };
        assert_eq!(
            stopped.to_string(),
            "terminated while pushing the source tree"
        );
        assert_eq!(error(stopped), exit_code::TERMINATED);
    }
}
