//! End to end through the real path (binary, RabbitMQ, rsync daemon, listener, workers) for
//! the built-in persistent runners: each fixture suite in `tests/fixtures/` reports the right
//! status for every file and test, the right exit code and each failing test by file:line;
//! a runner killed mid-file or past its time limit costs only that file.

use std::path::Path;
use std::time::Duration;

use crate::support::{Cluster, Project, Run, WORKER_KILLER};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Copies `tests/fixtures/<name>` into the project.
fn copy_fixture(name: &str, project: &Project) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy(&root.join(name), &project.dir);
}

/// Runs the fixture suite `name` with the built-in runner of the same name on one listener
/// with one worker, so that every file goes through the same warm runner.
/// What the report of one fixture suite must say.
struct Expected {
    /// The built-in runner, also the fixture's folder under `tests/fixtures`.
    runner: &'static str,
    files: &'static str,
    /// Exactly the files that must not pass, sorted.
    failed: &'static [&'static str],
    /// Text the report must hold (failing tests with file:line and message).
    report: &'static [&'static str],
    /// (file, why): each file reported as failed with that reason in its section.
    reasons: &'static [(&'static str, &'static str)],
    totals: &'static str,
    tests: &'static str,
}

/// Runs a fixture suite with its built-in runner on one listener with one worker (so that
/// every file goes through the same warm runner) and checks the report against `expected`.
fn check_fixture(expected: Expected) {
    check_fixture_isolated(expected, "shared");
}

/// [`check_fixture`] with `job.runner.isolation` set to `isolation`.
fn check_fixture_isolated(expected: Expected, isolation: &str) {
    check_fixture_with(expected, isolation, false);
}

/// [`check_fixture_isolated`], recording the impact map when `record` (which must change
/// no verdict; the map then holds every file that ran to its end).
fn check_fixture_with(expected: Expected, isolation: &str, record: bool) {
    let cluster = Cluster::with_listeners(&[("runner", 1)]);
    let project = cluster.project(
        expected.runner,
        json!({"files": [expected.files],
               "job": {"runner": {"kind": expected.runner, "command": "", "isolation": isolation},
                       "impact": {"record": record}}}),
    );
    copy_fixture(expected.runner, &project);
    cluster.wait_for_listeners(&project, 1);

    let run = project.start(&[], RUN_LIMIT);

    run.assert_exit(1);
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    assert_eq!(failed, expected.failed, "{run:?}");
    for text in expected.report {
        assert!(run.stdout.contains(text), "expected {text:?} in {run:?}");
    }
    for (file, why) in expected.reasons {
        assert_file_failed(&run, file, why);
    }
    for line in [expected.totals, expected.tests] {
        assert!(run.stdout.contains(line), "expected {line:?} in {run:?}");
    }
    if record {
        let map: serde_json::Value =
            serde_json::from_str(&project.read("gorgon-runtime.impact.json")).unwrap();
        assert!(!map["tests"].as_object().unwrap().is_empty(), "{map}");
    }
}

/// Asserts that the report says `file` failed for `why`.
fn assert_file_failed(run: &Run, file: &str, why: &str) {
    let header = format!("File '{file}' failed at '");
    let start = run
        .stdout
        .find(&header)
        .unwrap_or_else(|| panic!("{file} is not reported as failed: {run:?}"));
    let section = &run.stdout[start..];
    let section = &section[..section.find("\n****").unwrap_or(section.len())];
    assert!(section.contains(why), "{file} should say {why:?}: {run:?}");
}

#[test]
fn rspec_files_and_examples_get_the_right_verdicts() {
    check_fixture(rspec_verdicts());
}

fn rspec_verdicts() -> Expected {
    Expected {
        runner: "rspec",
        files: "spec/**/*_spec.rb",
        failed: &[
            "spec/empty_spec.rb",
            "spec/error_spec.rb",
            "spec/exit_bang_spec.rb",
            "spec/exit_spec.rb",
            "spec/failing_spec.rb",
            "spec/load_error_spec.rb",
        ],
        report: &[
            "1) Cart adds tax failed (spec/failing_spec.rb:7)\n     expected: 121\n          got: 120.0",
            "# spec/failing_spec.rb:8:in",
            "1) Payments charges the card errored (spec/error_spec.rb:3)\n     ArgumentError: card number missing",
        ],
        reasons: &[
            ("spec/load_error_spec.rb", "load error"),
            ("spec/load_error_spec.rb", "syntax error"),
            ("spec/empty_spec.rb", "no tests ran"),
            ("spec/exit_spec.rb", "called exit"),
            ("spec/exit_bang_spec.rb", "ended the process"),
        ],
        totals: "9 files: 3 passed, 6 failed, 0 crashed, 0 not run",
        tests: "Tests: 5 passed, 1 failed, 1 errored, 1 skipped, 1 pending",
    }
}

#[test]
fn minitest_files_and_tests_get_the_right_verdicts() {
    check_fixture(minitest_verdicts());
}

fn minitest_verdicts() -> Expected {
    Expected {
        runner: "minitest",
        files: "test/**/*_test.rb",
        failed: &[
            "test/empty_test.rb",
            "test/error_test.rb",
            "test/exit_bang_test.rb",
            "test/exit_test.rb",
            "test/failing_test.rb",
            "test/load_error_test.rb",
        ],
        report: &[
            "1) CartTest#test_adds_tax failed (test/failing_test.rb:9)\n     Expected: 121\n       Actual: 120.0",
            "1) PaymentsTest#test_charges_the_card errored (test/error_test.rb:5)\n     ArgumentError: card number missing",
        ],
        reasons: &[
            ("test/load_error_test.rb", "syntax error"),
            ("test/empty_test.rb", "no tests ran"),
            ("test/exit_test.rb", "called exit"),
            ("test/exit_bang_test.rb", "ended the process"),
        ],
        totals: "9 files: 3 passed, 6 failed, 0 crashed, 0 not run",
        tests: "Tests: 5 passed, 1 failed, 1 errored, 1 skipped, 0 pending",
    }
}

#[test]
fn pytest_files_and_tests_get_the_right_verdicts() {
    check_fixture(pytest_verdicts());
}

fn pytest_verdicts() -> Expected {
    Expected {
        runner: "pytest",
        files: "tests/**/test_*.py",
        failed: &[
            "tests/test_empty.py",
            "tests/test_error.py",
            "tests/test_exit.py",
            "tests/test_failing.py",
            "tests/test_load_error.py",
            "tests/test_syntax_error.py",
        ],
        report: &[
            "1) test_adds_tax failed (tests/test_failing.py:8)\n     assert (100 * 1.2) == 121",
            "1) test_charges_the_card failed (tests/test_error.py:4)\n     ValueError: card number missing",
        ],
        reasons: &[
            ("tests/test_load_error.py", "module_that_does_not_exist"),
            ("tests/test_syntax_error.py", "SyntaxError"),
            ("tests/test_empty.py", "no tests ran"),
            ("tests/test_exit.py", "os._exit"),
        ],
        totals: "9 files: 3 passed, 6 failed, 0 crashed, 0 not run",
        tests: "Tests: 5 passed, 2 failed, 0 errored, 1 skipped, 0 pending, 1 xfailed",
    }
}

