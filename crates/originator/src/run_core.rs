//! The run core: where every engine's replies, retries and phase steps meet the run's
//! [`JobState`]. Each step is bookkeeping, synchronous and unit-tested: it updates the state
//! and returns an [`Outcome`] (what happened, in order; what to queue; whether the run must
//! stop, and why). [`Core`] then tells that outcome, in one fan-out, to the event stream
//! (and the timeline it feeds) and the progress view. The three engines (`distributed`,
//! `local`, and the CI follower in `ci`) call [`Core`] and never tell the watchers a step
//! of the run themselves.

use gorgon_exec::signals::StopSignals;
use gorgon_exec::ShellCommand;
use gorgon_protocol::{FileResult, Message};

use crate::engine::Plan;
use crate::errors::Stop;
use crate::events::{Event, EventSink, ProblemKind};
use crate::phases::Step;
use crate::retries::Retry;
use crate::state::{JobState, Problem, Settled};
use crate::view::Progress;

/// One thing a step of the run did, as the watchers (events, timeline, progress) see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Happened {
    /// A listener (or a local or CI node's manager) took the job with `slots` workers.
    ListenerJoined { host: String, slots: u32 },
    /// A file started on a worker (the first time this run saw it start there).
    FileStarted {
        file: String,
        host: String,
        worker_id: u32,
    },
    /// What is running changed: the counts on the progress bar are redrawn.
    Redraw,
    /// A running file's output.
    Output {
        host: String,
        worker_id: u32,
        file: String,
        text: String,
    },
    /// A file's final result.
    Settled(FileResult),
    /// A retry's result that gives its file the final result that follows it.
    Attempt(FileResult),
    /// A result that is not final: its tests (or file) run again.
    Held(FileResult),
    /// Something that went wrong outside a test file (the state has it); `kind` is its
    /// kind in the event stream, `None` for a problem the stream does not carry.
    Problem {
        kind: Option<ProblemKind>,
        problem: Problem,
    },
    /// A listener finished its part.
    ListenerDone { host: String },
    /// A phase ended, as the walk of the phases left it.
    PhaseFinished { name: String },
    /// A phase started: its files, or (with no files) its command on the originator.
    PhaseStarted {
        name: String,
        units: Vec<String>,
        command: Option<String>,
    },
    /// The run stops before every file has a result.
    Stopping { reason: String },
}

/// What one step of the run did: for the watchers, for the engine to hand out, and
/// whether the run must stop.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Outcome {
    /// What happened, in order.
    pub happened: Vec<Happened>,
    /// The retries to queue, each marked with where it failed.
    pub queue: Vec<Retry>,
    /// Why the run must stop, if it must.
    pub stop: Option<Stop>,
}

impl Outcome {
    fn of(happened: Vec<Happened>) -> Outcome {
        Outcome {
            happened,
            ..Outcome::default()
        }
    }

    fn stopping_for(mut self, reason: Option<String>) -> Outcome {
        self.stop = reason.map(Stop::Failed);
        self
    }
}

/// The host a reply comes from, and what kind of reply it is (for the log), if it names
/// one. A batch ([`Message::Replies`]) is one manager's: its first reply names the host.
pub(crate) fn reply_host(message: &Message) -> Option<(&str, &'static str)> {
    match message {
        Message::Replies { replies } => replies.first().and_then(reply_host),
        Message::FileFinished(result) => Some((&result.host, "a file's result")),
        Message::FileStarted { host, .. } => Some((host, "a file's start")),
        Message::FileOutput { host, .. } => Some((host, "a file's output")),
        Message::JobAccepted { host, .. } => Some((host, "a job's acceptance")),
        Message::JobDone { host } => Some((host, "a job's end")),
        Message::WorkerCrashed { host, .. } => Some((host, "a worker's crash")),
        Message::ManagerCrashed { host, .. } => Some((host, "a manager's crash")),
        Message::CallbackFailed { host, .. } => Some((host, "a callback's failure")),
        Message::SyncFailed { host, .. } => Some((host, "a failed pull")),
        Message::TreeRefused { host, .. } => Some((host, "a refused tree")),
        Message::Artifacts { host, .. } => Some((host, "a job's artifacts")),
        _ => None,
    }
}

/// Whether the state must ignore `message`: a reply from a host that has not taken the job
/// (no `JobAccepted` from it came first), whatever it claims, is logged naming the host
/// and settles nothing. Every host sends its `JobAccepted` before anything else of the
/// job: a listener before it pulls, a CI node before its manager starts, `--local` before
/// its workers.
fn from_a_stranger(state: &JobState, message: &Message) -> bool {
    if matches!(message, Message::JobAccepted { .. }) {
        return false;
    }
    let Some((host, what)) = reply_host(message) else {
        return false;
    };
    if state.has_accepted(host) {
        return false;
    }
    gorgon_protocol::broker::log_refusal(
        host,
        "from a host that has not taken the job",
        &format_args!("{what} from host {host}, which has not taken the job"),
    );
    true
}

/// Applies one reply (not a [`Message::Replies`] batch: see [`Core::reply`]) to the state,
/// unless it comes from a host that has not taken the job.
pub(crate) fn take_reply(
    state: &mut JobState,
    message: Message,
    max_crash_retries: u32,
) -> Outcome {
    if from_a_stranger(state, &message) {
        return Outcome::default();
    }
    apply_reply(state, message, max_crash_retries)
}

