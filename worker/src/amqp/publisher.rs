//! Publishing with confirms: events (persistent, mandatory, retried until
//! confirmed: a nack or a lost connection is an error, never a success),
//! the client's requests, and dead-lettering with `kiln-error`.

use backon::Retryable;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

use super::broker::Broker;
use super::consumer::Incoming;
use crate::error::{Error, Result};
use kiln_protocol::{ERROR_HEADER, MAX_TEXT_BYTES, bounded};

/// One event ready to publish.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub routing_key: String,
    pub message_id: String,
    pub build_id: String,
    pub phase: String,
    pub traceparent: Option<String>,
    pub body: Vec<u8>,
}

/// Whether a confirmed publish reached at least one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Yes,
    /// Confirmed, but no queue is bound for it (nobody subscribes).
    NoQueue,
}

impl Broker {
    /// Publishes one event, persistent and mandatory, and waits for the
    /// broker's confirm. Retries (after channel recovery) until confirmed:
    /// a nack or a lost connection is an error to retry, never a success.
    pub async fn publish_event(&self, event: &OutgoingEvent) -> Result<Routed> {
        let mut headers = FieldTable::default();
        headers.insert(
            "kiln-build-id".into(),
            AMQPValue::LongString(event.build_id.clone().into()),
        );
        headers.insert(
            "kiln-phase".into(),
            AMQPValue::LongString(event.phase.clone().into()),
        );
        if let Some(tp) = &event.traceparent {
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(tp.clone().into()),
            );
        }
        let props = BasicProperties::default()
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(event.message_id.clone().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let exchange = self.names.events();
        (|| self.publish_once(&exchange, &event.routing_key, &event.body, props.clone(), true))
            .retry(crate::retry::amqp_publish())
            .when(Error::is_transient)
            .notify(|e, d| {
                tracing::warn!(build_id = %event.build_id, error = %e, retry_in = ?d, "event publish failed; retrying");
            })
            .await
    }

    /// Publishes a request (the client's `kiln submit` / `kiln cancel`):
    /// persistent, mandatory, confirmed. An unroutable request is an error.
    pub async fn publish_request(
        &self,
        routing_key: &str,
        body: &[u8],
        user_id: Option<&str>,
        traceparent: Option<&str>,
    ) -> Result<()> {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(user) = user_id {
            props = props.with_user_id(user.into());
        }
        if let Some(tp) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
            props = props.with_headers(headers);
        }
        match self
            .publish_once(&self.names.requests(), routing_key, body, props, true)
            .await?
        {
            Routed::Yes => Ok(()),
            Routed::NoQueue => Err(Error::amqp(format!(
                "the broker could not route the message: no queue is bound to exchange {} with key {routing_key:?} (is a worker with prefix {:?} running?)",
                self.names.requests(),
                self.names.prefix
            ))),
        }
    }

    pub(super) async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> Result<Routed> {
        let ch = self.publisher.read().await.clone();
        let result = async {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await?;
            confirm.await
        }
        .await;
        match result {
            Ok(Confirmation::Ack(None)) => Ok(Routed::Yes),
            Ok(Confirmation::Ack(Some(_))) => Ok(Routed::NoQueue),
            Ok(Confirmation::Nack(_)) => {
                // The broker could not take the message on this channel. A
                // channel keeps what it learnt of a quorum queue's leader:
                // opened while the queue re-elected after its leader's node
                // died, it nacked every later publish for minutes on
                // RabbitMQ 3.10, though the queue had a new leader within a
                // second (tests/tests/cluster.rs). The retry goes out on a
                // fresh channel, which asks where the leader is now.
                self.renew_publisher(&ch).await;
                Err(Error::NotConfirmed(format!(
                    "{exchange}/{routing_key} (nacked)"
                )))
            }
            Ok(Confirmation::NotRequested) => Err(Error::NotConfirmed(format!(
                "{exchange}/{routing_key} (confirms not enabled)"
            ))),
            Err(e) => {
                // Wait for lapin's recovery; if the channel cannot come back
                // (closed by the broker), open a fresh confirm channel.
                if ch.wait_for_recovery(e.clone()).await.is_err() && self.is_connected() {
                    self.renew_publisher(&ch).await;
                }
                Err(e.into())
            }
        }
    }

    /// Replaces the publisher channel `used` with a fresh confirm channel,
    /// unless another publish already did. lapin closes the old one when
    /// its last handle goes, so publishes still waiting on it finish first.
    async fn renew_publisher(&self, used: &lapin::Channel) {
        let mut slot = self.publisher.write().await;
        if slot.id() == used.id()
            && let Ok(fresh) = Self::confirm_channel(&self.conn).await
        {
            *slot = fresh;
        }
    }

    /// Copies a message to the dead-letter exchange with `kiln-error: reason`
    /// (confirmed), then acks the original. If the copy cannot be confirmed
    /// the original is not acked, so nothing is lost. `reason` should come
    /// from [`kiln_protocol::error_header`]; it is bounded here once more
    /// because AMQP content headers must fit one frame: an unbounded header
    /// would make the copy unpublishable and the message undead-letterable.
    pub async fn dead_letter(&self, delivery: &Incoming, reason: &str) -> Result<()> {
        let mut headers = delivery.headers.clone();
        headers.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(bounded(reason, MAX_TEXT_BYTES).into_owned().into()),
        );
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ct) = &delivery.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        let dead = self.names.dead();
        (|| {
            self.publish_once(
                &dead,
                &delivery.routing_key,
                &delivery.body,
                props.clone(),
                false,
            )
        })
        // Bounded, unlike the other retries: giving up leaves the original
        // unacked, so the broker redelivers it and nothing is lost.
        .retry(crate::retry::amqp_publish().with_max_times(20))
        .when(Error::is_transient)
        .await?;
        delivery.ack().await
    }
}
