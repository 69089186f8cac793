//! `gorgon fleet -- COMMAND ARGS...`: runs one command on every listener of the cluster (in a
//! scratch folder, as the listener's user, within a time limit), prints each host's exit and
//! output, and fails if any host failed, refused or did not answer. Listeners run fleet
//! commands only when their config sets `allow_fleet_commands: true`.

use std::collections::BTreeMap;
use std::time::Duration;

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{exit_code, names, Broker, BrokerError, Envelope, FleetOutcome, Message};
use uuid::Uuid;

use crate::ping::PingError;
use crate::settings::Settings;

/// How long listeners get to say who they are before the command goes out.
const PING_WAIT: Duration = Duration::from_secs(2);
/// How long past the command's own limit the answers may take to arrive.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Runs `argv` on the listeners of `config`'s cluster and prints what each did; the exit
/// code: 0 when every listener that answered the ping ran it successfully.
pub async fn fleet(
    config: &std::path::Path,
    argv: &[String],
    limit: Duration,
) -> Result<i32, PingError> {
    let (settings, cluster) = Settings::load_connection(config)?;
    let broker = Broker::connect(&settings, "gorgon fleet").await?;
    let listeners = crate::ping::collect(&broker, &cluster, PING_WAIT).await?;
    if listeners.is_empty() {
        println!("No listener of cluster '{cluster}' answered; nothing was run.");
        broker.close().await;
        return Ok(exit_code::FAILURE);
    }
    let id = Uuid::new_v4();
    let replies = names::ping_queue(id);
    broker.declare_queue(&replies, QueueLife::Exclusive).await?;
    let mut inbox = broker.consume(&replies, None).await?;
    let command = Message::FleetCommand {
        argv: argv.to_vec(),
        timeout_seconds: limit.as_secs_f64(),
        reply_to: replies.clone(),
    };
    match broker
        .publish(&names::jobs_exchange(&cluster), &Envelope::new(id, command))
        .await
    {
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let mut outcomes: BTreeMap<String, Option<FleetOutcome>> = listeners
        .iter()
        .map(|listener| (listener.name.clone(), None))
        .collect();
    let deadline = tokio::time::Instant::now() + limit + ANSWER_MARGIN;
    while outcomes.values().any(Option::is_none) {
        tokio::select! {
            incoming = inbox.next() => {
                let Some(incoming) = incoming else { break };
                if let Ok(Envelope { job_id, message: Message::FleetResult { host, outcome }, .. }) = &incoming.envelope {
                    if *job_id == id {
                        outcomes.insert(host.clone(), Some(outcome.clone()));
                    }
                }
                let _ = incoming.ack().await;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    broker.close().await;
    let mut failed = 0;
    for (host, outcome) in &outcomes {
        match outcome {
            Some(FleetOutcome::Ran {
                success,
                exit,
                output,
            }) => {
                println!("== {host}: {exit}");
                for line in output.lines() {
                    println!("   {line}");
                }
                failed += usize::from(!success);
            }
            Some(FleetOutcome::Refused { reason }) => {
                println!("== {host} refused: {reason}");
                failed += 1;
            }
            None => {
                println!(
                    "== {host} did not answer within {} s",
                    (limit + ANSWER_MARGIN).as_secs()
                );
                failed += 1;
            }
        }
    }
    println!(
        "\n{} of {} listener(s) of cluster '{cluster}' ran it successfully.",
        outcomes.len() - failed,
        outcomes.len()
    );
    Ok(if failed == 0 {
        exit_code::SUCCESS
    } else {
        exit_code::FAILURE
    })
}
