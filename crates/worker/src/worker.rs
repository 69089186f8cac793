//! A worker (`gorgon __work`): takes test files from its [`Transport`], runs them with the
//! job's runner (see `runner`) and reports each result. Quick files are taken several at a
//! time and run as one batch when the runner takes batches. A file is settled only once its
//! result has reached the originator, so a file whose worker dies runs again.

use std::path::{Component, Path};
use std::time::Duration;

use gorgon_exec::{grace, run_callback, RunningGroups};
use gorgon_protocol::{batch_size, CallbackName, FileResult, Message, WorkerAssignment};

use crate::class_callbacks::{host_command, ClassCallbacks};
use crate::live::{LiveOutput, FLUSH_EVERY};
use crate::persistent::RunnerCallbackFailure;
use crate::runner::{refused, FileRun, RubyCallbacks, Runner, Runners};
use crate::{command_base, StdinClosed, EXIT_BROKEN};
use gorgon_exec::signals::StopSignals;

/// How the file loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// No more files: every file has a result.
    Finished,
    /// The originator is gone: nobody wants results any more.
    OriginatorGone,
    /// The parent died or a signal asked to stop, between files.
    Stopped,
    /// The same, while files ran: they were stopped and handed back.
    StoppedMidFile,
    /// `job.worker_setup` failed: the file taken failed with its output, and the worker
    /// takes no more.
    SetupFailed,
}

/// Where a worker's files come from and where its messages go: the lines of its stdin and
/// stdout, from and to its pool (`local`).
pub(crate) trait Transport {
    /// A file taken, to settle once its result has gone out or it is handed back.
    type Taken;

    /// The next file to run (a path relative to the workspace), or how the loop ends.
    async fn next_file(&mut self) -> Result<(String, Self::Taken), End>;

    /// Another file to add to a batch, if one is waiting right now; never waits for one
    /// (the pool hands a file delivered again alone, so it never comes with others).
    async fn try_next_file(&mut self) -> Option<(String, Self::Taken)> {
        None
    }

    /// Sends one message to the originator; `Err` when the worker must stop.
    async fn send(&mut self, message: Message) -> Result<(), End>;

    /// Sends several messages, in order; `Err` when the worker must stop.
    async fn send_all(&mut self, messages: Vec<Message>) -> Result<(), End> {
        for message in messages {
            self.send(message).await?;
        }
        Ok(())
    }

    /// The file's result has reached the originator.
    async fn done(&mut self, taken: Self::Taken);

    /// The file did not run to a result here: someone else must run it.
    async fn hand_back(&mut self, taken: Self::Taken);
}

/// Runs worker `assignment.worker_id` of the job with `transport` until the files run out,
/// the originator goes, stdin ends (the parent died) or a signal arrives, and returns the
/// exit code: 0 unless the worker could not do its part at all.
pub(crate) async fn work_with<T: Transport>(
    transport: &mut T,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
) -> i32 {
    let Some(worker_id) = assignment.worker_id else {
        tracing::error!("the assignment names no worker id");
        return EXIT_BROKEN;
    };
    let mut signals = StopSignals::install();
    let definition = &assignment.definition;
    let before_start = host_command(definition, CallbackName::BeforeStart);
    if !run_worker_callback(
        transport,
        assignment,
        CallbackName::BeforeStart,
        before_start.as_deref(),
    )
    .await
    {
        return 0;
    }
    let warm_socket = assignment.warm_runner.as_deref();
    let ruby = ClassCallbacks::of(definition).map(|class| RubyCallbacks {
        class,
        preload: assignment.ruby_preload.clone(),
    });
    let mut runners = match Runners::new(
        &definition.runner,
        command_base(assignment),
        warm_socket,
        ruby,
    ) {
        Ok(runners) => runners,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot prepare its runner");
            return EXIT_BROKEN;
        }
    };
    let mut batches = Batches {
        assignment,
        worker_id,
        batch_limit: assignment.definition.runner.batch_limit(),
        seconds_per_file: None,
    };
    let mut setup = definition
        .worker_setup
        .as_deref()
        .filter(|setup| !setup.trim().is_empty());
    let end = loop {
        // Biased: a local worker's stdin ends both its files and the `StdinClosed` watch,
        // and the end of the files (`Finished`) must win over the parent's death.
        let next = tokio::select! {
            biased;
            next = transport.next_file() => next,
            () = stdin.wait() => {
                tracing::info!("worker {worker_id}: the parent has gone; stopping");
                Err(End::Stopped)
            }
            signal = signals.recv() => {
                tracing::info!("worker {worker_id}: {signal}; stopping");
                Err(End::Stopped)
            }
        };
        let first = match next {
            Ok(next) => next,
            Err(end) => break end,
        };
        let first = match setup.take() {
            Some(command) => match set_up(transport, assignment, command, first).await {
                Ok(first) => first,
                Err(end) => break end,
            },
            None => first,
        };
        let ran = batches.run(transport, &mut runners, first, stdin, &mut signals);
        if let Err(end) = ran.await {
            break end;
        }
    };
    end_worker(transport, assignment, runners, end).await
}

