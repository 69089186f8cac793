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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunnerSettings {
    /// Shell command; `{file}` is replaced by the shell-quoted path of the file.
    pub command: String,
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
