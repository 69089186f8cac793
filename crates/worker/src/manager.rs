//! The worker manager (`gorgon __manage-workers`): runs `before_creating_workers`, starts one
//! worker process per slot, reports the ones that crash, stops them all on a cancel, a signal
//! or the death of its listener, and runs `after_creating_workers` once they have all exited.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use gorgon_exec::procs::{kill_worker_leftovers, worker_command};
use gorgon_exec::{describe_status, run_callback, terminate_group};
use gorgon_protocol::{names, Broker, CallbackName, Message, WorkerAssignment};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use crate::{command_base, report, StdinClosed, StopSignals, EXIT_BROKEN};
use gorgon_exec::tail::{relay, LineTail};

pub use gorgon_protocol::names::WORKER_SUBCOMMAND;

/// How many times one worker slot is restarted after crashes; past that the slot stays
/// empty, so that a worker that cannot run at all does not loop.
const MAX_RESTARTS: u32 = 5;

/// How long a worker may take to stop after SIGTERM before it is killed.
const WORKER_GRACE: Duration = Duration::from_secs(2);

/// How a worker process is started: `gorgon __work` in production, a script in tests.
struct WorkerProgram {
    program: PathBuf,
    args: Vec<String>,
}

/// A worker process that has ended.
struct WorkerExit {
    worker_id: u32,
    status: std::io::Result<ExitStatus>,
    /// Its last output lines, for a crash report.
    output: String,
}

/// A running worker, as the event loop knows it.
struct LiveWorker {
    /// Process group (= pid) of the worker, for stopping it.
    group: Option<u32>,
    /// Kept open for the worker's whole life: the worker takes its end as the death of
    /// this manager.
    _stdin: Option<ChildStdin>,
    /// The task stopping the worker, once asked; aborted when the worker has exited, so that
    /// it never signals a process group whose id the system has since handed out again.
    stopper: Option<tokio::task::JoinHandle<()>>,
}

impl LiveWorker {
    fn stop(&mut self, grace: Duration) {
        if let Some(group) = self.group {
            if let Some(previous) = self
                .stopper
                .replace(tokio::spawn(terminate_group(group, grace)))
            {
                previous.abort();
            }
        }
    }
}

/// Runs the worker manager of `assignment` and returns its exit code: 0 whenever it did its
/// part (problems are reported to the originator), non-zero when it could not even reach
/// the broker, so that its listener reports it as crashed.
pub async fn manage_workers(assignment: WorkerAssignment, stdin: StdinClosed) -> i32 {
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => {
            tracing::error!(%error, "cannot find the gorgon executable to start workers");
            return EXIT_BROKEN;
        }
    };
    let program = WorkerProgram {
        program,
        args: vec![WORKER_SUBCOMMAND.to_owned()],
    };
    manage(assignment, stdin, &program).await
}

async fn manage(
    assignment: WorkerAssignment,
    mut stdin: StdinClosed,
    program: &WorkerProgram,
) -> i32 {
    let job = assignment.job_id;
    let name = format!("gorgon worker manager of {} job {job}", assignment.host);
    let broker = match Broker::connect(&assignment.broker, &name).await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::error!(%error, "the worker manager cannot start");
            return EXIT_BROKEN;
        }
    };
    let code = manage_connected(&broker, &assignment, &mut stdin, program).await;
    broker.close().await;
    code
}