/// Runs `job.worker_setup` before the worker's first file, `first`, which it hands back
/// when the setup succeeds. When it fails, `first` fails with the setup's output, so that
/// the run fails and shows why, and the worker ends: its other files go to other workers.
async fn set_up<T: Transport>(
    transport: &mut T,
    assignment: &WorkerAssignment,
    command: &str,
    first: (String, T::Taken),
) -> Result<(String, T::Taken), End> {
    let worker_id = assignment.worker_id.unwrap_or_default();
    tracing::info!(command, "worker {worker_id}: running job.worker_setup");
    let started = std::time::Instant::now();
    let outcome = gorgon_exec::ShellCommand {
        command: command.to_owned(),
        ..command_base(assignment)
    }
    .run()
    .await;
    if outcome.success() {
        return Ok(first);
    }
    tracing::error!(status = %outcome.description, "worker {worker_id}: job.worker_setup failed");
    let (file, taken) = first;
    let run = FileRun {
        status: gorgon_protocol::FileStatus::Failed,
        exit: format!(
            "job.worker_setup failed on {} worker {worker_id} ({})",
            assignment.host, outcome.description
        ),
        output: outcome.output,
        seconds: started.elapsed().as_secs_f64(),
        tests: Vec::new(),
    };
    let result = file_result(&assignment.host, worker_id, file, run);
    transport.send(Message::FileFinished(result)).await?;
    transport.done(taken).await;
    Err(End::SetupFailed)
}

/// How a worker takes and runs its files, batch after batch.
struct Batches<'a> {
    assignment: &'a WorkerAssignment,
    worker_id: u32,
    batch_limit: Option<Duration>,
    /// The time per file of the last run (without the runner's start), which sizes the
    /// next batch.
    seconds_per_file: Option<f64>,
}

impl Batches<'_> {
    /// Runs `first` and, for a runner that takes batches, what else fits in one; sends
    /// their results, or hands them back when they did not run to a result here. `Err`
    /// says how the worker ends.
    async fn run<T: Transport>(
        &mut self,
        transport: &mut T,
        runners: &mut Runners,
        first: (String, T::Taken),
        stdin: &mut StdinClosed,
        signals: &mut StopSignals,
    ) -> Result<(), End> {
        let (assignment, worker_id) = (self.assignment, self.worker_id);
        let mut batch = vec![first];
        if let (Some(per_file), Some(limit), true) = (
            self.seconds_per_file,
            self.batch_limit,
            runners.takes_batches(&batch[0].0),
        ) {
            take_more(transport, &mut batch, per_file, limit).await;
        }
        let (files, taken): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
        let ran = run_by_runner(
            transport, assignment, worker_id, runners, files, stdin, signals,
        );
        let ran = ran.await;
        if let Some(failure) = runners.take_callback_failure() {
            // The runner's `before_start` raised: this worker cannot run its files.
            report_runner_callback(transport, assignment, failure).await;
            for taken in taken {
                transport.hand_back(taken).await;
            }
            return Err(End::Stopped);
        }
        let sent = match ran {
            Ok(results) => {
                let seconds: f64 = results.iter().map(|r| r.seconds).sum();
                self.seconds_per_file = Some(seconds / results.len() as f64);
                let finished = results.into_iter().map(Message::FileFinished).collect();
                transport.send_all(finished).await
            }
            Err(end) => Err(end),
        };
        match sent {
            Ok(()) => {
                for taken in taken {
                    transport.done(taken).await;
                }
                Ok(())
            }
            Err(end) => {
                // The results did not reach the originator: the files must run elsewhere.
                for taken in taken {
                    transport.hand_back(taken).await;
                }
                Err(end)
            }
        }
    }
}

