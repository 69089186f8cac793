//! The distributed engine of `gorgon start`: pushes the tree to the file server, queues the
//! files on RabbitMQ, publishes the job, and follows the listeners' replies until every file
//! has a result or the run stops; then ends the job on every listener.

use std::time::{Duration, Instant};

use gorgon_exec::rsync;
use gorgon_exec::signals::{StopSignal, StopSignals};
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    names, Broker, BrokerError, Envelope, Inbox, Incoming, JobDefinition, Message, RetryOf,
    SyncSettings,
};
use uuid::Uuid;

use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::events::{EventSink, ProblemKind};
use crate::lost::{LostFiles, Requeue, LOST_FILE_WAIT};
use crate::retries::Retry;
use crate::run_core::{Advance, Core};
use crate::settings::FileServer;
use crate::state::{JobState, Problem};
use crate::view::counted;
use crate::view::Progress;

/// How long the originator waits, once every file has a result, for listeners to run their
/// closing callbacks and report that they are done.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled run waits for listeners to confirm that they stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// How often the originator checks that the listeners working on the job are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);
/// A files queue nobody consumes is removed by the broker after this, so that a crashed
/// originator leaves nothing behind for long.
const FILES_QUEUE_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// How often the originator looks for lost files (`crate::lost`).
const LOST_FILES_INTERVAL: Duration = Duration::from_secs(1);
/// After the originator got its broker connection back, how long listeners have to get
/// theirs back (their queues re-declared) before a missing queue means a dead listener.
const RESUME_GRACE: Duration = Duration::from_secs(15);

/// Runs the planned job on the cluster's listeners, feeding `state`; returns why it stopped
/// early, if it did.
pub(crate) async fn run(
    plan: &Plan,
    state: &mut JobState,
    events: &mut EventSink,
    signals: &mut StopSignals,
) -> Result<Option<Stop>, StartError> {
    let settings = &plan.settings;
    let file_server = settings.file_server()?;
    let broker =
        Broker::connect(&settings.broker, &format!("gorgon start {}", plan.project)).await?;
    // A Gorgon callbacks class's `before_originate` may name the cluster, as in Gorgon.
    let cluster_id = match plan.before_originate(signals).await {
        Ok(named) => named.unwrap_or_else(|| settings.cluster_id.clone()),
        Err(error) => {
            broker.close().await;
            return Err(error);
        }
    };
    let progress = plan.progress(state.total());
    let pushed = match push(plan, file_server, &progress, signals).await {
        Ok(pushed) => pushed,
        Err(error) => {
            progress.finish();
            broker.close().await;
            return Err(error);
        }
    };
    let mut core = Core::new(state, events, &progress, settings.max_crash_retries);
    if !settings.artifacts.is_off() {
        let limit = settings.artifacts.limit_bytes;
        core.keep_artifacts_in(settings.artifacts_folder.clone(), limit);
    }
    let mut run = Distributed::publish(plan, broker, core, cluster_id, pushed).await?;
    run.follow(signals).await;
    Ok(run.end(signals).await)
}

/// A tree on the file server: where it is, and the seal of its manifest, for the listeners.
struct Pushed {
    location: String,
    seal: gorgon_protocol::TreeSeal,
}