async fn manage_connected(
    broker: &Broker,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
    program: &WorkerProgram,
) -> i32 {
    let mut signals = StopSignals::new();
    let control = async {
        let queue = broker.declare_private_queue().await?;
        broker
            .bind(&queue, &names::control_exchange(assignment.job_id))
            .await?;
        broker.consume(&queue, None).await
    };
    let mut inbox = match control.await {
        Ok(inbox) => inbox,
        // The originator deletes the control exchange when the job ends.
        Err(error) if error.is_not_found() => {
            tracing::info!("the job is already over; starting no workers");
            return 0;
        }
        Err(error) => {
            tracing::error!(%error, "the worker manager cannot listen for a cancel");
            return EXIT_BROKEN;
        }
    };
    let callbacks = &assignment.definition.callbacks;
    let base = command_base(assignment);
    let before = callbacks.before_creating_workers.as_deref();
    if let Err(failure) = run_callback(CallbackName::BeforeCreatingWorkers, before, &base).await {
        tracing::error!(%failure);
        report(broker, assignment, callback_failed(assignment, failure)).await;
        return 0;
    }

    let (exits, mut exited) = mpsc::unbounded_channel();
    let mut live: HashMap<u32, LiveWorker> = HashMap::new();
    for worker_id in 1..=assignment.slots {
        match spawn_worker(program, assignment, worker_id, exits.clone()).await {
            Ok(worker) => {
                live.insert(worker_id, worker);
            }
            Err(error) => {
                tracing::error!(%error, "cannot start worker {worker_id}");
                let message = Message::WorkerCrashed {
                    host: assignment.host.clone(),
                    worker_id,
                    status: format!("could not start: {error}"),
                    output: String::new(),
                };
                report(broker, assignment, message).await;
            }
        }
    }
    tracing::info!("{} workers started", live.len());

    let mut stopping = false;
    let mut inbox_open = true;
    let mut restarts: HashMap<u32, u32> = HashMap::new();
    while !live.is_empty() {
        let reason = tokio::select! {
            Some(exit) = exited.recv() => {
                let worker_id = exit.worker_id;
                if let Some(stopper) = live.remove(&worker_id).and_then(|w| w.stopper) {
                    stopper.abort();
                }
                let crashed = on_exit(broker, assignment, exit, stopping).await;
                if crashed {
                    let job = assignment.job_id.to_string();
                    kill_worker_leftovers(&job, &assignment.host, worker_id);
                    // Keep the slot full: the file the worker held is back in the queue.
                    let count = restarts.entry(worker_id).or_default();
                    if *count < MAX_RESTARTS {
                        *count += 1;
                        tracing::info!("restarting worker {worker_id} ({count} of {MAX_RESTARTS})");
                        match spawn_worker(program, assignment, worker_id, exits.clone()).await {
                            Ok(worker) => {
                                live.insert(worker_id, worker);
                            }
                            Err(error) => tracing::error!(%error, "cannot restart worker {worker_id}"),
                        }
                    } else {
                        tracing::error!("worker {worker_id} crashed {MAX_RESTARTS} times; not restarting it");
                    }
                }
                continue;
            }
            incoming = inbox.next(), if inbox_open => match incoming {
                Some(incoming) => match incoming.envelope.as_ref().map(|e| &e.message) {
                    Ok(Message::Cancel { reason }) => {
                        let reason = format!("the job was cancelled ({reason})");
                        if let Err(error) = incoming.ack().await {
                            tracing::warn!(%error, "cannot acknowledge the cancel");
                        }
                        reason
                    }
                    other => {
                        match other {
                            Ok(body) => tracing::warn!(?body, "dropping an unexpected control message"),
                            Err(error) => tracing::warn!(%error, "dropping an unreadable control message"),
                        }
                        if let Err(error) = incoming.discard().await {
                            tracing::warn!(%error, "cannot drop a control message");
                        }
                        continue;
                    }
                },
                None => {
                    // Without the control queue a cancel cannot arrive, but the workers
                    // still end by themselves when the files run out.
                    tracing::warn!("the control queue has closed; cancels will not be seen");
                    inbox_open = false;
                    continue;
                }
            },
            () = stdin.wait(), if !stopping => "the listener has gone".to_owned(),
            signal = signals.recv() => {
                if stopping {
                    // A second request: no more grace.
                    tracing::warn!("{signal} again; killing the workers");
                    for worker in live.values_mut() {
                        worker.stop(Duration::ZERO);
                    }
                    continue;
                }
                format!("{signal} received")
            }
        };
        if !stopping {
            tracing::info!("stopping the workers: {reason}");
            stopping = true;
            // Each worker is stopped in a task of its own so that this loop keeps reaping
            // the ones that have already gone.
            for worker in live.values_mut() {
                worker.stop(WORKER_GRACE);
            }
        }
    }

    if !stopping {
        let after = callbacks.after_creating_workers.as_deref();
        if let Err(failure) = run_callback(CallbackName::AfterCreatingWorkers, after, &base).await {
            tracing::error!(%failure);
            report(broker, assignment, callback_failed(assignment, failure)).await;
        }
    }
    0
}

fn callback_failed(
    assignment: &WorkerAssignment,
    failure: gorgon_exec::CallbackFailure,
) -> Message {
    Message::CallbackFailed {
        host: assignment.host.clone(),
        worker_id: None,
        callback: failure.callback,
        status: failure.status,
        output: failure.output,
    }
}

/// Logs a worker's exit and reports it when it was not asked to stop and did not end well;
/// returns true for such a crash.
async fn on_exit(
    broker: &Broker,
    assignment: &WorkerAssignment,
    exit: WorkerExit,
    stopping: bool,
) -> bool {
    let worker_id = exit.worker_id;
    let status = match exit.status {
        Ok(status) if status.success() => {
            tracing::info!("worker {worker_id} finished");
            return false;
        }
        Ok(status) => describe_status(status),
        Err(error) => format!("could not wait for it: {error}"),
    };
    if stopping {
        tracing::info!("worker {worker_id} stopped ({status})");
        return false;
    }
    tracing::error!("worker {worker_id} crashed ({status})");
    let message = Message::WorkerCrashed {
        host: assignment.host.clone(),
        worker_id,
        status,
        output: exit.output,
    };
    report(broker, assignment, message).await;
    true
}