#[test]
fn verdicts_are_the_same_with_a_fork_per_file() {
    for expected in [rspec_verdicts(), minitest_verdicts(), pytest_verdicts()] {
        check_fixture_isolated(expected, "fork");
    }
}

#[test]
fn verdicts_are_the_same_when_the_run_records_its_impact() {
    for isolation in ["shared", "fork"] {
        for expected in [rspec_verdicts(), minitest_verdicts(), pytest_verdicts()] {
            check_fixture_with(expected, isolation, true);
        }
    }
}

#[test]
fn a_runner_killed_mid_file_or_past_its_limit_costs_only_that_file() {
    let cluster = Cluster::with_listeners(&[("runner", 1)]);
    let project = cluster.project(
        "killed",
        json!({"files": ["spec/*_spec.rb"],
               "job": {"runner": {"kind": "rspec", "command": "", "file_timeout": 5}}}),
    );
    for name in ["a", "b", "c"] {
        project.write(
            &format!("spec/{name}_spec.rb"),
            "RSpec.describe('fine') { it('passes') { expect(1).to eq(1) } }\n",
        );
    }
    project.write(
        "spec/kill_spec.rb",
        "RSpec.describe('killer') do\n  it('kills its runner') do\n    puts 'about to kill the runner'\n    Process.kill('KILL', Process.ppid)\n    sleep 5\n  end\nend\n",
    );
    project.write(
        "spec/hang_spec.rb",
        "RSpec.describe('sleeper') do\n  it('hangs') do\n    puts 'going to sleep'\n    sleep 120\n  end\nend\n",
    );
    cluster.wait_for_listeners(&project, 1);

    let run = project.start(&[], RUN_LIMIT);

    run.assert_report(1, &["File 'spec/kill_spec.rb' crashed at 'runner:1' (the runner ended in the middle of the file (killed by signal 9 (SIGKILL))", "about to kill the runner", "File 'spec/hang_spec.rb' timed out at 'runner:1' (timed out after 5 s", "going to sleep", "5 files: 3 passed, 0 failed, 2 crashed, 0 not run", "Tests: 3 passed, 0 failed, 0 errored, 0 skipped, 0 pending"]);
}

/// A suite of quick files for one built-in runner: nine passing files, one that passes
/// through a helper loaded at boot, `wrong` (prints "printed by wrong" and fails `failure`),
/// `empty` (no test) and a large passing file that goes first.
struct QuickSuite {
    runner: &'static str,
    /// Run with `gorgon start --local -j 1` instead of on a listener with one slot.
    local: bool,
    glob: &'static str,
    files: Vec<(String, String)>,
    wrong: &'static str,
    empty: &'static str,
    failure: &'static str,
}

/// Nine quick files (`quick(i)` for `i` from 1 to 9), then the suite's `others`.
fn suite_files<const N: usize>(
    quick: impl Fn(u32) -> (String, String),
    others: [(&str, String); N],
) -> Vec<(String, String)> {
    (1..=9)
        .map(quick)
        .chain(others.map(|(path, text)| (path.to_owned(), text)))
        .collect()
}

/// Runs a [`QuickSuite`] on one worker: its first file runs alone (nothing is known of the
/// files' times), then the quick files run as batches, and every file keeps its own verdict.
fn check_quick_suite(suite: QuickSuite) {
    let mut cluster = Cluster::new();
    if !suite.local {
        cluster.start_listener("runner", 1);
    }
    let project = cluster.project(
        suite.runner,
        // A generous batch limit, so that a loaded machine cannot make the files look slow.
        json!({"files": [suite.glob],
               "job": {"runner": {"kind": suite.runner, "command": "", "batch_seconds": 10}}}),
    );
    for (path, text) in &suite.files {
        project.write(path, text);
    }
    let run = if suite.local {
        project.start(&["--local", "-j", "1"], RUN_LIMIT)
    } else {
        cluster.wait_for_listeners(&project, 1);
        project.start(&[], RUN_LIMIT)
    };

    run.assert_exit(1);
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    let mut expected = [suite.empty, suite.wrong];
    expected.sort();
    assert_eq!(failed, expected, "{run:?}");
    assert_file_failed(&run, suite.empty, "no tests ran");
    assert_file_failed(&run, suite.wrong, suite.failure);
    // The batch's output goes with each file that failed in it.
    assert_file_failed(&run, suite.wrong, "output of the batch of");
    assert_file_failed(&run, suite.wrong, "printed by wrong");
    for line in [
        "13 files: 11 passed, 2 failed, 0 crashed, 0 not run",
        "Tests: 11 passed, 1 failed, 0 errored, 0 skipped, 0 pending",
    ] {
        assert!(run.stdout.contains(line), "expected {line:?} in {run:?}");
    }
}

#[test]
fn quick_rspec_files_share_a_fork_and_keep_their_own_results() {
    check_quick_suite(QuickSuite {
        local: false,
        ..quick_rspec_suite()
    });
}

#[test]
fn quick_rspec_files_share_a_fork_under_local_too() {
    check_quick_suite(QuickSuite {
        local: true,
        ..quick_rspec_suite()
    });
}

fn quick_rspec_suite() -> QuickSuite {
    let files = suite_files(
|i| {
            let text = format!(
                "RSpec.describe('quick {i}') {{ it('adds') {{ expect({i} + 1).to eq({}) }} }}\n",
                i + 1
            );
            (format!("spec/quick_{i}_spec.rb"), text)
        },
[
        (
            "spec/spec_helper.rb",
            "Dir[File.join(__dir__, 'support', '*.rb')].each { |f| require f }\n".to_owned(),
        ),
        (
            "spec/support/shared.rb",
            "RSpec.shared_examples('a pair') { it('has two items') { expect(subject.size).to eq(2) } }\n".to_owned(),
        ),
        (
            "spec/shared_spec.rb",
            "RSpec.describe('Pair') { subject { [1, 2] }\n  it_behaves_like 'a pair'\n}\n".to_owned(),
        ),
        (
            "spec/wrong_spec.rb",
            "RSpec.describe('Wrong') do\n  it 'sums' do\n    puts 'printed by wrong'\n    expect(1 + 1).to eq(3)\n  end\nend\n".to_owned(),
        ),
        ("spec/empty_spec.rb", "# nothing here\n".to_owned()),
        (
            "spec/first_spec.rb",
            format!(
                "{}RSpec.describe('first') {{ it('runs') {{ expect(1).to eq(1) }} }}\n",
                "# padding\n".repeat(50)
            ),
        ),
]);
    QuickSuite {
        runner: "rspec",
        local: false,
        glob: "spec/*_spec.rb",
        files,
        wrong: "spec/wrong_spec.rb",
        empty: "spec/empty_spec.rb",
        failure: "1) Wrong sums failed (spec/wrong_spec.rb:2)",
    }
}

