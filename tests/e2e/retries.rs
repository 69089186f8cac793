//! End to end for retries (`job.retries`, `--retries`): a test that fails once and then
//! passes is flaky and does not fail the run, and its retry runs on another host; a test that
//! fails every attempt is a failure with every attempt in the report and in JUnit; the retry
//! budget caps what a broken build may add; `--local` retries on another worker.

use std::path::Path;
use std::time::Duration;

use crate::support::Cluster;
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

fn children_named(node: roxmltree::Node, tag: &str) -> usize {
    node.children().filter(|c| c.has_tag_name(tag)).count()
}

#[test]
fn a_test_that_fails_then_passes_is_flaky_and_a_real_failure_shows_every_attempt() {
    let mut cluster = Cluster::new();
    cluster.start_listener("north", 2);
    cluster.start_listener("south", 2);
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

    let run = project.start(&["--retries", "2", "--junit", "junit.xml"], RUN_LIMIT);

    // The broken example fails the run; the shaky one does not.
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("5 files: 4 passed, 1 failed, 0 crashed, 0 not run, 1 flaky"),
        "{run:?}"
    );
    // Each example counted once, as RSpec counts it, with its final verdict.
    assert!(run.stdout.contains("Tests: 5 passed, 1 failed"), "{run:?}");
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

    // The example ran twice: first somewhere, then on the other host.
    let places: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(places.len(), 2, "{places:?}\n{run:?}");
    let host = |place: &str| place.split(':').next().unwrap().to_owned();
    assert_ne!(
        host(&places[0]),
        host(&places[1]),
        "{places:?}\n--- north ---\n{}\n--- south ---\n{}",
        cluster.listener_log("north"),
        cluster.listener_log("south")
    );

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
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

/// A test file that records each run's worker in `record` and fails on its first run.
fn shaky_script(record: &Path) -> String {
    format!(
        "first=yes; [ -e {record:?} ] && first=no\necho \"$GORGON_WORKER_ID\" >> {record:?}\n[ \"$first\" = no ] || {{ echo 'timing out'; exit 1; }}\n",
        record = record.display().to_string()
    )
}

#[test]
fn a_local_retry_runs_on_another_worker_and_the_budget_caps_retries() {
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
    let project = crate::support::Project { dir: dir.clone() };

    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("2 files: 2 passed, 0 failed, 0 crashed, 0 not run, 1 flaky"),
        "{run:?}"
    );
    // A file that reports no tests runs again as a whole, on the other worker.
    let workers: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_ne!(workers[0], workers[1], "{workers:?}");
    assert!(
        run.stdout
            .contains("tests/a_shaky_test.sh\n    attempt 1 at "),
        "{run:?}"
    );

    // A budget of one retry: the first failure runs again (and fails again, three more
    // times would be allowed), the second is final at once, and the report says why.
    std::fs::write(dir.join("tests/a_shaky_test.sh"), "echo broken; exit 1\n").unwrap();
    std::fs::write(dir.join("tests/b_test.sh"), "echo broken too; exit 1\n").unwrap();
    let run = project.start(&["--local", "-j", "1", "--retries", "3"], RUN_LIMIT);
    assert_eq!(run.code, 1, "{run:?}");
    let config = json!({
        "files": ["tests/*_test.sh"],
        "failed_files": "gorgon-failed.json",
        "job": {"runner": {"command": "sh {file}"}, "retries": 3, "retry_budget": 1},
    });
    std::fs::write(dir.join("gorgon.json"), config.to_string()).unwrap();
    let capped = project.start(&["--local", "-j", "1"], RUN_LIMIT);
    assert_eq!(capped.code, 1, "{capped:?}");
    assert!(
        capped.stdout.contains("the run's 1 retries were spent"),
        "{capped:?}"
    );
    let attempts = |run: &crate::support::Run| run.stdout.matches("    attempt ").count();
    // Unbounded by the budget (default 10): two files, four attempts each.
    assert_eq!(attempts(&run), 8, "{run:?}");
    // One retry in all: two attempts of the first file, none of the second.
    assert_eq!(attempts(&capped), 2, "{capped:?}");
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
    let project = crate::support::Project { dir };

    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("3 files: 3 passed, 0 failed, 0 crashed, 0 not run, 2 flaky"),
        "{run:?}"
    );
    assert!(run.stdout.contains("b flips (spec/b_spec.rb:5)"), "{run:?}");
    assert!(run.stdout.contains("a flips (spec/a_spec.rb:2)"), "{run:?}");
    assert!(!run.stdout.contains("no tests ran"), "{run:?}");
    assert!(run.stdout.contains("Tests: 6 passed"), "{run:?}");
}
