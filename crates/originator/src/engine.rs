//! What both engines of `gorgon start` share with the run that hands them the job: the
//! [`Plan`] they run, why an engine stops early ([`Stop`]), the errors of a run
//! ([`StartError`]), and [`handle_reply`], where every reply of either engine meets the
//! [`JobState`], the progress view and the event sink. It sits below `run` and the engines
//! (`run` → `distributed`/`local` → `engine`), so no engine needs `run`.

use std::path::PathBuf;
use std::time::Instant;

use gorgon_exec::rsync;
use gorgon_exec::signals::{StopSignal, StopSignals};
use gorgon_exec::tags::JobTags;
use gorgon_exec::{run_callback, ShellCommand};
use gorgon_protocol::{exit_code, BrokerError, CallbackName, Message};
use uuid::Uuid;

use crate::events::{Event, EventSink, ProblemKind};
use crate::files::{self, FilesError};
use crate::phases::{PhaseStatus, Step};
use crate::rerun::RerunError;
use crate::retries::Retry;
use crate::settings::{ConfigError, Settings, StartOptions};
use crate::state::{JobState, Problem, Settled};
use crate::view::Progress;

/// A run that could not start or went wrong outside the tests, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Rerun(#[from] RerunError),
    #[error(transparent)]
    Quarantine(#[from] crate::quarantine::QuarantineError),
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error(transparent)]
    Runner(#[from] gorgon_protocol::RunnerChoiceError),
    #[error("cannot write the events file {}: {source}", path.display())]
    EventsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there are no files to test: no file matches {0}")]
    NoFiles(String),
    #[error("{0} belongs to no phase: it matches the files of none of the configuration's phases")]
    NoPhase(String),
    /// A CI build (`gorgon work`, `gorgon report --build-id`) that this node or reporter
    /// cannot take part in as configured (no build id, a checkout that differs).
    #[error("{0}")]
    Build(String),
    /// A CI build that did not run: no node came, or its results are gone.
    #[error("{0}")]
    BuildLost(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("pushing the source tree to the file server failed: {0}")]
    Push(rsync::RsyncError),
    #[error("{0}\n{1}")]
    BeforeOriginate(gorgon_exec::CallbackFailure, String),
    #[error("cannot start the local workers: {0}")]
    LocalWorkers(std::io::Error),
    /// A stop signal before the job was published (during `before_originate`, the push).
    #[error("{} while {during}", stopped_by(*.signal))]
    Stopped {
        signal: StopSignal,
        during: &'static str,
    },
}

/// How a stop signal reads in a sentence.
fn stopped_by(signal: StopSignal) -> &'static str {
    match signal {
        StopSignal::Interrupt => "interrupted",
        StopSignal::Terminate => "terminated",
    }
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Push(_) => exit_code::SYNC_FAILED,
            StartError::BeforeOriginate(..)
            | StartError::LocalWorkers(_)
            | StartError::BuildLost(_) => exit_code::FAILURE,
            StartError::Stopped {
                signal: StopSignal::Interrupt,
                ..
            } => exit_code::INTERRUPTED,
            StartError::Stopped {
                signal: StopSignal::Terminate,
                ..
            } => exit_code::TERMINATED,
            _ => exit_code::CONFIG_OR_BROKER,
        }
    }
}

/// Why an engine stopped before every file had a result.
pub(crate) enum Stop {
    Interrupted,
    Terminated,
    Failed(String),
    /// The broker stayed away past `connection.outage_limit`.
    BrokerLost(String),
}

impl Stop {
    /// The exit code of a run that a signal stopped (or that failed).
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Stop::Interrupted => exit_code::INTERRUPTED,
            Stop::Terminated => exit_code::TERMINATED,
            Stop::Failed(_) => exit_code::FAILURE,
            Stop::BrokerLost(_) => exit_code::CONFIG_OR_BROKER,
        }
    }
}

impl From<StopSignal> for Stop {
    fn from(signal: StopSignal) -> Stop {
        match signal {
            StopSignal::Interrupt => Stop::Interrupted,
            StopSignal::Terminate => Stop::Terminated,
        }
    }
}