#[test]
fn quick_minitest_files_share_a_fork_and_keep_their_own_results() {
    let test_class = |name: &str, body: &str| {
        format!("require 'minitest/autorun'\n\nclass {name} < Minitest::Test\n{body}end\n")
    };
    let files = suite_files(
|i| {
            let body = format!(
                "  def test_adds\n    assert_equal {}, {i} + 1\n  end\n",
                i + 1
            );
            (
                format!("test/quick_{i}_test.rb"),
                test_class(&format!("Quick{i}Test"), &body),
            )
        },
[
        (
            "test/test_helper.rb",
            "def a_pair\n  [1, 2]\nend\n".to_owned(),
        ),
        (
            "test/shared_test.rb",
            test_class(
                "SharedTest",
                "  def test_has_two_items\n    assert_equal 2, a_pair.size\n  end\n",
            ),
        ),
        (
            "test/wrong_test.rb",
            test_class(
                "WrongTest",
                "  def test_sums\n    puts 'printed by wrong'\n    assert_equal 3, 1 + 1\n  end\n",
            ),
        ),
        ("test/empty_test.rb", "# nothing here\n".to_owned()),
        (
            "test/first_test.rb",
            "# padding\n".repeat(50)
                + &test_class("FirstTest", "  def test_runs\n    assert true\n  end\n"),
        ),
]);
    check_quick_suite(QuickSuite {
        runner: "minitest",
        local: false,
        glob: "test/*_test.rb",
        files,
        wrong: "test/wrong_test.rb",
        empty: "test/empty_test.rb",
        failure: "1) WrongTest#test_sums failed (test/wrong_test.rb:4)",
    });
}

#[test]
fn quick_pytest_files_share_a_fork_and_keep_their_own_results() {
    let files = suite_files(
        |i| {
            let text = format!("def test_adds():\n    assert {i} + 1 == {}\n", i + 1);
            (format!("tests/test_quick_{i}.py"), text)
        },
        [
            (
                "conftest.py",
                "import pytest\n\n\n@pytest.fixture\ndef pair():\n    return [1, 2]\n".to_owned(),
            ),
            (
                "tests/test_shared.py",
                "def test_has_two_items(pair):\n    assert len(pair) == 2\n".to_owned(),
            ),
            (
                "tests/test_wrong.py",
                "def test_sums():\n    print('printed by wrong')\n    assert 1 + 1 == 3\n"
                    .to_owned(),
            ),
            ("tests/test_empty.py", "# nothing here\n".to_owned()),
            (
                "tests/test_first.py",
                format!(
                    "{}def test_runs():\n    assert True\n",
                    "# padding\n".repeat(50)
                ),
            ),
        ],
    );
    check_quick_suite(QuickSuite {
        runner: "pytest",
        local: false,
        glob: "tests/test_*.py",
        files,
        wrong: "tests/test_wrong.py",
        empty: "tests/test_empty.py",
        failure: "1) test_sums failed (tests/test_wrong.py:1)",
    });
}

#[test]
fn a_file_that_kills_its_worker_inside_a_batch_is_found_and_no_other_file_is_blamed() {
    let cluster = Cluster::with_listeners(&[("victim", 1)]);
    let project = cluster.project(
        "batch-killer",
        json!({"files": ["spec/*_spec.rb"],
               "job": {"max_crash_retries": 2,
                       "runner": {"kind": "rspec", "command": "", "batch_seconds": 10}}}),
    );
    // The largest file goes first, alone; the others then form one batch with the killer.
    project.write(
        "spec/a_first_spec.rb",
        &format!(
            "{}RSpec.describe('first') {{ it('runs') {{ expect(1).to eq(1) }} }}\n",
            "# padding\n".repeat(50)
        ),
    );
    for i in 1..=6 {
        project.write(
            &format!("spec/quick_{i}_spec.rb"),
            &format!(
                "RSpec.describe('quick {i}') {{ it('passes') {{ expect({i}).to eq({i}) }} }}\n"
            ),
        );
    }
    project.write("spec/support/kill_worker.sh", WORKER_KILLER);
    project.write(
        "spec/killer_spec.rb",
        "RSpec.describe('killer') { it('kills its worker') { expect(system('sh', 'spec/support/kill_worker.sh')).to be(true) } }\n",
    );
    cluster.wait_for_listeners(&project, 1);

    let run = project.start(&[], RUN_LIMIT);

    // The batch's death blamed none of its files; each ran again alone, the killer killed
    // two more workers and was settled as crashed, and every other file passed.
    run.assert_report(
        1,
        &[
            "8 files: 7 passed, 0 failed, 1 crashed, 0 not run",
            "File 'spec/killer_spec.rb' crashed at",
            "its worker died 2 times",
        ],
    );
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

/// A suite where one file of four 1-second tests sits among four quick files.
struct SplitSuite {
    runner: &'static str,
    glob: &'static str,
    slow_file: &'static str,
    /// The slow file's text before its four tests, test `i`'s text (each takes a second),
    /// and the text after them.
    slow: (&'static str, fn(u32) -> String, &'static str),
    /// Quick file `i`'s path and text.
    quick: fn(u32) -> (String, String),
    /// How the runner runs the slow file's test `i` alone: its id.
    id: fn(u32) -> String,
}

/// On four slots the slow file alone bounds the run, so after one run (which records its
/// tests' ids and times) it is split: the second run queues its four tests like files.
fn check_split(suite: SplitSuite) {
    let cluster = Cluster::with_listeners(&[("splitter", 4)]);
    let project = cluster.project(
        &format!("split-{}", suite.runner),
        json!({"files": [suite.glob], "job": {"runner": {"kind": suite.runner, "command": ""}}}),
    );
    let (head, test, tail) = suite.slow;
    let tests: String = (1..=4).map(test).collect();
    project.write(suite.slow_file, &format!("{head}{tests}{tail}"));
    for i in 1..=4 {
        let (path, text) = (suite.quick)(i);
        project.write(&path, &text);
    }
    let ids = [1, 2, 3, 4].map(suite.id);
    let first = project.start(&[], RUN_LIMIT);
    first.assert_report(0, &["5 files: 5 passed"]);
    let history: serde_json::Value =
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap();
    assert_eq!(history["gorgon:slots"], 4.0, "{history}");
    for id in &ids {
        assert!(history.get(id).is_some(), "{id} in {history}");
    }

    let second = project.start(&[], RUN_LIMIT);
    second.assert_exit(0);
    // The slow file ran as its four tests, each a unit of the queue.
    second.assert_stdout(&["8 files: 8 passed"]);
    for id in &ids {
        assert!(
            second.stderr.contains(&format!("PASS {id} ")),
            "{id}: {second:?}"
        );
    }
    second.assert_stdout(&["Tests: 8 passed"]);
    // The file's own timing is kept up to date from its tests.
    let history: serde_json::Value =
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap();
    assert!(
        history[suite.slow_file].as_f64().unwrap() >= 4.0,
        "{history}"
    );
}

#[test]
fn a_file_that_would_bound_the_run_is_split_into_its_examples() {
    check_split(SplitSuite {
        runner: "rspec",
        glob: "spec/**/*_spec.rb",
        slow_file: "spec/slow_spec.rb",
        slow: (
            "RSpec.describe \"slow\" do\n",
            |i| format!("  it(\"takes a second {i}\") {{ sleep 1; expect({i}).to eq({i}) }}\n"),
            "end\n",
        ),
        quick: |i| {
            let text = format!("RSpec.describe \"quick {i}\" do\n  it(\"passes\") {{ expect({i}).to eq({i}) }}\nend\n");
            (format!("spec/quick_{i}_spec.rb"), text)
        },
        // The examples stand on lines 2 to 5.
        id: |i| format!("spec/slow_spec.rb:{}", i + 1),
    });
}

#[test]
fn a_minitest_file_that_would_bound_the_run_is_split_into_its_tests() {
    check_split(SplitSuite {
        runner: "minitest",
        glob: "test/*_test.rb",
        slow_file: "test/slow_test.rb",
        slow: (
            "require 'minitest/autorun'\n\nclass SlowTest < Minitest::Test\n",
            |i| format!("  def test_second_{i}\n    sleep 1\n    assert true\n  end\n"),
            "end\n",
        ),
        quick: |i| {
            let text = format!("require 'minitest/autorun'\n\nclass Quick{i}Test < Minitest::Test\n  def test_passes\n    assert_equal {i}, {i}\n  end\nend\n");
            (format!("test/quick_{i}_test.rb"), text)
        },
        id: |i| format!("test/slow_test.rb::SlowTest#test_second_{i}"),
    });
}

#[test]
fn a_pytest_file_that_would_bound_the_run_is_split_into_its_tests() {
    check_split(SplitSuite {
        runner: "pytest",
        glob: "tests/test_*.py",
        slow_file: "tests/test_slow.py",
        slow: (
            "import time\n",
            |i| format!("\n\ndef test_second_{i}():\n    time.sleep(1)\n"),
            "",
        ),
        quick: |i| {
            let text = format!("def test_passes():\n    assert {i} == {i}\n");
            (format!("tests/test_quick_{i}.py"), text)
        },
        id: |i| format!("tests/test_slow.py::test_second_{i}"),
    });
}

/// How a framework totals a run, read from its own closing line, as (word, count) pairs in a
/// fixed order, and the same totals computed from gorgon-rs's `Tests:` line.
struct Counting {
    /// The built-in runner, also the fixture's folder under `tests/fixtures/counts`.
    runner: &'static str,
    files: &'static str,
    /// `job.runner.command`: the interpreter command ("" for the default).
    command: &'static str,
    /// The framework's own serial run of the whole fixture, in the fixture's folder.
    serial: &'static [&'static str],
    /// Its closing line's words, as the framework spells them.
    words: &'static [&'static str],
    /// The same totals from gorgon-rs's statuses (`Tests:` line words and counts).
    from_gorgon: fn(&std::collections::HashMap<String, usize>) -> Vec<usize>,
}

