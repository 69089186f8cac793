//! Every message that crosses a queue or a process boundary, and its JSON envelope.
//!
//! All messages share one envelope that names the protocol version and the job (or ping) id;
//! signatures travel beside it, in the AMQP headers (see `signing`). The body is one closed
//! enum tagged by `type`; each queue expects a subset, and a process drops (and logs)
//! anything else.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::connection::BrokerSettings;
use crate::job::JobDefinition;
use crate::PROTOCOL_VERSION;

/// The largest message a process accepts, in bytes. Larger ones are dropped unread.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The outer shape of every message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The job this message belongs to (for pings, the ping's own id).
    pub job_id: Uuid,
    pub message: Message,
}

/// Why a message could not be turned into an [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is larger than the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("message is not a gorgon-rs envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message speaks protocol {0}, this process speaks {PROTOCOL_VERSION}")]
    WrongVersion(u32),
    /// Refused by the cluster's signing keys (the broker client has logged it, at most once
    /// a minute per sender and reason).
    #[error("message is refused: {0}")]
    Untrusted(#[from] crate::signing::Untrusted),
}

impl DecodeError {
    /// Refused for its signature, and already logged where it was refused.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, DecodeError::Untrusted(_))
    }
}

impl Envelope {
    pub fn new(job_id: Uuid, message: Message) -> Self {
        Envelope {
            protocol: PROTOCOL_VERSION,
            job_id,
            message,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// The envelope as one line of JSON lines (a local worker's stdin and stdout): JSON
    /// escapes every newline inside strings, so the only one is the last byte.
    pub fn encode_line(&self) -> Vec<u8> {
        let mut line = self.encode();
        line.push(b'\n');
        line
    }

    /// Decodes and checks size and version; the version is checked before the body so that
    /// a message from a newer protocol is reported as such, not as malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            protocol: u32,
        }
        let version: VersionOnly = serde_json::from_slice(bytes)?;
        if version.protocol != PROTOCOL_VERSION {
            return Err(DecodeError::WrongVersion(version.protocol));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The body of a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // Originator to listeners (jobs exchange, or one listener's queue).
    /// A job to take part in. `reply_to` is the originator's reply queue.
    Job {
        /// Boxed: the largest message by far, carried rarely.
        definition: Box<JobDefinition>,
        reply_to: String,
    },
    /// `gorgon ping`: answer with [`Message::PingReply`] on `reply_to`.
    Ping {
        reply_to: String,
    },
    /// `gorgon fleet -- COMMAND...`: run `argv` in a scratch folder within `timeout_seconds`
    /// (listeners with `allow_fleet_commands` only) and answer with [`Message::FleetResult`].
    FleetCommand {
        argv: Vec<String>,
        timeout_seconds: f64,
        reply_to: String,
    },
    /// `gorgon drain HOST`: the listener named `host` drains as on SIGTERM (listeners with
    /// `allow_fleet_commands` only; the others ignore it) and answers with
    /// [`Message::DrainAnswer`] on `reply_to`.
    Drain {
        host: String,
        reply_to: String,
    },

    // Listener to the announcements exchange.
    /// A listener has started; originators send it their running job.
    ListenerAnnounced {
        listener_queue: String,
        name: String,
    },

    // Originator to the files queue.
    /// One test file to run, relative to the workspace (or one test of it, by the id its
    /// runner runs it alone with).
    File {
        file: String,
        /// Set when it runs again after a failure (`job.retries`): where it failed, so that
        /// it runs elsewhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<RetryOf>,
        /// Set when it was split out of a batch ([`Message::Files`]) that was delivered
        /// before: it runs alone, once the originator says it still needs a run, as a file
        /// the broker delivers again does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delivered_before: bool,
    },
    /// Several quick files in one message (packed by the originator from their expected
    /// times): each runs and is reported as if it had come alone, and the message is settled
    /// once every file's result has reached the originator. Delivered again (its host died
    /// mid-batch), it is split: each file goes back to the queue alone, marked
    /// `delivered_before`. At most [`crate::job::MAX_BATCH_FILES`] files, none twice
    /// ([`Message::batch_problem`]).
    Files {
        files: Vec<String>,
    },

    // A worker to the originator, and the answer back to the worker's own queue.
    /// A worker got a file the broker delivered before (its earlier worker died): may it
    /// run it? The originator says no once the file has a result.
    RetryCheck {
        file: String,
        reply_to: String,
    },
    RetryAnswer {
        file: String,
        run: bool,
    },

    // The first message of a CI build's log (`gorgon work`): the units the node that filled
    // the files queue queued, in order, and the digests other nodes check their checkouts by.
    BuildDefined {
        build_id: String,
        /// Who filled the queue.
        host: String,
        units: Vec<String>,
        /// Relative path → SHA-256 (hex) of each test file and of the configuration.
        digests: std::collections::BTreeMap<String, String>,
        /// When the files were queued: seconds since the Unix epoch (the build's start).
        queued_at: f64,
    },

    // Originator to the job's control exchange.
    /// Stop the job's workers now.
    Cancel {
        reason: String,
    },

    // Listener, worker manager and workers to the originator's reply queue.
    PingReply(ListenerInfo),
    /// How a fleet command went on one listener.
    FleetResult {
        host: String,
        outcome: FleetOutcome,
    },
    /// A listener drains, with `jobs` still running that finish their files, or says why
    /// it refused to (`refused`).
    DrainAnswer {
        host: String,
        jobs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// A listener has taken the job and starts pulling the tree.
    JobAccepted {
        host: String,
        slots: u32,
        /// The listener's own queue: it exists exactly as long as the listener's connection,
        /// so the originator can tell a listener that died from one that is busy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listener_queue: Option<String>,
    },
    /// The listener's slots are all taken by other jobs: the job waits its turn there, first
    /// come, first served, behind `ahead` other waiting jobs, and is taken (`JobAccepted`)
    /// once slots are free. A waiting job is not taken yet: the originator still gives up
    /// after `job.listener_wait`, and names the listeners that have it waiting.
    JobQueued {
        host: String,
        ahead: u32,
        /// The listener's slots, all busy.
        slots: u32,
    },
    /// The listener will not run the job, and why (too many jobs wait for its slots already,
    /// or it is stopping).
    JobRefused {
        host: String,
        reason: String,
    },
    /// The listener could not pull the tree from the file server.
    SyncFailed {
        host: String,
        output: String,
    },
    /// The tree the listener pulled is not the one the job's manifest lists (changed on
    /// the file server, or the manifest itself not the one signed): nothing of it ran.
    TreeRefused {
        host: String,
        reason: String,
    },
    /// Output of a file that is running, as it is produced (live output): whole lines,
    /// bounded per file (`job.live_output`).
    FileOutput {
        host: String,
        worker_id: u32,
        file: String,
        text: String,
    },
    /// A callback exited non-zero or could not be started.
    CallbackFailed {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_id: Option<u32>,
        callback: CallbackName,
        status: String,
        output: String,
    },
    /// A worker process ended unexpectedly (not through the end of the job or a cancel).
    WorkerCrashed {
        host: String,
        worker_id: u32,
        status: String,
        output: String,
    },
    /// A worker manager ended unexpectedly.
    ManagerCrashed {
        host: String,
        status: String,
        output: String,
    },
    FileStarted {
        host: String,
        worker_id: u32,
        file: String,
    },
    FileFinished(FileResult),
    /// Several replies of one worker manager that were ready together (a worker's result
    /// and its next file's start, the results of workers that finished at once), in the
    /// order they happened: one message through the broker instead of one each. Never
    /// nested; see [`Message::into_replies`].
    Replies {
        replies: Vec<Message>,
    },
    /// Files of the host's workspace that match `job.artifacts`, sent at the end of its
    /// part, before `JobDone`, in several messages when they are large (a file larger than
    /// one message in pieces, each with its offset); `left_out` names what the limit kept
    /// back. `more` says that more of the host's artifacts follow: the originator tells what
    /// came once the last has (a host that never sets it sends one message).
    Artifacts {
        host: String,
        files: Vec<crate::ArtifactFile>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_out: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// The listener has finished its part of the job: workers stopped, callbacks run,
    /// workspace removed.
    JobDone {
        host: String,
    },
}

/// What `gorgon ping` and `gorgon status` show of a listener. The fields after `slots` came
/// with `gorgon status`: a listener older than that answers without them, and its answer
/// decodes with them zero and empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub name: String,
    pub version: String,
    pub slots: u32,
    /// Slots held by its running jobs.
    #[serde(default)]
    pub busy_slots: u32,
    /// Seconds since the listener started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// True once it drains: it takes no more jobs.
    #[serde(default)]
    pub draining: bool,
    /// Its jobs: the running ones, then the waiting ones in their order in line.
    #[serde(default)]
    pub jobs: Vec<ListenerJob>,
}

/// A job on one listener, as `gorgon status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerJob {
    pub job_id: Uuid,
    pub project: String,
    pub originator_host: String,
    /// True once its turn has come; false while it waits for slots.
    pub running: bool,
    /// Seconds since it began to run, or, while it waits, since it was taken.
    pub seconds: u64,
    /// Slots it holds here (none while it waits).
    #[serde(default)]
    pub slots: u32,
    /// Files its workers here run now.
    #[serde(default)]
    pub files_running: u32,
    /// Files its workers here have finished, and the seconds they took together.
    #[serde(default)]
    pub files_done: u32,
    #[serde(default)]
    pub file_seconds: f64,
}

/// What a listener did with a fleet command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FleetOutcome {
    /// It ran: how it ended (`exit status 0`, `timed out after 60 s`), whether that was
    /// success, and its output (head and tail).
    Ran {
        success: bool,
        exit: String,
        output: String,
    },
    /// It did not run the command, and why.
    Refused { reason: String },
}

/// The outcome of running one test file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileResult {
    pub host: String,
    pub worker_id: u32,
    pub file: String,
    pub status: FileStatus,
    /// Wall time of the file's run, in seconds.
    pub seconds: f64,
    /// How the runner ended, e.g. `exit status 1` or `killed by signal 9 (SIGKILL)`.
    pub exit: String,
    /// The runner's combined stdout and stderr (trimmed to its head and tail when long).
    pub output: String,
    /// Per-test results, when the runner gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestResult>,
    /// In a recording run, the project's code the file ran (see [`crate::impact`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<crate::FileImpact>,
}