impl Stop {
    /// The reason shown in the report and sent with a cancel.
    pub(crate) fn reason(&self) -> String {
        match self {
            Stop::Interrupted => "interrupted (Ctrl-C)".to_owned(),
            Stop::Terminated => "terminated (SIGTERM)".to_owned(),
            Stop::Failed(reason) | Stop::BrokerLost(reason) => reason.clone(),
        }
    }

    /// Records the stop in the event stream and on the progress lines; returns its reason.
    pub(crate) fn announce(&self, events: &mut EventSink, progress: &Progress) -> String {
        let reason = self.reason();
        events.emit(Event::Cancelled {
            reason: reason.clone(),
        });
        progress.note(&format!("Stopping the run: {reason}"));
        reason
    }
}

/// After how long a running file whose output nobody asked for sends it anyway, so that a
/// file that hangs shows its last lines beside the progress bar (and in the events).
pub const LIVE_AFTER_SECONDS: f64 = 2.0;

/// Everything a run knows before an engine takes it: the settings and the files.
pub(crate) struct Plan {
    pub options: StartOptions,
    pub settings: Settings,
    /// The runtime file as read, updated with this run's timings at the end.
    pub history: files::History,
    /// The `quarantine_file` as read, until the run's state takes it.
    pub quarantine: crate::quarantine::Quarantine,
    pub job_id: Uuid,
    pub project: String,
    /// This machine's host name.
    pub host: String,
    pub started: Instant,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl Plan {
    /// Which files' output the workers stream: those `--live-output` names (every file
    /// when it names none), and every file when the run writes events.
    pub(crate) fn live_output(&self) -> gorgon_protocol::LiveOutput {
        let shown = &self.options.live_output;
        gorgon_protocol::LiveOutput {
            enabled: shown.is_some() || self.options.events.is_some(),
            files: match (shown, &self.options.events) {
                (Some(files), None) => files.clone(),
                _ => Vec::new(),
            },
            others_after_seconds: Some(LIVE_AFTER_SECONDS),
        }
    }

    /// The progress display of this run, with the live output `--live-output` asks for.
    pub(crate) fn progress(&self, total: usize) -> Progress {
        let events_on_stdout = self.options.events.as_deref() == Some(std::path::Path::new("-"));
        Progress::new(total, self.options.quiet)
            .with_live_output(self.options.live_output.clone(), events_on_stdout)
    }

    /// The tags of what the originator starts: this job on this host.
    pub(crate) fn tags(&self) -> JobTags {
        JobTags::new(self.job_id, &self.host)
    }

    /// The base of the originator's callbacks, run in the project with Gorgon's environment.
    pub(crate) fn base_command(&self) -> ShellCommand {
        ShellCommand::new("", &self.settings.project_root).envs(self.tags().pairs())
    }

    /// Runs `before_originate`; its failure, or a stop signal meanwhile (which kills it),
    /// ends the run before anything is handed out. Returns the cluster id it named, if it
    /// did (a Gorgon callbacks class's `before_originate` returns it).
    pub(crate) async fn before_originate(
        &self,
        signals: &mut StopSignals,
    ) -> Result<Option<String>, StartError> {
        let command = self.settings.callbacks.before_originate.as_deref();
        let base = self.base_command();
        let callback = run_callback(CallbackName::BeforeOriginate, command, &base);
        let ran = tokio::select! {
            ran = callback => ran,
            signal = signals.recv() => {
                return Err(StartError::Stopped { signal, during: "running before_originate" })
            }
        };
        let output = ran.map_err(|failure| {
            let output = failure.output.clone();
            StartError::BeforeOriginate(failure, output)
        })?;
        Ok(output
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(crate::settings::CLUSTER_ID_LINE))
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty()))
    }
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

