//! A worker (`gorgon __work`): takes test files one at a time from the job's files queue,
//! runs each with the job's runner (see `runner`) and reports the result. A file is acknowledged only once
//! its result has reached the originator, so a file whose worker dies goes back to the queue.

use std::path::{Component, Path};

use gorgon_exec::run_callback;
use gorgon_protocol::{
    names, Broker, BrokerError, CallbackName, FileResult, FileStatus, Incoming, Message,
    WorkerAssignment,
};

use crate::runner::Runner;
use crate::{command_base, report, StdinClosed, StopSignals, EXIT_BROKEN};

/// How the file loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The files queue is gone: every file has a result.
    Finished,
    /// The originator's reply queue is gone: nobody wants results any more.
    OriginatorGone,
    /// The parent died or a signal asked to stop; the current file was requeued.
    Stopped,
    /// The broker failed under us.
    Broken,
}

/// What to do after one delivery.
enum Next {
    Continue,
    End(End),
}

/// Runs worker `assignment.worker_id` of the job until the files run out, the originator
/// goes, stdin ends (the manager died) or a signal arrives, and returns the exit code:
/// 0 unless the worker could not do its part at all.
pub async fn work(assignment: WorkerAssignment, mut stdin: StdinClosed) -> i32 {
    let Some(worker_id) = assignment.worker_id else {
        tracing::error!("the assignment names no worker id");
        return EXIT_BROKEN;
    };
    let job = assignment.job_id;
    let name = format!(
        "gorgon worker {} of {} job {job}",
        worker_id, assignment.host
    );
    let broker = match Broker::connect(&assignment.broker, &name).await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot start");
            return EXIT_BROKEN;
        }
    };
    let code = work_connected(&broker, &assignment, worker_id, &mut stdin).await;
    broker.close().await;
    code
}

async fn work_connected(
    broker: &Broker,
    assignment: &WorkerAssignment,
    worker_id: u32,
    stdin: &mut StdinClosed,
) -> i32 {
    let mut signals = StopSignals::new();
    let callbacks = &assignment.definition.callbacks;
    let before_start = callbacks.before_start.as_deref();
    if !run_worker_callback(broker, assignment, CallbackName::BeforeStart, before_start).await {
        return 0;
    }
    let runner = match Runner::new(&assignment.definition.runner, command_base(assignment)) {
        Ok(runner) => runner,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot prepare its runner");
            return EXIT_BROKEN;
        }
    };
    let answers = async {
        let queue = broker.declare_private_queue().await?;
        let inbox = broker.consume(&queue, None).await?;
        Ok::<_, BrokerError>(RetryChannel { queue, inbox })
    };
    let retries = match answers.await {
        Ok(retries) => retries,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot open its answers queue");
            return EXIT_BROKEN;
        }
    };
    let mut tools = FileTools { runner, retries };
    let queue = names::files_queue(assignment.job_id);
    let end = match broker.consume(&queue, Some(1)).await {
        Ok(mut inbox) => loop {
            let incoming = tokio::select! {
                incoming = inbox.next() => incoming,
                () = stdin.wait() => {
                    tracing::info!("worker {worker_id}: the worker manager has gone; stopping");
                    break End::Stopped;
                }
                signal = signals.recv() => {
                    tracing::info!("worker {worker_id}: {signal}; stopping");
                    break End::Stopped;
                }
            };
            let Some(incoming) = incoming else {
                // A consumer ends cleanly when the originator deletes the queue; an error
                // (the connection dropped) is not the end of the job.
                break if inbox.failed() {
                    End::Broken
                } else {
                    End::Finished
                };
            };
            let handled = handle(
                broker,
                assignment,
                worker_id,
                incoming,
                stdin,
                &mut signals,
                &mut tools,
            );
            match handled.await {
                Next::Continue => {}
                Next::End(end) => break end,
            }
        },
        // The originator deletes the files queue once every file has a result.
        Err(error) if error.is_not_found() => End::Finished,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot take files");
            End::Broken
        }
    };
    tools.runner.stop().await;
    tracing::info!("worker {worker_id} done: {end:?}");
    match end {
        End::Stopped => 0,
        End::Broken => EXIT_BROKEN,
        End::Finished | End::OriginatorGone => {
            let after_complete = callbacks.after_complete.as_deref();
            run_worker_callback(
                broker,
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
    broker: &Broker,
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
            report(broker, assignment, message).await;
            false
        }
    }
}