/// Lists the project's tree in its manifest and pushes both to the file server.
async fn push(
    plan: &Plan,
    file_server: &FileServer,
    progress: &Progress,
    signals: &mut StopSignals,
) -> Result<Pushed, StartError> {
    let settings = &plan.settings;
    let tree_dir = format!("{}_{}", sanitize(&plan.host), sanitize(&plan.project));
    let location = rsync::tree_location(
        &file_server.host,
        file_server.port,
        settings.transport,
        &tree_dir,
    );
    // The manifest lists what the push sends; rsync copies links as links, which a listener
    // would follow on its own host, so those that leave the project are refused.
    let (root, exclude) = (settings.project_root.clone(), settings.exclude.clone());
    let sealed = tokio::task::spawn_blocking(move || crate::tree::seal(&root, &exclude))
        .await
        .expect("the tree's scan does not panic")?;
    tracing::debug!(
        entries = sealed.seal.entries,
        hashed = sealed.hashed,
        "the tree's manifest"
    );
    progress.note(&format!("Pushing the source tree to {location}"));
    let login = file_server
        .originator_password
        .as_ref()
        .map(|password| rsync::Login {
            user: rsync::ORIGINATOR_USER,
            password: password.clone(),
        });
    let push = rsync::push(
        &settings.project_root,
        &sealed.manifest,
        &location,
        &settings.exclude,
        settings.transport,
        login.as_ref(),
    );
    tokio::select! {
        pushed = push => pushed.map_err(StartError::Push)?,
        signal = signals.recv() => {
            return Err(StartError::Stopped { signal, during: "pushing the source tree" });
        }
    };
    Ok(Pushed {
        location,
        seal: sealed.seal,
    })
}

/// What the event loop of a distributed run waits for.
enum Input {
    /// A stop signal (while ending: a second Ctrl-C).
    Signal(StopSignal),
    /// The periodic checks are due.
    Tick,
    /// A listener announced itself (`None`: the announcements ended).
    Announcement(Option<Incoming>),
    /// A reply (`None`: the connection to the broker was lost).
    Reply(Option<Incoming>),
    /// No reply is waiting: acknowledge those handled.
    AckDue,
    /// The listeners took too long to finish.
    Deadline,
}

