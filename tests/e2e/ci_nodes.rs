//! CI builds: `gorgon work --build-id` on several copies of a project (each its own
//! checkout, no file server, no sync) and `gorgon report --build-id`, on the real broker.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, processes_working_in, sigkill, Cluster, Project, Started};

pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// A test file that records `NAME HOST` in `runs.log` when it starts, then takes `seconds`
/// and passes (or fails, naming itself).
fn test_file(record: &Path, name: &str, seconds: f64, fail: bool) -> String {
    let end = if fail {
        format!("echo \"assertion failed in {name}\"; exit 1")
    } else {
        "exit 0".to_owned()
    };
    format!(
        "echo \"{name} $GORGON_HOST\" >> '{}'\nsleep {seconds}\n{end}\n",
        record.join("runs.log").display()
    )
}

/// (file, host) of every recorded start.
pub(crate) fn runs(record: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(record.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(file, host)| (file.to_owned(), host.to_owned()))
        .collect()
}

/// A project of `files` test files (`tests/NN_test.sh`, those in `failing` fail) and
/// `copies` copies of it, each a checkout of its own.
pub(crate) fn checkouts(
    cluster: &Cluster,
    name: &str,
    files: usize,
    seconds: f64,
    failing: &[usize],
    copies: usize,
) -> Vec<Project> {
    let record = cluster.path().join(format!("{name}-record"));
    std::fs::create_dir_all(&record).unwrap();
    let project = cluster.project(name, json!({"job": {"listener_wait": 10}}));
    for i in 0..files {
        let file = format!("tests/{i:02}_test.sh");
        project.write(
            &file,
            &test_file(&record, &file, seconds, failing.contains(&i)),
        );
    }
    let mut all = vec![project];
    for copy in 1..copies {
        let dir = cluster
            .path()
            .join("projects")
            .join(format!("{name}-{copy}"));
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(&all[0].dir)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(copied.success());
        all.push(Project { dir });
    }
    all
}

pub(crate) fn record_of(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster.path().join(format!("{name}-record"))
}

fn node(project: &Project, build: &str, name: &str) -> Started {
    node_with(project, build, name, &[])
}

/// `gorgon work` of build `build` in `project` as node `name` with 2 workers, with extra
/// environment.
pub(crate) fn node_with(
    project: &Project,
    build: &str,
    name: &str,
    env: &[(&str, String)],
) -> Started {
    project.spawn_gorgon(
        "work",
        &["--build-id", build, "--worker-id", name, "-j", "2"],
        env,
    )
}

/// SIGKILLs a node and everything working in its checkout (its manager, its workers, the
/// test): the whole machine's share of the build dies at once.
fn kill_node(node: Started, checkout: &Project) {
    sigkill(node.pid());
    for process in processes_working_in(&checkout.dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = node.wait(LIMIT);
}

/// Three nodes started at once and a reporter: the files queue is filled once, every file
/// runs exactly once across the nodes, the report names the failures, exit 1.
#[test]
fn three_nodes_share_one_build_and_the_reporter_reports_it() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-three", 18, 0.2, &[4, 11], 3);
    let build = format!("three-{}", uuid::Uuid::new_v4());
    let report = projects[0].spawn_gorgon(
        "report",
        &["--build-id", &build, "--junit", "junit.xml"],
        &[],
    );
    let nodes: Vec<Started> = projects
        .iter()
        .enumerate()
        .map(|(i, project)| node(project, &build, &format!("node-{i}")))
        .collect();
    let nodes: Vec<_> = nodes.into_iter().map(|node| node.wait(LIMIT)).collect();
    let report = report.wait(LIMIT);
    for node in &nodes {
        node.assert_exit(0);
    }
    let fillers = nodes
        .iter()
        .filter(|n| n.stderr.contains("(it queued them)"))
        .count();
    assert_eq!(fillers, 1, "{nodes:?}");
    report.assert_report(
        1,
        &[
            "18 files: 16 passed, 2 failed, 0 crashed, 0 not run",
            "File 'tests/04_test.sh' failed",
            "assertion failed in tests/11_test.sh",
        ],
    );
    let mut ran: Vec<String> = runs(&record_of(&cluster, "ci-three"))
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    ran.sort();
    let expected: Vec<String> = (0..18).map(|i| format!("tests/{i:02}_test.sh")).collect();
    assert_eq!(ran, expected, "every file exactly once");
    let hosts: std::collections::BTreeSet<String> = runs(&record_of(&cluster, "ci-three"))
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert!(
        hosts.len() >= 2,
        "the files spread over the nodes: {hosts:?}"
    );
    let junit = projects[0].read("junit.xml");
    assert!(
        junit.contains("tests/04_test.sh") && junit.contains("<failure"),
        "{junit}"
    );
}

