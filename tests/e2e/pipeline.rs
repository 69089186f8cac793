//! End to end through the real path: the `gorgon` binary, RabbitMQ, an rsync daemon and
//! listeners on loopback. Each test builds its own cluster, so tests run side by side.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{recorded_runs, recording_test, Cluster};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn forty_files_on_two_listeners_each_run_once_and_failures_are_reported() {
    let cluster = Cluster::with_listeners(&[("alpha", 2), ("beta", 2)]);
    let project = cluster.project("suite", json!({}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    let failing = [
        "tests/a/07_test.sh",
        "tests/c/21_test.sh",
        "tests/d/33_test.sh",
    ];
    let mut all = Vec::new();
    for i in 0..40 {
        let file = format!("tests/{}/{i:02}_test.sh", ["a", "b", "c", "d"][i / 10]);
        let fail = failing.contains(&file.as_str());
        project.write(&file, &recording_test(&record, &file, fail));
        all.push(file);
    }
    project.write("tests/README.txt", "not a test");
    cluster.wait_for_listeners(&project, 2);

    let run = project.start(&[], RUN_LIMIT);

    run.assert_exit(1);
    // Every file ran exactly once.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in recorded_runs(&record) {
        *counts
            .entry(line.split(' ').next().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 40, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    // Each failure is named with where it ran and its output.
    for file in failing {
        run.assert_stdout(&[
            &format!("File '{file}' failed at '"),
            &format!("assertion failed in {file}: expected 1, got 2"),
        ]);
    }
    run.assert_stdout(&["40 files: 37 passed, 3 failed, 0 crashed, 0 not run"]);
    // The failed files list holds exactly the failures.
    let mut failed: Vec<String> =
        serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    failed.sort();
    assert_eq!(failed, failing);
    // The runtime file has a timing for every file.
    let runtime: BTreeMap<String, f64> =
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap();
    assert_eq!(runtime.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = all.clone();
        sorted.sort();
        sorted
    });
    assert!(runtime.values().all(|s| *s >= 0.0 && *s < 60.0));
}

#[test]
fn runtime_history_is_merged_and_a_green_run_exits_zero() {
    let cluster = Cluster::with_listeners(&[("solo", 2)]);
    let project = cluster.project("merge", json!({}));
    project.write("gorgon-runtime.json", r#"{"tests/gone_test.sh": 4.5}"#);
    project.write("tests/one_test.sh", "exit 0\n");
    project.write("tests/two_test.sh", "exit 0\n");

    let run = project.start(&[], RUN_LIMIT);

    run.assert_report(0, &["2 files: 2 passed, 0 failed, 0 crashed, 0 not run"]);
    let runtime: BTreeMap<String, f64> =
        serde_json::from_str(&project.read("gorgon-runtime.json")).unwrap();
    assert_eq!(
        runtime.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "tests/gone_test.sh",
            "tests/one_test.sh",
            "tests/two_test.sh"
        ]
    );
    assert_eq!(runtime["tests/gone_test.sh"], 4.5);
    let failed: Vec<String> = serde_json::from_str(&project.read("gorgon-failed.json")).unwrap();
    assert!(failed.is_empty());

    // Files named on the command line replace the configured globs.
    let run = project.start(&["tests/two_test.sh"], RUN_LIMIT);
    run.assert_report(0, &["1 file: 1 passed"]);
}

#[test]
fn callbacks_run_where_and_when_gorgon_runs_them() {
    let cluster = Cluster::with_listeners(&[("cb", 2)]);
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    let log = record.join("callbacks.log");
    let log = log.display();
    let project = cluster.project(
        "callbacks",
        json!({"job": {"callbacks": {
            "before_originate": format!("echo before_originate $GORGON_JOB_ID >> '{log}'"),
            // after_sync prepares the workspace that the tests then depend on.
            "after_sync": format!("echo prepared > prepared.txt && echo after_sync $GORGON_HOST >> '{log}'"),
            "before_creating_workers": format!("echo before_creating_workers >> '{log}'"),
            "before_start": format!("echo before_start $GORGON_WORKER_ID > worker-$GORGON_WORKER_ID.txt && echo before_start $GORGON_WORKER_ID >> '{log}'"),
            "after_complete": format!("echo after_complete $GORGON_WORKER_ID >> '{log}'"),
            "after_creating_workers": format!("echo after_creating_workers >> '{log}'"),
            "after_job_finishes": format!("echo after_job_finishes >> '{log}'"),
        }}}),
    );
    for i in 0..6 {
        project.write(
            &format!("tests/{i}_test.sh"),
            "test \"$(cat prepared.txt)\" = prepared || { echo 'after_sync did not run'; exit 1; }\n\
             test -f \"worker-$GORGON_WORKER_ID.txt\" || { echo 'before_start did not run'; exit 1; }\n",
        );
    }

    let run = project.start(&[], RUN_LIMIT);

    run.assert_exit(0);
    let lines: Vec<String> = std::fs::read_to_string(record.join("callbacks.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} did not run: {lines:?}"))
    };
    assert!(
        lines[0].starts_with("before_originate ") && lines[0].len() > "before_originate ".len()
    );
    assert_eq!(lines[position("after_sync")], "after_sync cb");
    assert!(position("before_originate") < position("after_sync"));
    assert!(position("after_sync") < position("before_creating_workers"));
    assert!(position("before_creating_workers") < position("before_start"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("before_start"))
            .count(),
        2
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("after_complete"))
            .count(),
        2
    );
    assert!(position("after_complete") < position("after_creating_workers"));
    assert_eq!(lines.last().unwrap(), "after_job_finishes");
}

