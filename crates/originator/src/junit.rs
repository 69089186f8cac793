//! The run's results as one JUnit XML report (`gorgon start --junit PATH`, `junit_file`):
//! one `testsuite` per queued file (per phase, in a run with phases), one `testcase` per test
//! the runner reported (or one for the whole file when it reported none), merged across every
//! host and worker.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gorgon_protocol::{FileResult, FileStatus, TestResult, TestStatus};
use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite, XmlString,
};

use crate::phases::{Phase, PhaseStatus};
use crate::quarantine::Quarantine;
use crate::retries::Retried;
use crate::state::JobState;

/// The name of the property that says where a test ran, as `host:worker`.
pub const WORKER_PROPERTY: &str = "gorgon.worker";

/// The report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("cannot write the JUnit report {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the JUnit report: {0}")]
    Serialize(#[from] quick_junit::SerializeError),
}

/// What the report says about the run as a whole.
pub struct RunInfo<'a> {
    pub project: &'a str,
    pub job_id: uuid::Uuid,
    pub started: DateTime<Utc>,
    pub seconds: f64,
    /// The files `--changed` left out, and what the report says of each.
    pub not_selected: Option<(&'a [String], String)>,
}

/// Builds the report of a run: every queued file in queue order, including those that never
/// got a result (as errors, "did not run").
pub fn report(run: &RunInfo, state: &JobState) -> Report {
    let mut report = Report::new(format!("gorgon {}", run.project));
    report
        .set_uuid(run.job_id)
        .set_timestamp(run.started)
        .set_time(seconds(run.seconds));
    if !state.phases().is_empty() {
        for phase in state.phases().list() {
            report.add_test_suite(phase_suite(phase, state));
        }
    } else {
        for file in state.queued() {
            report.add_test_suite(file_suite(file, state));
        }
    }
    if let Some((files, reason)) = &run.not_selected {
        for file in *files {
            report.add_test_suite(not_selected_suite(file, reason));
        }
    }
    report
}

/// The suite of a file `--changed` left out: one skipped case, never a passing one.
fn not_selected_suite(file: &str, reason: &str) -> TestSuite {
    let mut suite = TestSuite::new(file);
    let mut status = TestCaseStatus::skipped();
    status.set_message(reason).set_type("not selected");
    let mut case = TestCase::new(file, status);
    case.set_classname(classname_of(file));
    suite.add_test_case(case);
    suite
}

/// The suite of one queued file.
fn file_suite(file: &str, state: &JobState) -> TestSuite {
    // Where the runners report their tests, the report holds exactly those: a file allowed
    // to pass with none gets an empty suite, not an invented case.
    let retried: Vec<&Retried> = state
        .retries()
        .retried()
        .iter()
        .filter(|r| r.file == *file)
        .collect();
    let context = SuiteContext {
        per_test: state.has_tests(),
        retried: &retried,
        cut_short: state.cut_short(),
        quarantine: state.quarantine(),
    };
    suite(file, state.result(file), &context)
}

/// The suite of one phase: the cases of its files, a case for its command, or, when it did
/// not run, a skipped case per file with the reason.
fn phase_suite(phase: &Phase, state: &JobState) -> TestSuite {
    let mut suite = TestSuite::new(phase.name());
    suite.set_time(seconds(phase.seconds));
    if let PhaseStatus::NotRun(not_run) = &phase.status {
        let names = match &phase.settings.command {
            Some(command) => vec![(command.clone(), phase.name().to_owned())],
            None => phase
                .units
                .iter()
                .map(|u| (u.clone(), classname_of(u)))
                .collect(),
        };
        for (name, classname) in names {
            let mut status = TestCaseStatus::skipped();
            status
                .set_message(format!(
                    "not run: phase {} did not run: {}",
                    phase.name(),
                    not_run.reason
                ))
                .set_type("not run");
            let mut case = TestCase::new(name.as_str(), status);
            case.set_classname(classname);
            suite.add_test_case(case);
        }
        return suite;
    }
    if let Some(command) = &phase.settings.command {
        let status = match &phase.status {
            PhaseStatus::Failed(why) => {
                non_success(NonSuccessKind::Failure, why, "command failed", "")
            }
            _ => TestCaseStatus::success(),
        };
        let mut case = TestCase::new(command.as_str(), status);
        case.set_classname(phase.name())
            .set_time(seconds(phase.seconds));
        suite.add_test_case(case);
        return suite;
    }
    // The output of its failing files, each after its name.
    let mut output = String::new();
    for unit in &phase.units {
        let file = file_suite(unit, state);
        if let Some(out) = &file.system_out {
            output.push_str(&format!("{unit}:\n{}\n", out.as_str()));
        }
        suite.add_test_cases(file.test_cases);
    }
    if !output.is_empty() {
        suite.set_system_out(output);
    }
    suite
}

