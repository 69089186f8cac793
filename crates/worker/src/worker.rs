//! A worker (`gorgon __work`): takes test files one at a time from its [`Transport`], runs
//! each with the job's runner (see `runner`) and reports the result. A file is settled only
//! once its result has reached the originator, so a file whose worker dies runs again.

use std::path::{Component, Path};

use gorgon_exec::run_callback;
use gorgon_protocol::{CallbackName, FileResult, FileStatus, Message, WorkerAssignment};

use crate::runner::Runner;
use crate::{command_base, StdinClosed, StopSignals, EXIT_BROKEN};

/// How the file loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// No more files: every file has a result.
    Finished,
    /// The originator is gone: nobody wants results any more.
    OriginatorGone,
    /// The parent died or a signal asked to stop; the current file was handed back.
    Stopped,
    /// The transport failed under us.
    Broken,
}

/// Where a worker's files come from and where its messages go: the job's queues on
/// RabbitMQ (`queue`), or stdin and stdout under `gorgon start --local` (`local`).
pub(crate) trait Transport {
    /// A file taken, to settle once its result has gone out or it is handed back.
    type Taken;

    /// The next file to run (a path relative to the workspace), or how the loop ends.
    async fn next_file(&mut self) -> Result<(String, Self::Taken), End>;

    /// Sends one message to the originator; `Err` when the worker must stop.
    async fn send(&mut self, message: Message) -> Result<(), End>;

    /// The file's result has reached the originator.
    async fn done(&mut self, taken: Self::Taken);

    /// The file did not run to a result here: someone else must run it.
    async fn hand_back(&mut self, taken: Self::Taken);
}

/// Runs worker `assignment.worker_id` of the job with `transport` until the files run out,
/// the originator goes, stdin ends (the parent died) or a signal arrives, and returns the
/// exit code: 0 unless the worker could not do its part at all.
pub(crate) async fn work_with(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
) -> i32 {
    let Some(worker_id) = assignment.worker_id else {
        tracing::error!("the assignment names no worker id");
        return EXIT_BROKEN;
    };
    let mut signals = StopSignals::new();
    let callbacks = &assignment.definition.callbacks;
    let before_start = callbacks.before_start.as_deref();
    if !run_worker_callback(
        transport,
        assignment,
        CallbackName::BeforeStart,
        before_start,
    )
    .await
    {
        return 0;
    }
    let mut runner = match Runner::new(&assignment.definition.runner, command_base(assignment)) {
        Ok(runner) => runner,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot prepare its runner");
            return EXIT_BROKEN;
        }
    };
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
        let (file, taken) = match next {
            Ok(next) => next,
            Err(end) => break end,
        };
        let ran = run_one(
            transport,
            assignment,
            worker_id,
            &mut runner,
            file,
            stdin,
            &mut signals,
        );
        let sent = match ran.await {
            Ok(result) => transport.send(Message::FileFinished(result)).await,
            Err(end) => Err(end),
        };
        match sent {
            Ok(()) => transport.done(taken).await,
            Err(end) => {
                // The result did not reach the originator: the file must run elsewhere.
                transport.hand_back(taken).await;
                break end;
            }
        }
    };
    runner.stop().await;
    tracing::info!("worker {worker_id} done: {end:?}");
    match end {
        End::Stopped => 0,
        End::Broken => EXIT_BROKEN,
        End::Finished | End::OriginatorGone => {
            let after_complete = callbacks.after_complete.as_deref();
            run_worker_callback(
                transport,
                assignment,
                CallbackName::AfterComplete,
                after_complete,
            )
            .await;
            0
        }
    }
}

/// Runs a callback, reporting its failure; true when it succeeded (or is not configured).
async fn run_worker_callback(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    callback: CallbackName,
    command: Option<&str>,
) -> bool {
    match run_callback(callback, command, &command_base(assignment)).await {
        Ok(()) => true,
        Err(failure) => {
            tracing::error!(%failure);
            let message = Message::CallbackFailed {
                host: assignment.host.clone(),
                worker_id: assignment.worker_id,
                callback: failure.callback,
                status: failure.status,
                output: failure.output,
            };
            // Only the originator could act on a failure to tell it.
            let _ = transport.send(message).await;
            false
        }
    }
}

/// Runs one file and returns its result, or how the worker must end without one.
async fn run_one(
    transport: &mut impl Transport,
    assignment: &WorkerAssignment,
    worker_id: u32,
    runner: &mut Runner,
    file: String,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
) -> Result<FileResult, End> {
    let host = assignment.host.clone();
    if let Err(problem) = check_path(&file) {
        tracing::warn!(file, "refusing a file: {problem}");
        return Ok(FileResult {
            host,
            worker_id,
            file,
            status: FileStatus::Crashed,
            seconds: 0.0,
            exit: "refused".into(),
            output: problem,
            tests: Vec::new(),
        });
    }
    let started = Message::FileStarted {
        host: host.clone(),
        worker_id,
        file: file.clone(),
    };
    transport.send(started).await?;
    tracing::info!(file, "running");
    // Dropping the run future kills the test's process group (or leaves the runner to be
    // killed when the worker ends), so leaving this select early never leaves the test
    // running.
    let run = tokio::select! {
        run = runner.run_file(&file) => run,
        () = stdin.wait() => {
            tracing::info!(file, "the parent has gone; stopping the file");
            return Err(End::Stopped);
        }
        signal = signals.recv() => {
            tracing::info!(file, "{signal}; stopping the file");
            return Err(End::Stopped);
        }
    };
    tracing::info!(file, exit = %run.exit, seconds = run.seconds, "finished");
    Ok(FileResult {
        host,
        worker_id,
        status: run.status,
        file,
        seconds: run.seconds,
        exit: run.exit,
        output: run.output,
        tests: run.tests,
    })
}

/// Refuses a path that could reach outside the workspace: the originator is trusted to send
/// relative paths, but a worker must not run what a stray message names elsewhere.
fn check_path(file: &str) -> Result<(), String> {
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
        return Err(format!(
            "the path {file:?} escapes the workspace: test files must be relative paths without `..`"
        ));
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
            assert!(
                problem.contains("escapes the workspace"),
                "{bad}: {problem}"
            );
        }
    }
}
