//! A worker manager (`gorgon __manage-workers`, with its pool of real worker processes)
//! against the real RabbitMQ, with this test playing the listener (it holds the manager's
//! stdin) and the originator: it queues files, collects the results, and ends the job by
//! deleting the files queue.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::eventually_async;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    names, Broker, BrokerSettings, Callbacks, Envelope, FileResult, FileStatus, Inbox,
    JobDefinition, Message, RunnerKind, RunnerSettings, WorkerAssignment,
};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A running worker manager; dropping `stdin` is its listener's death.
struct Manager {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Manager {
    /// Starts `gorgon __manage-workers` with `assignment` on its stdin, then the line a host
    /// writes once the job's tree is ready.
    async fn start(assignment: &WorkerAssignment) -> Manager {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gorgon"))
            .arg("__manage-workers")
            .current_dir(&assignment.workspace)
            .env("GORGON_JOB_ID", assignment.job_id.to_string())
            .env("GORGON_HOST", &assignment.host)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(&assignment.encode_line(None))
            .await
            .unwrap();
        let start = format!("{}\n", gorgon_protocol::manager_report::START_REQUEST);
        stdin.write_all(start.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        Manager {
            child,
            stdin: Some(stdin),
        }
    }

    /// Waits for the manager to exit by itself; its exit code.
    async fn wait(mut self) -> i32 {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the manager ends in time")
            .unwrap();
        status.code().unwrap_or(-1)
    }
}

struct Originator {
    broker: Broker,
    job: Uuid,
    replies: Inbox,
    /// Replies of a message that carried several, not yet looked at.
    unread: std::collections::VecDeque<Message>,
}

impl Originator {
    async fn start(files: &[&str]) -> Originator {
        let broker = Broker::connect(&BrokerSettings::for_tests(), "gorgon-worker test")
            .await
            .expect("RabbitMQ runs on 127.0.0.1:5672");
        let job = Uuid::new_v4();
        let reply_queue = names::reply_queue(job);
        broker
            .declare_queue(&reply_queue, QueueLife::Exclusive)
            .await
            .unwrap();
        let files_queue = names::files_queue(job);
        broker
            .declare_queue(
                &files_queue,
                QueueLife::Shared {
                    unused_expiry: Duration::from_secs(60),
                },
            )
            .await
            .unwrap();
        let messages = files
            .iter()
            .map(|file| Envelope::new(job, Message::file(*file)));
        broker
            .send_all_to_queue(&files_queue, messages)
            .await
            .unwrap();
        broker
            .declare_fanout(&names::control_exchange(job))
            .await
            .unwrap();
        let replies = broker.consume(&reply_queue, None).await.unwrap();
        Originator {
            broker,
            job,
            replies,
            unread: Default::default(),
        }
    }

    fn assignment(&self, workspace: &Path, callbacks: Callbacks) -> WorkerAssignment {
        WorkerAssignment {
            job_id: self.job,
            definition: JobDefinition::with_command("unused/", "sh {file}", callbacks),
            reply_to: names::reply_queue(self.job),
            broker: BrokerSettings::for_tests(),
            host: "h1".into(),
            workspace: workspace.to_owned(),
            slots: 1,
            worker_id: None,
            warm_runner: None,
            ruby_preload: None,
        }
    }

    /// The next reply, one at a time also where the manager sent several together.
    async fn next_reply(&mut self) -> Message {
        if let Some(reply) = self.unread.pop_front() {
            return reply;
        }
        let incoming = tokio::time::timeout(WAIT, self.replies.next())
            .await
            .expect("a reply in time")
            .expect("the reply queue is open");
        incoming.ack().await.unwrap();
        let envelope = incoming.envelope.unwrap();
        assert_eq!(envelope.job_id, self.job);
        self.unread.extend(envelope.message.into_replies());
        self.unread.pop_front().expect("a message carries a reply")
    }

    /// Closes the manager's stdin, as its listener's death would, and checks that it stops
    /// at once and cleanly.
    async fn stop_manager(mut manager: Manager) {
        drop(manager.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), manager.child.wait())
            .await
            .expect("the manager stops at once")
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }

    /// Takes `count` files back from the files queue, each delivered again after a worker
    /// handed it back, and returns them sorted; then ends the job.
    async fn handed_back(self, count: usize) -> Vec<String> {
        let queue = names::files_queue(self.job);
        let mut files = self
            .broker
            .consume(&queue, Some(count as u16))
            .await
            .unwrap();
        let mut back = Vec::new();
        for _ in 0..count {
            let again = tokio::time::timeout(WAIT, files.next())
                .await
                .expect("the file is back in the queue")
                .unwrap();
            assert!(again.redelivered);
            match &again.envelope.as_ref().unwrap().message {
                Message::File { file, .. } => back.push(file.clone()),
                other => panic!("unexpected message {other:?}"),
            }
            again.ack().await.unwrap();
        }
        back.sort();
        self.broker.delete_queue(&queue).await.unwrap();
        let _ = self
            .broker
            .delete_exchange(&names::control_exchange(self.job))
            .await;
        self.broker.close().await;
        back
    }

