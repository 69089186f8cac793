//! The distributed engine of `gorgon start`: pushes the tree to the file server, queues the
//! files on RabbitMQ, publishes the job, and follows the listeners' replies until every file
//! has a result or the run stops; then ends the job on every listener.

use std::time::{Duration, Instant};

use gorgon_exec::rsync;
use gorgon_exec::signals::StopSignals;
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    names, Broker, BrokerError, Envelope, Inbox, JobDefinition, Message, RetryOf, SyncSettings,
};
use uuid::Uuid;

use crate::engine::{
    advance_phases, handle_reply, retries_to_queue, Advance, Plan, StartError, Stop,
};
use crate::events::EventSink;
use crate::state::{JobState, Problem};
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
    let Plan {
        settings,
        job_id,
        project,
        ..
    } = plan;
    let job_id = *job_id;
    let root = &settings.project_root;
    let file_server = settings.file_server()?;
    let mut broker = Broker::connect(&settings.broker, &format!("gorgon start {project}")).await?;
    // A Gorgon callbacks class's `before_originate` may name the cluster, as in Gorgon.
    let cluster_id = match plan.before_originate(signals).await {
        Ok(named) => named.unwrap_or_else(|| settings.cluster_id.clone()),
        Err(error) => {
            broker.close().await;
            return Err(error);
        }
    };

    let progress = plan.progress(state.total());
    let tree_dir = format!("{}_{}", sanitize(&plan.host), sanitize(project));
    let location = rsync::tree_location(
        &file_server.host,
        file_server.port,
        settings.transport,
        &tree_dir,
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
        root,
        &location,
        &settings.exclude,
        settings.transport,
        login.as_ref(),
    );
    let pushed = tokio::select! {
        pushed = push => pushed,
        signal = signals.recv() => {
            progress.finish();
            broker.close().await;
            return Err(StartError::Stopped { signal, during: "pushing the source tree" });
        }
    };
    if let Err(error) = pushed {
        progress.finish();
        broker.close().await;
        return Err(StartError::Push(error));
    }

    let definition = JobDefinition {
        project: project.clone(),
        originator_host: plan.host.clone(),
        sync: SyncSettings {
            source: location,
            transport: settings.transport,
            exclude: settings.exclude.clone(),
        },
        runner: settings.runner.clone(),
        callbacks: settings.callbacks.remote.clone(),
        live_output: plan.live_output(),
    };
    let topology = Topology::new(job_id, &cluster_id);
    let (mut replies, mut announcements) = topology.declare(&broker, state.queued()).await?;
    let job_message = Message::Job {
        definition: Box::new(definition),
        reply_to: topology.replies.clone(),
    };
    match broker
        .publish(&topology.jobs, &Envelope::new(job_id, job_message.clone()))
        .await
    {
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let queued = match state.phases().list().len() {
        0 => format!("Queued {} files", state.total()),
        phases => format!("{phases} phases"),
    };
    progress.note(&format!(
        "{queued}; waiting for listeners of cluster '{cluster_id}'"
    ));

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut listeners = ListenerWatch::new();
    let listener_deadline = Instant::now() + settings.listener_wait;

    let mut announcements_ended = false;
    // The last reply handled but not acknowledged yet: the replies that come together are
    // acknowledged together, once none is waiting (a run of thousands of quick files sends
    // replies faster than one acknowledgement at a time can follow).
    let mut unacked: Option<gorgon_protocol::Incoming> = None;
    let mut stop = None;
    while stop.is_none() {
        if state.all_settled() {
            // The next phase's files, in a run with phases.
            match advance_phases(plan, state, events, &progress, signals).await {
                Advance::Over => break,
                Advance::Stopped(stopped) => {
                    stop = Some(stopped);
                    break;
                }
                Advance::Queue(units) => {
                    let messages = units
                        .into_iter()
                        .map(|unit| Envelope::new(job_id, Message::file(unit)));
                    if let Err(error) = broker.send_all_to_queue(&topology.files, messages).await {
                        stop = Some(Stop::Failed(format!(
                            "cannot queue the next phase's files: {error}"
                        )));
                        break;
                    }
                }
            }
        }
        tokio::select! {
            // In this order: a stop and the periodic checks are never starved by a flood of
            // replies, and an acknowledgement waits for the replies that are already here.
            biased;
            signal = signals.recv() => stop = Some(signal.into()),
            _ = tick.tick() => {
                progress.update(state);
                listeners.check_when_due(&broker, state, &progress).await;
                if !state.any_listener_accepted() && Instant::now() >= listener_deadline {
                    stop = Some(Stop::Failed(format!(
                        "no listener of cluster '{}' took the job within {} s (is `gorgon listen` running, with the same cluster_id and broker?)",
                        cluster_id,
                        settings.listener_wait.as_secs_f64()
                    )));
                } else if state.any_listener_accepted() && state.all_listeners_done() {
                    stop = Some(Stop::Failed(format!(
                        "every listener that took the job has stopped working on it, but {} files have no result",
                        state.unfinished().len()
                    )));
                }
            }
            incoming = announcements.next(), if !announcements_ended => {
                // A lost connection ends the replies too, which resume it.
                let Some(incoming) = incoming else {
                    announcements_ended = true;
                    continue;
                };
                if let Ok(Envelope { message: Message::ListenerAnnounced { listener_queue, name }, .. }) = &incoming.envelope {
                    tracing::info!(listener = %name, "a listener joined; sending it the job");
                    if let Err(error) = broker.send_to_queue(listener_queue, &Envelope::new(job_id, job_message.clone())).await {
                        tracing::warn!(%error, "could not send the job to a new listener");
                    }
                    let _ = incoming.ack().await;
                } else {
                    let _ = incoming.discard().await;
                }
            }
            incoming = replies.next() => {
                let Some(incoming) = incoming else {
                    // What the lost connection delivered comes again on the new one.
                    unacked = None;
                    match resume(&mut broker, &topology, &progress, signals).await {
                        Ok(inboxes) => {
                            (replies, announcements) = inboxes;
                            announcements_ended = false;
                            listeners.after_resume();
                            continue;
                        }
                        Err(stopped) => {
                            stop = Some(stopped);
                            break;
                        }
                    }
                };
                match &incoming.envelope {
                    Ok(Envelope { job_id: id, message: Message::RetryCheck { file, reply_to }, .. }) if *id == job_id => {
                        answer_retry_check(&broker, state, job_id, file, reply_to).await;
                        let _ = incoming.ack().await;
                    }
                    Ok(envelope) if envelope.job_id == job_id => {
                        if let Some(reason) = handle_reply(state, &progress, events, settings.max_crash_retries, envelope.message.clone()) {
                            stop = Some(Stop::Failed(reason));
                        }
                        if let Err(error) = queue_retries(&broker, job_id, state, &progress, events).await {
                            stop = Some(Stop::Failed(format!("cannot queue a retry: {error}")));
                        }
                        unacked = Some(incoming);
                    }
                    Ok(envelope) => {
                        tracing::warn!(job = %envelope.job_id, "dropping a reply of another job");
                        let _ = incoming.discard().await;
                    }
                    Err(error) => {
                        if !error.is_untrusted() {
                            tracing::warn!(%error, "dropping an unreadable reply");
                        }
                        let _ = incoming.discard().await;
                    }
                }
            }
            () = std::future::ready(()), if unacked.is_some() => {
                if let Some(handled) = unacked.take() {
                    let _ = handled.ack_through().await;
                }
            }
        }
    }
    if let Some(handled) = unacked.take() {
        let _ = handled.ack_through().await;
    }

    // Ending: on success, deleting the files queue tells the workers to finish; otherwise the
    // job is cancelled. Either way listeners report when they are done.
    let wait = if stop.is_some() {
        CANCEL_WAIT
    } else {
        FINISH_WAIT
    };
    if let Some(stop) = &stop {
        let reason = stop.announce(events, &progress);
        let cancel = Envelope::new(job_id, Message::Cancel { reason });
        match broker.publish(&topology.control, &cancel).await {
            Ok(()) | Err(BrokerError::Unroutable(_)) => {}
            Err(error) => tracing::warn!(%error, "could not publish the cancel"),
        }
    }
    let _ = broker.delete_queue(&topology.files).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut second_interrupt = false;
    while !state.all_listeners_done() {
        tokio::select! {
            incoming = replies.next() => {
                let Some(incoming) = incoming else {
                    match resume(&mut broker, &topology, &progress, signals).await {
                        Ok(inboxes) => {
                            (replies, _) = inboxes;
                            listeners.after_resume();
                            continue;
                        }
                        Err(_) => break,
                    }
                };
                if let Ok(Envelope { job_id: id, message: Message::RetryCheck { file, reply_to }, .. }) = &incoming.envelope {
                    if *id == job_id {
                        answer_retry_check(&broker, state, job_id, file, reply_to).await;
                    }
                } else if let Ok(envelope) = &incoming.envelope {
                    if envelope.job_id == job_id {
                        handle_reply(state, &progress, events, settings.max_crash_retries, envelope.message.clone());
                    }
                }
                let _ = incoming.ack().await;
            }
            () = signals.interrupt() => { second_interrupt = true; break; }
            // A listener that died (or froze past the heartbeat) is not waited for.
            _ = tick.tick() => {
                listeners.check_when_due(&broker, state, &progress).await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                progress.note(&format!(
                    "Listeners still finishing after {} s: {}",
                    wait.as_secs(),
                    state.listeners_working().join(", ")
                ));
                break;
            }
        }
    }
    if !second_interrupt {
        topology.remove(&broker).await;
    }
    broker.close().await;
    progress.finish();

    Ok(stop)
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

/// Tells a worker whether a file delivered again still needs a run.
/// Queues the retries that the last reply decided, each marked with where it failed, so
/// that it runs on another host (or worker).
pub(crate) async fn queue_retries(
    broker: &Broker,
    job_id: Uuid,
    state: &mut JobState,
    progress: &Progress,
    events: &mut EventSink,
) -> Result<(), BrokerError> {
    let retries = retries_to_queue(state, progress, events);
    if retries.is_empty() {
        return Ok(());
    }
    let other_hosts = state.listeners_working().len() > 1;
    let messages = retries.into_iter().map(|retry| {
        let message = Message::File {
            file: retry.unit,
            retry: Some(RetryOf {
                host: retry.avoid.host,
                worker_id: retry.avoid.worker_id,
                other_hosts,
                passed_on: 0,
            }),
        };
        Envelope::new(job_id, message)
    });
    broker
        .send_all_to_queue(&names::files_queue(job_id), messages)
        .await
}

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
    async fn check_when_due(&mut self, broker: &Broker, state: &mut JobState, progress: &Progress) {
        if Instant::now() < self.next {
            return;
        }
        let mut working = state.working_listener_queues();
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
                    progress.problem(&problem);
                    state.add_problem(problem);
                    state.listener_done(&host);
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
        files: &[String],
    ) -> Result<(Inbox, Inbox), BrokerError> {
        self.declare_entities(broker).await?;
        broker
            .send_all_to_queue(
                &self.files,
                files
                    .iter()
                    .map(|file| Envelope::new(self.job_id, Message::file(file.clone()))),
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
