//! Far hosts: listeners behind a delaying proxy (`support::delay_proxy`), whose link to the
//! broker can go silent (a partition: nothing forwarded, nothing closed) and come back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::faults::{suite, CLEANUP_LIMIT, RUN_LIMIT};
use crate::support::delay_proxy::Link;
use crate::support::{
    assert_all_passed, broker_host, broker_port, eventually, wait_for_first_start, Cluster,
};

/// One of two listeners, 25 ms from the broker each way, partitioned mid-run: the broker
/// drops its connections after missed heartbeats, its files (those it runs and those it
/// holds ahead) run on the other, and the run ends within 15 s of the cut with every file's
/// one result. Healed, the host's late results are dropped, nothing of the job is left on
/// it, and it runs the next job.
#[test]
fn a_partitioned_listener_s_files_run_elsewhere_within_seconds() {
    let mut cluster = Cluster::new();
    let link = Link::new(Duration::from_millis(25));
    let port = link.forward(&format!("{}:{}", broker_host(), broker_port()));
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