#[test]
fn a_failing_after_sync_fails_the_run_with_its_output_in_bounded_time() {
    let cluster = Cluster::with_listeners(&[("broken", 2)]);
    let project = cluster.project(
        "bad-after-sync",
        json!({"job": {"callbacks": {"after_sync": "echo 'bundle install: could not find gem foo'; exit 5"}}}),
    );
    for i in 0..4 {
        project.write(&format!("tests/{i}_test.sh"), "exit 0\n");
    }

    let run = project.start(&[], Duration::from_secs(60));

    // The failure itself stops the run: it does not wait for a result that cannot come.
    run.assert_report(1, &["Run stopped: after_sync callback failed on broken"]);
    run.assert_output(&[
        "after_sync callback failed on broken",
        "exit status 5",
        "bundle install: could not find gem foo",
    ]);
    run.assert_stdout(&["4 not run"]);
}

#[test]
fn two_originators_share_the_listeners_and_keep_their_own_results() {
    let cluster = Cluster::with_listeners(&[("shared-1", 2), ("shared-2", 2)]);
    let record = cluster.path().join("record");
    let projects: Vec<_> = ["left", "right"]
        .iter()
        .map(|name| {
            let project = cluster.project(name, json!({}));
            let dir = record.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..12 {
                let file = format!("tests/{name}_{i:02}_test.sh");
                // Each project fails a different number of files.
                let fail = (*name == "left" && i == 3) || (*name == "right" && i >= 10);
                project.write(
                    &file,
                    &format!("sleep 0.1\n{}", recording_test(&dir, &file, fail)),
                );
            }
            project
        })
        .collect();
    cluster.wait_for_listeners(&projects[0], 2);

    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = projects
            .iter()
            .map(|p| scope.spawn(move || p.start(&[], RUN_LIMIT)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (run, (name, failures)) in runs.iter().zip([("left", 1), ("right", 2)]) {
        run.assert_report(
            1,
            &[&format!(
                "12 files: {} passed, {failures} failed, 0 crashed, 0 not run",
                12 - failures
            )],
        );
        let other = if name == "left" { "right" } else { "left" };
        assert!(!run.stdout.contains(&format!("tests/{other}_")), "{run:?}");
        let runs = recorded_runs(&record.join(name));
        assert_eq!(runs.len(), 12, "{runs:?}");
    }
}

#[test]
fn a_listener_that_starts_during_a_run_receives_the_job() {
    let mut cluster = Cluster::new();
    let project = cluster.project("late", json!({}));
    for i in 0..3 {
        project.write(&format!("tests/{i}_test.sh"), "exit 0\n");
    }
    let run = project.spawn_start(&[], &[]);
    // The only listener starts once the job has been published and nobody took it.
    run.wait_for_stderr("waiting for listeners", Duration::from_secs(30));
    cluster.start_listener("latecomer", 1);
    let started = run.wait(RUN_LIMIT);
    started.assert_report(0, &["3 files: 3 passed"]);
}

#[test]
fn ping_lists_every_listener_with_its_slots() {
    let cluster = Cluster::with_listeners(&[("p1", 2), ("p2", 3)]);
    let project = cluster.project("ping", json!({}));
    cluster.wait_for_listeners(&project, 2);
    let output = project.gorgon(&["ping", "--timeout", "1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("p1 is running gorgon-rs"), "{stdout}");
    assert!(stdout.contains("p2 is running gorgon-rs"), "{stdout}");
    assert!(stdout.contains("with 3 worker slot(s)"), "{stdout}");
    assert!(stdout.contains("a total of 5 worker slot(s)"), "{stdout}");
}

#[test]
fn a_warm_workspace_shows_exactly_the_originators_tree() {
    let cluster = Cluster::with_listeners(&[("warm", 1)]);
    let project = cluster.project("warm", json!({"job": {"sync": {"exclude": ["*.log"]}}}));
    // The test leaves debris in its workspace, checks that no earlier debris survived,
    // and that the tree holds exactly what the originator has.
    let check = "test ! -e debris.txt || { echo 'debris of an earlier job'; exit 1; }\n\
                 test ! -e old.log || { echo 'an excluded file survived'; exit 1; }\n\
                 echo junk > debris.txt; echo log > old.log\n\
                 ls tests > listing.txt\n";
    project.write("tests/check_test.sh", check);
    project.write("tests/gone_test.sh", "exit 0\n");
    let first = project.start(&[], RUN_LIMIT);
    first.assert_exit(0);
    let workspaces = cluster.workspaces("warm");
    assert_eq!(workspaces.len(), 1, "{workspaces:?}");
    let workspace = &workspaces[0];
    assert!(
        workspace.join("debris.txt").exists(),
        "the workspace is kept warm"
    );

    std::fs::remove_file(project.dir.join("tests/gone_test.sh")).unwrap();
    let second = project.start(&[], RUN_LIMIT);
    second.assert_exit(0);
    assert_eq!(
        cluster.workspaces("warm"),
        workspaces,
        "the same workspace is reused"
    );
    let listing = std::fs::read_to_string(workspace.join("listing.txt")).unwrap();
    assert_eq!(
        listing, "check_test.sh\n",
        "a deleted file is gone from the workspace"
    );
}

/// `connection.hosts` names several broker nodes: every process connects to one that
/// answers (here the first node is down: nothing listens on its port), and `gorgon ping`
/// and `listen --check` say which node they reached.
#[test]
fn a_run_reaches_a_broker_node_that_answers_among_several() {
    let mut cluster = Cluster::new();
    let live = format!(
        "{}:{}",
        crate::support::broker_host(),
        crate::support::broker_port()
    );
    let dead = format!("127.0.0.1:{}", crate::support::free_port());
    let hosts = json!({"connection": {"hosts": [dead.clone(), live.clone()]}});
    cluster.start_listener_with("n1", 2, hosts.clone());
    cluster.start_listener_with("n2", 2, hosts.clone());
    let project = cluster.project("several-nodes", hosts);
    let record = cluster.path().join("several-nodes-record");
    std::fs::create_dir_all(&record).unwrap();
    for i in 0..6 {
        let name = format!("tests/{i:02}_test.sh");
        project.write(&name, &recording_test(&record, &name, false));
    }
    cluster.wait_for_listeners(&project, 2);
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(0, &["6 files: 6 passed"]);
    let output = project.gorgon(&["ping", "--timeout", "1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("through RabbitMQ at {live}")),
        "{stdout}"
    );
    assert!(stdout.contains("2 listener(s)"), "{stdout}");
    let config = cluster.path().join("listeners/n1/gorgon_listener.json");
    let check = project.gorgon(&["listen", "--check", "--config", config.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains(&format!("RabbitMQ at {live} is reachable")),
        "{said}"
    );
    // With no node answering, the error names every node.
    let nowhere = cluster.project(
        "no-node",
        json!({"connection": {"hosts": [dead.clone(), format!("127.0.0.1:{}", crate::support::free_port())]}}),
    );
    nowhere.write("tests/a_test.sh", "exit 0\n");
    let run = nowhere.start(&[], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&["no node answered", &dead]);
}