/// Stops the worker's runners and, unless it was stopped, runs `after_complete`; the
/// worker's exit code.
async fn end_worker(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    runners: Runners,
    end: End,
) -> i32 {
    let worker_id = assignment.worker_id.unwrap_or_default();
    let runner_failures = if end == End::StoppedMidFile {
        // Its file was stopped with a grace already: what is left of the runners is killed.
        drop(runners);
        Vec::new()
    } else {
        runners.stop().await
    };
    tracing::info!("worker {worker_id} done: {end:?}");
    match end {
        End::Stopped | End::StoppedMidFile | End::SetupFailed => 0,
        End::Finished | End::OriginatorGone => {
            // The callbacks class's `after_complete` ran in the Ruby runners as they ended.
            for failure in runner_failures {
                report_runner_callback(transport, assignment, failure).await;
            }
            let after_complete = host_command(&assignment.definition, CallbackName::AfterComplete);
            run_worker_callback(
                transport,
                assignment,
                CallbackName::AfterComplete,
                after_complete.as_deref(),
            )
            .await;
            0
        }
    }
}

/// Reports a method of the callbacks class that raised inside a runner.
async fn report_runner_callback(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    failure: RunnerCallbackFailure,
) {
    tracing::error!(
        "the {} method of the callbacks class raised",
        failure.callback
    );
    let callback = serde_json::from_value(serde_json::Value::String(failure.callback.clone()))
        .unwrap_or(CallbackName::BeforeStart);
    let failure = gorgon_exec::CallbackFailure {
        callback,
        status: format!("the {} method raised in the runner", failure.callback),
        output: failure.message,
    };
    let message = crate::callback_failed(&assignment.host, assignment.worker_id, failure);
    let _ = transport.send_all(vec![message]).await;
}

/// Runs a callback, reporting its failure; true when it succeeded (or is not configured).
async fn run_worker_callback(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    callback: CallbackName,
    command: Option<&str>,
) -> bool {
    match run_callback(callback, command, &command_base(assignment)).await {
        Ok(_) => true,
        Err(failure) => {
            tracing::error!(%failure);
            let message = crate::callback_failed(&assignment.host, assignment.worker_id, failure);
            // Only the originator could act on a failure to tell it.
            let _ = transport.send(message).await;
            false
        }
    }
}

/// Adds waiting files to `batch` while the files are expected to fit in `limit`
/// (`job.runner.batch_seconds`) together ([`batch_size`]), from the time per file of this
/// worker's last run. Files slower than half the limit always run alone, and a worker never
/// holds more than about that much work that an idle worker could have taken instead. A file
/// already in the batch (queued twice) goes back for later.
async fn take_more<T: Transport>(
    transport: &mut T,
    batch: &mut Vec<(String, T::Taken)>,
    seconds_per_file: f64,
    limit: Duration,
) {
    while batch.len() < batch_size(seconds_per_file, limit) {
        let Some((file, taken)) = transport.try_next_file().await else {
            return;
        };
        if batch.iter().any(|(held, _)| *held == file) {
            transport.hand_back(taken).await;
            return;
        }
        batch.push((file, taken));
    }
}

