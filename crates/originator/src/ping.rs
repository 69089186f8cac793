//! `gorgon ping`: asks every listener of the cluster who it is, and lists the answers.

use std::time::Duration;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{names, Broker, BrokerError, Envelope, ListenerInfo, Message};
use uuid::Uuid;

use crate::settings::{ConfigError, Settings};

/// Why `gorgon ping` could not ask the listeners.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Pings the listeners of the cluster configured in `config`, waits `wait` for answers, and
/// prints them.
pub async fn ping(config: &std::path::Path, wait: Duration) -> Result<(), PingError> {
    let (settings, cluster) = Settings::load_connection(config)?;
    let broker = Broker::connect(&settings, "gorgon ping").await?;
    println!(
        "Asking the listeners of cluster '{cluster}' through RabbitMQ at {}",
        broker.address()
    );
    let mut listeners = collect(&broker, &cluster, wait).await?;
    broker.close().await;
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    for listener in &listeners {
        println!(
            "{} is running gorgon-rs {} with {} worker slot(s)",
            listener.name, listener.version, listener.slots
        );
    }
    let slots: u32 = listeners.iter().map(|l| l.slots).sum();
    println!(
        "\n{} listener(s) of cluster '{}' answered, with a total of {} worker slot(s).",
        listeners.len(),
        cluster,
        slots
    );
    Ok(())
}

/// Asks the listeners of `cluster` over `broker` who they are, and waits `wait` for answers.
pub(crate) async fn collect(
    broker: &Broker,
    cluster: &str,
    wait: Duration,
) -> Result<Vec<ListenerInfo>, BrokerError> {
    let mut listeners = Vec::new();
    let ping = |reply_to| Message::Ping { reply_to };
    ask_listeners(broker, cluster, wait, ping, |message| {
        if let Message::PingReply(info) = message {
            listeners.push(info.clone());
        }
        false
    })
    .await?;
    Ok(listeners)
}

/// Publishes the question that `ask` makes of its reply queue to every listener of
/// `cluster`, and hands each answer to `answer` until it returns true (it has what it
/// waited for), the inbox ends, or `wait` has passed. Nobody listening is no answer.
pub(crate) async fn ask_listeners(
    broker: &Broker,
    cluster: &str,
    wait: Duration,
    ask: impl FnOnce(String) -> Message,
    mut answer: impl FnMut(&Message) -> bool,
) -> Result<(), BrokerError> {
    let id = Uuid::new_v4();
    let reply_queue = names::ping_queue(id);
    let jobs = names::jobs_exchange(cluster);
    broker.declare_fanout(&jobs).await?;
    broker
        .declare_queue(&reply_queue, QueueLife::Exclusive)
        .await?;
    let mut inbox = broker.consume(&reply_queue, None).await?;
    match broker
        .publish(&jobs, &Envelope::new(id, ask(reply_queue)))
        .await
    {
        Ok(()) => {}
        // No listener queue is bound: nobody is listening.
        Err(BrokerError::Unroutable(_)) => return Ok(()),
        Err(error) => return Err(error),
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            incoming = inbox.next() => {
                let Some(incoming) = incoming else { return Ok(()) };
                match &incoming.envelope {
                    Ok(envelope) if envelope.job_id == id => {
                        let enough = answer(&envelope.message);
                        let _ = incoming.ack().await;
                        if enough {
                            return Ok(());
                        }
                    }
                    _ => { let _ = incoming.discard().await; }
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
        }
    }
}
