//! How a worker runs one test file, for each `job.runner.kind`: a shell command per file
//! (with an optional JUnit report), or a persistent runner (hand-written or built in) that
//! boots once and serves files over the runner protocol. Both end in a [`FileRun`], judged
//! so that nothing that did not run its tests reads as a pass.

use std::path::Path;
use std::time::{Duration, Instant};

use gorgon_exec::{CommandOutcome, OutputBuffer, OutputTap, RunningGroups, ShellCommand};
use gorgon_protocol::{
    BatchRequest, FileDone, FileStatus, Isolation, RunOutcome, RunRequest, RunnerKind,
    RunnerSettings, TestResult, WorkerRequest,
};
use gorgon_protocol::{RunnerChoice, RunnerChoiceError};
use std::collections::BTreeMap;
use tokio::io::AsyncReadExt;

use crate::builtin::{is_ruby, write_adapter};
use crate::class_callbacks::{ClassCallbacks, CLASS_FILE_VARIABLE};
use crate::junit;
use crate::persistent::{Answer, BootError, RunnerCallbackFailure, Session, WarmFork};
use crate::warm::{environment_allows_warm, WarmKey};

/// How long a persistent runner may take to boot (load the framework and the application)
/// before its first file is reported as crashed.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// How long a persistent runner may take to end once its stdin closed: the suite's at_exit
/// hooks run then (a coverage tool writes its result and report), and the callbacks
/// class's `after_complete`. A runner ends as soon as they are done; only one that hangs
/// costs the wait.
const EXIT_LIMIT: Duration = Duration::from_secs(300);

/// The outcome of one file, ready to become a `FileResult`.
#[derive(Clone, Debug)]
pub struct FileRun {
    pub status: FileStatus,
    pub exit: String,
    pub output: String,
    pub seconds: f64,
    pub tests: Vec<TestResult>,
}

/// The runner of one worker.
pub enum Runner {
    Command(CommandRunner),
    Persistent(Box<PersistentRunner>),
}

pub struct CommandRunner {
    base: ShellCommand,
    template: String,
    limit: Option<Duration>,
    allow_empty: bool,
}

pub struct PersistentRunner {
    command: ShellCommand,
    args: Vec<String>,
    isolation: Isolation,
    limit: Option<Duration>,
    allow_empty: bool,
    /// Unless `batch_seconds` is 0, quick files may share a run when the runner offers it.
    batches: bool,
    session: Option<Session>,
    /// Gets what the runner writes to a request's output file while it runs (live output),
    /// from that long into the run on.
    output_tap: Option<(OutputTap, Duration)>,
    /// The warm runner its sessions fork from, when the listener keeps one for it.
    warm: Option<WarmFork>,
    /// The callbacks class's `before_start` raised as it booted.
    callback_failure: Option<RunnerCallbackFailure>,
    /// Holds the built-in adapter scripts and each file's output.
    scratch: tempfile::TempDir,
    files_run: u64,
}

/// The runners of a job: one, or one per distinct runner of `job.runner.by_glob`, each made
/// when the first file that needs it comes, and kept (a persistent runner stays warm for the
/// next file of its kind).
pub struct Runners {
    choice: RunnerChoice,
    base: ShellCommand,
    /// The listener's warm runner, for a job of one runner.
    warm_socket: Option<std::path::PathBuf>,
    ruby: Option<RubyCallbacks>,
    made: BTreeMap<usize, Runner>,
}

/// A job's Gorgon callbacks class as its Ruby runners run it.
#[derive(Clone, Debug)]
pub struct RubyCallbacks {
    pub class: ClassCallbacks,
    /// The job's Ruby preload process on this host, which the Ruby runners fork from.
    pub preload: Option<std::path::PathBuf>,
}

impl Runners {
    pub fn new(
        settings: &RunnerSettings,
        base: ShellCommand,
        warm_socket: Option<&Path>,
        ruby: Option<RubyCallbacks>,
    ) -> Result<Runners, RunnerChoiceError> {
        let choice = RunnerChoice::new(settings)?;
        let warm_socket = warm_socket
            .filter(|_| choice.runners().len() == 1)
            .map(Path::to_owned);
        Ok(Runners {
            choice,
            base,
            warm_socket,
            ruby: ruby.filter(|ruby| ruby.class.in_ruby()),
            made: BTreeMap::new(),
        })
    }

