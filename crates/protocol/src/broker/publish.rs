//! Publishing envelopes: signed when the cluster has keys, mandatory, and awaited through
//! publisher confirms, one at a time or many in flight ([`Unconfirmed`]).

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::{bounded, bounded_until, Broker, BrokerError, CALL_TIMEOUT};
use crate::message::Envelope;
use crate::signing::{Signature, KEY_HEADER, MAC_HEADER, SIGNED_AT_HEADER};

/// How many messages of [`Broker::send_all_to_queue`] may wait for their confirm at once.
const CONFIRM_WINDOW: usize = 1000;

impl Broker {
    /// Publishes to an exchange and waits until the broker has taken the message.
    /// A message that no queue takes is an error ([`BrokerError::Unroutable`]).
    pub async fn publish(&self, exchange: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        self.publish_routed(exchange, "", envelope, exchange).await
    }

    /// Publishes to an exchange and waits until the broker has taken the message, where no
    /// queue taking it is normal (an announcement that nobody may be waiting for): such a
    /// message is dropped by the broker, not returned, and is no error.
    pub async fn offer(&self, exchange: &str, envelope: &Envelope) -> Result<(), BrokerError> {
        let confirm = self.basic_publish(exchange, "", envelope, false).await?;
        taken(confirm, exchange).await
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
        taken(confirm, exchange).await
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
}

/// Waits for the confirm of a message published without `mandatory` (one that no queue
/// takes is dropped, which is not an error): an error only when the broker rejected it.
async fn taken(confirm: lapin::PublisherConfirm, target: &str) -> Result<(), BrokerError> {
    let confirmation = bounded("publisher confirm", confirm).await?;
    if confirmation.is_nack() {
        return Err(BrokerError::Nacked(target.to_owned()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::testing::{connect, test_queue};
    use std::time::Duration;
    use uuid::Uuid;

    #[tokio::test]
    async fn an_offer_nobody_takes_is_no_error_where_a_publish_is_unroutable() {
        let broker = connect("gorgon-protocol test: offer").await;
        let exchange = format!("gorgon-rs.test.{}.announcements", Uuid::new_v4());
        broker.declare_fanout(&exchange).await.unwrap();
        let envelope = Envelope::new(Uuid::new_v4(), crate::Message::file("a"));
        broker.offer(&exchange, &envelope).await.unwrap();
        let published = broker.publish(&exchange, &envelope).await;
        assert!(
            matches!(published, Err(BrokerError::Unroutable(_))),
            "{published:?}"
        );
        broker.delete_exchange(&exchange).await.unwrap();
        broker.close().await;
    }

    #[tokio::test]
    async fn many_messages_sent_at_once_all_arrive_in_order_past_the_confirm_window() {
        let broker = connect("gorgon-protocol test: send all").await;
        let queue = test_queue(&broker).await;
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
}
