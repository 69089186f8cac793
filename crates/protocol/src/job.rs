//! The job definition: everything a listener, its worker manager and its workers need to take
//! part in one run. The originator builds it from `gorgon.json`; it travels on the jobs
//! exchange, then on the worker manager's and each worker's stdin.

use serde::{Deserialize, Serialize};

/// One run of a suite, as the originator describes it to listeners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDefinition {
    /// Short name of the project (the originator's directory), for logs and workspaces.
    pub project: String,
    /// Host name of the machine that runs `gorgon start`.
    pub originator_host: String,
    /// Where and how listeners pull the source tree from.
    pub sync: SyncSettings,
    /// How a worker runs one test file.
    pub runner: RunnerSettings,
    /// Shell commands run at fixed moments on the listener's side.
    #[serde(default)]
    pub callbacks: Callbacks,
    /// Which files' output the workers stream while they run.
    #[serde(default, skip_serializing_if = "LiveOutput::is_off")]
    pub live_output: LiveOutput,
}

/// Which running files send their output as it is produced (`gorgon start --live-output`,
/// and every file when the run writes events).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveOutput {
    pub enabled: bool,
    /// Only these files (or test ids); empty: every file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl LiveOutput {
    pub fn is_off(&self) -> bool {
        !self.enabled
    }

    /// Whether `file`'s output is streamed.
    pub fn wants(&self, file: &str) -> bool {
        self.enabled && (self.files.is_empty() || self.files.iter().any(|f| f == file))
    }
}

impl JobDefinition {
    /// A job of project `p` that pulls `source` from the rsync daemon with no excludes and
    /// runs `command` per file: the plain job that tools and tests start from.
    pub fn with_command(source: &str, command: &str, callbacks: Callbacks) -> JobDefinition {
        JobDefinition {
            project: "p".into(),
            originator_host: "test".into(),
            sync: SyncSettings {
                source: source.into(),
                transport: SyncTransport::Daemon,
                exclude: vec![],
            },
            runner: RunnerSettings {
                command: command.into(),
                ..RunnerSettings::default()
            },
            callbacks,
            live_output: LiveOutput::default(),
        }
    }
}

/// How the source tree moves between the originator, the file server and listeners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncSettings {
    /// rsync source of the tree, ending in `/`: `rsync://host:port/src/<dir>/` for the daemon
    /// transport, `host:<dir>/` for ssh.
    pub source: String,
    pub transport: SyncTransport,
    /// rsync `--exclude` patterns, applied on push and on pull.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The rsync transport: Gorgon's anonymous rsync daemon, or rsync over ssh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncTransport {
    Daemon,
    Ssh,
}

/// How one test file is run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerSettings {
    /// Which runner runs the files.
    #[serde(default)]
    pub kind: RunnerKind,
    /// For `command`: the shell command run per file; `{file}` is replaced by the
    /// shell-quoted path of the file. For `persistent`: the command started once per worker.
    /// Built-in runners use it, when set, in place of their default interpreter command.
    #[serde(default)]
    pub command: String,
    /// Extra arguments passed to the test framework.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A file that runs no test passes instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty_files: bool,
    /// How many seconds of expected work a worker may run as one batch of quick files, with
    /// a runner that takes batches (default [`DEFAULT_BATCH_SECONDS`]); 0 runs every file
    /// alone (for the built-in runners, in a fork of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_seconds: Option<f64>,
    /// Seconds a file may run before its process group is killed and it is reported as
    /// timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_timeout: Option<f64>,
    /// How a persistent runner keeps files apart (see [`Isolation`]).
    #[serde(default, skip_serializing_if = "Isolation::is_shared")]
    pub isolation: Isolation,
}

/// How a persistent runner keeps a worker's files apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A worker's files run one after another in one warm process, as in a serial run of
    /// the framework: what the suite builds while running a file (caches, registries,
    /// session fixtures) serves the files after it. A file that ends or kills that process
    /// takes only its own verdict, and the next file gets a fresh process.
    #[default]
    Shared,
    /// Every file, or batch of quick files, runs in a fresh fork of the warm runner, so no
    /// state passes from one to the next.
    Fork,
}

impl Isolation {
    pub fn is_shared(&self) -> bool {
        *self == Isolation::Shared
    }
}

/// How much expected work a batch of quick files holds unless `batch_seconds` says otherwise.
pub const DEFAULT_BATCH_SECONDS: f64 = 0.25;

/// The most files one batch holds, however quick they are.
pub const MAX_BATCH_FILES: usize = 100;

/// How many files that each take `seconds_per_file` fit in one batch of `limit`: at least
/// one, at most [`MAX_BATCH_FILES`]. Workers size their batches with it, and `--local` its
/// hand-outs.
pub fn batch_size(seconds_per_file: f64, limit: std::time::Duration) -> usize {
    // A float-to-integer cast saturates: a file of 0 s gives the most, NaN gives 0.
    ((limit.as_secs_f64() / seconds_per_file) as usize).clamp(1, MAX_BATCH_FILES)
}

impl RunnerSettings {
    /// How much expected work one batch may hold; `None` when files must run alone.
    pub fn batch_limit(&self) -> Option<std::time::Duration> {
        let seconds = self.batch_seconds.unwrap_or(DEFAULT_BATCH_SECONDS);
        (seconds.is_finite() && seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds))
    }
}

/// The runners a worker can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerKind {
    /// `command` per file; the exit status (or a JUnit file) gives the result.
    #[default]
    Command,
    /// `command` started once per worker, serving files over the runner protocol.
    Persistent,
    Rspec,
    Minitest,
    Pytest,
}

impl RunnerKind {
    /// The runner can run one test alone by the `id` it reports for it (the built-in
    /// runners; a `persistent` runner that reports ids), so a slow file can be split into
    /// its tests.
    pub fn runs_single_tests(self) -> bool {
        self != RunnerKind::Command
    }
}

/// The listener-side callbacks, each a shell command run with `sh -c`.
///
/// `before_originate` and `after_job_finishes` run in the originator and never travel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callbacks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_sync: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_creating_workers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_complete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_creating_workers: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_hold_a_quarter_second_unless_told_otherwise() {
        let settings = |json: &str| serde_json::from_str::<RunnerSettings>(json).unwrap();
        assert_eq!(
            settings("{}").batch_limit(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            settings(r#"{"batch_seconds": 2}"#).batch_limit(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(settings(r#"{"batch_seconds": 0}"#).batch_limit(), None);
        assert_eq!(settings(r#"{"batch_seconds": -1}"#).batch_limit(), None);
        let quarter = Duration::from_millis(250);
        assert_eq!(batch_size(0.1, quarter), 2);
        assert_eq!(batch_size(0.2, quarter), 1);
        assert_eq!(batch_size(5.0, quarter), 1);
        assert_eq!(batch_size(0.0001, quarter), MAX_BATCH_FILES);
        assert_eq!(batch_size(0.0, quarter), MAX_BATCH_FILES);
        assert!(serde_json::to_string(&settings("{}"))
            .unwrap()
            .find("batch")
            .is_none());
    }
}