/// A reply as the run reads it.
enum Reply<'m> {
    /// A worker asks whether a file delivered again still needs a run.
    RetryCheck { file: &'m str, reply_to: &'m str },
    /// A reply of this job.
    Ours(&'m Message),
    /// A reply of another job.
    Other(Uuid),
    /// A reply that cannot be read (or is not trusted).
    Unreadable(&'m gorgon_protocol::DecodeError),
}

impl<'m> Reply<'m> {
    fn of(incoming: &'m Incoming, job_id: Uuid) -> Reply<'m> {
        match &incoming.envelope {
            Ok(Envelope {
                job_id: id,
                message: Message::RetryCheck { file, reply_to },
                ..
            }) if *id == job_id => Reply::RetryCheck { file, reply_to },
            Ok(envelope) if envelope.job_id == job_id => Reply::Ours(&envelope.message),
            Ok(envelope) => Reply::Other(envelope.job_id),
            Err(error) => Reply::Unreadable(error),
        }
    }
}

/// A distributed run once its job is published: the broker, the job's queues, and the run
/// core that its replies feed.
struct Distributed<'a> {
    plan: &'a Plan,
    core: Core<'a>,
    broker: Broker,
    topology: Topology,
    replies: Inbox,
    announcements: Inbox,
    /// A lost connection ends the announcements too; the replies resume it.
    announcements_ended: bool,
    /// The job, as published and as sent to a listener that joins later.
    job_message: Message,
    cluster_id: String,
    listeners: ListenerWatch,
    /// Files that left the files queue without reaching a worker, and when to look next.
    lost: LostFiles,
    lost_next: Instant,
    listener_deadline: Instant,
    tick: tokio::time::Interval,
    /// The last reply handled but not acknowledged yet: the replies that come together are
    /// acknowledged together, once none is waiting (a run of thousands of quick files sends
    /// replies faster than one acknowledgement at a time can follow).
    unacked: Option<Incoming>,
    stop: Option<Stop>,
}

impl<'a> Distributed<'a> {
    /// Declares the job's queues, queues its files and publishes the job.
    async fn publish(
        plan: &'a Plan,
        broker: Broker,
        core: Core<'a>,
        cluster_id: String,
        pushed: Pushed,
    ) -> Result<Distributed<'a>, StartError> {
        let settings = &plan.settings;
        let definition = JobDefinition {
            project: plan.project.clone(),
            originator_host: plan.host.clone(),
            sync: SyncSettings {
                source: pushed.location,
                transport: settings.transport,
                exclude: settings.exclude.clone(),
                tree: Some(pushed.seal),
            },
            runner: settings.runner.clone(),
            callbacks: settings.callbacks.remote.clone(),
            live_output: plan.live_output(),
            first_is_1: settings.first_is_1,
            artifacts: settings.artifacts.clone(),
            worker_setup: settings.worker_setup.clone(),
            expected_file_seconds: crate::files::expected_file_seconds(
                core.state.queued(),
                &plan.history,
            ),
            record_impact: settings.impact.record,
            originator_outage_limit: Some(settings.broker.outage_limit),
        };
        let topology = Topology::new(plan.job_id, &cluster_id);
        let queued = file_messages(plan, core.state.queued().to_vec());
        let messages = queued.len();
        let (replies, announcements) = topology.declare(&broker, queued).await?;
        let job_message = Message::Job {
            definition: Box::new(definition),
            reply_to: topology.replies.clone(),
        };
        let job = Envelope::new(plan.job_id, job_message.clone());
        match broker.publish(&topology.jobs, &job).await {
            Ok(()) | Err(BrokerError::Unroutable(_)) => {}
            Err(error) => return Err(error.into()),
        }
        let queued = match core.state.phases().list().len() {
            0 if messages < core.state.total() => format!(
                "Queued {} in {}",
                counted(core.state.total(), "file"),
                counted(messages, "message")
            ),
            0 => format!("Queued {}", counted(core.state.total(), "file")),
            phases => format!("{phases} phases"),
        };
        core.progress.note(&format!(
            "{queued}; waiting for listeners of cluster '{cluster_id}'"
        ));
        Ok(Distributed {
            plan,
            core,
            broker,
            topology,
            replies,
            announcements,
            announcements_ended: false,
            job_message,
            cluster_id,
            listeners: ListenerWatch::new(),
            lost: LostFiles::new(LOST_FILE_WAIT),
            lost_next: Instant::now() + LOST_FILES_INTERVAL,
            listener_deadline: Instant::now() + settings.listener_wait,
            tick: tokio::time::interval(Duration::from_millis(250)),
            unacked: None,
            stop: None,
        })
    }

    fn job_id(&self) -> Uuid {
        self.plan.job_id
    }

    /// Follows the run until every file has its result (of every phase) or it stops.
    async fn follow(&mut self, signals: &mut StopSignals) {
        while self.stop.is_none() {
            if self.core.state.all_settled() && !self.next_phase(signals).await {
                break;
            }
            match self.next_input(signals).await {
                Input::Signal(signal) => self.stop = Some(signal.into()),
                Input::Tick => self.check().await,
                Input::Announcement(incoming) => self.announced(incoming).await,
                Input::Reply(Some(incoming)) => self.reply(incoming).await,
                Input::Reply(None) => {
                    // What the lost connection delivered comes again on the new one.
                    self.unacked = None;
                    if let Err(stopped) = self.resume(signals).await {
                        self.stop = Some(stopped);
                    }
                }
                Input::AckDue | Input::Deadline => self.ack_handled().await,
            }
        }
        self.ack_handled().await;
    }

    /// Once every queued file has its result: queues the next phase's files; false when
    /// the run is over (or stops).
    async fn next_phase(&mut self, signals: &mut StopSignals) -> bool {
        match self.core.advance_phases(self.plan, signals).await {
            Advance::Over => false,
            Advance::Stopped(stopped) => {
                self.stop = Some(stopped);
                false
            }
            Advance::Queue(units) => {
                let job_id = self.job_id();
                let messages = file_messages(self.plan, units)
                    .into_iter()
                    .map(|message| Envelope::new(job_id, message));
                let sent = self
                    .broker
                    .send_all_to_queue(&self.topology.files, messages)
                    .await;
                if let Err(error) = sent {
                    self.stop = Some(Stop::Failed(format!(
                        "cannot queue the next phase's files: {error}"
                    )));
                }
                self.stop.is_none()
            }
        }
    }

    async fn next_input(&mut self, signals: &mut StopSignals) -> Input {
        tokio::select! {
            // In this order: a stop and the periodic checks are never starved by a flood of
            // replies, and an acknowledgement waits for the replies that are already here.
            biased;
            signal = signals.recv() => Input::Signal(signal),
            _ = self.tick.tick() => Input::Tick,
            incoming = self.announcements.next(), if !self.announcements_ended => {
                Input::Announcement(incoming)
            }
            incoming = self.replies.next() => Input::Reply(incoming),
            () = std::future::ready(()), if self.unacked.is_some() => Input::AckDue,
        }
    }

    /// The periodic checks: the progress line, the listeners' liveness, and whether any
    /// listener took the job (in time) and still works on it.
    async fn check(&mut self) {
        self.core.progress.update(self.core.state);
        self.listeners
            .check_when_due(&self.broker, &mut self.core)
            .await;
        self.requeue_lost_files().await;
        let state = &self.core.state;
        let settings = &self.plan.settings;
        if !state.any_listener_accepted() && Instant::now() >= self.listener_deadline {
            let waiting = state.listeners_waiting();
            // Listeners that answered are running: what they said is the reason.
            let why = if waiting.is_empty() {
                "(is `gorgon listen` running, with the same cluster_id and broker?)".to_owned()
            } else {
                format!(
                    "({}; raise job.listener_wait to wait longer)",
                    waiting.join("; ")
                )
            };
            self.stop = Some(Stop::Failed(format!(
                "no listener of cluster '{}' took the job within {} s {why}",
                self.cluster_id,
                settings.listener_wait.as_secs_f64()
            )));
        } else if state.any_listener_accepted() && state.all_listeners_done() {
            self.stop = Some(Stop::Failed(format!(
                "every listener that took the job has stopped working on it, with no result for {}",
                counted(state.unfinished().len(), "file")
            )));
        }
    }

    /// Queues again, when due, the files (and retries) lost for [`LOST_FILE_WAIT`]: without
    /// a result, while the files queue held no message and no worker ran them. Each is
    /// told as a problem that does not fail the run.
    async fn requeue_lost_files(&mut self) {
        let now = Instant::now();
        if now < self.lost_next || self.stop.is_some() || self.core.state.all_settled() {
            return;
        }
        self.lost_next = now + LOST_FILES_INTERVAL;
        let queued = match self.broker.queue_counts(&self.topology.files).await {
            Ok(Some((queued, _consumers))) => queued,
            // Gone (the run is ending) or no answer: the next look tells.
            Ok(None) | Err(_) => return,
        };
        let lost = self.lost.look(self.core.state, queued, now);
        if lost.is_empty() {
            return;
        }
        for unit in &lost {
            let problem = Problem {
                what: format!("{} was lost", unit.unit()),
                status: format!(
                    "no result, and neither queued nor running anywhere for {} s: queued again",
                    LOST_FILE_WAIT.as_secs()
                ),
                output: String::new(),
                fails_run: false,
            };
            self.core.problem(Some(ProblemKind::FileLost), problem);
        }
        tracing::warn!(
            lost = lost.len(),
            so_far = self.lost.requeued(),
            "queued lost files again"
        );
        let job_id = self.job_id();
        let state = &*self.core.state;
        let messages = lost.into_iter().map(|unit| {
            let message = match unit {
                Requeue::File(file) => Message::file(file),
                Requeue::Retry(retry) => retry_message(state, retry),
            };
            Envelope::new(job_id, message)
        });
        if let Err(error) = self
            .broker
            .send_all_to_queue(&self.topology.files, messages)
            .await
        {
            self.stop = Some(Stop::Failed(format!(
                "cannot queue a lost file again: {error}"
            )));
        }
    }

    /// A listener that joined after the job was published gets it sent.
    async fn announced(&mut self, incoming: Option<Incoming>) {
        let Some(incoming) = incoming else {
            self.announcements_ended = true;
            return;
        };
        let Ok(Envelope {
            message:
                Message::ListenerAnnounced {
                    listener_queue,
                    name,
                },
            ..
        }) = &incoming.envelope
        else {
            let _ = incoming.discard().await;
            return;
        };
        tracing::info!(listener = %name, "a listener joined; sending it the job");
        let job = Envelope::new(self.job_id(), self.job_message.clone());
        if let Err(error) = self.broker.send_to_queue(listener_queue, &job).await {
            tracing::warn!(%error, "could not send the job to a new listener");
        }
        let _ = incoming.ack().await;
    }

    /// One reply of the run: to the run core, with the retries it decides queued.
    async fn reply(&mut self, incoming: Incoming) {
        let job_id = self.job_id();
        match Reply::of(&incoming, job_id) {
            Reply::RetryCheck { file, reply_to } => {
                answer_retry_check(&self.broker, self.core.state, job_id, file, reply_to).await;
                let _ = incoming.ack().await;
            }
            Reply::Ours(message) => {
                if let Some(stop) = self.core.reply(message.clone()) {
                    self.stop = Some(stop);
                }
                if let Err(error) = queue_retries(&self.broker, job_id, &mut self.core).await {
                    self.stop = Some(Stop::Failed(format!("cannot queue a retry: {error}")));
                }
                self.unacked = Some(incoming);
            }
            Reply::Other(job) => {
                tracing::warn!(%job, "dropping a reply of another job");
                let _ = incoming.discard().await;
            }
            Reply::Unreadable(error) => {
                if !error.is_untrusted() {
                    tracing::warn!(%error, "dropping an unreadable reply");
                }
                let _ = incoming.discard().await;
            }
        }
    }

    async fn ack_handled(&mut self) {
        if let Some(handled) = self.unacked.take() {
            let _ = handled.ack_through().await;
        }
    }

    /// Gets the broker and the job's inboxes back after the connection was lost.
    async fn resume(&mut self, signals: &mut StopSignals) -> Result<(), Stop> {
        let (replies, announcements) = resume(
            &mut self.broker,
            &self.topology,
            self.core.progress,
            signals,
        )
        .await?;
        self.replies = replies;
        self.announcements = announcements;
        self.announcements_ended = false;
        self.listeners.after_resume();
        Ok(())
    }

    /// Ends the run: on success, deleting the files queue tells the workers to finish;
    /// otherwise the job is cancelled. Either way listeners report when they are done.
    async fn end(mut self, signals: &mut StopSignals) -> Option<Stop> {
        if let Some(Stop::BrokerLost(_)) = self.stop {
            // Past the outage limit nobody can be told or heard: no second wait for the
            // broker. Each worker manager stops the job once its reply queue has had no
            // consumer for this originator's limit.
            self.core.progress.finish();
            return self.stop;
        }
        let wait = if self.stop.is_some() {
            CANCEL_WAIT
        } else {
            FINISH_WAIT
        };
        if let Some(stop) = &self.stop {
            let reason = self.core.stopping(stop);
            let cancel = Envelope::new(self.job_id(), Message::Cancel { reason });
            match self.broker.publish(&self.topology.control, &cancel).await {
                Ok(()) | Err(BrokerError::Unroutable(_)) => {}
                Err(error) => tracing::warn!(%error, "could not publish the cancel"),
            }
        }
        let _ = self.broker.delete_queue(&self.topology.files).await;
        let second_interrupt = self.wait_for_listeners(wait, signals).await;
        if !second_interrupt {
            self.topology.remove(&self.broker).await;
        }
        self.broker.close().await;
        self.core.progress.finish();
        self.stop
    }

    /// Takes the listeners' last replies until each is done, for up to `wait`; true when
    /// a second Ctrl-C cut the wait short.
    async fn wait_for_listeners(&mut self, wait: Duration, signals: &mut StopSignals) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.core.state.all_listeners_done() {
            let input = tokio::select! {
                incoming = self.replies.next() => Input::Reply(incoming),
                () = signals.interrupt() => Input::Signal(StopSignal::Interrupt),
                // A listener that died (or froze past the heartbeat) is not waited for.
                _ = self.tick.tick() => Input::Tick,
                _ = tokio::time::sleep_until(deadline) => Input::Deadline,
            };
            match input {
                Input::Reply(Some(incoming)) => self.last_reply(incoming).await,
                Input::Reply(None) => {
                    if self.resume(signals).await.is_err() {
                        break;
                    }
                }
                Input::Signal(_) => return true,
                Input::Tick => {
                    self.listeners
                        .check_when_due(&self.broker, &mut self.core)
                        .await
                }
                Input::Deadline | Input::Announcement(_) | Input::AckDue => {
                    self.core.progress.note(&format!(
                        "Listeners still finishing after {} s: {}",
                        wait.as_secs(),
                        self.core.state.listeners_working().join(", ")
                    ));
                    break;
                }
            }
        }
        false
    }

    /// A reply once the run is ending: it still counts, but nothing is queued any more.
    async fn last_reply(&mut self, incoming: Incoming) {
        let job_id = self.job_id();
        match Reply::of(&incoming, job_id) {
            Reply::RetryCheck { file, reply_to } => {
                answer_retry_check(&self.broker, self.core.state, job_id, file, reply_to).await;
            }
            Reply::Ours(message) => {
                self.core.reply(message.clone());
            }
            Reply::Other(_) | Reply::Unreadable(_) => {}
        }
        let _ = incoming.ack().await;
    }
}

