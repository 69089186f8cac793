//! A job's life on one host, written once: `before_creating_workers` (and the Ruby preload),
//! the worker pool, feeding it files as its workers become idle, taking in their replies,
//! the stop in two stages (the first request stops the workers gently, the second kills
//! them), and `after_creating_workers` at the end.
//!
//! What differs between hosts is behind [`Feed`]: where the files come from and where the
//! replies go. A listener's or a CI node's worker manager feeds from the broker's files queue
//! and publishes the replies (`manager`); `gorgon start --local` feeds from an in-memory
//! [`HandOutQueue`](crate::HandOutQueue) and hands every reply to the originator's
//! reply handling, which says whether to stop and what to queue. One loop
//! ([`HostJob::drive`]) owns the pool and takes one [`Event`] at a time; the decisions it
//! makes on them ([`Stage`]) are synchronous.

use std::ops::RangeInclusive;
use std::time::Duration;

use gorgon_exec::grace;
use gorgon_exec::signals::{StopSignal, StopSignals};
use gorgon_exec::{CallbackFailure, ShellCommand};
use gorgon_protocol::{JobDefinition, Message, WorkerAssignment};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::class_callbacks::HostCallbacks;
use crate::command_base;
use crate::pool::{Pool, PoolEvent, Received, WorkerProgram};

/// How the feed's files have ended, as far as the workers are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEnd {
    /// Every file has a result: the workers finish what they hold and exit.
    Finished,
    /// No more files will come, for `reason` (the originator went, the broker failed): the
    /// workers are stopped, but the job was not cancelled here.
    Failed(String),
}

/// Where a host's files come from and where its workers' replies go.
#[allow(async_fn_in_trait)]
pub trait Feed {
    /// Why the job stops early on this host (a cancel, a signal, a failure).
    type Stop;
    /// What the feed waits for besides the workers and the signals.
    type Event;

    /// Workers' events taken in at most in one turn of the loop (see [`Feed::received`]).
    const DRAINED_AT_ONCE: usize;

    /// Whether the host's log tells of the workers it starts and of its callbacks' failures
    /// (a worker manager's does; a local run shows them in its report instead).
    const LOGS: bool;

    /// At the top of each turn while the job runs: the feed may refill itself (a run's
    /// next phase) or ask to stop.
    async fn refill(&mut self, signals: &mut StopSignals) -> Option<Self::Stop>;

    /// Whether, and how, the files have ended.
    fn ended(&self) -> Option<FeedEnd>;

    /// Whether the host is draining: its workers finish the files they hold and take no
    /// more, and the feed's other files go back (a worker manager whose listener drains).
    fn draining(&self) -> bool {
        false
    }

    /// How many files wait for a worker now.
    fn waiting(&self) -> usize;

    /// Up to `count` files for idle worker `worker_id`; `others` says whether another
    /// worker runs (a retry leaves the worker it failed on to it).
    async fn take(&mut self, worker_id: u32, count: usize, others: bool) -> Vec<String>;

    /// Files a worker could not take, to hand out again.
    fn refused(&mut self, files: Vec<String>);

    /// Whether a crashed worker should be started again (files may still come).
    fn wants_restarts(&self) -> bool;

    /// Takes in what the pool received from a worker; `running` says whether the job still
    /// runs here (it is neither finishing nor stopping). A stop asked for while it runs
    /// stops the workers.
    async fn receive(&mut self, received: Received, running: bool) -> Option<Self::Stop>;

    /// After the workers' events of one turn have all been received.
    async fn received(&mut self);

    /// A message of this host's own (a worker that could not start, a callback that
    /// failed), for the originator.
    async fn report(&mut self, message: Message);

    /// The feed's next event; `stage` says how far the job is. Pending when there is none.
    async fn next_event(&mut self, stage: Stage) -> Self::Event;

    /// Acts on one of the feed's events: a stop asked for stops the workers.
    async fn handle(&mut self, event: Self::Event, stage: Stage) -> Option<Self::Stop>;

    /// The stop a signal asks for.
    fn signalled(&self, signal: StopSignal) -> Self::Stop;

    /// The workers are being stopped for `stop` (they get their grace).
    fn stopping(&mut self, stop: &Self::Stop);

    /// The workers are being killed: a second signal, or the end's time limit.
    fn killing(&mut self, why: Kill);
}

