//! End to end for retries (`job.retries`, `--retries`): a test that fails once and then
//! passes is flaky and does not fail the run, and its retry runs on another host; a test that
//! fails every attempt is a failure with every attempt in the report and in JUnit; the retry
//! budget caps what a broken build may add; `--local` retries on another worker.

use std::path::Path;
use std::time::Duration;

use crate::support::{Cluster, Project};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// An RSpec example that records where it ran (`host:worker`, one line per run) in
/// `record` and fails on its first run only, a second late (so that the other host has
/// finished its files and has a free slot for the retry).
fn shaky_example(record: &Path) -> String {
    format!(
        r##"RSpec.describe "Checkout" do
  it "adds tax" do
    expect(1 + 1).to eq(2)
  end

  it "charges the card in time" do
    first = !File.exist?({record:?})
    File.write({record:?}, "#{{ENV['GORGON_HOST']}}:#{{ENV['GORGON_WORKER_ID']}}\n", mode: "a")
    sleep 1 if first
    expect(first).to be(false), "the payment service was slow"
  end
end
"##,
        record = record.display().to_string()
    )
}

const BROKEN_EXAMPLE: &str = r#"RSpec.describe "Refunds" do
  it "refunds twice" do
    expect(:refunded).to eq(:declined)
  end
end
"#;

const PASSING_EXAMPLE: &str = r#"RSpec.describe "Cart" do
  it "is empty at first" do
    expect([]).to be_empty
  end
end
"#;

/// The JUnit case named `name`.
fn junit_case<'a>(doc: &'a roxmltree::Document, name: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(name))
        .unwrap_or_else(|| panic!("no test case {name}"))
}

/// The JUnit elements `tag` whose attribute `attribute` satisfies `matches`.
fn junit_elements<'a>(
    doc: &'a roxmltree::Document,
    tag: &str,
    attribute: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.has_tag_name(tag) && n.attribute(attribute).is_some_and(&matches))
        .collect()
}

fn children_named(node: roxmltree::Node, tag: &str) -> usize {
    node.children().filter(|c| c.has_tag_name(tag)).count()
}

/// `args` for a run on the listeners, then the same with `--local -j JOBS`: each check of
/// this module holds for both.
fn on_listeners_then_locally<'a>(args: &[&'a str], jobs: &'a str) -> [Vec<&'a str>; 2] {
    let mut local = args.to_vec();
    local.extend(["--local", "-j", jobs]);
    [args.to_vec(), local]
}

/// The events of a run's `--events` file.
fn events(project: &Project, name: &str) -> Vec<serde_json::Value> {
    project
        .read(name)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn events_of<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The verdict of `file` in the run's `file_finished` events.
fn verdict(events: &[serde_json::Value], file: &str) -> String {
    let finished = events_of(events, "file_finished");
    let event = finished
        .iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("no file_finished of {file}"));
    event["verdict"].as_str().unwrap().to_owned()
}