/// Where a file that runs again failed last: a retry runs on another host when another
/// host has the job, else on another worker than this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOf {
    pub host: String,
    pub worker_id: u32,
    /// Whether another host that took the job works on it: then the failing host hands the
    /// retry back to the queue until another host takes it (for a bounded time, see the
    /// worker manager's feed).
    #[serde(default)]
    pub other_hosts: bool,
    /// Written 0 and no longer read (the hand-back is bounded by time, on the failing
    /// host); kept so that the messages of earlier versions still decode.
    #[serde(default)]
    pub passed_on: u32,
}

impl Message {
    /// Whether the broker must keep this message through a restart (a persistent message,
    /// whose publisher confirm waits for the disk): everything but a file's start and its
    /// live output, whose loss only thins the progress lines, and which come with every file.
    pub fn kept_through_restarts(&self) -> bool {
        match self {
            Message::FileStarted { .. } | Message::FileOutput { .. } => false,
            Message::Replies { replies } => replies.iter().any(Message::kept_through_restarts),
            _ => true,
        }
    }

    /// The replies this message carries, in order: those of [`Message::Replies`] (flattened),
    /// or the message itself.
    pub fn into_replies(self) -> Vec<Message> {
        match self {
            Message::Replies { replies } => replies
                .into_iter()
                .flat_map(Message::into_replies)
                .collect(),
            message => vec![message],
        }
    }

