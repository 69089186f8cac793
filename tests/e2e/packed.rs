//! Quick files packed several to a message of the files queue (`job.pack_seconds`): a
//! packed run gives every file exactly one result; a host killed mid-batch loses nothing,
//! its batch's files whose results were confirmed stay settled and the others run again,
//! each alone; a file that kills its worker inside a batch is named and capped by
//! `max_crash_retries`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::faults::{CLEANUP_LIMIT, RUN_LIMIT};
use crate::support::{eventually, recorded_runs, sigkill, Cluster, Project, WORKER_KILLER};

/// Project `name` (`job` merged into its configuration) of `files` test files that record
/// their run (`FILE HOST` in `runs.log` of the returned folder) and take `seconds`, with a
/// runtime file that says each took `recorded` seconds, so that the originator packs them.
fn packed_suite(
    cluster: &Cluster,
    name: &str,
    files: usize,
    (seconds, recorded): (f64, f64),
    job: serde_json::Value,
) -> (Project, PathBuf) {
    let project = cluster.project(name, job);
    let record = cluster.path().join(format!("record-{name}"));
    std::fs::create_dir_all(&record).unwrap();
    let mut history = serde_json::Map::new();
    for i in 0..files {
        let file = format!("tests/{i:02}_test.sh");
        let body = format!(
            "echo \"{file} $GORGON_HOST\" >> '{runs}'\nsleep {seconds}\n",
            runs = record.join("runs.log").display()
        );
        project.write(&file, &body);
        history.insert(file, json!(recorded));
    }
    let history = serde_json::Value::Object(history).to_string();
    project.write("gorgon-runtime.json", &history);
    (project, record)
}

/// How many times each file ran, by the record.
fn runs_per_file(record: &std::path::Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in recorded_runs(record) {
        let file = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *runs.entry(file).or_default() += 1;
    }
    runs
}

/// The host whose result each file kept, from the run's events.
fn result_hosts(project: &Project, events: &str) -> HashMap<String, String> {
    project
        .read(events)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == "file_finished")
        .map(|event| {
            let file = event["file"].as_str().unwrap().to_owned();
            (file, event["host"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn a_packed_run_gives_every_file_exactly_one_result() {
    let cluster = Cluster::with_listeners(&[("pa", 2), ("pb", 2)]);
    // 0.02 s each by the runtime file: twelve to a message of 0.25 s at most.
    let (project, record) = packed_suite(&cluster, "packed", 60, (0.0, 0.02), json!({}));
    cluster.wait_for_listeners(&project, 2);
    let run = project.start(&["--events", "events.ndjson"], RUN_LIMIT);
    run.assert_report(0, &["60 files: 60 passed, 0 failed, 0 crashed, 0 not run"]);
    run.assert_stderr(&["Queued 60 files in 5 messages"]);
    let runs = runs_per_file(&record);
    assert_eq!(runs.len(), 60, "every file ran: {runs:?}");
    assert!(runs.values().all(|&n| n == 1), "each once: {runs:?}");
    assert_eq!(result_hosts(&project, "events.ndjson").len(), 60);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

/// A batch of twelve files of 0.6 s on a host of one slot whose worker manager is killed
/// once three of them have run there: the other host takes the batch, delivered again,
/// and splits it; the files whose results were confirmed are not run again, the others run
/// there, each alone.
#[test]
fn a_host_killed_mid_batch_loses_nothing_and_its_unconfirmed_files_run_again_alone() {
    let mut cluster = Cluster::new();
    cluster.start_listener("doomed", 1);
    let (project, record) = packed_suite(&cluster, "midbatch", 12, (0.6, 0.02), json!({}));
    cluster.wait_for_listeners(&project, 1);
    let run = project.spawn_start(&["--events", "events.ndjson"], &[]);
    let manager = cluster.wait_for_process("doomed", "__manage-workers", Duration::from_secs(30));
    eventually(Duration::from_secs(30), "three files run on doomed", || {
        let ran = recorded_runs(&record).len();
        if ran >= 4 {
            Ok(())
        } else {
            Err(format!("{ran} started"))
        }
    });
    // The survivor is idle until the batch comes back: the whole batch was doomed's.
    cluster.start_listener("survivor", 2);
    cluster.wait_for_listeners(&project, 2);
    sigkill(manager);
    let run = run.wait(RUN_LIMIT);
    run.assert_report(0, &["12 files: 12 passed, 0 failed, 0 crashed, 0 not run"]);
    run.assert_stderr(&["Queued 12 files in 1 message"]);
    let runs = runs_per_file(&record);
    assert_eq!(runs.len(), 12, "nothing lost: {runs:?}");
    let kept = result_hosts(&project, "events.ndjson");
    let settled_on_doomed: Vec<&String> = kept
        .iter()
        .filter(|(_, host)| *host == "doomed")
        .map(|(file, _)| file)
        .collect();
    assert!(
        settled_on_doomed.len() >= 2,
        "results confirmed before the kill: {kept:?}"
    );
    for file in &settled_on_doomed {
        assert_eq!(
            runs[*file], 1,
            "{file} had its result and ran again: {runs:?}"
        );
    }
    let rerun = kept.values().filter(|host| *host == "survivor").count();
    assert!(
        rerun >= 1,
        "the unconfirmed files ran on the survivor: {kept:?}"
    );
    let log = cluster.listener_log("survivor");
    assert!(
        log.contains("a batch delivered again: its files go back to the queue alone"),
        "{log}"
    );
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

#[test]
fn a_file_that_kills_its_worker_inside_a_batch_is_named_and_capped() {
    let cluster = Cluster::with_listeners(&[("victim", 2)]);
    let job = json!({"job": {"max_crash_retries": 2}});
    let (project, record) = packed_suite(&cluster, "packedkiller", 6, (0.1, 0.01), job);
    let killer = "tests/zz_killer_test.sh";
    let killer_runs = record.join("killer-runs.log");
    project.write(
        killer,
        &format!(
            "echo killer >> '{}'\n{WORKER_KILLER}",
            killer_runs.display()
        ),
    );
    let mut history: serde_json::Value =
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap();
    history[killer] = json!(0.01);
    project.write("gorgon-runtime.json", &history.to_string());
    cluster.wait_for_listeners(&project, 1);
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(
        1,
        &[
            "7 files: 6 passed, 0 failed, 1 crashed, 0 not run",
            "File 'tests/zz_killer_test.sh' crashed at",
            "its worker died 2 times",
        ],
    );
    run.assert_stderr(&["Queued 7 files in 1 message"]);
    let killed = std::fs::read_to_string(&killer_runs).unwrap_or_default();
    let killed = killed.lines().count();
    assert!(
        (2..=3).contains(&killed),
        "named after 2 deaths (a first one in a worker's batch of several files blames none): ran {killed} times"
    );
    let runs = runs_per_file(&record);
    assert_eq!(runs.len(), 6, "every other file ran: {runs:?}");
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}
