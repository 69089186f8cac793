//! RabbitMQ restarting in the middle of a run (`rabbitmqctl stop_app` / `start_app`): the
//! originator stops with a clear error naming the broker instead of hanging, the listener
//! reconnects with backoff, and the next run succeeds. Alone in its test binary, because it
//! stops the broker that every other test uses.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{wait_for_file, Cluster};

fn rabbitmqctl(command: &str) {
    let output = Command::new("rabbitmqctl").arg(command).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the broker's application again even if the test fails half-way.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[test]
fn a_broker_restart_fails_the_run_clearly_and_listeners_come_back() {
    let mut cluster = Cluster::new();
    cluster.start_listener("phoenix", 2);
    let project = cluster.project("restart", json!({}));
    let marks = cluster.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    for i in 0..6 {
        project.write(
            &format!("tests/{i}_test.sh"),
            &format!("touch '{}/{i}.started'\nsleep 2\n", marks.display()),
        );
    }
    cluster.wait_for_listeners(&project, 1);
    let run = project.spawn_start(&[], &[]);
    wait_for_file(&marks.join("0.started"), Duration::from_secs(30));

    let restart = RestartOnDrop;
    rabbitmqctl("stop_app");
    let run = run.wait(Duration::from_secs(30));
    rabbitmqctl("start_app");
    drop(restart);

    assert_eq!(run.code, 1, "{run:?}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!(
            "lost the connection to RabbitMQ at {}:{}",
            support::broker_host(),
            support::broker_port()
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("not run"), "{run:?}");

    // The listener reconnects by itself and serves the next run.
    let started = Instant::now();
    cluster.wait_for_listeners(&project, 1);
    assert!(started.elapsed() < Duration::from_secs(30));
    let again = project.start(&[], Duration::from_secs(120));
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("6 files: 6 passed"), "{again:?}");
    cluster.assert_no_job_processes(Duration::from_secs(15));
}
