//! `gorgon.json` (with `gorgon_secret.json` merged over it) read into validated settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gorgon_protocol::config_file::{self, ConfigFileError};
use gorgon_protocol::{names, BrokerSettings, CallbackName, SyncTransport};
use gorgon_worker::shell_command;
use serde::Deserialize;

/// The name of the file merged over `gorgon.json` when it sits beside it.
pub const SECRET_FILE: &str = "gorgon_secret.json";

/// A configuration that cannot be used, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    /// A value of the wrong type, named by its key's path.
    #[error("{path}: {source}")]
    Type {
        path: PathBuf,
        #[source]
        source: config_file::WrongType,
    },
    /// A key nobody reads where a mistake could leave the cluster unguarded.
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: config_file::GuardedKey,
    },
    #[error("{path}: {source}")]
    FileServer {
        path: PathBuf,
        #[source]
        source: NoFileServer,
    },
    #[error("{path}: {source}")]
    Phases {
        path: PathBuf,
        #[source]
        source: crate::phases::PhaseError,
    },
    #[error("{path}: {source}")]
    CallbacksClass {
        path: PathBuf,
        #[source]
        source: CallbacksClassError,
    },
}

/// Why a configuration names no file server (only a distributed run needs one).
#[derive(Clone, Debug, thiserror::Error)]
pub enum NoFileServer {
    #[error("no file_server is configured; add \"file_server\": {{\"host\": \"...\"}} (see config/gorgon.json.sample)")]
    Missing,
    #[error("file_server.host is missing or empty")]
    NoHost,
    /// Signed messages, and a file server anyone who reaches it can read and write.
    #[error("this configuration signs its jobs but names no file_server.originator_password: the file server would be anonymous, so anyone who reaches it can read the project's code (listeners still refuse a tree changed there, see docs/security.md); start it with --secrets and set the password, or say \"file_server\": {{\"anonymous\": true}} to accept it")]
    AnonymousWhileSigned,
}

/// Why a Gorgon callbacks class cannot give the callbacks.
#[derive(Debug, thiserror::Error)]
pub enum CallbacksClassError {
    #[error("job.callbacks.{0} and job.callbacks.callbacks_class_file both give the {0} callback; keep one")]
    Both(CallbackName),
    /// The command that runs one of the class's methods (from `gorgon_worker`).
    #[error(transparent)]
    Command(#[from] gorgon_worker::UnquotableCallback),
}

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub config: PathBuf,
    /// Files or globs that replace `files` for this run.
    pub files: Vec<String>,
    /// Overrides `job.file_timeout`, in seconds.
    pub file_timeout: Option<f64>,
    /// Overrides `job.retries`.
    pub retries: Option<u32>,
    /// Overrides `job.max_fail` (`--fail-fast` is 1).
    pub max_fail: Option<u32>,
    /// Write a JUnit XML report here (overrides `junit_file`).
    pub junit: Option<PathBuf>,
    /// Write newline-delimited JSON events here; `-` is stdout.
    pub events: Option<PathBuf>,
    /// Write the HTML report here (overrides `html_file`).
    pub html: Option<PathBuf>,
    /// `--live-output[=FILE]...`: print these files' output as it comes (empty: every
    /// file's).
    pub live_output: Option<Vec<String>>,
    /// Run only the files of the previous run's `failed_files` list.
    pub failed: bool,
    /// No progress lines: only the report.
    pub quiet: bool,
    /// `--local`: run on this machine with this many workers, without broker or file server.
    pub local: Option<usize>,
    /// `--replay HOST:WORKER [--replay-until FILE]`: that worker's files of the last run
    /// (or of the event stream `events` names, which is then read, not written), in order.
    pub replay: Option<ReplayOptions>,
    /// `--record-impact`: record which code each file runs, into the impact map.
    pub record_impact: bool,
    /// `--changed [BASE]`: run only the files a change since BASE reaches (`Some(None)`:
    /// since the merge base with the default branch).
    pub changed: Option<Option<String>>,
    /// `--explain`: with `--changed`, say why each file was selected.
    pub explain: bool,
    /// `--dry-run`: print the files the run would run, in its order, and run nothing.
    pub dry_run: bool,
}

/// What `--replay` replays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// `host:worker`.
    pub worker: String,
    /// Stop after this file (the one that failed).
    pub until: Option<String>,
}