    /// Which runner runs `file`, by index; an error names a file no runner is for.
    pub fn index_for(&self, file: &str) -> Result<usize, RunnerChoiceError> {
        self.choice.index_for(file)
    }

    /// Runner `index`, made now if it is its first file.
    pub fn get(&mut self, index: usize) -> std::io::Result<&mut Runner> {
        if !self.made.contains_key(&index) {
            let settings = &self.choice.runners()[index];
            let runner = Runner::new(
                settings,
                self.base.clone(),
                self.warm_socket.as_deref(),
                self.ruby.as_ref(),
            )?;
            self.made.insert(index, runner);
        }
        Ok(self.made.get_mut(&index).expect("made above"))
    }

    /// Whether the runner of `file` takes several files at once (see [`Runner::takes_batches`]).
    pub fn takes_batches(&self, file: &str) -> bool {
        self.index_for(file)
            .ok()
            .and_then(|index| self.made.get(&index))
            .is_some_and(Runner::takes_batches)
    }

    /// The callbacks class's `before_start` raised in a runner as it booted: the worker
    /// cannot run its files.
    pub fn take_callback_failure(&mut self) -> Option<RunnerCallbackFailure> {
        self.made.values_mut().find_map(|runner| match runner {
            Runner::Persistent(runner) => runner.callback_failure.take(),
            Runner::Command(_) => None,
        })
    }

    /// Stops every persistent runner at the end of the job; the callbacks class's
    /// `after_complete` failures as they ended.
    pub async fn stop(self) -> Vec<RunnerCallbackFailure> {
        let mut failures = Vec::new();
        for runner in self.made.into_values() {
            failures.extend(runner.stop().await);
        }
        failures
    }
}

impl Runner {
    /// The runner `settings` describe; `base` carries the workspace and the environment.
    /// A built-in runner forks its sessions from the warm runner at `warm_socket`, when
    /// there is one and the job's environment does not change how its interpreter starts;
    /// a Ruby runner of a job with a callbacks class (`ruby`) runs its `before_start` and
    /// `after_complete`, and forks from the job's preload process when there is one.
    pub fn new(
        settings: &RunnerSettings,
        mut base: ShellCommand,
        warm_socket: Option<&Path>,
        ruby: Option<&RubyCallbacks>,
    ) -> std::io::Result<Runner> {
        let limit = settings
            .file_timeout
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64);
        if settings.kind == RunnerKind::Command {
            return Ok(Runner::Command(CommandRunner {
                base,
                template: settings.command.clone(),
                limit,
                allow_empty: settings.allow_empty_files,
            }));
        }
        let scratch = tempfile::Builder::new()
            .prefix("gorgon-runner-")
            .tempdir()?;
        let adapter = write_adapter(settings.kind, &settings.command, scratch.path())?;
        let ruby = ruby.filter(|_| is_ruby(settings.kind));
        if let Some(ruby) = ruby {
            base.env.push((
                CLASS_FILE_VARIABLE.to_owned(),
                ruby.class.class_file.clone(),
            ));
        }
        let preload = ruby
            .filter(|ruby| ruby.class.forks(settings.kind, &settings.command))
            .and_then(|ruby| ruby.preload.as_deref());
        // The job's preload process, else the listener's warm runner when the job's
        // environment does not change how the interpreter starts.
        let fork_from = preload.or_else(|| {
            warm_socket
                .filter(|_| WarmKey::of(settings).is_some() && environment_allows_warm(&base.env))
        });
        let warm = adapter
            .as_ref()
            .zip(fork_from)
            .map(|(adapter, socket)| WarmFork {
                socket: socket.to_owned(),
                script: adapter.script.clone(),
            });
        let command = adapter.map_or_else(|| settings.command.clone(), |adapter| adapter.command);
        Ok(Runner::Persistent(Box::new(PersistentRunner {
            command: ShellCommand { command, ..base },
            args: settings.args.clone(),
            isolation: settings.isolation,
            limit,
            allow_empty: settings.allow_empty_files,
            batches: settings.batch_limit().is_some(),
            session: None,
            output_tap: None,
            warm,
            callback_failure: None,
            scratch,
            files_run: 0,
        })))
    }

    /// Runs one file (a path already checked to stay inside the workspace).
    pub async fn run_file(&mut self, file: &str) -> FileRun {
        match self {
            Runner::Command(runner) => runner.run_file(file).await,
            Runner::Persistent(runner) => runner.run_file(file).await,
        }
    }

    /// True when the runner can take several files at once: a persistent runner that is up
    /// and offered batches in its hello. Until its first file, nobody knows.
    pub fn takes_batches(&self) -> bool {
        match self {
            Runner::Command(_) => false,
            Runner::Persistent(runner) => {
                runner.batches && runner.session.as_ref().is_some_and(|s| s.batches)
            }
        }
    }

    /// Runs several files (each already checked) together when the runner takes batches,
    /// one after the other otherwise; one result per file, in the order of `files`.
    pub async fn run_files(&mut self, files: &[String]) -> Vec<FileRun> {
        if files.len() > 1 && self.takes_batches() {
            if let Runner::Persistent(runner) = self {
                return runner.run_batch(files).await;
            }
        }
        let mut runs = Vec::with_capacity(files.len());
        for file in files {
            runs.push(self.run_file(file).await);
        }
        runs
    }

    /// Where the processes that run a file now (its command, or the persistent runner) are
    /// counted, for a stopping worker to ask them to end.
    pub fn running(&self) -> RunningGroups {
        match self {
            Runner::Command(runner) => runner.base.running.clone(),
            Runner::Persistent(runner) => runner.command.running.clone(),
        }
    }

    /// Where a copy of the output of the files it runs from now on goes, as it is printed
    /// (live output), wanted from `after` into a file's run on; `None` stops it. (A command's
    /// pipes are copied from the start; a persistent runner's output file is read from then.)
    pub fn set_output_tap(&mut self, tap: Option<OutputTap>, after: Duration) {
        match self {
            Runner::Command(runner) => runner.base.output_tap = tap,
            Runner::Persistent(runner) => runner.output_tap = tap.map(|tap| (tap, after)),
        }
    }

    /// Stops a persistent runner at the end of the job.
    pub async fn stop(self) -> Option<RunnerCallbackFailure> {
        let Runner::Persistent(runner) = self else {
            return None;
        };
        runner.session?.stop(EXIT_LIMIT).await
    }
}

