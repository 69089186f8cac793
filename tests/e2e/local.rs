//! End to end for `gorgon start --local`: the same suite gives the same answer run on a
//! listener and run locally; a local run needs no broker or file server; a local worker
//! killed mid-file loses nothing; a file that kills its worker every time is reported
//! crashed; Ctrl-C stops every local process; `--dry-run` lists what a run would run (named
//! files, `--failed`) and runs none of it.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    assert_all_passed, eventually, interrupt_once_started, none_left, processes_working_in,
    recorded_runs, recording_test, sigkill, slow_test, wait_for_first_start, Cluster, Project,
    WORKER_KILLER,
};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(120);
const CLEANUP_LIMIT: Duration = Duration::from_secs(15);

/// The report's totals line without its timing.
fn totals(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.contains(" files: "))
        .unwrap_or_else(|| panic!("no totals line in {stdout}"));
    line.split(" in ").next().unwrap().to_owned()
}

/// The JUnit report's test cases as (name, verdict), sorted.
fn junit_cases(text: &str) -> Vec<(String, String)> {
    let doc = roxmltree::Document::parse(text).unwrap();
    let mut cases: Vec<(String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            let verdict = ["failure", "error", "skipped"]
                .into_iter()
                .find(|v| case.children().any(|c| c.has_tag_name(*v)))
                .unwrap_or("passed");
            (
                case.attribute("name").unwrap().to_owned(),
                verdict.to_owned(),
            )
        })
        .collect();
    cases.sort();
    cases
}

/// Waits until no process works in `dir`; fails the test with the survivors otherwise.
fn assert_no_process_in(dir: &Path) {
    eventually(CLEANUP_LIMIT, "no process to be left", || {
        none_left(processes_working_in(dir))
    });
}

/// A project of `files` slow tests, outside any cluster, whose config has no `connection`
/// or `file_server`, in a folder of its own (removed when the first value is dropped).
fn local_project(
    files: usize,
    seconds: f64,
    job: serde_json::Value,
) -> (tempfile::TempDir, Project, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("project");
    let record = root.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    let mut config = json!({
        "files": ["tests/**/*_test.sh"],
        "failed_files": "gorgon-failed.json",
        "job": {"runner": {"command": "sh {file}"}},
    });
    config["job"]
        .as_object_mut()
        .unwrap()
        .extend(job.as_object().unwrap().clone());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gorgon.json"), config.to_string()).unwrap();
    let project = Project { dir };
    for i in 0..files {
        let file = format!("tests/{i:02}_test.sh");
        project.write(&file, &slow_test(&record, &file, seconds));
    }
    (root, project, record)
}

/// The pid of a local worker of the run in `dir`.
fn wait_for_local_worker(dir: &Path) -> i32 {
    eventually(Duration::from_secs(30), "a local worker", || {
        processes_working_in(dir)
            .into_iter()
            .find(|p| p.command.ends_with(" __work"))
            .map(|worker| worker.pid)
    })
}

#[test]
fn a_local_run_answers_like_a_distributed_one() {
    let cluster = Cluster::with_listeners(&[("solo", 2)]);
    let project = cluster.project("same", json!({"job": {"max_crash_retries": 2}}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    for i in 0..4 {
        let file = format!("tests/pass{i}_test.sh");
        project.write(&file, &recording_test(&record, &file, false));
    }
    for i in 0..2 {
        let file = format!("tests/fail{i}_test.sh");
        project.write(&file, &recording_test(&record, &file, true));
    }
    // A test whose process dies by a signal fails; one that kills its worker crashes.
    project.write("tests/signal_test.sh", "echo 'about to die'\nkill -9 $$\n");
    project.write("tests/zz_killer_test.sh", WORKER_KILLER);

    let distributed = project.start(&["--junit", "junit.xml"], RUN_LIMIT);
    let distributed_failed = project.read("gorgon-failed.json");
    let distributed_cases = junit_cases(&project.read("junit.xml"));
    std::fs::remove_file(project.dir.join("junit.xml")).unwrap();
    std::fs::remove_file(project.dir.join("gorgon-failed.json")).unwrap();

    let local = project.start(&["--local", "-j", "2", "--junit", "junit.xml"], RUN_LIMIT);
    distributed.assert_exit(1);
    assert_eq!(local.code, distributed.code, "{local:?}");
    assert_eq!(
        totals(&distributed.stdout),
        "8 files: 4 passed, 3 failed, 1 crashed, 0 not run"
    );
    assert_eq!(totals(&local.stdout), totals(&distributed.stdout));
    let failed: Vec<String> = serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    let mut sorted = failed;
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "tests/fail0_test.sh",
            "tests/fail1_test.sh",
            "tests/signal_test.sh",
            "tests/zz_killer_test.sh"
        ]
    );
    let mut distributed_failed: Vec<String> = serde_json::from_str(&distributed_failed).unwrap();
    distributed_failed.sort();
    assert_eq!(sorted, distributed_failed);
    let cases = junit_cases(&project.read("junit.xml"));
    assert_eq!(cases.len(), 8, "{cases:?}");
    assert_eq!(cases, distributed_cases);
    local.assert_stdout(&["about to die", "its worker died 2 times"]);
    // Each file ran once per run.
    let runs = recorded_runs(&record);
    assert_eq!(runs.len(), 12, "{runs:?}");
    assert_no_process_in(&project.dir);
}