/// Runs a batch of files with their runners: each run of consecutive files of one runner
/// together; one result per file, in order, or how the worker must end without them. A file
/// no runner is for, or whose runner cannot start, gets a refusal as its result.
async fn run_by_runner(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    worker_id: u32,
    runners: &mut Runners,
    files: Vec<String>,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
) -> Result<Vec<FileResult>, End> {
    // Consecutive files of one runner; a file no runner is for is a group of its own, with
    // the reason.
    let mut groups: Vec<(Option<usize>, Vec<String>, String)> = Vec::new();
    for file in files {
        let (index, problem) = match runners.index_for(&file) {
            Ok(index) => (Some(index), String::new()),
            Err(error) => (None, error.to_string()),
        };
        match groups.last_mut() {
            Some((Some(last), group, _)) if index == Some(*last) => group.push(file),
            _ => groups.push((index, vec![file], problem)),
        }
    }
    let mut results = Vec::new();
    for (index, group, problem) in groups {
        let runner = match index {
            Some(index) => runners
                .get(index)
                .map_err(|e| format!("its runner cannot start: {e}")),
            None => Err(problem),
        };
        match runner {
            Ok(runner) => {
                let ran = run_batch(
                    transport, assignment, worker_id, runner, group, stdin, signals,
                );
                results.extend(ran.await?);
            }
            Err(problem) => results.extend(group.into_iter().map(|file| {
                tracing::warn!(file, "refusing a file: {problem}");
                file_result(&assignment.host, worker_id, file, refused(problem.clone()))
            })),
        }
    }
    Ok(results)
}

/// The result message of `file`'s run on this worker.
fn file_result(host: &str, worker_id: u32, file: String, run: FileRun) -> FileResult {
    FileResult {
        host: host.to_owned(),
        worker_id,
        file,
        status: run.status,
        seconds: run.seconds,
        exit: run.exit,
        output: run.output,
        tests: run.tests,
    }
}