impl CommandRunner {
    async fn run_file(&mut self, file: &str) -> FileRun {
        let mut command = match runner_command(&self.template, file) {
            Ok(command) => command,
            Err(problem) => return refused(problem.to_string()),
        };
        let report_dir = match self.template.contains("{junit}") {
            true => match tempfile::Builder::new().prefix("gorgon-junit-").tempdir() {
                Ok(dir) => Some(dir),
                Err(error) => return refused(format!("cannot create a temporary folder: {error}")),
            },
            false => None,
        };
        let report = report_dir.as_ref().map(|d| d.path().join("junit.xml"));
        if let Some(report) = &report {
            match shlex::try_quote(&report.to_string_lossy()) {
                Ok(quoted) => command = command.replace("{junit}", &quoted),
                Err(_) => return refused("the temporary folder's path cannot be quoted".into()),
            }
        }
        let run = ShellCommand {
            command,
            ..self.base.clone()
        };
        let outcome = run.timeout(self.limit).run().await;
        let mut output = outcome.output.clone();
        let tests = match report.as_deref().filter(|r| r.exists()) {
            Some(report) => match read_junit(report) {
                Ok(tests) => Some(tests),
                Err(problem) => {
                    output.push_str(&format!("\n[gorgon] {problem}\n"));
                    None
                }
            },
            None => None,
        };
        let verdict = judge_command(&outcome, tests.as_deref(), self.allow_empty);
        FileRun::judged(verdict, output, outcome.seconds, tests.unwrap_or_default())
    }
}

impl PersistentRunner {
    /// Runs one file; its time does not count the runner's start.
    async fn run_file(&mut self, file: &str) -> FileRun {
        let booting = Instant::now();
        let output_path = match self.prepare().await {
            Ok(output_path) => output_path,
            Err(mut failed) => {
                failed.seconds = booting.elapsed().as_secs_f64();
                return failed;
            }
        };
        let started = Instant::now();
        let seconds = || started.elapsed().as_secs_f64();
        let request = WorkerRequest::Run(RunRequest {
            file: file.to_owned(),
            args: self.args.clone(),
            output_path: Some(output_path.to_string_lossy().into_owned()),
            isolation: self.isolation,
        });
        let (answer, mut output) = self.ask(request, &output_path).await;
        match answer {
            Answer::Done { mut done, stray } => {
                output.push_str(&stray);
                let done = done.pop().expect("a finished run answers for its one file");
                judged(done, output, seconds(), self.allow_empty)
            }
            Answer::Died { status } => {
                let exit = format!("the runner ended in the middle of the file ({status})");
                FileRun {
                    status: FileStatus::Crashed,
                    output: format!("{file}: {exit}\n{output}"),
                    exit,
                    seconds: seconds(),
                    tests: Vec::new(),
                }
            }
            Answer::TimedOut => {
                let limit = self.limit.unwrap_or_default().as_secs_f64();
                let exit = format!("timed out after {limit} s");
                FileRun {
                    status: FileStatus::TimedOut,
                    output: format!("{file}: {exit}; the runner was killed\n{output}"),
                    exit,
                    seconds: seconds(),
                    tests: Vec::new(),
                }
            }
        }
    }