/// Why the workers are killed without grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// A signal came after the workers had been told to stop or finish.
    Signal(StopSignal),
    /// They were still running after the end's time limit.
    Overdue(Duration),
}

/// How far a job is on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Files are handed out as workers become idle.
    Running,
    /// Every file has a result: the workers were told to finish.
    Finishing,
    /// The files ended badly: the workers were stopped, the job was not cancelled here.
    Failed,
    /// Asked to stop: the workers were stopped; another request kills them.
    Stopping,
}

/// How a job's end is bounded, and which signals count once it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A worker manager: workers get all the time they need to finish, and while they do a
    /// signal stops them as a cancel would.
    Patient,
    /// `gorgon start --local`: finishing workers get `finish`, stopping ones `stop`, then
    /// they are killed; once the job ends, only an interrupt (a second Ctrl-C) counts, and
    /// it kills them.
    Bounded { finish: Duration, stop: Duration },
}

/// One turn's event, the only things the loop waits for.
enum Event<F> {
    /// A worker replied or exited.
    Worker(PoolEvent),
    /// The feed has something.
    Feed(F),
    /// A signal asked to stop.
    Signal(StopSignal),
    /// The end's time limit passed.
    Overdue(Duration),
}

/// What the loop does with a stop request, given how far the job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Stop the workers gently.
    Stop,
    /// Kill them.
    Kill,
}

impl Stage {
    /// What a signal means now.
    fn on_signal(self, ending: Ending) -> Request {
        match (self, ending) {
            (Stage::Stopping, _) | (Stage::Finishing | Stage::Failed, Ending::Bounded { .. }) => {
                Request::Kill
            }
            _ => Request::Stop,
        }
    }

    /// Whether a stop asked for by the feed is acted on now.
    fn takes_stop(self) -> bool {
        self != Stage::Stopping
    }

    /// How long the workers get from now, when the job's end is bounded.
    fn end_limit(self, ending: Ending) -> Option<Duration> {
        match (self, ending) {
            (Stage::Running, _) | (_, Ending::Patient) => None,
            (Stage::Finishing | Stage::Failed, Ending::Bounded { finish, .. }) => Some(finish),
            (Stage::Stopping, Ending::Bounded { stop, .. }) => Some(stop),
        }
    }
}

/// A job's workers on one host, with the callbacks around them.
pub struct HostJob {
    pool: Pool,
    events: mpsc::UnboundedReceiver<PoolEvent>,
    /// Workers start as files arrive: a host starts no more of them than it has files for.
    unstarted: RangeInclusive<u32>,
    stage: Stage,
    ending: Ending,
    /// When the workers are killed, once the job ends within a bound.
    deadline: Option<(Instant, Duration)>,
    callbacks: Option<HostCallbacks>,
    definition: JobDefinition,
    base: ShellCommand,
    /// The host, reported with its workers' crashes and its callbacks' failures.
    host: String,
}

impl HostJob {
    /// Runs `before_creating_workers` for `assignment` and prepares its pool of `program`'s
    /// workers (none started yet). When the callback fails, the job still gets its pool,
    /// without callbacks, and the failure's message for the originator.
    pub async fn before_workers(
        program: WorkerProgram,
        assignment: WorkerAssignment,
        ending: Ending,
    ) -> (HostJob, Option<CallbackFailure>) {
        let base = command_base(&assignment);
        let (callbacks, failed) =
            match HostCallbacks::before_workers(&assignment.definition, &base).await {
                Ok(callbacks) => (Some(callbacks), None),
                Err(failure) => (None, Some(failure)),
            };
        let preload = callbacks.as_ref().and_then(HostCallbacks::ruby_preload);
        let definition = assignment.definition.clone();
        let host = assignment.host.clone();
        let slots = assignment.slots;
        let (pool, events) = Pool::new(program, assignment.with_ruby_preload(preload));
        let job = HostJob {
            pool,
            events,
            unstarted: 1..=slots,
            stage: Stage::Running,
            ending,
            deadline: None,
            callbacks,
            definition,
            base,
            host,
        };
        (job, failed)
    }

    /// Starts the first `count` workers now, rather than as files arrive, and no others.
    pub async fn start_workers(&mut self, count: u32, feed: &mut impl Feed) {
        let slots: Vec<u32> = self.unstarted.by_ref().collect();
        for worker_id in slots.into_iter().filter(|&worker_id| worker_id <= count) {
            self.start_worker(worker_id, feed).await;
        }
    }

