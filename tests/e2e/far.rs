//! Far hosts: listeners behind a delaying proxy (`support::delay_proxy`), whose link to the
//! broker can go silent (a partition: nothing forwarded, nothing closed) and come back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ci_nodes::{checkouts, node_with, record_of, runs, LIMIT};
use crate::faults::{suite, CLEANUP_LIMIT, RUN_LIMIT};
use crate::support::delay_proxy::Link;
use crate::support::{
    assert_all_passed, assert_nothing_left_on_broker, broker_host, broker_port, eventually,
    job_id_from_events, none_left, processes_working_in, wait_for_first_start, Cluster, Run,
};

/// A link 25 ms each way to the broker: its port on loopback.
fn far_broker() -> (Link, u16) {
    let link = Link::new(Duration::from_millis(25));
    let port = link.forward(&format!("{}:{}", broker_host(), broker_port()));
    (link, port)
}

/// One of two listeners, 25 ms from the broker each way, partitioned mid-run: the broker
/// drops its connections after missed heartbeats, its files (those it runs and those it
/// holds ahead) run on the other, and the run ends within 15 s of the cut with every file's
/// one result. Healed, the host's late results are dropped, nothing of the job is left on
/// it, and it runs the next job.
#[test]
fn a_partitioned_listener_s_files_run_elsewhere_within_seconds() {
    let mut cluster = Cluster::new();
    let (link, port) = far_broker();
    cluster.start_listener_with(
        "far",
        2,
        json!({"connection": {"host": "127.0.0.1", "port": port}}),
    );
    cluster.start_listener("near", 2);
    let (project, record) = suite(&cluster, "partition", 30, 0.3, json!({}));
    cluster.wait_for_listeners(&project, 2);
    let run = project.spawn_start(&[], &[]);
    cluster.wait_for_process("far", "__work", Duration::from_secs(30));
    wait_for_first_start(&record);
    // Cut once the far host holds files ahead of its slots: those go elsewhere too.
    eventually(
        Duration::from_secs(30),
        "the far host to hold files ahead",
        || {
            let log = cluster.listener_log("far");
            if log.contains("the broker is far") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let cut_at = Instant::now();
    link.partition();
    let run = run.wait(RUN_LIMIT);
    let after_cut = cut_at.elapsed();
    link.heal();
    assert_all_passed(&run, &record, 30);
    assert!(
        after_cut < Duration::from_secs(15),
        "the run ended {after_cut:?} after the cut: {run:?}"
    );
    run.assert_stderr(&["listener far disappeared"]);
    cluster.assert_no_job_processes(Duration::from_secs(30).max(CLEANUP_LIMIT));
    cluster.assert_takes_a_next_job("far");
}

/// Each file of the events file at `events` has exactly one `file_finished` event, and
/// there are `files` of them.
fn assert_one_result_each(events: &std::path::Path, files: usize) {
    let text = std::fs::read_to_string(events).unwrap();
    let mut finished: Vec<String> = text
        .lines()
        .filter(|line| line.contains("\"event\":\"file_finished\""))
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["file"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    finished.sort();
    let before = finished.len();
    finished.dedup();
    assert_eq!(before, finished.len(), "a file finished twice: {text}");
    assert_eq!(finished.len(), files, "{text}");
}

/// One of three CI nodes (`gorgon work`), its node and its worker manager 25 ms from the
/// broker, partitioned mid-build: the broker drops its connections after missed
/// heartbeats, its files run on the other two, and the build's report (exit 0, every
/// file's one result) comes within 15 s of the cut. The partitioned node finds its own
/// connection gone (missed heartbeats on its side), stops its part and exits saying so,
/// with the broker's exit code; healed, nothing of the build is left on it.
#[test]
fn a_partitioned_ci_node_s_files_run_elsewhere_and_it_stops_clearly() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-cut", 36, 0.4, &[], 3);
    let record = record_of(&cluster, "ci-cut");
    let build = format!("cut-{}", uuid::Uuid::new_v4());
    let (link, port) = far_broker();
    let far_url = format!("amqp://guest:guest@127.0.0.1:{port}/");
    let report = projects[0].spawn_gorgon(
        "report",
        &["--build-id", &build, "--events-to", "events.ndjson"],
        &[],
    );
    let node = |i: usize, env: &[(&str, String)]| {
        node_with(&projects[i], &build, &format!("node-{i}"), env)
    };
    let near = [node(0, &[]), node(1, &[])];
    let far = node(2, &[("GORGON_BROKER_URL", far_url)]);
    eventually(LIMIT, "a file started on the far node", || {
        runs(&record).iter().any(|(_, host)| host == "node-2")
    });
    let cut_at = Instant::now();
    link.partition();
    let report = report.wait(LIMIT);
    let after_cut = cut_at.elapsed();
    eprintln!("measured: the report came {after_cut:?} after the cut");
    report.assert_report(0, &["36 files: 36 passed, 0 failed, 0 crashed, 0 not run"]);
    assert_one_result_each(&projects[0].dir.join("events.ndjson"), 36);
    assert!(
        after_cut < Duration::from_secs(15),
        "the build ended {after_cut:?} after the cut: {report:?}"
    );
    for near in near {
        near.wait(LIMIT).assert_exit(0);
    }
    let ran = runs(&record);
    let far_files: Vec<&String> = ran
        .iter()
        .filter(|(_, host)| host == "node-2")
        .map(|(file, _)| file)
        .collect();
    for file in &far_files {
        assert!(
            ran.iter().any(|(f, host)| f == *file && host != "node-2"),
            "{file} ran on the far node and nowhere else: {ran:?}"
        );
    }
    link.heal();
    let far = far.wait(Duration::from_secs(60));
    eprintln!(
        "measured: the far node exited {:?} after the cut",
        cut_at.elapsed()
    );
    far.assert_exit(3);
    far.assert_stderr(&["lost the connection to RabbitMQ at 127.0.0.1:", &build]);
    eventually(
        Duration::from_secs(30),
        "nothing of the far node left",
        || none_left(processes_working_in(&projects[2].dir)),
    );
}

/// A project whose originator is 25 ms from the broker, over `link`, with `outage_limit`
/// seconds of `connection.outage_limit`, and `files` files of 0.4 s; the run started.
fn far_originator(
    cluster: &Cluster,
    name: &str,
    port: u16,
    outage_limit: u64,
    files: usize,
) -> (
    crate::support::Started,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let connection = json!({"connection": {
        "host": "127.0.0.1",
        "port": port,
        "outage_limit": outage_limit,
    }});
    let (project, record) = suite(cluster, name, files, 0.4, connection);
    cluster.wait_for_listeners(&project, 2);
    let events = project.dir.join("events.ndjson");
    let run = project.spawn_start(&["--events", events.to_str().unwrap()], &[]);
    wait_for_first_start(&record);
    (run, record, events)
}

/// The originator's own link to the broker cut for 12 s mid-run, longer than the broker
/// takes to drop its connection (two missed heartbeats) but shorter than its
/// `connection.outage_limit` (30 s): it reconnects after the heal and the run completes
/// with every file's one result, exit 0. The worker managers, which find the originator's
/// reply queue without a consumer meanwhile, wait the originator's outage limit before
/// they take it for gone.
#[test]
fn a_partition_of_the_originator_shorter_than_its_outage_limit_is_ridden_out() {
    let cluster = Cluster::with_listeners(&[("a", 2), ("b", 2)]);
    let (link, port) = far_broker();
    let (run, record, events) = far_originator(&cluster, "ridden", port, 30, 30);
    link.partition();
    std::thread::sleep(Duration::from_secs(12));
    link.heal();
    let healed_at = Instant::now();
    let run = run.wait(RUN_LIMIT);
    eprintln!(
        "measured: the run ended {:?} after the heal",
        healed_at.elapsed()
    );
    assert_all_passed(&run, &record, 30);
    assert_one_result_each(&events, 30);
    run.assert_stderr(&["Lost the connection to RabbitMQ", "the run goes on"]);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

/// The originator's own link cut for longer than its `connection.outage_limit` (5 s): the
/// run stops within a bounded time after the limit, naming the problem and listing the
/// files with no result, with the broker's exit code; the worker managers take the
/// originator for gone after the same limit, and nothing of the job is left on the hosts
/// or the broker.
#[test]
fn a_partition_of_the_originator_past_its_outage_limit_stops_the_run_clearly() {
    let cluster = Cluster::with_listeners(&[("a", 2), ("b", 2)]);
    let (link, port) = far_broker();
    let (run, _record, events) = far_originator(&cluster, "stranded", port, 5, 40);
    let cut_at = Instant::now();
    link.partition();
    let run: Run = run.wait(RUN_LIMIT);
    let after_cut = cut_at.elapsed();
    eprintln!("measured: the run stopped {after_cut:?} after the cut");
    // Two missed heartbeats (6 s) to find the link dead, the limit (5 s), and a margin.
    assert!(
        after_cut < Duration::from_secs(16),
        "the run stopped {after_cut:?} after the cut: {run:?}"
    );
    run.assert_exit(3);
    run.assert_stdout(&[
        "Run stopped: lost the connection to RabbitMQ at 127.0.0.1:",
        "could not get it back within 5 s (connection.outage_limit)",
        "Unfinished files (",
        "not run",
    ]);
    // The files still running on the hosts at the cut have no result here: listed.
    assert!(run.stdout.contains("\ttests/39_test.sh"), "{run:?}");
    cluster.assert_no_job_processes(Duration::from_secs(30));
    eprintln!(
        "measured: no process of the job left {:?} after the cut",
        cut_at.elapsed()
    );
    link.heal();
    let job = job_id_from_events(&events).to_string();
    assert_nothing_left_on_broker(&job, Duration::from_secs(30));
}
