//! The worker manager (`gorgon __manage-workers`), one per job and host: it holds the host's
//! broker connection for the job, runs `before_creating_workers`, starts the job's worker
//! pool (`pool`: lines-only worker processes, one per slot), feeds it files from the job's
//! files queue as its workers become idle and publishes their replies (`feed`), reports the
//! workers that crash and hands back what they held, stops them all on a cancel, a signal or
//! the death of its listener, and runs `after_creating_workers` once they have all exited.

use std::time::Duration;

use gorgon_exec::run_callback;
use gorgon_protocol::{names, Broker, CallbackName, Message, WorkerAssignment};

use crate::feed::{Ended, Feeder};
use crate::pool::{Pool, Received, WorkerProgram};
use crate::{command_base, report, StdinClosed, StopSignals, EXIT_BROKEN};

pub use gorgon_protocol::names::WORKER_SUBCOMMAND;

/// How long a worker may take to stop after SIGTERM before it is killed.
const WORKER_GRACE: Duration = Duration::from_secs(2);

/// Runs the worker manager of `assignment` and returns its exit code: 0 whenever it did its
/// part (problems are reported to the originator), non-zero when it could not even reach
/// the broker, so that its listener reports it as crashed.
pub async fn manage_workers(assignment: WorkerAssignment, stdin: StdinClosed) -> i32 {
    let program = match WorkerProgram::gorgon() {
        Ok(program) => program,
        Err(error) => {
            tracing::error!(%error, "cannot find the gorgon executable to start workers");
            return EXIT_BROKEN;
        }
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

    let mut feeder = match Feeder::open(broker, assignment).await {
        Ok(feeder) => feeder,
        Err(Ended::Finished) => {
            tracing::info!("every file already has a result; starting no workers");
            return after_workers(broker, assignment).await;
        }
        Err(_) => return EXIT_BROKEN,
    };
    let (mut pool, mut events) = Pool::new(program.clone(), assignment.clone());
    for worker_id in 1..=assignment.slots {
        if let Err(error) = pool.spawn(worker_id).await {
            tracing::error!(%error, "cannot start worker {worker_id}");
            let message = Message::WorkerCrashed {
                host: assignment.host.clone(),
                worker_id,
                status: format!("could not start: {error}"),
                output: String::new(),
            };
            let _ = feeder.send(message).await;
        }
    }
    tracing::info!("workers started");

    // Asked to stop (a cancel, a signal, the listener's death): no `after_creating_workers`.
    let mut cancelled = false;
    // The workers were told how the job ended here (no more files, or stop).
    let mut told = false;
    let mut inbox_open = true;
    while pool.any_worker() {
        if !cancelled && feeder.ended().is_none() {
            for (worker_id, count) in pool.wants() {
                if !feeder.has_waiting() {
                    break;
                }
                let files = feeder.take(count).await;
                let refused = pool.give(worker_id, files).await;
                feeder.refused(refused);
            }
        }
        match feeder.ended() {
            Some(Ended::Finished) if !told => {
                // Every file has a result: each worker runs `after_complete` and exits.
                pool.close_all();
                told = true;
            }
            Some(ended) if !told => {
                tracing::info!("stopping the workers: {ended:?}");
                pool.stop_all(WORKER_GRACE);
                told = true;
            }
            _ => {}
        }
        let reason = tokio::select! {
            Some(event) = events.recv() => {
                let restart = !cancelled && feeder.ended().is_none();
                match pool.receive(event, restart) {
                    Received::Reply { message, .. } => {
                        let _ = feeder.send(message).await;
                    }
                    Received::Exited { unfinished, crash, .. } => {
                        // The crash first, so that the originator counts it before the
                        // files come back to anyone.
                        if let Some(crash) = crash {
                            let _ = feeder.send(crash).await;
                        }
                        feeder.hand_back(unfinished).await;
                    }
                    Received::Nothing => {}
                }
                pool.restart_crashed().await;
                continue;
            }
            incoming = feeder.next_delivery(), if feeder.ended().is_none() && !cancelled => {
                // None: the feed ended, which the top of the loop acts on.
                if let Some(incoming) = incoming {
                    feeder.admit(incoming).await;
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
            () = stdin.wait(), if !cancelled => "the listener has gone".to_owned(),
            signal = signals.recv() => {
                if cancelled {
                    // A second request: no more grace.
                    tracing::warn!("{signal} again; killing the workers");
                    pool.stop_all(Duration::ZERO);
                    continue;
                }
                format!("{signal} received")
            }
        };
        if !cancelled {
            tracing::info!("stopping the workers: {reason}");
            cancelled = true;
            told = true;
            pool.stop_all(WORKER_GRACE);
        }
    }
    feeder.hand_back_all().await;
    if cancelled {
        return 0;
    }
    after_workers(broker, assignment).await
}

/// Runs `after_creating_workers` (reporting its failure); the manager's exit code.
async fn after_workers(broker: &Broker, assignment: &WorkerAssignment) -> i32 {
    let after = assignment
        .definition
        .callbacks
        .after_creating_workers
        .as_deref();
    let base = command_base(assignment);
    if let Err(failure) = run_callback(CallbackName::AfterCreatingWorkers, after, &base).await {
        tracing::error!(%failure);
        report(broker, assignment, callback_failed(assignment, failure)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::broker::QueueLife;
    use gorgon_protocol::{BrokerSettings, Callbacks, Envelope, Inbox, JobDefinition};
    use uuid::Uuid;

    const WAIT: Duration = Duration::from_secs(20);

    /// This test as the originator: a reply queue, an empty files queue and the job's
    /// control exchange.
    struct Originator {
        broker: Broker,
        job: Uuid,
        replies: Inbox,
    }

    impl Originator {
        async fn start() -> Originator {
            let broker = Broker::connect(&BrokerSettings::for_tests(), "gorgon-manager test")
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
            let files = QueueLife::Shared {
                unused_expiry: Duration::from_secs(60),
            };
            broker
                .declare_queue(&names::files_queue(job), files)
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
                broker: BrokerSettings::for_tests(),
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
            let _ = self
                .broker
                .delete_queue(&names::files_queue(self.job))
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