    /// One message for `replies` (the reply itself when there is one).
    pub fn coalesce(mut replies: Vec<Message>) -> Option<Message> {
        match replies.len() {
            0 => None,
            1 => replies.pop(),
            _ => Some(Message::Replies { replies }),
        }
    }
    /// A file to run for the first time.
    pub fn file(file: impl Into<String>) -> Message {
        Message::File {
            file: file.into(),
            retry: None,
            delivered_before: false,
        }
    }

    /// A file split out of a batch that was delivered before ([`Message::Files`]).
    pub fn file_delivered_before(file: impl Into<String>) -> Message {
        Message::File {
            file: file.into(),
            retry: None,
            delivered_before: true,
        }
    }

    /// Why `files` cannot be one batch ([`Message::Files`]), if they cannot: a process that
    /// receives such a batch refuses it with this reason.
    pub fn batch_problem(files: &[String]) -> Option<String> {
        let most = crate::job::MAX_BATCH_FILES;
        if files.is_empty() {
            return Some("a batch of no files".to_owned());
        }
        if files.len() > most {
            return Some(format!(
                "a batch of {} files, more than the {most} one message may hold",
                files.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        files
            .iter()
            .find(|file| !seen.insert(file.as_str()))
            .map(|file| format!("a batch that names {file} twice"))
    }
}

/// The outcome of one test inside a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// Full name, e.g. `Cart totals adds tax` or `test_adds_tax`.
    pub name: String,
    /// Class or group, e.g. `CartTest` or `spec.models.cart_spec`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub classname: String,
    /// The file and line where the test is defined, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub status: TestStatus,
    #[serde(default)]
    pub seconds: f64,
    /// The failure's or skip's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Trimmed backtrace or details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// How the runner runs this test alone, when it can (`spec/cart_spec.rb:7`, a pytest
    /// node id `tests/test_cart.py::test_tax`): queued in place of its file when the file is
    /// split, and recorded in the history for that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The verdict on one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    /// An assertion failed.
    Failed,
    /// The test raised an unexpected error.
    Errored,
    /// Not run: skipped by a condition or a mark (a pytest module skipped as a whole at
    /// collection counts as one skipped test, as pytest counts it).
    Skipped,
    /// RSpec's pending: run, expected to fail, and it did.
    Pending,
    /// pytest's xfail: expected to fail, and it did.
    Xfailed,
    /// pytest's xpass: expected to fail, but passed (a strict xfail that passes is reported
    /// as failed, as pytest reports it).
    Xpassed,
}

impl TestStatus {
    /// Every status, in the order the totals line shows them.
    pub const ALL: [TestStatus; 7] = [
        TestStatus::Passed,
        TestStatus::Failed,
        TestStatus::Errored,
        TestStatus::Skipped,
        TestStatus::Pending,
        TestStatus::Xfailed,
        TestStatus::Xpassed,
    ];

    /// The word for it in reports, as its framework spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Errored => "errored",
            TestStatus::Skipped => "skipped",
            TestStatus::Pending => "pending",
            TestStatus::Xfailed => "xfailed",
            TestStatus::Xpassed => "xpassed",
        }
    }

