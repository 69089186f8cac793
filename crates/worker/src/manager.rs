//! The worker manager (`gorgon __manage-workers`), one per job and host: it holds the host's
//! broker connection for the job, runs `before_creating_workers`, starts the job's worker
//! pool (`pool`: lines-only worker processes, up to one per slot, each started when a file
//! arrives that no started worker is idle for, so that a host with one file starts one
//! worker), feeds it files from the job's files queue as its workers become idle and
//! publishes their replies (`feed`), reports the
//! workers that crash and hands back what they held, stops them all on a cancel, a signal or
//! the death of its listener, and runs `after_creating_workers` once they have all exited.
//! It is the child subreaper of the job's processes (`gorgon_exec::reaper`): what they leave
//! comes to it, and it kills all of it before it exits.

use std::time::Duration;

use gorgon_exec::reaper::Subreaper;
use gorgon_exec::signals::{StopSignal, StopSignals};
use gorgon_protocol::manager_report::SpareOpening;
use gorgon_protocol::{names, Broker, ConsumerChannel, ManagerReport, Message, WorkerAssignment};

use crate::feed::{files_channel, Ended, FeedEvent, Feeder, Together};
use crate::host_job::{sleep_until_some, Ending, Feed, FeedEnd, HostJob, Kill, Stage};
use crate::pool::{Received, WorkerProgram};
use crate::stdin::SpareAssignment;
use crate::{report, AssignmentError, StdinClosed, EXIT_BROKEN};

pub use gorgon_protocol::names::WORKER_SUBCOMMAND;

/// How often a worker manager checks that the job's originator still lives (its reply
/// queue has its consumer, [`OriginatorWatch`]): a dead originator's workers stop at the
/// first check after its patience has passed, plus their grace.
const ORIGINATOR_CHECK: Duration = Duration::from_secs(2);

/// Workers' events taken in at most in one turn of the loop, their replies sent together.
const DRAINED_AT_ONCE: usize = 128;

/// Whether the job's originator still lives, from its reply queue (durable, so that a
/// broker restart keeps it): gone, or without a consumer at every check for the
/// originator's own `connection.outage_limit` (which the job carries; at two checks in a
/// row for a job without it), the originator is taken for gone. A dead originator cannot
/// be told from a partitioned one, whose connection the broker drops after missed
/// heartbeats, and which may come back within its limit. After this manager's own
/// reconnection, the originator has this manager's `connection.outage_limit` to come back
/// too. A CI build's log (a stream that every node reads when it likes) tells by its
/// existence only.
struct OriginatorWatch {
    /// The replies go to an originator's own reply queue, which it alone consumes.
    consumed_by_originator: bool,
    /// How long the reply queue may be without a consumer.
    patience: Duration,
    /// Since when the checks have found no consumer.
    no_consumer_since: Option<tokio::time::Instant>,
    /// Until when a missing consumer is waited for (after an outage).
    patient_until: Option<tokio::time::Instant>,
}

impl OriginatorWatch {
    fn of(assignment: &WorkerAssignment) -> OriginatorWatch {
        let limit = assignment.definition.originator_outage_limit;
        OriginatorWatch {
            consumed_by_originator: assignment.reply_to == names::reply_queue(assignment.job_id),
            patience: Duration::from_secs(limit.unwrap_or(0)),
            no_consumer_since: None,
            patient_until: None,
        }
    }

    /// Why the originator is taken for gone, if it is.
    async fn gone(&mut self, broker: &Broker, reply_to: &str) -> Option<&'static str> {
        let counts = broker.queue_counts(reply_to).await;
        self.judge(
            counts.ok()?.map(|(_, consumers)| consumers),
            tokio::time::Instant::now(),
        )
    }

    /// What a check that found the reply queue with `consumers` (`None`: gone) at `now`
    /// says.
    fn judge(&mut self, consumers: Option<u32>, now: tokio::time::Instant) -> Option<&'static str> {
        match consumers {
            None => Some("the originator has gone (its reply queue is gone)"),
            Some(0) if self.consumed_by_originator => {
                let patient = self.patient_until.is_some_and(|until| now < until);
                let since = *self.no_consumer_since.get_or_insert(now);
                let gone = since < now && now - since >= self.patience && !patient;
                gone.then_some("the originator has gone (nobody reads its reply queue)")
            }
            Some(_) => {
                self.no_consumer_since = None;
                None
            }
        }
    }

    /// This manager got its connection back: the originator may still be getting its own.
    fn after_outage(&mut self, broker: &Broker) {
        self.patient_until = Some(tokio::time::Instant::now() + broker.outage_limit());
    }
}

