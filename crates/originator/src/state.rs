//! The run's bookkeeping, kept synchronous so that it can be tested without a broker: which
//! files have a final result, who runs what, which listeners took part, and what went wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use gorgon_protocol::{FileResult, FileStatus, TestStatus};

use crate::phases::Phases;
use crate::quarantine::Quarantine;
use crate::replay::RunRecord;
use crate::retries::{Outcome, Retries, RetryPolicy};
use crate::view::counted;

/// Something that went wrong outside a test file: a callback, a sync, a crashed process.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// `after_sync callback on host1`, `worker 2 on host1`, ...
    pub what: String,
    pub status: String,
    pub output: String,
    /// Whether this problem fails the run by itself.
    pub fails_run: bool,
}

/// What a finish message meant for the run.
#[derive(Debug, PartialEq)]
pub enum Settled {
    /// The file's first final result.
    New,
    /// A failure whose tests (or file) run again (`job.retries`): not final yet.
    Held,
    /// A retry's result that gave its file its final result, this one.
    Completed(FileResult),
    /// The file already had a result (a redelivered file finished twice): dropped.
    Duplicate,
    /// Not a file of this run: dropped.
    Unknown,
}

#[derive(Debug)]
pub struct JobState {
    /// Every queued file, in queue order.
    queued: Vec<String>,
    /// The same files, for lookups.
    known: HashSet<String>,
    results: HashMap<String, FileResult>,
    /// Files that did not pass, in the order their results arrived.
    failed: Vec<String>,
    /// (host, worker) → the files it started and has not finished: one, or a batch.
    running: BTreeMap<(String, u32), Vec<String>>,
    hosts_that_ran: BTreeSet<String>,
    listeners_accepted: BTreeSet<String>,
    listeners_done: BTreeSet<String>,
    /// host → the listener's own queue, whose disappearance means the listener died.
    listener_queues: BTreeMap<String, String>,
    /// host → what a listener that has not taken the job said of it (it waits for the
    /// listener's slots, or was refused), for the message of a run no listener took.
    listeners_waiting: BTreeMap<String, String>,
    /// Worker slots of the listeners that took the job.
    slots: u32,
    /// file → how many workers died while running it.
    crashes: HashMap<String, u32>,
    problems: Vec<Problem>,
    /// Failed tests and files that run again, and their attempts.
    retries: Retries,
    /// Tests reported so far, every attempt included (the default retry budget's base).
    tests_reported: usize,
    quarantine: Quarantine,
    /// Files that failed only in quarantined tests (or are quarantined), in the order their
    /// results arrived: they do not fail the run.
    quarantined: Vec<String>,
    quarantined_set: HashSet<String>,
    /// Stop once this many files have failed for good (`job.max_fail`).
    max_fail: Option<u32>,
    /// Why the run was cut short by `max_fail`, once it was.
    cut_short: Option<String>,
    /// The order in which each worker started its files, for `--replay`.
    record: RunRecord,
    /// The run's phases (none for a run without `phases`); `queued` holds the files of the
    /// phases that have started.
    phases: Phases,
    /// What a recording run's files ran, as their results bring it.
    impact: crate::impact::Recording,
}

/// A file's final verdict, as the event stream gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    /// Passed, after a test (or the file) failed and passed on a retry.
    Flaky,
    /// Failed, crashed or timed out: it fails the run.
    Failed,
    /// Failed only in quarantined tests (or a quarantined file): it does not fail the run.
    Quarantined,
}

impl JobState {
    pub fn new(queued: Vec<String>) -> Self {
        JobState {
            known: queued.iter().cloned().collect(),
            queued,
            results: HashMap::new(),
            impact: crate::impact::Recording::default(),
            failed: Vec::new(),
            running: BTreeMap::new(),
            hosts_that_ran: BTreeSet::new(),
            listeners_accepted: BTreeSet::new(),
            listeners_done: BTreeSet::new(),
            listener_queues: BTreeMap::new(),
            listeners_waiting: BTreeMap::new(),
            slots: 0,
            crashes: HashMap::new(),
            problems: Vec::new(),
            retries: Retries::default(),
            tests_reported: 0,
            quarantine: Quarantine::default(),
            quarantined: Vec::new(),
            quarantined_set: HashSet::new(),
            max_fail: None,
            cut_short: None,
            record: RunRecord::default(),
            phases: Phases::default(),
        }
    }