    /// The test failed the file: an assertion failed or an unexpected error was raised.
    pub fn is_failure(self) -> bool {
        matches!(self, TestStatus::Failed | TestStatus::Errored)
    }
}

/// The verdict on one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Passed,
    Failed,
    /// The runner died by a signal, or could not be started.
    Crashed,
    /// The file ran longer than `job.runner.file_timeout` and was killed.
    TimedOut,
}

/// The callbacks, named as in `gorgon.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackName {
    BeforeOriginate,
    AfterSync,
    BeforeCreatingWorkers,
    BeforeStart,
    AfterComplete,
    AfterCreatingWorkers,
    AfterJobFinishes,
}

impl CallbackName {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackName::BeforeOriginate => "before_originate",
            CallbackName::AfterSync => "after_sync",
            CallbackName::BeforeCreatingWorkers => "before_creating_workers",
            CallbackName::BeforeStart => "before_start",
            CallbackName::AfterComplete => "after_complete",
            CallbackName::AfterCreatingWorkers => "after_creating_workers",
            CallbackName::AfterJobFinishes => "after_job_finishes",
        }
    }
}

impl std::fmt::Display for CallbackName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a listener hands to its worker manager, and the manager to each worker, on stdin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerAssignment {
    pub job_id: Uuid,
    pub definition: JobDefinition,
    /// The originator's reply queue.
    pub reply_to: String,
    /// The broker the manager connects to for the job. Workers speak lines on stdin and
    /// stdout only: the pool hands them the defaults here, never the manager's credentials.
    pub broker: BrokerSettings,
    /// The listener's name, reported as the host of every result.
    pub host: String,
    /// Absolute path of the job's workspace.
    pub workspace: std::path::PathBuf,
    /// Number of workers the manager starts.
    pub slots: u32,
    /// Set for a worker (1..=slots); absent for the manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u32>,
    /// The socket of the warm runner the listener keeps for the job's built-in runner, which
    /// workers fork their runners from (`docs/runner-protocol.md`, "Warm runners").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_runner: Option<std::path::PathBuf>,
    /// The socket of the job's Ruby preload process (started by the manager in the
    /// workspace when the job has a callbacks class and a built-in Ruby runner): it has run
    /// `before_creating_workers`, and the job's Ruby runners fork from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruby_preload: Option<std::path::PathBuf>,
}

impl WorkerAssignment {
    /// The assignment of a job's worker manager on `host`: its workers are numbered when
    /// they start, and the warm runner and the Ruby preload are added by whoever has them
    /// ([`WorkerAssignment::with_warm_runner`], [`WorkerAssignment::with_ruby_preload`]).
    pub fn new(
        job_id: Uuid,
        definition: JobDefinition,
        reply_to: impl Into<String>,
        broker: BrokerSettings,
        host: impl Into<String>,
        workspace: impl Into<std::path::PathBuf>,
        slots: u32,
    ) -> WorkerAssignment {
        WorkerAssignment {
            job_id,
            definition,
            reply_to: reply_to.into(),
            broker,
            host: host.into(),
            workspace: workspace.into(),
            slots,
            worker_id: None,
            warm_runner: None,
            ruby_preload: None,
        }
    }