/// Runs a batch of files (often just one) and returns one result per file, in order, or
/// how the worker must end without them.
async fn run_batch(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    worker_id: u32,
    runner: &mut Runner,
    files: Vec<String>,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
) -> Result<Vec<FileResult>, End> {
    let host = assignment.host.clone();
    let result = |file: String, run: FileRun| file_result(&host, worker_id, file, run);
    let checked: Vec<(String, Result<(), PathOutsideWorkspace>)> = files
        .into_iter()
        .map(|file| {
            let check = check_path(&file);
            (file, check)
        })
        .collect();
    let runnable: Vec<String> = checked
        .iter()
        .filter(|(_, check)| check.is_ok())
        .map(|(file, _)| file.clone())
        .collect();
    let started = runnable
        .iter()
        .map(|file| Message::FileStarted {
            host: host.clone(),
            worker_id,
            file: file.clone(),
        })
        .collect();
    transport.send_all(started).await?;
    tracing::info!(files = ?runnable, "running");
    // Asked to stop mid-file, the worker asks what runs the files to end (SIGTERM) and
    // gives it `grace::TEST` to do so; dropping the run then kills what is left (the test's
    // process group, or the persistent runner when the worker drops it), so leaving early
    // never leaves a test running.
    let running = runner.running();
    // A file that runs alone and whose output the run wants live sends it as it comes (or
    // once it has run a while: a file that hangs shows its last lines).
    let (live_file, live_delay) = live_file(&assignment.definition.live_output, &runnable);
    let live_from = tokio::time::Instant::now() + live_delay;
    let (tap, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    if live_file.is_some() {
        runner.set_output_tap(Some(tap), live_delay);
    } else {
        drop(tap);
    }
    let mut live = LiveOutput::default();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let live_message = |file: &str, text: String| Message::FileOutput {
        host: host.clone(),
        worker_id,
        file: file.to_owned(),
        text,
    };
    let runs = {
        let run = runner.run_files(&runnable);
        tokio::pin!(run);
        loop {
            tokio::select! {
            runs = &mut run => break runs,
            Some(chunk) = chunks.recv() => live.push(&chunk),
            _ = flush.tick(), if live_file.is_some() => {
                if tokio::time::Instant::now() < live_from {
                    continue;
                }
                if let (Some(file), Some(text)) = (&live_file, live.take(false)) {
                    transport.send(live_message(file, text)).await?;
                }
            }
            () = stdin.wait() => {
                tracing::info!("the parent has gone; stopping the files");
                return Err(stop_files(run, &running).await);
            }
            signal = signals.recv() => {
                tracing::info!("{signal}; stopping the files");
                return Err(stop_files(run, &running).await);
            }
            }
        }
    };
    if let Some(file) = &live_file {
        runner.set_output_tap(None, Duration::ZERO);
        // A file that ended before its delay sends nothing: its result has its output.
        if tokio::time::Instant::now() >= live_from {
            while let Ok(chunk) = chunks.try_recv() {
                live.push(&chunk);
            }
            if let Some(text) = live.take(true) {
                transport.send(live_message(file, text)).await?;
            }
        }
    }
    Ok(results_of(checked, runs, result))
}

/// The file of a batch whose output is sent as it comes, and after how long: only a file
/// that runs alone, and that the run wants live.
fn live_file(
    live_output: &gorgon_protocol::LiveOutput,
    runnable: &[String],
) -> (Option<String>, Duration) {
    match runnable {
        [file] => match live_output.delay_for(file) {
            Some(delay) => (Some(file.clone()), delay),
            None => (None, Duration::ZERO),
        },
        _ => (None, Duration::ZERO),
    }
}

/// One result per file of a batch, in order: a run's for a file that ran, a refusal for a
/// file whose path was refused.
fn results_of(
    checked: Vec<(String, Result<(), PathOutsideWorkspace>)>,
    runs: Vec<FileRun>,
    result: impl Fn(String, FileRun) -> FileResult,
) -> Vec<FileResult> {
    let mut runs = runs.into_iter();
    checked
        .into_iter()
        .map(|(file, check)| match check {
            Ok(()) => {
                let run = runs
                    .next()
                    .expect("the runner answers for every file it was given");
                tracing::info!(file, exit = %run.exit, seconds = run.seconds, "finished");
                result(file, run)
            }
            Err(problem) => {
                tracing::warn!(file, "refusing a file: {problem}");
                result(file, refused(problem.to_string()))
            }
        })
        .collect()
}

/// Ends the run of a worker that is stopping: SIGTERM to what runs the files, and up to
/// `grace::TEST` for the run to end by itself.
async fn stop_files<F: std::future::Future>(
    run: std::pin::Pin<&mut F>,
    running: &RunningGroups,
) -> End {
    if running.terminate() > 0 && tokio::time::timeout(grace::TEST, run).await.is_err() {
        tracing::warn!(
            "the test did not end within {:?} of SIGTERM; killing it",
            grace::TEST
        );
    }
    End::StoppedMidFile
}

/// A file the worker will not run because its path could reach outside the workspace.
#[derive(Debug, thiserror::Error)]
#[error("the path {file:?} escapes the workspace: test files must be relative paths without `..`")]
struct PathOutsideWorkspace {
    file: String,
}

/// Refuses a path that could reach outside the workspace: the originator is trusted to send
/// relative paths, but a worker must not run what a stray message names elsewhere.
fn check_path(file: &str) -> Result<(), PathOutsideWorkspace> {
    let path = Path::new(file);
    let escapes = file.is_empty()
        || path.is_absolute()
        || path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if escapes {
        return Err(PathOutsideWorkspace {
            file: file.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::runner_command;

    #[tokio::test]
    async fn a_hostile_name_reaches_the_command_intact() {
        let name = "t/$(touch pwned);'q' \"x\" `id`.sh";
        let command = runner_command("printf '%s' {file}", name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outcome = gorgon_exec::ShellCommand::new(command, dir.path())
            .run()
            .await;
        assert!(outcome.success());
        assert_eq!(outcome.output, name);
        assert!(!dir.path().join("pwned").exists());
    }

    #[test]
    fn paths_outside_the_workspace_are_refused() {
        for good in ["a.sh", "t/a.sh", "./t/a.sh", "t/..a.sh", "t/a..sh"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x.sh", "t/../../x.sh", "t/.."] {
            let problem = check_path(bad).unwrap_err();
            assert_eq!(problem.file, bad);
            assert!(
                problem.to_string().contains("escapes the workspace"),
                "{bad}: {problem}"
            );
        }
    }
}
