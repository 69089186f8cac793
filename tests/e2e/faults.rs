//! Faults end in bounded time in a complete, correct result or a clear error: dead workers,
//! worker managers and listeners, tests that kill their worker or hang, Ctrl-C at every
//! stage, two jobs on one listener, and garbage on the project's queues. Each test checks
//! that every file has one result and that no process of the job is left.

use std::time::Duration;

use crate::support::{
    assert_all_passed, assert_every_file_ran, eventually, interrupt_once_started,
    job_id_from_events, none_left, recorded_runs, sigkill, slow_test, wait_for_file,
    wait_for_first_start, Cluster, Project, WORKER_KILLER,
};
use serde_json::json;

pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(120);
pub(crate) const CLEANUP_LIMIT: Duration = Duration::from_secs(15);

/// Project `name` of `files` [`slow_test`] files of `seconds` each, and the folder where
/// they record their runs.
pub(crate) fn suite(
    cluster: &Cluster,
    name: &str,
    files: usize,
    seconds: f64,
    job: serde_json::Value,
) -> (Project, std::path::PathBuf) {
    let project = cluster.project(name, job);
    let record = cluster.path().join(format!("record-{name}"));
    std::fs::create_dir_all(&record).unwrap();
    for i in 0..files {
        let file = format!("tests/{i:02}_test.sh");
        project.write(&file, &slow_test(&record, &file, seconds));
    }
    (project, record)
}

/// What dies mid-file in [`killed_mid_file_loses_nothing`]: the host keeps its other
/// parts, or (a whole listener) its files run on the survivor.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Worker,
    WorkerManager,
    WholeListener,
}

impl Victim {
    /// The process of the victim's host to wait for before the kill.
    fn process(self) -> &'static str {
        match self {
            Victim::Worker | Victim::WholeListener => "__work",
            Victim::WorkerManager => "__manage-workers",
        }
    }
}