    /// Runs `files` as one batch (the runner is up and takes batches). Each file's time is
    /// its tests' time plus an equal share of the rest of the batch's time; the batch's
    /// output goes with each file that did not pass (with the first file when all passed).
    /// When the runner dies or the batch runs past the file limit (a batch is expected to
    /// take a fraction of a second, so a hanging test is caught as soon as alone), the files
    /// run again one by one, so that the file at fault gets the blame alone.
    async fn run_batch(&mut self, files: &[String]) -> Vec<FileRun> {
        let output_path = match self.prepare().await {
            Ok(output_path) => output_path,
            Err(failed) => return vec![failed; files.len()],
        };
        let started = Instant::now();
        let request = WorkerRequest::RunBatch(BatchRequest {
            files: files.to_vec(),
            args: self.args.clone(),
            output_path: Some(output_path.to_string_lossy().into_owned()),
            isolation: self.isolation,
        });
        let (answer, mut output) = self.ask(request, &output_path).await;
        let mut done = match answer {
            Answer::Done { done, stray } => {
                output.push_str(&stray);
                done
            }
            Answer::Died { status } => {
                tracing::warn!(
                    "the runner ended during a batch of {} files ({status}); running them again one by one",
                    files.len()
                );
                return self.run_each(files).await;
            }
            Answer::TimedOut => {
                tracing::warn!(
                    "a batch of {} files ran out of time; running them again one by one",
                    files.len()
                );
                return self.run_each(files).await;
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let tests_seconds = |done: &FileDone| done.tests.iter().map(|t| t.seconds).sum::<f64>();
        let in_tests: f64 = done.iter().map(tests_seconds).sum();
        let share = (elapsed - in_tests).max(0.0) / files.len() as f64;
        let mut runs: Vec<FileRun> = files
            .iter()
            .map(|file| {
                let at = done
                    .iter()
                    .position(|d| d.file == *file)
                    .expect("a finished batch answers for each of its files");
                let done = done.swap_remove(at);
                let seconds = tests_seconds(&done) + share;
                judged(done, String::new(), seconds, self.allow_empty)
            })
            .collect();
        if output.trim().is_empty() {
            return runs;
        }
        let shared = format!(
            "[gorgon] output of the batch of {} files this file ran in:\n{output}",
            files.len()
        );
        let mut failing = runs
            .iter_mut()
            .filter(|run| run.status != FileStatus::Passed)
            .peekable();
        if failing.peek().is_none() {
            runs[0].output.push_str(&shared);
        } else {
            failing.for_each(|run| run.output.push_str(&shared));
        }
        runs
    }

    async fn run_each(&mut self, files: &[String]) -> Vec<FileRun> {
        let mut runs = Vec::with_capacity(files.len());
        for file in files {
            runs.push(self.run_file(file).await);
        }
        runs
    }

    /// Starts the runner if it is not up, and returns a fresh, empty output file for the
    /// next request; a failure is the result of every file of that request.
    async fn prepare(&mut self) -> Result<std::path::PathBuf, FileRun> {
        let session = match self.session.take() {
            Some(session) => session,
            None => match Session::start(&self.command, self.warm.as_ref(), BOOT_LIMIT).await {
                Ok(session) => {
                    tracing::info!(
                        runner = session.name,
                        forked = session.forked(),
                        "the runner is ready"
                    );
                    session
                }
                Err((error, output)) => {
                    if let BootError::Callback(failure) = &error {
                        self.callback_failure = Some(failure.clone());
                    }
                    return Err(FileRun {
                        status: FileStatus::Crashed,
                        exit: "the runner did not start".into(),
                        output: format!("{error}\n{output}"),
                        seconds: 0.0,
                        tests: Vec::new(),
                    });
                }
            },
        };
        let session = self.session.insert(session);
        let between_files = session.take_stderr();
        if !between_files.trim().is_empty() {
            tracing::info!(output = between_files.trim_end(), "the runner said");
        }
        self.files_run += 1;
        let output_path = self
            .scratch
            .path()
            .join(format!("output-{}.txt", self.files_run));
        if let Err(error) = std::fs::write(&output_path, "") {
            return Err(refused(format!(
                "cannot create {}: {error}",
                output_path.display()
            )));
        }
        Ok(output_path)
    }

    /// Sends a request (a file or a batch, both with the file limit) to the running runner
    /// and collects its answer and the output written meanwhile. A runner that died or ran
    /// out of time is gone afterwards.
    async fn ask(&mut self, request: WorkerRequest, output_path: &Path) -> (Answer, String) {
        let Some(session) = self.session.as_mut() else {
            unreachable!("prepare() started the runner");
        };
        let tail = self
            .output_tap
            .clone()
            .map(|(tap, after)| tokio::spawn(tail_file(output_path.to_owned(), tap, after)));
        let answer = session.run(request, self.limit).await;
        if let Some(tail) = tail {
            tail.abort();
        }
        let mut output = read_bounded(output_path).await;
        let _ = std::fs::remove_file(output_path);
        output.push_str(&session.take_stderr());
        if !matches!(answer, Answer::Done { .. }) {
            self.session = None;
        }
        (answer, output)
    }
}

/// Sends what is written to `path` to `tap`, from `after` on (what came before, then what is
/// appended, every [`crate::live::FLUSH_EVERY`] / 2), until aborted: the output file a
/// persistent runner writes while a request runs. A file that ends before `after` costs a
/// timer only.
async fn tail_file(path: std::path::PathBuf, tap: OutputTap, after: Duration) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    tokio::time::sleep(after).await;
    let mut offset = 0u64;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        tokio::time::sleep(crate::live::FLUSH_EVERY / 2).await;
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            continue;
        };
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        while let Ok(read) = file.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            offset += read as u64;
            if tap.send(chunk[..read].to_vec()).is_err() {
                return;
            }
        }
    }
}