/// Ends the current phase of a run with phases, once its files all have results, and starts
/// the next ones, running command phases here, until one has files (queued in `state`) or
/// none is left.
pub(crate) async fn advance_phases(
    plan: &Plan,
    state: &mut JobState,
    events: &mut EventSink,
    progress: &Progress,
    signals: &mut StopSignals,
) -> Advance {
    if state.phases().is_empty() {
        return Advance::Over;
    }
    let mut failure = state.phases().current().and_then(|phase| {
        let failed = state.failed_among(&phase.units);
        (failed > 0).then(|| format!("{failed} of its {} files failed", phase.units.len()))
    });
    loop {
        let ending = state
            .phases()
            .current()
            .map(|phase| phase.name().to_owned());
        let step = state.phases_mut().advance(failure.take());
        if let Some(name) = ending {
            emit_phase_finished(state, events, progress, &name);
        }
        match step {
            Step::End => return Advance::Over,
            Step::Files { phase, units } => {
                let name = state.phases().list()[phase].name().to_owned();
                events.emit(Event::PhaseStarted {
                    name: name.clone(),
                    files: units.clone(),
                });
                state.queue_more(&units);
                progress.phase_started(&name, units.len(), state);
                if !units.is_empty() {
                    return Advance::Queue(units);
                }
            }
            Step::Command { phase, command } => {
                let name = state.phases().list()[phase].name().to_owned();
                events.emit(Event::PhaseStarted {
                    name: name.clone(),
                    files: Vec::new(),
                });
                progress.note(&format!("Phase {name}: running `{command}`"));
                let run = ShellCommand {
                    command: command.clone(),
                    ..plan.base_command()
                };
                let outcome = tokio::select! {
                    outcome = run.run() => outcome,
                    signal = signals.recv() => return Advance::Stopped(signal.into()),
                };
                if !outcome.success() {
                    let problem = Problem {
                        what: format!("the command of phase {name} failed"),
                        status: outcome.description.clone(),
                        output: outcome.output,
                        fails_run: true,
                    };
                    progress.problem(&problem);
                    events.emit(Event::problem(ProblemKind::PhaseFailed, &problem));
                    state.add_problem(problem);
                    failure = Some(format!("its command failed ({})", outcome.description));
                }
            }
        }
    }
}

/// Says that phase `name` ended, as the walk left it.
fn emit_phase_finished(state: &JobState, events: &mut EventSink, progress: &Progress, name: &str) {
    let Some(phase) = state.phases().list().iter().find(|p| p.name() == name) else {
        return;
    };
    let event = Event::phase_finished(phase);
    progress.note(&crate::view::phase_line(phase));
    events.emit(event);
}

/// At the end of a run with phases: the phase that ran when the run stopped and the phases
/// that never ran are marked (and said) as such.
pub(crate) fn end_phases(
    state: &mut JobState,
    events: &mut EventSink,
    stopped_because: Option<&str>,
) {
    let running = state.phases().current().map(|p| p.name().to_owned());
    state.phases_mut().end(stopped_because);
    for phase in state.phases().list() {
        let ended_here = Some(phase.name()) == running.as_deref();
        if ended_here || matches!(phase.status, PhaseStatus::NotRun(_)) {
            events.emit(Event::phase_finished(phase));
        }
    }
}

