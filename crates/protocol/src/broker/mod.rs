//! The one place that talks to lapin (RabbitMQ's client): the [`Broker`] handle, its errors
//! and the timeout every call is bounded by, so that a broker that stops answering becomes an
//! error instead of a hang. Connecting is in `connect`, queues and exchanges in `topology`,
//! publishing with confirms in `publish`, consuming with signature checks in `consume`.

use std::sync::Arc;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Channel, Connection};

use crate::connection::{BrokerSettings, QueueType};
use crate::signing::Trust;

mod backoff;
mod connect;
mod consume;
mod publish;
mod refusal;
mod topology;

pub use backoff::Backoff;
pub use connect::{ConnectFailure, TlsError, CONNECT_TIMEOUT};
pub use consume::{ConsumerChannel, Inbox, Incoming, STREAM_START_LIMIT};
pub use publish::Unconfirmed;
pub use refusal::log_refusal;
pub use topology::QueueLife;

/// How long any other broker call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {address}: {reason}")]
    Connect {
        address: String,
        #[source]
        reason: ConnectFailure,
    },
    #[error("RabbitMQ did not answer {what} within {seconds} s")]
    Timeout { what: String, seconds: u64 },
    #[error("RabbitMQ refused {what}: {source}")]
    Call {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("no queue took the message published to {0} (its owner has gone)")]
    Unroutable(String),
    #[error("RabbitMQ rejected the message published to {0}")]
    Nacked(String),
}

impl BrokerError {
    /// True when the broker said the queue or exchange does not exist: it closed the channel
    /// with reply code 404 (NOT_FOUND). The code is matched, not the reply text, which
    /// quotes names the broker was given.
    pub fn is_not_found(&self) -> bool {
        self.is_soft(AMQPSoftError::NOTFOUND)
    }

    /// True when the broker refused because the queue is exclusive to another connection
    /// (reply code 405, RESOURCE_LOCKED): it exists, and its owner is connected.
    pub fn is_locked(&self) -> bool {
        self.is_soft(AMQPSoftError::RESOURCELOCKED)
    }

    /// True when the broker refused with INTERNAL_ERROR (reply code 541, a hard error that
    /// closes the connection): one of RabbitMQ's answers to a consume on a stream that has
    /// not started yet ([`Broker::consume_stream`]).
    pub fn is_internal(&self) -> bool {
        let BrokerError::Call { source, .. } = self else {
            return false;
        };
        matches!(
            source.kind(),
            lapin::ErrorKind::ProtocolError(error)
                if *error.kind() == AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)
        )
    }

    /// True when the broker refused a precondition (reply code 406, PRECONDITION_FAILED):
    /// the other answer to a consume on a stream that has not started yet ("does not have
    /// a replica on the local node").
    pub fn is_precondition_failed(&self) -> bool {
        self.is_soft(AMQPSoftError::PRECONDITIONFAILED)
    }

    fn is_soft(&self, code: AMQPSoftError) -> bool {
        let BrokerError::Call { source, .. } = self else {
            return false;
        };
        matches!(
            source.kind(),
            lapin::ErrorKind::ProtocolError(error) if *error.kind() == AMQPErrorKind::Soft(code)
        )
    }
}

async fn bounded<T>(
    what: &str,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    bounded_until(what, tokio::time::Instant::now() + CALL_TIMEOUT, future).await
}

/// [`bounded`] with the call's deadline given: a call awaited in several goes (cancelled and
/// resumed) keeps the deadline of its start.
async fn bounded_until<T>(
    what: &str,
    deadline: tokio::time::Instant,
    future: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout_at(deadline, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(BrokerError::Call {
            what: what.to_owned(),
            source,
        }),
        Err(_) => Err(BrokerError::Timeout {
            what: what.to_owned(),
            seconds: CALL_TIMEOUT.as_secs(),
        }),
    }
}

/// A connection with one channel for publishing (in confirm mode) and declarations.
/// Consumers each get a channel of their own.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<Connection>,
    channel: Channel,
    address: String,
    /// The connection's name, sent as the `app_id` of every message it publishes.
    name: String,
    /// With the cluster's keys: every message published is signed, only signed ones are
    /// taken.
    trust: Option<Arc<Trust>>,
    /// What [`QueueLife::Shared`] queues are.
    queue_type: QueueType,
    /// Where it connected from, for [`Broker::reconnect`].
    settings: Arc<BrokerSettings>,
}

impl Broker {
    /// How long this connection's owner may try to get it back ([`BrokerSettings::outage_limit`]).
    pub fn outage_limit(&self) -> Duration {
        self.settings.outage_limit()
    }

    /// `host:port` of the broker.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True while the connection is open.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection politely; errors are irrelevant at that point.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.connection.close(200, "bye".into()),
        )
        .await;
    }
}

#[cfg(test)]
mod testing {
    use super::{Broker, BrokerSettings};

    /// A connection to the broker the tests use.
    pub(super) async fn connect(name: &str) -> Broker {
        Broker::connect(&BrokerSettings::for_tests(), name)
            .await
            .expect("RabbitMQ runs on 127.0.0.1:5672 (or AMQP_HOST:AMQP_PORT)")
    }

    /// A shared queue of the test's own, declared on `broker`; its name.
    pub(super) async fn test_queue(broker: &Broker) -> String {
        let queue = format!("gorgon-rs.test.{}.files", uuid::Uuid::new_v4());
        let life = super::QueueLife::Shared {
            unused_expiry: std::time::Duration::from_secs(60),
        };
        broker.declare_queue(&queue, life).await.unwrap();
        queue
    }
}