/// A persistent runner's answer about one file, judged; `output` is what the file printed.
fn judged(done: FileDone, mut output: String, seconds: f64, allow_empty: bool) -> FileRun {
    output.push_str(&done.output);
    FileRun::judged(judge_done(&done, allow_empty), output, seconds, done.tests)
}

impl FileRun {
    /// A file's run from its verdict (status, exit, a reason to show before the output).
    fn judged(
        (status, exit, reason): (FileStatus, String, Option<String>),
        output: String,
        seconds: f64,
        tests: Vec<TestResult>,
    ) -> FileRun {
        let output = match reason {
            Some(reason) => format!("{reason}\n{output}"),
            None => output,
        };
        FileRun {
            status,
            exit,
            output,
            seconds,
            tests,
        }
    }
}

/// A file the worker will not run.
pub(crate) fn refused(problem: String) -> FileRun {
    FileRun {
        status: FileStatus::Crashed,
        exit: "refused".into(),
        output: problem,
        seconds: 0.0,
        tests: Vec::new(),
    }
}

/// A file whose path no shell command can name.
#[derive(Debug, thiserror::Error)]
#[error("the path {file:?} holds a NUL byte and cannot be passed to a shell")]
pub struct UnquotablePath {
    file: String,
}

/// The runner command for one file: every `{file}` replaced by the shell-quoted path.
pub fn runner_command(template: &str, file: &str) -> Result<String, UnquotablePath> {
    let quoted = shlex::try_quote(file).map_err(|_| UnquotablePath {
        file: file.to_owned(),
    })?;
    Ok(template.replace("{file}", &quoted))
}

fn read_junit(path: &Path) -> Result<Vec<TestResult>, junit::JunitError> {
    let xml = std::fs::read_to_string(path).map_err(|source| junit::JunitError::Read {
        path: path.to_owned(),
        source,
    })?;
    junit::parse(&xml)
}

/// Reads a file's output, keeping its head and tail like any other output.
async fn read_bounded(path: &Path) -> String {
    let mut buffer = OutputBuffer::default();
    if let Ok(mut file) = tokio::fs::File::open(path).await {
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = file.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buffer.push(&chunk[..n]);
        }
    }
    buffer.text()
}