/// Where each run of the shaky example happened, one `host:worker` per run.
fn places(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One run of the RSpec project with a flaky and a broken example, with `--retries 2`
/// (and `extra` arguments), checked: the same verdicts, report, JUnit and events on the
/// listeners and with `--local`.
fn check_flaky_and_broken(project: &Project, record: &Path, extra: &[&str]) {
    let _ = std::fs::remove_file(record);
    let mut args = vec![
        "--retries",
        "2",
        "--junit",
        "junit.xml",
        "--events",
        "events.jsonl",
    ];
    args.extend_from_slice(extra);
    let run = project.start(&args, RUN_LIMIT);

    // The broken example fails the run; the shaky one does not.
    run.assert_report(
        1,
        &["5 files: 4 passed, 1 failed, 0 crashed, 0 not run, 1 flaky"],
    );
    // Each example counted once, as RSpec counts it, with its final verdict.
    run.assert_stdout(&["Tests: 5 passed, 1 failed"]);
    let flaky = run.stdout.split("Flaky").nth(1).expect("a Flaky section");
    assert!(
        flaky.contains("charges the card in time (spec/checkout_spec.rb:6)"),
        "{run:?}"
    );
    assert!(flaky.contains("attempt 1 at "), "{run:?}");
    assert!(
        flaky.contains("failed: the payment service was slow"),
        "{run:?}"
    );
    assert!(flaky.contains("attempt 2 at "), "{run:?}");
    assert!(!flaky.contains("attempt 3 at "), "{run:?}");
    let failed = run.stdout.split("Flaky").next().unwrap();
    assert!(
        failed.contains("File 'spec/refund_spec.rb' failed"),
        "{run:?}"
    );
    assert!(
        failed.contains("refunds twice failed every attempt:"),
        "{run:?}"
    );
    assert!(failed.contains("attempt 3 at "), "{run:?}");
    assert_eq!(
        project.read("gorgon-failed.json").trim(),
        r#"["spec/refund_spec.rb"]"#,
        "only the real failure is listed for --failed"
    );
    assert_eq!(places(record).len(), 2, "{run:?}");

    // JUnit: the flaky case passed with its failed attempt as a flakyFailure; the broken one
    // failed with its two earlier attempts as rerunFailures.
    let junit = project.read("junit.xml");
    let doc = roxmltree::Document::parse(&junit).unwrap();
    let shaky = junit_case(&doc, "Checkout charges the card in time");
    assert_eq!(children_named(shaky, "failure"), 0, "{junit}");
    assert_eq!(children_named(shaky, "flakyFailure"), 1, "{junit}");
    let broken = junit_case(&doc, "Refunds refunds twice");
    assert_eq!(children_named(broken, "failure"), 1, "{junit}");
    assert_eq!(children_named(broken, "rerunFailure"), 2, "{junit}");

    // Events: a test_retried per retry, by the example's id, and each file's verdict.
    let events = events(project, "events.jsonl");
    let retried: Vec<(String, u64)> = events_of(&events, "test_retried")
        .iter()
        .map(|e| {
            (
                e["unit"].as_str().unwrap().to_owned(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![
        ("spec/checkout_spec.rb:6".to_owned(), 2),
        ("spec/refund_spec.rb:2".to_owned(), 2),
        ("spec/refund_spec.rb:2".to_owned(), 3),
    ];
    let mut sorted = retried.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{retried:?}");
    assert_eq!(verdict(&events, "spec/checkout_spec.rb"), "flaky");
    assert_eq!(verdict(&events, "spec/refund_spec.rb"), "failed");
    assert_eq!(verdict(&events, "spec/cart_a_spec.rb"), "passed");
    let last = events.last().unwrap();
    assert_eq!(last["totals"]["flaky"], 1, "{last}");
}

#[test]
fn a_test_that_fails_then_passes_is_flaky_and_a_real_failure_shows_every_attempt() {
    let cluster = Cluster::with_listeners(&[("north", 2), ("south", 2)]);
    let record = cluster.path().join("shaky.log");
    let project = cluster.project(
        "retries",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": {"kind": "rspec", "command": ""}}}),
    );
    project.write("spec/checkout_spec.rb", &shaky_example(&record));
    project.write("spec/refund_spec.rb", BROKEN_EXAMPLE);
    for name in ["a", "b", "c"] {
        project.write(&format!("spec/cart_{name}_spec.rb"), PASSING_EXAMPLE);
    }
    cluster.wait_for_listeners(&project, 2);

    check_flaky_and_broken(&project, &record, &[]);
    // The example ran twice: first somewhere, then on the other host.
    let ran = places(&record);
    let host = |place: &str| place.split(':').next().unwrap().to_owned();
    assert_ne!(host(&ran[0]), host(&ran[1]), "{ran:?}");
    cluster.assert_no_job_processes(Duration::from_secs(15));

    // The same on this machine alone, the retry on the other worker.
    check_flaky_and_broken(&project, &record, &["--local", "-j", "2"]);
    let ran = places(&record);
    assert_ne!(ran[0], ran[1], "{ran:?}");
}

/// A file of two tests, `adds` and `charges`, of which `charges` fails on its first run;
/// each records its runs in `record` (`charges`) and `record.adds`.
struct OneFlakyTest {
    runner: &'static str,
    glob: &'static str,
    path: &'static str,
    text: fn(&Path) -> String,
    /// The id of `charges`, by which it runs again.
    id: &'static str,
}

fn pytest_file(record: &Path) -> String {
    format!(
        "import os\n\nRECORD = {record:?}\n\n\ndef test_adds():\n    with open(RECORD + '.adds', 'a') as out:\n        out.write('x\\n')\n\n\ndef test_charges():\n    first = not os.path.exists(RECORD)\n    with open(RECORD, 'a') as out:\n        out.write(os.environ['GORGON_HOST'] + '\\n')\n    assert not first, 'the payment service was slow'\n",
        record = record.display().to_string()
    )
}

fn minitest_file(record: &Path) -> String {
    format!(
        "require 'minitest/autorun'\n\nclass PayTest < Minitest::Test\n  RECORD = {record:?}\n\n  def test_adds\n    File.write(RECORD + '.adds', \"x\\n\", mode: 'a')\n  end\n\n  def test_charges\n    first = !File.exist?(RECORD)\n    File.write(RECORD, ENV['GORGON_HOST'] + \"\\n\", mode: 'a')\n    refute first, 'the payment service was slow'\n  end\nend\n",
        record = record.display().to_string()
    )
}

fn check_one_flaky_test(suite: OneFlakyTest) {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let record = cluster.path().join("charges.log");
    let adds = cluster.path().join("charges.log.adds");
    let project = cluster.project(
        &format!("one-flaky-{}", suite.runner),
        json!({"files": [suite.glob], "job": {"runner": {"kind": suite.runner, "command": ""}, "retries": 2}}),
    );
    project.write(suite.path, &(suite.text)(&record));
    cluster.wait_for_listeners(&project, 2);
    let runs =
        on_listeners_then_locally(&["--events", "events.jsonl", "--junit", "junit.xml"], "2");
    for (round, args) in runs.iter().enumerate() {
        let _ = std::fs::remove_file(&record);
        let _ = std::fs::remove_file(&adds);
        let run = project.start(args, RUN_LIMIT);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        run.assert_stdout(&[
            "1 file: 1 passed, 0 failed, 0 crashed, 0 not run, 1 flaky",
            "Tests: 2 passed",
        ]);
        // The runtime file remembers a flaky test, and the second run says so.
        let before = if round == 0 {
            ""
        } else {
            " (flaky once before)"
        };
        run.assert_stdout(&[&format!("({}){before}\n    attempt 1 at ", suite.id)]);
        // Only the flaky test ran again, by its id; its neighbour ran once. On the
        // listeners, the retry ran on the other one.
        let hosts = places(&record);
        assert_eq!(hosts.len(), 2, "{run:?}");
        if round == 0 {
            assert_ne!(hosts[0], hosts[1], "{hosts:?}");
        }
        let junit = project.read("junit.xml");
        let doc = roxmltree::Document::parse(&junit).unwrap();
        let flaky_failures = doc
            .descendants()
            .filter(|n| n.has_tag_name("flakyFailure"))
            .count();
        assert_eq!(flaky_failures, 1, "{junit}");
        assert_eq!(places(&adds).len(), 1, "{run:?}");
        let events = events(&project, "events.jsonl");
        let retried = events_of(&events, "test_retried");
        assert_eq!(retried.len(), 1, "{events:?}");
        assert_eq!(retried[0]["unit"], suite.id);
        assert_eq!(verdict(&events, suite.path), "flaky");
    }
}

#[test]
fn only_the_flaky_test_of_a_pytest_file_runs_again() {
    check_one_flaky_test(OneFlakyTest {
        runner: "pytest",
        glob: "tests/test_*.py",
        path: "tests/test_pay.py",
        text: pytest_file,
        id: "tests/test_pay.py::test_charges",
    });
}

#[test]
fn only_the_flaky_test_of_a_minitest_file_runs_again() {
    check_one_flaky_test(OneFlakyTest {
        runner: "minitest",
        glob: "test/*_test.rb",
        path: "test/pay_test.rb",
        text: minitest_file,
        id: "test/pay_test.rb::PayTest#test_charges",
    });
}

/// A test file that records each run's worker in `record` and fails on its first run.
fn shaky_script(record: &Path) -> String {
    format!(
        "first=yes; [ -e {record:?} ] && first=no\necho \"$GORGON_WORKER_ID\" >> {record:?}\n[ \"$first\" = no ] || {{ echo 'timing out'; exit 1; }}\n",
        record = record.display().to_string()
    )
}

#[test]
fn a_file_without_test_ids_runs_again_whole_on_another_local_worker() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("project");
    let record = root.path().join("shaky.log");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("gorgon.json"),
        json!({
            "files": ["tests/*_test.sh"],
            "failed_files": "gorgon-failed.json",
            "job": {"runner": {"command": "sh {file}"}, "retries": 3},
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("tests/a_shaky_test.sh"), shaky_script(&record)).unwrap();
    std::fs::write(dir.join("tests/b_test.sh"), "sleep 0.5\n").unwrap();
    let project = Project { dir };

    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    run.assert_report(
        0,
        &["2 files: 2 passed, 0 failed, 0 crashed, 0 not run, 1 flaky"],
    );
    // A file that reports no tests runs again as a whole, on the other worker.
    let workers = places(&record);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_ne!(workers[0], workers[1], "{workers:?}");
    run.assert_stdout(&["tests/a_shaky_test.sh\n    attempt 1 at "]);
}

#[test]
fn a_retry_budget_of_one_allows_one_retry_in_all_and_says_it_ran_out() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let project = cluster.project("budget", json!({"job": {"retries": 3, "retry_budget": 1}}));
    for name in ["a", "b", "c"] {
        project.write(
            &format!("tests/{name}_test.sh"),
            &format!("echo {name} is broken; exit 1\n"),
        );
    }
    cluster.wait_for_listeners(&project, 2);
    for args in &on_listeners_then_locally(&["--events", "events.jsonl"], "2") {
        let run = project.start(args, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        run.assert_stdout(&[
            "3 files: 0 passed, 3 failed",
            "the run's 1 retries were spent",
        ]);
        // One retry in all: two attempts of one file, none of the others.
        assert_eq!(run.stdout.matches("    attempt ").count(), 2, "{run:?}");
        let events = events(&project, "events.jsonl");
        assert_eq!(events_of(&events, "test_retried").len(), 1, "{events:?}");
    }
}

#[test]
fn a_quarantined_failing_test_does_not_fail_the_run_and_a_passing_one_is_listed() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let project = cluster.project(
        "quarantine",
        json!({"files": ["tests/test_*.py"], "quarantine_file": "quarantine.json",
               "job": {"runner": {"kind": "pytest", "command": ""}, "retries": 2}}),
    );
    project.write(
        "tests/test_shop.py",
        "def test_sells():\n    pass\n\n\ndef test_known_bug():\n    assert 1 == 2, 'still broken'\n\n\ndef test_fixed_since():\n    pass\n",
    );
    project.write("tests/test_cart.py", "def test_empty():\n    pass\n");
    project.write(
        "quarantine.json",
        r#"["tests/test_shop.py::test_known_bug", "tests/test_shop.py::test_fixed_since"]"#,
    );
    cluster.wait_for_listeners(&project, 2);
    for args in
        &on_listeners_then_locally(&["--events", "events.jsonl", "--junit", "junit.xml"], "2")
    {
        let run = project.start(args, RUN_LIMIT);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        run.assert_stdout(&[
            "2 files: 1 passed, 0 failed, 0 crashed, 0 not run, 0 flaky, 1 quarantined",
        ]);
        // The framework's own count: the quarantined test did fail.
        run.assert_stdout(&["Tests: 3 passed, 1 failed"]);
        let section = run
            .stdout
            .split("Quarantined")
            .nth(1)
            .expect("a Quarantined section");
        assert!(
            section.contains("tests/test_shop.py::test_known_bug in tests/test_shop.py failed"),
            "{run:?}"
        );
        assert!(section.contains("tests/test_shop.py::test_fixed_since in tests/test_shop.py passed (it may be released"), "{run:?}");
        assert!(
            !run.stdout.contains("File 'tests/test_shop.py' failed"),
            "{run:?}"
        );
        // A quarantined failure is not retried.
        let events = events(&project, "events.jsonl");
        assert!(events_of(&events, "test_retried").is_empty(), "{events:?}");
        assert_eq!(verdict(&events, "tests/test_shop.py"), "quarantined");
        assert_eq!(events.last().unwrap()["totals"]["quarantined"], 1);
        let junit = project.read("junit.xml");
        let doc = roxmltree::Document::parse(&junit).unwrap();
        let case = junit_elements(&doc, "testcase", "name", |a| a.contains("test_known_bug"))
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no known_bug case in {junit}"));
        assert!(
            case.descendants()
                .any(|p| p.has_tag_name("property")
                    && p.attribute("name") == Some("gorgon.quarantined")),
            "{junit}"
        );
    }
}

#[test]
fn max_fail_stops_the_run_and_reports_the_rest_as_not_run() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let project = cluster.project("max-fail", json!({}));
    for i in 0..40 {
        let body = if i % 4 == 1 {
            "sleep 0.3; echo broken; exit 1\n"
        } else {
            "sleep 0.3\n"
        };
        project.write(&format!("tests/f{i:02}_test.sh"), body);
    }
    cluster.wait_for_listeners(&project, 2);
    for args in &on_listeners_then_locally(&["--max-fail", "2", "--junit", "junit.xml"], "4") {
        let run = project.start(args, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        run.assert_stdout(&["Run stopped: ", "(the limit, --max-fail 2)"]);
        let totals = run
            .stdout
            .lines()
            .find(|l| l.starts_with("40 files: "))
            .unwrap();
        let count = |word: &str| -> usize {
            let before = totals.split(&format!(" {word}")).next().unwrap();
            before.rsplit(' ').next().unwrap().parse().unwrap()
        };
        // The two that reached the limit, and at most what the four slots were running.
        assert!(
            (2..=2 + 4).contains(&(count("failed") + count("crashed"))),
            "{totals}"
        );
        assert!(count("not run") > 0, "{totals}");
        // The failed files list holds the failures and every file that did not run.
        let listed: Vec<String> =
            serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
        let not_passed = count("failed") + count("crashed") + count("not run");
        assert_eq!(listed.len(), not_passed, "{listed:?}");
        // JUnit: what did not run is skipped, with the reason.
        let junit = project.read("junit.xml");
        let doc = roxmltree::Document::parse(&junit).unwrap();
        let skipped =
            junit_elements(&doc, "skipped", "message", |m| m.starts_with("not run: ")).len();
        assert_eq!(skipped, count("not run"), "{junit}");
        cluster.assert_no_job_processes(Duration::from_secs(15));
    }
}

/// An RSpec file whose example at `line` fails on its first run only (it records each run
/// in `record`); `padding` comment lines make it larger, to order it in the queue.
fn shaky_spec(name: &str, record: &Path, line_before: usize, padding: usize) -> String {
    let mut text = format!("RSpec.describe \"{name}\" do\n");
    for i in 0..line_before {
        text.push_str(&format!(
            "  it(\"passes {i}\") {{ expect({i}).to eq({i}) }}\n"
        ));
    }
    text.push_str(&format!(
        "  it \"flips\" do\n    first = !File.exist?({record:?})\n    File.write({record:?}, \"x\\n\", mode: \"a\")\n    expect(first).to be(false)\n  end\nend\n",
        record = record.display().to_string()
    ));
    text.push_str(&"# padding\n".repeat(padding));
    text
}

/// Two failed examples of two files run again, by their `file:LINE`, one after the other in
/// one RSpec session (the other worker is busy): each finds its example, as it would alone.
#[test]
fn retries_of_two_files_run_in_one_session_find_their_examples() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("project");
    std::fs::create_dir_all(dir.join("spec")).unwrap();
    std::fs::write(
        dir.join("gorgon.json"),
        json!({
            "files": ["spec/*_spec.rb"],
            "failed_files": "gorgon-failed.json",
            "job": {"runner": {"kind": "rspec", "command": ""}, "retries": 1},
        })
        .to_string(),
    )
    .unwrap();
    // Largest first: worker 1 sleeps in `c` while worker 2 runs `b`, then `a`; their
    // retries avoid worker 2 and wait for worker 1, which runs both in its session.
    let write =
        |name: &str, text: String| std::fs::write(dir.join("spec").join(name), text).unwrap();
    write(
        "c_spec.rb",
        format!(
            "RSpec.describe \"c\" do\n  it(\"waits\") {{ sleep 2 }}\nend\n{}",
            "# padding\n".repeat(80)
        ),
    );
    write(
        "b_spec.rb",
        shaky_spec("b", &root.path().join("b.log"), 3, 40),
    );
    write(
        "a_spec.rb",
        shaky_spec("a", &root.path().join("a.log"), 0, 0),
    );
    let project = Project { dir };

    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    run.assert_report(
        0,
        &[
            "3 files: 3 passed, 0 failed, 0 crashed, 0 not run, 2 flaky",
            "b flips (spec/b_spec.rb:5)",
            "a flips (spec/a_spec.rb:2)",
        ],
    );
    assert!(!run.stdout.contains("no tests ran"), "{run:?}");
    run.assert_stdout(&["Tests: 6 passed"]);
}