/// The counts of `words` in the last line that starts with a number and holds the first
/// word, such as `3 failed, 7 passed, 1 error in 0.05s` (a missing word counts 0; `error`
/// and `errors` are one word).
fn closing_counts(text: &str, words: &[&str]) -> Vec<usize> {
    let line = text
        .lines()
        .rev()
        .find(|line| line.starts_with(|c: char| c.is_ascii_digit()) && line.contains(words[0]))
        .unwrap_or_else(|| panic!("no closing line with {:?} in {text}", words[0]));
    let pairs: Vec<(usize, String)> = line
        .split([',', ' '])
        .collect::<Vec<_>>()
        .windows(2)
        .filter_map(|w| Some((w[0].parse().ok()?, w[1].trim_end_matches('s').to_owned())))
        .collect();
    words
        .iter()
        .map(|word| {
            let word = word.trim_end_matches('s');
            pairs
                .iter()
                .filter(|(_, w)| w == word)
                .map(|(n, _)| n)
                .sum()
        })
        .collect()
}

/// The counts of gorgon-rs's `Tests: 5 passed, 1 failed, …` line, by word.
fn gorgon_counts(stdout: &str) -> std::collections::HashMap<String, usize> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Tests: "))
        .unwrap_or_else(|| panic!("no Tests line in {stdout}"));
    line["Tests: ".len()..]
        .split(", ")
        .map(|pair| {
            let (n, word) = pair.split_once(' ').unwrap();
            (word.to_owned(), n.parse().unwrap())
        })
        .collect()
}

/// JUnit totals of a report: (test cases, failures, errors, skipped).
fn junit_totals(xml: &str) -> (usize, usize, usize, usize) {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let with = |tag: &str| {
        cases
            .iter()
            .filter(|c| c.children().any(|k| k.has_tag_name(tag)))
            .count()
    };
    (cases.len(), with("failure"), with("error"), with("skipped"))
}

