//! A listener drains on SIGTERM: it takes no more files, lets the ones it runs finish, hands
//! back the rest and exits 0 within `drain_timeout`; the run goes on on the other listener
//! and ends with every file's result, none lost and none run twice. `gorgon drain HOST`
//! from the project's machine drains it the same way; a listener without
//! `allow_fleet_commands` refuses, and a name nobody answers to fails.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{eventually, Cluster};

const RUN_LIMIT: Duration = Duration::from_secs(120);
const FILES: usize = 10;

/// A test file that writes `start NAME HOST` to `log` as it starts and `end NAME HOST` once
/// it has taken a second.
fn timed_test(log: &std::path::Path, name: &str) -> String {
    format!(
        "echo \"start {name} $GORGON_HOST\" >> '{log}'\nsleep 1\necho \"end {name} $GORGON_HOST\" >> '{log}'\n",
        log = log.display()
    )
}

/// The names of the files whose lines of `log` begin with `event`, and on which host.
fn events(log: &std::path::Path, event: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            (words.next() == Some(event)).then(|| {
                let name = words.next().unwrap_or_default().to_owned();
                (name, words.next().unwrap_or_default().to_owned())
            })
        })
        .collect()
}

#[test]
fn a_drained_listener_finishes_its_files_hands_back_the_rest_and_exits_0() {
    let mut cluster = Cluster::new();
    cluster.start_listener_with("drained", 2, json!({"drain_timeout": 30}));
    let project = cluster.project("drain", json!({}));
    let log = cluster.path().join("runs.log");
    for i in 0..FILES {
        let name = format!("tests/{i:02}_test.sh");
        project.write(&name, &timed_test(&log, &name));
    }
    cluster.wait_for_listeners(&project, 1);
    let run = project.spawn_start(&[], &[]);
    eventually(RUN_LIMIT, "a file to run on the listener to drain", || {
        !events(&log, "start").is_empty()
    });
    cluster.start_listener("stays", 2);

    let (status, took) = cluster.terminate_listener("drained", RUN_LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "the drained listener's exit: {status:?}"
    );
    assert!(took < Duration::from_secs(30), "it drained in {took:?}");
    let said = cluster.listener_log("drained");
    assert!(said.contains("draining"), "{said}");
    assert!(!said.contains("stopping the jobs left"), "{said}");

    let run = run.wait(RUN_LIMIT);
    run.assert_exit(0);
    let stdout = &run.stdout;
    assert!(
        stdout.contains(&format!("{FILES} files: {FILES} passed")),
        "{stdout}"
    );
    let (started, ended) = (events(&log, "start"), events(&log, "end"));
    assert!(
        ended.iter().any(|(_, host)| host == "drained"),
        "the files running on the drained listener ran to their end: {started:?} {ended:?}\n{said}"
    );
    assert_every_file_ran_once(&log);
}

/// Each file of `log` that started ran to its end, once.
fn assert_every_file_ran_once(log: &std::path::Path) {
    let (started, ended) = (events(log, "start"), events(log, "end"));
    assert_eq!(
        started.len(),
        ended.len(),
        "every file that started ran to its end: {started:?} {ended:?}"
    );
    let mut names: Vec<String> = started.into_iter().map(|(name, _)| name).collect();
    names.sort();
    let expected: Vec<String> = (0..FILES)
        .map(|i| format!("tests/{i:02}_test.sh"))
        .collect();
    assert_eq!(names, expected, "every file started exactly once");
}

#[test]
fn gorgon_drain_drains_the_listener_it_names_and_only_where_allowed() {
    let mut cluster = Cluster::new();
    let allowed = json!({"drain_timeout": 30, "allow_fleet_commands": true});
    cluster.start_listener_with("drained", 2, allowed);
    cluster.start_listener("closed", 1);
    let project = cluster.project("remote-drain", json!({}));
    let log = cluster.path().join("runs.log");
    for i in 0..FILES {
        let name = format!("tests/{i:02}_test.sh");
        project.write(&name, &timed_test(&log, &name));
    }
    cluster.wait_for_listeners(&project, 2);

    let refused = project.gorgon(&["drain", "closed"]);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(said.contains("closed refused to drain"), "{said}");
    let nobody = project.gorgon(&["drain", "nobody", "--timeout", "1"]);
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");

    let run = project.spawn_start(&[], &[]);
    eventually(RUN_LIMIT, "a file to run on the listener to drain", || {
        events(&log, "start")
            .iter()
            .any(|(_, host)| host == "drained")
    });
    let asked = Instant::now();
    let drained = project.gorgon(&["drain", "drained"]);
    let said = String::from_utf8_lossy(&drained.stdout);
    assert_eq!(drained.status.code(), Some(0), "{drained:?}");
    assert!(said.contains("drained drains"), "{said}");
    let status = cluster.wait_for_listener_exit("drained", RUN_LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "the drained listener's exit: {status:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
    let logged = cluster.listener_log("drained");
    assert!(
        logged.contains("gorgon drain asks this listener to drain"),
        "{logged}"
    );
    assert!(!logged.contains("stopping the jobs left"), "{logged}");

    let run = run.wait(RUN_LIMIT);
    run.assert_exit(0);
    assert!(
        run.stdout
            .contains(&format!("{FILES} files: {FILES} passed")),
        "{}",
        run.stdout
    );
    assert_every_file_ran_once(&log);
}
