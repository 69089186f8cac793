//! Consuming a queue or a stream: an [`Inbox`] of [`Incoming`] messages, each decoded and,
//! when the cluster has keys, checked for a signature with one of them before anything reads
//! it; settled by hand (ack, discard, requeue).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use super::{bounded, log_refusal, Broker, BrokerError};
use crate::message::{DecodeError, Envelope};
use crate::signing::{Signature, Trust, KEY_HEADER, MAC_HEADER, SIGNED_AT_HEADER};

/// How many messages of a stream a reader holds unacknowledged (streams need a prefetch).
const STREAM_PREFETCH: u16 = 500;

/// How long [`Broker::consume_stream`] tries again a consume that RabbitMQ refuses because
/// the stream, declared a moment ago, has not started yet (seen for up to a second or two
/// on a node's first stream).
pub const STREAM_START_LIMIT: Duration = Duration::from_secs(15);

impl Broker {
    /// Starts consuming a queue on a channel of its own. `prefetch` limits how many
    /// unacknowledged messages the broker hands this consumer at once.
    pub async fn consume(&self, queue: &str, prefetch: Option<u16>) -> Result<Inbox, BrokerError> {
        self.consume_with(queue, prefetch, FieldTable::default())
            .await
    }

    /// Reads stream `stream` (see [`Broker::declare_stream`]) from its first message on; each
    /// message must be acknowledged for more to come.
    ///
    /// A stream declared a moment ago may not have started yet: on a node that never held a
    /// stream, RabbitMQ refuses a consume with PRECONDITION_FAILED ("does not have a replica
    /// on the local node") or INTERNAL_ERROR (its log says `stream_not_found`, and it closes
    /// the connection). Such a refusal is tried again on a fresh channel (on a fresh
    /// connection that replaces this one, when it was closed) for up to
    /// [`STREAM_START_LIMIT`]; any other refusal, or one that lasts longer, is the error.
    pub async fn consume_stream(&mut self, stream: &str) -> Result<Inbox, BrokerError> {
        let deadline = tokio::time::Instant::now() + STREAM_START_LIMIT;
        let mut wait = Duration::from_millis(50);
        loop {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
            let refused = match self
                .consume_with(stream, Some(STREAM_PREFETCH), arguments)
                .await
            {
                Err(error) if error.is_internal() || error.is_precondition_failed() => error,
                consumed => return consumed,
            };
            let next = tokio::time::Instant::now() + wait;
            if next >= deadline {
                return Err(refused);
            }
            tracing::debug!(%stream, error = %refused, "the stream has not started yet; consuming again in {wait:?}");
            tokio::time::sleep_until(next).await;
            wait = (wait * 2).min(Duration::from_secs(1));
            // Each try opens a fresh channel; a hard error closed the connection too (its
            // state may not say so yet). The old one closes once its last channel is dropped.
            if refused.is_internal() || !self.is_connected() {
                *self = Broker::connect_like(self).await?;
            }
        }
    }

    async fn consume_with(
        &self,
        queue: &str,
        prefetch: Option<u16>,
        arguments: FieldTable,
    ) -> Result<Inbox, BrokerError> {
        let channel = bounded("channel.open", self.connection.create_channel()).await?;
        // The prefetch and the consume go together, one round trip for both: the broker
        // takes a channel's methods in order, so the prefetch holds from the first delivery.
        let qos = async {
            match prefetch {
                Some(prefetch) => {
                    let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
                    bounded("basic.qos", qos).await
                }
                None => Ok(()),
            }
        };
        let consume = start_consumer(&channel, queue, arguments, self.trust.clone());
        let ((), inbox) = tokio::try_join!(qos, consume)?;
        Ok(inbox)
    }

    /// A channel with its prefetch set, to consume a queue on later
    /// ([`ConsumerChannel::consume`]): a host that will consume once something else is
    /// ready (its tree) pays the channel's two round trips to the broker meanwhile.
    pub async fn consumer_channel(&self, prefetch: u16) -> Result<ConsumerChannel, BrokerError> {
        let channel = bounded("channel.open", self.connection.create_channel()).await?;
        let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
        bounded("basic.qos", qos).await?;
        Ok(ConsumerChannel {
            channel,
            trust: self.trust.clone(),
        })
    }
}

/// A channel opened and given its prefetch by [`Broker::consumer_channel`], not consuming
/// yet.
pub struct ConsumerChannel {
    channel: Channel,
    trust: Option<Arc<Trust>>,
}

impl ConsumerChannel {
    /// Starts consuming `queue` (one round trip).
    pub async fn consume(self, queue: &str) -> Result<Inbox, BrokerError> {
        start_consumer(&self.channel, queue, FieldTable::default(), self.trust).await
    }
}