    /// The same assignment, whose workers fork their runners from `warm_runner`.
    pub fn with_warm_runner(self, warm_runner: Option<std::path::PathBuf>) -> WorkerAssignment {
        WorkerAssignment {
            warm_runner,
            ..self
        }
    }

    /// The same assignment, whose Ruby runners fork from the preload at `ruby_preload`.
    pub fn with_ruby_preload(self, ruby_preload: Option<std::path::PathBuf>) -> WorkerAssignment {
        WorkerAssignment {
            ruby_preload,
            ..self
        }
    }

    /// The assignment of worker `worker_id` (or of the manager, for `None`) as the first
    /// line of its stdin.
    pub fn encode_line(&self, worker_id: Option<u32>) -> Vec<u8> {
        let mut line = serde_json::to_vec(&WorkerAssignment {
            worker_id,
            ..self.clone()
        })
        .expect("an assignment always serializes");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Callbacks, RunnerSettings, SyncSettings, SyncTransport};

    fn job_id() -> Uuid {
        Uuid::parse_str("6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11").unwrap()
    }

    fn definition() -> JobDefinition {
        JobDefinition {
            project: "shop".into(),
            originator_host: "dev1".into(),
            sync: SyncSettings {
                source: "rsync://fs:43434/src/dev1_shop/".into(),
                transport: SyncTransport::Daemon,
                exclude: vec![".git".into()],
                tree: Some(crate::TreeSeal {
                    digest: "ab".repeat(32),
                    entries: 12,
                }),
            },
            runner: RunnerSettings {
                command: "sh {file}".into(),
                ..RunnerSettings::default()
            },
            callbacks: Callbacks {
                after_sync: Some("make deps".into()),
                ..Callbacks::default()
            },
            live_output: crate::LiveOutput {
                enabled: true,
                files: vec!["t/a.sh".into()],
                others_after_seconds: Some(2.0),
            },
            first_is_1: false,
            artifacts: crate::Artifacts::default(),
            worker_setup: None,
            expected_file_seconds: None,
            record_impact: true,
            originator_outage_limit: Some(60),
        }
    }

    /// One message of each kind (and each shape of the richer ones): the requests, then the
    /// replies.
    fn every_message() -> Vec<Message> {
        let mut messages = requests();
        messages.extend(replies());
        messages
    }

    /// The messages an originator (or a fleet command) sends, and a listener's announcement.
    fn requests() -> Vec<Message> {
        vec![
            Message::Job {
                definition: Box::new(definition()),
                reply_to: "r".into(),
            },
            Message::Ping {
                reply_to: "p".into(),
            },
            Message::FleetCommand {
                argv: vec!["uname".into(), "-n".into()],
                timeout_seconds: 60.0,
                reply_to: "f".into(),
            },
            Message::FleetResult {
                host: "h1".into(),
                outcome: FleetOutcome::Ran {
                    success: true,
                    exit: "exit status 0".into(),
                    output: "h1\n".into(),
                },
            },
            Message::FleetResult {
                host: "h2".into(),
                outcome: FleetOutcome::Refused {
                    reason: "no".into(),
                },
            },
            Message::Drain {
                host: "h1".into(),
                reply_to: "d".into(),
            },
            Message::DrainAnswer {
                host: "h1".into(),
                jobs: 2,
                refused: None,
            },
            Message::DrainAnswer {
                host: "h2".into(),
                jobs: 0,
                refused: Some("no".into()),
            },
            Message::ListenerAnnounced {
                listener_queue: "q".into(),
                name: "h1".into(),
            },
            Message::file("t/a.sh"),
            Message::File {
                file: "t/a.sh:3".into(),
                retry: Some(RetryOf {
                    host: "h1".into(),
                    worker_id: 2,
                    other_hosts: true,
                    passed_on: 1,
                }),
                delivered_before: false,
            },
            Message::file_delivered_before("t/b.sh"),
            Message::Files {
                files: vec!["t/c.sh".into(), "t/d.sh::test_e".into()],
            },
            Message::RetryCheck {
                file: "t/a.sh".into(),
                reply_to: "amq.gen-1".into(),
            },
            Message::FileOutput {
                host: "h1".into(),
                worker_id: 2,
                file: "t/a.sh".into(),
                text: "step 1\n".into(),
            },
            Message::RetryAnswer {
                file: "t/a.sh".into(),
                run: false,
            },
            Message::Cancel {
                reason: "Ctrl-C".into(),
            },
        ]
    }

