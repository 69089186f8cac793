//! Careless and hostile neighbours on the broker, end to end: a file's message taken off the
//! job's files queue by another broker user is queued again within the documented bound
//! (`docs/reliability.md`); a result from a host that never took the job counts for nothing
//! and is named in the originator's log (`docs/security.md`); a retry of a failure runs on
//! the other listener every time (`docs/architecture.md`, the retry invariant).

use std::path::Path;
use std::time::Duration;

use gorgon_originator::lost::LOST_FILE_WAIT;
use gorgon_protocol::{names, Broker, BrokerSettings, Envelope, FileResult, FileStatus, Message};
use serde_json::json;

use crate::support::{eventually, job_id_from_events, wait_for_file, Cluster};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The events of a run's `--events` file.
fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The `file_finished` events of a run, as (file, host, status).
fn finished(events: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let text = |event: &serde_json::Value, key: &str| event[key].as_str().unwrap().to_owned();
    let mut finished: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "file_finished")
        .map(|e| (text(e, "file"), text(e, "host"), text(e, "status")))
        .collect();
    finished.sort();
    finished
}

/// Waits until the run writing `events` has told its job id.
fn job_id_of(events: &Path) -> uuid::Uuid {
    eventually(Duration::from_secs(30), "the run's first event", || {
        std::fs::read_to_string(events).is_ok_and(|text| text.contains('\n'))
    });
    job_id_from_events(events)
}

/// A result of `file` as a host would send it.
fn result(host: &str, file: &str, status: FileStatus) -> FileResult {
    FileResult {
        host: host.into(),
        worker_id: 1,
        file: file.into(),
        status,
        seconds: 0.1,
        exit: "exit status 0".into(),
        output: String::new(),
        tests: Vec::new(),
        impact: None,
    }
}

/// Publishes `replies` to job `job_id`'s reply queue, as any client of the broker can.
fn send_replies(job_id: uuid::Uuid, replies: &[Message]) {
    let queue = names::reply_queue(job_id);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sender = runtime
        .block_on(Broker::connect(&BrokerSettings::for_tests(), "EVIL"))
        .unwrap();
    for reply in replies {
        let envelope = Envelope::new(job_id, reply.clone());
        runtime
            .block_on(sender.send_to_queue(&queue, &envelope))
            .unwrap();
    }
    runtime.block_on(sender.close());
}

#[test]
fn a_file_taken_off_the_queue_by_a_neighbour_is_queued_again_within_the_bound() {
    let cluster = Cluster::with_listeners(&[("lone", 1)]);
    let project = cluster.project("lost", json!({}));
    let files = ["a", "b", "c", "d"];
    for name in files {
        project.write(&format!("tests/{name}_test.sh"), "sleep 3\n");
    }
    cluster.wait_for_listeners(&project, 1);
    let events_file = cluster.path().join("lost.events");
    let run = project.spawn_start(&["--events", &events_file.display().to_string()], &[]);
    let job_id = job_id_of(&events_file);

    // Another user of the broker takes one file's message (basic.get, ack) right after the
    // start, while the listener's one slot runs the first file.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let neighbour = runtime
        .block_on(Broker::connect(&BrokerSettings::for_tests(), "a neighbour"))
        .unwrap();
    let queue = names::files_queue(job_id);
    let taken = eventually(Duration::from_secs(30), "a file's message to take", || {
        // The queue may not be declared yet: each try is a channel of its own.
        runtime.block_on(neighbour.take_one(&queue)).ok().flatten()
    });
    runtime.block_on(taken.ack()).unwrap();
    let Ok(Envelope {
        message: Message::File { file: lost, .. },
        ..
    }) = &taken.envelope
    else {
        panic!("not a file's message: {:?}", taken.envelope.as_ref().ok());
    };
    runtime.block_on(neighbour.close());

    // The bound, plus the four files of 3 s one after another, plus the start and the
    // checks' cadence.
    let bound = LOST_FILE_WAIT + Duration::from_secs(4 * 3);
    let run = run.wait(bound + Duration::from_secs(60));
    run.assert_report(0, &["4 files: 4 passed, 0 failed, 0 crashed, 0 not run"]);
    run.assert_stdout(&[
        &format!("Problem: {lost} was lost"),
        &format!(
            "neither queued nor running anywhere for {} s: queued again",
            LOST_FILE_WAIT.as_secs()
        ),
    ]);
    let slack = Duration::from_secs(15);
    assert!(
        run.seconds < (bound + slack).as_secs_f64(),
        "the run took {:.1} s, more than the bound {bound:?} and {slack:?}: {run:?}",
        run.seconds
    );
    let events = events(&events_file);
    let lost_events: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "problem" && e["kind"] == "file_lost")
        .collect();
    assert_eq!(lost_events.len(), 1, "{events:?}");
    assert_eq!(lost_events[0]["what"], format!("{lost} was lost"));
    assert_eq!(lost_events[0]["fails_run"], false);
    // Every file has its one result.
    let results: Vec<String> = finished(&events).into_iter().map(|f| f.0).collect();
    let expected: Vec<String> = files.iter().map(|n| format!("tests/{n}_test.sh")).collect();
    assert_eq!(results, expected);
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