/// Runs a counting fixture with the framework alone and with gorgon-rs (one listener, two
/// slots), and checks that every test is counted exactly as the framework counts it.
fn check_counting(counting: Counting) -> (Project, Run, Cluster) {
    let mut cluster = Cluster::new();
    let fixture = format!("counts/{}", counting.runner);
    let alone = cluster.project("framework-alone", json!({}));
    copy_fixture(&fixture, &alone);
    let serial = std::process::Command::new(counting.serial[0])
        .args(&counting.serial[1..])
        .current_dir(&alone.dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let serial_text = String::from_utf8_lossy(&serial.stdout).into_owned();
    let expected = closing_counts(&serial_text, counting.words);

    cluster.start_listener("counting", 2);
    let project = cluster.project(
        counting.runner,
        json!({"files": [counting.files], "junit_file": "junit.xml",
               "job": {"runner": {"kind": counting.runner, "command": counting.command,
                                  "allow_empty_files": true}}}),
    );
    copy_fixture(&fixture, &project);
    cluster.wait_for_listeners(&project, 1);
    let run = project.start(&[], RUN_LIMIT);

    let gorgon = (counting.from_gorgon)(&gorgon_counts(&run.stdout));
    assert_eq!(
        gorgon, expected,
        "{:?} as counted by gorgon-rs against the framework's own run:\n{serial_text}\n{run:?}",
        counting.words
    );
    (project, run, cluster)
}

#[test]
fn pytest_counts_every_test_as_pytest_does_and_writes_the_same_junit() {
    let (project, run, _cluster) = check_counting(Counting {
        runner: "pytest",
        files: "tests/**/test_*.py",
        command: "",
        serial: &[
            "python3",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
            "--junitxml=own-junit.xml",
        ],
        words: &["passed", "failed", "skipped", "xfailed", "xpassed", "error"],
        from_gorgon: |c| {
            [
                "passed", "failed", "skipped", "xfailed", "xpassed", "errored",
            ]
            .iter()
            .map(|w| c.get(*w).copied().unwrap_or(0))
            .collect()
        },
    });
    // Modules skipped at collection pass, each as one skipped test with pytest's reason.
    run.assert_exit(1);
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    assert_eq!(
        failed,
        ["tests/test_basic.py", "tests/test_xfail.py"],
        "{run:?}"
    );
    assert!(
        run.stdout.contains("XPASS(strict)"),
        "the strict xpass is reported as pytest reports it: {run:?}"
    );
    // The same JUnit totals as pytest's own report: no case invented for the empty file.
    let own = std::fs::read_to_string(project.dir.join("../framework-alone/own-junit.xml"));
    assert_eq!(
        junit_totals(&project.read("junit.xml")),
        junit_totals(&own.unwrap()),
        "gorgon-rs's JUnit against pytest's"
    );
}

#[test]
fn rspec_counts_every_example_as_rspec_does_on_a_suite_with_real_world_habits() {
    // .rspec requires the helper, orders randomly and picks a formatter; examples come from
    // shared groups in spec/support; the interpreter command preloads a helper with -r; the
    // helper keeps example statuses in a file and makes every warning raise.
    let (project, run, _cluster) = check_counting(Counting {
        runner: "rspec",
        files: "spec/**/*_spec.rb",
        command: "ruby -r./spec/preload",
        serial: &["ruby", "-r./spec/preload", "-S", "rspec"],
        words: &["examples", "failures", "pending"],
        from_gorgon: |c| {
            let n = |w: &str| c.get(w).copied().unwrap_or(0);
            vec![
                c.values().sum(),
                n("failed") + n("errored"),
                n("pending") + n("skipped"),
            ]
        },
    });
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    assert_eq!(failed, ["spec/models/cart_spec.rb"], "{run:?}");
    assert!(!run.stdout.contains("a warning was raised"), "{run:?}");
    // Concurrent workers in one tree never write the example status file.
    let local = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    assert_eq!(
        gorgon_counts(&local.stdout),
        gorgon_counts(&run.stdout),
        "{local:?}"
    );
    assert!(!project.dir.join("spec/examples.txt").exists(), "{local:?}");
}

#[test]
fn minitest_counts_every_test_as_minitest_does_on_a_minitest_spec_suite() {
    // minitest/spec files named *_spec.rb, and tests defined in a helper module.
    let (project, run, _cluster) = check_counting(Counting {
        runner: "minitest",
        files: "spec/**/*_spec.rb",
        command: "",
        serial: &[
            "ruby",
            "-Ispec",
            "-e",
            "Dir['spec/**/*_spec.rb'].sort.each { |f| require \"./#{f}\" }",
        ],
        words: &["runs", "failures", "errors", "skips"],
        from_gorgon: |c| {
            let n = |w: &str| c.get(w).copied().unwrap_or(0);
            vec![c.values().sum(), n("failed"), n("errored"), n("skipped")]
        },
    });
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    assert_eq!(failed, ["spec/models/widget_spec.rb"], "{run:?}");
    // The helper module's tests belong to the file whose class includes them.
    let junit = project.read("junit.xml");
    let doc = roxmltree::Document::parse(&junit).unwrap();
    let suite_of = |name: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("testsuite"))
            .find(|s| s.children().any(|c| c.attribute("name") == Some(name)))
            .and_then(|s| s.attribute("name"))
    };
    assert_eq!(
        suite_of("GadgetNameTest#test_has_a_name"),
        Some("spec/models/gadget_spec.rb")
    );
}

/// A suite where the test of `a` (the larger file, so queued first) leaves the process
/// unable to load `b`: a serial run loads every file before any test runs, so `b` loads there.
struct Poisoned {
    runner: &'static str,
    glob: &'static str,
    files: &'static [(&'static str, &'static str)],
}

/// On one local worker, in one session, `b` fails to load after `a`'s test; it is loaded
/// again in a fresh session and passes, as in the framework's serial run.
fn check_poisoned(suite: Poisoned) {
    let cluster = Cluster::new();
    let project = cluster.project(
        suite.runner,
        json!({"files": [suite.glob], "job": {"runner": {"kind": suite.runner, "command": ""}}}),
    );
    for (path, text) in suite.files {
        project.write(path, text);
    }
    let run = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    run.assert_report(0, &["2 files: 2 passed, 0 failed"]);
}

#[test]
fn a_file_that_earlier_tests_left_unloadable_is_loaded_again_in_a_fresh_rspec_session() {
    check_poisoned(Poisoned {
        runner: "rspec",
        glob: "spec/*_spec.rb",
        files: &[
            (
                "spec/a_spec.rb",
                // Larger than b, so that it goes first (files without history go largest first).
                "# padding so that this file is queued first\n# padding\n# padding\n# padding\nRSpec.describe('a') { it('poisons the process') { $poisoned = true; expect(1).to eq(1) } }\n",
            ),
            (
                "spec/b_spec.rb",
                "raise 'loaded after a test poisoned the process' if $poisoned\nRSpec.describe('b') { it('loaded') { expect(1).to eq(1) } }\n",
            ),
        ],
    });
}

#[test]
fn a_file_that_earlier_tests_left_unloadable_is_collected_again_in_a_fresh_pytest_session() {
    check_poisoned(Poisoned {
        runner: "pytest",
        glob: "tests/test_*.py",
        files: &[
            ("poisonable.py", "READY = True\n"),
            (
                "tests/test_a.py",
                "# padding so that this file is queued first\nimport sys\n\n\ndef test_poisons():\n    sys.modules['poisonable'] = None\n",
            ),
            (
                "tests/test_b.py",
                "import poisonable\n\n\ndef test_loaded():\n    assert poisonable.READY\n",
            ),
        ],
    });
}

/// Active Record's fixtures with real Active Record on sqlite3: `a` (the larger file, so queued
/// first) reads the set `widgets` with a `Widget` of its own, before anything has loaded the
/// model `::Widget`; `b` requires that model and uses the set's fixtures by name. Active Record
/// caches a set with the model class it resolved when it read it, and a serial run loads every
/// file before any test runs, so there the set has its class; in one session `b` must find its
/// fixtures too (as Active Record's own `persistence_test.rb` after
/// `serialized_attribute_test.rb`, which reads `topics` with a `Topic` of its own).
#[test]
fn a_fixture_set_an_earlier_file_read_before_its_model_was_loaded_serves_a_later_file() {
    let cluster = Cluster::new();
    let project = cluster.project(
        "fixtures",
        json!({"files": ["test/*_test.rb"], "job": {"runner": {"kind": "minitest", "command": ""}}}),
    );
    project.write(
        "test/support.rb",
        "require 'active_record'\nrequire 'active_record/fixtures'\nrequire 'active_record/test_fixtures'\n\
         require 'active_support/test_case'\n\
         ActiveRecord::Base.establish_connection(adapter: 'sqlite3', database: ':memory:')\n\
         ActiveRecord::Schema.verbose = false\n\
         ActiveRecord::Schema.define { create_table(:widgets) { |t| t.string :name } }\n\
         class FixtureTest < ActiveSupport::TestCase\n  include ActiveRecord::TestFixtures\n\
         \x20 self.fixture_path = File.expand_path('fixtures', __dir__)\nend\n",
    );
    project.write("test/fixtures/widgets.yml", "one:\n  name: first\n");
    project.write("test/widget.rb", "class Widget < ActiveRecord::Base\nend\n");
    project.write(
        "test/a_test.rb",
        "# padding so that this file is queued first\n# padding\n# padding\n# padding\n\
         require_relative 'support'\n\
         class ATest < FixtureTest\n  fixtures :widgets\n\
         \x20 class Widget < ActiveRecord::Base\n  end\n\
         \x20 def test_reads_the_rows\n    assert_equal ['first'], Widget.pluck(:name)\n  end\nend\n",
    );
    project.write(
        "test/b_test.rb",
        "require_relative 'support'\nrequire_relative 'widget'\n\
         class BTest < FixtureTest\n  fixtures :widgets\n\
         \x20 def test_finds_its_fixture\n    assert_equal 'first', widgets(:one).name\n  end\nend\n",
    );
    let run = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    run.assert_report(
        0,
        &[
            "2 files: 2 passed, 0 failed",
            "Tests: 2 passed, 0 failed, 0 errored",
        ],
    );
}

