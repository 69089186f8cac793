//! The `gorgon listen` daemon: it waits on its cluster's jobs exchange, answers pings, and
//! runs each job it receives in a task of its own (pull the tree, `after_sync`, then a worker
//! manager process), so that it stays responsive while jobs run.

pub mod install;
mod job;
mod settings;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::config_file::ConfigFileError;
use gorgon_protocol::{names, Broker, BrokerError, Envelope, Incoming, ListenerInfo, Message};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

pub use settings::{ListenerSettings, DEFAULT_WORKER_SLOTS};

/// How long running jobs get, once the listener is asked to stop, to stop their worker
/// managers, remove their workspaces and tell their originators. A worker manager gets
/// [`MANAGER_GRACE`] of it before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a worker manager may take to stop its workers after SIGTERM.
const MANAGER_GRACE: Duration = Duration::from_secs(2);

/// Why the listener could not start or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("lost the connection to RabbitMQ at {address}")]
    Disconnected { address: String },
}

/// `gorgon listen --check`: loads the config at `path` and connects to its broker. Returns
/// the line to print when both work.
pub async fn check(path: &std::path::Path) -> Result<String, ListenerError> {
    let settings = ListenerSettings::load(path)?;
    let broker = Broker::connect(
        &settings.broker,
        &format!("gorgon listen --check {}", settings.name),
    )
    .await?;
    broker.close().await;
    Ok(format!(
        "{} is fine: listener {} with {} worker slot(s) on cluster '{}', RabbitMQ at {} is reachable",
        path.display(),
        settings.name,
        settings.worker_slots,
        settings.cluster_id,
        settings.broker.address()
    ))
}

/// What every job task shares with the listener.
struct Shared {
    broker: Broker,
    settings: ListenerSettings,
}

/// Runs the listener until `shutdown` completes (then it stops every job and returns
/// `Ok`) or the broker connection is lost (then it stops every job and returns an error).
pub async fn run(
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ListenerError> {
    let mut settings = settings;
    // Workspaces are handed to other processes and callbacks as absolute paths.
    if let Ok(root) = std::path::absolute(&settings.workspace_root) {
        settings.workspace_root = root;
    }
    let cluster = settings.cluster_id.clone();
    let broker = Broker::connect(
        &settings.broker,
        &format!("gorgon listen {}", settings.name),
    )
    .await?;
    let jobs_exchange = names::jobs_exchange(&cluster);
    let announcements = names::announcements_exchange(&cluster);
    broker.declare_fanout(&jobs_exchange).await?;
    broker.declare_fanout(&announcements).await?;
    let queue = names::listener_queue(&cluster, Uuid::new_v4());
    broker.declare_queue(&queue, QueueLife::Exclusive).await?;
    broker.bind(&queue, &jobs_exchange).await?;
    let mut inbox = broker.consume(&queue, None).await?;
    let announcement = Envelope::new(
        Uuid::new_v4(),
        Message::ListenerAnnounced {
            listener_queue: queue.clone(),
            name: settings.name.clone(),
        },
    );
    match broker.publish(&announcements, &announcement).await {
        // Nobody is listening for announcements unless a job is running: that is normal.
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => tracing::warn!(%error, "cannot announce this listener"),
    }
    tracing::info!(
        "listening as {} with {} slots on cluster {}",
        settings.name,
        settings.worker_slots,
        cluster
    );

    let shared = Arc::new(Shared {
        broker: broker.clone(),
        settings,
    });
    let (stop, stopping) = watch::channel(false);
    let mut jobs: JoinSet<Uuid> = JoinSet::new();
    let mut taken: HashSet<Uuid> = HashSet::new();
    tokio::pin!(shutdown);

    let result = loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break Ok(());
            }
            incoming = inbox.next() => match incoming {
                Some(incoming) => {
                    handle(&shared, incoming, &mut taken, &mut jobs, &stopping).await;
                }
                None => {
                    tracing::error!("the connection to RabbitMQ was lost");
                    break Err(ListenerError::Disconnected {
                        address: broker.address().to_owned(),
                    });
                }
            },
            Some(finished) = jobs.join_next(), if !jobs.is_empty() => match finished {
                Ok(job_id) => tracing::info!(job = %job_id, "job finished"),
                Err(error) => tracing::error!(%error, "a job task failed"),
            },
        }
    };

    // Each job task sees the stop and terminates its worker manager; the ones that take too
    // long are aborted, and dropping them kills their managers (`kill_on_drop`).
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some jobs did not stop in time; killing their worker managers");
        jobs.shutdown().await;
    }
    broker.close().await;
    result
}

/// Handles one message from the listener's queue and settles it.
async fn handle(
    shared: &Arc<Shared>,
    incoming: Incoming,
    taken: &mut HashSet<Uuid>,
    jobs: &mut JoinSet<Uuid>,
    stopping: &watch::Receiver<bool>,
) {
    let envelope = match &incoming.envelope {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, "dropping an unreadable message");
            settle(incoming.discard().await);
            return;
        }
    };
    let job_id = envelope.job_id;
    match &envelope.message {
        Message::Ping { reply_to } => {
            let reply = Envelope::new(
                job_id,
                Message::PingReply(ListenerInfo {
                    name: shared.settings.name.clone(),
                    version: gorgon_protocol::VERSION.to_owned(),
                    slots: shared.settings.worker_slots,
                }),
            );
            if let Err(error) = shared.broker.send_to_queue(reply_to, &reply).await {
                tracing::warn!(%error, "cannot answer a ping");
            }
        }
        Message::Job {
            definition,
            reply_to,
        } => {
            // The originator sends a running job both on the fanout and straight to a
            // listener that announces itself late; the same job must be taken once.
            if taken.insert(job_id) {
                tracing::info!(
                    job = %job_id,
                    project = %definition.project,
                    originator = %definition.originator_host,
                    "taking a job"
                );
                let job = job::Job {
                    id: job_id,
                    definition: definition.clone(),
                    reply_to: reply_to.clone(),
                };
                jobs.spawn(job::run_job(shared.clone(), job, stopping.clone()));
            } else {
                tracing::debug!(job = %job_id, "ignoring a job already taken");
            }
        }
        other => {
            tracing::warn!(job = %job_id, body = ?other, "dropping a message that is not for a listener");
            settle(incoming.discard().await);
            return;
        }
    }
    settle(incoming.ack().await);
}

fn settle(result: Result<(), BrokerError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle a message");
    }
}