    /// The run's files come in `phases`, queued phase by phase.
    pub fn with_phases(mut self, phases: Phases) -> Self {
        self.phases = phases;
        self
    }

    pub fn phases(&self) -> &Phases {
        &self.phases
    }

    pub fn phases_mut(&mut self) -> &mut Phases {
        &mut self.phases
    }

    /// The name of the phase `unit` belongs to, in a run with phases.
    pub fn phase_of(&self, unit: &str) -> Option<&str> {
        self.phases.phase_of(unit).map(|phase| phase.name())
    }

    /// Queues the files of the phase that starts.
    pub fn queue_more(&mut self, units: &[String]) {
        for unit in units {
            if self.known.insert(unit.clone()) {
                self.queued.push(unit.clone());
            }
        }
    }

    /// How many of `units` failed for good.
    pub fn failed_among(&self, units: &[String]) -> usize {
        units
            .iter()
            .filter(|unit| self.verdict(unit) == Some(Verdict::Failed))
            .count()
    }

    /// Failures of the tests and files in `quarantine` do not fail the run.
    pub fn with_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// The run stops once `limit` files have failed for good.
    pub fn with_max_fail(mut self, limit: Option<u32>) -> Self {
        self.max_fail = limit;
        self
    }

    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    /// Files whose failures the quarantine covers, in the order their results arrived.
    pub fn quarantined_results(&self) -> impl Iterator<Item = &FileResult> {
        self.quarantined.iter().filter_map(|f| self.results.get(f))
    }

    /// When `max_fail` files have failed for good and files are left: why the run must stop
    /// (once; later calls say nothing).
    pub fn max_fail_reached(&mut self) -> Option<String> {
        let limit = self.max_fail?;
        if self.cut_short.is_some() || self.all_settled() || self.failed.len() < limit as usize {
            return None;
        }
        let reason = format!(
            "{} failed (the limit, --max-fail {limit}); {} not run",
            counted(self.failed.len(), "file"),
            counted(self.unfinished().len(), "file")
        );
        self.cut_short = Some(reason.clone());
        Some(reason)
    }

    /// Why the run was cut short by `max_fail`, if it was.
    pub fn cut_short(&self) -> Option<&str> {
        self.cut_short.as_deref()
    }

    /// The final verdict of a file that has its result.
    pub fn verdict(&self, file: &str) -> Option<Verdict> {
        let result = self.results.get(file)?;
        Some(if self.quarantined_set.contains(file) {
            Verdict::Quarantined
        } else if result.status != FileStatus::Passed {
            Verdict::Failed
        } else if self.retries.flaky().any(|r| r.file == file) {
            Verdict::Flaky
        } else {
            Verdict::Passed
        })
    }

    /// Runs failed tests again as `policy` says (no retries unless set).
    pub fn with_retries(mut self, policy: RetryPolicy) -> Self {
        self.retries = Retries::new(policy);
        self
    }

    /// The run's retries: what to queue again, what was retried, the budget.
    pub fn retries(&self) -> &Retries {
        &self.retries
    }

    /// Tests reported so far, every attempt included.
    pub fn tests_reported(&self) -> usize {
        self.tests_reported
    }

    /// The retries decided since the last call, for the engine to queue.
    pub fn take_retries(&mut self) -> Vec<crate::retries::Retry> {
        self.retries.take_queued()
    }

    pub fn total(&self) -> usize {
        self.queued.len()
    }

    pub fn finished(&self) -> usize {
        self.results.len()
    }

    /// Every queued file, in queue order.
    pub fn queued(&self) -> &[String] {
        &self.queued
    }

    /// What the run's files ran, for the impact map (empty unless the run records).
    pub fn take_impact(&mut self) -> crate::impact::Recording {
        std::mem::take(&mut self.impact)
    }

    /// The final result of `file`, if it has one.
    pub fn result(&self, file: &str) -> Option<&FileResult> {
        self.results.get(file)
    }

    /// Whether `file` (a queued unit or a retry of one) already has its final result: no
    /// worker needs to run it again.
    pub fn has_result(&self, file: &str) -> bool {
        self.results.contains_key(file) || self.retries.is_done(file)
    }

    /// Whether `file` is a unit of this run: queued, or a retry of a failed test.
    fn is_known(&self, file: &str) -> bool {
        self.known.contains(file) || self.retries.is_retry_unit(file)
    }

