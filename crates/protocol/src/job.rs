//! The job definition: everything a listener, its worker manager and its workers need to take
//! part in one run. The originator builds it from `gorgon.json`; it travels on the jobs
//! exchange, then on the worker manager's and each worker's stdin.

use std::collections::BTreeMap;

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
    /// `job.first_is_1`: a host's first worker has `TEST_ENV_NUMBER=1` rather than an empty
    /// one (parallel_tests' `--first-is-1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_is_1: bool,
    /// `job.artifacts`: what each listener brings back from its workspace at its part's end.
    #[serde(default, skip_serializing_if = "Artifacts::is_off")]
    pub artifacts: Artifacts,
    /// `job.worker_setup`: a command each worker runs once, before its first file, with its
    /// variables (`TEST_ENV_NUMBER`, …); its failure fails the files that worker took, and
    /// the worker takes no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_setup: Option<String>,
    /// The mean time of the run's files in the runtime history, in seconds, when it knows
    /// most of them: a far host decides from it, and its own round trip to the broker, how
    /// many files to hold ahead of its busy slots before it has timed any (`look_ahead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_file_seconds: Option<f64>,
    /// `--record-impact` / `job.impact.record`: the built-in runners record the code each
    /// file runs (`docs/impact.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_impact: bool,
    /// The originator's `connection.outage_limit`, in seconds: how long it goes on trying to
    /// get its broker connection back. A worker manager that finds the originator's reply
    /// queue without a consumer waits this long before it takes the originator for gone,
    /// since a partitioned originator (its connection dropped by the broker after missed
    /// heartbeats) cannot be told from a dead one and may come back within it. Absent (an
    /// older originator, a CI build): two checks in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator_outage_limit: Option<u64>,
}

/// Files a host's workspace produces that come back to the originator at the end of the
/// host's part (coverage data, screenshots, logs): globs below the workspace, and a limit of
/// bytes per host beyond which files are left out and named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    pub paths: Vec<String>,
    pub limit_bytes: u64,
}

impl Artifacts {
    pub fn is_off(&self) -> bool {
        self.paths.is_empty()
    }
}

/// One artifact, or a piece of one larger than a message: its path below the workspace, its
/// bytes (base64 on the wire) and, for a piece after the first, how many bytes of the file
/// come before them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub path: String,
    content: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    offset: u64,
}

fn is_zero(offset: &u64) -> bool {
    *offset == 0
}

impl ArtifactFile {
    /// A whole file, or the first piece of one.
    pub fn new(path: String, bytes: &[u8]) -> ArtifactFile {
        ArtifactFile::piece(path, 0, bytes)
    }

    /// The piece of a file that starts `offset` bytes into it.
    pub fn piece(path: String, offset: u64, bytes: &[u8]) -> ArtifactFile {
        use base64::Engine;
        ArtifactFile {
            path,
            content: base64::engine::general_purpose::STANDARD.encode(bytes),
            offset,
        }
    }

    /// How many bytes of the file come before this piece (0: the file starts here).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's bytes; `None` when what came is not base64.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.content)
            .ok()
    }

    /// Its path as folders and a name below the artifacts' folder: `None` for a path that
    /// is absolute, empty, or steps out (`..`), which a host must never send.
    pub fn relative_path(&self) -> Option<std::path::PathBuf> {
        ArtifactFile::stays_below(&self.path).then(|| self.path.clone().into())
    }

    /// Whether `path` names a place below a folder: not empty, not absolute, no `..`.
    pub fn stays_below(path: &str) -> bool {
        let mut parts = std::path::Path::new(path).components();
        !path.is_empty() && parts.all(|part| matches!(part, std::path::Component::Normal(_)))
    }
}

/// Which running files send their output as it is produced (`gorgon start --live-output`,
/// and every file when the run writes events), and after how long the others do (so that a
/// file that hangs shows its last lines while it runs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveOutput {
    pub enabled: bool,
    /// Only these files (or test ids); empty: every file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Every other file sends its output too once it has run this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_after_seconds: Option<f64>,
}