/// The verdict the tests alone give: failed when one failed or errored, failed when there
/// are none (unless empty files are allowed), passed otherwise. Skipped and pending tests
/// count as run.
fn judge_tests(tests: &[TestResult], allow_empty: bool) -> (FileStatus, String, Option<String>) {
    let failing = tests.iter().filter(|t| t.status.is_failure()).count();
    if failing > 0 {
        let exit = format!("{failing} of {} tests failed", tests.len());
        (FileStatus::Failed, exit, None)
    } else if tests.is_empty() && !allow_empty {
        let reason = "no tests ran: the file defines no test (set job.runner.allow_empty_files \
                      to let such files pass)";
        (
            FileStatus::Failed,
            "no tests ran".into(),
            Some(reason.into()),
        )
    } else if tests.is_empty() {
        (FileStatus::Passed, "no tests".into(), None)
    } else {
        (
            FileStatus::Passed,
            format!("{} tests passed", tests.len()),
            None,
        )
    }
}

/// The verdict on a persistent runner's answer: (status, exit, a reason to show first).
fn judge_done(done: &FileDone, allow_empty: bool) -> (FileStatus, String, Option<String>) {
    let message = || {
        done.message
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| format!("{}: {:?}", done.file, done.outcome))
    };
    match done.outcome {
        RunOutcome::Completed => judge_tests(&done.tests, allow_empty),
        RunOutcome::LoadError => (FileStatus::Failed, "load error".into(), Some(message())),
        RunOutcome::Exited => (
            FileStatus::Failed,
            "the process was ended by the file".into(),
            Some(message()),
        ),
        RunOutcome::Killed => (
            FileStatus::Crashed,
            "killed by a signal".into(),
            Some(message()),
        ),
        RunOutcome::RunnerError => (FileStatus::Crashed, "runner error".into(), Some(message())),
    }
}

