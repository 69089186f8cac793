//! Following the build's log: every node and the reporter apply each reply through the run
//! core, queue the retries their own failures call for, end the managers once every file is
//! settled, and stop a build that nothing works on any more.

use std::time::Instant;

use gorgon_exec::signals::StopSignals;
use gorgon_protocol::{names, Inbox, Message};

use super::build::Build;
use super::LIVENESS_INTERVAL;
use crate::engines::distributed::{answer_retry_check, queue_retries};
use crate::errors::Stop;
use crate::events::EventSink;
use crate::run_core::{reply_host, Core};
use crate::state::JobState;
use crate::view::counted;
use crate::view::Progress;

/// Whoever follows the build's log: its state, and what it does about each message.
pub(super) struct Follower {
    pub(super) state: JobState,
    pub(super) progress: Progress,
    pub(super) events: EventSink,
    /// A node: the retries its own failures call for are its to queue.
    pub(super) own_host: Option<String>,
    pub(super) stop: Option<Stop>,
    /// The files queue was deleted (every file settled, or the build stopped).
    pub(super) told: bool,
}

impl Follower {
    /// Applies one message of the log.
    pub(super) async fn take(&mut self, build: &Build, incoming: gorgon_protocol::Incoming) {
        let envelope = match &incoming.envelope {
            Ok(envelope) if envelope.job_id == build.job => Some(envelope.clone()),
            _ => None,
        };
        let _ = incoming.ack().await;
        let Some(envelope) = envelope else { return };
        let max_crash_retries = build.settings.max_crash_retries;
        match envelope.message {
            Message::BuildDefined { .. } => {}
            Message::RetryCheck { file, reply_to } => {
                if self.own_host.is_some() {
                    answer_retry_check(&build.broker, &self.state, build.job, &file, &reply_to)
                        .await;
                }
            }
            message => {
                let from = reply_host(&message).map(|(host, _)| host.to_owned());
                let own = from.is_some() && from == self.own_host;
                let mut core = Core::new(
                    &mut self.state,
                    &mut self.events,
                    &self.progress,
                    max_crash_retries,
                );
                let mut stop = core.reply(message);
                if own {
                    if let Err(error) = queue_retries(&build.broker, build.job, &mut core).await {
                        stop =
                            stop.or(Some(Stop::Failed(format!("cannot queue a retry: {error}"))));
                    }
                } else {
                    // Another node queues them; the state takes them all the same.
                    core.retries();
                }
                if let Some(stop) = stop {
                    self.stop.get_or_insert(stop);
                }
            }
        }
        self.end_managers_when_over(build).await;
    }

    /// Once every file is settled or the build stops, deletes the build's files queue (once):
    /// every manager of the build ends with it.
    pub(super) async fn end_managers_when_over(&mut self, build: &Build) {
        if !self.told && (self.state.all_settled() || self.stop.is_some()) {
            self.told = true;
            let _ = build
                .broker
                .delete_queue(&names::files_queue(build.job))
                .await;
        }
    }
}

/// Follows the log until every file has its result, the build stops, or no node has
/// worked on it for `job.listener_wait` while files are left.
pub(super) async fn follow_to_end(
    build: &Build,
    log: &mut Inbox,
    follower: &mut Follower,
    signals: &mut StopSignals,
) -> Option<Stop> {
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    let mut watch = Watch::default();
    while follower.stop.is_none() && !follower.state.all_settled() {
        tokio::select! {
            incoming = log.next() => match incoming {
                Some(incoming) => follower.take(build, incoming).await,
                None => {
                    follower.stop = Some(build.log_ended());
                }
            },
            signal = signals.recv() => follower.stop = Some(signal.into()),
            _ = tick.tick() => {
                follower.progress.update(&follower.state);
                if let Some(reason) = watch.check(build, &follower.state).await {
                    follower.stop = Some(Stop::Failed(reason));
                }
            }
        }
    }
    follower.progress.finish();
    follower.stop.take()
}

/// Whether anything still works on a build whose files do not all have results: a node
/// consuming its files queue; and, when every file left only waits for its retries, a retry
/// queued or running. Either missing for `job.listener_wait` (every node died; the node that
/// was to queue a retry died first) ends the build.
#[derive(Default)]
pub(super) struct Watch {
    pub(super) idle_since: Option<Instant>,
    pub(super) stalled_since: Option<Instant>,
}

impl Watch {
    /// Why the build must stop, once it has waited long enough.
    pub(super) async fn check(&mut self, build: &Build, state: &JobState) -> Option<String> {
        if state.all_settled() {
            return None;
        }
        let wait = build.settings.listener_wait;
        let counts = build
            .broker
            .queue_counts(&names::files_queue(build.job))
            .await;
        let (queued, consumers) = match counts {
            Ok(Some(counts)) => counts,
            Ok(None) => (0, 0),
            // The broker did not answer: the log's end says so, if it is gone.
            Err(_) => return None,
        };
        let left = counted(state.unfinished().len(), "file");
        if consumers > 0 {
            self.idle_since = None;
        } else if self.idle_since.get_or_insert_with(Instant::now).elapsed() >= wait {
            return Some(format!(
                "no node has worked on build {} for {} s, with no result for {left}",
                build.build_id,
                wait.as_secs_f64()
            ));
        }
        // Files that have not run yet may wait on a node's long `before_creating_workers`;
        // a file that waits only for its retries waits for nothing else.
        let only_retries = state
            .unfinished()
            .iter()
            .all(|file| state.retries().waits_for_retries(file));
        if queued > 0 || state.workers_running() > 0 || !only_retries {
            self.stalled_since = None;
        } else if self
            .stalled_since
            .get_or_insert_with(Instant::now)
            .elapsed()
            >= wait
        {
            return Some(format!(
                "for {} s no file of build {} was queued or running, with no result for {left} (was a node lost as it queued a retry?)",
                wait.as_secs_f64(),
                build.build_id
            ));
        }
        None
    }
}
