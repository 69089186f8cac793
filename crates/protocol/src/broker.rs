//! The one module that talks to lapin: connecting to RabbitMQ, declaring the topology,
//! publishing envelopes with publisher confirms, and consuming them with manual acks.
//! Every call is bounded by a timeout, so a broker that stops answering becomes an error
//! instead of a hang.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::connection::{BrokerSettings, QueueType};
use crate::message::{DecodeError, Envelope};
use crate::signing::{Signature, Trust, KEY_HEADER, MAC_HEADER, SIGNED_AT_HEADER};

/// How long a connection attempt may take before the broker counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest AMQP frame. The client keeps send and receive buffers of 32 frames each, so
/// RabbitMQ's default of 128 KiB would cost every process (each worker included) 8 MiB;
/// messages larger than a frame are split, so this limits memory, not message size.
const FRAME_MAX: u32 = 16 * 1024;

/// How long any other broker call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How many messages of [`Broker::send_all_to_queue`] may wait for their confirm at once.
const CONFIRM_WINDOW: usize = 1000;

/// The AMQP URI of `settings`, with the frame size this client wants.
fn uri(settings: &BrokerSettings, host: &str, port: u16) -> String {
    format!(
        "{}://{}:{}@{}:{}/{}?frame_max={FRAME_MAX}&heartbeat={}",
        if settings.tls.is_some() {
            "amqps"
        } else {
            "amqp"
        },
        percent_encode(&settings.username),
        percent_encode(&settings.password),
        host,
        port,
        percent_encode(&settings.vhost),
        settings.heartbeat
    )
}