/// The verdict on a command: its exit status, made stricter by a JUnit report when there is
/// one (a failing test or an empty report fails a command that exited 0).
fn judge_command(
    outcome: &CommandOutcome,
    tests: Option<&[TestResult]>,
    allow_empty: bool,
) -> (FileStatus, String, Option<String>) {
    let by_exit = if outcome.timed_out {
        FileStatus::TimedOut
    } else if outcome.success() {
        FileStatus::Passed
    } else if outcome.crashed() {
        FileStatus::Crashed
    } else {
        FileStatus::Failed
    };
    let Some(tests) = tests else {
        return (by_exit, outcome.description.clone(), None);
    };
    let (by_tests, summary, reason) = judge_tests(tests, allow_empty);
    let status = match (by_exit, by_tests) {
        (FileStatus::Passed, by_tests) => by_tests,
        (by_exit, _) => by_exit,
    };
    (
        status,
        format!("{}; {summary}", outcome.description),
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::TestStatus;

    fn test(status: TestStatus) -> TestResult {
        TestResult {
            name: "t".into(),
            classname: String::new(),
            file: None,
            line: None,
            status,
            seconds: 0.0,
            message: None,
            details: None,
            id: None,
        }
    }

    fn done(outcome: RunOutcome, tests: Vec<TestResult>) -> FileDone {
        FileDone {
            file: "f".into(),
            outcome,
            message: Some("why".into()),
            tests,
            output: String::new(),
        }
    }

    #[test]
    fn the_file_is_substituted_and_quoted() {
        assert_eq!(
            runner_command("ruby -Itest {file}", "test/a_test.rb").unwrap(),
            "ruby -Itest test/a_test.rb"
        );
        assert_eq!(
            runner_command("sh {file} && echo {file}", "t/my test.sh").unwrap(),
            "sh 't/my test.sh' && echo 't/my test.sh'"
        );
        assert_eq!(runner_command("make test", "a.sh").unwrap(), "make test");
        let problem = runner_command("sh {file}", "a\0b").unwrap_err();
        assert_eq!(problem.file, "a\0b");
        assert!(
            problem.to_string().contains("holds a NUL byte"),
            "{problem}"
        );
    }

    #[test]
    fn nothing_that_did_not_run_its_tests_passes() {
        use RunOutcome::*;
        let passed = || vec![test(TestStatus::Passed), test(TestStatus::Skipped)];
        let verdict = |d: FileDone, allow| judge_done(&d, allow).0;
        assert_eq!(
            verdict(done(Completed, passed()), false),
            FileStatus::Passed
        );
        assert_eq!(
            verdict(done(Completed, vec![test(TestStatus::Errored)]), false),
            FileStatus::Failed
        );
        assert_eq!(verdict(done(Completed, vec![]), false), FileStatus::Failed);
        assert_eq!(verdict(done(Completed, vec![]), true), FileStatus::Passed);
        assert_eq!(verdict(done(LoadError, passed()), true), FileStatus::Failed);
        assert_eq!(verdict(done(Exited, passed()), true), FileStatus::Failed);
        assert_eq!(verdict(done(Killed, passed()), true), FileStatus::Crashed);
        assert_eq!(
            verdict(done(RunnerError, passed()), true),
            FileStatus::Crashed
        );
        let (_, exit, reason) = judge_done(&done(Completed, vec![]), false);
        assert_eq!(exit, "no tests ran");
        assert!(reason.unwrap().contains("allow_empty_files"));
    }

    #[tokio::test]
    async fn a_junit_report_makes_a_green_exit_stricter() {
        let dir = tempfile::tempdir().unwrap();
        let base = ShellCommand::new("", dir.path());
        let settings = |command: &str| RunnerSettings {
            command: command.into(),
            ..RunnerSettings::default()
        };
        let failing = r#"<testsuite><testcase name="adds" classname="Cart" file="c.rb" line="3"><failure message="expected 2">c.rb:4</failure></testcase></testsuite>"#;
        let command = format!("printf '%s' '{failing}' > {{junit}}");
        let mut runner = Runner::new(&settings(&command), base.clone(), None, None).unwrap();
        let run = runner.run_file("c.rb").await;
        assert_eq!(run.status, FileStatus::Failed, "{run:?}");
        assert_eq!(run.exit, "exit status 0; 1 of 1 tests failed");
        assert_eq!(run.tests[0].name, "adds");
        assert_eq!(run.tests[0].line, Some(3));

        let mut runner = Runner::new(&settings("exit 3"), base.clone(), None, None).unwrap();
        let run = runner.run_file("c.rb").await;
        assert_eq!(run.status, FileStatus::Failed);
        assert!(run.tests.is_empty());

        let mut runner = Runner::new(
            &settings("echo '<testsuite/>' > {junit}"),
            base.clone(),
            None,
            None,
        )
        .unwrap();
        let run = runner.run_file("c.rb").await;
        assert_eq!(run.status, FileStatus::Failed, "{run:?}");
        assert!(run.output.starts_with("no tests ran"), "{run:?}");
    }

    /// A persistent runner started by `command` from `script` (written to `name` in `dir`),
    /// with a file limit of 0.5 s.
    fn persistent_runner(dir: &Path, name: &str, script: &str, command: &str) -> Runner {
        persistent_runner_with_limit(dir, name, script, command, Some(0.5))
    }

    /// [`persistent_runner`] with the file limit `file_timeout` (in seconds).
    fn persistent_runner_with_limit(
        dir: &Path,
        name: &str,
        script: &str,
        command: &str,
        file_timeout: Option<f64>,
    ) -> Runner {
        std::fs::write(dir.join(name), script).unwrap();
        let settings = RunnerSettings {
            kind: RunnerKind::Persistent,
            command: command.into(),
            file_timeout,
            ..RunnerSettings::default()
        };
        Runner::new(&settings, ShellCommand::new("", dir), None, None).unwrap()
    }

    #[tokio::test]
    async fn a_persistent_runner_serves_files_and_is_replaced_when_it_dies() {
        let dir = tempfile::tempdir().unwrap();
        // A minimal runner in sh: passes `ok` files, dies on `die` files.
        let script = r#"echo '{"type":"hello","protocol":1,"runner":"sh"}'
while read -r line; do
  case "$line" in
    *die*) echo "dying on purpose" >&2; exit 0 ;;
    *hang*) sleep 30 ;;
    *) echo "{\"type\":\"file_done\",\"file\":\"ok\",\"outcome\":\"completed\",\"tests\":[{\"name\":\"a\",\"status\":\"passed\"}]}" ;;
  esac