    pub fn all_settled(&self) -> bool {
        self.results.len() == self.queued.len()
    }

    /// Records that a worker started `file`; false (and nothing recorded) when the file is
    /// not of this run or already has its result.
    pub fn file_started(&mut self, host: &str, worker_id: u32, file: &str) -> bool {
        if self.has_result(file) || !self.is_known(file) {
            return false;
        }
        self.hosts_that_ran.insert(host.to_owned());
        self.running
            .entry((host.to_owned(), worker_id))
            .or_default()
            .push(file.to_owned());
        self.record.started(format!("{host}:{worker_id}"), file);
        true
    }

    /// The order in which each worker started its files so far.
    pub fn run_record(&self) -> &RunRecord {
        &self.record
    }

    pub fn file_finished(&mut self, mut result: FileResult) -> Settled {
        if let Some(ran) = result.impact.take().filter(|_| self.is_known(&result.file)) {
            self.impact.add(&result.file, ran);
        }
        let key = (result.host.clone(), result.worker_id);
        if let Some(files) = self.running.get_mut(&key) {
            files.retain(|file| *file != result.file);
            if files.is_empty() {
                self.running.remove(&key);
            }
        }
        if self.results.contains_key(&result.file) {
            return Settled::Duplicate;
        }
        if !self.is_known(&result.file) {
            return Settled::Unknown;
        }
        self.hosts_that_ran.insert(result.host.clone());
        self.tests_reported += result.tests.len();
        let first = !self.retries.is_retry_unit(&result.file);
        if first && result.status != FileStatus::Passed && self.quarantine.covers_failure(&result) {
            // A quarantined failure is not worth a retry.
            self.settle(result);
            return Settled::New;
        }
        match self.retries.take_result(result, self.tests_reported) {
            Outcome::Final(result) => {
                self.settle(result);
                Settled::New
            }
            Outcome::Completed(result) => {
                self.settle(result.clone());
                Settled::Completed(result)
            }
            Outcome::Held => Settled::Held,
            Outcome::Duplicate => Settled::Duplicate,
        }
    }

    /// Records a queued unit's final result.
    fn settle(&mut self, result: FileResult) {
        if result.status != FileStatus::Passed {
            if self.quarantine.covers_failure(&result) {
                self.quarantined.push(result.file.clone());
                self.quarantined_set.insert(result.file.clone());
            } else {
                self.failed.push(result.file.clone());
            }
        }
        self.results.insert(result.file.clone(), result);
    }

    pub fn listener_accepted(&mut self, host: &str, slots: u32, queue: Option<String>) {
        if self.listeners_accepted.insert(host.to_owned()) {
            self.slots += slots;
        }
        if let Some(queue) = queue {
            self.listener_queues.insert(host.to_owned(), queue);
        }
    }

    /// A listener has not taken the job yet: `note` says why (it waits for its slots, or
    /// refused the job).
    pub fn listener_waiting(&mut self, host: &str, note: String) {
        self.listeners_waiting.insert(host.to_owned(), note);
    }

    /// What the listeners that have not taken the job said of it, one `host note` each.
    pub fn listeners_waiting(&self) -> Vec<String> {
        self.listeners_waiting
            .iter()
            .filter(|(host, _)| !self.listeners_accepted.contains(*host))
            .map(|(host, note)| format!("{host} {note}"))
            .collect()
    }

    /// Whether `host` took the job (its `JobAccepted` came): only such a host's replies
    /// count.
    pub fn has_accepted(&self, host: &str) -> bool {
        self.listeners_accepted.contains(host)
    }

    /// Whether `host` started or finished a file of this run.
    pub fn has_run_files(&self, host: &str) -> bool {
        self.hosts_that_ran.contains(host)
    }

    /// Whether a worker has started `unit` and not finished it.
    pub fn is_running(&self, unit: &str) -> bool {
        self.running
            .values()
            .any(|files| files.iter().any(|f| f == unit))
    }

    /// Working listeners and their queues, to check that they are still alive.
    pub fn working_listener_queues(&self) -> Vec<(String, String)> {
        self.listener_queues
            .iter()
            .filter(|(host, _)| !self.listeners_done.contains(*host))
            .map(|(host, queue)| (host.clone(), queue.clone()))
            .collect()
    }