/// Everything `gorgon start` needs from its configuration, resolved and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The folder that holds `gorgon.json`: the tree that is pushed, the base of the globs.
    pub project_root: PathBuf,
    pub broker: BrokerSettings,
    pub cluster_id: String,
    /// The file server, or why the configuration names none: only a distributed run needs
    /// one (see [`Settings::file_server`]); `gorgon start --local` does without.
    file_server: Result<FileServer, NoFileServer>,
    /// The configuration file these settings come from, for naming it in errors.
    pub config_path: PathBuf,
    pub transport: SyncTransport,
    pub exclude: Vec<String>,
    pub files: Vec<String>,
    /// `phases`: the run's files in ordered phases (their runners are also in
    /// `runner.by_phase`).
    pub phases: Vec<crate::phases::PhaseSettings>,
    pub runner: gorgon_protocol::RunnerSettings,
    /// How many times a file may kill its worker before it is reported as crashed.
    pub max_crash_retries: u32,
    /// How failed tests run again (`job.retries`, `job.retry_budget`).
    pub retries: crate::retries::RetryPolicy,
    /// Stop once this many files have failed for good (`job.max_fail`).
    pub max_fail: Option<u32>,
    /// `quarantine_file`: test ids and files whose failures never fail the run.
    pub quarantine_file: Option<PathBuf>,
    pub callbacks: OriginatorCallbacks,
    pub listener_wait: Duration,
    /// `job.pack_seconds`: quick files share a message of the files queue, as many as the
    /// runtime file expects to take this long together (`crate::pack`); 0: one file a message.
    pub pack_seconds: f64,
    /// `job.first_is_1`: a host's first worker has `TEST_ENV_NUMBER=1`, not an empty one.
    pub first_is_1: bool,
    /// `job.artifacts`: what listeners bring back, and where it goes (`artifacts_folder/HOST/`).
    pub artifacts: gorgon_protocol::Artifacts,
    pub artifacts_folder: PathBuf,
    /// `job.worker_setup`: what each worker runs once before its first file.
    pub worker_setup: Option<String>,
    pub runtime_file: Option<PathBuf>,
    /// `job.impact`: recording and selecting by the impact map (`docs/impact.md`).
    pub impact: crate::impact::ImpactSettings,
    pub failed_files: PathBuf,
    pub log_file: Option<PathBuf>,
    /// Where `gorgon start` writes its JUnit XML report, if anywhere.
    pub junit_file: Option<PathBuf>,
    /// `html_file`: where each run writes its HTML report.
    pub html_file: Option<PathBuf>,
    /// What the file's keys say besides their values: keys of Gorgon's that gorgon-rs does
    /// not use (told at info level, `--verbose`) and unknown keys (a warning each on stderr,
    /// [`Settings::tell_keys`]).
    pub config_keys: config_file::KeyReport,
}

/// Where the originator pushes the tree and listeners pull it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileServer {
    pub host: String,
    pub port: u16,
    /// `file_server.originator_password` (from `gorgon_secret.json`): the daemon's
    /// `originator` user logs in with it.
    pub originator_password: Option<String>,
}

/// What a Gorgon callbacks class's `before_originate` prints before the cluster id it returns.
pub const CLUSTER_ID_LINE: &str = "GORGON_CLUSTER_ID=";

/// Takes a Gorgon callbacks class (`class_file`, relative to the working directory of each
/// moment, as in Gorgon) into `callbacks`: the originator's two moments become the class's
/// methods run as programs; the class file travels with the job, and each host runs the
/// other five methods (`gorgon_worker::class_callbacks`). A moment with a shell callback
/// too is refused.
fn class_callbacks(
    callbacks: &mut OriginatorCallbacks,
    class_file: &str,
) -> Result<(), CallbacksClassError> {
    let remote = &callbacks.remote;
    let configured = [
        (CallbackName::BeforeOriginate, &callbacks.before_originate),
        (CallbackName::AfterSync, &remote.after_sync),
        (
            CallbackName::BeforeCreatingWorkers,
            &remote.before_creating_workers,
        ),
        (CallbackName::BeforeStart, &remote.before_start),
        (CallbackName::AfterComplete, &remote.after_complete),
        (
            CallbackName::AfterCreatingWorkers,
            &remote.after_creating_workers,
        ),
        (
            CallbackName::AfterJobFinishes,
            &callbacks.after_job_finishes,
        ),
    ];
    if let Some((moment, _)) = configured.iter().find(|(_, command)| command.is_some()) {
        return Err(CallbacksClassError::Both(*moment));
    }
    let command = |moment| shell_command(moment, class_file).map_err(CallbacksClassError::Command);
    callbacks.before_originate = Some(command(CallbackName::BeforeOriginate)?);
    callbacks.after_job_finishes = Some(command(CallbackName::AfterJobFinishes)?);
    callbacks.remote.class_file = Some(class_file.to_owned());
    Ok(())
}

/// All seven callbacks as configured; the originator runs two and forwards the rest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct OriginatorCallbacks {
    pub before_originate: Option<String>,
    pub after_job_finishes: Option<String>,
    /// Gorgon's Ruby callbacks class, whose methods run at their moments (see
    /// `class_callbacks`).
    pub callbacks_class_file: Option<String>,
    #[serde(flatten)]
    pub remote: gorgon_protocol::Callbacks,
}

