//! The listener in-process against the real RabbitMQ and rsync, with this test playing the
//! originator. Only the paths that end before a worker manager starts are covered here: a
//! manager is the `gorgon` binary itself, which the end-to-end tests drive.

use std::path::Path;
use std::time::Duration;

use gorgon_exec::rsync;
use gorgon_listener::{run, ListenerSettings};
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    names, Broker, BrokerSettings, CallbackName, Callbacks, Envelope, Inbox, JobDefinition,
    Message, SyncTransport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

struct Listener {
    queue: String,
    cluster: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), gorgon_listener::ListenerError>>,
}

/// Starts a listener on a cluster of its own and waits for its announcement.
async fn start_listener(broker: &Broker, workspace_root: &Path) -> Listener {
    let cluster = format!("test-{}", Uuid::new_v4());
    let announcements = names::announcements_exchange(&cluster);
    broker.declare_fanout(&announcements).await.unwrap();
    let heard = broker.declare_private_queue().await.unwrap();
    broker.bind(&heard, &announcements).await.unwrap();
    let mut heard = broker.consume(&heard, None).await.unwrap();
    let settings = ListenerSettings {
        broker: BrokerSettings::for_tests(),
        worker_slots: 3,
        log_file: None,
        cluster_id: cluster.clone(),
        name: "test-listener".into(),
        workspace_root: workspace_root.to_owned(),
        warm_runners: true,
        allow_root: false,
        allow_fleet_commands: false,
        metrics_address: None,
        drain_timeout: std::time::Duration::from_secs(10),
        file_server_password: None,
        config_keys: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(settings, std::future::pending(), async {
        let _ = stopped.await;
    }));
    let queue = match next(&mut heard).await {
        Message::ListenerAnnounced {
            listener_queue,
            name,
        } => {
            assert_eq!(name, "test-listener");
            listener_queue
        }
        other => panic!("unexpected announcement {other:?}"),
    };
    Listener {
        queue,
        cluster,
        stop,
        task,
    }
}

impl Listener {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the listener stops")
            .unwrap()
            .unwrap();
    }
}

async fn next(inbox: &mut Inbox) -> Message {
    let incoming = tokio::time::timeout(WAIT, inbox.next())
        .await
        .expect("a message in time")
        .expect("the queue is open");
    incoming.ack().await.unwrap();
    incoming.envelope.unwrap().message
}

async fn connect() -> Broker {
    Broker::connect(&BrokerSettings::for_tests(), "gorgon-listener test")
        .await
        .expect("RabbitMQ runs on 127.0.0.1:5672")
}

fn definition(source: &str, callbacks: Callbacks) -> JobDefinition {
    JobDefinition::with_command(source, "sh {file}", callbacks)
}

/// Declares what an originator declares for a job (its control exchange, which listeners
/// watch for a cancel, and its reply queue) and returns the reply queue with its inbox.
async fn reply_queue(broker: &Broker, job: Uuid) -> (String, Inbox) {
    broker
        .declare_fanout(&names::control_exchange(job))
        .await
        .unwrap();
    let queue = names::reply_queue(job);
    broker
        .declare_queue(&queue, QueueLife::Exclusive)
        .await
        .unwrap();
    let inbox = broker.consume(&queue, None).await.unwrap();
    (queue, inbox)
}

/// Offers `definition` as job `job` (replying to `reply_to`) straight to the listener's
/// queue, as an originator does to a listener that joins late.
async fn offer(
    broker: &Broker,
    listener: &Listener,
    job: Uuid,
    definition: JobDefinition,
    reply_to: String,
) {
    let offer = Envelope::new(
        job,
        Message::Job {
            definition: Box::new(definition),
            reply_to,
        },
    );
    broker.send_to_queue(&listener.queue, &offer).await.unwrap();
}

/// A file server (an rsync daemon on a free port) serving a project `proj` of one file:
/// the folder it serves, and its port.
async fn serve_project() -> (tempfile::TempDir, u16) {
    let served = tempfile::tempdir().unwrap();
    std::fs::create_dir(served.path().join("proj")).unwrap();
    std::fs::write(served.path().join("proj/a.sh"), "exit 0").unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    rsync::start_daemon(served.path(), port, Some("127.0.0.1"), None)
        .await
        .unwrap();
    (served, port)
}