    async fn next_result(&mut self) -> FileResult {
        loop {
            match self.next_reply().await {
                Message::FileFinished(result) => return result,
                Message::FileStarted { .. } => {}
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn runs_every_file_reports_it_and_ends_with_the_queue() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir(workspace.path().join("t")).unwrap();
    std::fs::write(
        workspace.path().join("t/pass.sh"),
        "echo worker $GORGON_WORKER_ID of $GORGON_HOST",
    )
    .unwrap();
    std::fs::write(workspace.path().join("t/fail.sh"), "echo nope; exit 4").unwrap();
    let mut originator = Originator::start(&["t/pass.sh", "t/fail.sh", "../escape.sh"]).await;
    let callbacks = Callbacks {
        before_start: Some("touch started.$GORGON_WORKER_ID".into()),
        after_complete: Some("touch completed.$GORGON_WORKER_ID".into()),
        ..Callbacks::default()
    };
    let assignment = originator.assignment(workspace.path(), callbacks);
    let manager = Manager::start(&assignment).await;

    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(originator.next_result().await);
    }
    results.sort_by(|a, b| a.file.cmp(&b.file));
    assert_eq!(results[0].file, "../escape.sh");
    assert_eq!(results[0].status, FileStatus::Crashed);
    assert_eq!(results[0].exit, "refused");
    assert!(results[0].output.contains("escapes the workspace"));
    assert_eq!(results[1].file, "t/fail.sh");
    assert_eq!(results[1].status, FileStatus::Failed);
    assert_eq!(results[1].exit, "exit status 4");
    assert_eq!(results[1].output, "nope\n");
    assert_eq!(results[2].file, "t/pass.sh");
    assert_eq!(results[2].status, FileStatus::Passed);
    assert_eq!(results[2].output, "worker 1 of h1\n");
    assert!(results.iter().all(|r| r.host == "h1" && r.worker_id == 1));
    assert!(workspace.path().join("started.1").exists());
    assert!(!workspace.path().join("completed.1").exists());

    // Every file has a result: the originator deletes the files queue, which ends the
    // workers (each runs after_complete) and then the manager.
    originator
        .broker
        .delete_queue(&names::files_queue(originator.job))
        .await
        .unwrap();
    assert_eq!(manager.wait().await, 0);
    assert!(workspace.path().join("completed.1").exists());
    originator.broker.close().await;
}

#[tokio::test]
async fn a_host_starts_no_more_workers_than_it_has_files() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("a.sh"), "sleep 0.2").unwrap();
    std::fs::write(workspace.path().join("b.sh"), "sleep 0.2").unwrap();
    let mut originator = Originator::start(&["a.sh", "b.sh"]).await;
    let callbacks = Callbacks {
        before_start: Some("touch started.$GORGON_WORKER_ID".into()),
        ..Callbacks::default()
    };
    let mut assignment = originator.assignment(workspace.path(), callbacks);
    assignment.slots = 4;
    let manager = Manager::start(&assignment).await;
    let mut files = vec![
        originator.next_result().await.file,
        originator.next_result().await.file,
    ];
    files.sort();
    assert_eq!(files, ["a.sh", "b.sh"]);
    originator.end_job(manager).await;
    // Two files: one or two workers (a worker idle again may take the second file), never
    // the four the host has slots for.
    assert!(workspace.path().join("started.1").exists());
    for idle_slot in [3, 4] {
        let started = workspace.path().join(format!("started.{idle_slot}"));
        assert!(!started.exists(), "worker {idle_slot} started for no file");
    }
}

/// A persistent runner (sh) that records what happens to it in the workspace: `started`
/// when it gets a file (which it never finishes), `term` when SIGTERM arrives, and
/// `graceful` once it has taken its time (0.5 s) to exit after it.
const STOPPABLE_RUNNER: &str = r#"trap 'touch term; sleep 0.5; touch graceful; exit 0' TERM
echo '{"type":"hello","protocol":1,"runner":"sh"}'
read -r line
touch started
while :; do sleep 0.1; done"#;

#[tokio::test]
async fn sigterm_stops_a_running_persistent_runner_with_its_grace_and_no_crash() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("runner.sh"), STOPPABLE_RUNNER).unwrap();
    let mut originator = Originator::start(&["slow_test.sh"]).await;
    let callbacks = Callbacks {
        after_creating_workers: Some("touch after".into()),
        ..Callbacks::default()
    };
    let mut assignment = originator.assignment(workspace.path(), callbacks);
    assignment.definition.runner = RunnerSettings {
        kind: RunnerKind::Persistent,
        command: "sh runner.sh".into(),
        ..RunnerSettings::default()
    };
    let manager = Manager::start(&assignment).await;
    match originator.next_reply().await {
        Message::FileStarted { file, .. } => assert_eq!(file, "slow_test.sh"),
        other => panic!("unexpected reply {other:?}"),
    }
    wait_for(&workspace.path().join("started")).await;

    // A cancel, as the listener passes it on: SIGTERM to the manager.
    let pid = nix::unistd::Pid::from_raw(manager.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(manager.wait().await, 0);
    // The runner got SIGTERM and the time it took to exit, not a SIGKILL first.
    assert!(
        workspace.path().join("term").exists(),
        "no SIGTERM reached the runner"
    );
    assert!(
        workspace.path().join("graceful").exists(),
        "the runner was killed within its grace"
    );
    // A cancelled job runs no after_creating_workers, and its file goes back to the queue
    // with no crash reported (the reply queue holds a marker of ours next).
    assert!(!workspace.path().join("after").exists());
    let marker = Message::JobDone {
        host: "marker".into(),
    };
    originator
        .broker
        .send_to_queue(
            &names::reply_queue(originator.job),
            &Envelope::new(originator.job, marker.clone()),
        )
        .await
        .unwrap();
    assert_eq!(originator.next_reply().await, marker);
    assert_eq!(originator.handed_back(1).await, ["slow_test.sh"]);
}