    /// The replies of listeners, worker managers and workers.
    fn replies() -> Vec<Message> {
        vec![
            Message::PingReply(ListenerInfo {
                name: "h1".into(),
                version: "0.1.0".into(),
                slots: 2,
                busy_slots: 2,
                uptime_seconds: 60,
                draining: false,
                jobs: vec![ListenerJob {
                    job_id: Uuid::nil(),
                    project: "p".into(),
                    originator_host: "dev".into(),
                    running: true,
                    seconds: 12,
                    slots: 2,
                    files_running: 2,
                    files_done: 3,
                    file_seconds: 1.5,
                }],
            }),
            Message::JobAccepted {
                host: "h1".into(),
                slots: 2,
                listener_queue: Some("gorgon-rs.default.listener.x".into()),
            },
            Message::JobQueued {
                host: "h1".into(),
                ahead: 3,
                slots: 2,
            },
            Message::JobRefused {
                host: "h1".into(),
                reason: "100 jobs already wait for this listener's 2 slots".into(),
            },
            Message::SyncFailed {
                host: "h1".into(),
                output: "rsync: connection refused".into(),
            },
            Message::TreeRefused {
                host: "h1".into(),
                reason: "tests/a_test.sh (changed)".into(),
            },
            Message::CallbackFailed {
                host: "h1".into(),
                worker_id: Some(2),
                callback: CallbackName::BeforeStart,
                status: "exit status 3".into(),
                output: "boom".into(),
            },
            Message::WorkerCrashed {
                host: "h1".into(),
                worker_id: 1,
                status: "killed by signal 9 (SIGKILL)".into(),
                output: "".into(),
            },
            Message::ManagerCrashed {
                host: "h1".into(),
                status: "exit status 101".into(),
                output: "panicked".into(),
            },
            Message::FileStarted {
                host: "h1".into(),
                worker_id: 1,
                file: "t/a.sh".into(),
            },
            Message::FileFinished(FileResult {
                host: "h1".into(),
                worker_id: 1,
                file: "t/a.sh".into(),
                status: FileStatus::Failed,
                seconds: 0.25,
                exit: "exit status 1".into(),
                output: "expected 1, got 2".into(),
                tests: vec![TestResult {
                    name: "adds tax".into(),
                    classname: "Cart".into(),
                    file: Some("spec/cart_spec.rb".into()),
                    line: Some(12),
                    status: TestStatus::Failed,
                    seconds: 0.01,
                    message: Some("expected 2, got 3".into()),
                    details: Some("spec/cart_spec.rb:13".into()),
                    id: None,
                }],
                impact: None,
            }),
            Message::Replies {
                replies: vec![
                    Message::FileStarted {
                        host: "h1".into(),
                        worker_id: 2,
                        file: "t/b.sh".into(),
                    },
                    Message::JobDone { host: "h1".into() },
                ],
            },
            Message::JobDone { host: "h1".into() },
        ]
    }

    #[test]
    fn replies_coalesce_and_come_apart_in_order() {
        let started = |file: &str| Message::FileStarted {
            host: "h1".into(),
            worker_id: 1,
            file: file.into(),
        };
        assert_eq!(Message::coalesce(Vec::new()), None);
        assert_eq!(Message::coalesce(vec![started("a")]), Some(started("a")));
        let both = Message::coalesce(vec![started("a"), started("b")]).unwrap();
        // Only starts: nothing in it needs the disk.
        assert!(!both.kept_through_restarts());
        assert_eq!(
            both.clone().into_replies(),
            vec![started("a"), started("b")]
        );
        let with_result =
            Message::coalesce(vec![started("a"), Message::JobDone { host: "h1".into() }]).unwrap();
        assert!(with_result.kept_through_restarts());
        // A nested one (no sender makes it) still comes apart in order.
        let nested = Message::Replies {
            replies: vec![both, started("c")],
        };
        assert_eq!(
            nested.into_replies(),
            vec![started("a"), started("b"), started("c")]
        );
        assert_eq!(started("d").into_replies(), vec![started("d")]);
    }