/// The keys of a `gorgon.json` (with its secret file), by object, for
/// [`config_file::check_keys`]. A key nobody reads is a warning, and an error where a
/// mistake could leave the cluster unguarded: in `connection` (and its `tls`),
/// `file_server`, `job.sync` (what leaves this machine, and how), and near the signing keys
/// at the top (docs/configuration.md, "Unknown keys"). Keys Ruby Gorgon read and gorgon-rs
/// does not need (`job.sync.source_tree_path`, which the originator sets; the amqp gem's
/// `connection.timeout`...) are only told at info level.
const SECTIONS: [config_file::Section; 10] = {
    let [top, connection, tls, file_server] = config_file::shared_sections(
        &[
            "files",
            "phases",
            "job",
            "runtime_file",
            "quarantine_file",
            "failed_files",
            "originator_log_file",
            "cluster_id",
            "junit_file",
            "html_file",
        ],
        &["host", "port", "originator_password", "anonymous"],
        // A secrets file shared with `start_rsync --secrets` holds the listeners' password too.
        &["listener_password"],
    );
    [
        top,
        connection,
        tls,
        file_server,
        config_file::Section {
            at: "job",
            known: &[
                "sync",
                "runner",
                "file_timeout",
                "max_crash_retries",
                "retries",
                "retry_budget",
                "max_fail",
                "callbacks",
                "listener_wait",
                "pack_seconds",
                "first_is_1",
                "artifacts",
                "worker_setup",
                "impact",
            ],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
        config_file::Section {
            at: "job.impact",
            known: &["record", "always", "ignore", "file"],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
        config_file::Section {
            at: "job.artifacts",
            known: &["paths", "limit_mb", "folder"],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
        config_file::Section {
            at: "job.sync",
            known: &["exclude", "rsync_transport"],
            ignored: &["source_tree_path"],
            guarded: true,
            guarded_keys: &[],
        },
        config_file::Section {
            at: "job.runner",
            known: &[
                "kind",
                "command",
                "args",
                "allow_empty_files",
                "batch_seconds",
                "file_timeout",
                "isolation",
                "by_glob",
                "by_phase",
            ],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
        config_file::Section {
            at: "job.callbacks",
            known: &[
                "before_originate",
                "after_sync",
                "before_creating_workers",
                "before_start",
                "after_complete",
                "after_creating_workers",
                "after_job_finishes",
                "callbacks_class_file",
                "class_file",
            ],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
    ]
};

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    connection: BrokerSettings,
    file_server: Option<RawFileServer>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    phases: Vec<crate::phases::PhaseSettings>,
    #[serde(default)]
    job: RawJob,
    runtime_file: Option<PathBuf>,
    quarantine_file: Option<PathBuf>,
    failed_files: Option<PathBuf>,
    originator_log_file: Option<PathBuf>,
    cluster_id: Option<String>,
    junit_file: Option<PathBuf>,
    html_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawFileServer {
    host: Option<String>,
    port: Option<u16>,
    originator_password: Option<String>,
    /// Accepts a file server without passwords where jobs are signed.
    #[serde(default)]
    anonymous: bool,
}

#[derive(Default, Deserialize)]
struct RawJob {
    #[serde(default)]
    sync: RawSync,
    runner: Option<gorgon_protocol::RunnerSettings>,
    file_timeout: Option<f64>,
    max_crash_retries: Option<u32>,
    retries: Option<u32>,
    retry_budget: Option<u32>,
    max_fail: Option<u32>,
    #[serde(default)]
    callbacks: OriginatorCallbacks,
    listener_wait: Option<f64>,
    pack_seconds: Option<f64>,
    #[serde(default)]
    first_is_1: bool,
    #[serde(default)]
    artifacts: RawArtifacts,
    worker_setup: Option<String>,
    #[serde(default)]
    impact: RawImpact,
}

/// `job.impact` as written.
#[derive(Default, Deserialize)]
struct RawImpact {
    #[serde(default)]
    record: bool,
    #[serde(default)]
    always: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    file: Option<PathBuf>,
}

impl RawImpact {
    /// The settings, with the map's file resolved by `resolve` (relative to the project).
    fn resolved(
        self,
        root: &Path,
        runtime_file: Option<&Path>,
        resolve: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<crate::impact::ImpactSettings, String> {
        let globs = |key: &str, list: Vec<String>| {
            list.iter()
                .map(|text| {
                    gorgon_protocol::FileGlob::new(text)
                        .map_err(|e| format!("job.impact.{key} has a broken glob {text:?}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(crate::impact::ImpactSettings {
            record: self.record,
            rules: crate::impact::Rules {
                always: globs("always", self.always)?,
                ignore: globs("ignore", self.ignore)?,
            },
            file: match self.file {
                Some(file) => resolve(file),
                None => crate::impact::ImpactSettings::default_file(root, runtime_file),
            },
        })
    }
}

#[derive(Default, Deserialize)]
struct RawArtifacts {
    #[serde(default)]
    paths: Vec<String>,
    limit_mb: Option<f64>,
    folder: Option<PathBuf>,
}

/// What a listener brings back by default, at most, per run: `job.artifacts.limit_mb`.
const ARTIFACTS_LIMIT_MB: f64 = 100.0;

impl RawArtifacts {
    /// `job.artifacts.folder`, as written (relative to the project unless absolute).
    fn folder(&self) -> PathBuf {
        self.folder
            .clone()
            .unwrap_or_else(|| PathBuf::from("artifacts"))
    }

    fn into_artifacts(self) -> gorgon_protocol::Artifacts {
        let limit_mb = self.limit_mb.unwrap_or(ARTIFACTS_LIMIT_MB).max(0.0);
        gorgon_protocol::Artifacts {
            paths: self.paths,
            limit_bytes: (limit_mb * 1_000_000.0) as u64,
        }
    }
}

#[derive(Default, Deserialize)]
struct RawSync {
    #[serde(default)]
    exclude: Vec<String>,
    rsync_transport: Option<String>,
}

/// The file server a configuration names, or why it names none; a configuration that
/// `signs` its jobs over the rsync daemon must give its password or accept an anonymous one.
fn file_server_of(
    raw: Option<RawFileServer>,
    signs: bool,
    transport: SyncTransport,
) -> Result<FileServer, NoFileServer> {
    let server = raw.ok_or(NoFileServer::Missing)?;
    let host = server
        .host
        .filter(|h| !h.trim().is_empty())
        .ok_or(NoFileServer::NoHost)?;
    let originator_password = server.originator_password.filter(|p| !p.is_empty());
    let anonymous = originator_password.is_none() && transport == SyncTransport::Daemon;
    if signs && anonymous && !server.anonymous {
        return Err(NoFileServer::AnonymousWhileSigned);
    }
    Ok(FileServer {
        host,
        port: server
            .port
            .unwrap_or(gorgon_exec::rsync::DEFAULT_DAEMON_PORT),
        originator_password,
    })
}

/// The runner of a configuration (`job.runner`, the phases' runners, `job.file_timeout`),
/// checked.
fn runner_of(
    raw: &mut RawConfig,
    path: &Path,
) -> Result<gorgon_protocol::RunnerSettings, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        path: path.to_owned(),
        problem,
    };
    // Without `job.runner`, the runner follows each file's name, as in Gorgon.
    let mut runner = raw
        .job
        .runner
        .take()
        .unwrap_or_else(gorgon_protocol::RunnerSettings::by_name);
    let needs_command = |runner: &gorgon_protocol::RunnerSettings| {
        runner.by_glob.is_empty()
            && matches!(
                runner.kind,
                gorgon_protocol::RunnerKind::Command | gorgon_protocol::RunnerKind::Persistent
            )
            && runner.command.trim().is_empty()
    };
    if needs_command(&runner) {
        return Err(invalid(
            "job.runner.command is missing; set the shell command that runs one test file, e.g. \"sh {file}\"".into(),
        ));
    }
    if let Some((glob, _)) = runner.by_glob.iter().find(|(_, r)| needs_command(r)) {
        return Err(invalid(format!(
            "job.runner.by_glob[\"{glob}\"].command is missing; set the shell command that runs one of its files, or a built-in \"kind\""
        )));
    }
    crate::phases::check(&raw.phases).map_err(|source| ConfigError::Phases {
        path: path.to_owned(),
        source,
    })?;
    if !raw.phases.is_empty() && !raw.files.is_empty() {
        return Err(invalid(
            "files and phases both list the files to test; with phases, each phase lists its own files".into(),
        ));
    }
    for phase in &raw.phases {
        if let Some(phase_runner) = &phase.runner {
            if !phase_runner.by_glob.is_empty() {
                return Err(invalid(format!(
                    "the runner of phase \"{}\" has by_glob; a phase's runner is one runner (give each kind of file a phase of its own)",
                    phase.name
                )));
            }
            if needs_command(phase_runner) {
                return Err(invalid(format!(
                    "the runner of phase \"{}\" has no command; set the shell command that runs one of its files, or a built-in \"kind\"",
                    phase.name
                )));
            }
        }
    }
    runner.by_phase = crate::phases::runners(&raw.phases);
    gorgon_protocol::RunnerChoice::new(&runner).map_err(|e| invalid(e.to_string()))?;
    if let Some(timeout) = raw.job.file_timeout.or(runner.file_timeout) {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(invalid(
                "job.file_timeout must be a positive number of seconds".into(),
            ));
        }
        runner.file_timeout = Some(timeout);
        for by_glob in runner.by_glob.values_mut() {
            by_glob.file_timeout.get_or_insert(timeout);
        }
        for by_phase in runner.by_phase.iter_mut().filter_map(|p| p.runner.as_mut()) {
            by_phase.file_timeout.get_or_insert(timeout);
        }
    }
    Ok(runner)
}

impl Settings {
    /// The settings of one `gorgon start`: its configuration file as read, with what the
    /// command line overrides.
    pub fn for_start(options: &StartOptions) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(&options.config)?;
        if let Some(limit) = options.file_timeout {
            settings.runner.file_timeout = Some(limit);
            for by_glob in settings.runner.by_glob.values_mut() {
                by_glob.file_timeout = Some(limit);
            }
            let phase_runners = settings.runner.by_phase.iter_mut();
            for by_phase in phase_runners.filter_map(|p| p.runner.as_mut()) {
                by_phase.file_timeout = Some(limit);
            }
        }
        if let Some(retries) = options.retries {
            settings.retries.retries = retries;
        }
        if let Some(limit) = options.max_fail {
            settings.max_fail = Some(limit);
        }
        settings.impact.record |= options.record_impact;
        Ok(settings)
    }

    /// Reads only the broker and cluster from `path` (for `gorgon ping`, which needs no
    /// file server or runner).
    pub fn load_connection(path: &Path) -> Result<(BrokerSettings, String), ConfigError> {
        #[derive(Deserialize)]
        struct Connection {
            #[serde(default)]
            connection: BrokerSettings,
            cluster_id: Option<String>,
        }
        let secret = path
            .parent()
            .map(|p| p.join(SECRET_FILE))
            .unwrap_or_else(|| PathBuf::from(SECRET_FILE));
        let value = config_file::load_merged(path, Some(&secret))?;
        let invalid = |problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        // The unknown keys are told by the commands that run jobs; a guarded one stops
        // every command.
        let (mut raw, signing, _): (Connection, _, _) = read_checked(value, path, base)?;
        raw.connection.signing = signing;
        Ok((
            raw.connection
                .resolve_url()
                .map_err(|e| invalid(e.to_string()))?,
            raw.cluster_id
                .unwrap_or_else(|| names::DEFAULT_CLUSTER.to_owned()),
        ))
    }

    /// Reads `path`, merging [`SECRET_FILE`] from the same folder over it.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let path = absolute(path);
        let project_root = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let secret = project_root.join(SECRET_FILE);
        let value = config_file::load_merged(&path, Some(&secret))?;
        let invalid = |problem: String| ConfigError::Invalid {
            path: path.clone(),
            problem,
        };
        let (mut raw, signing, keys): (RawConfig, _, _) =
            read_checked(value, &path, &project_root)?;
        raw.connection.signing = signing;
        // Checked here, reported only by a run that needs it (see `Settings::file_server`).
        let transport = transport_of(raw.job.sync.rsync_transport.as_deref(), &path)?;
        let signs = raw.connection.signing.is_some();
        let file_server = file_server_of(raw.file_server.take(), signs, transport);
        let runner = runner_of(&mut raw, &path)?;
        let listener_wait = seconds_of(raw.job.listener_wait, 60.0, false).ok_or_else(|| {
            invalid("job.listener_wait must be a positive number of seconds".into())
        })?;
        let pack_seconds = seconds_of(
            raw.job.pack_seconds,
            crate::pack::DEFAULT_PACK_SECONDS,
            true,
        )
        .ok_or_else(|| {
            invalid(
                "job.pack_seconds must be a number of seconds, 0 or more (0: one file a message)"
                    .into(),
            )
        })?;
        let cluster_id = raw
            .cluster_id
            .unwrap_or_else(|| names::DEFAULT_CLUSTER.to_owned());
        if cluster_id.is_empty() || cluster_id.contains(char::is_whitespace) {
            return Err(invalid(
                "cluster_id must be a non-empty word without spaces".into(),
            ));
        }
        let resolve = |p: PathBuf| {
            if p.is_relative() {
                project_root.join(p)
            } else {
                p
            }
        };
        let runtime_file = raw.runtime_file.map(resolve);
        let impact = std::mem::take(&mut raw.job.impact)
            .resolved(&project_root, runtime_file.as_deref(), resolve)
            .map_err(invalid)?;
        Ok(Settings {
            broker: raw
                .connection
                .resolve_url()
                .map_err(|e| invalid(e.to_string()))?,
            cluster_id,
            file_server,
            config_path: path.clone(),
            transport,
            exclude: raw.job.sync.exclude,
            files: raw.files,
            phases: raw.phases,
            runner,
            max_crash_retries: raw.job.max_crash_retries.unwrap_or(2),
            retries: crate::retries::RetryPolicy {
                retries: raw.job.retries.unwrap_or(0),
                budget: raw.job.retry_budget,
            },
            max_fail: match raw.job.max_fail {
                Some(0) => return Err(invalid("job.max_fail must be at least 1".into())),
                limit => limit,
            },
            quarantine_file: raw.quarantine_file.map(resolve),
            callbacks: callbacks_of(raw.job.callbacks, &path)?,
            listener_wait: Duration::from_secs_f64(listener_wait),
            pack_seconds,
            first_is_1: raw.job.first_is_1,
            artifacts_folder: resolve(raw.job.artifacts.folder()),
            artifacts: raw.job.artifacts.into_artifacts(),
            worker_setup: raw
                .job
                .worker_setup
                .filter(|setup| !setup.trim().is_empty()),
            runtime_file,
            impact,
            failed_files: raw
                .failed_files
                .map(resolve)
                .unwrap_or_else(|| std::env::temp_dir().join("gorgon-failed-files.json")),
            log_file: raw.originator_log_file.map(resolve),
            junit_file: raw.junit_file.map(resolve),
            html_file: raw.html_file.map(resolve),
            config_keys: keys,
            project_root,
        })
    }

    /// Tells what the file's keys say: each unknown key as a warning on stderr (whatever
    /// the log's level and place, since it is a mistake the user must see), each key of
    /// Gorgon's that gorgon-rs does not use at info level.
    pub fn tell_keys(&self) {
        let path = self.config_path.display();
        for line in self.config_keys.warning_lines() {
            eprintln!("gorgon: warning: {path}: {line}");
        }
        for line in self.config_keys.ignored_lines() {
            tracing::info!("{path}: {line}");
        }
    }

    /// The runtime file as it is now (empty without `runtime_file`).
    pub fn history(&self) -> Result<crate::files::History, crate::files::FilesError> {
        match &self.runtime_file {
            Some(path) => crate::files::read_history(path),
            None => Ok(crate::files::History::new()),
        }
    }

    /// The quarantine file as it is now (nothing quarantined without `quarantine_file`).
    pub fn quarantine(
        &self,
    ) -> Result<crate::quarantine::Quarantine, crate::quarantine::QuarantineError> {
        match &self.quarantine_file {
            Some(path) => crate::quarantine::Quarantine::load(path),
            None => Ok(crate::quarantine::Quarantine::default()),
        }
    }

    /// Every unit has its runner; the error names one that has none (or two).
    pub fn check_runners<'a>(
        &self,
        units: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), gorgon_protocol::RunnerChoiceError> {
        let choice = gorgon_protocol::RunnerChoice::new(&self.runner)?;
        units
            .into_iter()
            .try_for_each(|unit| choice.index_for(unit).map(drop))
    }

    /// The file server of a distributed run; an error naming the configuration when it has
    /// none or a broken one.
    pub fn file_server(&self) -> Result<&FileServer, ConfigError> {
        self.file_server
            .as_ref()
            .map_err(|source| ConfigError::FileServer {
                path: self.config_path.clone(),
                source: source.clone(),
            })
    }
}

/// `value`, the configuration read from `path`, as a `T`, once its keys are checked (an
/// unknown key in a guarded place is an error), with the signing keys it names (relative to
/// `base`) and what its keys say.
fn read_checked<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    path: &Path,
    base: &Path,
) -> Result<
    (
        T,
        Option<gorgon_protocol::signing::SigningKeys>,
        config_file::KeyReport,
    ),
    ConfigError,
> {
    let keys = config_file::check_keys(&value, &SECTIONS).map_err(|source| ConfigError::Key {
        path: path.to_owned(),
        source,
    })?;
    let signing = gorgon_protocol::signing::keys_from_config(&value, base).map_err(|e| {
        ConfigError::Invalid {
            path: path.to_owned(),
            problem: e.to_string(),
        }
    })?;
    let raw = config_file::from_value(value, "").map_err(|source| ConfigError::Type {
        path: path.to_owned(),
        source,
    })?;
    Ok((raw, signing, keys))
}

/// `path` made absolute against the current folder (as it is, if that cannot be read).
fn absolute(path: &Path) -> PathBuf {
    if path.is_relative() {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_owned())
    } else {
        path.to_owned()
    }
}

/// How the tree travels to the file server, from `job.sync.rsync_transport`.
fn transport_of(name: Option<&str>, path: &Path) -> Result<SyncTransport, ConfigError> {
    match name {
        None | Some("daemon" | "anonymous") => Ok(SyncTransport::Daemon),
        Some("ssh") => Ok(SyncTransport::Ssh),
        Some(other) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problem: format!(
                "job.sync.rsync_transport is \"{other}\"; use \"daemon\" (or \"anonymous\") or \"ssh\""
            ),
        }),
    }
}

