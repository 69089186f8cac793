//! Retries of failed tests (`job.retries`, `gorgon start --retries N`), kept synchronous so
//! that it can be tested without a broker: which unit runs again after a failure, within the
//! run's retry budget, and the verdicts that follow. A test that fails and then passes is
//! flaky and does not fail the run; one that fails every attempt is a failure, with every
//! attempt kept for the report.
//!
//! The unit of a retry is the failed tests, by the id their runner runs them alone with
//! (RSpec `file:LINE`, a pytest node id, Minitest `file::Class#test`), when every failed test
//! of the file has one; otherwise the file (or the queued unit, when that was a test of a
//! split file). A file that crashed its worker is not retried here (that is
//! `max_crash_retries`). A retried file's final result is its first result with each retried
//! test's verdict replaced by its last attempt's, so the totals count every test once.

use std::collections::{BTreeMap, HashMap};

use gorgon_protocol::{FileResult, FileStatus, TestResult, TestStatus};

use crate::files::unit_file;

/// The budget when `job.retry_budget` is not set: this many retries per run, or
/// [`DEFAULT_BUDGET_SHARE`] of the tests reported so far when that is more.
pub const DEFAULT_BUDGET: u32 = 10;
/// The share of the run's tests (reported so far) that the default budget allows.
pub const DEFAULT_BUDGET_SHARE: f64 = 0.01;

/// How many times a failure runs again, and how many retries a run may spend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first, per failed test or file (`job.retries`; 0: no retries).
    pub retries: u32,
    /// Retries the whole run may spend (`job.retry_budget`); `None`: [`DEFAULT_BUDGET`] or
    /// [`DEFAULT_BUDGET_SHARE`] of the tests, whichever is more.
    pub budget: Option<u32>,
}

impl RetryPolicy {
    /// The run's budget once `tests` tests have been reported.
    fn budget(&self, tests: usize) -> u32 {
        self.budget.unwrap_or_else(|| {
            let share = (tests as f64 * DEFAULT_BUDGET_SHARE).ceil() as u32;
            share.max(DEFAULT_BUDGET)
        })
    }
}

/// Where an attempt ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub host: String,
    pub worker_id: u32,
}

/// A unit to queue again: a test id or a file, and where its last attempt failed (a retry
/// runs on another host when another host has the job, else on another worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub unit: String,
    /// 2 for the first retry.
    pub attempt: u32,
    pub avoid: Place,
}

/// One attempt of a retried test or file.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub place: Place,
    pub seconds: f64,
    pub passed: bool,
    /// The failure's message (the test's, or how the file's run ended).
    pub message: Option<String>,
    /// The failure's details or the run's output.
    pub output: String,
}

/// A test (or a file, when its tests had no ids) that was retried, with every attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Retried {
    /// The queued unit it belongs to (the file, or the split file's test).
    pub file: String,
    /// The test's name, or the unit when the whole unit was retried.
    pub name: String,
    /// The unit that ran again.
    pub unit: String,
    pub attempts: Vec<Attempt>,
}

impl Retried {
    /// Failed, then passed.
    pub fn flaky(&self) -> bool {
        self.attempts.last().is_some_and(|a| a.passed)
    }
}

/// One unit that runs again, and its attempts so far.
#[derive(Debug)]
struct RetryUnit {
    /// The queued unit it belongs to.
    of: String,
    name: String,
    attempts: Vec<Attempt>,
    /// The result of its last attempt (a test id's run, or the whole unit's).
    last: Option<FileResult>,
    /// Its verdict, once it has one: passed or failed for good.
    done: Option<bool>,
}

/// A queued unit whose first result did not pass and whose retries are under way.
#[derive(Debug)]
struct Pending {
    first: FileResult,
    /// The units that run again for it: its failed tests' ids, or itself.
    units: Vec<String>,
}

/// What a result meant for the retries.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not a retry matter: the result is final as it is.
    Final(FileResult),
    /// Held back: its unit runs again (see [`Retries::take_queued`]).
    Held,
    /// The last retry of a unit finished: this is the unit's final result.
    Completed(FileResult),
    /// A second result of a retry that already has its verdict: dropped.
    Duplicate,
}

