//! RabbitMQ restarting in the middle of a run (`rabbitmqctl stop_app` / `start_app`): the
//! run goes on through it (every process reconnects, the job's durable queues kept the
//! files and the replies) and ends with every file's one result; a broker that stays away
//! past `connection.outage_limit` stops the run with a clear error naming the broker and
//! listing what did not run. Alone in its test binary, because it stops the broker that
//! every other test uses; its tests take turns.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{assert_nothing_left_on_broker, rabbitmqctl, wait_for_file, Cluster, Project};

/// The broker is the machine's: one test stops it at a time.
static BROKER: Mutex<()> = Mutex::new(());

/// Starts the broker's application again even if the test fails half-way.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

/// A suite of `passing` files and `failing` ones, each taking `seconds`, marking its start
/// in `marks` and recording each of its runs.
fn suite(project: &Project, marks: &Path, passing: usize, failing: usize, seconds: f64) {
    for i in 0..passing + failing {
        let verdict = if i >= passing {
            format!("echo 'assertion failed in file {i}'\nexit 1\n")
        } else {
            String::new()
        };
        project.write(
            &format!("tests/{i:02}_test.sh"),
            &format!(
                "echo {i} >> '{runs}'\ntouch '{marks}/{i}.started'\nsleep {seconds}\n{verdict}",
                runs = marks.join("runs.log").display(),
                marks = marks.display(),
            ),
        );
    }
}

#[test]
fn a_run_goes_on_through_a_broker_restart_with_every_file_s_one_result() {
    restart_mid_run("classic", 0, Duration::from_secs(5));
}

#[test]
fn a_run_on_quorum_queues_goes_on_through_a_broker_restart() {
    restart_mid_run("quorum", 2, Duration::from_secs(3));
}

/// A run of 12 files (the last `failing` of them failing) on 2 listeners × 2 slots whose
/// broker stops for `pause` after the first file started, with the job's queues of
/// `queue_type`: it ends with each file's own result, once.
fn restart_mid_run(queue_type: &str, failing: usize, pause: Duration) {
    let _turn = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new();
    let queues = json!({"connection": {"queue_type": queue_type}});
    cluster.start_listener_with("phoenix", 2, queues.clone());
    cluster.start_listener_with("griffin", 2, queues.clone());
    let project = cluster.project("restart", queues);
    let marks = cluster.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    suite(&project, &marks, 12 - failing, failing, 1.5);
    cluster.wait_for_listeners(&project, 2);
    let events = cluster.path().join("events.jsonl");
    let events_arg = format!("--events={}", events.display());
    let run = project.spawn_start(&[&events_arg], &[]);
    wait_for_file(&marks.join("0.started"), Duration::from_secs(30));

    let restart = RestartOnDrop;
    rabbitmqctl("stop_app");
    std::thread::sleep(pause);
    rabbitmqctl("start_app");
    drop(restart);
    let run = run.wait_explained(Duration::from_secs(120), || {
        format!(
            "phoenix's log:\n{}\ngriffin's log:\n{}\nevents:\n{}",
            cluster.listener_log("phoenix"),
            cluster.listener_log("griffin"),
            std::fs::read_to_string(&events).unwrap_or_default()
        )
    });

    // The failing files fail as they should; the others pass; nothing is lost.
    let totals = format!(
        "12 files: {} passed, {failing} failed, 0 crashed, 0 not run",
        12 - failing
    );
    assert_eq!(run.code, i32::from(failing > 0), "{run:?}");
    run.assert_stdout(&[&totals]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!(
            "Lost the connection to RabbitMQ at {}:{}",
            support::broker_host(),
            support::broker_port()
        )),
        "{run:?}"
    );
    assert!(said.contains("Reconnected to RabbitMQ"), "{run:?}");
    for file in 12 - failing..12 {
        run.assert_stdout(&[&format!("tests/{file:02}_test.sh")]);
    }
    // Each file's final result once, and the file's own.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut finished: HashMap<String, Vec<String>> = HashMap::new();
    let mut job = String::new();
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if job.is_empty() {
            job = event["job_id"].as_str().unwrap_or_default().to_owned();
        }
        if event["event"] == "file_finished" {
            finished
                .entry(event["file"].as_str().unwrap().to_owned())
                .or_default()
                .push(event["status"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(finished.len(), 12, "{finished:?}");
    for (file, statuses) in &finished {
        let number: usize = file["tests/".len().."tests/00".len()].parse().unwrap();
        let expected = if number >= 12 - failing {
            "failed"
        } else {
            "passed"
        };
        assert_eq!(statuses, &[expected], "{file}: {finished:?}");
    }
    assert!(!job.is_empty(), "no job id in {text}");
    cluster.assert_no_job_processes(Duration::from_secs(15));
    assert_nothing_left_on_broker(&job, Duration::from_secs(15));

    // The listeners serve the next run as usual.
    cluster.wait_for_listeners(&project, 2);
    let again = project.start(&[], Duration::from_secs(120));
    assert_eq!(again.code, i32::from(failing > 0), "{again:?}");
    again.assert_stdout(&[&totals]);
}

#[test]
fn a_broker_away_past_the_outage_limit_stops_the_run_clearly() {
    let _turn = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new();
    let short = json!({"connection": {"outage_limit": 4}});
    cluster.start_listener_with("phoenix", 2, short.clone());
    let project = cluster.project("outage", short);
    let marks = cluster.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    suite(&project, &marks, 6, 0, 2.0);
    cluster.wait_for_listeners(&project, 1);
    let run = project.spawn_start(&[], &[]);
    wait_for_file(&marks.join("0.started"), Duration::from_secs(30));

    let restart = RestartOnDrop;
    // The outage begins while `stop_app` runs, which can take seconds: the
    // clock starts before it, so the limit is measured from no later than the
    // moment the connections closed.
    let stopped = Instant::now();
    rabbitmqctl("stop_app");
    // The run ends by itself while the broker is still away.
    let run = run.wait(Duration::from_secs(30));
    let ended_after = stopped.elapsed();
    // The worker manager gives up too, and its workers stop.
    cluster.assert_no_job_processes(Duration::from_secs(20));
    rabbitmqctl("start_app");
    drop(restart);

    // The broker's exit code, as when it cannot be reached at the start.
    run.assert_exit(3);
    assert!(
        ended_after >= Duration::from_secs(4) && ended_after < Duration::from_secs(20),
        "{ended_after:?}"
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!(
            "lost the connection to RabbitMQ at {}:{} and could not get it back within 4 s (connection.outage_limit)",
            support::broker_host(),
            support::broker_port()
        )),
        "{run:?}"
    );
    run.assert_stdout(&["not run", "tests/05_test.sh"]);

    // The listener reconnects by itself and serves the next run.
    cluster.wait_for_listeners(&project, 1);
    let again = project.start(&[], Duration::from_secs(120));
    again.assert_report(0, &["6 files: 6 passed"]);
    cluster.assert_no_job_processes(Duration::from_secs(15));
}