    /// A worker died while running a file (the broker puts the file back in the queue).
    /// Once the file has killed `max_crash_retries` workers it is settled as crashed with
    /// the worker's exit and output, and the final result this gave is returned (for a
    /// retry of a failed test, its file's). A worker that dies during
    /// a batch blames none of its files: any of them may be at fault, and each runs again
    /// alone (workers never batch a file delivered again), where a death names its file.
    pub fn worker_crashed(
        &mut self,
        host: &str,
        worker_id: u32,
        status: &str,
        output: &str,
        max_crash_retries: u32,
    ) -> Option<FileResult> {
        let mut files = self.running.remove(&(host.to_owned(), worker_id))?;
        if files.len() != 1 {
            tracing::info!(
                host,
                worker_id,
                files = files.len(),
                "a worker died during a batch; its files run again alone"
            );
            return None;
        }
        let file = files.remove(0);
        let crashes = self.crashes.entry(file.clone()).or_default();
        *crashes += 1;
        let crashes = *crashes;
        if crashes < max_crash_retries.max(1) || self.has_result(&file) {
            return None;
        }
        let result = FileResult {
            host: host.to_owned(),
            worker_id,
            file: file.clone(),
            status: FileStatus::Crashed,
            seconds: 0.0,
            exit: format!("its worker died {crashes} times, the last time: {status}"),
            output: output.to_owned(),
            tests: Vec::new(),
            impact: None,
        };
        match self.file_finished(result.clone()) {
            Settled::New => Some(result),
            Settled::Completed(settled) => Some(settled),
            Settled::Held | Settled::Duplicate | Settled::Unknown => None,
        }
    }

    pub fn listener_done(&mut self, host: &str) {
        self.listeners_done.insert(host.to_owned());
        self.running.retain(|(h, _), _| h != host);
    }

    pub fn add_problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn any_listener_accepted(&self) -> bool {
        !self.listeners_accepted.is_empty()
    }

    /// Every listener that took the job has finished its part.
    pub fn all_listeners_done(&self) -> bool {
        self.listeners_accepted.is_subset(&self.listeners_done)
    }

    /// Listeners that took the job and have not finished yet.
    pub fn listeners_working(&self) -> Vec<String> {
        self.listeners_accepted
            .difference(&self.listeners_done)
            .cloned()
            .collect()
    }

    pub fn hosts_that_ran(&self) -> usize {
        self.hosts_that_ran.len()
    }

    pub fn workers_running(&self) -> usize {
        self.running.len()
    }

    /// Files that did not pass, in the order their results arrived.
    pub fn failed_results(&self) -> impl Iterator<Item = &FileResult> {
        self.failed.iter().filter_map(|f| self.results.get(f))
    }

    /// Files with no result, in queue order, then those of phases that did not run because
    /// the run failed or stopped.
    pub fn unfinished(&self) -> Vec<String> {
        let mut files = self.unfinished_queued();
        files.extend(self.phases.not_run_units().cloned());
        files
    }

    /// Queued files with no result, in queue order.
    pub fn unfinished_queued(&self) -> Vec<String> {
        self.queued
            .iter()
            .filter(|f| !self.results.contains_key(*f))
            .cloned()
            .collect()
    }

    /// The files the report counts: those queued, and those of phases that did not run
    /// because the run failed or stopped.
    pub fn files_counted(&self) -> usize {
        self.queued.len() + self.phases.not_run_units().count()
    }

    /// Files with `status` that count as such: a quarantined failure counts only among the
    /// quarantined.
    pub fn count(&self, status: FileStatus) -> usize {
        self.results
            .values()
            .filter(|r| r.status == status && !self.quarantined_set.contains(&r.file))
            .count()
    }

    /// Files whose failures the quarantine covers.
    pub fn quarantined_count(&self) -> usize {
        self.quarantined.len()
    }

    /// Tests with `status` over every file that has a result.
    pub fn test_count(&self, status: TestStatus) -> usize {
        self.results
            .values()
            .flat_map(|r| &r.tests)
            .filter(|t| t.status == status)
            .count()
    }