/// Gets the broker back after the run's connection was lost: reconnects (to any node) for
/// up to `connection.outage_limit` and re-attaches to the job's queues, which are durable,
/// so the files not yet settled are still queued and the replies sent meanwhile wait in
/// the reply queue. Returns the new replies and announcements, or why the run stops.
async fn resume(
    broker: &mut Broker,
    topology: &Topology,
    progress: &Progress,
    signals: &mut StopSignals,
) -> Result<(Inbox, Inbox), Stop> {
    let lost = broker.address().to_owned();
    let limit = broker.outage_limit();
    progress.note(&format!(
        "Lost the connection to RabbitMQ at {lost}; reconnecting for up to {} s (connection.outage_limit)",
        limit.as_secs()
    ));
    let deadline = tokio::time::Instant::now() + limit;
    let reattached = async {
        let fresh = broker.reconnect(deadline).await?;
        let inboxes = topology.reattach(&fresh).await?;
        Ok::<_, BrokerError>((fresh, inboxes))
    };
    let outcome = tokio::select! {
        outcome = reattached => outcome,
        signal = signals.recv() => return Err(signal.into()),
    };
    match outcome {
        Ok((fresh, inboxes)) => {
            *broker = fresh;
            progress.note(&format!(
                "Reconnected to RabbitMQ at {}; the run goes on",
                broker.address()
            ));
            Ok(inboxes)
        }
        Err(error) => Err(Stop::BrokerLost(format!(
            "lost the connection to RabbitMQ at {lost} and could not get it back within {} s (connection.outage_limit): {error}",
            limit.as_secs()
        ))),
    }
}