/// A node that joins after half the files finished takes part; a node SIGKILLed (with its
/// manager and workers) in the middle of a file has that file run by another node.
#[test]
fn a_late_node_takes_part_and_a_killed_nodes_file_runs_elsewhere() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-late", 12, 0.6, &[], 3);
    let record = record_of(&cluster, "ci-late");
    let build = format!("late-{}", uuid::Uuid::new_v4());
    let report = projects[0].spawn_gorgon("report", &["--build-id", &build], &[]);
    let first = projects[0].spawn_gorgon(
        "work",
        &["--build-id", &build, "--worker-id", "first", "-j", "1"],
        &[],
    );
    // One worker: once the seventh file starts, six have finished.
    eventually(LIMIT, "half the files finished on the first node", || {
        runs(&record).len() >= 7
    });
    let late = projects[1].spawn_gorgon(
        "work",
        &["--build-id", &build, "--worker-id", "late", "-j", "1"],
        &[],
    );
    let doomed = projects[2].spawn_gorgon(
        "work",
        &["--build-id", &build, "--worker-id", "doomed", "-j", "1"],
        &[],
    );
    eventually(LIMIT, "a file started on the doomed node", || {
        runs(&record).iter().any(|(_, host)| host == "doomed")
    });
    let (killed_file, _) = runs(&record)
        .into_iter()
        .find(|(_, host)| host == "doomed")
        .unwrap();
    kill_node(doomed, &projects[2]);
    let first = first.wait(LIMIT);
    let late = late.wait(LIMIT);
    let report = report.wait(LIMIT);
    first.assert_exit(0);
    late.assert_exit(0);
    report.assert_report(0, &["12 files: 12 passed, 0 failed, 0 crashed, 0 not run"]);
    let ran = runs(&record);
    assert!(
        ran.iter().any(|(_, host)| host == "late"),
        "the late node took part: {ran:?}"
    );
    let again: Vec<&String> = ran
        .iter()
        .filter(|(file, host)| *file == killed_file && host != "doomed")
        .map(|(_, host)| host)
        .collect();
    assert!(
        !again.is_empty(),
        "{killed_file} ran again elsewhere: {ran:?}"
    );
}

/// A checkout that differs refuses to take part, naming the difference, and the build
/// completes on the others; a reporter that starts after the nodes finished prints the full
/// report; under GitHub Actions' variables no --build-id is needed.
#[test]
fn a_differing_checkout_refuses_and_a_late_reporter_reports_a_github_build() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-github", 8, 0.1, &[5], 2);
    let run_id = format!(
        "{}",
        std::process::id() as u64 * 1000 + u64::from(uuid::Uuid::new_v4().as_fields().1)
    );
    let github = [
        ("GITHUB_RUN_ID", run_id.clone()),
        ("GITHUB_RUN_ATTEMPT", "3".to_owned()),
    ];
    projects[1].write("tests/02_test.sh", "echo this checkout has other code\n");
    let good = projects[0].spawn_gorgon("work", &["-j", "2", "--worker-id", "good"], &github);
    good.wait_for_stderr("(it queued them)", LIMIT);
    let other = projects[1]
        .spawn_gorgon("work", &["-j", "2", "--worker-id", "other"], &github)
        .wait(LIMIT);
    other.assert_exit(3);
    other.assert_stderr(&[
        "this checkout differs from the one build github-",
        "tests/02_test.sh differs",
    ]);
    let good = good.wait(LIMIT);
    good.assert_exit(0);
    good.assert_stderr(&[&format!("Build github-{run_id}-3: 8 files")]);
    let ran = runs(&record_of(&cluster, "ci-github"));
    assert!(ran.iter().all(|(_, host)| host == "good"), "{ran:?}");
    // The nodes are done; the report comes after them and has everything. Its checkout's
    // config names no reachable broker: GORGON_BROKER_URL (a CI secret) does.
    let config_path = projects[1].dir.join("gorgon.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["connection"]["port"] = json!(1);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let url = format!(
        "amqp://guest:guest@{}:{}/",
        crate::support::broker_host(),
        crate::support::broker_port()
    );
    let mut with_url = github.to_vec();
    with_url.push(("GORGON_BROKER_URL", url));
    let report = projects[1]
        .spawn_gorgon("report", &["--events-to", "events.ndjson"], &with_url)
        .wait(LIMIT);
    report.assert_report(
        1,
        &[
            "8 files: 7 passed, 1 failed, 0 crashed, 0 not run",
            "assertion failed in tests/05_test.sh",
        ],
    );
    let events = projects[1].read("events.ndjson");
    assert_eq!(
        events.matches("\"event\":\"file_finished\"").count(),
        8,
        "{events}"
    );
    // Reported once: the build is over, for a node or a reporter that comes later.
    let again = projects[0].spawn_gorgon("report", &[], &github).wait(LIMIT);
    again.assert_exit(1);
    again.assert_stderr(&["was reported already"]);
    let late = projects[0].spawn_gorgon("work", &[], &github).wait(LIMIT);
    late.assert_report(0, &["is over"]);
}