/// The TLS configuration of `settings`: its CA file and client certificate, read now.
fn tls_config(settings: &BrokerSettings) -> Result<lapin::tcp::OwnedTLSConfig, String> {
    let Some(tls) = &settings.tls else {
        return Ok(lapin::tcp::OwnedTLSConfig::default());
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8(read("CA file", path)?)
                .map_err(|_| format!("the CA file {} is not PEM text", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("client certificate", cert)?,
            key: read("client key", key)?,
        }),
        (None, None) => None,
        _ => return Err("connection.tls needs both cert_file and key_file, or neither".into()),
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {address}: {reason}")]
    Connect { address: String, reason: String },
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

/// What a passive declare says about a queue or an exchange: a queue exclusive to another
/// connection (a listener's own queue) exists for as long as that connection lives.
fn existence(declared: Result<(), BrokerError>) -> Result<bool, BrokerError> {
    match declared {
        Ok(()) => Ok(true),
        Err(error) if error.is_locked() => Ok(true),
        Err(error) if error.is_not_found() => Ok(false),
        Err(error) => Err(error),
    }
}

/// The lifetime of a queue this process declares.
#[derive(Clone, Copy, Debug)]
pub enum QueueLife {
    /// Owned by this connection; deleted by the broker when the connection ends.
    Exclusive,
    /// Shared between processes; deleted explicitly by its owner, or by the broker once
    /// nobody has used it for `unused_expiry`. Durable, of the connection's
    /// [`QueueType`]: a broker restart (or, quorum, a node's loss) keeps it and its messages.
    Shared { unused_expiry: Duration },
    /// Deleted by the broker when its last consumer goes (its connection ends), and open to
    /// others' passive declares meanwhile: whether it exists says whether its owner lives.
    WhileConsumed,
}

/// How many messages of a stream a reader holds unacknowledged (streams need a prefetch).
const STREAM_PREFETCH: u16 = 500;

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

/// The waits between attempts to reconnect: 0.25 s, doubled after each failure up to 5 s,
/// each with up to half again of jitter, so that the hosts of a fleet do not all come back at
/// the same instant. For [`Broker::reconnect`] and for callers that cannot block in it (a
/// worker manager's event loop).
#[derive(Debug)]
pub struct Backoff {
    wait: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff {
            wait: Backoff::FIRST,
        }
    }

    /// The wait before the next attempt (jittered); the one after it is longer.
    pub fn next_wait(&mut self) -> Duration {
        let jitter = self
            .wait
            .mul_f64(f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 510.0);
        let wait = self.wait + jitter;
        self.wait = (self.wait * 2).min(Backoff::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Broker {
    /// Connects within [`CONNECT_TIMEOUT`] to one of the broker's nodes (see
    /// [`BrokerSettings::hosts`]: beginning at a random one, then the others in turn); `name`
    /// shows in RabbitMQ's management tools. [`Broker::address`] is the node it reached.
    pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Broker, BrokerError> {
        let nodes = settings.nodes();
        let first = if nodes.len() > 1 {
            usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % nodes.len()
        } else {
            0
        };
        let mut failures = Vec::new();
        for at in 0..nodes.len() {
            let (host, port) = &nodes[(first + at) % nodes.len()];
            match Broker::connect_node(settings, host, *port, name).await {
                Ok(broker) => return Ok(broker),
                Err(error) if nodes.len() == 1 => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "cannot reach this broker node; trying the next");
                    failures.push(error.to_string());
                }
            }
        }
        Err(BrokerError::Connect {
            address: settings.address(),
            reason: format!("no node answered: {}", failures.join("; ")),
        })
    }

    async fn connect_node(
        settings: &BrokerSettings,
        host: &str,
        port: u16,
        name: &str,
    ) -> Result<Broker, BrokerError> {
        let address = format!("{host}:{port}");
        let connect_error = |reason: String| BrokerError::Connect {
            address: address.clone(),
            reason,
        };
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let tls = tls_config(settings).map_err(&connect_error)?;
        let over = if settings.tls.is_some() {
            "over TLS: "
        } else {
            ""
        };
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| connect_error(e.to_string()))?;
        let connecting = async {
            match settings
                .tls
                .as_ref()
                .and_then(|tls| tls.server_name.clone())
            {
                // lapin's own connectors check the certificate against the URI's host.
                Some(server_name) => {
                    let uri: lapin::uri::AMQPUri = uri(settings, host, port)
                        .parse()
                        .map_err(std::io::Error::other)?;
                    let open =
                        async move |uri: lapin::uri::AMQPUri, runtime: async_rs::TokioRuntime| {
                            let address = runtime
                                .to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
                            let stream =
                                lapin::tcp::AsyncTcpStream::connect(&runtime, address).await?;
                            Ok(stream.into_tls(&server_name, tls.as_ref()).await?)
                        };
                    Connection::connector(uri, runtime, open, properties).await
                }
                None => {
                    Connection::connect_with_config(
                        &uri(settings, host, port),
                        properties,
                        tls,
                        runtime,
                    )
                    .await
                }
            }
        };
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                connect_error(format!(
                    "{over}no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| connect_error(format!("{over}{e}")))?;
        let channel = bounded("channel.open", connection.create_channel()).await?;
        bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Broker {
            connection: std::sync::Arc::new(connection),
            channel,
            address,
            name: name.to_owned(),
            trust: settings
                .signing
                .as_ref()
                .map(|keys| Arc::new(Trust::new(keys))),
            queue_type: settings.queue_type,
            settings: Arc::new(settings.clone()),
        })
    }

    /// A new connection, under the same name, after this one was lost: any of the broker's
    /// nodes, tried again with backoff and jitter until `deadline`; the last failure then.
    pub async fn reconnect(&self, deadline: tokio::time::Instant) -> Result<Broker, BrokerError> {
        let mut backoff = Backoff::new();
        loop {
            match Broker::connect_like(self).await {
                Ok(broker) => return Ok(broker),
                Err(error) => {
                    let wait = backoff.next_wait();
                    let next = tokio::time::Instant::now() + wait;
                    if next >= deadline {
                        return Err(error);
                    }
                    tracing::warn!(%error, "cannot reconnect yet; trying again in {wait:?}");
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }

    /// One new connection with the settings and name of `other` (to any node), at once.
    pub async fn connect_like(other: &Broker) -> Result<Broker, BrokerError> {
        Broker::connect(&other.settings, &other.name).await
    }

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

    pub async fn declare_fanout(&self, name: &str) -> Result<(), BrokerError> {
        bounded(
            "exchange.declare",
            self.channel.exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Declares a job's own fanout exchange (its control exchange): durable, so that a
    /// broker restart keeps it for the listeners that re-attach to the job. Its owner
    /// deletes it at the job's end.
    pub async fn declare_job_exchange(&self, name: &str) -> Result<(), BrokerError> {
        bounded(
            "exchange.declare",
            self.channel.exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
    }

    pub async fn declare_queue(&self, name: &str, life: QueueLife) -> Result<(), BrokerError> {
        let mut arguments = FieldTable::default();
        let options = match life {
            QueueLife::Exclusive => QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            QueueLife::Shared { unused_expiry } => {
                arguments.insert(
                    "x-expires".into(),
                    AMQPValue::LongLongInt(unused_expiry.as_millis() as i64),
                );
                if self.queue_type == QueueType::Quorum {
                    arguments.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                } else {
                    // The second version of classic queues (RabbitMQ 3.10 and later; older
                    // brokers ignore it) writes persistent messages with less work.
                    arguments.insert("x-queue-version".into(), AMQPValue::LongInt(2));
                }
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                }
            }
            QueueLife::WhileConsumed => QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        };
        self.declare_with(name, options, arguments).await
    }

    /// Declares queue `name` on the publishing channel.
    async fn declare_with(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<(), BrokerError> {
        bounded(
            "queue.declare",
            self.channel.queue_declare(name.into(), options, arguments),
        )
        .await
        .map(|_| ())
    }

    /// Declares queue `name` on a channel of its own, which a refusal (a queue that does not
    /// exist, or that another connection holds) closes instead of the publishing channel.
    async fn declare_on_own_channel(
        &self,
        name: &str,
        options: QueueDeclareOptions,
    ) -> Result<lapin::Queue, BrokerError> {
        let name = name.to_owned();
        self.on_own_channel("queue.declare", |channel| async move {
            channel
                .queue_declare(name.as_str().into(), options, FieldTable::default())
                .await
        })
        .await
    }

    /// Declares a stream (an append-only, durable log that every consumer reads from its own
    /// offset; RabbitMQ 3.9+) whose messages are dropped after `max_age` (e.g. `"1D"`).
    pub async fn declare_stream(&self, name: &str, max_age: &str) -> Result<(), BrokerError> {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.declare_with(name, options, arguments).await
    }

    /// Declares exclusive queue `name` (a lock held as long as this connection, or until the
    /// queue is deleted); false when another connection holds it.
    pub async fn try_declare_exclusive(&self, name: &str) -> Result<bool, BrokerError> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        match self.declare_on_own_channel(name, options).await {
            Ok(_) => Ok(true),
            Err(error) if error.is_locked() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The ready messages and the consumers of queue `name`, or `None` when it does not
    /// exist (a passive declare).
    pub async fn queue_counts(&self, name: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        match self.declare_passive(name).await {
            Ok(queue) => Ok(Some((queue.message_count(), queue.consumer_count()))),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Declares an exclusive queue with a name chosen by the broker, and returns the name.
    pub async fn declare_private_queue(&self) -> Result<String, BrokerError> {
        let queue = bounded(
            "queue.declare",
            self.channel.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(queue.name().to_string())
    }

    /// Binds `queue` to `exchange`, on a channel of its own: the exchange may be gone (a job
    /// that is already over).
    pub async fn bind(&self, queue: &str, exchange: &str) -> Result<(), BrokerError> {
        let (queue, exchange) = (queue.to_owned(), exchange.to_owned());
        self.on_own_channel("queue.bind", |channel| async move {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        bounded(
            "queue.delete",
            self.channel
                .queue_delete(name.into(), QueueDeleteOptions::default()),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        bounded(
            "exchange.delete",
            self.channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default()),
        )
        .await
    }

    /// Whether an exchange exists (a passive declare).
    pub async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let name = name.to_owned();
        let declared = self
            .on_own_channel("exchange.declare", |channel| async move {
                let options = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Fanout,
                        options,
                        FieldTable::default(),
                    )
                    .await
            })
            .await;
        existence(declared)
    }

    /// Whether a queue exists.
    pub async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        existence(self.declare_passive(name).await.map(drop))
    }

    /// Asks whether queue `name` exists (a passive declare).
    async fn declare_passive(&self, name: &str) -> Result<lapin::Queue, BrokerError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.declare_on_own_channel(name, options).await
    }

    /// Runs one call on a channel of its own, closed after it: a broker that refuses a call
    /// (a queue or exchange that does not exist) closes the channel it was made on, and the
    /// connection's publishing channel must outlive that.
    async fn on_own_channel<T, F, Fut>(&self, what: &str, call: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let channel = bounded("channel.open", self.connection.create_channel()).await?;
        let answer = bounded(what, call(channel.clone())).await;
        if answer.is_ok() {
            let _ = channel.close(200, "bye".into()).await;
        }
        answer
    }

    /// Publishes to an exchange and waits until the broker has taken the message.
    /// A message that no queue takes is an error ([`BrokerError::Unroutable`]).
    pub async fn publish(&self, exchange: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        self.publish_routed(exchange, "", envelope, exchange).await
    }

    /// Publishes straight to a queue through the default exchange, with the same guarantees.
    pub async fn send_to_queue(&self, queue: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        self.publish_routed("", queue, envelope, queue).await
    }

    /// Hands a message for a queue to the broker without waiting for its confirm: the
    /// returned [`Unconfirmed`] resolves once the broker has taken it, with the guarantees
    /// of [`Broker::send_to_queue`]. Many messages in flight share the broker's disk writes.
    pub async fn hand_to_queue(
        &self,
        queue: &str,
        envelope: &Envelope,
    ) -> Result<Unconfirmed, BrokerError> {
        self.hand_routed("", queue, envelope, queue).await
    }

    /// Publishes raw bytes, as a foreign or broken client would: for tools and tests that
    /// check how gorgon-rs copes with messages it did not write. Unroutable is not an error.
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        self.publish_bytes_signed(exchange, routing_key, payload, None)
            .await
    }

    /// [`Broker::publish_bytes`] with the signature headers of `signature` (which need not
    /// match the bytes): for tests of what a process with keys refuses.
    pub async fn publish_bytes_signed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        signature: Option<&Signature>,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .publish_with(exchange, routing_key, payload, false, true, signature)
            .await?;
        let confirmation = bounded("publisher confirm", confirm).await?;
        if confirmation.is_nack() {
            return Err(BrokerError::Nacked(exchange.to_owned()));
        }
        Ok(())
    }

    /// Publishes many messages to a queue without waiting for each confirm before the next
    /// message: at most [`CONFIRM_WINDOW`] wait at once, which bounds the memory that
    /// queueing 100,000 files holds.
    pub async fn send_all_to_queue(
        &self,
        queue: &str,
        envelopes: impl IntoIterator<Item = Envelope>,
    ) -> Result<(), BrokerError> {
        let mut handed = std::collections::VecDeque::<Unconfirmed>::new();
        for envelope in envelopes {
            if handed.len() >= CONFIRM_WINDOW {
                if let Some(mut oldest) = handed.pop_front() {
                    oldest.confirmed().await?;
                }
            }
            handed.push_back(self.hand_to_queue(queue, &envelope).await?);
        }
        for mut unconfirmed in handed {
            unconfirmed.confirmed().await?;
        }
        Ok(())
    }

    async fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
        target: &str,
    ) -> Result<(), BrokerError> {
        self.hand_routed(exchange, routing_key, envelope, target)
            .await?
            .confirmed()
            .await
    }

    /// Hands one message to the broker, mandatory (a message that no queue takes comes back
    /// as [`BrokerError::Unroutable`] for `target`), without waiting for its confirm.
    async fn hand_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
        target: &str,
    ) -> Result<Unconfirmed, BrokerError> {
        let confirm = self
            .basic_publish(exchange, routing_key, envelope, true)
            .await?;
        Ok(Unconfirmed {
            confirm,
            target: target.to_owned(),
            deadline: tokio::time::Instant::now() + CALL_TIMEOUT,
        })
    }

    /// Hands one message to the broker; the returned confirm resolves once the broker has
    /// taken it (for a persistent one, written it to disk). `mandatory` makes a message that
    /// no queue takes come back as returned.
    async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
        mandatory: bool,
    ) -> Result<lapin::PublisherConfirm, BrokerError> {
        let payload = envelope.encode();
        let signature = self.trust.as_ref().map(|trust| trust.sign(&payload));
        self.publish_with(
            exchange,
            routing_key,
            &payload,
            mandatory,
            envelope.message.kept_through_restarts(),
            signature.as_ref(),
        )
        .await
    }

    /// Hands one message with `signature` (or none) to the broker.
    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        mandatory: bool,
        persistent: bool,
        signature: Option<&Signature>,
    ) -> Result<lapin::PublisherConfirm, BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        bounded(
            "basic.publish",
            self.channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                payload,
                self.properties(persistent, signature),
            ),
        )
        .await
    }

    /// The properties of a message this connection publishes, with its signature.
    fn properties(&self, persistent: bool, signature: Option<&Signature>) -> BasicProperties {
        // Persistent: kept across a broker restart where the queue is durable.
        let properties = BasicProperties::default()
            .with_delivery_mode(if persistent { 2 } else { 1 })
            .with_content_type("application/json".into())
            .with_app_id(self.name.as_str().into());
        let Some(signature) = signature else {
            return properties;
        };
        let mut headers = FieldTable::default();
        let text = |value: &str| AMQPValue::LongString(value.into());
        headers.insert(KEY_HEADER.into(), text(&signature.key_id));
        headers.insert(MAC_HEADER.into(), text(&signature.mac));
        headers.insert(
            SIGNED_AT_HEADER.into(),
            text(&signature.signed_at_ms.to_string()),
        );
        properties.with_headers(headers)
    }

    /// Starts consuming a queue on a channel of its own. `prefetch` limits how many
    /// unacknowledged messages the broker hands this consumer at once.
    pub async fn consume(&self, queue: &str, prefetch: Option<u16>) -> Result<Inbox, BrokerError> {
        self.consume_with(queue, prefetch, FieldTable::default())
            .await
    }

    /// Reads stream `stream` (see [`Broker::declare_stream`]) from its first message on; each
    /// message must be acknowledged for more to come.
    pub async fn consume_stream(&self, stream: &str) -> Result<Inbox, BrokerError> {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        self.consume_with(stream, Some(STREAM_PREFETCH), arguments)
            .await
    }

    async fn consume_with(
        &self,
        queue: &str,
        prefetch: Option<u16>,
        arguments: FieldTable,
    ) -> Result<Inbox, BrokerError> {
        let channel = bounded("channel.open", self.connection.create_channel()).await?;
        if let Some(prefetch) = prefetch {
            bounded(
                "basic.qos",
                channel.basic_qos(prefetch, BasicQosOptions::default()),
            )
            .await?;
        }
        let consumer = bounded(
            "basic.consume",
            channel.basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            ),
        )
        .await?;
        Ok(Inbox {
            consumer,
            channel,
            queue: queue.to_owned(),
            failed: false,
            trust: self.trust.clone(),
        })
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

fn check_confirmation(confirmation: lapin::Confirmation, target: &str) -> Result<(), BrokerError> {
    if confirmation.is_nack() {
        return Err(BrokerError::Nacked(target.to_owned()));
    }
    if confirmation.take_message().is_some() {
        return Err(BrokerError::Unroutable(target.to_owned()));
    }
    Ok(())
}

/// A message handed to the broker whose publisher confirm has not been seen yet.
pub struct Unconfirmed {
    confirm: lapin::PublisherConfirm,
    target: String,
    /// The confirm is taken for lost (a broker that no longer answers) after this.
    deadline: tokio::time::Instant,
}

impl Unconfirmed {
    /// Waits for the broker's confirm: `Ok` once it has the message (for a persistent
    /// one, on disk), [`BrokerError::Unroutable`] when no queue took it. Cancel-safe: the
    /// confirm is still awaited by the next call.
    pub async fn confirmed(&mut self) -> Result<(), BrokerError> {
        let confirmation =
            bounded_until("publisher confirm", self.deadline, &mut self.confirm).await?;
        check_confirmation(confirmation, &self.target)
    }
}

/// A stream of messages from one queue.
pub struct Inbox {
    consumer: lapin::Consumer,
    channel: Channel,
    queue: String,
    failed: bool,
    trust: Option<Arc<Trust>>,
}

impl Inbox {
    /// The next message; `None` once the consumer has ended (queue deleted, channel or
    /// connection closed).
    pub async fn next(&mut self) -> Option<Incoming> {
        match self.consumer.next().await? {
            Ok(delivery) => Some(Incoming::new(delivery, self.trust.as_deref())),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                self.failed = true;
                None
            }
        }
    }

    /// A message waiting in the queue right now, taken past the consumer's prefetch limit
    /// (`basic.get`); `None` when the queue is empty. Never waits for a message.
    pub async fn try_next(&self) -> Result<Option<Incoming>, BrokerError> {
        let got = bounded(
            "basic.get",
            self.channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions::default()),
        )
        .await?;
        Ok(got.map(|got| Incoming::new(got.delivery, self.trust.as_deref())))
    }

    /// True when the inbox ended because of an error (the channel or connection failed),
    /// not because the broker cancelled the consumer (its queue was deleted).
    pub fn failed(&self) -> bool {
        self.failed || !self.channel.status().connected()
    }
}

/// One delivered message, decoded, waiting to be settled.
pub struct Incoming {
    pub envelope: Result<Envelope, DecodeError>,
    /// The broker delivered this message before to a consumer that did not acknowledge it.
    pub redelivered: bool,
    /// Its signature, when this process holds keys and the signature held.
    pub signature: Option<Signature>,
    acker: lapin::Acker,
}

impl Incoming {
    /// Decodes a delivery; with `trust`, only a message signed with one of its keys.
    fn new(delivery: lapin::message::Delivery, trust: Option<&Trust>) -> Incoming {
        let signature = signature_of(&delivery.properties);
        let checked = match trust {
            Some(trust) => trust
                .verify(&delivery.data, signature.as_ref())
                .map_err(|reason| {
                    let sender = delivery
                        .properties
                        .app_id()
                        .as_ref()
                        .map_or("an unnamed sender".to_owned(), |id| id.to_string());
                    log_refusal(&sender, reason.kind(), &reason);
                    DecodeError::Untrusted(reason)
                }),
            None => Ok(()),
        };
        let verified = trust.is_some() && checked.is_ok();
        Incoming {
            envelope: checked.and_then(|()| Envelope::decode(&delivery.data)),
            redelivered: delivery.redelivered,
            signature: signature.filter(|_| verified),
            acker: delivery.acker,
        }
    }
}

/// The signature in a message's headers, if it has one that reads.
fn signature_of(properties: &BasicProperties) -> Option<Signature> {
    let headers = properties.headers().as_ref()?;
    let text = |name: &str| match headers.inner().get(name)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        _ => None,
    };
    Some(Signature {
        key_id: text(KEY_HEADER)?,
        mac: text(MAC_HEADER)?,
        signed_at_ms: text(SIGNED_AT_HEADER)?.parse().ok()?,
    })
}

