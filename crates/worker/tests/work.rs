//! A worker against the real RabbitMQ, with this test playing the originator: it queues files,
//! collects the results, and ends the job by deleting the files queue.

use std::path::Path;
use std::time::Duration;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    names, Broker, BrokerSettings, Callbacks, Envelope, FileResult, FileStatus, Inbox,
    JobDefinition, Message, WorkerAssignment,
};
use gorgon_worker::{work, StdinClosed};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

struct Originator {
    broker: Broker,
    job: Uuid,
    replies: Inbox,
}

impl Originator {
    async fn start(files: &[&str]) -> Originator {
        let broker = Broker::connect(&BrokerSettings::default(), "gorgon-worker test")
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
        let messages = files.iter().map(|file| {
            Envelope::new(
                job,
                Message::File {
                    file: (*file).to_owned(),
                },
            )
        });
        broker
            .send_all_to_queue(&files_queue, messages)
            .await
            .unwrap();
        let replies = broker.consume(&reply_queue, None).await.unwrap();
        Originator {
            broker,
            job,
            replies,
        }
    }

    fn assignment(&self, workspace: &Path, callbacks: Callbacks) -> WorkerAssignment {
        WorkerAssignment {
            job_id: self.job,
            definition: JobDefinition::with_command("unused/", "sh {file}", callbacks),
            reply_to: names::reply_queue(self.job),
            broker: BrokerSettings::default(),
            host: "h1".into(),
            workspace: workspace.to_owned(),
            slots: 1,
            worker_id: Some(1),
        }
    }

    async fn next_reply(&mut self) -> Message {
        let incoming = tokio::time::timeout(WAIT, self.replies.next())
            .await
            .expect("a reply in time")
            .expect("the reply queue is open");
        incoming.ack().await.unwrap();
        let envelope = incoming.envelope.unwrap();
        assert_eq!(envelope.job_id, self.job);
        envelope.message
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
    let worker = tokio::spawn(work(assignment, StdinClosed::never()));

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

    // Every file has a result: the originator deletes the files queue, which ends the worker.
    originator
        .broker
        .delete_queue(&names::files_queue(originator.job))
        .await
        .unwrap();
    let code = tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker ends with the queue")
        .unwrap();
    assert_eq!(code, 0);
    assert!(workspace.path().join("completed.1").exists());
    originator.broker.close().await;
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
    let (close_stdin, stdin) = StdinClosed::manual();
    let worker = tokio::spawn(work(assignment, stdin));
    match originator.next_reply().await {
        Message::FileStarted {
            file, worker_id, ..
        } => {
            assert_eq!(file, "slow.sh");
            assert_eq!(worker_id, 1);
        }
        other => panic!("unexpected reply {other:?}"),
    }
    close_stdin.send(true).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops at once")
        .unwrap();
    assert_eq!(code, 0);
    assert!(!workspace.path().join("completed").exists());

    // The file went back to the queue for another worker.
    let mut files = originator
        .broker
        .consume(&names::files_queue(originator.job), Some(1))
        .await
        .unwrap();
    let again = tokio::time::timeout(WAIT, files.next())
        .await
        .expect("the file is back in the queue")
        .unwrap();
    assert!(again.redelivered);
    assert_eq!(
        again.envelope.as_ref().unwrap().message,
        Message::File {
            file: "slow.sh".into()
        }
    );
    again.ack().await.unwrap();
    originator
        .broker
        .delete_queue(&names::files_queue(originator.job))
        .await
        .unwrap();
    originator.broker.close().await;
}

#[tokio::test]
async fn a_job_that_is_over_ends_the_worker_at_once() {
    let workspace = tempfile::tempdir().unwrap();
    let originator = Originator::start(&[]).await;
    originator
        .broker
        .delete_queue(&names::files_queue(originator.job))
        .await
        .unwrap();
    let callbacks = Callbacks {
        after_complete: Some("touch completed".into()),
        ..Callbacks::default()
    };
    let assignment = originator.assignment(workspace.path(), callbacks);
    let code = tokio::time::timeout(WAIT, work(assignment, StdinClosed::never()))
        .await
        .expect("the worker ends at once");
    assert_eq!(code, 0);
    assert!(workspace.path().join("completed").exists());
    originator.broker.close().await;
}