impl LiveOutput {
    pub fn is_off(&self) -> bool {
        !self.enabled && self.others_after_seconds.is_none()
    }

    /// After how long `file`'s output is streamed while it runs, if it is.
    pub fn delay_for(&self, file: &str) -> Option<std::time::Duration> {
        let listed = self.files.is_empty() || self.files.iter().any(|f| f == file);
        if self.enabled && listed {
            return Some(std::time::Duration::ZERO);
        }
        self.others_after_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(std::time::Duration::from_secs_f64)
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
                tree: None,
            },
            runner: RunnerSettings {
                command: command.into(),
                ..RunnerSettings::default()
            },
            callbacks,
            live_output: LiveOutput::default(),
            first_is_1: false,
            artifacts: Artifacts::default(),
            worker_setup: None,
            expected_file_seconds: None,
            record_impact: false,
            originator_outage_limit: None,
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
    /// The pushed tree's manifest, by its digest: signed with the job, so that a listener
    /// runs nothing of a tree that is not the one the originator pushed (docs/security.md).
    /// `None` where nothing is pulled (`--local`, CI nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeSeal>,
}

/// The digest of a tree's manifest and how many entries it lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSeal {
    /// SHA-256 of the manifest's bytes, lowercase hex.
    pub digest: String,
    pub entries: u64,
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
    /// Runners by file (`job.runner.by_glob`): each glob, relative to the project root, names
    /// the runner of the files it matches, and the fields above are then unused. Without
    /// `job.runner`, the runner follows the file's name as in Gorgon ([`RunnerSettings::by_name`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_glob: BTreeMap<String, RunnerSettings>,
    /// The phases' own runners (`phases[].runner` in `gorgon.json`), in phase order: a file
    /// belongs to the first phase whose globs match it, and runs with that phase's runner
    /// when it has one, else as the fields above say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_phase: Vec<PhaseRunner>,
}

/// A phase's files and, when it has one, its runner (see [`RunnerSettings::by_phase`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseRunner {
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<Box<RunnerSettings>>,
}

/// A glob of files relative to the project root, matched as the `files` globs are: `*` does
/// not cross `/`, and `**/REST` also matches REST at the top.
#[derive(Clone, Debug)]
pub struct FileGlob {
    pub text: String,
    pattern: glob::Pattern,
    top: Option<glob::Pattern>,
}

impl FileGlob {
    pub fn new(text: &str) -> Result<FileGlob, glob::PatternError> {
        Ok(FileGlob {
            text: text.to_owned(),
            pattern: glob::Pattern::new(text)?,
            top: text
                .strip_prefix("**/")
                .and_then(|rest| glob::Pattern::new(rest).ok()),
        })
    }

    /// Whether it matches `unit`'s file (a file, or a test id of one).
    pub fn matches(&self, unit: &str) -> bool {
        let file = unit_file(unit).unwrap_or(unit);
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        self.pattern.matches_with(file, options)
            || self
                .top
                .as_ref()
                .is_some_and(|p| p.matches_with(file, options))
    }
}

/// The file a queued unit belongs to: `spec/a_spec.rb:12` → `spec/a_spec.rb`,
/// `tests/test_a.py::TestA::test_b[1]` → `tests/test_a.py`; `None` for a file.
pub fn unit_file(unit: &str) -> Option<&str> {
    if let Some((file, _)) = unit.split_once("::") {
        return Some(file);
    }
    let (file, line) = unit.rsplit_once(':')?;
    line.parse::<u32>().ok().map(|_| file)
}

/// Which runner runs which file of a job: the one runner, or the runners of
/// [`RunnerSettings::by_glob`], their globs compiled once.
#[derive(Debug)]
pub struct RunnerChoice {
    runners: Vec<RunnerSettings>,
    /// The runners follow the files' names ([`RunnerSettings::by_name`]).
    by_name: bool,
    /// Each glob with the index of its runner.
    globs: Vec<(FileGlob, usize)>,
    /// Each phase's globs, in phase order, with the index of the phase's own runner.
    phases: Vec<(Vec<FileGlob>, Option<usize>)>,
}