/// Runs the worker manager of `assignment` and returns its exit code: 0 whenever it did its
/// part (problems are reported to the originator), non-zero when it could not even reach
/// the broker, so that its listener reports it as crashed.
pub async fn manage_workers(assignment: WorkerAssignment, stdin: StdinClosed) -> i32 {
    manage_workers_on(assignment, stdin, None).await
}

/// A spare worker manager (`__manage-workers --spare`): it connects to the broker of its
/// `opening` at once and waits for a job's assignment, then runs the job as
/// [`manage_workers`] does, on that connection when it still holds (else on a new one), in
/// the job's workspace. Before its assignment it has started nothing but its connection;
/// once stdin ends without one (its host stopped it, or died), it exits 0.
pub async fn manage_spare(
    opening: SpareOpening,
    assignment: SpareAssignment,
    stdin: StdinClosed,
) -> i32 {
    let name = format!("gorgon worker manager of {} (spare)", opening.host);
    let connecting = tokio::spawn(async move { Broker::connect(&opening.broker, &name).await });
    let assignment = match assignment.next().await {
        Ok(assignment) => assignment,
        Err(AssignmentError::Missing) => {
            connecting.abort();
            return 0;
        }
        Err(error) => {
            tracing::error!(%error, "the spare worker manager cannot start its job");
            return EXIT_BROKEN;
        }
    };
    if let Err(error) = std::env::set_current_dir(&assignment.workspace) {
        let workspace = assignment.workspace.display();
        tracing::error!(%error, "the worker manager cannot enter the workspace {workspace}");
        return EXIT_BROKEN;
    }
    let broker = match connecting.await {
        Ok(Ok(broker)) if broker.is_connected() => Some(broker),
        Ok(Ok(broker)) => {
            broker.close().await;
            None
        }
        // A broker that could not be reached before the job is tried again, as a manager
        // started with its job tries it.
        Ok(Err(_)) | Err(_) => None,
    };
    manage_workers_on(assignment, stdin, broker).await
}

/// [`manage_workers`] on `broker` when given (a spare's connection), else on a connection
/// of its own.
async fn manage_workers_on(
    assignment: WorkerAssignment,
    stdin: StdinClosed,
    broker: Option<Broker>,
) -> i32 {
    let program = match WorkerProgram::gorgon() {
        Ok(program) => program,
        Err(error) => {
            tracing::error!(%error, "cannot find the gorgon executable to start workers");
            return EXIT_BROKEN;
        }
    };
    // Every orphan of the job's processes comes to this manager, whatever it did to its
    // environment, session or group; whatever of the job is left at the end is killed.
    let subreaper = Subreaper::start()
        .map_err(|error| {
            tracing::warn!(%error, "the job's orphans are not contained by its manager");
        })
        .ok();
    let code = manage(assignment, stdin, &program, broker).await;
    if let Some(subreaper) = subreaper {
        subreaper.end().await;
    }
    code
}