/// The same with RSpec (example groups that include Active Record's fixtures, as rspec-rails'
/// do): `a_spec` reads the set `widgets` with a `Widget` of its own before anything has loaded
/// `::Widget`; `b_spec`, later in the same session, requires the model and finds its fixture.
#[test]
fn a_fixture_set_read_before_its_model_was_loaded_serves_a_later_spec_file() {
    let cluster = Cluster::new();
    let project = cluster.project(
        "rspec_fixtures",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": {"kind": "rspec", "command": ""}}}),
    );
    project.write(
        "spec/support.rb",
        "require 'active_record'\nrequire 'active_record/fixtures'\nrequire 'active_record/test_fixtures'\n\
         ActiveRecord::Base.establish_connection(adapter: 'sqlite3', database: ':memory:')\n\
         ActiveRecord::Schema.verbose = false\n\
         ActiveRecord::Schema.define { create_table(:widgets) { |t| t.string :name } }\n\
         RSpec.shared_context 'fixtures' do\n  include ActiveRecord::TestFixtures\n\
         \x20 self.fixture_path = File.expand_path('fixtures', __dir__)\n\
         \x20 before { setup_fixtures }\n  after { teardown_fixtures }\n\
         \x20 def name = RSpec.current_example.full_description\nend\n",
    );
    project.write("spec/fixtures/widgets.yml", "one:\n  name: first\n");
    project.write("spec/widget.rb", "class Widget < ActiveRecord::Base\nend\n");
    project.write(
        "spec/a_spec.rb",
        "# padding so that this file is queued first\n# padding\n# padding\n# padding\n\
         require_relative 'support'\n\
         RSpec.describe 'a' do\n  include_context 'fixtures'\n  fixtures :widgets\n\
         \x20 it 'reads the rows with a Widget of its own' do\n\
         \x20   klass = Class.new(ActiveRecord::Base) { self.table_name = 'widgets' }\n\
         \x20   expect(klass.pluck(:name)).to eq(['first'])\n  end\nend\n",
    );
    project.write(
        "spec/b_spec.rb",
        "require_relative 'support'\nrequire_relative 'widget'\n\
         RSpec.describe 'b' do\n  include_context 'fixtures'\n  fixtures :widgets\n\
         \x20 it 'finds its fixture' do\n    expect(widgets(:one).name).to eq('first')\n  end\nend\n",
    );
    let run = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    run.assert_report(
        0,
        &[
            "2 files: 2 passed, 0 failed",
            "Tests: 2 passed, 0 failed, 0 errored",
        ],
    );
}

#[test]
fn the_runners_arguments_apply_to_every_file_of_an_rspec_session() {
    let cluster = Cluster::new();
    let runner = json!({"kind": "rspec", "command": "", "args": ["--tag", "~slow"]});
    let project = cluster.project(
        "rspec-args",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": runner}}),
    );
    for name in ["a", "b", "c"] {
        project.write(
            &format!("spec/{name}_spec.rb"),
            &format!(
                "RSpec.describe('{name}') do\n  it('is quick') {{ expect(1).to eq(1) }}\n  it('is slow', :slow) {{ raise 'the tag filter was lost' }}\nend\n"
            ),
        );
    }
    // One worker: the three files run in one session, the arguments parsed once for it.
    let run = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    run.assert_report(0, &["3 files: 3 passed, 0 failed"]);
    assert_eq!(
        gorgon_counts(&run.stdout).get("passed"),
        Some(&3),
        "{run:?}"
    );
}

#[test]
fn a_batch_of_an_rspec_session_with_a_file_that_fails_to_load_gives_each_file_its_own_answer() {
    let cluster = Cluster::new();
    let runner = json!({"kind": "rspec", "command": "", "batch_seconds": 10});
    let project = cluster.project(
        "rspec-batch-load-error",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": runner}}),
    );
    // The padded file is the largest, so it runs first and alone; the rest come as batches.
    project.write(
        "spec/first_spec.rb",
        &format!(
            "{}RSpec.describe('first') {{ it('runs') {{ expect(1).to eq(1) }} }}\n",
            "# padding\n".repeat(50)
        ),
    );
    for i in 1..=6 {
        project.write(
            &format!("spec/quick_{i}_spec.rb"),
            &format!("RSpec.describe('quick {i}') {{ it('adds') {{ expect({i}).to eq({i}) }} }}\n"),
        );
    }
    project.write(
        "spec/quick_4_broken_spec.rb",
        "raise 'broken on load'\nRSpec.describe('never') { it('is defined') { } }\n",
    );
    let run = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    run.assert_report(
        1,
        &["8 files: 7 passed, 1 failed", "Tests: 7 passed, 0 failed"],
    );
    assert_file_failed(&run, "spec/quick_4_broken_spec.rb", "broken on load");
}

/// A file whose examples share a slow `before(:all)`: after its split run cost each part that
/// setup again, the history keeps it whole, and the third run queues it as one file.
#[test]
fn a_file_whose_split_run_cost_more_than_the_whole_is_kept_whole() {
    let cluster = Cluster::with_listeners(&[("keeper", 4)]);
    let project = cluster.project(
        "keep-whole",
        json!({"files": ["spec/**/*_spec.rb"], "job": {"runner": {"kind": "rspec", "command": ""}}}),
    );
    let mut slow_text =
        String::from("RSpec.describe \"shared setup\" do\n  before(:all) { sleep 3 }\n");
    for i in 1..=4 {
        slow_text.push_str(&format!("  it(\"part {i}\") {{ sleep 0.25 }}\n"));
    }
    slow_text.push_str("end\n");
    project.write("spec/slow_spec.rb", &slow_text);
    for i in 1..=4 {
        project.write(
            &format!("spec/quick_{i}_spec.rb"),
            &format!("RSpec.describe \"quick {i}\" do\n  it(\"passes\") {{ expect({i}).to eq({i}) }}\nend\n"),
        );
    }
    let history = || -> serde_json::Value {
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap()
    };
    let first = project.start(&[], RUN_LIMIT);
    first.assert_stdout(&["5 files: 5 passed"]);
    assert!(
        history()["gorgon:whole:spec/slow_spec.rb"]
            .as_f64()
            .unwrap()
            >= 4.0,
        "{}",
        history()
    );

    // Its examples take 1 s of its 4 s: it is split, and each part pays the 3 s again.
    let second = project.start(&[], RUN_LIMIT);
    second.assert_stdout(&["8 files: 8 passed"]);
    let cost = history()["gorgon:keep-whole:spec/slow_spec.rb"].as_f64();
    assert!(cost.is_some_and(|c| c > 1.5), "{}", history());

    let third = project.start(&[], RUN_LIMIT);
    third.assert_stdout(&["5 files: 5 passed", "Tests: 8 passed"]);
    assert!(
        !third.stderr.contains("PASS spec/slow_spec.rb:"),
        "{third:?}"
    );
}