/// A file no runner, or more than one, is for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerChoiceError {
    #[error("{0} matches no glob of job.runner.by_glob, so no runner is set for it (globs: {1})")]
    NoRunner(String, String),
    #[error("{0} has no runner: without job.runner, a file's name chooses it (*_spec.rb: rspec, *_test.rb: minitest, test_*.py and *_test.py: pytest); set job.runner, or job.runner.by_glob for files of several kinds")]
    NoRunnerByName(String),
    #[error("{file} matches both {first} and {second} of job.runner.by_glob, which name different runners")]
    TwoRunners {
        file: String,
        first: String,
        second: String,
    },
    #[error("job.runner.by_glob: {0} is not a glob: {1}")]
    BadGlob(String, String),
}

impl RunnerChoice {
    pub fn new(settings: &RunnerSettings) -> Result<RunnerChoice, RunnerChoiceError> {
        let compile = |glob: &String| {
            FileGlob::new(glob).map_err(|e| RunnerChoiceError::BadGlob(glob.clone(), e.to_string()))
        };
        let mut runners: Vec<RunnerSettings> = Vec::new();
        let mut index_of = |runner: &RunnerSettings| match runners.iter().position(|r| r == runner)
        {
            Some(index) => index,
            None => {
                runners.push(runner.clone());
                runners.len() - 1
            }
        };
        let mut globs = Vec::new();
        if settings.by_glob.is_empty() {
            index_of(&RunnerSettings {
                by_phase: Vec::new(),
                ..settings.clone()
            });
        }
        for (glob, runner) in &settings.by_glob {
            globs.push((compile(glob)?, index_of(runner)));
        }
        let mut phases = Vec::new();
        for phase in &settings.by_phase {
            let phase_globs = phase.files.iter().map(compile).collect::<Result<_, _>>()?;
            phases.push((phase_globs, phase.runner.as_deref().map(&mut index_of)));
        }
        Ok(RunnerChoice {
            runners,
            by_name: settings.by_glob == RunnerSettings::by_name().by_glob,
            globs,
            phases,
        })
    }

    /// The distinct runners, by index.
    pub fn runners(&self) -> &[RunnerSettings] {
        &self.runners
    }

    /// The index of the runner of `unit` (a file, or a test id of one).
    pub fn index_for(&self, unit: &str) -> Result<usize, RunnerChoiceError> {
        let phase = self
            .phases
            .iter()
            .find(|(globs, _)| globs.iter().any(|glob| glob.matches(unit)));
        if let Some((_, Some(index))) = phase {
            return Ok(*index);
        }
        if self.globs.is_empty() {
            return Ok(0);
        }
        let mut found: Option<(&str, usize)> = None;
        for (glob, index) in &self.globs {
            if !glob.matches(unit) {
                continue;
            }
            match found {
                Some((first, other)) if other != *index => {
                    return Err(RunnerChoiceError::TwoRunners {
                        file: unit.to_owned(),
                        first: first.to_owned(),
                        second: glob.text.clone(),
                    })
                }
                Some(_) => {}
                None => found = Some((&glob.text, *index)),
            }
        }
        found.map(|(_, index)| index).ok_or_else(|| {
            if self.by_name {
                return RunnerChoiceError::NoRunnerByName(unit.to_owned());
            }
            let globs: Vec<&str> = self.globs.iter().map(|(g, _)| g.text.as_str()).collect();
            RunnerChoiceError::NoRunner(unit.to_owned(), globs.join(", "))
        })
    }