async fn manage(
    assignment: WorkerAssignment,
    mut stdin: StdinClosed,
    program: &WorkerProgram,
    spare: Option<Broker>,
) -> i32 {
    // A cancel reaches the manager one way only: its listener hears it and sends SIGTERM.
    let mut signals = StopSignals::install();
    let opened = open_job(&assignment, &mut stdin, &mut signals, spare).await;
    let (broker, opened) = match opened {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let code = manage_connected(&broker, &assignment, &mut stdin, program, signals, opened).await;
    broker.close().await;
    code
}

/// The manager's connection and its [`opening`]: on a spare's connection when given, else
/// on a new one. A spare's connection that fails the opening (lost while it waited, as a
/// partition that the broker noticed and it did not leaves it) is replaced once by a new
/// one, so that a stale spare costs its job a reconnection, not its host.
async fn open_job(
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
    spare: Option<Broker>,
) -> Result<(Broker, (ConsumerChannel, Duration)), i32> {
    if let Some(broker) = spare {
        match open_on(broker, assignment, stdin, signals).await {
            Err(EXIT_BROKEN) => {
                tracing::warn!("the connection made before the job failed; connecting again");
            }
            opened => return opened,
        }
    }
    let job = assignment.job_id;
    let name = format!("gorgon worker manager of {} job {job}", assignment.host);
    let broker = match Broker::connect(&assignment.broker, &name).await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::error!(%error, "the worker manager cannot start");
            return Err(EXIT_BROKEN);
        }
    };
    open_on(broker, assignment, stdin, signals).await
}

/// The job's [`opening`] on `broker`, which is closed when the opening fails.
async fn open_on(
    broker: Broker,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
) -> Result<(Broker, (ConsumerChannel, Duration)), i32> {
    match opening(&broker, assignment, stdin, signals).await {
        Ok(opened) => Ok((broker, opened)),
        Err(code) => {
            broker.close().await;
            Err(code)
        }
    }
}

async fn manage_connected(
    broker: &Broker,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
    program: &WorkerProgram,
    mut signals: StopSignals,
    (channel, round_trip): (ConsumerChannel, Duration),
) -> i32 {
    let (mut job, failed) =
        HostJob::before_workers(program.clone(), assignment.clone(), Ending::Patient).await;
    if let Some(failure) = failed {
        tracing::error!(%failure);
        report(broker, assignment, job.callback_failed(failure)).await;
        return 0;
    }
    let mut feeder = match Feeder::open(broker, assignment, channel).await {
        Ok(feeder) => feeder,
        Err(Ended::Finished) => {
            tracing::info!("every file already has a result; starting no workers");
            return after_workers(broker, assignment, job, false).await;
        }
        Err(_) => return EXIT_BROKEN,
    };
    feeder.expect(round_trip);
    let mut feed = BrokerFeed {
        feeder,
        assignment,
        stdin,
        together: Together::default(),
        // Whether the originator still lives: its reply queue has its consumer.
        originator_check: tokio::time::interval(ORIGINATOR_CHECK),
        originator: OriginatorWatch::of(assignment),
        draining: false,
    };
    // Asked to stop (a cancel, a signal, the listener's death): no `after_creating_workers`.
    let cancelled = job.drive(&mut feed, &mut signals).await.is_some();
    let mut feeder = feed.feeder;
    feeder.hand_back_all().await;
    let sent = feeder.sent();
    tracing::info!(
        "sent {} replies in {} messages",
        sent.replies,
        sent.messages
    );
    // After an outage, the feeder's connection is a new one.
    let broker = feeder.broker().clone();
    let code = after_workers(&broker, assignment, job, cancelled).await;
    broker.close().await;
    code
}

/// What comes before the job's workers: the check that the job is not over, the channel
/// its files will come on and the host's start (the tree is ready). The check and the
/// channel take their round trips while the host still brings the tree; the check's two (a
/// channel, a passive declare) also tell how far the broker is, before any file ran
/// (`look_ahead`). The channel and that round trip; the manager's exit code when it starts
/// nothing.
async fn opening(
    broker: &Broker,
    assignment: &WorkerAssignment,
    stdin: &mut StdinClosed,
    signals: &mut StopSignals,
) -> Result<(ConsumerChannel, Duration), i32> {
    // The originator deletes the control exchange when the job ends.
    let control = names::control_exchange(assignment.job_id);
    let checking = tokio::time::Instant::now();
    let exists = async {
        let exists = broker.exchange_exists(&control).await;
        (exists, checking.elapsed() / 2)
    };
    let channel = files_channel(broker, assignment);
    let ((exists, round_trip), channel, started) =
        tokio::join!(exists, channel, started(stdin, signals));
    match exists {
        Ok(true) if started => {}
        Ok(true) => {
            tracing::info!("the host did not start the job here; starting no workers");
            return Err(0);
        }
        Ok(false) => {
            tracing::info!("the job is already over; starting no workers");
            return Err(0);
        }
        Err(error) => {
            tracing::error!(%error, "the worker manager cannot reach the job");
            return Err(EXIT_BROKEN);
        }
    }
    match channel {
        Ok(channel) => Ok((channel, round_trip)),
        Err(error) => {
            tracing::error!(%error, "the worker manager cannot take files");
            Err(EXIT_BROKEN)
        }
    }
}

