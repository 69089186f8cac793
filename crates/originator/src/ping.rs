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
    let ping_id = Uuid::new_v4();
    let reply_queue = names::ping_queue(ping_id);
    let jobs = names::jobs_exchange(cluster);
    broker.declare_fanout(&jobs).await?;
    broker
        .declare_queue(&reply_queue, QueueLife::Exclusive)
        .await?;
    let mut inbox = broker.consume(&reply_queue, None).await?;
    let ping = Envelope::new(
        ping_id,
        Message::Ping {
            reply_to: reply_queue.clone(),
        },
    );
    let mut listeners = Vec::new();
    match broker.publish(&jobs, &ping).await {
        Ok(()) => {}
        // No listener queue is bound: nobody is listening.
        Err(BrokerError::Unroutable(_)) => return Ok(listeners),
        Err(error) => return Err(error),
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            incoming = inbox.next() => {
                let Some(incoming) = incoming else { break };
                match &incoming.envelope {
                    Ok(Envelope { job_id, message: Message::PingReply(info), .. }) if *job_id == ping_id => {
                        listeners.push(info.clone());
                        let _ = incoming.ack().await;
                    }
                    _ => { let _ = incoming.discard().await; }
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(listeners)
}