/// Applies one reply to the state; returns a reason when it means the run must stop.
pub(crate) fn handle_reply(
    state: &mut JobState,
    progress: &Progress,
    events: &mut EventSink,
    max_crash_retries: u32,
    message: Message,
) -> Option<String> {
    match message {
        Message::Replies { replies } => {
            // Each in order, every one applied; the first reason to stop is the one given.
            return replies.into_iter().fold(None, |reason, reply| {
                let next = handle_reply(state, progress, events, max_crash_retries, reply);
                reason.or(next)
            });
        }
        Message::JobAccepted {
            host,
            slots,
            listener_queue,
        } => {
            tracing::info!(%host, slots, "listener took the job");
            events.emit(Event::ListenerJoined {
                host: host.clone(),
                slots,
            });
            state.listener_accepted(&host, slots, listener_queue);
        }
        Message::FileStarted {
            host,
            worker_id,
            file,
        } => {
            if state.file_started(&host, worker_id, &file) {
                events.emit(Event::FileStarted {
                    file,
                    host,
                    worker_id,
                });
            }
            progress.update(state);
        }
        Message::FileFinished(result) => {
            let shown = result.clone();
            match state.file_finished(result) {
                Settled::New => {
                    events.emit(Event::file_finished(&shown, state));
                    progress.file_finished(state, &shown)
                }
                Settled::Completed(settled) => {
                    events.emit(Event::attempt_finished(&shown));
                    events.emit(Event::file_finished(&settled, state));
                    progress.file_finished(state, &settled)
                }
                Settled::Held => {
                    events.emit(Event::attempt_finished(&shown));
                    progress.attempt_finished(&shown);
                }
                Settled::Duplicate => {
                    tracing::info!(file = %shown.file, "dropping a second result for a settled file")
                }
                Settled::Unknown => {
                    tracing::warn!(file = %shown.file, "dropping a result for a file this run did not queue")
                }
            }
            return state.max_fail_reached();
        }
        Message::FileOutput {
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
            let problem = Problem {
                what: format!("{callback} callback failed on {place}"),
                status,
                output,
                fails_run: true,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::CallbackFailed, &problem));
            let reason = problem.what.clone();
            state.add_problem(problem);
            if !state.all_settled() {
                return Some(reason);
            }
        }
        Message::SyncFailed { host, output } => {
            let problem = Problem {
                what: format!("{host} could not pull the source tree"),
                status: "rsync failed".into(),
                output,
                fails_run: false,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::SyncFailed, &problem));
            state.add_problem(problem);
        }
        Message::WorkerCrashed {
            host,
            worker_id,
            status,
            output,
        } => {
            if let Some(settled) =
                state.worker_crashed(&host, worker_id, &status, &output, max_crash_retries)
            {
                events.emit(Event::file_finished(&settled, state));
                progress.file_finished(state, &settled);
            }
            let problem = Problem {
                what: format!("worker {worker_id} on {host} died"),
                status,
                output,
                fails_run: false,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::WorkerCrashed, &problem));
            state.add_problem(problem);
            return state.max_fail_reached();
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
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::ManagerCrashed, &problem));
            state.add_problem(problem);
        }
        Message::JobDone { host } => {
            tracing::info!(%host, "listener finished its part");
            events.emit(Event::ListenerDone { host: host.clone() });
            state.listener_done(&host);
            progress.update(state);
        }
        other => tracing::warn!(
            ?other,
            "dropping a message that does not belong on the reply queue"
        ),
    }
    None
}

/// The retries the last replies decided, recorded in the events and on the progress
/// lines, for the engine to queue.
pub(crate) fn retries_to_queue(
    state: &mut JobState,
    progress: &Progress,
    events: &mut EventSink,
) -> Vec<Retry> {
    let retries = state.take_retries();
    for retry in &retries {
        events.emit(Event::TestRetried {
            unit: retry.unit.clone(),
            attempt: retry.attempt,
            failed_on_host: retry.avoid.host.clone(),
            failed_on_worker_id: retry.avoid.worker_id,
        });
        progress.note(&format!(
            "Running {} again (attempt {} of {})",
            retry.unit,
            retry.attempt,
            state.retries().policy().retries + 1
        ));
    }
    retries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Captured;
    use gorgon_protocol::FileStatus;
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

    impl Replies {
        fn new(files: &[&str], max_crash_retries: u32) -> Replies {
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
            handle_reply(
                &mut self.state,
                &self.progress,
                &mut self.events,
                self.max_crash_retries,
                message,
            )
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
        let mut run = Replies::new(&["a"], 2);
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
        let mut run = Replies::new(&["a"], 2);
        assert_eq!(run.send(Message::file("a")), None);
        assert!(run.kinds().is_empty());
        assert_eq!(run.state.finished(), 0);
        assert!(run.state.problems().is_empty());
        assert!(!run.state.any_listener_accepted());
    }
}