/// Waits until the host says that the job's tree is ready (`START_REQUEST`): true then;
/// false when it stops the manager first (a signal, or the end of stdin), as it does when
/// the pull, the tree's check or `after_sync` failed.
async fn started(stdin: &mut StdinClosed, signals: &mut StopSignals) -> bool {
    let start = stdin.start_requested();
    tokio::select! {
        started = start => started,
        () = stdin.wait() => false,
        _ = signals.recv() => false,
    }
}

/// The broker's side of a worker manager's job: the files queue through the [`Feeder`],
/// which also publishes the replies, the listener's life (the manager's stdin) and the
/// originator's.
struct BrokerFeed<'a, 's> {
    feeder: Feeder<'a>,
    assignment: &'a WorkerAssignment,
    stdin: &'s mut StdinClosed,
    /// The replies that are ready now go as one message: a result and the start of the
    /// worker's next file, the results of workers that finished at once.
    together: Together,
    originator_check: tokio::time::Interval,
    originator: OriginatorWatch,
    /// The listener asked to drain: no more files are handed out.
    draining: bool,
}

/// What the broker's side has for the manager, besides the workers.
enum BrokerEvent {
    /// A delivery or a confirm.
    Queue(Box<FeedEvent>),
    /// The manager's stdin ended.
    ListenerGone,
    /// The listener asked the manager to drain.
    Drain,
    /// Time to try to get the connection back.
    Reconnect,
    /// Time to look whether the originator still lives.
    OriginatorCheck,
}

impl Feed for BrokerFeed<'_, '_> {
    type Stop = String;
    type Event = BrokerEvent;

    const DRAINED_AT_ONCE: usize = DRAINED_AT_ONCE;
    const LOGS: bool = true;

    async fn refill(&mut self, _signals: &mut StopSignals) -> Option<String> {
        None
    }

    fn ended(&self) -> Option<FeedEnd> {
        match self.feeder.ended()? {
            Ended::Finished => Some(FeedEnd::Finished),
            ended => Some(FeedEnd::Failed(format!("{ended:?}"))),
        }
    }

    fn waiting(&self) -> usize {
        self.feeder.waiting()
    }

    async fn take(&mut self, worker_id: u32, count: usize, others: bool) -> Vec<String> {
        self.feeder.take(worker_id, count, others).await
    }

    fn refused(&mut self, files: Vec<String>) {
        self.feeder.refused(files);
    }

    fn wants_restarts(&self) -> bool {
        self.feeder.ended().is_none()
    }

    async fn receive(&mut self, received: Received, _running: bool) -> Option<String> {
        match received {
            Received::Reply { message, bytes, .. } => {
                tell_host(&ManagerReport::of(&message));
                if let Some(full) = self.together.add(message, bytes) {
                    let _ = self.feeder.send_together(full).await;
                }
            }
            Received::Exited {
                worker_id,
                unfinished,
                crash,
            } => {
                tell_host(&[ManagerReport::WorkerExited { worker_id }]);
                // What came before it, then the crash, so that the originator counts it
                // before the files come back to anyone.
                let _ = self.feeder.send_together(self.together.take()).await;
                if let Some(crash) = crash {
                    let _ = self.feeder.send(crash).await;
                }
                self.feeder.hand_back(unfinished).await;
            }
            Received::Nothing => {}
        }
        None
    }

