//! The run as newline-delimited JSON events (`gorgon start --events PATH`), written and
//! flushed as they happen so that a dashboard can follow a run live. The format is documented
//! in `docs/events.md`; every line carries `"schema": 1`.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use gorgon_protocol::{FileResult, FileStatus, TestResult};
use serde::Serialize;
use uuid::Uuid;

use crate::html::Timeline;
use crate::state::{JobState, Problem, Verdict};

/// The version of the event format; bumped only when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Always the first event of a run.
    RunStarted {
        job_id: Uuid,
        project: String,
        cluster: String,
        /// Every queued file, in queue order.
        files: Vec<String>,
    },
    /// `--changed` left these files out: no change reaches them. Right after
    /// `run_started`; they get no other event.
    NotSelected {
        files: Vec<String>,
        reason: String,
        /// Their time by the runtime file.
        seconds_saved: f64,
    },
    /// A listener took the job.
    ListenerJoined { host: String, slots: u32 },
    /// A phase of a run with `phases` starts: its files, in queue order (none for a phase
    /// that runs a command).
    PhaseStarted { name: String, files: Vec<String> },
    /// A phase ended (`passed`, `failed`), or the run ended without running it (`not_run`,
    /// with the reason).
    PhaseFinished {
        name: String,
        outcome: PhaseOutcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        seconds: f64,
        /// The files of a phase that did not run.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        not_run: Vec<String>,
    },
    FileStarted {
        file: String,
        host: String,
        worker_id: u32,
    },
    /// A file's first and only result.
    FileFinished(Outcome),
    /// A result that is not final: its failed tests (or the file) run again
    /// (`job.retries`). `file` is what ran: the queued file, or a retried test's id.
    AttemptFinished(Outcome),
    /// A failed test (by its id) or file is queued to run again, away from where it failed.
    TestRetried {
        /// What runs again: a test's id, or the file.
        unit: String,
        /// 2 for the first retry.
        attempt: u32,
        failed_on_host: String,
        failed_on_worker_id: u32,
    },
    /// Output of a running file as it was produced: whole lines, at most 64 KiB per file
    /// run (the worker's cap, `docs/events.md`).
    FileOutput {
        file: String,
        host: String,
        worker_id: u32,
        text: String,
    },
    /// Something went wrong outside a test file.
    Problem {
        kind: ProblemKind,
        what: String,
        status: String,
        output: String,
        fails_run: bool,
    },
    /// A listener finished its part of the job.
    ListenerDone { host: String },
    /// The run is being stopped before every file had a result.
    Cancelled { reason: String },
    /// Always the last event of a run.
    RunFinished {
        exit_code: i32,
        seconds: f64,
        totals: Totals,
        /// Why the run could not go on, when it ended on an error of its own.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// How a phase ended, as [`Event::PhaseFinished`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseOutcome {
    Passed,
    Failed,
    NotRun,
}

impl Event {
    /// The `phase_finished` event of `phase` as it stands.
    pub fn phase_finished(phase: &crate::phases::Phase) -> Event {
        use crate::phases::PhaseStatus;
        let (outcome, reason) = match &phase.status {
            PhaseStatus::Failed(why) => (PhaseOutcome::Failed, Some(why.clone())),
            PhaseStatus::NotRun(not_run) => (PhaseOutcome::NotRun, Some(not_run.reason.clone())),
            _ => (PhaseOutcome::Passed, None),
        };
        Event::PhaseFinished {
            name: phase.name().to_owned(),
            outcome,
            reason,
            seconds: phase.seconds,
            not_run: match outcome {
                PhaseOutcome::NotRun => phase.units.clone(),
                _ => Vec::new(),
            },
        }
    }
}

/// One run's result, as [`Event::FileFinished`] and [`Event::AttemptFinished`] give it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The file's final verdict (in `file_finished` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    pub file: String,
    pub host: String,
    pub worker_id: u32,
    pub status: FileStatus,
    pub seconds: f64,
    pub exit: String,
    pub output: String,
    pub tests: Vec<TestResult>,
}

impl Outcome {
    fn of(result: &FileResult, verdict: Option<Verdict>) -> Outcome {
        Outcome {
            verdict,
            file: result.file.clone(),
            host: result.host.clone(),
            worker_id: result.worker_id,
            status: result.status,
            seconds: result.seconds,
            exit: result.exit.clone(),
            output: result.output.clone(),
            tests: result.tests.clone(),
        }
    }
}

/// What kind of problem a [`Event::Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    CallbackFailed,
    WorkerCrashed,
    ManagerCrashed,
    SyncFailed,
    /// A listener found the tree it pulled other than the tree's signed manifest lists.
    TreeRefused,
    /// The command of a phase failed.
    PhaseFailed,
    /// A file (or a retry) had no result and was neither queued nor running anywhere for
    /// `lost::LOST_FILE_WAIT`: it was queued again.
    FileLost,
}