    #[test]
    fn every_message_round_trips() {
        for message in every_message() {
            let envelope = Envelope::new(job_id(), message);
            let decoded = Envelope::decode(&envelope.encode()).unwrap();
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn lines_are_one_line_each() {
        let envelope = Envelope::new(
            job_id(),
            Message::FileFinished(FileResult {
                host: "h".into(),
                worker_id: 1,
                file: "t/a.sh".into(),
                status: FileStatus::Failed,
                seconds: 0.5,
                exit: "exit status 1".into(),
                output: "two\nlines\n".into(),
                tests: Vec::new(),
                impact: None,
            }),
        );
        let line = envelope.encode_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(Envelope::decode(&line).unwrap(), envelope);
    }

    #[test]
    fn a_batch_and_a_file_split_out_of_one_have_a_pinned_shape_and_old_files_still_decode() {
        let batch = Envelope::new(
            job_id(),
            Message::Files {
                files: vec!["t/a.sh".into(), "t/b.sh".into()],
            },
        );
        assert_eq!(
            String::from_utf8(batch.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"files","files":["t/a.sh","t/b.sh"]}}"#
        );
        let split = Envelope::new(job_id(), Message::file_delivered_before("t/a.sh"));
        assert_eq!(
            String::from_utf8(split.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"file","file":"t/a.sh","delivered_before":true}}"#
        );
        // A file of the versions before batches: never delivered before.
        let old = br#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"file","file":"t/a.sh"}}"#;
        assert_eq!(
            Envelope::decode(old).unwrap().message,
            Message::file("t/a.sh")
        );
    }

    #[test]
    fn a_batch_of_no_files_too_many_or_one_twice_is_refused_with_its_reason() {
        let files = |n: usize| (0..n).map(|i| format!("t/{i}.sh")).collect::<Vec<_>>();
        assert_eq!(Message::batch_problem(&files(1)), None);
        assert_eq!(Message::batch_problem(&files(crate::MAX_BATCH_FILES)), None);
        assert_eq!(
            Message::batch_problem(&[]).as_deref(),
            Some("a batch of no files")
        );
        assert_eq!(
            Message::batch_problem(&files(101)).as_deref(),
            Some("a batch of 101 files, more than the 100 one message may hold")
        );
        let twice = vec!["t/a.sh".to_owned(), "t/b.sh".into(), "t/a.sh".into()];
        assert_eq!(
            Message::batch_problem(&twice).as_deref(),
            Some("a batch that names t/a.sh twice")
        );
    }