/// Handles one delivery from the files queue and settles it.
async fn handle(
    broker: &Broker,
    assignment: &WorkerAssignment,
    worker_id: u32,
    incoming: Incoming,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
    tools: &mut FileTools,
) -> Next {
    let FileTools { runner, retries } = tools;
    let file = match &incoming.envelope {
        Ok(envelope) if envelope.job_id != assignment.job_id => {
            tracing::warn!(job = %envelope.job_id, "dropping a file of another job");
            settle(incoming.discard().await);
            return Next::Continue;
        }
        Ok(envelope) => match &envelope.message {
            Message::File { file } => file.clone(),
            other => {
                tracing::warn!(body = ?other, "dropping a message that is not a file");
                settle(incoming.discard().await);
                return Next::Continue;
            }
        },
        Err(error) => {
            tracing::warn!(%error, "dropping an unreadable message");
            settle(incoming.discard().await);
            return Next::Continue;
        }
    };
    if incoming.redelivered && !retry_allowed(broker, assignment, retries, &file).await {
        tracing::info!(file, "the file already has a result; not running it again");
        settle(incoming.ack().await);
        return Next::Continue;
    }
    if !assignment.workspace.is_dir() {
        // The listener removed the workspace: this worker outlived its job on this host.
        tracing::warn!(file, "the workspace is gone; handing the file back");
        settle(incoming.requeue().await);
        return Next::End(End::Stopped);
    }
    let host = assignment.host.clone();
    let result = match check_path(&file) {
        Err(problem) => {
            tracing::warn!(file, "refusing a file: {problem}");
            FileResult {
                host,
                worker_id,
                file,
                status: FileStatus::Crashed,
                seconds: 0.0,
                exit: "refused".into(),
                output: problem,
                tests: Vec::new(),
            }
        }
        Ok(()) => {
            let started = Message::FileStarted {
                host: host.clone(),
                worker_id,
                file: file.clone(),
            };
            if let Some(end) = publish_failure(broker, assignment, started).await {
                settle(incoming.requeue().await);
                return Next::End(end);
            }
            tracing::info!(file, "running");
            // Dropping the run future kills the test's process group (or leaves the runner
            // to be killed when the worker ends), so leaving this select early never leaves
            // the test running.
            let run = tokio::select! {
                run = runner.run_file(&file) => run,
                () = stdin.wait() => {
                    tracing::info!(file, "the worker manager has gone; stopping the file");
                    settle(incoming.requeue().await);
                    return Next::End(End::Stopped);
                }
                signal = signals.recv() => {
                    tracing::info!(file, "{signal}; stopping the file");
                    settle(incoming.requeue().await);
                    return Next::End(End::Stopped);
                }
            };
            tracing::info!(file, exit = %run.exit, seconds = run.seconds, "finished");
            FileResult {
                host,
                worker_id,
                status: run.status,
                file,
                seconds: run.seconds,
                exit: run.exit,
                output: run.output,
                tests: run.tests,
            }
        }
    };
    if let Some(end) = publish_failure(broker, assignment, Message::FileFinished(result)).await {
        // The result did not reach the originator: the file stays queued for another try.
        settle(incoming.requeue().await);
        return Next::End(end);
    }
    settle(incoming.ack().await);
    Next::Continue
}

/// What a worker uses on every file: its runner, and its line to the originator for files
/// delivered again.
struct FileTools {
    runner: Runner,
    retries: RetryChannel,
}

/// Where a worker hears the originator's answers about files delivered again.
struct RetryChannel {
    queue: String,
    inbox: gorgon_protocol::Inbox,
}

/// How long a worker waits for the originator's answer before running the file anyway.
const RETRY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the originator whether a redelivered file still needs a run: after its worker died
/// `max_crash_retries` times the file is settled as crashed and must not kill more workers.
/// Without an answer the file runs: a duplicate result is dropped, a lost one is not.
async fn retry_allowed(
    broker: &Broker,
    assignment: &WorkerAssignment,
    retries: &mut RetryChannel,
    file: &str,
) -> bool {
    let ask = Message::RetryCheck {
        file: file.to_owned(),
        reply_to: retries.queue.clone(),
    };
    let envelope = gorgon_protocol::Envelope::new(assignment.job_id, ask);
    if broker
        .send_to_queue(&assignment.reply_to, &envelope)
        .await
        .is_err()
    {
        return true;
    }
    let answer = tokio::time::timeout(RETRY_ANSWER_WAIT, async {
        while let Some(incoming) = retries.inbox.next().await {
            let _ = incoming.ack().await;
            if let Ok(envelope) = &incoming.envelope {
                if let Message::RetryAnswer {
                    file: answered,
                    run,
                } = &envelope.message
                {
                    if answered == file && envelope.job_id == assignment.job_id {
                        return *run;
                    }
                }
            }
        }
        true
    })
    .await;
    answer.unwrap_or(true)
}

/// Publishes to the originator; `Some` when the worker must stop because of the failure.
async fn publish_failure(
    broker: &Broker,
    assignment: &WorkerAssignment,
    message: Message,
) -> Option<End> {
    let envelope = gorgon_protocol::Envelope::new(assignment.job_id, message);
    match broker.send_to_queue(&assignment.reply_to, &envelope).await {
        Ok(()) => None,
        Err(BrokerError::Unroutable(_)) => {
            tracing::info!("the originator has gone; stopping");
            Some(End::OriginatorGone)
        }
        Err(error) => {
            tracing::error!(%error, "cannot report to the originator");
            Some(End::Broken)
        }
    }
}

fn settle(result: Result<(), BrokerError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle a file message");
    }
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