/// Files by verdict at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub files: usize,
    pub passed: usize,
    pub failed: usize,
    pub crashed: usize,
    pub timed_out: usize,
    pub not_run: usize,
    /// Tests (or files, where the runner reports no tests) that failed and then passed on
    /// a retry.
    pub flaky: usize,
    /// Files that failed only in quarantined tests (or are quarantined).
    pub quarantined: usize,
}

impl Totals {
    pub fn of(state: &JobState) -> Totals {
        Totals {
            files: state.total(),
            passed: state.count(FileStatus::Passed),
            failed: state.count(FileStatus::Failed),
            crashed: state.count(FileStatus::Crashed),
            timed_out: state.count(FileStatus::TimedOut),
            not_run: state.total() - state.finished(),
            flaky: state.retries().flaky().count(),
            quarantined: state.quarantined_count(),
        }
    }
}

impl Event {
    /// A file's final result, with its verdict in the run (`state` has settled it).
    pub fn file_finished(result: &FileResult, state: &JobState) -> Event {
        Event::FileFinished(Outcome::of(result, state.verdict(&result.file)))
    }

    /// A result held back for a retry.
    pub fn attempt_finished(result: &FileResult) -> Event {
        Event::AttemptFinished(Outcome::of(result, None))
    }

    pub fn problem(kind: ProblemKind, problem: &Problem) -> Event {
        Event::Problem {
            kind,
            what: problem.what.clone(),
            status: problem.status.clone(),
            output: problem.output.clone(),
            fails_run: problem.fails_run,
        }
    }
}

/// One line of the stream: the event with its schema and time.
#[derive(Serialize)]
struct Line<'a> {
    schema: u32,
    time: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// An RFC 3339 UTC timestamp with milliseconds, e.g. `2025-01-31T09:15:02.125Z`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON line of `event` at `at`, without the newline.
pub fn encode(event: &Event, at: DateTime<Utc>) -> String {
    serde_json::to_string(&Line {
        schema: SCHEMA,
        time: timestamp(at),
        event,
    })
    .expect("an event always serializes")
}

/// Where events go: nowhere, stdout, or a file; and, for an HTML report, into a
/// [`Timeline`].
pub struct EventSink {
    out: Option<Box<dyn Write + Send>>,
    started: bool,
    finished: bool,
    timeline: Option<Timeline>,
}

impl EventSink {
    /// A sink that drops every event.
    pub fn none() -> EventSink {
        EventSink {
            out: None,
            started: false,
            finished: false,
            timeline: None,
        }
    }

    /// Opens `path` (`-` is stdout), truncating a file that exists.
    pub fn open(path: &Path) -> std::io::Result<EventSink> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::File::create(path)?)
        };
        Ok(EventSink::to_writer(out))
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> EventSink {
        EventSink {
            out: Some(out),
            started: false,
            finished: false,
            timeline: None,
        }
    }

    /// Also keeps the run's timeline, for an HTML report ([`EventSink::take_timeline`]).
    pub fn with_timeline(mut self) -> EventSink {
        self.timeline = Some(Timeline::default());
        self
    }

    /// The timeline kept so far, if one is kept.
    pub fn take_timeline(&mut self) -> Option<Timeline> {
        self.timeline.take()
    }

    /// Writes and flushes one event. A sink that fails once (a dashboard that closed its
    /// pipe) is dropped with a warning; the run goes on.
    pub fn emit(&mut self, event: Event) {
        match &event {
            Event::RunStarted { .. } => self.started = true,
            Event::RunFinished { .. } => self.finished = true,
            _ => {}
        }
        if self.out.is_none() && self.timeline.is_none() {
            return;
        }
        let line = encode(&event, Utc::now()) + "\n";
        if let Some(timeline) = &mut self.timeline {
            // The page is made from the stream's own lines, as from a saved stream.
            let value: serde_json::Value =
                serde_json::from_str(&line).expect("an encoded event is JSON");
            if let Err(problem) = timeline.record(&value) {
                tracing::warn!(%problem, "the HTML report's timeline skipped an event");
            }
        }
        let Some(out) = &mut self.out else { return };
        if let Err(error) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            tracing::warn!(%error, "cannot write the event stream; no more events are written");
            self.out = None;
        }
    }

    /// Ends a stream that has a `run_started` and no `run_finished` yet, for a run that
    /// stopped on an error.
    pub fn finish_after_error(&mut self, exit_code: i32, seconds: f64, error: &str) {
        if self.started && !self.finished {
            self.emit(Event::RunFinished {
                exit_code,
                seconds,
                totals: Totals::default(),
                error: Some(error.to_owned()),
            });
        }
    }
}