/// The messages that queue `units`: quick ones packed several to a message by their
/// recorded times (`crate::pack`, `job.pack_seconds`).
fn file_messages(plan: &Plan, units: Vec<String>) -> Vec<Message> {
    crate::pack::messages(units, &plan.history, plan.settings.pack_seconds)
}

/// Queues the retries that the last reply decided, each marked with where it failed, so
/// that it runs on another host (or worker).
pub(crate) async fn queue_retries(
    broker: &Broker,
    job_id: Uuid,
    core: &mut Core<'_>,
) -> Result<(), BrokerError> {
    let retries = core.retries();
    if retries.is_empty() {
        return Ok(());
    }
    let state = &*core.state;
    let messages = retries
        .into_iter()
        .map(|retry| Envelope::new(job_id, retry_message(state, retry)));
    broker
        .send_all_to_queue(&names::files_queue(job_id), messages)
        .await
}

/// A retry's message: the unit, marked with where it failed and whether another host that
/// took the job still works on it (then the host it failed on hands it back for that one:
/// see `gorgon_worker`'s feed).
fn retry_message(state: &JobState, retry: Retry) -> Message {
    let other_hosts = state
        .listeners_working()
        .iter()
        .any(|host| *host != retry.avoid.host);
    Message::File {
        file: retry.unit,
        retry: Some(RetryOf {
            host: retry.avoid.host,
            worker_id: retry.avoid.worker_id,
            other_hosts,
            passed_on: 0,
        }),
        delivered_before: false,
    }
}