#[tokio::test]
async fn answers_pings_and_reports_a_failed_sync_once() {
    let broker = connect().await;
    let root = tempfile::tempdir().unwrap();
    let listener = start_listener(&broker, root.path()).await;

    let ping = Uuid::new_v4();
    let ping_queue = names::ping_queue(ping);
    broker
        .declare_queue(&ping_queue, QueueLife::Exclusive)
        .await
        .unwrap();
    let mut pongs = broker.consume(&ping_queue, None).await.unwrap();
    let request = Envelope::new(
        ping,
        Message::Ping {
            reply_to: ping_queue.clone(),
        },
    );
    broker
        .publish(&names::jobs_exchange(&listener.cluster), &request)
        .await
        .unwrap();
    let Message::PingReply(info) = next(&mut pongs).await else {
        panic!("not a ping reply");
    };
    assert_eq!(
        (info.name.as_str(), info.version.as_str(), info.slots),
        ("test-listener", gorgon_protocol::VERSION, 3)
    );
    assert_eq!((info.busy_slots, info.jobs.len()), (0, 0));

    // The same job through the fanout and straight to the listener's queue: taken once.
    let job = Uuid::new_v4();
    let (replies, mut inbox) = reply_queue(&broker, job).await;
    let offer = Envelope::new(
        job,
        Message::Job {
            definition: Box::new(definition(
                "rsync://127.0.0.1:1/src/nothing/",
                Callbacks::default(),
            )),
            reply_to: replies.clone(),
        },
    );
    broker
        .publish(&names::jobs_exchange(&listener.cluster), &offer)
        .await
        .unwrap();
    broker.send_to_queue(&listener.queue, &offer).await.unwrap();
    assert_eq!(
        next(&mut inbox).await,
        Message::JobAccepted {
            host: "test-listener".into(),
            slots: 3,
            listener_queue: Some(listener.queue.clone()),
        }
    );
    match next(&mut inbox).await {
        Message::SyncFailed { host, output } => {
            assert_eq!(host, "test-listener");
            assert!(
                output.contains("rsync://127.0.0.1:1/src/nothing/"),
                "{output}"
            );
        }
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(
        next(&mut inbox).await,
        Message::JobDone {
            host: "test-listener".into()
        }
    );
    assert!(!root.path().join(job.to_string()).exists());
    // A ping answered on the reply queue comes after anything a second copy of the job
    // would have sent first.
    let marker = Envelope::new(
        job,
        Message::Ping {
            reply_to: replies.clone(),
        },
    );
    broker
        .send_to_queue(&listener.queue, &marker)
        .await
        .unwrap();
    assert!(matches!(next(&mut inbox).await, Message::PingReply(_)));

    listener.stop().await;
    broker.close().await;
}

#[tokio::test]
async fn a_failed_after_sync_is_reported_and_the_workspace_removed() {
    let broker = connect().await;
    let root = tempfile::tempdir().unwrap();
    let (_served, port) = serve_project().await;
    let listener = start_listener(&broker, root.path()).await;

    let job = Uuid::new_v4();
    let (replies, mut inbox) = reply_queue(&broker, job).await;
    let source = rsync::tree_location("127.0.0.1", port, SyncTransport::Daemon, "proj");
    let callbacks = Callbacks {
        after_sync: Some(
            "test -f a.sh && test \"$GORGON_WORKSPACE\" = \"$PWD\" && echo \"no deps for $GORGON_JOB_ID on $GORGON_HOST\"; exit 5"
                .into(),
        ),
        ..Callbacks::default()
    };
    offer(
        &broker,
        &listener,
        job,
        definition(&source, callbacks),
        replies,
    )
    .await;
    let mut messages = Vec::new();
    for _ in 0..3 {
        messages.push(next(&mut inbox).await);
    }
    listener.stop().await;
    rsync::stop_daemon(port).await.unwrap();
    broker.close().await;

    assert!(matches!(messages[0], Message::JobAccepted { .. }));
    assert_eq!(
        messages[1],
        Message::CallbackFailed {
            host: "test-listener".into(),
            worker_id: None,
            callback: CallbackName::AfterSync,
            status: "exit status 5".into(),
            output: format!("no deps for {job} on test-listener\n"),
        }
    );
    assert!(matches!(messages[2], Message::JobDone { .. }));
    assert!(!root.path().join(job.to_string()).exists());
}

/// A job that finds every slot taken waits its turn: the listener says so (`JobQueued`,
/// not `JobAccepted`), and takes it with the slots once the job before it has ended.
#[tokio::test]
async fn a_job_beyond_the_free_slots_waits_its_turn_and_is_told_so() {
    let broker = connect().await;
    let root = tempfile::tempdir().unwrap();
    let (served, port) = serve_project().await;
    let listener = start_listener(&broker, root.path()).await;
    let release = served.path().join("release");

    // The first job holds every slot in its after_sync until the test releases it.
    let first = Uuid::new_v4();
    let (first_replies, mut first_inbox) = reply_queue(&broker, first).await;
    let source = rsync::tree_location("127.0.0.1", port, SyncTransport::Daemon, "proj");
    let holding = Callbacks {
        after_sync: Some(format!(
            "i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 5",
            release.display()
        )),
        ..Callbacks::default()
    };
    let holder = definition(&source, holding);
    offer(&broker, &listener, first, holder, first_replies).await;
    assert!(matches!(
        next(&mut first_inbox).await,
        Message::JobAccepted { slots: 3, .. }
    ));

    let second = Uuid::new_v4();
    let (second_replies, mut second_inbox) = reply_queue(&broker, second).await;
    let nothing = definition("rsync://127.0.0.1:1/src/nothing/", Callbacks::default());
    offer(&broker, &listener, second, nothing, second_replies).await;
    assert_eq!(
        next(&mut second_inbox).await,
        Message::JobQueued {
            host: "test-listener".into(),
            ahead: 0,
            slots: 3,
        }
    );

    std::fs::write(&release, "").unwrap();
    let first_end = [next(&mut first_inbox).await, next(&mut first_inbox).await];
    assert!(
        matches!(
            first_end,
            [Message::CallbackFailed { .. }, Message::JobDone { .. }]
        ),
        "{first_end:?}"
    );
    let mut second_end = Vec::new();
    for _ in 0..3 {
        second_end.push(next(&mut second_inbox).await);
    }
    assert!(
        matches!(
            second_end.as_slice(),
            [
                Message::JobAccepted { slots: 3, .. },
                Message::SyncFailed { .. },
                Message::JobDone { .. }
            ]
        ),
        "{second_end:?}"
    );
    listener.stop().await;
    rsync::stop_daemon(port).await.unwrap();
    broker.close().await;
}
