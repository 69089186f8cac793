//! The listener's spare worker manager (`gorgon_worker::SpareManager`): started and
//! connected before any job, taken by the next job, replaced once that job has ended; a
//! spare that dies costs its job nothing but the connection it had made; a listener that
//! stops, drains or dies leaves no spare behind.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::faults::{suite, CLEANUP_LIMIT, RUN_LIMIT};
use crate::support::{assert_all_passed, eventually, process_lives, sigkill, Cluster, Project};

const SPARE_LIMIT: Duration = Duration::from_secs(30);

/// One listener `name` of 2 slots, a suite of 6 quick files for it, and the pid of the spare
/// manager the listener keeps.
fn one_listener_with_its_spare(name: &str) -> (Cluster, Project, PathBuf, i32) {
    let cluster = Cluster::with_listeners(&[(name, 2)]);
    let (project, record) = suite(&cluster, &format!("{name}-suite"), 6, 0.1, json!({}));
    cluster.wait_for_listeners(&project, 1);
    let spare = cluster.wait_for_spare_manager(name, SPARE_LIMIT);
    (cluster, project, record, spare)
}

#[test]
fn the_next_job_takes_the_spare_and_a_new_one_is_started_after_it() {
    let (cluster, project, record, first) = one_listener_with_its_spare("spare");
    let run = project.spawn_start(&[], &[]).wait(RUN_LIMIT);
    assert_all_passed(&run, &record, 6);
    let log = cluster.listener_log("spare");
    assert!(
        log.contains(&format!("pid={first}"))
            && log.contains("the spare worker manager takes the job"),
        "the job's manager is the spare {first}:\n{log}"
    );
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    let next = cluster.wait_for_spare_manager("spare", SPARE_LIMIT);
    assert_ne!(next, first, "a new spare for the next job");
}

#[test]
fn a_killed_spare_costs_its_job_nothing() {
    let (cluster, project, record, spare) = one_listener_with_its_spare("killed-spare");
    sigkill(spare);
    eventually(SPARE_LIMIT, "the listener to see its spare die", || {
        let log = cluster.listener_log("killed-spare");
        if log.contains("the spare worker manager exited before a job took it") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let run = project.spawn_start(&[], &[]).wait(RUN_LIMIT);
    assert_all_passed(&run, &record, 6);
    let log = cluster.listener_log("killed-spare");
    assert!(log.contains("worker manager started"), "{log}");
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    cluster.wait_for_spare_manager("killed-spare", SPARE_LIMIT);
}

#[test]
fn a_listener_stopped_drained_or_killed_leaves_no_spare() {
    let mut cluster = Cluster::with_listeners(&[("stopped", 1), ("killed", 1)]);
    cluster.wait_for_listeners(&cluster.project("idle", json!({})), 2);
    let stopped = cluster.wait_for_spare_manager("stopped", SPARE_LIMIT);
    let killed = cluster.wait_for_spare_manager("killed", SPARE_LIMIT);
    // An idle listener drains at once on SIGTERM, and exits 0.
    let (status, _) = cluster.terminate_listener("stopped", SPARE_LIMIT);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        !process_lives(stopped),
        "the stopped listener's spare {stopped} is gone when the listener has exited"
    );
    // A listener killed outright: its spare sees its stdin end and exits by itself.
    cluster.kill_listener("killed");
    eventually(SPARE_LIMIT, "the killed listener's spare to exit", || {
        !process_lives(killed)
    });
}