/// Applies one reply of a host that took the job.
fn apply_reply(state: &mut JobState, message: Message, max_crash_retries: u32) -> Outcome {
    match message {
        Message::JobAccepted {
            host,
            slots,
            listener_queue,
        } => {
            tracing::info!(%host, slots, "listener took the job");
            state.listener_accepted(&host, slots, listener_queue);
            Outcome::of(vec![Happened::ListenerJoined { host, slots }])
        }
        Message::FileStarted {
            host,
            worker_id,
            file,
        } => {
            let mut happened = Vec::new();
            if state.file_started(&host, worker_id, &file) {
                happened.push(Happened::FileStarted {
                    file,
                    host,
                    worker_id,
                });
            }
            happened.push(Happened::Redraw);
            Outcome::of(happened)
        }
        Message::FileFinished(result) => file_finished(state, result),
        Message::FileOutput {
            host,
            worker_id,
            file,
            text,
        } => Outcome::of(vec![Happened::Output {
            host,
            worker_id,
            file,
            text,
        }]),
        Message::WorkerCrashed {
            host,
            worker_id,
            status,
            output,
        } => worker_crashed(state, host, worker_id, status, output, max_crash_retries),
        message @ (Message::CallbackFailed { .. }
        | Message::SyncFailed { .. }
        | Message::TreeRefused { .. }
        | Message::ManagerCrashed { .. }) => host_problem(state, message),
        Message::JobDone { host } => {
            tracing::info!(%host, "listener finished its part");
            state.listener_done(&host);
            Outcome::of(vec![Happened::ListenerDone { host }, Happened::Redraw])
        }
        other => not_taken_yet(state, other),
    }
}

/// A problem a host reports outside any file: a callback, a pull, its tree or its worker
/// manager failed.
fn host_problem(state: &mut JobState, message: Message) -> Outcome {
    match message {
        Message::CallbackFailed {
            host,
            worker_id,
            callback,
            status,
            output,
        } => {
            let place = match worker_id {
                Some(id) => format!("{host}:{id}"),
                None => host,
            };
            let what = format!("{callback} callback failed on {place}");
            let problem = Problem {
                what: what.clone(),
                status,
                output,
                fails_run: true,
            };
            // After the last result it fails the run without stopping it.
            let stop = (!state.all_settled()).then_some(what);
            problem_of(state, Some(ProblemKind::CallbackFailed), problem).stopping_for(stop)
        }
        Message::SyncFailed { host, output } => {
            let problem = Problem {
                what: format!("{host} could not pull the source tree"),
                status: "rsync failed".into(),
                output,
                fails_run: false,
            };
            problem_of(state, Some(ProblemKind::SyncFailed), problem)
        }
        // Someone changed the tree between the push and the pull: the run is not green
        // even if other hosts run every file.
        Message::TreeRefused { host, reason } => {
            let problem = Problem {
                what: format!(
                    "{host} refused the source tree it pulled: it is not the tree this run pushed"
                ),
                status: "tree changed on the file server".into(),
                output: reason,
                fails_run: true,
            };
            problem_of(state, Some(ProblemKind::TreeRefused), problem)
        }
        Message::ManagerCrashed {
            host,
            status,
            output,
        } => {
            let problem = Problem {
                what: format!("the worker manager on {host} died"),
                status,
                output,
                fails_run: false,
            };
            problem_of(state, Some(ProblemKind::ManagerCrashed), problem)
        }
        other => not_taken_yet(state, other),
    }
}

/// What a listener that has not taken the job says of it: it waits for the listener's
/// slots, or is refused. Anything else does not belong on the reply queue.
fn not_taken_yet(state: &mut JobState, message: Message) -> Outcome {
    match message {
        Message::JobQueued { host, ahead, slots } => {
            tracing::info!(%host, ahead, slots, "a listener has the job waiting for its slots");
            let note =
                format!("has it waiting for its {slots} busy slot(s), behind {ahead} other job(s)");
            state.listener_waiting(&host, note);
        }
        Message::JobRefused { host, reason } => {
            tracing::warn!(%host, %reason, "a listener refused the job");
            state.listener_waiting(&host, format!("refused it: {reason}"));
        }
        other => tracing::warn!(
            ?other,
            "dropping a message that does not belong on the reply queue"
        ),
    }
    Outcome::default()
}

/// A file's result: final, held for its retries, or dropped.
fn file_finished(state: &mut JobState, result: FileResult) -> Outcome {
    let shown = result.clone();
    let happened = match state.file_finished(result) {
        Settled::New => vec![Happened::Settled(shown)],
        Settled::Completed(settled) => vec![Happened::Attempt(shown), Happened::Settled(settled)],
        Settled::Held => vec![Happened::Held(shown)],
        Settled::Duplicate => {
            tracing::info!(file = %shown.file, "dropping a second result for a settled file");
            Vec::new()
        }
        Settled::Unknown => {
            tracing::warn!(file = %shown.file, "dropping a result for a file this run did not queue");
            Vec::new()
        }
    };
    Outcome::of(happened).stopping_for(state.max_fail_reached())
}