/// A spec that appends to `record` the command lines of the three processes above the one
/// running it: a session, the runner, and what started the runner.
fn ruby_ancestry_spec(record: &Path) -> String {
    format!(
        r#"RSpec.describe "ancestry" do
  it "records who started its runner" do
    pid = Process.pid
    chain = 3.times.map do
      pid = File.read("/proc/#{{pid}}/stat").rpartition(') ').last.split[1].to_i
      File.read("/proc/#{{pid}}/cmdline").tr("\0", ' ')
    end
    File.open({record:?}, 'a') {{ |f| f.puts chain.join(' | ') }}
  end
end
"#,
        record = record.display().to_string()
    )
}

/// The pytest twin of [`ruby_ancestry_spec`].
fn python_ancestry_test(record: &Path) -> String {
    format!(
        r#"import os


def test_records_who_started_its_runner():
    pid, chain = os.getpid(), []
    for _ in range(3):
        with open("/proc/%d/stat" % pid) as stat:
            pid = int(stat.read().rpartition(") ")[2].split()[1])
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            chain.append(cmdline.read().replace(b"\0", b" ").decode())
    with open({record:?}, "a") as out:
        out.write(" | ".join(chain) + "\n")
"#,
        record = record.display().to_string()
    )
}

/// The first job of a built-in runner boots its runners and makes the listener start a warm
/// runner; the next job's runners are forked from it. A job of another kind boots again and
/// replaces it. Every run passes and leaves no process behind.
#[test]
fn later_jobs_fork_their_runners_from_the_listeners_warm_runner() {
    let cluster = Cluster::with_listeners(&[("warm", 2)]);
    let record = cluster.path().join("ancestry.txt");
    let rspec = cluster.project(
        "warm-rspec",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": {"kind": "rspec", "command": ""}}}),
    );
    rspec.write("spec/ancestry_spec.rb", &ruby_ancestry_spec(&record));
    let pytest = cluster.project(
        "warm-pytest",
        json!({"files": ["tests/test_*.py"], "job": {"runner": {"kind": "pytest", "command": ""}}}),
    );
    pytest.write("tests/test_ancestry.py", &python_ancestry_test(&record));
    let ancestry = |project: &Project| -> String {
        let _ = std::fs::remove_file(&record);
        let run = project.start(&[], RUN_LIMIT);
        run.assert_report(0, &["1 file: 1 passed"]);
        std::fs::read_to_string(&record).unwrap()
    };

    let booted = ancestry(&rspec);
    assert!(!booted.contains("gorgon_warm"), "{booted}");
    assert!(booted.contains("__work"), "{booted}");
    cluster.wait_for_warm_runner("warm", "gorgon_warm.rb", Duration::from_secs(30));
    let forked = ancestry(&rspec);
    assert!(forked.contains("gorgon_warm.rb"), "{forked}");

    let booted = ancestry(&pytest);
    assert!(!booted.contains("gorgon_warm"), "{booted}");
    cluster.wait_for_warm_runner("warm", "gorgon_warm.py", Duration::from_secs(30));
    let forked = ancestry(&pytest);
    assert!(forked.contains("gorgon_warm.py"), "{forked}");
    // The Ruby one was retired when the pytest job came: it ended with its last fork.
    let kept = cluster.warm_runners("warm");
    assert!(
        kept.iter().all(|c| c.contains("gorgon_warm.py")),
        "{kept:?}"
    );
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

/// A Gorgon callbacks class that records each call in `marks` (a file per moment and
/// process, named by the moment and then the worker id when there is one, holding the
/// working directory, and beside it `NAME.pid` with a line per process id: one per host)
/// and returns `cluster`
/// from `before_originate`, as Gorgon's callbacks named the cluster. Its
/// `before_creating_workers` requires `test/support/shop_helper.rb`, which the tests use
/// without requiring it, as Gorgon projects preloaded their helpers.
fn gorgon_callbacks(marks: &Path, cluster: &str) -> String {
    format!(
        r##"class ShopCallbacks < Gorgon::DefaultCallbacks
  MARKS = {marks:?}

  def mark(moment)
    name = File.join(MARKS, [moment, ENV['GORGON_WORKER_ID']].compact.join('_'))
    File.write(name, Dir.pwd)
    File.write("#{{name}}.pid", "#{{Process.pid}}\n", mode: 'a')
  end

  def before_originate
    mark('before_originate')
    {cluster:?}
  end

  def after_sync = mark('after_sync')

  def before_creating_workers
    mark('before_creating_workers')
    require File.expand_path('test/support/shop_helper')
  end
  def before_start = mark('before_start')
  def after_complete = mark('after_complete')
  def after_creating_workers = mark('after_creating_workers')
  def after_job_finishes = mark('after_job_finishes')
end

Gorgon.callbacks = ShopCallbacks.new
"##,
        marks = marks.display().to_string()
    )
}

/// A project set up for Ruby Gorgon: no `job.runner`, RSpec and Minitest files mixed, Gorgon's
/// keys (`rsync_transport: "anonymous"`, `originator_log_file` in a folder that does not
/// exist yet) and a `callbacks_class_file` whose `before_originate` returns the cluster id
/// (the config names another). Each file runs with the runner its name calls for, every
/// callback runs at its moment and in its process, on the listeners and locally; a file no
/// runner is for stops the run before anything runs; `job.runner.by_glob` names runners by
/// glob; a callback that raises fails the run with the exception's class and message.
#[test]
fn a_gorgon_project_runs_each_file_with_the_runner_its_name_calls_for() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let marks = cluster.path().join("marks");
    let project = cluster.project(
        "gorgon-style",
        json!({
            "files": ["test/**/*_test.rb", "spec/**/*_spec.rb"],
            "originator_log_file": "log/gorgon-originator.log",
            "runtime_file": "gorgon-runtime-file.json",
            "cluster_id": "not-the-listeners-cluster",
            "job": {
                "runner": null,
                "listener_wait": 10,
                "sync": {"exclude": [".git", "log", "tmp"], "rsync_transport": "anonymous"},
                "callbacks": {"callbacks_class_file": "test/gorgon_callbacks.rb"}
            }
        }),
    );
    write_shop_suite(&project, &marks, &cluster.id);
    for args in [vec![], vec!["--local", "-j", "2"]] {
        let _ = std::fs::remove_dir_all(&marks);
        std::fs::create_dir_all(&marks).unwrap();
        let run = project.start(&args, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        run.assert_stdout(&["4 files: 2 passed, 2 failed"]);
        // Each framework counted its own tests: RSpec's failure and Minitest's.
        run.assert_stdout(&[
            "refund refunds failed",
            "rounding is off",
            "Tests: 2 passed, 2 failed",
        ]);
        assert!(project.dir.join("log/gorgon-originator.log").exists());
        // Every moment ran, in its process: the originator's in the project, the others in
        // the workspace (the project itself with --local), each worker's with its id.
        check_every_moment_ran(&marks, &project, !args.is_empty());
    }

    check_raising_callbacks(&project, &cluster.id);
    // A moment given both ways is refused.
    let both = cluster.project(
        "both-ways",
        json!({"job": {"callbacks": {"callbacks_class_file": "c.rb", "after_sync": "true"}}}),
    );
    let run = both.start(&[], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&[
        "job.callbacks.after_sync and job.callbacks.callbacks_class_file both give",
    ]);

    // A file no runner is for: exit 3, named, before anything is pushed or run.
    project.write(
        "test/gorgon_callbacks.rb",
        &gorgon_callbacks(&marks, &cluster.id),
    );
    project.write("test/helper_check.sh", "exit 0\n");
    let run = project.start(&["test/helper_check.sh", "spec/cart_spec.rb"], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&["test/helper_check.sh has no runner"]);
    assert!(!run.stderr.contains("Pushing"), "{run:?}");

    // By glob: the shell files with a command, the specs with RSpec.
    let by_glob = cluster.project(
        "by-glob",
        json!({
            "files": ["test/*.sh", "spec/*_spec.rb"],
            "job": {"runner": {"by_glob": {"test/*.sh": {"command": "sh {file}"}, "spec/*_spec.rb": {"kind": "rspec"}}}}
        }),
    );
    by_glob.write("test/ok.sh", "echo fine\n");
    by_glob.write("test/broken.sh", "echo broken; exit 1\n");
    by_glob.write(
        "spec/cart_spec.rb",
        "RSpec.describe 'cart' do\n  it('adds') { expect(1 + 1).to eq(2) }\nend\n",
    );
    for args in [vec![], vec!["--local", "-j", "2"]] {
        let run = by_glob.start(&args, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        run.assert_stdout(&[
            "3 files: 2 passed, 1 failed",
            "File 'test/broken.sh' failed",
            "Tests: 1 passed",
        ]);
    }
}

/// The shop suite of a Gorgon project: RSpec and Minitest files, one failing in each, that
/// use a helper which `before_creating_workers` preloads, and callbacks that leave a mark
/// in `marks` at every moment.
fn write_shop_suite(project: &Project, marks: &Path, cluster_id: &str) {
    // The helper that `before_creating_workers` preloads: the tests use it without
    // requiring it, and say which process loaded it.
    project.write(
        "test/support/shop_helper.rb",
        &format!(
            "module ShopHelper\n  LOADED_IN = Process.pid\n  def self.seen_by(name)\n    File.write(File.join({:?}, \"helper_seen_by_#{{name}}\"), LOADED_IN.to_s)\n  end\nend\n",
            marks.display().to_string()
        ),
    );
    project.write(
        "spec/cart_spec.rb",
        "RSpec.describe 'cart' do\n  it('adds') { ShopHelper.seen_by('rspec'); expect(1 + 1).to eq(2) }\nend\n",
    );
    project.write(
        "spec/refund_spec.rb",
        "RSpec.describe 'refund' do\n  it('refunds') { expect(:no).to eq(:yes) }\nend\n",
    );
    project.write(
        "test/unit/tax_test.rb",
        "require 'minitest/autorun'\n\nclass TaxTest < Minitest::Test\n  def test_rate\n    ShopHelper.seen_by('minitest')\n    assert_equal 20, 20\n  end\nend\n",
    );
    project.write(
        "test/unit/price_test.rb",
        "require 'minitest/autorun'\n\nclass PriceTest < Minitest::Test\n  def test_round\n    assert_equal 3, 2, 'rounding is off'\n  end\nend\n",
    );
    project.write(
        "test/gorgon_callbacks.rb",
        &gorgon_callbacks(marks, cluster_id),
    );
}

/// Every moment of the callbacks left its mark in `marks`, from its process: the
/// originator's in the project, the others in the workspace (the project itself when
/// `local`), each worker's with its id.
fn check_every_moment_ran(marks: &Path, project: &Project, local: bool) {
    let mut seen: Vec<String> = std::fs::read_dir(marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    let project_dir = project.dir.canonicalize().unwrap().display().to_string();
    let read = |name: &str| std::fs::read_to_string(marks.join(name)).unwrap();
    assert_eq!(read("before_originate"), project_dir);
    assert_eq!(read("after_job_finishes"), project_dir);
    for moment in [
        "before_creating_workers",
        "after_creating_workers",
        "before_start_1",
        "after_complete_1",
    ] {
        assert!(seen.iter().any(|s| s == moment), "{moment} in {seen:?}");
    }
    // The helper was loaded once, by `before_creating_workers`, in the process both
    // frameworks' runners forked from; `after_creating_workers` ran there too, and
    // `before_start` in a runner process of its own.
    let pids = |name: &str| -> std::collections::BTreeSet<String> {
        read(name).lines().map(str::to_owned).collect()
    };
    let preloads = pids("before_creating_workers.pid");
    assert!(preloads.contains(&read("helper_seen_by_rspec")), "{seen:?}");
    assert!(
        preloads.contains(&read("helper_seen_by_minitest")),
        "{seen:?}"
    );
    assert_eq!(pids("after_creating_workers.pid"), preloads);
    assert!(pids("before_start_1.pid").is_disjoint(&preloads));
    assert_eq!(seen.iter().any(|s| s == "after_sync"), !local, "{seen:?}");
    if !local {
        assert_ne!(
            read("after_sync"),
            project_dir,
            "after_sync runs in the workspace"
        );
    }
}

/// A callback that raises fails the run with the exception's class and message, on the
/// originator, in the listener's preload process and in a runner, distributed and local.
fn check_raising_callbacks(project: &Project, cluster_id: &str) {
    // A callback that raises fails the run with the exception's class and message.
    project.write(
        "test/gorgon_callbacks.rb",
        "class Broken < Gorgon::DefaultCallbacks\n  def before_originate\n    raise ArgumentError, 'no database for the run'\n  end\nend\nGorgon.callbacks = Broken.new\n",
    );
    for args in [vec![], vec!["--local", "-j", "2"]] {
        let run = project.start(&args, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        run.assert_output(&[
            "before_originate callback failed",
            "ArgumentError: no database for the run",
        ]);
    }
    // The same on the listener's side: in the preload process and in a runner.
    for moment in ["before_creating_workers", "before_start"] {
        project.write(
            "test/gorgon_callbacks.rb",
            &format!(
                "class Broken < Gorgon::DefaultCallbacks\n  def {moment}\n    raise KeyError, 'no seed data'\n  end\n\n  def before_originate = {:?}\nend\nGorgon.callbacks = Broken.new\n",
                cluster_id
            ),
        );
        for args in [vec![], vec!["--local", "-j", "2"]] {
            let run = project.start(&args, RUN_LIMIT);
            assert_eq!(run.code, 1, "{moment} {args:?}: {run:?}");
            let all = format!("{}{}", run.stdout, run.stderr);
            assert!(
                all.contains(&format!("{moment} callback failed")),
                "{moment} {args:?}: {run:?}"
            );
            assert!(
                all.contains("KeyError: no seed data"),
                "{moment} {args:?}: {run:?}"
            );
            assert!(
                all.contains("gorgon_callbacks.rb:3"),
                "the backtrace: {run:?}"
            );
        }
    }
}