    async fn received(&mut self) {
        let _ = self.feeder.send_together(self.together.take()).await;
    }

    async fn report(&mut self, message: Message) {
        let _ = self.feeder.send(message).await;
    }

    async fn next_event(&mut self, stage: Stage) -> BrokerEvent {
        let cancelled = stage == Stage::Stopping;
        let reconnect_at = self.feeder.reconnect_at();
        let in_outage = self.feeder.in_outage();
        let drain = self.stdin.drain_requested();
        tokio::select! {
            event = self.feeder.next_event(!cancelled), if self.feeder.expecting(!cancelled) => {
                BrokerEvent::Queue(Box::new(event))
            }
            () = self.stdin.wait(), if !cancelled => BrokerEvent::ListenerGone,
            () = drain, if !self.draining => BrokerEvent::Drain,
            () = sleep_until_some(reconnect_at), if reconnect_at.is_some() => BrokerEvent::Reconnect,
            _ = self.originator_check.tick(), if !cancelled && !in_outage => {
                BrokerEvent::OriginatorCheck
            }
            else => std::future::pending().await,
        }
    }

    async fn handle(&mut self, event: BrokerEvent, _stage: Stage) -> Option<String> {
        match event {
            BrokerEvent::Queue(event) => {
                // The end of the feed, if it is one, is acted on at the top of the loop.
                self.feeder.handle(*event).await;
                None
            }
            BrokerEvent::ListenerGone => Some("the listener has gone".to_owned()),
            BrokerEvent::Drain => {
                tracing::info!("draining: the workers finish the files they hold and take no more");
                self.draining = true;
                None
            }
            BrokerEvent::Reconnect => {
                self.feeder.try_reconnect().await;
                if !self.feeder.in_outage() {
                    self.originator.after_outage(self.feeder.broker());
                }
                None
            }
            BrokerEvent::OriginatorCheck => {
                let broker = self.feeder.broker();
                let reply_to = &self.assignment.reply_to;
                let reason = self.originator.gone(broker, reply_to).await?;
                // Nobody will take the job's results: what is left of it goes too.
                let job = self.assignment.job_id;
                let _ = broker.delete_queue(&names::files_queue(job)).await;
                let _ = broker.delete_queue(reply_to).await;
                let _ = broker.delete_exchange(&names::control_exchange(job)).await;
                Some(reason.to_owned())
            }
        }
    }

    fn draining(&self) -> bool {
        self.draining
    }

    fn signalled(&self, signal: StopSignal) -> String {
        format!("{signal} received")
    }

    fn stopping(&mut self, reason: &String) {
        tracing::info!("stopping the workers: {reason}");
    }

    fn killing(&mut self, why: Kill) {
        if let Kill::Signal(signal) = why {
            // A second request: no more grace.
            tracing::warn!("{signal} again; killing the workers");
        }
    }
}

/// Runs `after_creating_workers` unless the job was cancelled (reporting its failure); the
/// manager's exit code.
async fn after_workers(
    broker: &Broker,
    assignment: &WorkerAssignment,
    job: HostJob,
    cancelled: bool,
) -> i32 {
    let failed = match job.after_workers(cancelled).await {
        Some(failure) => {
            tracing::error!(%failure);
            Some(crate::callback_failed(&assignment.host, None, failure))
        }
        None => None,
    };
    if let Some(failed) = failed {
        report(broker, assignment, failed).await;
    }
    0
}