/// A stream kept in memory, for tests that read back what a sink was given.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// A sink that writes into this stream.
    pub(crate) fn sink(&self) -> EventSink {
        EventSink::to_writer(Box::new(self.clone()))
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The events written so far, one JSON object per line.
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::TestStatus;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 125_000_000).unwrap()
    }

    fn pinned(event: Event) -> serde_json::Value {
        serde_json::from_str(&encode(&event, at())).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(at()), "2023-11-14T22:13:20.125Z");
    }

    #[test]
    fn run_events_have_pinned_shapes() {
        let id = Uuid::nil();
        assert_eq!(
            pinned(Event::NotSelected {
                files: vec!["t/b_test.sh".into()],
                reason: "not selected: no change since 1234 reaches it".into(),
                seconds_saved: 2.5,
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "not_selected",
                   "files": ["t/b_test.sh"],
                   "reason": "not selected: no change since 1234 reaches it",
                   "seconds_saved": 2.5})
        );
        assert_eq!(
            pinned(Event::RunStarted {
                job_id: id,
                project: "shop".into(),
                cluster: "ci".into(),
                files: vec!["a_test.sh".into()],
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "run_started",
                   "job_id": "00000000-0000-0000-0000-000000000000", "project": "shop",
                   "cluster": "ci", "files": ["a_test.sh"]})
        );
        assert_eq!(
            pinned(Event::ListenerJoined {
                host: "alpha".into(),
                slots: 4
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "listener_joined",
                   "host": "alpha", "slots": 4})
        );
        assert_eq!(
            pinned(Event::FileStarted {
                file: "a_test.sh".into(),
                host: "alpha".into(),
                worker_id: 2
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "file_started",
                   "file": "a_test.sh", "host": "alpha", "worker_id": 2})
        );
        assert_eq!(
            pinned(Event::Cancelled {
                reason: "interrupted (Ctrl-C)".into()
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "cancelled",
                   "reason": "interrupted (Ctrl-C)"})
        );
        assert_eq!(
            pinned(Event::ListenerDone {
                host: "alpha".into()
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "listener_done",
                   "host": "alpha"})
        );
        assert_eq!(
            pinned(Event::RunFinished {
                exit_code: 1,
                seconds: 2.5,
                totals: Totals {
                    files: 3,
                    passed: 1,
                    failed: 1,
                    crashed: 0,
                    timed_out: 0,
                    not_run: 1,
                    flaky: 1,
                    quarantined: 0,
                },
                error: None,
            }),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "run_finished",
                   "exit_code": 1, "seconds": 2.5,
                   "totals": {"files": 3, "passed": 1, "failed": 1, "crashed": 0,
                              "timed_out": 0, "not_run": 1, "flaky": 1,
                              "quarantined": 0}})
        );
    }

    #[test]
    fn file_and_problem_events_have_pinned_shapes() {
        let result = FileResult {
            host: "alpha".into(),
            worker_id: 1,
            file: "t/cart_test.rb".into(),
            status: FileStatus::Failed,
            seconds: 0.5,
            exit: "exit status 1".into(),
            output: "1 failure\n".into(),
            tests: vec![TestResult {
                name: "test_tax".into(),
                classname: "CartTest".into(),
                file: None,
                line: None,
                status: TestStatus::Failed,
                seconds: 0.25,
                message: Some("expected 2".into()),
                details: None,
                id: None,
            }],
            impact: None,
        };
        let mut state = JobState::new(vec![result.file.clone()]);
        state.file_finished(result.clone());
        assert_eq!(
            pinned(Event::file_finished(&result, &state)),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "file_finished",
                   "verdict": "failed",
                   "file": "t/cart_test.rb", "host": "alpha", "worker_id": 1,
                   "status": "failed", "seconds": 0.5, "exit": "exit status 1",
                   "output": "1 failure\n",
                   "tests": [{"name": "test_tax", "classname": "CartTest", "status": "failed",
                              "seconds": 0.25, "message": "expected 2"}]})
        );
        let problem = Problem {
            what: "after_sync callback failed on alpha".into(),
            status: "exit status 5".into(),
            output: "no gem".into(),
            fails_run: true,
        };
        assert_eq!(
            pinned(Event::problem(ProblemKind::CallbackFailed, &problem)),
            json!({"schema": 1, "time": "2023-11-14T22:13:20.125Z", "event": "problem",
                   "kind": "callback_failed", "what": "after_sync callback failed on alpha",
                   "status": "exit status 5", "output": "no gem", "fails_run": true})
        );
    }

    #[test]
    fn a_run_that_stops_on_an_error_still_ends_with_run_finished() {
        let captured = Captured::default();
        let mut sink = captured.sink();
        sink.finish_after_error(3, 0.1, "nothing started");
        assert!(captured.text().is_empty());
        sink.emit(Event::RunStarted {
            job_id: Uuid::nil(),
            project: "p".into(),
            cluster: "c".into(),
            files: vec![],
        });
        sink.finish_after_error(3, 0.1, "cannot connect to RabbitMQ");
        sink.finish_after_error(3, 0.1, "twice");
        let events = captured.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["event"], "run_finished");
        assert_eq!(events[1]["exit_code"], 3);
        assert_eq!(events[1]["error"], "cannot connect to RabbitMQ");
    }
}