    /// Runs the job's workers until they have all exited (or were killed at the end's
    /// limit); returns the stop that ended it early, if one did.
    pub async fn drive<F: Feed>(
        &mut self,
        feed: &mut F,
        signals: &mut StopSignals,
    ) -> Option<F::Stop> {
        let mut stopped = None;
        loop {
            if self.stage == Stage::Running {
                if let Some(stop) = feed.refill(signals).await {
                    self.stop(feed, stop, &mut stopped);
                }
            }
            self.pool.restart_crashed().await;
            if self.stage == Stage::Running {
                self.hand_out(feed).await;
            } else if feed.draining() {
                self.pool.close_idle();
            }
            if !self.goes_on(feed) {
                break;
            }
            let event = self.next_event(feed, signals).await;
            let asked = match event {
                Event::Worker(event) => self.take_in(feed, event).await,
                Event::Feed(event) => feed.handle(event, self.stage).await,
                Event::Signal(signal) => match self.stage.on_signal(self.ending) {
                    Request::Stop => Some(feed.signalled(signal)),
                    Request::Kill => {
                        feed.killing(Kill::Signal(signal));
                        self.pool.stop_all(Duration::ZERO);
                        None
                    }
                },
                Event::Overdue(limit) => {
                    feed.killing(Kill::Overdue(limit));
                    self.pool.stop_all(Duration::ZERO);
                    break;
                }
            };
            if let Some(stop) = asked.filter(|_| self.stage.takes_stop()) {
                self.stop(feed, stop, &mut stopped);
            }
        }
        stopped
    }

    /// Runs `after_creating_workers` unless the job was stopped here; its failure, if it
    /// failed.
    pub async fn after_workers(self, stopped: bool) -> Option<CallbackFailure> {
        let callbacks = self.callbacks.filter(|_| !stopped)?;
        callbacks
            .after_workers(&self.definition, &self.base)
            .await
            .err()
    }

    /// The message that tells the originator a callback of this host's failed.
    pub fn callback_failed(&self, failure: CallbackFailure) -> Message {
        crate::callback_failed(&self.host, None, failure)
    }

    /// Whether the loop goes on: a worker runs, or files may come and a slot has no worker.
    fn goes_on(&self, feed: &impl Feed) -> bool {
        self.pool.any_worker()
            || (self.stage == Stage::Running
                && feed.ended().is_none()
                && !self.unstarted.is_empty())
    }

    /// Starts workers for the files that wait, gives every idle worker its next files, and
    /// tells the workers how the files ended once they have.
    async fn hand_out(&mut self, feed: &mut impl Feed) {
        if feed.draining() && feed.ended().is_none() {
            // Each worker exits once it has finished the files it holds (see `drive`).
            self.pool.close_idle();
            self.enter(Stage::Finishing);
            return;
        }
        if feed.ended().is_none() {
            while feed.waiting() > self.pool.wants().len() {
                let Some(worker_id) = self.unstarted.next() else {
                    break;
                };
                self.start_worker(worker_id, feed).await;
            }
            for (worker_id, count) in self.pool.wants() {
                if feed.waiting() == 0 {
                    break;
                }
                let others = self.pool.worker_count() > 1;
                let files = feed.take(worker_id, count, others).await;
                if files.is_empty() {
                    continue;
                }
                let refused = self.pool.give(worker_id, files).await;
                feed.refused(refused);
            }
        }
        match feed.ended() {
            Some(FeedEnd::Finished) => {
                // Every file has a result: each worker runs `after_complete` and exits.
                self.pool.close_all();
                self.enter(Stage::Finishing);
            }
            Some(FeedEnd::Failed(reason)) => {
                tracing::info!("stopping the workers: {reason}");
                self.pool.stop_all(grace::WORKER);
                self.enter(Stage::Failed);
            }
            None => {}
        }
    }

    /// Stops the workers gently for `stop`, the first time it is asked.
    fn stop<F: Feed>(&mut self, feed: &mut F, stop: F::Stop, stopped: &mut Option<F::Stop>) {
        feed.stopping(&stop);
        self.pool.stop_all(grace::WORKER);
        self.enter(Stage::Stopping);
        *stopped = Some(stop);
    }

    fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.deadline = stage
            .end_limit(self.ending)
            .map(|limit| (Instant::now() + limit, limit));
    }

    /// Waits for the next thing to act on.
    async fn next_event<F: Feed>(
        &mut self,
        feed: &mut F,
        signals: &mut StopSignals,
    ) -> Event<F::Event> {
        let only_interrupts = self.stage != Stage::Running && self.ending != Ending::Patient;
        let deadline = self.deadline;
        tokio::select! {
            Some(event) = self.events.recv() => Event::Worker(event),
            event = feed.next_event(self.stage) => Event::Feed(event),
            signal = next_signal(signals, only_interrupts) => Event::Signal(signal),
            () = sleep_until_some(deadline.map(|(at, _)| at)), if deadline.is_some() => {
                Event::Overdue(deadline.map_or(Duration::ZERO, |(_, limit)| limit))
            }
        }
    }

    /// Takes in `first` and the workers' events that are ready now, a bounded number, so
    /// that hand-outs and the feed's events get their turn; a stop asked for ends the turn.
    async fn take_in<F: Feed>(&mut self, feed: &mut F, first: PoolEvent) -> Option<F::Stop> {
        let mut next = Some(first);
        let mut drained = 0;
        let mut asked = None;
        while let Some(event) = next.take() {
            let running = self.stage == Stage::Running;
            let received = self.pool.receive(event, running && feed.wants_restarts());
            if let Some(stop) = feed.receive(received, running).await {
                if running {
                    asked = Some(stop);
                    break;
                }
            }
            drained += 1;
            if drained < F::DRAINED_AT_ONCE {
                next = self.events.try_recv().ok();
            }
        }
        feed.received().await;
        asked
    }

    /// Starts worker `worker_id`, reporting it as crashed when it cannot start.
    async fn start_worker<F: Feed>(&mut self, worker_id: u32, feed: &mut F) {
        if let Err(error) = self.pool.spawn(worker_id).await {
            if F::LOGS {
                tracing::error!(%error, "cannot start worker {worker_id}");
            }
            let message = Message::WorkerCrashed {
                host: self.host.clone(),
                worker_id,
                status: format!("could not start: {error}"),
                output: String::new(),
            };
            feed.report(message).await;
        } else if F::LOGS {
            tracing::info!("worker {worker_id} started");
        }
    }
}

/// The next stop signal; only an interrupt when `only_interrupts`.
async fn next_signal(signals: &mut StopSignals, only_interrupts: bool) -> StopSignal {
    if only_interrupts {
        signals.interrupt().await;
        StopSignal::Interrupt
    } else {
        signals.recv().await
    }
}

/// Resolves at `at` (never without one).
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDED: Ending = Ending::Bounded {
        finish: Duration::from_secs(30),
        stop: Duration::from_secs(5),
    };

    #[test]
    fn the_first_signal_stops_gently_and_the_second_kills() {
        for ending in [Ending::Patient, BOUNDED] {
            assert_eq!(Stage::Running.on_signal(ending), Request::Stop);
            assert_eq!(Stage::Stopping.on_signal(ending), Request::Kill);
        }
        // A manager's finishing workers are cancelled by a signal, with their grace...
        assert_eq!(Stage::Finishing.on_signal(Ending::Patient), Request::Stop);
        assert_eq!(Stage::Failed.on_signal(Ending::Patient), Request::Stop);
        // ...a local run's are killed: they were already told to finish.
        assert_eq!(Stage::Finishing.on_signal(BOUNDED), Request::Kill);
    }

    #[test]
    fn a_stop_counts_once() {
        assert!(Stage::Running.takes_stop());
        assert!(Stage::Finishing.takes_stop());
        assert!(Stage::Failed.takes_stop());
        assert!(!Stage::Stopping.takes_stop());
    }

    #[test]
    fn only_a_bounded_end_has_a_time_limit() {
        for stage in [Stage::Running, Stage::Finishing, Stage::Stopping] {
            assert_eq!(stage.end_limit(Ending::Patient), None);
        }
        assert_eq!(Stage::Running.end_limit(BOUNDED), None);
        assert_eq!(
            Stage::Finishing.end_limit(BOUNDED),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            Stage::Stopping.end_limit(BOUNDED),
            Some(Duration::from_secs(5))
        );
    }
}