/// Waits until `path` exists, failing the test after [`WAIT`].
async fn wait_for(path: &Path) {
    let what = format!("{} to appear", path.display());
    eventually_async(WAIT, what, || path.exists()).await;
}

#[tokio::test]
async fn the_end_of_stdin_stops_the_file_and_requeues_it() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("slow.sh"), "sleep 30").unwrap();
    let mut originator = Originator::start(&["slow.sh"]).await;
    let callbacks = Callbacks {
        after_complete: Some("touch completed".into()),
        ..Callbacks::default()
    };
    let assignment = originator.assignment(workspace.path(), callbacks);
    let manager = Manager::start(&assignment).await;
    match originator.next_reply().await {
        Message::FileStarted {
            file, worker_id, ..
        } => {
            assert_eq!(file, "slow.sh");
            assert_eq!(worker_id, 1);
        }
        other => panic!("unexpected reply {other:?}"),
    }
    Originator::stop_manager(manager).await;
    assert!(!workspace.path().join("completed").exists());

    // The file went back to the queue for another worker.
    assert_eq!(originator.handed_back(1).await, ["slow.sh"]);
}

#[tokio::test]
async fn a_job_whose_files_all_have_results_starts_no_worker() {
    let workspace = tempfile::tempdir().unwrap();
    let originator = Originator::start(&[]).await;
    originator
        .broker
        .delete_queue(&names::files_queue(originator.job))
        .await
        .unwrap();
    let callbacks = Callbacks {
        before_start: Some("touch started".into()),
        after_creating_workers: Some("touch after".into()),
        ..Callbacks::default()
    };
    let assignment = originator.assignment(workspace.path(), callbacks);
    assert_eq!(Manager::start(&assignment).await.wait().await, 0);
    assert!(!workspace.path().join("started").exists());
    assert!(workspace.path().join("after").exists());
    originator.broker.close().await;
}

/// A hand-written persistent runner that takes batches: it logs each request, passes every
/// file, dies (as a segfault would) whenever it is asked to run `t/die`, and hangs on a
/// request holding a `t/hang…` file.
const BATCHING_RUNNER: &str = r#"
import json, os, sys, time
out = sys.stdout
out.write(json.dumps({"type": "hello", "protocol": 1, "batches": True}) + "\n")
out.flush()
for line in sys.stdin:
    request = json.loads(line)
    files = request.get("files") or [request["file"]]
    with open("requests.log", "a") as log:
        log.write(" ".join(files) + "\n")
    if "t/die" in files:
        os._exit(9)
    if any(file.startswith("t/hang") for file in files):
        time.sleep(30)
    for file in files:
        test = {"name": file + " works", "status": "passed", "seconds": 0.001}
        out.write(json.dumps({"type": "file_done", "file": file, "outcome": "completed",
                              "tests": [test]}) + "\n")
    out.flush()
"#;

impl Originator {
    /// Starts a manager of one worker whose runner is [`BATCHING_RUNNER`], in `workspace`.
    async fn start_batching_manager(&self, workspace: &Path, batch_seconds: f64) -> Manager {
        std::fs::write(workspace.join("runner.py"), BATCHING_RUNNER).unwrap();
        let mut assignment = self.assignment(workspace, Callbacks::default());
        assignment.definition.runner = RunnerSettings {
            kind: RunnerKind::Persistent,
            command: "exec python3 runner.py".into(),
            batch_seconds: Some(batch_seconds),
            ..RunnerSettings::default()
        };
        Manager::start(&assignment).await
    }

