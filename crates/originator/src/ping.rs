//! `gorgon ping`: asks every listener of the cluster who it is, and lists the answers.

use std::time::Duration;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{exit_code, names, Broker, BrokerError, Envelope, ListenerInfo, Message};
use uuid::Uuid;

use crate::settings::Settings;

/// Pings the listeners of the cluster configured in `config`, waits `wait` for answers,
/// prints them, and returns the exit code.
pub async fn ping(config: &std::path::Path, wait: Duration) -> i32 {
    let settings = match Settings::load_connection(config) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("gorgon: {error}");
            return exit_code::CONFIG_OR_BROKER;
        }
    };
    match collect(&settings.0, &settings.1, wait).await {
        Ok(mut listeners) => {
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
                settings.1,
                slots
            );
            exit_code::SUCCESS
        }
        Err(error) => {
            eprintln!("gorgon: {error}");
            exit_code::CONFIG_OR_BROKER
        }
    }
}

async fn collect(
    broker_settings: &gorgon_protocol::BrokerSettings,
    cluster: &str,
    wait: Duration,
) -> Result<Vec<ListenerInfo>, BrokerError> {
    let broker = Broker::connect(broker_settings, "gorgon ping").await?;
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
        Err(BrokerError::Unroutable(_)) => {
            broker.close().await;
            return Ok(listeners);
        }
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
    broker.close().await;
    Ok(listeners)
}
