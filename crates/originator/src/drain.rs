//! `gorgon drain HOST`: asks the listener named HOST, from anywhere in the cluster, to drain
//! as it does on SIGTERM (it takes no more jobs, lets the files it runs finish, hands back
//! the rest and exits 0), and prints its answer. Listeners take it only when their config
//! sets `allow_fleet_commands: true`.

use std::time::Duration;

use gorgon_protocol::{exit_code, Broker, BrokerError, Message};

use crate::ping::PingError;
use crate::settings::Settings;

/// What the listener answered: the jobs it still runs, or why it refused.
enum Answer {
    Draining { jobs: u32 },
    Refused(String),
    Silent,
}

/// Asks listener `host` of `config`'s cluster to drain and waits `wait` for its answer; the
/// exit code: 0 when it drains.
pub async fn drain(config: &std::path::Path, host: &str, wait: Duration) -> Result<i32, PingError> {
    let (settings, cluster) = Settings::load_connection(config)?;
    let broker = Broker::connect(&settings, "gorgon drain").await?;
    let answer = ask(&broker, &cluster, host, wait).await;
    broker.close().await;
    Ok(match answer? {
        Answer::Draining { jobs } => {
            println!("{host} drains: it takes no more jobs, and its {jobs} running job(s) finish the files they run; it exits once they have ended (or at its drain_timeout).");
            exit_code::SUCCESS
        }
        Answer::Refused(reason) => {
            println!("{host} refused to drain: {reason}");
            exit_code::FAILURE
        }
        Answer::Silent => {
            println!(
                "No listener named {host} in cluster '{cluster}' answered within {} s (`gorgon status` lists them).",
                wait.as_secs_f64()
            );
            exit_code::FAILURE
        }
    })
}

/// Sends the drain request to the cluster and waits for `host`'s answer.
async fn ask(
    broker: &Broker,
    cluster: &str,
    host: &str,
    wait: Duration,
) -> Result<Answer, BrokerError> {
    let mut answer = Answer::Silent;
    let request = |reply_to| Message::Drain {
        host: host.to_owned(),
        reply_to,
    };
    crate::ping::ask_listeners(broker, cluster, wait, request, |message| match message {
        Message::DrainAnswer {
            host: from,
            jobs,
            refused,
        } if from == host => {
            answer = match refused {
                Some(reason) => Answer::Refused(reason.clone()),
                None => Answer::Draining { jobs: *jobs },
            };
            true
        }
        _ => false,
    })
    .await?;
    Ok(answer)
}