/// Tells a worker whether a file delivered again still needs a run.
pub(crate) async fn answer_retry_check(
    broker: &Broker,
    state: &JobState,
    job_id: Uuid,
    file: &str,
    reply_to: &str,
) {
    let run = !state.has_result(file);
    let answer = Envelope::new(
        job_id,
        Message::RetryAnswer {
            file: file.to_owned(),
            run,
        },
    );
    if let Err(error) = broker.send_to_queue(reply_to, &answer).await {
        tracing::warn!(%error, file, "cannot answer a worker's retry check");
    }
}

/// Whether the listeners working on the job are alive: each one's queue lives while the
/// listener consumes it. A queue missing at two checks in a row (a listener that died, or
/// froze past the heartbeat) marks its listener done; once is not enough, for a listener
/// whose broker node went away re-declares its queue on another node within a second or so.
/// The checks go round the listeners [`LIVENESS_BATCH`] at a time, one batch per tick, then
/// wait [`LIVENESS_INTERVAL`]: a small fleet is checked every 2 s, a fleet of a thousand
/// hosts every 15 s or so, and the event loop never waits longer than one batch's checks,
/// made together.
struct ListenerWatch {
    next: Instant,
    /// Where the round has got to, in host order.
    cursor: usize,
    missing_before: std::collections::HashSet<String>,
}