/// Starts one worker in its own process group, hands it its assignment, relays its output
/// to this process's stderr and reports its exit on `exits`.
async fn spawn_worker(
    program: &WorkerProgram,
    assignment: &WorkerAssignment,
    worker_id: u32,
    exits: mpsc::UnboundedSender<WorkerExit>,
) -> std::io::Result<LiveWorker> {
    let line = assignment.encode_line(Some(worker_id));
    let job = assignment.job_id.to_string();
    let args: Vec<&str> = program.args.iter().map(String::as_str).collect();
    let mut child = worker_command(
        &program.program,
        &args,
        &assignment.workspace,
        (&job, &assignment.host, worker_id),
    )
    .spawn()?;
    let group = child.id();
    let tail = LineTail::default();
    let mut relays = Vec::new();
    for pipe in gorgon_exec::shell::take_output_pipes(&mut child) {
        relays.push(relay(pipe, tail.clone(), move |line| {
            // One write per line keeps lines of different workers from interleaving.
            let _ = writeln!(std::io::stderr().lock(), "[worker {worker_id}] {line}");
        }));
    }
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut() {
        if let Err(error) = pipe.write_all(&line).await {
            // The worker has already exited; its status and output tell why.
            tracing::warn!(%error, "cannot hand worker {worker_id} its assignment");
        }
        let _ = pipe.flush().await;
    }
    tokio::spawn(async move {
        let status = child.wait().await;
        // Its pipes close as it exits; the bound only guards against a stray holder.
        for relay in relays {
            let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
        }
        let _ = exits.send(WorkerExit {
            worker_id,
            status,
            output: tail.text(),
        });
    });
    Ok(LiveWorker {
        group,
        _stdin: stdin,
        stopper: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::broker::QueueLife;
    use gorgon_protocol::{BrokerSettings, Callbacks, Envelope, Inbox, JobDefinition};
    use uuid::Uuid;

    const WAIT: Duration = Duration::from_secs(20);

    /// This test as the originator: a reply queue and the job's control exchange.
    struct Originator {
        broker: Broker,
        job: Uuid,
        replies: Inbox,
    }

    impl Originator {
        async fn start() -> Originator {
            let broker = Broker::connect(&BrokerSettings::default(), "gorgon-manager test")
                .await
                .expect("RabbitMQ runs on 127.0.0.1:5672");
            let job = Uuid::new_v4();
            broker
                .declare_queue(&names::reply_queue(job), QueueLife::Exclusive)
                .await
                .unwrap();
            broker
                .declare_fanout(&names::control_exchange(job))
                .await
                .unwrap();
            let replies = broker
                .consume(&names::reply_queue(job), None)
                .await
                .unwrap();
            Originator {
                broker,
                job,
                replies,
            }
        }

        fn assignment(
            &self,
            workspace: &std::path::Path,
            callbacks: Callbacks,
        ) -> WorkerAssignment {
            WorkerAssignment {
                job_id: self.job,
                definition: JobDefinition::with_command("unused/", "true", callbacks),
                reply_to: names::reply_queue(self.job),
                broker: BrokerSettings::default(),
                host: "h1".into(),
                workspace: workspace.to_owned(),
                slots: 2,
                worker_id: None,
            }
        }

        async fn next_reply(&mut self) -> Message {
            let incoming = tokio::time::timeout(WAIT, self.replies.next())
                .await
                .expect("a reply in time")
                .expect("the reply queue is open");
            incoming.ack().await.unwrap();
            incoming.envelope.unwrap().message
        }

        async fn cleanup(self) {
            let _ = self
                .broker
                .delete_exchange(&names::control_exchange(self.job))
                .await;
            self.broker.close().await;
        }
    }

    fn script(text: &str) -> WorkerProgram {
        WorkerProgram {
            program: "sh".into(),
            args: vec!["-c".into(), text.into()],
        }
    }

    #[tokio::test]
    async fn crashed_workers_are_reported_with_their_output() {
        let workspace = tempfile::tempdir().unwrap();
        let mut originator = Originator::start().await;
        let callbacks = Callbacks {
            before_creating_workers: Some("touch before".into()),
            after_creating_workers: Some("touch after".into()),
            ..Callbacks::default()
        };
        let assignment = originator.assignment(workspace.path(), callbacks);
        // Worker 1 reads its assignment and succeeds; worker 2 says why it dies and dies.
        let program = script(
            r#"read line; case "$line" in *'"worker_id":1'*) exit 0;; esac
               echo "worker $GORGON_WORKER_ID is broken" >&2; exit 3"#,
        );
        let code = tokio::time::timeout(WAIT, manage(assignment, StdinClosed::never(), &program))
            .await
            .expect("the manager ends with its workers");
        assert_eq!(code, 0);
        match originator.next_reply().await {
            Message::WorkerCrashed {
                host,
                worker_id,
                status,
                output,
            } => {
                assert_eq!(host, "h1");
                assert_eq!(worker_id, 2);
                assert_eq!(status, "exit status 3");
                assert_eq!(output, "worker 2 is broken\n");
            }
            other => panic!("unexpected reply {other:?}"),
        }
        assert!(workspace.path().join("before").exists());
        assert!(workspace.path().join("after").exists());
        originator.cleanup().await;
    }

    #[tokio::test]
    async fn a_cancel_stops_every_worker_without_crash_reports() {
        let workspace = tempfile::tempdir().unwrap();
        let mut originator = Originator::start().await;
        let callbacks = Callbacks {
            after_creating_workers: Some("touch after".into()),
            ..Callbacks::default()
        };
        let assignment = originator.assignment(workspace.path(), callbacks);
        let program = script("read line; echo $$ > pid.$GORGON_WORKER_ID; exec sleep 30");
        let manager =
            tokio::spawn(async move { manage(assignment, StdinClosed::never(), &program).await });
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(workspace.path().join("pid.1").exists() && workspace.path().join("pid.2").exists())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the workers never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The manager bound its control queue before starting workers, so the cancel routes.
        let control = names::control_exchange(originator.job);
        let cancel = Envelope::new(
            originator.job,
            Message::Cancel {
                reason: "Ctrl-C".into(),
            },
        );
        originator.broker.publish(&control, &cancel).await.unwrap();
        let code = tokio::time::timeout(WAIT, manager)
            .await
            .expect("the manager stops")
            .unwrap();
        assert_eq!(code, 0);
        assert!(!workspace.path().join("after").exists());
        // Workers that had started are gone (reaped, not left running).
        for worker in 1..=2 {
            let pid = std::fs::read_to_string(workspace.path().join(format!("pid.{worker}")));
            let pid: i32 = pid.unwrap().trim().parse().unwrap();
            assert!(
                std::fs::metadata(format!("/proc/{pid}")).is_err(),
                "worker {worker} ({pid}) survived"
            );
        }
        // No crash was reported: the next reply, if any, would have arrived by now; prove it
        // with a message of our own behind them.
        let marker = Envelope::new(
            originator.job,
            Message::JobDone {
                host: "marker".into(),
            },
        );
        originator
            .broker
            .send_to_queue(&names::reply_queue(originator.job), &marker)
            .await
            .unwrap();
        assert_eq!(
            originator.next_reply().await,
            Message::JobDone {
                host: "marker".into()
            }
        );
        originator.cleanup().await;
    }

    #[tokio::test]
    async fn the_end_of_stdin_stops_the_workers() {
        let workspace = tempfile::tempdir().unwrap();
        let originator = Originator::start().await;
        let assignment = originator.assignment(workspace.path(), Callbacks::default());
        let program = script("read line; touch ready.$GORGON_WORKER_ID; exec sleep 30");
        let (close_stdin, stdin) = StdinClosed::manual();
        let manager = tokio::spawn(async move { manage(assignment, stdin, &program).await });
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(workspace.path().join("ready.1").exists()
            && workspace.path().join("ready.2").exists())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the workers never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        close_stdin.send(true).unwrap();
        let code = tokio::time::timeout(WAIT, manager)
            .await
            .expect("the manager stops")
            .unwrap();
        assert_eq!(code, 0);
        originator.cleanup().await;
    }

    #[tokio::test]
    async fn a_job_that_is_over_starts_no_workers() {
        let workspace = tempfile::tempdir().unwrap();
        let originator = Originator::start().await;
        originator
            .broker
            .delete_exchange(&names::control_exchange(originator.job))
            .await
            .unwrap();
        let callbacks = Callbacks {
            before_creating_workers: Some("touch before".into()),
            ..Callbacks::default()
        };
        let assignment = originator.assignment(workspace.path(), callbacks);
        let code = manage(assignment, StdinClosed::never(), &script("touch worker")).await;
        assert_eq!(code, 0);
        assert!(!workspace.path().join("before").exists());
        assert!(!workspace.path().join("worker").exists());
        originator.cleanup().await;
    }
}