#[test]
fn a_local_run_needs_no_broker_and_no_file_server() {
    let (_root, project, record) = local_project(3, 0.1, json!({}));
    // A closed port: a run that touched the broker would fail.
    let closed = crate::support::free_port();
    let mut config: serde_json::Value = serde_json::from_str(&project.read("gorgon.json")).unwrap();
    config["connection"] = json!({"host": "127.0.0.1", "port": closed});
    std::fs::write(project.dir.join("gorgon.json"), config.to_string()).unwrap();

    let run = project.start(&["--local"], RUN_LIMIT);
    run.assert_report(0, &["3 files: 3 passed, 0 failed, 0 crashed, 0 not run"]);
    assert_eq!(recorded_runs(&record).len(), 3);

    // A distributed run of the same configuration still needs its file server.
    let run = project.start(&[], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&["no file_server is configured"]);
    assert_no_process_in(&project.dir);
}

#[test]
fn a_local_worker_killed_mid_file_loses_nothing() {
    let (_root, project, record) = local_project(8, 0.5, json!({}));
    let run = project.spawn_start(&["--local", "-j", "2"], &[]);
    wait_for_first_start(&record);
    let worker = wait_for_local_worker(&project.dir);
    sigkill(worker);
    assert_all_passed(&run.wait(RUN_LIMIT), &record, 8);
    assert_no_process_in(&project.dir);
}

#[test]
fn a_test_that_kills_its_local_worker_every_time_is_reported_crashed() {
    let (_root, project, _record) = local_project(3, 0.1, json!({"max_crash_retries": 2}));
    project.write("tests/zz_killer_test.sh", WORKER_KILLER);
    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    run.assert_report(
        1,
        &[
            "4 files: 3 passed, 0 failed, 1 crashed, 0 not run",
            "its worker died 2 times",
        ],
    );
    assert_no_process_in(&project.dir);
}

#[test]
fn ctrl_c_stops_every_local_process() {
    let (_root, project, record) = local_project(4, 600.0, json!({}));
    let run = project.spawn_start(&["--local", "-j", "2"], &[]);
    interrupt_once_started(run, &record, 4);
    assert_no_process_in(&project.dir);
}

#[test]
fn a_dry_run_lists_what_a_run_would_run_and_runs_nothing() {
    let (_root, project, record) = local_project(3, 0.0, json!({}));
    let listed = |args: &[&str]| {
        let run = project.start(&[&["--local", "--dry-run"][..], args].concat(), RUN_LIMIT);
        run.assert_exit(0);
        let mut files: Vec<String> = run.stdout.lines().map(str::to_owned).collect();
        files.sort();
        (files, run.stderr)
    };

    assert_eq!(
        listed(&[]).0,
        ["tests/00_test.sh", "tests/01_test.sh", "tests/02_test.sh"]
    );
    assert_eq!(
        listed(&["tests/02_test.sh", "tests/00_test.sh"]).0,
        ["tests/00_test.sh", "tests/02_test.sh"]
    );
    // With nothing to re-run the list is empty, and the reason goes to stderr.
    let (files, stderr) = listed(&["--failed"]);
    assert!(files.is_empty(), "{files:?}");
    assert!(stderr.contains("Nothing to re-run: "), "{stderr}");
    project.write("gorgon-failed.json", r#"["tests/01_test.sh"]"#);
    assert_eq!(listed(&["--failed"]).0, ["tests/01_test.sh"]);
    assert!(recorded_runs(&record).is_empty(), "a dry run ran a file");
}