#[test]
fn a_result_from_a_host_that_never_took_the_job_is_ignored_and_named() {
    let cluster = Cluster::with_listeners(&[("honest", 1)]);
    let project = cluster.project("strangers", json!({}));
    let started = cluster.path().join("a.started");
    // Two files that really fail, after a while, one after the other on the one slot.
    project.write(
        "tests/a_test.sh",
        &format!(
            "touch {}\nsleep 2\necho 'a really fails'\nexit 1\n",
            started.display()
        ),
    );
    project.write("tests/b_test.sh", "echo 'b really fails'\nexit 1\n");
    cluster.wait_for_listeners(&project, 1);
    let events_file = cluster.path().join("strangers.events");
    let run = project.spawn_start(&["--events", &events_file.display().to_string()], &[]);
    wait_for_file(&started, Duration::from_secs(30));
    let job_id = job_id_of(&events_file);

    // A host that never accepted the job reports both files passed, before their real
    // results: one result alone, the other inside replies sent together.
    let alone = Message::FileFinished(result("EVIL", "tests/a_test.sh", FileStatus::Passed));
    let together = Message::Replies {
        replies: vec![
            Message::FileStarted {
                host: "EVIL".into(),
                worker_id: 1,
                file: "tests/b_test.sh".into(),
            },
            Message::FileFinished(result("EVIL", "tests/b_test.sh", FileStatus::Passed)),
        ],
    };
    send_replies(job_id, &[alone, together]);

    let run = run.wait(RUN_LIMIT);
    run.assert_report(
        1,
        &[
            "2 files: 0 passed, 2 failed",
            "a really fails",
            "b really fails",
        ],
    );
    run.assert_stderr(&["from host EVIL, which has not taken the job"]);
    let results = finished(&events(&events_file));
    let real = |file: &str| (file.to_owned(), "honest".to_owned(), "failed".to_owned());
    assert_eq!(
        results,
        [real("tests/a_test.sh"), real("tests/b_test.sh")],
        "{run:?}"
    );
}

#[test]
fn a_retry_runs_on_the_other_listener_every_time() {
    let cluster = Cluster::with_listeners(&[("east", 2), ("west", 2)]);
    let record = cluster.path().join("flaky.log");
    let project = cluster.project("elsewhere", json!({"job": {"retries": 1}}));
    // Fails on its first run, passes on the next; each run records its host.
    project.write(
        "tests/flaky_test.sh",
        &format!(
            "first=yes; [ -e {record:?} ] && first=no\necho \"$GORGON_HOST\" >> {record:?}\n[ \"$first\" = no ] || {{ echo 'flaked'; exit 1; }}\n",
            record = record.display().to_string()
        ),
    );
    for i in 0..8 {
        project.write(&format!("tests/q{i}_test.sh"), "exit 0\n");
    }
    cluster.wait_for_listeners(&project, 2);
    for round in 1..=5 {
        let _ = std::fs::remove_file(&record);
        let run = project.start(&[], RUN_LIMIT);
        run.assert_report(
            0,
            &["9 files: 9 passed, 0 failed, 0 crashed, 0 not run, 1 flaky"],
        );
        let hosts: Vec<String> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(hosts.len(), 2, "round {round}: {hosts:?}: {run:?}");
        assert_ne!(
            hosts[0], hosts[1],
            "round {round}: the retry ran on the listener it failed on: {run:?}"
        );
    }
    cluster.assert_no_job_processes(Duration::from_secs(15));
}