    #[test]
    fn json_shape_is_pinned() {
        let envelope = Envelope::new(
            job_id(),
            Message::FileStarted {
                host: "h1".into(),
                worker_id: 1,
                file: "t/a.sh".into(),
            },
        );
        assert_eq!(
            String::from_utf8(envelope.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"file_started","host":"h1","worker_id":1,"file":"t/a.sh"}}"#
        );
        let finished = Envelope::new(
            job_id(),
            Message::FileFinished(FileResult {
                host: "h".into(),
                worker_id: 2,
                file: "f".into(),
                status: FileStatus::Crashed,
                seconds: 1.5,
                exit: "killed by signal 9 (SIGKILL)".into(),
                output: "o".into(),
                tests: Vec::new(),
                impact: None,
            }),
        );
        assert_eq!(
            String::from_utf8(finished.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"file_finished","host":"h","worker_id":2,"file":"f","status":"crashed","seconds":1.5,"exit":"killed by signal 9 (SIGKILL)","output":"o"}}"#
        );
    }

    #[test]
    fn artifacts_are_pinned_and_a_single_message_without_pieces_still_decodes() {
        let message = Message::Artifacts {
            host: "h1".into(),
            files: vec![
                crate::ArtifactFile::new("a.txt".into(), b"ab"),
                crate::ArtifactFile::piece("big.json".into(), 4, b"cd"),
            ],
            left_out: vec!["log/x.log (9 bytes: past the limit)".into()],
            more: true,
        };
        let envelope = Envelope::new(job_id(), message.clone());
        assert_eq!(
            String::from_utf8(envelope.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"artifacts","host":"h1","files":[{"path":"a.txt","content":"YWI="},{"path":"big.json","content":"Y2Q=","offset":4}],"left_out":["log/x.log (9 bytes: past the limit)"],"more":true}}"#
        );
        assert_eq!(
            Envelope::decode(&envelope.encode()).unwrap().message,
            message
        );
        let old = r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"artifacts","host":"h1","files":[{"path":"a.txt","content":"YWI="}]}}"#;
        let Message::Artifacts { files, more, .. } =
            Envelope::decode(old.as_bytes()).unwrap().message
        else {
            panic!("not artifacts");
        };
        assert!(!more);
        assert_eq!(
            (files[0].offset(), files[0].bytes().unwrap()),
            (0, b"ab".to_vec())
        );
    }

    #[test]
    fn a_waiting_job_s_notices_are_pinned() {
        let queued = Envelope::new(
            job_id(),
            Message::JobQueued {
                host: "h1".into(),
                ahead: 3,
                slots: 2,
            },
        );
        assert_eq!(
            String::from_utf8(queued.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"job_queued","host":"h1","ahead":3,"slots":2}}"#
        );
        let refused = Envelope::new(
            job_id(),
            Message::JobRefused {
                host: "h1".into(),
                reason: "full".into(),
            },
        );
        assert_eq!(
            String::from_utf8(refused.encode()).unwrap(),
            r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"job_refused","host":"h1","reason":"full"}}"#
        );
    }

    #[test]
    fn the_expected_file_time_travels_with_the_job_only_when_known() {
        let plain = serde_json::to_value(definition()).unwrap();
        assert!(plain.get("expected_file_seconds").is_none(), "{plain}");
        let known = JobDefinition {
            expected_file_seconds: Some(0.05),
            ..definition()
        };
        let json = serde_json::to_value(&known).unwrap();
        assert_eq!(json["expected_file_seconds"], 0.05);
        assert_eq!(
            serde_json::from_value::<JobDefinition>(json).unwrap(),
            known
        );
    }

    #[test]
    fn first_is_1_travels_with_the_job_only_when_set() {
        let plain = serde_json::to_value(definition()).unwrap();
        assert!(plain.get("first_is_1").is_none(), "{plain}");
        let numbered = JobDefinition {
            first_is_1: true,
            ..definition()
        };
        let json = serde_json::to_value(&numbered).unwrap();
        assert_eq!(json["first_is_1"], true);
        assert_eq!(
            serde_json::from_value::<JobDefinition>(json).unwrap(),
            numbered
        );
    }

    #[test]
    fn version_one_json_still_decodes() {
        let old = r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"job","definition":{"project":"shop","originator_host":"dev1","sync":{"source":"rsync://fs:43434/src/dev1_shop/","transport":"daemon","exclude":[".git"]},"runner":{"command":"sh {file}"},"callbacks":{"after_sync":"make deps"}},"reply_to":"r"}}"#;
        let decoded = Envelope::decode(old.as_bytes()).unwrap();
        // Without `live_output`, no file's output is streamed; without `tree`, the job is
        // unsealed (a listener with signing keys refuses it).
        // Without `record_impact`, nothing records; without `originator_outage_limit`, the
        // worker managers take a reply queue without a consumer at two checks for gone.
        let mut expected = JobDefinition {
            live_output: crate::LiveOutput::default(),
            record_impact: false,
            originator_outage_limit: None,
            ..definition()
        };
        expected.sync.tree = None;
        assert_eq!(
            decoded.message,
            Message::Job {
                definition: Box::new(expected),
                reply_to: "r".into()
            }
        );
    }

    #[test]
    fn a_ping_reply_without_the_status_fields_still_decodes() {
        let old = r#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"ping_reply","name":"h1","version":"0.1.0","slots":2}}"#;
        let decoded = Envelope::decode(old.as_bytes()).unwrap();
        let Message::PingReply(info) = decoded.message else {
            panic!("not a ping reply: {decoded:?}");
        };
        assert_eq!((info.slots, info.busy_slots), (2, 0));
        assert!(info.jobs.is_empty() && !info.draining);
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        assert!(matches!(
            Envelope::decode(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        let future = br#"{"protocol":99,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"brand_new"}}"#;
        assert!(matches!(
            Envelope::decode(future),
            Err(DecodeError::WrongVersion(99))
        ));
        let unknown = br#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"brand_new"}}"#;
        assert!(matches!(
            Envelope::decode(unknown),
            Err(DecodeError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Envelope::decode(&huge),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn assignment_round_trips() {
        let assignment = WorkerAssignment {
            job_id: job_id(),
            definition: definition(),
            reply_to: "r".into(),
            broker: BrokerSettings::default(),
            host: "h1".into(),
            workspace: "/tmp/ws".into(),
            slots: 4,
            worker_id: Some(3),
            warm_runner: None,
            ruby_preload: None,
        };
        let json = serde_json::to_string(&assignment).unwrap();
        assert_eq!(
            serde_json::from_str::<WorkerAssignment>(&json).unwrap(),
            assignment
        );
    }
}