/// Starts consuming `queue` on `channel`: its inbox.
async fn start_consumer(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    trust: Option<Arc<Trust>>,
) -> Result<Inbox, BrokerError> {
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
        channel: channel.clone(),
        queue: queue.to_owned(),
        failed: false,
        ended: false,
        trust,
    })
}

impl Broker {
    /// Takes one message off `queue` (`basic.get` on a channel of its own, no consumer), as
    /// any other client of the broker may: for tools and tests that check how gorgon-rs
    /// copes with a message taken away. `None` when the queue is empty.
    pub async fn take_one(&self, queue: &str) -> Result<Option<Incoming>, BrokerError> {
        let channel = bounded("channel.open", self.connection.create_channel()).await?;
        let got = basic_get(&channel, queue, self.trust.as_deref()).await?;
        // lapin closes a channel once its last handle goes, and a message can be settled
        // only on the channel it came on: the message keeps it.
        Ok(got.map(|incoming| Incoming {
            _channel: Some(Box::new(channel)),
            ..incoming
        }))
    }
}

/// A message waiting in `queue` right now (`basic.get`), decoded; `None` when it is empty.
async fn basic_get(
    channel: &Channel,
    queue: &str,
    trust: Option<&Trust>,
) -> Result<Option<Incoming>, BrokerError> {
    let got = bounded(
        "basic.get",
        channel.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await?;
    Ok(got.map(|got| Incoming::new(got.delivery, trust)))
}

/// A stream of messages from one queue.
pub struct Inbox {
    consumer: lapin::Consumer,
    channel: Channel,
    queue: String,
    failed: bool,
    /// The consumer has ended (the broker cancelled it, or it failed).
    ended: bool,
    trust: Option<Arc<Trust>>,
}

impl Inbox {
    /// The next message; `None` once the consumer has ended (queue deleted, channel or
    /// connection closed).
    pub async fn next(&mut self) -> Option<Incoming> {
        let Some(next) = self.consumer.next().await else {
            self.ended = true;
            return None;
        };
        match next {
            Ok(delivery) => Some(Incoming::new(delivery, self.trust.as_deref())),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                self.failed = true;
                self.ended = true;
                None
            }
        }
    }

    /// A message waiting in the queue right now, taken past the consumer's prefetch limit
    /// (`basic.get`); `None` when the queue is empty. Never waits for a message.
    pub async fn try_next(&self) -> Result<Option<Incoming>, BrokerError> {
        basic_get(&self.channel, &self.queue, self.trust.as_deref()).await
    }

    /// Stops consuming and closes the inbox's channel, waiting for the broker to confirm
    /// both, so that nothing of the channel is left to close after its connection (which
    /// lapin would report as an error on a clean end). Unsettled messages go back to the
    /// queue. A channel that has already ended needs nothing more, and a consumer that the
    /// broker has cancelled (its queue was deleted, as at a job's end) only its channel's
    /// close: a round trip less for a far host.
    pub async fn close(mut self) {
        if !self.channel.status().connected() {
            return;
        }
        let cancelled = self.ended || matches!(self.consumer.next().now_or_never(), Some(None));
        if !cancelled {
            let tag = self.consumer.tag();
            let _ = bounded(
                "basic.cancel",
                self.channel
                    .basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await;
        }
        let _ = bounded("channel.close", self.channel.close(200, "OK".into())).await;
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
    /// The channel it came on, for a message taken without a consumer
    /// ([`Broker::take_one`]), whose channel nothing else keeps open.
    _channel: Option<Box<Channel>>,
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
            _channel: None,
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
    use crate::broker::testing::{connect, test_queue};
    use uuid::Uuid;

    /// The next message of `inbox`, failing the test after 10 s.
    async fn next(inbox: &mut Inbox) -> Incoming {
        tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .expect("a message in time")
            .expect("the consumer is open")
    }

    #[tokio::test]
    async fn a_closed_inbox_leaves_no_consumer_and_gives_its_messages_back() {
        let broker = connect("gorgon-protocol test: close an inbox").await;
        let queue = test_queue(&broker).await;
        let envelope = Envelope::new(Uuid::new_v4(), crate::Message::file("a"));
        broker.send_to_queue(&queue, &envelope).await.unwrap();
        let mut inbox = broker.consume(&queue, Some(1)).await.unwrap();
        let unsettled = next(&mut inbox).await;
        inbox.close().await;
        let counts = broker.queue_counts(&queue).await.unwrap();
        let (_, consumers) = counts.expect("the queue exists");
        assert_eq!(consumers, 0);
        drop(unsettled);
        let mut again = broker.consume(&queue, Some(1)).await.unwrap();
        let back = next(&mut again).await;
        assert!(back.redelivered);
        assert_eq!(back.envelope.unwrap().message, crate::Message::file("a"));
        broker.delete_queue(&queue).await.unwrap();
        broker.close().await;
    }
}