/// Logs a refused message, at most once a minute per sender and kind of refusal (`kind`:
/// the reason without what varies in it, such as a job's age): a flood of forged messages
/// must not flood the log. Only the refusals of the last minute are remembered, so senders
/// that name themselves anew each time cannot grow the record without bound either.
pub fn log_refusal(sender: &str, kind: &'static str, reason: &dyn std::fmt::Display) {
    type Logged = std::collections::HashMap<(String, &'static str), std::time::Instant>;
    static LOGGED: std::sync::Mutex<Option<Logged>> = std::sync::Mutex::new(None);
    const QUIET: Duration = Duration::from_secs(60);
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let logged = logged.get_or_insert_with(Default::default);
    let now = std::time::Instant::now();
    logged.retain(|_, at| now.duration_since(*at) < QUIET);
    let key = (sender.to_owned(), kind);
    if logged.contains_key(&key) {
        return;
    }
    logged.insert(key, now);
    tracing::warn!(sender, "refusing a message: {reason} (the same refusal from this sender is not logged again for a minute)");
}

impl Incoming {
    /// The message is handled: the broker forgets it.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        bounded("basic.ack", self.acker.ack(BasicAckOptions::default()))
            .await
            .map(|_| ())
    }

    /// The message and every earlier one of its consumer that is not settled yet are
    /// handled: one acknowledgement for a run of messages, so that a consumer that gets many
    /// at once does not wait for an acknowledgement after each.
    pub async fn ack_through(&self) -> Result<(), BrokerError> {
        let options = BasicAckOptions { multiple: true };
        bounded("basic.ack", self.acker.ack(options))
            .await
            .map(|_| ())
    }

    /// The message is unusable (malformed, foreign): drop it without requeueing, so that it
    /// cannot loop.
    pub async fn discard(&self) -> Result<(), BrokerError> {
        self.nack(false).await
    }

    /// Hand the message back to the broker for another consumer.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        self.nack(true).await
    }

    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        bounded("basic.nack", self.acker.nack(options))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    async fn connect(name: &str) -> Broker {
        Broker::connect(&BrokerSettings::for_tests(), name)
            .await
            .expect("RabbitMQ runs on 127.0.0.1:5672 (or AMQP_HOST:AMQP_PORT)")
    }

    #[tokio::test]
    async fn a_missing_queue_is_not_found() {
        let broker = connect("gorgon-protocol test: missing queue").await;
        let missing = format!("gorgon-rs.test.{}.missing", Uuid::new_v4());
        let error = broker.declare_passive(&missing).await.unwrap_err();
        assert!(error.is_not_found(), "{error}");
        assert!(!broker.queue_exists(&missing).await.unwrap());

        let present = format!("gorgon-rs.test.{}.present", Uuid::new_v4());
        broker
            .declare_queue(&present, QueueLife::Exclusive)
            .await
            .unwrap();
        assert!(broker.queue_exists(&present).await.unwrap());
        // Another connection's exclusive queue (a listener's, seen by an originator) exists
        // while its owner is connected, and not after.
        let other = connect("gorgon-protocol test: another connection").await;
        assert!(other.queue_exists(&present).await.unwrap());
        broker.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while other.queue_exists(&present).await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue outlived its owner"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        other.close().await;
    }

    #[tokio::test]
    async fn many_messages_sent_at_once_all_arrive_in_order_past_the_confirm_window() {
        let broker = connect("gorgon-protocol test: send all").await;
        let queue = format!("gorgon-rs.test.{}.files", Uuid::new_v4());
        let life = QueueLife::Shared {
            unused_expiry: Duration::from_secs(60),
        };
        broker.declare_queue(&queue, life).await.unwrap();
        let job = Uuid::new_v4();
        let count = CONFIRM_WINDOW * 2 + 500;
        let envelopes =
            (0..count).map(|i| Envelope::new(job, crate::Message::file(format!("f{i}"))));
        broker.send_all_to_queue(&queue, envelopes).await.unwrap();
        assert_eq!(
            broker
                .queue_counts(&queue)
                .await
                .unwrap()
                .map(|(ready, _)| ready),
            Some(count as u32)
        );
        let mut inbox = broker.consume(&queue, Some(100)).await.unwrap();
        for i in 0..count {
            let incoming = tokio::time::timeout(Duration::from_secs(10), inbox.next())
                .await
                .expect("the message arrives")
                .expect("the consumer is open");
            let envelope = incoming.envelope.as_ref().unwrap();
            assert_eq!(envelope.message, crate::Message::file(format!("f{i}")));
            incoming.ack().await.unwrap();
        }
        broker.delete_queue(&queue).await.unwrap();
        broker.close().await;
    }

    #[tokio::test]
    async fn a_bind_to_a_missing_exchange_leaves_the_connection_usable() {
        let broker = connect("gorgon-protocol test: bind to a missing exchange").await;
        let queue = broker.declare_private_queue().await.unwrap();
        let missing = format!("gorgon-rs.test.{}.gone", Uuid::new_v4());
        let error = broker.bind(&queue, &missing).await.unwrap_err();
        assert!(error.is_not_found(), "{error}");
        // The publishing channel still works: a listener goes on taking jobs after one whose
        // control exchange was already deleted.
        let exchange = format!("gorgon-rs.test.{}.here", Uuid::new_v4());
        broker.declare_fanout(&exchange).await.unwrap();
        broker.bind(&queue, &exchange).await.unwrap();
        let mut inbox = broker.consume(&queue, None).await.unwrap();
        let envelope = Envelope::new(Uuid::new_v4(), crate::Message::file("a.rb"));
        broker.publish(&exchange, &envelope).await.unwrap();
        let incoming = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .expect("the message arrives")
            .expect("the consumer is open");
        assert_eq!(incoming.envelope.unwrap(), envelope);
        assert!(broker.exchange_exists(&exchange).await.unwrap());
        broker.delete_exchange(&exchange).await.unwrap();
        assert!(!broker.exchange_exists(&exchange).await.unwrap());
        assert!(!broker.exchange_exists(&missing).await.unwrap());
        broker.close().await;
    }

    #[tokio::test]
    async fn another_refusal_is_not_not_found_even_when_its_text_says_so() {
        let broker = connect("gorgon-protocol test: refused").await;
        // RabbitMQ refuses (403 ACCESS_REFUSED) to declare a queue in the reserved `amq.`
        // namespace, and its reply text quotes the name, NOT_FOUND included.
        let reserved = format!("amq.gorgon-rs.test.{}.NOT_FOUND", Uuid::new_v4());
        let error = broker
            .declare_queue(&reserved, QueueLife::Exclusive)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("NOT_FOUND"), "{error}");
        assert!(!error.is_not_found(), "{error}");
        broker.close().await;
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_not_not_found() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = BrokerSettings {
            host: "127.0.0.1".into(),
            port,
            ..BrokerSettings::default()
        };
        let error = match Broker::connect(&nowhere, "gorgon-protocol test: nowhere").await {
            Ok(_) => panic!("connected to {}", nowhere.address()),
            Err(error) => error,
        };
        assert!(matches!(error, BrokerError::Connect { .. }), "{error}");
        assert!(!error.is_not_found(), "{error}");
    }

    #[test]
    fn uri_escapes_credentials_and_the_default_vhost() {
        let settings = BrokerSettings {
            username: "me".into(),
            password: "p@ss/word".into(),
            ..BrokerSettings::default()
        };
        assert_eq!(
            uri(&settings, "127.0.0.1", 5672),
            "amqp://me:p%40ss%2fword@127.0.0.1:5672/%2f?frame_max=16384&heartbeat=3"
        );
    }
}