    /// Ends the job as a real originator does once every file has a result (it deletes the
    /// files queue), and checks that the manager then ends cleanly.
    async fn end_job(self, manager: Manager) {
        self.broker
            .delete_queue(&names::files_queue(self.job))
            .await
            .unwrap();
        assert_eq!(manager.wait().await, 0);
        let _ = self
            .broker
            .delete_exchange(&names::control_exchange(self.job))
            .await;
        self.broker.close().await;
    }
}

#[tokio::test]
async fn quick_files_run_in_batches_and_a_batch_that_dies_runs_again_file_by_file() {
    let workspace = tempfile::tempdir().unwrap();
    let mut files: Vec<String> = (1..=11).map(|i| format!("t/ok_{i:02}")).collect();
    files.insert(1, "t/die".into());
    let queued: Vec<&str> = files.iter().map(String::as_str).collect();
    let mut originator = Originator::start(&queued).await;
    // A generous batch limit, so that a loaded machine cannot make the files look slow.
    let manager = originator
        .start_batching_manager(workspace.path(), 10.0)
        .await;

    let mut results = Vec::new();
    for _ in 0..files.len() {
        results.push(originator.next_result().await);
    }
    results.sort_by(|a, b| a.file.cmp(&b.file));
    let (died, passed): (Vec<_>, Vec<_>) = results.iter().partition(|r| r.file == "t/die");
    assert_eq!(died.len(), 1);
    assert_eq!(died[0].status, FileStatus::Crashed, "{died:?}");
    assert!(died[0].exit.contains("the runner ended"), "{died:?}");
    assert_eq!(passed.len(), 11);
    for result in passed {
        assert_eq!(result.status, FileStatus::Passed, "{result:?}");
        assert_eq!(result.tests.len(), 1, "{result:?}");
        assert_eq!(result.tests[0].name, format!("{} works", result.file));
    }

    // The first file ran alone (nothing was known of its time), then the rest went as one
    // batch, which died on t/die and ran again file by file; t/die killed the runner once
    // more on its own.
    let log = std::fs::read_to_string(workspace.path().join("requests.log")).unwrap();
    let requests: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(requests[0], ["t/ok_01"], "{log}");
    assert!(
        requests[1].len() > 1 && requests[1].contains(&"t/die"),
        "the second request is a batch holding t/die: {log}"
    );
    assert!(requests[2..].iter().all(|r| r.len() == 1), "{log}");
    let alone: Vec<&str> = requests[2..].iter().map(|r| r[0]).collect();
    for file in &requests[1] {
        assert!(alone.contains(file), "{file} ran again alone: {log}");
    }

    originator.end_job(manager).await;
}

#[tokio::test]
async fn batch_seconds_0_keeps_every_file_in_a_run_of_its_own() {
    let workspace = tempfile::tempdir().unwrap();
    let files: Vec<String> = (1..=6).map(|i| format!("t/ok_{i:02}")).collect();
    let queued: Vec<&str> = files.iter().map(String::as_str).collect();
    let mut originator = Originator::start(&queued).await;
    let manager = originator
        .start_batching_manager(workspace.path(), 0.0)
        .await;

    for _ in 0..files.len() {
        let result = originator.next_result().await;
        assert_eq!(result.status, FileStatus::Passed, "{result:?}");
    }
    let log = std::fs::read_to_string(workspace.path().join("requests.log")).unwrap();
    let requests: Vec<&str> = log.lines().collect();
    assert_eq!(
        requests, queued,
        "one request per file, in queue order: {log}"
    );

    originator.end_job(manager).await;
}

#[tokio::test]
async fn a_manager_stopped_during_a_batch_hands_every_file_of_it_back() {
    let workspace = tempfile::tempdir().unwrap();
    let queued = ["t/ok", "t/hang_1", "t/hang_2", "t/hang_3"];
    let mut originator = Originator::start(&queued).await;
    let manager = originator
        .start_batching_manager(workspace.path(), 10.0)
        .await;

    // t/ok runs alone and passes; then the three others start together, as one batch.
    assert_eq!(originator.next_result().await.file, "t/ok");
    let mut started = Vec::new();
    while started.len() < 3 {
        match originator.next_reply().await {
            Message::FileStarted { file, .. } => started.push(file),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    started.sort();
    assert_eq!(started, ["t/hang_1", "t/hang_2", "t/hang_3"]);
    Originator::stop_manager(manager).await;

    // Every file of the batch is back in the queue for another worker.
    assert_eq!(originator.handed_back(3).await, started);
}