/// A number of seconds as set (or `default`): finite, and above 0 (or 0 too, `zero_allowed`);
/// `None` when it is not.
fn seconds_of(value: Option<f64>, default: f64, zero_allowed: bool) -> Option<f64> {
    let seconds = value.unwrap_or(default);
    let above_floor = seconds > 0.0 || (zero_allowed && seconds == 0.0);
    (seconds.is_finite() && above_floor).then_some(seconds)
}

/// `job.callbacks`, with the methods of its `callbacks_class_file` (if any) filled in.
fn callbacks_of(
    mut callbacks: OriginatorCallbacks,
    path: &Path,
) -> Result<OriginatorCallbacks, ConfigError> {
    if let Some(class_file) = callbacks.callbacks_class_file.clone() {
        class_callbacks(&mut callbacks, &class_file).map_err(|source| {
            ConfigError::CallbacksClass {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(callbacks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = r#"{
        "connection": {"host": "mq", "username": "u"}, // comment
        "file_server": {"host": "fs", "port": 1234},
        "files": ["t/**/*_test.sh"],
        "job": {
            "sync": {"exclude": [".git"], "rsync_transport": "anonymous"},
            "runner": {"command": "sh {file}"},
            "callbacks": {"after_sync": "make", "before_originate": "echo hi"}
        },
        "runtime_file": "runtime.json",
        "junit_file": "reports/junit.xml",
        "cluster_id": "ci"
    }"#;

    /// The settings of a `gorgon.json` holding `text`, alone in a folder.
    fn loaded(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        Settings::load(&write(dir.path(), "gorgon.json", text))
    }

    #[test]
    fn a_full_config_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "gorgon.json", GOOD);
        write(
            dir.path(),
            SECRET_FILE,
            r#"{"connection": {"password": "s3"}}"#,
        );
        let settings = Settings::load(&path).unwrap();
        assert_eq!(settings.broker.host, "mq");
        assert_eq!(settings.broker.password, "s3");
        assert_eq!(
            settings.file_server().unwrap(),
            &FileServer {
                host: "fs".into(),
                port: 1234,
                originator_password: None,
            }
        );
        assert_eq!(settings.transport, SyncTransport::Daemon);
        assert_eq!(settings.runner.command, "sh {file}");
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Command);
        assert_eq!(settings.max_crash_retries, 2);
        assert_eq!(
            settings.callbacks.remote.after_sync.as_deref(),
            Some("make")
        );
        assert_eq!(
            settings.callbacks.before_originate.as_deref(),
            Some("echo hi")
        );
        assert_eq!(settings.cluster_id, "ci");
        assert_eq!(settings.runtime_file, Some(dir.path().join("runtime.json")));
        assert_eq!(
            settings.junit_file,
            Some(dir.path().join("reports/junit.xml"))
        );
        assert_eq!(settings.project_root, dir.path());
        assert_eq!(settings.listener_wait, Duration::from_secs(60));
        assert!(!settings.first_is_1);
    }

    #[test]
    fn first_is_1_is_a_known_boolean_of_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "gorgon.json",
            r#"{"file_server": {"host": "fs"}, "files": ["t/*.sh"], "job": {"first_is_1": true}}"#,
        );
        let settings = Settings::load(&path).unwrap();
        assert!(settings.first_is_1);
        assert!(settings.config_keys.unknown.is_empty());
        let wrong = write(
            dir.path(),
            "gorgon.json",
            r#"{"file_server": {"host": "fs"}, "files": ["t/*.sh"], "job": {"first_is_1": "yes"}}"#,
        );
        let error = Settings::load(&wrong).unwrap_err().to_string();
        assert!(error.contains("job.first_is_1"), "{error}");
    }

    #[test]
    fn worker_setup_is_a_known_command_of_the_job_and_blank_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let load = |setup: &str| {
            let config = format!(
                r#"{{"file_server": {{"host": "fs"}}, "files": ["t/*.sh"], "job": {{"worker_setup": {setup}}}}}"#
            );
            Settings::load(&write(dir.path(), "gorgon.json", &config))
        };
        let settings = load(r#""createdb app_test$TEST_ENV_NUMBER""#).unwrap();
        assert_eq!(
            settings.worker_setup.as_deref(),
            Some("createdb app_test$TEST_ENV_NUMBER")
        );
        assert!(settings.config_keys.unknown.is_empty());
        assert_eq!(load(r#"" ""#).unwrap().worker_setup, None);
        let error = load("3").unwrap_err().to_string();
        assert!(error.contains("job.worker_setup"), "{error}");
    }

    #[test]
    fn gorgons_keys_that_do_not_apply_are_listed_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "gorgon.json",
            r#"{"file_server": {"host": "fs"}, "files": ["t/*_test.rb"], "bin_gem_path": "/usr/bin/gem",
                "connection": {"host": "rabbit", "heartbeat": 30, "timeout": 5},
                "job": {"sync": {"source_tree_path": "x", "rsync_transport": "anonymous"}, "callbacks": {"callbacks_class_file": "c.rb"}}}"#,
        );
        let settings = Settings::load(&path).unwrap();
        let unused = settings.config_keys.ignored_lines().join("\n");
        assert!(unused.contains("bin_gem_path is not used"), "{unused}");
        assert!(
            unused.contains("job.sync.source_tree_path is not used"),
            "{unused}"
        );
        assert!(
            unused.contains("connection.timeout is not used"),
            "{unused}"
        );
        assert_eq!(settings.config_keys.ignored.len(), 3, "{unused}");
        assert!(
            settings.config_keys.unknown.is_empty(),
            "{:?}",
            settings.config_keys
        );
    }

    #[test]
    fn an_unknown_key_is_a_warning_naming_the_nearest_known_key() {
        let text = r#"{"files": ["t/*.sh"], "retries": 2, "job": {"retires": 2, "runner": {"command": "sh {file}", "comand": "x"},
                "callbacks": {"before_strat": "x"}}, "junit_fil": "j.xml", "zzz": 1}"#;
        assert_eq!(
            loaded(text).unwrap().config_keys.warning_lines(),
            [
                // The keys of an object in the order of their names.
                "unknown key junit_fil (did you mean junit_file?); ignored",
                "unknown key retries (did you mean job.retries?); ignored",
                "unknown key zzz; ignored",
                "unknown key job.retires (did you mean job.retries?); ignored",
                "unknown key job.runner.comand (did you mean job.runner.command?); ignored",
                "unknown key job.callbacks.before_strat (did you mean job.callbacks.before_start?); ignored",
            ]
        );
    }

    #[test]
    fn an_unknown_key_where_trust_is_decided_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (r#""signing_key_fil": "k""#, "unknown key signing_key_fil (did you mean signing_key_file?)"),
            (r#""my_secret": "k""#, "unknown key my_secret"),
            (r#""conection": {}"#, "unknown key conection (did you mean connection?)"),
            (r#""connection": {"hots": "mq"}"#, "unknown key connection.hots (did you mean connection.host?): a key nobody reads in connection is refused"),
            (r#""connection": {"tls": {"ca_fil": "ca.pem"}}"#, "unknown key connection.tls.ca_fil (did you mean connection.tls.ca_file?)"),
            (r#""file_server": {"host": "fs", "originator_pasword": "p"}"#, "unknown key file_server.originator_pasword (did you mean file_server.originator_password?)"),
            (r#""job": {"sync": {"exlude": [".env"]}}"#, "unknown key job.sync.exlude (did you mean job.sync.exclude?)"),
        ];
        for (keys, expected) in cases {
            let text = format!(r#"{{"files": ["t/*.sh"], {keys}}}"#);
            let path = write(dir.path(), "gorgon.json", &text);
            let error = Settings::load(&path).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, ConfigError::Key { .. }), "{message}");
            assert!(message.contains(expected), "{keys}: {message}");
            assert!(message.contains("gorgon.json"), "{message}");
            // `gorgon ping` and `gorgon fleet` read the same file: refused there too.
            let message = Settings::load_connection(&path).unwrap_err().to_string();
            assert!(message.contains(expected), "{keys}: {message}");
        }
    }

    #[test]
    fn the_sample_config_has_no_unknown_key() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/gorgon.json.sample");
        let settings = Settings::load(&sample).unwrap();
        assert_eq!(settings.config_keys, config_file::KeyReport::default());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        for (text, expected) in [
            (
                r#"{"files": "tests/*_test.sh"}"#,
                "files: invalid type: string \"tests/*_test.sh\", expected a sequence",
            ),
            (
                r#"{"files": ["t"], "job": {"runner": {"command": "x", "args": [1]}}}"#,
                "job.runner.args[0]: invalid type: integer `1`",
            ),
            (
                r#"{"files": ["t"], "job": {"retries": "2", "runner": {"command": "x"}}}"#,
                "job.retries: invalid type: string \"2\"",
            ),
            (
                r#"{"files": ["t"], "connection": {"port": "x"}, "job": {"runner": {"command": "x"}}}"#,
                "connection.port: invalid type: string \"x\"",
            ),
        ] {
            let message = loaded(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                r#"{"files": ["x"], "job": {"runner": {"command": "sh {file}"}}}"#,
                "no file_server",
            ),
            (
                r#"{"file_server": {"host": "fs"}, "files": ["x"], "job": {"runner": {}}}"#,
                "job.runner.command",
            ),
            (
                r#"{"file_server": {"host": "fs"}, "files": ["x"], "job": {"runner": {"by_glob": {"t/*.sh": {}}}}}"#,
                "job.runner.by_glob[\"t/*.sh\"].command is missing",
            ),
            (
                r#"{"file_server": {"host": "fs"}, "files": ["x"], "job": {"runner": {"by_glob": {"t/[.sh": {"kind": "rspec"}}}}}"#,
                "is not a glob",
            ),
            (
                r#"{"file_server": {"host": "fs"}, "job": {"sync": {"rsync_transport": "ftp"}, "runner": {"command": "x"}}}"#,
                "rsync_transport",
            ),
            (
                r#"{"file_server": {"host": "fs"}, "files": "x", "job": {"runner": {"command": "x"}}}"#,
                "invalid type",
            ),
            (r#"{"file_server": {"host": "fs"}, "#, "not valid JSON"),
        ];
        for (text, expected) in cases {
            let path = write(dir.path(), "gorgon.json", text);
            // What a distributed run loads: the settings, then the file server.
            let message = Settings::load(&path)
                .and_then(|s| s.file_server().cloned())
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("gorgon.json"), "{message}");
        }
        let missing = Settings::load(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("nope.json"));
    }

    #[test]
    fn a_local_run_needs_no_connection_or_file_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "gorgon.json",
            r#"{"files": ["t/*.sh"], "job": {"runner": {"command": "sh {file}"}}}"#,
        );
        let settings = Settings::load(&path).unwrap();
        assert_eq!(settings.files, ["t/*.sh"]);
        let problem = settings.file_server().unwrap_err().to_string();
        assert!(
            problem.contains("no file_server is configured"),
            "{problem}"
        );
        let path = write(
            dir.path(),
            "gorgon.json",
            r#"{"file_server": {"host": " "}, "job": {"runner": {"command": "x"}}}"#,
        );
        let settings = Settings::load(&path).unwrap();
        let problem = settings.file_server().unwrap_err().to_string();
        assert!(problem.contains("file_server.host is missing"), "{problem}");
    }

    #[test]
    fn the_command_line_overrides_the_file_timeout_of_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "gorgon.json",
            r#"{"files": ["t/*.sh"], "job": {"file_timeout": 30, "runner": {"command": "sh {file}"}}}"#,
        );
        let options = StartOptions {
            config: path,
            ..StartOptions::default()
        };
        let settings = Settings::for_start(&options).unwrap();
        assert_eq!(settings.runner.file_timeout, Some(30.0));
        let options = StartOptions {
            file_timeout: Some(1.5),
            ..options
        };
        let settings = Settings::for_start(&options).unwrap();
        assert_eq!(settings.runner.file_timeout, Some(1.5));
    }
}