/// The name of the property that marks a quarantined test or file (`true`): its failure
/// does not fail the run.
pub const QUARANTINED_PROPERTY: &str = "gorgon.quarantined";

/// The earlier, failed attempts of a retried test or file as reruns of its case: a case
/// that passed in the end has them as `flakyFailure`, one that failed every attempt as
/// `rerunFailure`.
fn add_reruns(case: &mut TestCase, retried: &Retried) {
    let earlier = retried.attempts.iter().filter(|a| !a.passed);
    let failed_in_the_end = !retried.flaky();
    let count = retried.attempts.len();
    for (number, attempt) in earlier.enumerate() {
        if failed_in_the_end && number + 1 == count {
            // The last attempt is the case's own failure.
            break;
        }
        let mut rerun = TestRerun::new(NonSuccessKind::Failure);
        rerun
            .set_type("failure")
            .set_time(seconds(attempt.seconds))
            .set_system_out(format!(
                "attempt {} at {}:{}",
                number + 1,
                attempt.place.host,
                attempt.place.worker_id
            ));
        if let Some(message) = &attempt.message {
            rerun.set_message(message.as_str());
        }
        if !attempt.output.is_empty() {
            rerun.set_stack_trace(attempt.output.as_str());
        }
        case.status.add_rerun(rerun);
    }
}

/// Writes the report to `path`, creating its folder.
pub fn write(path: &Path, report: &Report) -> Result<(), JunitError> {
    let text = report.to_string()?;
    let written = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
    .and_then(|()| std::fs::write(path, text));
    written.map_err(|source| JunitError::Write {
        path: path.to_owned(),
        source,
    })
}

/// One file's suite; `per_test` when the run's runners report tests, so that a file that
/// passed with none holds no case.
/// What a file's suite needs of the run beside its result.
struct SuiteContext<'a> {
    /// The run's runners report tests, so a file that passed with none holds no case.
    per_test: bool,
    /// The file's retried tests (or the file itself).
    retried: &'a [&'a Retried],
    /// Why the run was cut short by `max_fail`, when it was.
    cut_short: Option<&'a str>,
    quarantine: &'a Quarantine,
}

fn suite(file: &str, result: Option<&FileResult>, context: &SuiteContext) -> TestSuite {
    let SuiteContext {
        per_test,
        retried,
        cut_short,
        quarantine,
    } = *context;
    let mut suite = TestSuite::new(file);
    let Some(result) = result else {
        // Cut short by `max_fail`: skipped, with the reason; otherwise an error.
        let status = match cut_short {
            Some(reason) => {
                let mut status = TestCaseStatus::skipped();
                status
                    .set_message(format!("not run: {reason}"))
                    .set_type("not run");
                status
            }
            None => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status
                    .set_message("did not run")
                    .set_type("not run")
                    .set_description(
                    "the run ended before this file got a result (see the run's report for why)",
                );
                status
            }
        };
        let mut case = TestCase::new(file, status);
        case.set_classname(classname_of(file));
        case.extra.insert("file".into(), file.into());
        suite.add_test_case(case);
        return suite;
    };
    suite.set_time(seconds(result.seconds));
    let place = format!("{}:{}", result.host, result.worker_id);
    // A file run again as a whole: its attempts belong to the file's case.
    let whole = retried.iter().find(|r| r.unit == result.file);
    if result.tests.is_empty() {
        if !(per_test && result.status == FileStatus::Passed) || whole.is_some() {
            let mut case = file_case(result, &place);
            if let Some(whole) = whole {
                add_reruns(&mut case, whole);
            }
            if !quarantine.found_in(result).is_empty() {
                case.add_property(Property::new(QUARANTINED_PROPERTY, "true"));
            }
            suite.add_test_case(case);
        }
        return suite;
    }
    for test in &result.tests {
        let mut case = test_case(result, test, &place);
        let id = test.id.as_deref();
        if let Some(retried) = retried.iter().find(|r| id == Some(r.unit.as_str())) {
            add_reruns(&mut case, retried);
        }
        if quarantine.covers_test(result, test) {
            case.add_property(Property::new(QUARANTINED_PROPERTY, "true"));
        }
        suite.add_test_case(case);
    }
    // A file can fail outside its tests (a crash after the last test, a syntax error in a
    // helper): keep that failure visible as a case of its own.
    let tests_failed = result.tests.iter().any(|t| t.status.is_failure());
    if result.status != FileStatus::Passed && !tests_failed {
        suite.add_test_case(file_case(result, &place));
    }
    if result.status != FileStatus::Passed && !result.output.is_empty() {
        suite.set_system_out(result.output.as_str());
    }
    suite
}

