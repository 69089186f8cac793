//! The local engine of `gorgon start --local`: the job runs on this machine, without broker
//! or file server. The originator plays the listener's and the worker manager's parts
//! itself: it feeds the worker pool (`gorgon_worker::HostJob`, the same pool and loop as on a listener)
//! from an in-memory queue of the job's files, in the project folder, and the workers'
//! replies (the messages a distributed worker's manager publishes) feed the same state,
//! progress and events as a distributed run.
//!
//! A worker's stdin says when to stop: the pool closes it once every file has a result (the
//! worker runs `after_complete` and exits), and never while the worker holds a file, so a
//! worker that sees its stdin end mid-file knows the originator died. A worker that dies
//! mid-file is restarted and its files go back to the front of the queue, each to run alone,
//! with the same `max_crash_retries` accounting as a distributed run. As a worker manager
//! does, the originator adopts the orphans of the job's processes while the workers run
//! and kills what is left of them at the job's end (`gorgon_exec::reaper`).

use std::time::Duration;

use gorgon_exec::signals::{StopSignal, StopSignals};
use gorgon_protocol::{JobDefinition, Message, SyncSettings, SyncTransport, WorkerAssignment};
use gorgon_worker::{
    Ending, Feed, FeedEnd, HandOutQueue, HostJob, Kill, Received, Stage, WorkerProgram,
};

use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::events::EventSink;
use crate::run_core::{Advance, Core};
use crate::state::JobState;
use crate::view::counted;

/// How long the workers get, once every file has a result, to run `after_complete`.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled run waits for its workers to stop (they are killed after the grace).
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How often the progress view is brought up to date while the run goes on.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// Runs the planned job with `slots` local workers, feeding `state`; returns why it stopped
/// early, if it did. `after_sync` has no place here: nothing is synced.
pub(crate) async fn run(
    plan: &Plan,
    slots: usize,
    state: &mut JobState,
    events: &mut EventSink,
    signals: &mut StopSignals,
) -> Result<Option<Stop>, StartError> {
    let program = WorkerProgram::gorgon().map_err(StartError::LocalWorkers)?;
    plan.before_originate(signals).await?;
    let progress = plan.progress(state.total());
    let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    let assignment = assignment(plan, slots);
    let host = plan.host.clone();
    let mut feed = LocalFeed {
        plan,
        queue: HandOutQueue::new(state.queued().iter().cloned()),
        core: Core::new(state, events, &progress, plan.settings.max_crash_retries),
        tick: tokio::time::interval(PROGRESS_TICK),
    };

    // The listener's and the manager's parts: take the job, `before_creating_workers`
    // (whose workspace here is the project itself).
    feed.reply(Message::JobAccepted {
        host: host.clone(),
        slots,
        listener_queue: None,
    });
    let ending = Ending::Bounded {
        finish: FINISH_WAIT,
        stop: CANCEL_WAIT,
    };
    // This process is the subreaper of the host part (`gorgon_exec::reaper`), as a
    // listener's worker manager is: what the job leaves is killed when it ends.
    let subreaper = gorgon_exec::reaper::Subreaper::start()
        .map_err(|error| tracing::warn!(%error, "the job's orphans are not contained"))
        .ok();
    let (mut job, failed) = HostJob::before_workers(program, assignment, ending).await;
    let failed = failed.map(|failure| job.callback_failed(failure));
    let stop = match failed.and_then(|failed| feed.reply(failed)) {
        Some(stop) => {
            feed.stopping(&stop);
            Some(stop)
        }
        None => {
            // No more workers than files (than the largest phase has, with phases).
            let most = feed
                .core
                .state
                .queued()
                .len()
                .max(feed.core.state.phases().largest());
            let workers = slots.min(u32::try_from(most).unwrap_or(u32::MAX));
            let plural = if workers == 1 { "" } else { "s" };
            progress.note(&format!("Running {workers} worker{plural} on this machine"));
            job.start_workers(workers, &mut feed).await;
            // On success the closed stdins tell the workers to finish; otherwise they are
            // stopped. Either way their last replies (an `after_complete` failure) still
            // count.
            match job.drive(&mut feed, signals).await {
                Some(stop) => Some(stop),
                None if !feed.core.state.all_settled() => {
                    let stop = Stop::Failed(format!(
                        "every worker has stopped, with no result for {}",
                        counted(feed.core.state.unfinished().len(), "file")
                    ));
                    feed.stopping(&stop);
                    Some(stop)
                }
                None => None,
            }
        }
    };
    if let Some(failure) = job.after_workers(stop.is_some()).await {
        let failed = gorgon_worker::callback_failed(&host, None, failure);
        feed.reply(failed);
    }
    if let Some(subreaper) = subreaper {
        subreaper.end().await;
    }
    feed.reply(Message::JobDone { host });
    progress.finish();
    Ok(stop)
}