/// A worker that died: the file it ran goes back to the queue, or is settled as crashed
/// at the retry limit (before the death is reported).
fn worker_crashed(
    state: &mut JobState,
    host: String,
    worker_id: u32,
    status: String,
    output: String,
    max_crash_retries: u32,
) -> Outcome {
    let settled = state.worker_crashed(&host, worker_id, &status, &output, max_crash_retries);
    let problem = Problem {
        what: format!("worker {worker_id} on {host} died"),
        status,
        output,
        fails_run: false,
    };
    let mut outcome = problem_of(state, Some(ProblemKind::WorkerCrashed), problem);
    if let Some(settled) = settled {
        outcome.happened.insert(0, Happened::Settled(settled));
    }
    outcome.stopping_for(state.max_fail_reached())
}

/// A problem, recorded in the state.
pub(crate) fn problem_of(
    state: &mut JobState,
    kind: Option<ProblemKind>,
    problem: Problem,
) -> Outcome {
    state.add_problem(problem.clone());
    Outcome::of(vec![Happened::Problem { kind, problem }])
}

/// The retries the last replies decided, for the engine to queue.
pub(crate) fn take_retries(state: &mut JobState) -> Outcome {
    Outcome {
        queue: state.take_retries(),
        ..Outcome::default()
    }
}

/// What the walk of the phases asks of the engine after one step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PhaseNext {
    /// No phase is left: the run is over.
    Over,
    /// The files of the phase that started (queued in the state; perhaps none).
    Files(Vec<String>),
    /// Run this phase's command on the originator, then step again.
    Command { name: String, command: String },
}

/// The first failure of the phase that ends, when every file of it has its result.
pub(crate) fn phase_failure(state: &JobState) -> Option<String> {
    state.phases().current().and_then(|phase| {
        let failed = state.failed_among(&phase.units);
        (failed > 0).then(|| {
            let units = crate::view::counted(phase.units.len(), "file");
            format!("{failed} of its {units} failed")
        })
    })
}

/// Ends the current phase (failed for `failure`, if any) and starts the next one.
pub(crate) fn phase_step(state: &mut JobState, failure: Option<String>) -> (Outcome, PhaseNext) {
    let ending = state
        .phases()
        .current()
        .map(|phase| phase.name().to_owned());
    let step = state.phases_mut().advance(failure);
    let mut happened: Vec<Happened> = ending
        .map(|name| Happened::PhaseFinished { name })
        .into_iter()
        .collect();
    let next = match step {
        Step::End => PhaseNext::Over,
        Step::Files { phase, units } => {
            let name = state.phases().list()[phase].name().to_owned();
            state.queue_more(&units);
            happened.push(Happened::PhaseStarted {
                name,
                units: units.clone(),
                command: None,
            });
            PhaseNext::Files(units)
        }
        Step::Command { phase, command } => {
            let name = state.phases().list()[phase].name().to_owned();
            happened.push(Happened::PhaseStarted {
                name: name.clone(),
                units: Vec::new(),
                command: Some(command.clone()),
            });
            PhaseNext::Command { name, command }
        }
    };
    (Outcome::of(happened), next)
}

/// At the end of a run with phases: the phase that ran when the run stopped and the phases
/// that never ran are marked as such.
pub(crate) fn end_phases(state: &mut JobState, stopped_because: Option<&str>) -> Outcome {
    let running = state.phases().current().map(|p| p.name().to_owned());
    state.phases_mut().end(stopped_because);
    let happened = state
        .phases()
        .list()
        .iter()
        .filter(|phase| {
            Some(phase.name()) == running.as_deref()
                || matches!(phase.status, crate::phases::PhaseStatus::NotRun(_))
        })
        .map(|phase| Happened::PhaseFinished {
            name: phase.name().to_owned(),
        })
        .collect();
    Outcome::of(happened)
}

/// What an engine does once every queued file has its result.
pub(crate) enum Advance {
    /// The next phase's files, queued in the state: hand them out.
    Queue(Vec<String>),
    /// No phase is left (or the run has none): the run is over.
    Over,
    /// A stop signal came while a phase's command ran.
    Stopped(Stop),
}

/// The run's state with its watchers: what an engine holds while it runs. Every step goes
/// through the bookkeeping above and then, once, through [`Core::tell`].
pub(crate) struct Core<'a> {
    pub state: &'a mut JobState,
    pub events: &'a mut EventSink,
    pub progress: &'a Progress,
    /// `job.max_crash_retries`.
    max_crash_retries: u32,
    /// Where listeners' artifacts go (a distributed run with `job.artifacts`).
    artifacts: Option<crate::artifacts::ArtifactsFolder>,
}