/// The whole file as one test case, for runners that report no tests.
fn file_case(result: &FileResult, place: &str) -> TestCase {
    let status = match result.status {
        FileStatus::Passed => TestCaseStatus::success(),
        FileStatus::Failed => non_success(
            NonSuccessKind::Failure,
            &result.exit,
            "failure",
            &result.output,
        ),
        FileStatus::Crashed => {
            non_success(NonSuccessKind::Error, &result.exit, "crash", &result.output)
        }
        FileStatus::TimedOut => non_success(
            NonSuccessKind::Error,
            &result.exit,
            "timeout",
            &result.output,
        ),
    };
    let mut case = TestCase::new(result.file.as_str(), status);
    case.set_classname(classname_of(&result.file))
        .set_time(seconds(result.seconds))
        .add_property(Property::new(WORKER_PROPERTY, place));
    case.extra
        .insert("file".into(), result.file.as_str().into());
    case
}

/// One test the runner reported.
fn test_case(result: &FileResult, test: &TestResult, place: &str) -> TestCase {
    let message = test.message.as_deref().unwrap_or("");
    let details = test.details.as_deref().unwrap_or("");
    let status = match test.status {
        // pytest's own JUnit writes an xpass as a passing case and an xfail as a skipped one.
        TestStatus::Passed | TestStatus::Xpassed => TestCaseStatus::success(),
        TestStatus::Failed => non_success(NonSuccessKind::Failure, message, "failure", details),
        TestStatus::Errored => non_success(NonSuccessKind::Error, message, "error", details),
        TestStatus::Skipped | TestStatus::Pending | TestStatus::Xfailed => {
            let mut status = TestCaseStatus::skipped();
            if !message.is_empty() {
                status.set_message(message);
            }
            match test.status {
                TestStatus::Pending => status.set_type("pending"),
                TestStatus::Xfailed => status.set_type("xfail"),
                _ => &mut status,
            };
            status
        }
    };
    let mut case = TestCase::new(test.name.as_str(), status);
    let classname = if test.classname.is_empty() {
        classname_of(&result.file)
    } else {
        test.classname.clone()
    };
    case.set_classname(classname)
        .set_time(seconds(test.seconds))
        .add_property(Property::new(WORKER_PROPERTY, place));
    let file = test.file.as_deref().unwrap_or(&result.file);
    case.extra.insert("file".into(), file.into());
    if let Some(line) = test.line {
        case.extra.insert("line".into(), line.to_string().into());
    }
    case
}

fn non_success(kind: NonSuccessKind, message: &str, ty: &str, text: &str) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(kind);
    status.set_type(ty);
    if !message.is_empty() {
        status.set_message(message);
    }
    if !text.is_empty() {
        status.set_description(XmlString::new(text));
    }
    status
}

/// `tests/math/add_test.sh` → `tests.math.add_test`, the usual JUnit spelling of a path.
fn classname_of(file: &str) -> String {
    let path = Path::new(file);
    let stem = path.with_extension("");
    stem.to_string_lossy().replace(['/', '\\'], ".")
}