/// The assignment of this machine's part: the workers run in the project itself.
fn assignment(plan: &Plan, slots: u32) -> WorkerAssignment {
    let settings = &plan.settings;
    let root = settings.project_root.clone();
    let definition = JobDefinition {
        project: plan.project.clone(),
        originator_host: plan.host.clone(),
        // Nothing is synced: the workers run in the project itself.
        sync: SyncSettings {
            source: root.display().to_string(),
            transport: SyncTransport::Daemon,
            exclude: settings.exclude.clone(),
            tree: None,
        },
        runner: settings.runner.clone(),
        callbacks: settings.callbacks.remote.clone(),
        live_output: plan.live_output(),
        first_is_1: settings.first_is_1,
        // A local run's workers write into the project itself: its artifacts are in place.
        artifacts: Default::default(),
        worker_setup: settings.worker_setup.clone(),
        // Nothing is far.
        expected_file_seconds: None,
        record_impact: settings.impact.record,
        originator_outage_limit: None,
    };
    let broker = settings.broker.clone();
    WorkerAssignment::new(
        plan.job_id,
        definition,
        "stdout",
        broker,
        plan.host.clone(),
        root,
        slots,
    )
}

/// The local run's side of the job: its files in memory, its replies handed to the run's
/// state (which says whether to stop and what to run again), its phases one after another.
struct LocalFeed<'a> {
    plan: &'a Plan,
    core: Core<'a>,
    queue: HandOutQueue,
    tick: tokio::time::Interval,
}

impl LocalFeed<'_> {
    /// Hands one reply to the run's core; why the run must stop, if it must.
    fn reply(&mut self, message: Message) -> Option<Stop> {
        self.core.reply(message)
    }
}

impl Feed for LocalFeed<'_> {
    type Stop = Stop;
    type Event = ();

    // One reply at a time: each may stop the run or queue retries before the next.
    const DRAINED_AT_ONCE: usize = 1;
    const LOGS: bool = false;

    async fn refill(&mut self, signals: &mut StopSignals) -> Option<Stop> {
        if !self.core.state.all_settled() {
            return None;
        }
        // The next phase's files, in a run with phases.
        match self.core.advance_phases(self.plan, signals).await {
            Advance::Queue(units) => self.queue.extend(units),
            Advance::Over => {}
            Advance::Stopped(stopped) => return Some(stopped),
        }
        None
    }

    fn ended(&self) -> Option<FeedEnd> {
        self.core.state.all_settled().then_some(FeedEnd::Finished)
    }

    fn waiting(&self) -> usize {
        self.queue.len()
    }

    async fn take(&mut self, worker_id: u32, count: usize, others: bool) -> Vec<String> {
        // A file settled meanwhile (crashed too often) is not handed out again.
        let state = &*self.core.state;
        self.queue
            .take(worker_id, count, others, |file| state.has_result(file))
    }

    fn refused(&mut self, files: Vec<String>) {
        self.queue.put_back(files);
    }

    fn wants_restarts(&self) -> bool {
        !self.core.state.all_settled()
    }

    async fn receive(&mut self, received: Received, running: bool) -> Option<Stop> {
        // The files a dead worker held go back to the queue, each to run alone.
        let message = match received {
            Received::Reply { message, .. } => Some(message),
            Received::Exited {
                unfinished, crash, ..
            } => {
                self.queue.put_back_suspects(unfinished);
                crash
            }
            Received::Nothing => None,
        };
        let stop = message.and_then(|message| self.reply(message));
        if !running {
            return None;
        }
        for retry in self.core.retries() {
            self.queue.push_retry(retry.unit, retry.avoid.worker_id);
        }
        stop
    }

    async fn received(&mut self) {}

    async fn report(&mut self, message: Message) {
        self.reply(message);
    }

    async fn next_event(&mut self, stage: Stage) {
        if stage == Stage::Running {
            self.tick.tick().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    async fn handle(&mut self, (): (), _stage: Stage) -> Option<Stop> {
        self.core.progress.update(self.core.state);
        None
    }

    fn signalled(&self, signal: StopSignal) -> Stop {
        signal.into()
    }

    fn stopping(&mut self, stop: &Stop) {
        self.core.stopping(stop);
    }

    fn killing(&mut self, why: Kill) {
        if let Kill::Overdue(wait) = why {
            self.core.progress.note(&format!(
                "Workers still running after {} s: stopping them",
                wait.as_secs()
            ));
        }
    }
}
