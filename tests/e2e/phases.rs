//! Phases: `unit` → `integration` → `report`, with an `error` phase that both file phases
//! lead to on a failure, on two listeners and with `--local`, in one job each.

use std::time::Duration;

use serde_json::json;

use crate::support::Cluster;

const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Each test file appends `PHASE_NAME file` to `ran.log` in `log_dir` (PHASE_NAME from the
/// runner that ran it: the job's for unit, the phase's own for integration), and each
/// command phase appends its name: the log shows what ran, with which runner, in what order.
#[test]
fn phases_run_in_order_and_a_failure_takes_the_error_path() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let log_dir = cluster.path().join("phase-log");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log = log_dir.join("ran.log");
    let quoted_log = log.display().to_string();
    let append = |what: &str| format!("echo {what} >> {quoted_log}");
    let project = cluster.project(
        "phased",
        json!({
            "files": [],
            "junit_file": "junit.xml",
            "job": {"runner": {"command": "PHASE_NAME=job-runner sh {file}"}},
            "phases": [
                {"name": "unit", "files": ["tests/unit/*_test.sh"], "on_error_transition_to": "error"},
                {"name": "integration", "files": ["tests/integration/*_test.sh"],
                 "runner": {"command": "PHASE_NAME=integration-runner sh {file}"},
                 "on_error_transition_to": "error"},
                {"name": "report", "command": append("report"), "is_final": true},
                {"name": "error", "command": append("error"), "is_final": true}
            ]
        }),
    );
    // (A fixed file differs in size too: rsync's quick check compares size and time.)
    let test = |name: &str, exit: u32| {
        let end = if exit == 0 {
            "exit 0 # passes"
        } else {
            "exit 1"
        };
        format!("echo \"$PHASE_NAME {name}\" >> {quoted_log}\n{end}\n")
    };
    for name in ["a", "b", "c"] {
        project.write(&format!("tests/unit/{name}_test.sh"), &test(name, 0));
    }
    for name in ["x", "y"] {
        project.write(&format!("tests/integration/{name}_test.sh"), &test(name, 0));
    }
    let ran = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };

    for args in [vec![], vec!["--local", "-j", "2"]] {
        // A unit file fails: integration never runs, the error phase does, exit 1.
        let _ = std::fs::remove_file(&log);
        project.write("tests/unit/b_test.sh", &test("b", 1));
        let events = project.dir.join("events.ndjson");
        let mut with_events = args.clone();
        let events_arg = events.display().to_string();
        with_events.extend(["--events", events_arg.as_str()]);
        let run = project.start(&with_events, RUN_LIMIT);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        let mut log_lines = ran();
        assert_eq!(log_lines.pop().as_deref(), Some("error"), "{log_lines:?}");
        log_lines.sort();
        assert_eq!(
            log_lines,
            ["job-runner a", "job-runner b", "job-runner c"],
            "{args:?}"
        );
        run.assert_stdout(&[
            "Phase unit failed: 1 of its 3 files failed",
            "Phase integration not run: phase unit failed (2 files)",
            "\ttests/integration/x_test.sh",
            "Phase report not run: phase unit failed",
            "Phase error passed",
            "5 files: 2 passed, 1 failed, 0 crashed, 2 not run",
        ]);
        // The JUnit report has a suite per phase, the skipped phase's files as not run.
        let junit = std::fs::read_to_string(project.dir.join("junit.xml")).unwrap();
        let doc = roxmltree::Document::parse(&junit).unwrap();
        let suites: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testsuite"))
            .collect();
        let names: Vec<&str> = suites
            .iter()
            .map(|s| s.attribute("name").unwrap())
            .collect();
        assert_eq!(names, ["unit", "integration", "report", "error"]);
        let integration = suites[1];
        assert_eq!(integration.attribute("skipped"), Some("2"), "{junit}");
        assert!(junit.contains("not run: phase integration did not run: phase unit failed"));
        // The failed files list names each file's phase; the events say what each phase did.
        let failed = std::fs::read_to_string(project.dir.join("gorgon-failed.json")).unwrap();
        let mut failed: Vec<serde_json::Value> = serde_json::from_str(&failed).unwrap();
        // In the order the run recorded them: the failure first, then the files not run.
        failed[1..].sort_by_key(|entry| entry["file"].as_str().unwrap().to_owned());
        assert_eq!(
            json!(failed),
            json!([
                {"file": "tests/unit/b_test.sh", "phase": "unit"},
                {"file": "tests/integration/x_test.sh", "phase": "integration"},
                {"file": "tests/integration/y_test.sh", "phase": "integration"}
            ]),
            "{args:?}"
        );
        let phase_events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["event"].as_str().unwrap().starts_with("phase_"))
            .collect();
        let summary: Vec<(String, String)> = phase_events
            .iter()
            .map(|e| {
                let what = e["outcome"].as_str().unwrap_or("started");
                (e["name"].as_str().unwrap().to_owned(), what.to_owned())
            })
            .collect();
        let expected = [
            ("unit", "started"),
            ("unit", "failed"),
            ("error", "started"),
            ("error", "passed"),
            ("integration", "not_run"),
            ("report", "not_run"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(summary, expected, "{args:?}");

        // `--failed` runs the files again in their phases: all pass, all phases in order.
        project.write("tests/unit/b_test.sh", &test("b", 0));
        let _ = std::fs::remove_file(&log);
        let mut failed_args = args.clone();
        failed_args.push("--failed");
        let run = project.start(&failed_args, RUN_LIMIT);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        let log_lines = ran();
        assert_eq!(log_lines.first().map(String::as_str), Some("job-runner b"));
        let mut integration: Vec<&str> = log_lines[1..3].iter().map(String::as_str).collect();
        integration.sort();
        assert_eq!(
            integration,
            ["integration-runner x", "integration-runner y"]
        );
        assert_eq!(log_lines[3..], ["report"], "{log_lines:?}");

        // All pass: every phase on the path runs in order, the error phase does not.
        let _ = std::fs::remove_file(&log);
        let run = project.start(&args, RUN_LIMIT);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        let log_lines = ran();
        assert_eq!(log_lines.len(), 6, "{log_lines:?}");
        assert!(log_lines[..3].iter().all(|l| l.starts_with("job-runner ")));
        assert!(log_lines[3..5]
            .iter()
            .all(|l| l.starts_with("integration-runner ")));
        assert_eq!(log_lines[5], "report");
        assert!(run
            .stdout
            .contains("Phase error not run: no phase of the run led to it"));
        run.assert_stdout(&["5 files: 5 passed, 0 failed, 0 crashed, 0 not run"]);
    }

    // A broken list of phases is refused before anything runs, naming the problem.
    let broken = cluster.project(
        "broken-phases",
        json!({"files": [], "phases": [{"name": "unit", "files": ["t/*.sh"], "transitions_to": "deploy"}]}),
    );
    let run = broken.start(&[], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&["phase \"unit\": transitions_to names \"deploy\", which is not a phase"]);
    cluster.assert_no_job_processes(Duration::from_secs(15));
}