/// How many listeners one tick of the event loop checks at most.
const LIVENESS_BATCH: usize = 20;

impl ListenerWatch {
    fn new() -> ListenerWatch {
        ListenerWatch {
            next: Instant::now() + LIVENESS_INTERVAL,
            cursor: 0,
            missing_before: Default::default(),
        }
    }

    /// The originator got its connection back: listeners get [`RESUME_GRACE`] for theirs.
    fn after_resume(&mut self) {
        self.next = Instant::now() + RESUME_GRACE;
        self.cursor = 0;
        self.missing_before.clear();
    }

    /// Checks the next batch of listeners when due; the files of one found dead are back
    /// in the queue already (its connection ended).
    async fn check_when_due(&mut self, broker: &Broker, core: &mut Core<'_>) {
        if Instant::now() < self.next {
            return;
        }
        let mut working = core.state.working_listener_queues();
        working.sort();
        let batch: Vec<_> = working
            .into_iter()
            .skip(self.cursor)
            .take(LIVENESS_BATCH)
            .collect();
        if batch.len() < LIVENESS_BATCH {
            self.cursor = 0;
            self.next = Instant::now() + LIVENESS_INTERVAL;
        } else {
            self.cursor += batch.len();
        }
        // All at once: a batch costs the event loop one round trip's wait, not twenty.
        let checks = batch.iter().map(|(_, queue)| broker.queue_exists(queue));
        let answers = futures_util::future::join_all(checks).await;
        for ((host, _), answer) in batch.into_iter().zip(answers) {
            match answer {
                Ok(true) => {
                    self.missing_before.remove(&host);
                }
                Ok(false) if self.missing_before.remove(&host) => {
                    let problem = Problem {
                        what: format!("listener {host} disappeared"),
                        status: "its connection to RabbitMQ ended".into(),
                        output: String::new(),
                        fails_run: false,
                    };
                    // The event stream has no kind for it: the progress and the report say it.
                    core.problem(None, problem);
                    core.state.listener_done(&host);
                }
                Ok(false) => {
                    self.missing_before.insert(host);
                }
                Err(error) => {
                    tracing::warn!(%host, %error, "cannot check whether a listener is alive")
                }
            }
        }
    }
}