/// Tells the host process that started this manager (a listener, for its metrics) of its
/// files' starts and ends, on stdout (`gorgon_worker::run_manager` reads them). A host that
/// no longer reads is not this manager's concern.
fn tell_host(reports: &[ManagerReport]) {
    use std::io::Write;
    if reports.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    for report in reports {
        let _ = writeln!(stdout, "{}", report.line());
    }
    let _ = stdout.flush();
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
                .declare_queue(&names::reply_queue(job), QueueLife::WhileConsumed)
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
                warm_runner: None,
                ruby_preload: None,
            }
        }

        /// Queues files `1`..=`count` for the job's workers.
        async fn queue_files(&self, count: u32) {
            for file in 1..=count {
                let envelope = Envelope::new(self.job, Message::file(file.to_string()));
                self.broker
                    .send_to_queue(&names::files_queue(self.job), &envelope)
                    .await
                    .unwrap();
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

    /// The originator's patience, checked every [`ORIGINATOR_CHECK`]: `(limit carried by
    /// the job, consumers seen at each check, the check that takes it for gone)`.
    #[test]
    fn a_reply_queue_without_a_consumer_is_waited_for_the_originator_s_outage_limit() {
        /// The limit the job carries, the consumers each check finds, the check that
        /// takes the originator for gone.
        type Case = (Option<u64>, &'static [Option<u32>], Option<usize>);
        let cases: [Case; 5] = [
            // An older originator: two checks in a row.
            (None, &[Some(0), Some(0)], Some(1)),
            (None, &[Some(0), Some(1), Some(0), Some(0)], Some(3)),
            // 5 s: the check 6 s after the first without a consumer.
            (Some(5), &[Some(0); 5], Some(3)),
            (
                Some(5),
                &[Some(0), Some(0), Some(1), Some(0), Some(0), Some(0)],
                None,
            ),
            // A queue that is gone says so at once.
            (Some(60), &[None], Some(0)),
        ];
        let start = tokio::time::Instant::now();
        for (limit, checks, expected) in cases {
            let mut watch = OriginatorWatch {
                consumed_by_originator: true,
                patience: Duration::from_secs(limit.unwrap_or(0)),
                no_consumer_since: None,
                patient_until: None,
            };
            let gone = checks.iter().enumerate().position(|(i, consumers)| {
                let now = start + ORIGINATOR_CHECK * i as u32;
                watch.judge(*consumers, now).is_some()
            });
            assert_eq!(gone, expected, "{limit:?} {checks:?}");
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
        // One file: one worker starts, says why it dies and dies.
        originator.queue_files(1).await;
        let program = script(r#"read line; echo "worker $GORGON_WORKER_ID is broken" >&2; exit 3"#);
        let manager =
            tokio::spawn(
                async move { manage(assignment, StdinClosed::never(), &program, None).await },
            );
        match originator.next_reply().await {
            Message::WorkerCrashed {
                host,
                worker_id,
                status,
                output,
            } => {
                assert_eq!(host, "h1");
                assert_eq!(worker_id, 1);
                assert_eq!(status, "exit status 3");
                assert_eq!(output, "worker 1 is broken\n");
            }
            other => panic!("unexpected reply {other:?}"),
        }
        // The originator settles the file (it deletes the files queue): the manager ends.
        originator
            .broker
            .delete_queue(&names::files_queue(originator.job))
            .await
            .unwrap();
        let code = tokio::time::timeout(WAIT, manager)
            .await
            .expect("the manager ends with its workers")
            .unwrap();
        assert_eq!(code, 0);
        assert!(workspace.path().join("before").exists());
        assert!(workspace.path().join("after").exists());
        originator.cleanup().await;
    }

    #[tokio::test]
    async fn the_end_of_stdin_stops_the_workers() {
        let workspace = tempfile::tempdir().unwrap();
        let originator = Originator::start().await;
        let assignment = originator.assignment(workspace.path(), Callbacks::default());
        originator.queue_files(2).await;
        let program = script("read line; touch ready.$GORGON_WORKER_ID; exec sleep 30");
        let (close_stdin, stdin) = StdinClosed::manual();
        let manager = tokio::spawn(async move { manage(assignment, stdin, &program, None).await });
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
        let code = manage(
            assignment,
            StdinClosed::never(),
            &script("touch worker"),
            None,
        )
        .await;
        assert_eq!(code, 0);
        assert!(!workspace.path().join("before").exists());
        assert!(!workspace.path().join("worker").exists());
        originator.cleanup().await;
    }
}