/// Every node of a build dies (SIGKILL, with its manager and workers): the reporter waits
/// `job.listener_wait` (10 s here) with no node consuming the files queue, then lists the
/// files that have no result and exits 1.
#[test]
fn a_build_whose_nodes_all_died_ends_with_the_unrun_files_listed() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-dead", 6, 2.0, &[], 1);
    let record = record_of(&cluster, "ci-dead");
    let build = format!("dead-{}", uuid::Uuid::new_v4());
    let only = projects[0].spawn_gorgon(
        "work",
        &["--build-id", &build, "--worker-id", "only", "-j", "1"],
        &[],
    );
    eventually(LIMIT, "a file started", || !runs(&record).is_empty());
    kill_node(only, &projects[0]);
    // The reporter gives up after `job.listener_wait`, well within this bound.
    let report = projects[0]
        .spawn_gorgon("report", &["--build-id", &build], &[])
        .wait(Duration::from_secs(30));
    report.assert_report(
        1,
        &["no node has worked on build", "Unfinished files (6 files"],
    );
}

/// `gorgon work --report` on the only node: it runs its part, waits for the build, and
/// reports it with the build's exit code and JUnit, as `gorgon report` would.
#[test]
fn a_node_that_reports_exits_with_the_builds_verdict() {
    let cluster = Cluster::new();
    let projects = checkouts(&cluster, "ci-self", 5, 0.1, &[2], 1);
    let build = format!("self-{}", uuid::Uuid::new_v4());
    let run = projects[0]
        .spawn_gorgon(
            "work",
            &[
                "--build-id",
                &build,
                "-j",
                "2",
                "--report",
                "--junit",
                "junit.xml",
            ],
            &[],
        )
        .wait(LIMIT);
    run.assert_report(
        1,
        &[
            "5 files: 4 passed, 1 failed, 0 crashed, 0 not run",
            "File 'tests/02_test.sh' failed",
        ],
    );
    assert!(projects[0].read("junit.xml").contains("tests/02_test.sh"));
    // Reported: a second report finds the build over.
    let again = projects[0]
        .spawn_gorgon("report", &["--build-id", &build], &[])
        .wait(LIMIT);
    again.assert_exit(1);
    again.assert_stderr(&["was reported already"]);
}

/// The node that was to queue a retry is lost as it does so (played here by this test: a
/// "node" that publishes a failure to the build's log, keeps consuming the files queue, and
/// never queues the retry): nothing is queued or running while a file waits only for its
/// retry, and after `job.listener_wait` the reporter ends the build, exit 1, the file listed.
#[test]
fn a_retry_that_no_node_queued_ends_the_build_instead_of_hanging() {
    use gorgon_protocol::{
        names, Broker, BrokerSettings, Envelope, FileResult, FileStatus, Message,
    };
    let cluster = Cluster::new();
    let project = cluster.project(
        "ci-ghost",
        json!({"job": {"listener_wait": 5, "retries": 1}}),
    );
    project.write("tests/a_test.sh", "exit 1\n");
    let build = format!("ghost-{}", uuid::Uuid::new_v4());
    let report = project.spawn_gorgon("report", &["--build-id", &build], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut broker = Broker::connect(&BrokerSettings::for_tests(), "ghost node")
            .await
            .unwrap();
        let job = names::build_job_id(&cluster.id, &build);
        let log = names::build_log(job);
        broker
            .declare_stream(&log, gorgon_originator::ci::LOG_MAX_AGE)
            .await
            .unwrap();
        let files = names::files_queue(job);
        let life = gorgon_protocol::broker::QueueLife::Shared {
            unused_expiry: Duration::from_secs(600),
        };
        broker.declare_queue(&files, life).await.unwrap();
        let _consumer = broker.consume(&files, Some(1)).await.unwrap();
        let file = "tests/a_test.sh".to_owned();
        let messages = [
            Message::BuildDefined {
                build_id: build.clone(),
                host: "ghost".into(),
                units: vec![file.clone()],
                digests: Default::default(),
                queued_at: 0.0,
            },
            Message::JobAccepted {
                host: "ghost".into(),
                slots: 1,
                listener_queue: None,
            },
            Message::FileStarted {
                host: "ghost".into(),
                worker_id: 1,
                file: file.clone(),
            },
            Message::FileFinished(FileResult {
                host: "ghost".into(),
                worker_id: 1,
                file: file.clone(),
                status: FileStatus::Failed,
                seconds: 0.1,
                exit: "exit status 1".into(),
                output: String::new(),
                tests: Vec::new(),
                impact: None,
            }),
        ];
        for message in messages {
            broker
                .send_to_queue(&log, &Envelope::new(job, message))
                .await
                .unwrap();
        }
        let report = tokio::task::spawn_blocking(move || report.wait(LIMIT))
            .await
            .unwrap();
        report.assert_exit(1);
        assert!(
            report.stdout.contains("no file of build")
                && report.stdout.contains("was queued or running"),
            "{report:?}"
        );
        report.assert_stdout(&["\ttests/a_test.sh"]);
        broker.close().await;
    });
}