/// Seconds as a duration; negative or non-finite values (a clock gone wrong) become zero.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, status: FileStatus, tests: Vec<TestResult>) -> FileResult {
        FileResult {
            host: "alpha".into(),
            worker_id: 2,
            file: name.into(),
            status,
            seconds: 1.5,
            exit: match status {
                FileStatus::Passed => "exit status 0".into(),
                FileStatus::Failed => "exit status 1".into(),
                FileStatus::Crashed => "killed by signal 9 (SIGKILL)".into(),
                FileStatus::TimedOut => "timed out after 5 s".into(),
            },
            output: format!("output of {name}\n"),
            tests,
            impact: None,
        }
    }

    fn test(name: &str, status: TestStatus, message: Option<&str>) -> TestResult {
        TestResult {
            name: name.into(),
            classname: "CartTest".into(),
            file: Some("test/cart_test.rb".into()),
            line: Some(12),
            status,
            seconds: 0.25,
            message: message.map(str::to_owned),
            details: message.map(|m| format!("{m}\n  at test/cart_test.rb:12")),
            id: None,
        }
    }

    fn xml(state: &JobState) -> String {
        let run = RunInfo {
            project: "shop",
            job_id: uuid::Uuid::nil(),
            started: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            seconds: 3.0,
            not_selected: None,
        };
        report(&run, state).to_string().unwrap()
    }

    fn cases<'a>(doc: &'a roxmltree::Document) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect()
    }

    fn child<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> Option<roxmltree::Node<'a, 'a>> {
        node.children().find(|n| n.has_tag_name(tag))
    }

    #[test]
    fn files_without_per_test_results_are_one_case_each() {
        let mut state = JobState::new(vec![
            "tests/math/add_test.sh".into(),
            "tests/math/div_test.sh".into(),
            "tests/crash_test.sh".into(),
            "tests/never_test.sh".into(),
        ]);
        state.file_finished(file("tests/math/add_test.sh", FileStatus::Passed, vec![]));
        state.file_finished(file("tests/math/div_test.sh", FileStatus::Failed, vec![]));
        state.file_finished(file("tests/crash_test.sh", FileStatus::Crashed, vec![]));
        let text = xml(&state);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("name"), Some("gorgon shop"));
        assert_eq!(root.attribute("tests"), Some("4"));
        assert_eq!(root.attribute("failures"), Some("1"));
        assert_eq!(root.attribute("errors"), Some("2"));
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites.len(), 4);
        assert!(suites.iter().all(|s| s.has_tag_name("testsuite")));
        assert_eq!(suites[1].attribute("name"), Some("tests/math/div_test.sh"));

        let cases = cases(&doc);
        assert_eq!(cases.len(), 4);
        let passed = cases[0];
        assert_eq!(passed.attribute("name"), Some("tests/math/add_test.sh"));
        assert_eq!(passed.attribute("classname"), Some("tests.math.add_test"));
        assert_eq!(passed.attribute("file"), Some("tests/math/add_test.sh"));
        assert_eq!(passed.attribute("time"), Some("1.500"));
        let property = passed
            .descendants()
            .find(|n| n.has_tag_name("property"))
            .unwrap();
        assert_eq!(property.attribute("name"), Some(WORKER_PROPERTY));
        assert_eq!(property.attribute("value"), Some("alpha:2"));
        assert!(child(passed, "failure").is_none() && child(passed, "error").is_none());

        let failure = child(cases[1], "failure").unwrap();
        assert_eq!(failure.attribute("message"), Some("exit status 1"));
        assert_eq!(failure.text(), Some("output of tests/math/div_test.sh\n"));
        let crash = child(cases[2], "error").unwrap();
        assert_eq!(
            crash.attribute("message"),
            Some("killed by signal 9 (SIGKILL)")
        );
        let never = child(cases[3], "error").unwrap();
        assert_eq!(never.attribute("message"), Some("did not run"));
        assert!(child(cases[3], "properties").is_none());
    }

    #[test]
    fn per_test_results_become_cases_with_their_verdicts() {
        let mut state = JobState::new(vec!["test/cart_test.rb".into()]);
        state.file_finished(file(
            "test/cart_test.rb",
            FileStatus::Failed,
            vec![
                test("test_adds", TestStatus::Passed, None),
                test("test_tax", TestStatus::Failed, Some("expected 2, got 3")),
                test("test_db", TestStatus::Errored, Some("connection refused")),
                test("test_later", TestStatus::Skipped, Some("not today")),
                test("test_todo", TestStatus::Pending, None),
            ],
        ));
        let text = xml(&state);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("tests"), Some("5"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert_eq!(suite.attribute("errors"), Some("1"));
        assert_eq!(suite.attribute("skipped"), Some("2"));
        let cases = cases(&doc);
        let names: Vec<_> = cases.iter().filter_map(|c| c.attribute("name")).collect();
        assert_eq!(
            names,
            [
                "test_adds",
                "test_tax",
                "test_db",
                "test_later",
                "test_todo"
            ]
        );
        assert!(cases
            .iter()
            .all(|c| c.attribute("classname") == Some("CartTest")
                && c.attribute("file") == Some("test/cart_test.rb")
                && c.attribute("line") == Some("12")
                && c.attribute("time") == Some("0.250")));
        let failure = child(cases[1], "failure").unwrap();
        assert_eq!(failure.attribute("message"), Some("expected 2, got 3"));
        assert_eq!(
            failure.text(),
            Some("expected 2, got 3\n  at test/cart_test.rb:12")
        );
        let error = child(cases[2], "error").unwrap();
        assert_eq!(error.attribute("message"), Some("connection refused"));
        let skipped = child(cases[3], "skipped").unwrap();
        assert_eq!(skipped.attribute("message"), Some("not today"));
        assert!(child(cases[4], "skipped").is_some());
        // The file's output is kept beside its cases.
        assert_eq!(
            child(suite, "system-out").and_then(|n| n.text()),
            Some("output of test/cart_test.rb\n")
        );
    }

    #[test]
    fn xfails_are_skipped_cases_and_xpasses_passing_ones_as_in_pytests_junit() {
        let mut state = JobState::new(vec!["tests/test_a.py".into()]);
        state.file_finished(file(
            "tests/test_a.py",
            FileStatus::Passed,
            vec![
                test(
                    "test_later",
                    TestStatus::Xfailed,
                    Some("expected to fail: not yet"),
                ),
                test("test_lucky", TestStatus::Xpassed, None),
            ],
        ));
        let text = xml(&state);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let cases = cases(&doc);
        assert_eq!(cases.len(), 2);
        let xfail = child(cases[0], "skipped").unwrap();
        assert_eq!(xfail.attribute("type"), Some("xfail"));
        assert_eq!(
            xfail.attribute("message"),
            Some("expected to fail: not yet")
        );
        assert!(cases[1].children().all(|c| !c.has_tag_name("skipped")
            && !c.has_tag_name("failure")
            && !c.has_tag_name("error")));
    }

    #[test]
    fn a_file_allowed_to_pass_empty_adds_no_invented_case_where_runners_report_tests() {
        let queued = vec!["test/a_test.rb".into(), "test/empty_test.rb".into()];
        let mut state = JobState::new(queued);
        state.file_finished(file(
            "test/a_test.rb",
            FileStatus::Passed,
            vec![test("test_adds", TestStatus::Passed, None)],
        ));
        state.file_finished(file("test/empty_test.rb", FileStatus::Passed, vec![]));
        let text = xml(&state);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let names: Vec<_> = cases(&doc)
            .iter()
            .filter_map(|c| c.attribute("name"))
            .collect();
        assert_eq!(names, ["test_adds"]);
        // A failing empty file still shows why, as a case of its own.
        let mut state = JobState::new(vec!["test/a_test.rb".into(), "test/empty_test.rb".into()]);
        state.file_finished(file(
            "test/a_test.rb",
            FileStatus::Passed,
            vec![test("test_adds", TestStatus::Passed, None)],
        ));
        state.file_finished(file("test/empty_test.rb", FileStatus::Failed, vec![]));
        assert_eq!(
            cases(&roxmltree::Document::parse(&xml(&state)).unwrap()).len(),
            2
        );
    }

    #[test]
    fn a_file_that_fails_outside_its_tests_keeps_a_case_for_it() {
        let mut state = JobState::new(vec!["spec/a_spec.rb".into()]);
        state.file_finished(file(
            "spec/a_spec.rb",
            FileStatus::Crashed,
            vec![test("works", TestStatus::Passed, None)],
        ));
        let text = xml(&state);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let cases = cases(&doc);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].attribute("name"), Some("spec/a_spec.rb"));
        assert!(child(cases[1], "error").is_some());
    }

    #[test]
    fn the_report_is_written_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports/junit.xml");
        let state = JobState::new(vec!["a".into()]);
        let run = RunInfo {
            project: "p",
            job_id: uuid::Uuid::nil(),
            started: Utc::now(),
            seconds: 0.0,
            not_selected: None,
        };
        write(&path, &report(&run, &state)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<?xml"));
        let error = write(
            &dir.path().join("reports/junit.xml/x"),
            &report(&run, &state),
        );
        assert!(error
            .unwrap_err()
            .to_string()
            .starts_with("cannot write the JUnit report"));
    }
}