    /// Whether any runner reported per-test results.
    pub fn has_tests(&self) -> bool {
        self.results.values().any(|r| !r.tests.is_empty())
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Worker slots of the listeners that took the job.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Timings of the files that have a result, and with `with_tests` of the tests (by the
    /// id their runner runs them alone with, `file:LINE` or `file::name`) of files long
    /// enough to be worth splitting one day.
    pub fn timings(&self, with_tests: bool) -> Vec<(String, f64)> {
        let mut timings = Vec::new();
        for result in self.results.values() {
            timings.push((result.file.clone(), result.seconds));
            if !with_tests
                || result.seconds < crate::files::UNIT_RECORD_SECONDS
                || crate::files::unit_file(&result.file).is_some()
            {
                continue;
            }
            for test in &result.tests {
                if let Some(id) = &test.id {
                    if crate::files::unit_file(id) == Some(result.file.as_str()) {
                        timings.push((id.clone(), test.seconds));
                    }
                }
            }
        }
        timings
    }

    /// The files that did not pass, then those that never got a result.
    pub fn not_passed(&self) -> Vec<String> {
        let mut files = self.failed.clone();
        files.extend(self.unfinished());
        files
    }

    /// The run passed: every file has a result, all passed, no phase failed, and nothing
    /// else failed it.
    pub fn passed(&self) -> bool {
        self.all_settled()
            && self.failed.is_empty()
            && !self.problems.iter().any(|p| p.fails_run)
            && self.phases.not_run_units().next().is_none()
            && !self
                .phases
                .list()
                .iter()
                .any(|p| matches!(p.status, crate::phases::PhaseStatus::Failed(_)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gorgon_protocol::TestResult;

    /// A file's result for tests, with the given host and status.
    pub(crate) fn result(file: &str, host: &str, status: FileStatus) -> FileResult {
        FileResult {
            host: host.into(),
            worker_id: 1,
            file: file.into(),
            status,
            seconds: 0.5,
            exit: "exit status 0".into(),
            output: String::new(),
            tests: Vec::new(),
            impact: None,
        }
    }

    #[test]
    fn tests_of_long_files_are_timed_by_the_ids_that_run_them_alone() {
        let test = |id: Option<&str>, seconds| TestResult {
            name: "t".into(),
            classname: String::new(),
            file: None,
            line: None,
            status: TestStatus::Passed,
            seconds,
            message: None,
            details: None,
            id: id.map(str::to_owned),
        };
        let slow = "tests/test_slow.py";
        let mut state = JobState::new(vec![slow.into(), "quick.py".into()]);
        let mut long = result(slow, "h", FileStatus::Passed);
        long.seconds = 2.0;
        long.tests = vec![
            test(Some("tests/test_slow.py::test_a"), 1.25),
            test(Some("tests/test_slow.py::TestB::test_c[x:1]"), 0.75),
            // Defined elsewhere (a shared group), or with no id: not a unit of this file.
            test(Some("spec/shared.rb:3"), 0.1),
            test(None, 0.1),
        ];
        state.file_finished(long);
        let mut quick = result("quick.py", "h", FileStatus::Passed);
        quick.tests = vec![test(Some("quick.py::test_q"), 0.5)];
        state.file_finished(quick);

        let mut timings = state.timings(true);
        timings.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            timings,
            [
                ("quick.py".to_string(), 0.5),
                (slow.to_string(), 2.0),
                ("tests/test_slow.py::TestB::test_c[x:1]".to_string(), 0.75),
                ("tests/test_slow.py::test_a".to_string(), 1.25),
            ]
        );
        assert_eq!(state.timings(false).len(), 2);
    }

    #[test]
    fn a_run_passes_only_when_every_file_passed() {
        let mut state = JobState::new(vec!["a".into(), "b".into()]);
        state.file_started("h", 1, "a");
        assert_eq!(state.workers_running(), 1);
        assert_eq!(
            state.file_finished(result("a", "h", FileStatus::Passed)),
            Settled::New
        );
        assert_eq!(state.workers_running(), 0);
        assert!(!state.all_settled());
        assert!(!state.passed());
        assert_eq!(state.unfinished(), ["b"]);
        state.file_finished(result("b", "h", FileStatus::Passed));
        assert!(state.all_settled());
        assert!(state.passed());
        assert_eq!(state.hosts_that_ran(), 1);
    }

    #[test]
    fn duplicates_and_strangers_are_dropped() {
        let mut state = JobState::new(vec!["a".into()]);
        assert_eq!(
            state.file_finished(result("a", "h", FileStatus::Failed)),
            Settled::New
        );
        assert_eq!(
            state.file_finished(result("a", "h2", FileStatus::Passed)),
            Settled::Duplicate
        );
        assert_eq!(
            state.file_finished(result("zzz", "h", FileStatus::Passed)),
            Settled::Unknown
        );
        assert_eq!(state.count(FileStatus::Failed), 1);
        assert_eq!(state.count(FileStatus::Passed), 0);
        assert!(!state.passed());
        assert_eq!(state.not_passed(), ["a"]);
    }

    #[test]
    fn a_failing_problem_fails_a_green_run() {
        let mut state = JobState::new(vec!["a".into()]);
        state.file_finished(result("a", "h", FileStatus::Passed));
        state.add_problem(Problem {
            what: "worker 1 on h".into(),
            status: "killed".into(),
            output: String::new(),
            fails_run: false,
        });
        assert!(state.passed());
        state.add_problem(Problem {
            what: "after_complete callback on h".into(),
            status: "exit status 1".into(),
            output: String::new(),
            fails_run: true,
        });
        assert!(!state.passed());
    }

    #[test]
    fn listeners_are_tracked() {
        let mut state = JobState::new(vec!["a".into()]);
        assert!(!state.any_listener_accepted());
        state.listener_accepted("h1", 2, Some("q1".into()));
        state.listener_accepted("h2", 3, None);
        state.listener_accepted("h2", 3, None);
        assert_eq!(state.slots(), 5);
        assert_eq!(
            state.working_listener_queues(),
            [("h1".to_string(), "q1".to_string())]
        );
        state.file_started("h1", 1, "a");
        state.listener_done("h1");
        assert_eq!(state.workers_running(), 0);
        assert_eq!(state.listeners_working(), ["h2"]);
        assert!(!state.all_listeners_done());
        state.listener_done("h2");
        assert!(state.all_listeners_done());
        assert!(state.working_listener_queues().is_empty());
    }

    #[test]
    fn what_listeners_said_of_a_job_they_have_not_taken_is_kept_until_they_take_it() {
        let mut state = JobState::new(vec!["a".into()]);
        state.listener_waiting("h1", "has it waiting".into());
        state.listener_waiting("h2", "refused it: full".into());
        assert_eq!(
            state.listeners_waiting(),
            ["h1 has it waiting", "h2 refused it: full"]
        );
        state.listener_accepted("h1", 2, None);
        assert_eq!(state.listeners_waiting(), ["h2 refused it: full"]);
        assert!(state.any_listener_accepted());
    }

    #[test]
    fn a_file_that_keeps_killing_its_worker_is_settled_as_crashed() {
        let mut state = JobState::new(vec!["killer".into(), "fine".into()]);
        state.file_started("h", 1, "killer");
        assert_eq!(
            state.worker_crashed("h", 1, "killed by signal 9", "", 2),
            None
        );
        // A worker that was running nothing is not a file's crash.
        assert_eq!(
            state.worker_crashed("h", 3, "killed by signal 9", "", 2),
            None
        );
        state.file_started("h", 2, "killer");
        let settled = state
            .worker_crashed("h", 2, "killed by signal 9", "last words", 2)
            .unwrap();
        assert_eq!(settled.status, FileStatus::Crashed);
        assert_eq!(settled.output, "last words");
        assert!(settled.exit.contains("died 2 times"));
        assert_eq!(state.count(FileStatus::Crashed), 1);
        // A late result for the settled file is a duplicate.
        assert_eq!(
            state.file_finished(result("killer", "h", FileStatus::Passed)),
            Settled::Duplicate
        );
        assert_eq!(state.unfinished(), ["fine"]);
    }

    #[test]
    fn a_worker_that_dies_during_a_batch_blames_none_of_its_files() {
        let mut state = JobState::new(vec!["a".into(), "b".into(), "c".into()]);
        for _ in 0..3 {
            for file in ["a", "b", "c"] {
                state.file_started("h", 1, file);
            }
            // One of the three finished before the death: the other two remain in doubt.
            state.file_finished(result("a", "h", FileStatus::Passed));
            assert_eq!(state.workers_running(), 1);
            assert_eq!(
                state.worker_crashed("h", 1, "killed by signal 9", "", 1),
                None
            );
            assert_eq!(state.workers_running(), 0);
        }
        assert_eq!(state.count(FileStatus::Crashed), 0);
        // Alone, the file at fault is named at once (max_crash_retries 1).
        state.file_started("h", 1, "c");
        let settled = state
            .worker_crashed("h", 1, "killed by signal 9", "", 1)
            .unwrap();
        assert_eq!(settled.file, "c");
        assert_eq!(state.unfinished(), ["b"]);
    }
}
