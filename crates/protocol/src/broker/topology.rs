//! The broker's topology as gorgon-rs uses it: queues (of each [`QueueLife`]), fanout
//! exchanges and streams; declaring, binding, deleting, and asking whether they exist and
//! how many messages and consumers a queue has.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::{bounded, Broker, BrokerError, Inbox};
use crate::connection::QueueType;

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

impl Broker {
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
    /// offset; RabbitMQ 3.9+) whose messages are dropped after `max_age` (e.g. `"1D"`), and
    /// waits until RabbitMQ has started it.
    ///
    /// The declare returns before the stream's writer runs; until it does, on a node that
    /// never held a stream, a publish to it crashes the channel and a consume is refused,
    /// both with INTERNAL_ERROR, which closes the connection. So the stream is read once
    /// ([`Broker::consume_stream`], which tries again on a fresh connection that replaces
    /// this one, within [`super::STREAM_START_LIMIT`]) before anything else uses it.
    pub async fn declare_stream(&mut self, name: &str, max_age: &str) -> Result<(), BrokerError> {
        self.declare_and_read_stream(name, max_age)
            .await?
            .close()
            .await;
        Ok(())
    }

    /// [`Broker::declare_stream`] that keeps reading the stream: the reader it starts with
    /// (from the stream's first message on), for whoever reads it next, with no second
    /// consume's round trips.
    pub async fn declare_and_read_stream(
        &mut self,
        name: &str,
        max_age: &str,
    ) -> Result<Inbox, BrokerError> {
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
        self.declare_with(name, options, arguments).await?;
        self.consume_stream(name).await
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
            // Nobody waits for the close's answer: a round trip saved for a far host.
            tokio::spawn(async move {
                let _ = bounded("channel.close", channel.close(200, "bye".into())).await;
            });
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::testing::connect;
    use crate::message::Envelope;
    use uuid::Uuid;

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
}