/// The broker entities of one run.
struct Topology {
    job_id: Uuid,
    jobs: String,
    announcements_exchange: String,
    files: String,
    replies: String,
    control: String,
    announcements: String,
}

impl Topology {
    fn new(job_id: Uuid, cluster: &str) -> Self {
        Topology {
            job_id,
            jobs: names::jobs_exchange(cluster),
            announcements_exchange: names::announcements_exchange(cluster),
            files: names::files_queue(job_id),
            replies: names::reply_queue(job_id),
            control: names::control_exchange(job_id),
            announcements: names::announcement_queue(job_id),
        }
    }

    /// Declares everything, queues the files, and starts consuming replies and
    /// announcements, before the job is published, so that no reply can be missed.
    async fn declare(
        &self,
        broker: &Broker,
        files: Vec<Message>,
    ) -> Result<(Inbox, Inbox), BrokerError> {
        self.declare_entities(broker).await?;
        broker
            .send_all_to_queue(
                &self.files,
                files
                    .into_iter()
                    .map(|message| Envelope::new(self.job_id, message)),
            )
            .await?;
        self.consume(broker).await
    }

    /// After a reconnection: declares again what a broker restart may have dropped (the
    /// durable queues and the control exchange stay, with their messages) and consumes
    /// the replies and announcements again.
    async fn reattach(&self, broker: &Broker) -> Result<(Inbox, Inbox), BrokerError> {
        self.declare_entities(broker).await?;
        self.consume(broker).await
    }

    async fn consume(&self, broker: &Broker) -> Result<(Inbox, Inbox), BrokerError> {
        let replies = broker.consume(&self.replies, None).await?;
        let announcements = broker.consume(&self.announcements, None).await?;
        Ok((replies, announcements))
    }

    async fn declare_entities(&self, broker: &Broker) -> Result<(), BrokerError> {
        broker.declare_fanout(&self.jobs).await?;
        broker.declare_fanout(&self.announcements_exchange).await?;
        broker.declare_job_exchange(&self.control).await?;
        broker
            // Durable, so that it keeps the replies through a broker restart; worker managers
            // that find it without a consumer (the originator died) stop the job's workers.
            .declare_queue(
                &self.replies,
                QueueLife::Shared {
                    unused_expiry: FILES_QUEUE_EXPIRY,
                },
            )
            .await?;
        broker
            .declare_queue(&self.announcements, QueueLife::Exclusive)
            .await?;
        broker
            .bind(&self.announcements, &self.announcements_exchange)
            .await?;
        broker
            .declare_queue(
                &self.files,
                QueueLife::Shared {
                    unused_expiry: FILES_QUEUE_EXPIRY,
                },
            )
            .await?;
        Ok(())
    }

    /// Deletes what the run declared; exclusive queues go with the connection.
    async fn remove(&self, broker: &Broker) {
        let _ = broker.delete_queue(&self.files).await;
        let _ = broker.delete_exchange(&self.control).await;
        let _ = broker.delete_queue(&self.replies).await;
    }
}

/// Keeps a name safe as one path component on the file server.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_file_server_are_single_safe_components() {
        assert_eq!(sanitize("my host/../x y"), "my_host_.._x_y");
    }
}