done"#;
        let mut runner = persistent_runner(dir.path(), "runner.sh", script, "sh runner.sh");
        let run = runner.run_file("ok").await;
        assert_eq!(run.status, FileStatus::Passed, "{run:?}");
        let run = runner.run_file("die").await;
        assert_eq!(run.status, FileStatus::Crashed, "{run:?}");
        assert!(run.exit.contains("exit status 0"), "{run:?}");
        assert!(run.output.contains("dying on purpose"), "{run:?}");
        let run = runner.run_file("ok").await;
        assert_eq!(run.status, FileStatus::Passed, "{run:?}");
        let run = runner.run_file("hang").await;
        assert_eq!(run.status, FileStatus::TimedOut, "{run:?}");
        assert_eq!(run.exit, "timed out after 0.5 s");
        let run = runner.run_file("ok").await;
        assert_eq!(run.status, FileStatus::Passed, "{run:?}");
        runner.stop().await;
    }
    #[tokio::test]
    async fn a_runner_past_its_limit_gets_sigterm_and_a_grace_first() {
        let dir = tempfile::tempdir().unwrap();
        // A runner that hangs on its file, and on SIGTERM takes a moment to leave a note.
        let script = r#"trap 'sleep 0.3; touch terminated; exit 0' TERM
echo '{"type":"hello","protocol":1,"runner":"sh"}'
read -r line
while :; do sleep 0.05; done"#;
        let mut runner = persistent_runner(dir.path(), "runner.sh", script, "sh runner.sh");
        let run = runner.run_file("hang").await;
        assert_eq!(run.status, FileStatus::TimedOut, "{run:?}");
        assert!(
            dir.path().join("terminated").exists(),
            "the runner was killed without SIGTERM and its grace"
        );
        runner.stop().await;
    }

    #[tokio::test]
    async fn a_runner_line_over_the_limit_crashes_its_file_without_being_held() {
        let dir = tempfile::tempdir().unwrap();
        // Answers its file with a 17 MB line, one byte over the limit or more.
        let script = r#"echo '{"type":"hello","protocol":1,"runner":"sh"}'
read -r line
head -c 17000000 /dev/zero | tr '\0' x
echo
sleep 30"#;
        // No file limit: reading 17 MB may take a debug build longer than 0.5 s.
        let mut runner =
            persistent_runner_with_limit(dir.path(), "runner.sh", script, "sh runner.sh", None);
        let run = runner.run_file("big").await;
        assert_eq!(run.status, FileStatus::Crashed, "{}", run.exit);
        assert!(
            run.exit
                .contains("a line of 17000000 bytes, over the limit of 16777216"),
            "{}",
            run.exit
        );
        runner.stop().await;
    }

    #[tokio::test]
    async fn a_batch_that_breaks_the_protocol_or_hangs_runs_again_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        // Answers each file of a request; `lie` makes it answer for a file it was not asked
        // about, `hang` makes it hang. Logs every request.
        let script = r#"
import json, sys, time
print(json.dumps({"type": "hello", "protocol": 1, "batches": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    files = request.get("files") or [request["file"]]
    with open("requests.log", "a") as log:
        log.write(" ".join(files) + "\n")
    for file in files:
        if file == "hang":
            time.sleep(30)
        answered = "someone-else" if file == "lie" and len(files) > 1 else file
        test = {"name": file, "status": "passed", "seconds": 0.01}
        print(json.dumps({"type": "file_done", "file": answered, "outcome": "completed",
                          "tests": [test]}), flush=True)
"#;
        let mut runner =
            persistent_runner(dir.path(), "runner.py", script, "exec python3 runner.py");
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let statuses = |runs: &[FileRun]| runs.iter().map(|r| r.status).collect::<Vec<_>>();

        // The runner is not up yet: nobody knows that it takes batches.
        assert!(!runner.takes_batches());
        assert_eq!(runner.run_file("a").await.status, FileStatus::Passed);
        assert!(runner.takes_batches());
        let runs = runner.run_files(&names(&["b", "c"])).await;
        assert_eq!(statuses(&runs), [FileStatus::Passed, FileStatus::Passed]);
        assert_eq!(runs[1].tests[0].name, "c");
        assert!(runs.iter().all(|r| r.seconds >= 0.01), "{runs:?}");

        let runs = runner.run_files(&names(&["d", "lie"])).await;
        assert_eq!(statuses(&runs), [FileStatus::Passed, FileStatus::Passed]);
        let runs = runner.run_files(&names(&["e", "hang"])).await;
        assert_eq!(statuses(&runs), [FileStatus::Passed, FileStatus::TimedOut]);
        runner.stop().await;

        let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap();
        assert_eq!(
            log, "a\nb c\nd lie\nd\nlie\ne hang\ne\nhang\n",
            "a broken or timed-out batch runs again file by file"
        );
    }
}