/// The run's retries.
#[derive(Debug, Default)]
pub struct Retries {
    policy: RetryPolicy,
    spent: u32,
    /// The budget ran out while a failure wanted a retry.
    exhausted: bool,
    pending: HashMap<String, Pending>,
    units: HashMap<String, RetryUnit>,
    queued: Vec<Retry>,
    /// Every unit that was retried and has its verdict, in the order verdicts came.
    retried: Vec<Retried>,
}

impl Retries {
    pub fn new(policy: RetryPolicy) -> Retries {
        Retries {
            policy,
            ..Retries::default()
        }
    }

    /// Whether `unit` is a unit that runs again (a retry's result is an attempt).
    pub fn is_retry_unit(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// Whether `unit` is a retry that has its verdict (its later results are duplicates).
    pub fn is_done(&self, unit: &str) -> bool {
        self.units.get(unit).is_some_and(|u| u.done.is_some())
    }

    /// Whether the queued unit `file` waits for its retries.
    pub fn is_pending(&self, file: &str) -> bool {
        self.pending.contains_key(file)
    }

    /// The retries decided since the last call, to queue.
    pub fn take_queued(&mut self) -> Vec<Retry> {
        std::mem::take(&mut self.queued)
    }

    /// Every retried test or file with its verdict, in the order verdicts came.
    pub fn retried(&self) -> &[Retried] {
        &self.retried
    }

    /// Whether queued unit `file` failed and now waits only for its retries.
    pub fn waits_for_retries(&self, file: &str) -> bool {
        self.pending.contains_key(file)
    }

    /// The retries queued unit `file` waits for (its units without a verdict), each as it
    /// was last queued: its next attempt, and where the attempt before failed. For
    /// queueing again a retry whose message was lost.
    pub fn in_flight(&self, file: &str) -> Vec<Retry> {
        let Some(pending) = self.pending.get(file) else {
            return Vec::new();
        };
        pending
            .units
            .iter()
            .filter_map(|name| {
                let unit = self.units.get(name).filter(|u| u.done.is_none())?;
                let last = unit.attempts.last()?;
                Some(Retry {
                    unit: name.clone(),
                    attempt: unit.attempts.len() as u32 + 1,
                    avoid: last.place.clone(),
                })
            })
            .collect()
    }

    /// Retried tests that failed, then passed.
    pub fn flaky(&self) -> impl Iterator<Item = &Retried> {
        self.retried.iter().filter(|r| r.flaky())
    }

    /// Whether a failure went without a retry because the budget was spent.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// The budget of the run with `tests` tests reported so far, and how much was spent.
    pub fn budget(&self, tests: usize) -> (u32, u32) {
        (self.policy.budget(tests), self.spent)
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// A result of a queued unit or of a retry. `tests` is how many tests the run has
    /// reported so far, for the default budget.
    pub fn take_result(&mut self, result: FileResult, tests: usize) -> Outcome {
        if self.units.contains_key(&result.file) {
            return self.attempt_finished(result, tests);
        }
        if !wants_retry(&result) || self.policy.retries == 0 {
            return Outcome::Final(result);
        }
        let units = retry_units(&result);
        let place = place_of(&result);
        let mut queued = Vec::new();
        for (unit, name) in units {
            if !self.spend(tests) {
                break;
            }
            let first = first_attempt(&result, &unit);
            self.units.insert(
                unit.clone(),
                RetryUnit {
                    of: result.file.clone(),
                    name,
                    attempts: vec![first],
                    last: None,
                    done: None,
                },
            );
            self.queued.push(Retry {
                unit: unit.clone(),
                attempt: 2,
                avoid: place.clone(),
            });
            queued.push(unit);
        }
        if queued.is_empty() {
            return Outcome::Final(result);
        }
        self.pending.insert(
            result.file.clone(),
            Pending {
                first: result,
                units: queued,
            },
        );
        Outcome::Held
    }

    /// Takes one retry from the budget; false (and the run's budget noted as spent) when
    /// none is left.
    fn spend(&mut self, tests: usize) -> bool {
        if self.spent >= self.policy.budget(tests) {
            self.exhausted = true;
            return false;
        }
        self.spent += 1;
        true
    }

    fn attempt_finished(&mut self, result: FileResult, tests: usize) -> Outcome {
        let retries = self.policy.retries;
        let unit_name = result.file.clone();
        let Some(unit) = self.units.get_mut(&unit_name) else {
            return Outcome::Final(result);
        };
        if unit.done.is_some() {
            return Outcome::Duplicate;
        }
        let attempt = retry_attempt(&result);
        let passed = attempt.passed;
        let place = attempt.place.clone();
        unit.attempts.push(attempt);
        unit.last = Some(result);
        let attempts = unit.attempts.len() as u32;
        if passed || unit.last.as_ref().is_some_and(|r| !wants_retry(r)) {
            unit.done = Some(passed);
        } else if attempts > retries {
            unit.done = Some(false);
        } else {
            // Once more, if the budget allows.
            let again = self.spend(tests);
            let unit = self.units.get_mut(&unit_name).expect("the unit is known");
            if again {
                self.queued.push(Retry {
                    unit: unit_name.clone(),
                    attempt: attempts + 1,
                    avoid: place,
                });
                return Outcome::Held;
            }
            unit.done = Some(false);
        }
        let unit = &self.units[&unit_name];
        self.retried.push(Retried {
            file: unit.of.clone(),
            name: unit.name.clone(),
            unit: unit_name.clone(),
            attempts: unit.attempts.clone(),
        });
        let of = unit.of.clone();
        let all_done = self.pending[&of]
            .units
            .iter()
            .all(|u| self.units[u].done.is_some());
        if !all_done {
            return Outcome::Held;
        }
        let pending = self.pending.remove(&of).expect("the unit is pending");
        Outcome::Completed(self.final_result(pending))
    }

    /// The queued unit's final result once every retry of it has its verdict.
    fn final_result(&self, pending: Pending) -> FileResult {
        let Pending { first, units } = pending;
        if units.len() == 1 && units[0] == first.file {
            // The whole unit ran again: its last attempt is its result.
            let unit = &self.units[&first.file];
            let mut last = unit.last.clone().unwrap_or_else(|| first.clone());
            // The tests that failed before and pass now are flaky, not new.
            last.seconds = first.seconds;
            return last;
        }
        let mut result = first;
        let mut all_passed = true;
        for test in result.tests.iter_mut() {
            let Some(id) = test.id.clone() else { continue };
            let Some(unit) = self.units.get(&id).filter(|u| u.of == result.file) else {
                continue;
            };
            if !test.status.is_failure() {
                continue;
            }
            let Some(last) = &unit.last else { continue };
            match last
                .tests
                .iter()
                .find(|t| t.id.as_deref() == Some(id.as_str()))
            {
                Some(again) => {
                    test.status = again.status;
                    test.message = again.message.clone();
                    test.details = again.details.clone();
                }
                None if last.status == FileStatus::Passed => {
                    test.status = TestStatus::Passed;
                    test.message = None;
                    test.details = None;
                }
                None => {}
            }
            all_passed &= !test.status.is_failure();
        }
        let any_left = result.tests.iter().any(|t| t.status.is_failure());
        if all_passed && !any_left {
            result.status = FileStatus::Passed;
            result.exit = format!("{} (passed on retry)", result.exit);
        }
        result
    }
}

/// Whether a result is a failure that a retry may turn around: a failed or timed-out run,
/// never a crash (that is `max_crash_retries`).
fn wants_retry(result: &FileResult) -> bool {
    matches!(result.status, FileStatus::Failed | FileStatus::TimedOut)
}

fn place_of(result: &FileResult) -> Place {
    Place {
        host: result.host.clone(),
        worker_id: result.worker_id,
    }
}

/// What runs again for a failed result, with each unit's name: the failed tests by their
/// ids when every one has an id that belongs to the file, else the unit itself.
fn retry_units(result: &FileResult) -> Vec<(String, String)> {
    let failed: Vec<&TestResult> = result
        .tests
        .iter()
        .filter(|t| t.status.is_failure())
        .collect();
    let whole = vec![(result.file.clone(), result.file.clone())];
    // A split file's test, a timeout, or a failure outside any test: the unit again.
    if unit_file(&result.file).is_some() || result.status != FileStatus::Failed || failed.is_empty()
    {
        return whole;
    }
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    for test in failed {
        match &test.id {
            Some(id) if unit_file(id) == Some(result.file.as_str()) => {
                units.entry(id.clone()).or_insert_with(|| test.name.clone());
            }
            _ => return whole,
        }
    }
    units.into_iter().collect()
}

/// The first attempt of `unit` in the failed `result`.
fn first_attempt(result: &FileResult, unit: &str) -> Attempt {
    let test = result.tests.iter().find(|t| t.id.as_deref() == Some(unit));
    Attempt {
        place: place_of(result),
        seconds: test.map_or(result.seconds, |t| t.seconds),
        passed: false,
        message: match test {
            Some(test) => test.message.clone(),
            None => Some(failure_summary(result)),
        },
        output: match test {
            Some(test) => test.details.clone().unwrap_or_default(),
            None => result.output.clone(),
        },
    }
}

/// A retry's attempt, from its result.
fn retry_attempt(result: &FileResult) -> Attempt {
    let passed = result.status == FileStatus::Passed;
    Attempt {
        place: place_of(result),
        seconds: result.seconds,
        passed,
        message: (!passed).then(|| failure_summary(result)),
        output: if passed {
            String::new()
        } else {
            result.output.clone()
        },
    }
}

/// How a failed run reads in one line: its first failed test's message, else its exit.
fn failure_summary(result: &FileResult) -> String {
    result
        .tests
        .iter()
        .find(|t| t.status.is_failure())
        .and_then(|t| t.message.clone())
        .unwrap_or_else(|| result.exit.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(name: &str, id: Option<&str>, status: TestStatus) -> TestResult {
        TestResult {
            name: name.into(),
            classname: String::new(),
            file: None,
            line: None,
            status,
            seconds: 0.1,
            message: (status != TestStatus::Passed).then(|| format!("{name} broke")),
            details: None,
            id: id.map(str::to_owned),
        }
    }

    fn result(
        file: &str,
        worker_id: u32,
        status: FileStatus,
        tests: Vec<TestResult>,
    ) -> FileResult {
        FileResult {
            host: "h1".into(),
            worker_id,
            file: file.into(),
            status,
            seconds: 1.0,
            exit: if status == FileStatus::Passed {
                "exit status 0".into()
            } else {
                "exit status 1".into()
            },
            output: "output".into(),
            tests,
            impact: None,
        }
    }

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            budget: None,
        }
    }

    #[test]
    fn without_retries_a_failure_is_final() {
        let mut retries = Retries::new(policy(0));
        let failed = result("a_spec.rb", 1, FileStatus::Failed, vec![]);
        assert_eq!(
            retries.take_result(failed.clone(), 0),
            Outcome::Final(failed)
        );
        assert!(retries.take_queued().is_empty());
    }

    #[test]
    fn failed_tests_with_ids_run_again_alone_and_a_pass_makes_them_flaky() {
        let mut retries = Retries::new(policy(2));
        let first = result(
            "a_spec.rb",
            3,
            FileStatus::Failed,
            vec![
                test("ok", Some("a_spec.rb:1"), TestStatus::Passed),
                test("shaky", Some("a_spec.rb:5"), TestStatus::Failed),
            ],
        );
        assert_eq!(retries.take_result(first, 2), Outcome::Held);
        assert!(retries.is_pending("a_spec.rb"));
        let queued = retries.take_queued();
        assert_eq!(
            queued,
            [Retry {
                unit: "a_spec.rb:5".into(),
                attempt: 2,
                avoid: Place {
                    host: "h1".into(),
                    worker_id: 3
                },
            }]
        );
        let again = result(
            "a_spec.rb:5",
            1,
            FileStatus::Passed,
            vec![test("shaky", Some("a_spec.rb:5"), TestStatus::Passed)],
        );
        let Outcome::Completed(last) = retries.take_result(again.clone(), 2) else {
            panic!("the only retry finished the file");
        };
        assert_eq!(last.file, "a_spec.rb");
        assert_eq!(last.status, FileStatus::Passed);
        assert_eq!(last.seconds, 1.0, "the file's own time, for the history");
        assert_eq!(last.tests.len(), 2, "each test counted once");
        assert!(last.tests.iter().all(|t| t.status == TestStatus::Passed));
        let flaky: Vec<&Retried> = retries.flaky().collect();
        assert_eq!(flaky.len(), 1);
        assert_eq!(flaky[0].name, "shaky");
        assert_eq!(flaky[0].attempts.len(), 2);
        assert_eq!(flaky[0].attempts[0].message.as_deref(), Some("shaky broke"));
        assert_eq!(flaky[0].attempts[0].place.worker_id, 3);
        assert!(flaky[0].attempts[1].passed);
        // A late copy of the retry's result changes nothing.
        assert_eq!(retries.take_result(again, 2), Outcome::Duplicate);
    }

    #[test]
    fn a_test_that_fails_every_attempt_is_a_failure_with_every_attempt() {
        let mut retries = Retries::new(policy(2));
        let failing = |file: &str, worker| {
            result(
                file,
                worker,
                FileStatus::Failed,
                vec![test("broken", Some("t.py::test_b"), TestStatus::Failed)],
            )
        };
        assert_eq!(retries.take_result(failing("t.py", 1), 1), Outcome::Held);
        assert_eq!(retries.take_queued()[0].attempt, 2);
        assert_eq!(
            retries.take_result(failing("t.py::test_b", 2), 1),
            Outcome::Held
        );
        let third = retries.take_queued();
        assert_eq!(third[0].attempt, 3);
        assert_eq!(third[0].avoid.worker_id, 2, "away from the last failure");
        let Outcome::Completed(last) = retries.take_result(failing("t.py::test_b", 1), 1) else {
            panic!("two retries, then the verdict");
        };
        assert_eq!(last.status, FileStatus::Failed);
        assert!(retries.take_queued().is_empty());
        assert_eq!(retries.retried()[0].attempts.len(), 3);
        assert_eq!(retries.flaky().count(), 0);
    }

    #[test]
    fn a_failure_without_test_ids_runs_the_whole_file_again() {
        let mut retries = Retries::new(policy(1));
        let first = result(
            "t/a.sh",
            1,
            FileStatus::Failed,
            vec![test("x", None, TestStatus::Failed)],
        );
        assert_eq!(retries.take_result(first, 1), Outcome::Held);
        assert_eq!(retries.take_queued()[0].unit, "t/a.sh");
        let passed = result(
            "t/a.sh",
            2,
            FileStatus::Passed,
            vec![test("x", None, TestStatus::Passed)],
        );
        let Outcome::Completed(last) = retries.take_result(passed, 1) else {
            panic!("the retry decides");
        };
        assert_eq!(last.status, FileStatus::Passed);
        assert_eq!(last.worker_id, 2);
        assert_eq!(retries.flaky().next().unwrap().name, "t/a.sh");
    }

    #[test]
    fn a_crash_is_not_retried_and_a_split_test_reruns_as_itself() {
        let mut retries = Retries::new(policy(3));
        let crashed = result("a_spec.rb", 1, FileStatus::Crashed, vec![]);
        assert_eq!(
            retries.take_result(crashed.clone(), 0),
            Outcome::Final(crashed)
        );
        let split = result(
            "a_spec.rb:9",
            1,
            FileStatus::Failed,
            vec![test("t", Some("a_spec.rb:9"), TestStatus::Failed)],
        );
        assert_eq!(retries.take_result(split, 1), Outcome::Held);
        assert_eq!(retries.take_queued()[0].unit, "a_spec.rb:9");
    }

    #[test]
    fn the_budget_caps_the_retries_of_a_run() {
        let mut retries = Retries::new(RetryPolicy {
            retries: 5,
            budget: Some(2),
        });
        let tests: Vec<TestResult> = (1..=3)
            .map(|line| {
                test(
                    &format!("t{line}"),
                    Some(&format!("a_test.rb::T#t{line}")),
                    TestStatus::Failed,
                )
            })
            .collect();
        let first = result("a_test.rb", 1, FileStatus::Failed, tests);
        assert_eq!(retries.take_result(first, 3), Outcome::Held);
        assert_eq!(
            retries.take_queued().len(),
            2,
            "two of the three failures fit"
        );
        assert!(retries.exhausted());
        let later = result("b_test.rb", 1, FileStatus::Failed, vec![]);
        assert_eq!(retries.take_result(later.clone(), 3), Outcome::Final(later));
        // The default: ten, or one in a hundred of the tests reported.
        assert_eq!(policy(1).budget(50), 10);
        assert_eq!(policy(1).budget(2_501), 26);
    }
}