/// A suite of `files` on listeners `hosts` (the first one the victim's) with `victim`
/// SIGKILLed once the first file has started: every file still runs to a result, and
/// nothing of the job is left.
fn killed_mid_file_loses_nothing(victim: Victim, hosts: &[&str], files: usize) {
    let mut cluster = Cluster::new();
    for host in hosts {
        cluster.start_listener(host, 2);
    }
    let (project, record) = suite(&cluster, &format!("{victim:?}"), files, 0.5, json!({}));
    cluster.wait_for_listeners(&project, hosts.len());
    let run = project.spawn_start(&[], &[]);
    let process = cluster.wait_for_process(hosts[0], victim.process(), Duration::from_secs(30));
    wait_for_first_start(&record);
    match victim {
        Victim::Worker | Victim::WorkerManager => sigkill(process),
        Victim::WholeListener => cluster.kill_listener(hosts[0]),
    }
    assert_all_passed(&run.wait(RUN_LIMIT), &record, files);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

#[test]
fn a_worker_killed_mid_file_loses_nothing() {
    killed_mid_file_loses_nothing(Victim::Worker, &["w"], 8);
}

#[test]
fn a_worker_manager_killed_mid_file_loses_nothing() {
    killed_mid_file_loses_nothing(Victim::WorkerManager, &["m1", "m2"], 10);
}

#[test]
fn a_whole_listener_killed_mid_file_loses_nothing() {
    killed_mid_file_loses_nothing(Victim::WholeListener, &["doomed", "survivor"], 10);
}

/// A listener's whole process tree frozen (SIGSTOP) mid-run, as a swap storm or a network
/// partition would: the broker drops its connections after two missed heartbeats
/// (`connection.heartbeat`, 3 s by default), its files run on the others, and the run ends
/// within 15 s of the freeze with every file's one result. Thawed, the host's late results
/// go nowhere, and it runs the next job normally.
#[test]
fn a_frozen_listener_s_files_run_elsewhere_within_seconds() {
    let cluster = Cluster::with_listeners(&[("frozen", 2), ("warm-a", 2), ("warm-b", 2)]);
    let (project, record) = suite(&cluster, "freeze", 30, 0.3, json!({}));
    cluster.wait_for_listeners(&project, 3);
    let run = project.spawn_start(&[], &[]);
    cluster.wait_for_process("frozen", "__work", Duration::from_secs(30));
    wait_for_first_start(&record);
    let frozen_at = std::time::Instant::now();
    let frozen = cluster.signal_listener("frozen", nix::sys::signal::Signal::SIGSTOP);
    assert!(
        frozen >= 3,
        "the listener, its manager and its workers: {frozen}"
    );
    let run = run.wait(RUN_LIMIT);
    let after_freeze = frozen_at.elapsed();
    cluster.signal_listener("frozen", nix::sys::signal::Signal::SIGCONT);
    assert_all_passed(&run, &record, 30);
    assert!(
        after_freeze < Duration::from_secs(15),
        "the run ended {after_freeze:?} after the freeze: {run:?}"
    );
    run.assert_stderr(&["listener frozen disappeared"]);
    // Thawed, the host reconnects and takes the next job like the others.
    cluster.assert_takes_a_next_job("frozen");
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

/// The originator killed with SIGKILL in the middle of files that print nothing: its reply
/// queue goes with its connection, the worker managers find it gone within 2 s, stop the
/// job's workers (with their grace) and remove the job's files queue and control exchange:
/// nothing of the job is left on the machine or the broker within seconds.
#[test]
fn an_originator_killed_mid_run_leaves_no_process_and_no_queue() {
    let cluster = Cluster::with_listeners(&[("orphaned", 2)]);
    let (project, record) = suite(&cluster, "orphan", 6, 30.0, json!({}));
    cluster.wait_for_listeners(&project, 1);
    let events = project.dir.join("events.ndjson");
    let run = project.spawn_start(&["--events", events.to_str().unwrap()], &[]);
    wait_for_first_start(&record);
    let job = job_id_from_events(&events).to_string();
    let killed_at = std::time::Instant::now();
    sigkill(run.pid());
    let _ = run.wait(RUN_LIMIT);
    cluster.assert_no_job_processes(Duration::from_secs(10));
    let gone_after = killed_at.elapsed();
    assert!(gone_after < Duration::from_secs(10), "{gone_after:?}");
    crate::support::assert_nothing_left_on_broker(&job, Duration::from_secs(10));
    // The listener takes the next job as usual.
    assert_next_job_runs(&cluster);
}

#[test]
fn a_test_that_kills_its_worker_every_time_is_reported_crashed() {
    let cluster = Cluster::with_listeners(&[("victim", 2)]);
    let (project, record) = suite(
        &cluster,
        "killer",
        6,
        0.1,
        json!({"job": {"max_crash_retries": 2}}),
    );
    project.write(
        "tests/zz_killer_test.sh",
        &format!("echo killer >> \"$(dirname \"$0\")/../killer-runs.log\"\n{WORKER_KILLER}"),
    );
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(
        1,
        &[
            "7 files: 6 passed, 0 failed, 1 crashed, 0 not run",
            "File 'tests/zz_killer_test.sh' crashed at",
            "its worker died 2 times",
        ],
    );
    assert_every_file_ran(&record, 6);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

#[test]
fn a_hanging_test_is_killed_at_the_file_timeout_and_the_run_goes_on() {
    let cluster = Cluster::with_listeners(&[("hang", 2)]);
    let (project, record) = suite(&cluster, "hang", 4, 0.1, json!({}));
    project.write(
        "tests/zz_hang_test.sh",
        "echo 'about to hang'\nsleep 3600\n",
    );
    let run = project.start(&["--file-timeout", "1.5"], RUN_LIMIT);
    run.assert_report(
        1,
        &[
            "File 'tests/zz_hang_test.sh' timed out at",
            "timed out after 1.5 s",
            "about to hang",
            "5 files: 4 passed",
        ],
    );
    assert!(run.seconds < 60.0, "{run:?}");
    assert_every_file_ran(&record, 4);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

/// After a cancelled run, the same listener runs the next job normally.
fn assert_next_job_runs(cluster: &Cluster) {
    let project = cluster.project("afterwards", json!({}));
    project.write("tests/ok_test.sh", "exit 0\n");
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(0, &["1 file: 1 passed"]);
}

#[test]
fn ctrl_c_during_the_push_stops_at_once() {
    let cluster = Cluster::with_listeners(&[("push", 1)]);
    let (project, _record) = suite(&cluster, "slow-push", 2, 0.1, json!({}));
    // An rsync that takes its time, ahead of the real one on PATH.
    let bin = cluster.path().join("slow-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = cluster.path().join("push.started");
    std::fs::write(
        bin.join("rsync"),
        format!("#!/bin/sh\ntouch '{}'\nsleep 600\n", marker.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("rsync"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = project.spawn_start(&[], &[("PATH", path)]);
    wait_for_file(&marker, Duration::from_secs(30));
    run.interrupt();
    let run = run.wait(Duration::from_secs(10));
    run.assert_exit(130);
    run.assert_stderr(&["interrupted while pushing"]);
    let sleepers = std::process::Command::new("pgrep")
        .args(["-f", &format!("{}", marker.display())])
        .output()
        .unwrap();
    assert!(sleepers.stdout.is_empty(), "the push is still running");
    assert_next_job_runs(&cluster);
}

#[test]
fn ctrl_c_right_after_the_push_still_cancels_the_run() {
    let cluster = Cluster::with_listeners(&[("after-push", 2)]);
    let (project, _record) = suite(&cluster, "after-push", 3, 600.0, json!({}));
    cluster.wait_for_listeners(&project, 1);
    // The real rsync pushes; a moment after it has exited, Ctrl-C reaches the originator,
    // between the push and the first reply (while it queues the files and publishes the job).
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v rsync"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_owned();
    let bin = cluster.path().join("interrupting-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("rsync"),
        format!(
            r#"#!/bin/sh
'{real}' "$@" || exit
# The originator is the nearest `gorgon` among this script's ancestors.
up=$PPID
while [ "$up" -gt 1 ] && [ "$(cat /proc/$up/comm)" != gorgon ]; do
    up=$(cut -d' ' -f4 /proc/$up/stat)
done
(sleep 0.05; kill -INT "$up") >/dev/null 2>&1 &
"#
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("rsync"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = project.spawn_start(&[], &[("PATH", path)]);
    let run = run.wait(Duration::from_secs(30));
    run.assert_report(130, &["3 not run"]);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    run.assert_stdout(&["Run stopped: interrupted"]);
    assert_next_job_runs(&cluster);
}

#[test]
fn ctrl_c_during_a_slow_after_sync_stops_the_listener_side_too() {
    let cluster = Cluster::with_listeners(&[("sync", 2)]);
    let marker = cluster.path().join("after_sync.started");
    let (project, record) = suite(
        &cluster,
        "slow-after-sync",
        3,
        0.1,
        json!({"job": {"callbacks": {"after_sync": format!("touch '{}'; sleep 600", marker.display())}}}),
    );
    let run = project.spawn_start(&[], &[]);
    wait_for_file(&marker, Duration::from_secs(30));
    run.interrupt();
    let run = run.wait(Duration::from_secs(15));
    run.assert_report(130, &["3 not run"]);
    assert!(recorded_runs(&record).is_empty());
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    eventually(CLEANUP_LIMIT, "the workspace to be removed", || {
        none_left(cluster.workspaces("sync"))
    });
    assert_next_job_runs(&cluster);
}

#[test]
fn ctrl_c_during_tests_stops_everything_in_seconds() {
    let cluster = Cluster::with_listeners(&[("busy", 2)]);
    let (project, record) = suite(&cluster, "interrupted", 6, 600.0, json!({}));
    interrupt_once_started(project.spawn_start(&[], &[]), &record, 6);
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    assert_next_job_runs(&cluster);
}

#[test]
fn ctrl_c_gives_a_running_persistent_runner_its_grace() {
    let cluster = Cluster::with_listeners(&[("grace", 1)]);
    let record = cluster.path().join("record-grace");
    std::fs::create_dir_all(&record).unwrap();
    let runner = json!({"kind": "persistent", "command": "sh runner.sh"});
    let project = cluster.project("grace", json!({"job": {"runner": runner}}));
    project.write("tests/00_test.sh", "exit 0");
    // A runner that never finishes its file, and takes half a second to exit on SIGTERM.
    let at = |name: &str| format!("'{}'", record.join(name).display());
    project.write(
        "runner.sh",
        &format!(
            r#"trap 'touch {term}; sleep 0.5; touch {graceful}; exit 0' TERM
echo '{{"type":"hello","protocol":1,"runner":"sh"}}'
read -r line
touch {started}
while :; do sleep 0.1; done"#,
            term = at("term"),
            graceful = at("graceful"),
            started = at("started"),
        ),
    );
    let run = project.spawn_start(&[], &[]);
    wait_for_file(&record.join("started"), Duration::from_secs(30));
    run.interrupt();
    let run = run.wait(Duration::from_secs(15));
    run.assert_exit(130);
    // The cancel went listener, manager, worker, runner, each with its grace: the runner
    // got SIGTERM and the time it took, not a SIGKILL first.
    assert!(
        record.join("term").exists(),
        "no SIGTERM reached the runner: {run:?}"
    );
    assert!(
        record.join("graceful").exists(),
        "the runner was killed within its grace: {run:?}"
    );
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
    assert_next_job_runs(&cluster);
}

#[test]
fn two_jobs_share_one_listener_which_still_answers_ping() {
    let cluster = Cluster::with_listeners(&[("shared", 2)]);
    let (left, left_record) = suite(&cluster, "left", 4, 1.0, json!({}));
    let (right, right_record) = suite(&cluster, "right", 4, 1.0, json!({}));
    cluster.wait_for_listeners(&left, 1);
    let left_run = left.spawn_start(&[], &[]);
    let right_run = right.spawn_start(&[], &[]);
    wait_for_first_start(&left_record);
    // Both jobs are on the listener now (the second waits for the slots the first holds,
    // `tests/e2e/slots.rs`); it still answers at once.
    let started = std::time::Instant::now();
    let ping = left.gorgon(&["ping", "--timeout", "1"]);
    assert!(String::from_utf8_lossy(&ping.stdout).contains("shared is running gorgon-rs"));
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for_first_start(&right_record);
    for (run, record) in [(left_run, left_record), (right_run, right_record)] {
        let run = run.wait(RUN_LIMIT);
        run.assert_report(0, &["4 files: 4 passed"]);
        assert_every_file_ran(&record, 4);
    }
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

#[test]
fn garbage_on_every_queue_is_dropped_and_nothing_crashes() {
    use gorgon_protocol::{names, Broker, BrokerSettings, Envelope, Message};
    let cluster = Cluster::with_listeners(&[("tough", 2)]);
    let (project, record) = suite(&cluster, "garbage", 8, 0.3, json!({}));
    // The last file holds the job open until the test has seen both batches refused: they
    // sit behind every real file in the queue, and a job that ended first would leave them
    // undelivered.
    let refused = cluster.path().join("garbage-refused");
    let last = "tests/07_test.sh";
    project.write(
        last,
        &format!(
            "for _ in $(seq 600); do [ -e '{flag}' ] && break; sleep 0.1; done\n{run}",
            flag = refused.display(),
            run = slow_test(&record, last, 0.1)
        ),
    );
    let events = cluster.path().join("garbage.events");
    let run = project.spawn_start(&["--events", &events.display().to_string()], &[]);
    wait_for_first_start(&record);
    let job_id = job_id_from_events(&events);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = BrokerSettings::for_tests();
        let broker = Broker::connect(&settings, "garbage test").await.unwrap();
        // Batches a manager must refuse, each with its reason in its log.
        let twice = vec!["tests/00_test.sh".to_owned(), "tests/00_test.sh".to_owned()];
        for files in [Vec::new(), twice] {
            let batch = Envelope::new(job_id, Message::Files { files }).encode();
            broker.publish_bytes("", &names::files_queue(job_id), &batch).await.unwrap();
        }
        let foreign = Envelope::new(uuid::Uuid::new_v4(), Message::file("tests/00_test.sh")).encode();
        let unknown = br#"{"protocol":1,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{"type":"brand_new"}}"#.to_vec();
        let future = br#"{"protocol":99,"job_id":"6f1c7a52-0b7e-4d3c-9a57-1f0c2f6c4e11","message":{}}"#.to_vec();
        let escaping = Envelope::new(job_id, Message::file("../../../etc/passwd")).encode();
        let huge = vec![b'{'; 17 * 1024 * 1024];
        let payloads = [b"not json at all".to_vec(), unknown, future, foreign, huge];
        let targets = [
            ("", names::files_queue(job_id)),
            ("", names::reply_queue(job_id)),
            (names::control_exchange(job_id).as_str(), String::new()),
            (names::jobs_exchange(&cluster.id).as_str(), String::new()),
            (names::announcements_exchange(&cluster.id).as_str(), String::new()),
        ]
        .map(|(exchange, key)| (exchange.to_owned(), key));
        for (exchange, key) in &targets {
            for payload in &payloads {
                broker.publish_bytes(exchange, key, payload).await.unwrap();
            }
        }
        broker.publish_bytes("", &names::files_queue(job_id), &escaping).await.unwrap();
        broker.close().await;
    });
    let both_refused = |log: &str| log.matches("refusing a batch of files").count() >= 2;
    eventually(
        RUN_LIMIT,
        "both batches refused in the listener's log",
        || both_refused(&cluster.listener_log("tough")),
    );
    std::fs::write(&refused, "").unwrap();
    let run = run.wait(RUN_LIMIT);
    // The stray file message that escapes the workspace is refused, not run; every real
    // file passes.
    run.assert_stdout(&["8 files: 8 passed, 0 failed, 0 crashed, 0 not run"]);
    run.assert_exit(0);
    assert_every_file_ran(&record, 8);
    let log = cluster.listener_log("tough");
    for reason in [
        "a batch of no files",
        "a batch that names tests/00_test.sh twice",
    ] {
        assert!(
            log.contains(&format!("refusing a batch of files: {reason}")),
            "{log}"
        );
    }
    // The listener is alive and well.
    let ping = project.gorgon(&["ping", "--timeout", "1"]);
    assert!(String::from_utf8_lossy(&ping.stdout).contains("tough is running gorgon-rs"));
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}

/// A worker killed while the runner it forked from the listener's warm runner runs a file:
/// the warm runner kills that runner when the worker's connection closes, the file runs
/// again and passes, and nothing of the job is left. The killer finds its worker by the
/// job's tags, since a forked runner's parent is the warm runner, not the worker.
#[test]
fn a_worker_killed_under_a_forked_runner_leaves_nothing_and_its_file_runs_again() {
    let cluster = Cluster::with_listeners(&[("forks", 2)]);
    let project = cluster.project(
        "forked-killer",
        json!({"files": ["spec/*_spec.rb"], "job": {"runner": {"kind": "rspec", "command": ""}}}),
    );
    project.write(
        "spec/warm_up_spec.rb",
        "RSpec.describe('warm-up') { it('passes') { expect(1).to eq(1) } }\n",
    );
    let first = project.start(&[], RUN_LIMIT);
    first.assert_exit(0);
    cluster.wait_for_warm_runner("forks", "gorgon_warm.rb", Duration::from_secs(30));

    let marker = cluster.path().join("killed-once");
    project.write(
        "spec/support/kill_my_worker.sh",
        &format!(
            "[ -e {marker:?} ] && exit 0\n\
             touch {marker:?}\n\
             for p in /proc/[0-9]*; do\n\
               env=$(tr '\\0' '\\n' < $p/environ 2>/dev/null) || continue\n\
               if tr '\\0' ' ' < $p/cmdline | grep -q __work \\\n\
                  && echo \"$env\" | grep -qx \"GORGON_JOB_ID=$GORGON_JOB_ID\" \\\n\
                  && echo \"$env\" | grep -qx \"GORGON_WORKER_ID=$GORGON_WORKER_ID\"; then\n\
                 kill -9 ${{p#/proc/}}; sleep 5\n\
               fi\n\
             done\n\
             echo 'no worker found'; exit 3\n",
            marker = marker.display().to_string()
        ),
    );
    // The killer records who started its runner: the warm runner, two levels up.
    let ancestry = cluster.path().join("killer-ancestry");
    project.write(
        "spec/killer_spec.rb",
        &format!(
            "RSpec.describe('killer') do\n\
             \x20 it('kills its worker once') do\n\
             \x20   up = File.read(\"/proc/#{{Process.ppid}}/stat\").rpartition(') ').last.split[1]\n\
             \x20   File.write({ancestry:?}, File.read(\"/proc/#{{up}}/cmdline\"))\n\
             \x20   expect(system('sh', 'spec/support/kill_my_worker.sh')).to be(true)\n\
             \x20 end\n\
             end\n",
            ancestry = ancestry.display().to_string()
        ),
    );
    for i in 1..=4 {
        project.write(
            &format!("spec/quick_{i}_spec.rb"),
            &format!(
                "RSpec.describe('quick {i}') {{ it('passes') {{ expect({i}).to eq({i}) }} }}\n"
            ),
        );
    }
    let run = project.start(&[], RUN_LIMIT);
    assert!(marker.exists(), "the killer never ran: {run:?}");
    run.assert_report(0, &["6 files: 6 passed, 0 failed, 0 crashed, 0 not run"]);
    let started_by = std::fs::read_to_string(&ancestry).unwrap();
    assert!(started_by.contains("gorgon_warm.rb"), "{started_by}");
    cluster.assert_no_job_processes(CLEANUP_LIMIT);
}