    /// The runner of `unit`.
    pub fn runner_for(&self, unit: &str) -> Result<&RunnerSettings, RunnerChoiceError> {
        self.index_for(unit).map(|index| &self.runners[index])
    }
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
    /// Gorgon's rule, for a project with no `job.runner`: the runner follows the file's name.
    /// `*_spec.rb` runs with the built-in RSpec runner, `*_test.rb` with the built-in
    /// Minitest runner (Test::Unit files too), `test_*.py` and `*_test.py` with pytest.
    pub fn by_name() -> RunnerSettings {
        let kind = |kind| RunnerSettings {
            kind,
            ..RunnerSettings::default()
        };
        let rules = [
            ("**/*_spec.rb", RunnerKind::Rspec),
            ("**/*_test.rb", RunnerKind::Minitest),
            ("**/test_*.py", RunnerKind::Pytest),
            ("**/*_test.py", RunnerKind::Pytest),
        ];
        RunnerSettings {
            by_glob: rules
                .into_iter()
                .map(|(glob, runner)| (glob.to_owned(), kind(runner)))
                .collect(),
            ..RunnerSettings::default()
        }
    }

    /// Whether every runner of the job runs one test alone by its id (so slow files can be
    /// split, and their tests are recorded).
    pub fn runs_single_tests(&self) -> bool {
        if self.by_glob.is_empty() {
            self.kind.runs_single_tests()
        } else {
            self.by_glob.values().all(RunnerSettings::runs_single_tests)
        }
    }

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
    /// Gorgon's Ruby callbacks class (`callbacks_class_file`, relative to the workspace):
    /// its `before_creating_workers`, `before_start`, `after_complete` and
    /// `after_creating_workers` run on the listener, inside the job's Ruby runner processes
    /// when the job has a built-in Ruby runner (so that what they load is preloaded), else as
    /// commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_file: Option<String>,
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

#[cfg(test)]
mod runner_choice_tests {
    use super::*;

    #[test]
    fn the_runner_follows_the_file_by_name_and_by_glob() {
        let choice = RunnerChoice::new(&RunnerSettings::by_name()).unwrap();
        let kind = |file: &str| choice.runner_for(file).map(|r| r.kind);
        assert_eq!(kind("spec/models/cart_spec.rb"), Ok(RunnerKind::Rspec));
        assert_eq!(kind("cart_spec.rb"), Ok(RunnerKind::Rspec));
        assert_eq!(kind("test/unit/cart_test.rb"), Ok(RunnerKind::Minitest));
        assert_eq!(kind("tests/test_cart.py::test_tax"), Ok(RunnerKind::Pytest));
        // Both pytest globs: the same runner, no conflict.
        assert_eq!(kind("tests/test_cart_test.py"), Ok(RunnerKind::Pytest));
        let error = choice.runner_for("tests/cart.sh").unwrap_err().to_string();
        assert!(
            error.starts_with("tests/cart.sh has no runner: without job.runner"),
            "{error}"
        );
        assert_eq!(choice.runners().len(), 3);

        let mut settings = RunnerSettings::default();
        settings.by_glob.insert(
            "tests/*.sh".into(),
            RunnerSettings {
                command: "sh {file}".into(),
                ..RunnerSettings::default()
            },
        );
        settings.by_glob.insert(
            "tests/slow_*".into(),
            RunnerSettings {
                command: "bash {file}".into(),
                ..RunnerSettings::default()
            },
        );
        let choice = RunnerChoice::new(&settings).unwrap();
        assert_eq!(
            choice.runner_for("tests/a.sh").unwrap().command,
            "sh {file}"
        );
        assert!(matches!(
            choice.runner_for("tests/slow_a.sh"),
            Err(RunnerChoiceError::TwoRunners { .. })
        ));
        let error = choice.runner_for("spec/x_spec.rb").unwrap_err().to_string();
        assert!(
            error.starts_with("spec/x_spec.rb matches no glob of job.runner.by_glob"),
            "{error}"
        );
        assert_eq!(
            RunnerChoice::new(&RunnerSettings::default())
                .unwrap()
                .index_for("anything"),
            Ok(0)
        );
    }
}