impl<'a> Core<'a> {
    pub(crate) fn new(
        state: &'a mut JobState,
        events: &'a mut EventSink,
        progress: &'a Progress,
        max_crash_retries: u32,
    ) -> Core<'a> {
        Core {
            state,
            events,
            progress,
            max_crash_retries,
            artifacts: None,
        }
    }

    /// Keeps the artifacts that hosts send under `folder`, at most `limit_bytes` from each
    /// (`job.artifacts`).
    pub(crate) fn keep_artifacts_in(&mut self, folder: std::path::PathBuf, limit_bytes: u64) {
        self.artifacts = Some(crate::artifacts::ArtifactsFolder::new(folder, limit_bytes));
    }

    /// Applies one reply (each of a batch in order, every one applied) and tells what it
    /// did; returns why the run must stop (the first reason of a batch), if it must.
    pub(crate) fn reply(&mut self, message: Message) -> Option<Stop> {
        match message {
            Message::Replies { replies } => replies
                .into_iter()
                .fold(None, |stop, reply| stop.or(self.reply(reply))),
            message @ Message::Artifacts { .. } => {
                self.keep_artifacts(message);
                None
            }
            message => {
                if let Message::JobDone { host } = &message {
                    self.end_artifacts(host);
                }
                let outcome = take_reply(self.state, message, self.max_crash_retries);
                self.tell(&outcome);
                outcome.stop
            }
        }
    }

    /// Writes a host's artifacts, if it took the job and the run asked for them.
    fn keep_artifacts(&mut self, message: Message) {
        if from_a_stranger(self.state, &message) {
            return;
        }
        let Message::Artifacts {
            host,
            files,
            left_out,
            more,
        } = message
        else {
            return;
        };
        let Some(folder) = self.artifacts.as_mut() else {
            tracing::warn!(%host, "dropping artifacts this run did not ask for");
            return;
        };
        tracing::info!(%host, files = files.len(), left_out = left_out.len(), more, "artifacts kept");
        if let Some(line) = folder.keep(&host, &files, &left_out, more) {
            self.progress.note(&line);
        }
    }

    /// Tells what came of a host's artifacts when it is done before its last message of
    /// them came.
    fn end_artifacts(&mut self, host: &str) {
        let line = self
            .artifacts
            .as_mut()
            .and_then(|folder| folder.unfinished(host));
        if let Some(line) = line {
            self.progress.note(&line);
        }
    }

    /// The retries the last replies decided, told, for the engine to queue.
    pub(crate) fn retries(&mut self) -> Vec<Retry> {
        let outcome = take_retries(self.state);
        self.tell(&outcome);
        outcome.queue
    }

    /// Records and tells a problem an engine found itself.
    pub(crate) fn problem(&mut self, kind: Option<ProblemKind>, problem: Problem) {
        let outcome = problem_of(self.state, kind, problem);
        self.tell(&outcome);
    }

    /// Tells that the run stops; returns the reason, for the cancel.
    pub(crate) fn stopping(&mut self, stop: &Stop) -> String {
        let reason = stop.reason();
        self.tell(&Outcome::of(vec![Happened::Stopping {
            reason: reason.clone(),
        }]));
        reason
    }

    /// Ends the current phase of a run with phases, once its files all have results, and
    /// starts the next ones, running command phases here, until one has files (queued in
    /// the state) or none is left.
    pub(crate) async fn advance_phases(
        &mut self,
        plan: &Plan,
        signals: &mut StopSignals,
    ) -> Advance {
        if self.state.phases().is_empty() {
            return Advance::Over;
        }
        let mut failure = phase_failure(self.state);
        loop {
            let (outcome, next) = phase_step(self.state, failure.take());
            self.tell(&outcome);
            match next {
                PhaseNext::Over => return Advance::Over,
                PhaseNext::Files(units) if units.is_empty() => {}
                PhaseNext::Files(units) => return Advance::Queue(units),
                PhaseNext::Command { name, command } => {
                    let run = ShellCommand {
                        command,
                        ..plan.base_command()
                    };
                    let ran = tokio::select! {
                        ran = run.run() => ran,
                        signal = signals.recv() => return Advance::Stopped(signal.into()),
                    };
                    if !ran.success() {
                        let problem = Problem {
                            what: format!("the command of phase {name} failed"),
                            status: ran.description.clone(),
                            output: ran.output,
                            fails_run: true,
                        };
                        self.problem(Some(ProblemKind::PhaseFailed), problem);
                        failure = Some(format!("its command failed ({})", ran.description));
                    }
                }
            }
        }
    }

    /// At the end of a run with phases, marks the phases that did not end by themselves.
    pub(crate) fn end_phases(&mut self, stopped_because: Option<&str>) {
        let outcome = end_phases(self.state, stopped_because);
        self.tell(&outcome);
    }

    /// The fan-out: tells what a step did to the event stream (and so the timeline) and
    /// the progress view, in order. The state has it already.
    pub(crate) fn tell(&mut self, outcome: &Outcome) {
        for happened in &outcome.happened {
            self.tell_one(happened);
        }
        for retry in &outcome.queue {
            self.events.emit(Event::TestRetried {
                unit: retry.unit.clone(),
                attempt: retry.attempt,
                failed_on_host: retry.avoid.host.clone(),
                failed_on_worker_id: retry.avoid.worker_id,
            });
            self.progress.note(&format!(
                "Running {} again (attempt {} of {})",
                retry.unit,
                retry.attempt,
                self.state.retries().policy().retries + 1
            ));
        }
    }

    fn tell_one(&mut self, happened: &Happened) {
        let (state, events, progress) = (&*self.state, &mut *self.events, self.progress);
        match happened.clone() {
            Happened::ListenerJoined { host, slots } => {
                events.emit(Event::ListenerJoined { host, slots });
            }
            Happened::FileStarted {
                file,
                host,
                worker_id,
            } => events.emit(Event::FileStarted {
                file,
                host,
                worker_id,
            }),
            Happened::Redraw => progress.update(state),
            Happened::Output {
                host,
                worker_id,
                file,
                text,
            } => {
                progress.live_output(&format!("{host}:{worker_id}"), &file, &text);
                events.emit(Event::FileOutput {
                    file,
                    host,
                    worker_id,
                    text,
                });
            }
            Happened::Settled(result) => {
                events.emit(Event::file_finished(&result, state));
                progress.file_finished(state, &result);
            }
            Happened::Attempt(result) => events.emit(Event::attempt_finished(&result)),
            Happened::Held(result) => {
                events.emit(Event::attempt_finished(&result));
                progress.attempt_finished(&result);
            }
            Happened::Problem { kind, problem } => {
                progress.problem(&problem);
                if let Some(kind) = kind {
                    events.emit(Event::problem(kind, &problem));
                }
            }
            Happened::ListenerDone { host } => events.emit(Event::ListenerDone { host }),
            Happened::PhaseFinished { name } => {
                let phases = state.phases().list();
                if let Some(phase) = phases.iter().find(|p| p.name() == name) {
                    progress.note(&crate::view::phase_line(phase));
                    events.emit(Event::phase_finished(phase));
                }
            }
            Happened::PhaseStarted {
                name,
                units,
                command,
            } => {
                let files = units.len();
                events.emit(Event::PhaseStarted {
                    name: name.clone(),
                    files: units,
                });
                match command {
                    Some(command) => progress.note(&format!("Phase {name}: running `{command}`")),
                    None => progress.phase_started(&name, files, state),
                }
            }
            Happened::Stopping { reason } => {
                events.emit(Event::Cancelled {
                    reason: reason.clone(),
                });
                progress.note(&format!("Stopping the run: {reason}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Captured;
    use gorgon_protocol::{CallbackName, FileStatus};
    use serde_json::{json, Value};

    /// A run of some files as an engine sees it, fed one reply at a time: the state, quiet
    /// progress, and the event stream kept for reading back.
    struct Replies {
        state: JobState,
        progress: Progress,
        events: EventSink,
        captured: Captured,
        max_crash_retries: u32,
    }

    /// The hosts the tests' replies come from, as having taken the job (without slots, and
    /// without events: the tests of the acceptance itself start from [`Replies::fresh`]).
    pub(super) fn taken_by_the_tests_hosts(mut state: JobState) -> JobState {
        for host in ["h", "h1", "h2", "h3"] {
            state.listener_accepted(host, 0, None);
        }
        state
    }

    impl Replies {
        /// A run that the tests' hosts have taken.
        fn new(files: &[&str], max_crash_retries: u32) -> Replies {
            let mut replies = Replies::fresh(files, max_crash_retries);
            replies.state = taken_by_the_tests_hosts(replies.state);
            replies
        }

        /// A run that no host has taken yet.
        fn fresh(files: &[&str], max_crash_retries: u32) -> Replies {
            let captured = Captured::default();
            Replies {
                state: JobState::new(files.iter().map(|f| f.to_string()).collect()),
                progress: Progress::new(files.len(), true),
                events: captured.sink(),
                captured,
                max_crash_retries,
            }
        }

        fn send(&mut self, message: Message) -> Option<String> {
            let mut core = Core::new(
                &mut self.state,
                &mut self.events,
                &self.progress,
                self.max_crash_retries,
            );
            core.reply(message).as_ref().map(Stop::reason)
        }

        /// The `event` field of every event emitted so far.
        fn kinds(&self) -> Vec<String> {
            self.captured
                .events()
                .iter()
                .map(|event| event["event"].as_str().unwrap().to_owned())
                .collect()
        }

        /// The events emitted so far of one kind.
        fn events_of(&self, kind: &str) -> Vec<Value> {
            self.captured
                .events()
                .into_iter()
                .filter(|event| event["event"] == kind)
                .collect()
        }
    }

    fn started(host: &str, worker_id: u32, file: &str) -> Message {
        Message::FileStarted {
            host: host.into(),
            worker_id,
            file: file.into(),
        }
    }

    fn finished(host: &str, file: &str, status: FileStatus) -> Message {
        Message::FileFinished(crate::state::tests::result(file, host, status))
    }

    fn crashed(host: &str, worker_id: u32, output: &str) -> Message {
        Message::WorkerCrashed {
            host: host.into(),
            worker_id,
            status: "killed by signal 9 (SIGKILL)".into(),
            output: output.into(),
        }
    }

    #[test]
    fn a_listener_that_takes_the_job_and_finishes_it_is_recorded() {
        let mut run = Replies::fresh(&["a"], 2);
        let accepted = Message::JobAccepted {
            host: "alpha".into(),
            slots: 3,
            listener_queue: Some("listener.alpha".into()),
        };
        assert_eq!(run.send(accepted), None);
        assert!(run.state.any_listener_accepted());
        assert_eq!(run.state.slots(), 3);
        assert_eq!(run.state.listeners_working(), ["alpha"]);
        assert_eq!(
            run.state.working_listener_queues(),
            [("alpha".to_string(), "listener.alpha".to_string())]
        );
        assert_eq!(
            run.events_of("listener_joined")[0]["slots"],
            json!(3),
            "{:?}",
            run.kinds()
        );

        run.send(started("alpha", 1, "a"));
        assert_eq!(run.state.workers_running(), 1);
        assert_eq!(
            run.send(Message::JobDone {
                host: "alpha".into()
            }),
            None
        );
        assert!(run.state.all_listeners_done());
        // What a finished listener was running is no longer counted as running.
        assert_eq!(run.state.workers_running(), 0);
        assert!(run.state.working_listener_queues().is_empty());
        assert_eq!(
            run.kinds(),
            ["listener_joined", "file_started", "listener_done"]
        );
        assert_eq!(run.events_of("listener_done")[0]["host"], "alpha");
    }

    #[test]
    fn replies_sent_together_are_applied_in_order_and_a_stop_among_them_is_kept() {
        let mut run = Replies::new(&["a", "b"], 2);
        let callback_failed = Message::CallbackFailed {
            host: "h1".into(),
            worker_id: Some(1),
            callback: gorgon_protocol::CallbackName::AfterComplete,
            status: "exit status 3".into(),
            output: String::new(),
        };
        let together = Message::Replies {
            replies: vec![
                started("h1", 1, "a"),
                finished("h1", "a", FileStatus::Passed),
                started("h1", 1, "b"),
                callback_failed,
                finished("h1", "b", FileStatus::Failed),
            ],
        };
        let reason = run.send(together);
        assert_eq!(
            reason.as_deref(),
            Some("after_complete callback failed on h1:1")
        );
        assert_eq!(
            run.kinds(),
            [
                "file_started",
                "file_finished",
                "file_started",
                "problem",
                "file_finished"
            ]
        );
        // What came after the stop's reason was applied too.
        assert_eq!(run.state.result("b").unwrap().status, FileStatus::Failed);
        assert!(run.state.all_settled());
    }

    #[test]
    fn a_file_is_settled_by_its_first_result_and_a_second_is_dropped() {
        let mut run = Replies::new(&["a", "b"], 2);
        assert_eq!(run.send(started("h1", 1, "a")), None);
        assert_eq!(run.send(finished("h1", "a", FileStatus::Failed)), None);
        // A redelivered file that finished twice, elsewhere and green the second time.
        assert_eq!(run.send(finished("h2", "a", FileStatus::Passed)), None);
        let result = run.state.result("a").unwrap();
        assert_eq!(result.status, FileStatus::Failed);
        assert_eq!(result.host, "h1");
        assert_eq!(run.state.finished(), 1);
        assert_eq!(run.state.count(FileStatus::Passed), 0);
        let settled = run.events_of("file_finished");
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0]["host"], "h1");
        assert_eq!(settled[0]["status"], "failed");

        // A settled file that starts again, and a file this run did not queue, leave no trace.
        run.send(started("h2", 1, "a"));
        run.send(started("h2", 1, "zzz"));
        run.send(finished("h2", "zzz", FileStatus::Passed));
        assert_eq!(run.state.finished(), 1);
        assert_eq!(run.state.workers_running(), 0);
        assert_eq!(run.kinds(), ["file_started", "file_finished"]);
        assert_eq!(run.state.unfinished(), ["b"]);
    }

    #[test]
    fn a_file_that_kills_its_workers_is_settled_as_crashed_at_the_retry_limit() {
        let mut run = Replies::new(&["killer", "fine"], 2);
        run.send(started("h", 1, "killer"));
        assert_eq!(run.send(crashed("h", 1, "")), None);
        // One death of two allowed: the file goes back to the queue, unsettled.
        assert!(!run.state.has_result("killer"));
        assert!(run.events_of("file_finished").is_empty());
        let problems = run.events_of("problem");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0]["kind"], "worker_crashed");
        assert_eq!(problems[0]["what"], "worker 1 on h died");
        assert_eq!(problems[0]["fails_run"], false);

        run.send(started("h", 2, "killer"));
        assert_eq!(run.send(crashed("h", 2, "last words")), None);
        let result = run.state.result("killer").unwrap();
        assert_eq!(result.status, FileStatus::Crashed);
        assert_eq!(result.output, "last words");
        assert!(result.exit.contains("died 2 times"), "{}", result.exit);
        // The crash is settled before the death is reported as a problem.
        assert_eq!(
            run.kinds(),
            [
                "file_started",
                "problem",
                "file_started",
                "file_finished",
                "problem"
            ]
        );
        assert_eq!(run.events_of("file_finished")[0]["status"], "crashed");
        assert_eq!(run.state.problems().len(), 2);
        assert_eq!(run.state.unfinished(), ["fine"]);
        // A late result of the settled file is a duplicate.
        run.send(finished("h", "killer", FileStatus::Passed));
        assert_eq!(
            run.state.result("killer").unwrap().status,
            FileStatus::Crashed
        );
    }

    #[test]
    fn the_retry_limit_is_the_one_the_engine_passes() {
        let mut run = Replies::new(&["killer"], 1);
        run.send(started("h", 1, "killer"));
        run.send(crashed("h", 1, ""));
        assert_eq!(
            run.state.result("killer").map(|r| r.status),
            Some(FileStatus::Crashed)
        );
    }

    #[test]
    fn a_failed_callback_stops_a_run_that_has_files_left_with_its_reason() {
        let mut run = Replies::new(&["a"], 2);
        let failed = Message::CallbackFailed {
            host: "h".into(),
            worker_id: Some(3),
            callback: CallbackName::BeforeStart,
            status: "exit status 5".into(),
            output: "no database".into(),
        };
        assert_eq!(
            run.send(failed).as_deref(),
            Some("before_start callback failed on h:3")
        );
        let problem = &run.state.problems()[0];
        assert_eq!(problem.what, "before_start callback failed on h:3");
        assert_eq!(problem.status, "exit status 5");
        assert_eq!(problem.output, "no database");
        assert!(problem.fails_run);
        assert_eq!(run.events_of("problem")[0]["kind"], "callback_failed");

        // A callback of the host rather than of one worker is named by the host alone.
        let failed = Message::CallbackFailed {
            host: "h".into(),
            worker_id: None,
            callback: CallbackName::AfterSync,
            status: "exit status 1".into(),
            output: String::new(),
        };
        assert_eq!(
            run.send(failed).as_deref(),
            Some("after_sync callback failed on h")
        );
    }

    #[test]
    fn a_failed_callback_after_the_last_result_fails_the_run_without_stopping_it() {
        let mut run = Replies::new(&["a"], 2);
        run.send(finished("h", "a", FileStatus::Passed));
        assert!(run.state.passed());
        let failed = Message::CallbackFailed {
            host: "h".into(),
            worker_id: Some(1),
            callback: CallbackName::AfterComplete,
            status: "exit status 1".into(),
            output: String::new(),
        };
        assert_eq!(run.send(failed), None);
        assert!(!run.state.passed());
    }

    #[test]
    fn a_failed_pull_or_a_dead_manager_is_a_problem_that_does_not_fail_the_run() {
        let mut run = Replies::new(&["a"], 2);
        let sync = Message::SyncFailed {
            host: "h1".into(),
            output: "connection refused".into(),
        };
        let manager = Message::ManagerCrashed {
            host: "h2".into(),
            status: "exit status 101".into(),
            output: String::new(),
        };
        assert_eq!(run.send(sync), None);
        assert_eq!(run.send(manager), None);
        let whats: Vec<&str> = run
            .state
            .problems()
            .iter()
            .map(|p| p.what.as_str())
            .collect();
        assert_eq!(
            whats,
            [
                "h1 could not pull the source tree",
                "the worker manager on h2 died"
            ]
        );
        let kinds: Vec<Value> = run
            .events_of("problem")
            .iter()
            .map(|p| p["kind"].clone())
            .collect();
        assert_eq!(kinds, [json!("sync_failed"), json!("manager_crashed")]);
        run.send(finished("h3", "a", FileStatus::Passed));
        assert!(run.state.passed());
    }

    #[test]
    fn a_message_that_does_not_belong_on_the_reply_queue_is_dropped() {
        let mut run = Replies::fresh(&["a"], 2);
        assert_eq!(run.send(Message::file("a")), None);
        assert!(run.kinds().is_empty());
        assert_eq!(run.state.finished(), 0);
        assert!(run.state.problems().is_empty());
        assert!(!run.state.any_listener_accepted());
    }

    #[test]
    fn replies_from_a_host_that_has_not_taken_the_job_settle_nothing() {
        let mut run = Replies::fresh(&["a", "b"], 1);
        run.send(Message::JobAccepted {
            host: "honest".into(),
            slots: 1,
            listener_queue: None,
        });
        // A stranger's results, start, crash, callback failure and end, alone and inside
        // replies sent together: none of them counts, stops the run or is told.
        run.send(finished("EVIL", "a", FileStatus::Passed));
        run.send(Message::Replies {
            replies: vec![
                started("EVIL", 1, "b"),
                finished("EVIL", "b", FileStatus::Passed),
            ],
        });
        run.send(crashed("EVIL", 1, ""));
        let callback = Message::CallbackFailed {
            host: "EVIL".into(),
            worker_id: None,
            callback: CallbackName::AfterSync,
            status: "exit status 1".into(),
            output: String::new(),
        };
        assert_eq!(run.send(callback), None);
        run.send(Message::JobDone {
            host: "EVIL".into(),
        });
        assert_eq!(run.state.finished(), 0);
        assert_eq!(run.state.workers_running(), 0);
        assert!(run.state.problems().is_empty());
        assert_eq!(run.state.listeners_working(), ["honest"]);
        assert!(!run.state.has_run_files("EVIL"));
        assert_eq!(run.kinds(), ["listener_joined"]);

        // The real results, which come later, are the run's.
        run.send(started("honest", 1, "a"));
        run.send(finished("honest", "a", FileStatus::Failed));
        run.send(finished("honest", "b", FileStatus::Failed));
        assert_eq!(run.state.count(FileStatus::Failed), 2);
        assert!(run.state.all_settled());
        assert!(!run.state.passed());
    }

    #[test]
    fn every_reply_that_names_a_host_is_checked_by_it() {
        let output = Message::FileOutput {
            host: "x".into(),
            worker_id: 1,
            file: "a".into(),
            text: "hi".into(),
        };
        let sync = Message::SyncFailed {
            host: "x".into(),
            output: String::new(),
        };
        for message in [output, sync, crashed("x", 1, ""), started("x", 1, "a")] {
            assert_eq!(reply_host(&message).map(|(host, _)| host), Some("x"));
        }
        assert_eq!(reply_host(&Message::file("a")), None);
    }

    /// The pure steps of the core, without watchers: what each returns.
    mod outcomes {
        use super::*;
        use crate::phases::{PhaseSettings, Phases};
        use crate::retries::RetryPolicy;
        use crate::state::tests::result;

        fn state(files: &[&str]) -> JobState {
            taken_by_the_tests_hosts(JobState::new(files.iter().map(|f| f.to_string()).collect()))
        }

        #[test]
        fn a_failure_with_retries_left_is_held_and_its_retry_is_to_queue() {
            let mut state = state(&["a"]).with_retries(RetryPolicy {
                retries: 1,
                budget: None,
            });
            let failed = result("a", "h1", FileStatus::Failed);
            let outcome = take_reply(&mut state, Message::FileFinished(failed.clone()), 2);
            assert_eq!(outcome.happened, [Happened::Held(failed)]);
            assert_eq!(outcome.stop, None);
            assert!(outcome.queue.is_empty());
            let retries = take_retries(&mut state);
            assert!(retries.happened.is_empty());
            let queued: Vec<(&str, u32, &str)> = retries
                .queue
                .iter()
                .map(|r| (r.unit.as_str(), r.attempt, r.avoid.host.as_str()))
                .collect();
            assert_eq!(queued, [("a", 2, "h1")]);
            // Taken once: the next call has none.
            assert_eq!(take_retries(&mut state), Outcome::default());

            let passed = result("a", "h2", FileStatus::Passed);
            let outcome = take_reply(&mut state, Message::FileFinished(passed.clone()), 2);
            assert!(
                matches!(&outcome.happened[..], [Happened::Attempt(attempt), Happened::Settled(_)] if *attempt == passed),
                "{outcome:?}"
            );
            assert!(state.all_settled());
        }

        #[test]
        fn a_crash_at_the_limit_settles_the_file_before_the_problem_and_max_fail_stops() {
            let mut state = state(&["killer", "b", "c"]).with_max_fail(Some(1));
            take_reply(&mut state, started("h", 1, "killer"), 1);
            let outcome = take_reply(&mut state, crashed("h", 1, "bye"), 1);
            let kinds: Vec<&str> = outcome
                .happened
                .iter()
                .map(|happened| match happened {
                    Happened::Settled(_) => "settled",
                    Happened::Problem { .. } => "problem",
                    _ => "other",
                })
                .collect();
            assert_eq!(kinds, ["settled", "problem"]);
            assert!(matches!(
                &outcome.happened[1],
                Happened::Problem { kind: Some(ProblemKind::WorkerCrashed), problem } if problem.what == "worker 1 on h died"
            ));
            assert_eq!(state.problems().len(), 1);
            let Some(Stop::Failed(reason)) = outcome.stop else {
                panic!("{outcome:?}")
            };
            assert!(reason.contains("--max-fail 1"), "{reason}");
        }

        #[test]
        fn a_start_is_told_once_and_redraws_every_time() {
            let mut state = state(&["a"]);
            let first = take_reply(&mut state, started("h", 1, "a"), 2);
            assert!(matches!(
                &first.happened[..],
                [Happened::FileStarted { .. }, Happened::Redraw]
            ));
            let unknown = take_reply(&mut state, started("h", 1, "zzz"), 2);
            assert_eq!(unknown.happened, [Happened::Redraw]);
        }

        fn phase(name: &str, files: &[&str], command: Option<&str>) -> PhaseSettings {
            PhaseSettings {
                name: name.into(),
                files: files.iter().map(|f| f.to_string()).collect(),
                command: command.map(str::to_owned),
                ..PhaseSettings::default()
            }
        }

        /// A phase of files, then a command phase.
        fn unit_then_report() -> JobState {
            let phases = Phases::new(vec![
                (phase("unit", &["u*"], None), vec!["u1".into()]),
                (phase("report", &[], Some("echo done")), vec![]),
            ]);
            taken_by_the_tests_hosts(JobState::new(Vec::new()).with_phases(phases))
        }

        #[test]
        fn the_phases_are_walked_one_step_at_a_time() {
            let mut state = unit_then_report();
            assert_eq!(phase_failure(&state), None);
            let (outcome, next) = phase_step(&mut state, None);
            assert_eq!(next, PhaseNext::Files(vec!["u1".into()]));
            assert_eq!(
                outcome.happened,
                [Happened::PhaseStarted {
                    name: "unit".into(),
                    units: vec!["u1".into()],
                    command: None
                }]
            );
            assert_eq!(state.queued(), ["u1"]);

            take_reply(&mut state, finished("h", "u1", FileStatus::Passed), 2);
            assert_eq!(phase_failure(&state), None);
            let (outcome, next) = phase_step(&mut state, None);
            assert_eq!(
                next,
                PhaseNext::Command {
                    name: "report".into(),
                    command: "echo done".into()
                }
            );
            assert!(matches!(
                &outcome.happened[..],
                [Happened::PhaseFinished { name }, Happened::PhaseStarted { command: Some(_), .. }] if name == "unit"
            ));
        }

        #[test]
        fn a_phase_with_failures_ends_failed_and_a_phase_without_a_way_on_ends_the_run() {
            let mut state = unit_then_report();
            phase_step(&mut state, None);
            take_reply(&mut state, finished("h", "u1", FileStatus::Failed), 2);
            let failure = phase_failure(&state);
            assert_eq!(failure.as_deref(), Some("1 of its 1 file failed"));
            let (outcome, next) = phase_step(&mut state, failure);
            assert_eq!(next, PhaseNext::Over);
            assert_eq!(
                outcome.happened,
                [Happened::PhaseFinished {
                    name: "unit".into()
                }]
            );
        }

        #[test]
        fn a_stopped_run_marks_its_running_phase_and_those_never_run() {
            let phases = Phases::new(vec![
                (phase("unit", &["u*"], None), vec!["u1".into()]),
                (phase("integration", &["i*"], None), vec!["i1".into()]),
            ]);
            let mut state = JobState::new(Vec::new()).with_phases(phases);
            phase_step(&mut state, None);
            let outcome = end_phases(&mut state, Some("interrupted (Ctrl-C)"));
            let names: Vec<&str> = outcome
                .happened
                .iter()
                .filter_map(|happened| match happened {
                    Happened::PhaseFinished { name } => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(names, ["unit", "integration"]);
            assert_eq!(outcome.stop, None);
        }
    }
}
