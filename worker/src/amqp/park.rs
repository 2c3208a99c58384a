//! Parking a delivery: a durable "try again later" in RabbitMQ itself.
//!
//! RabbitMQ closes a channel whose delivery stays unacknowledged longer
//! than its `consumer_timeout` (30 minutes by default; Debian 12's 3.10 has
//! no per-queue override), taking every delivery of that channel with it.
//! A request that must wait longer than a bound below that timeout (a
//! quota wait, another worker's acceptance) is therefore *parked*: a copy
//! is published, with confirms, to the quorum queue `<prefix>.parked`
//! with a per-message TTL of the delay; when the TTL passes, the queue
//! dead-letters it (at-least-once) to `<prefix>.requests` with its routing
//! key, back into the queue it came from. Only once the copy is confirmed
//! is the original acked, so a worker or Redis dying at any point leaves
//! the request in one of the two queues (at worst in both, which the id
//! rules make a duplicate).
//!
//! The copy keeps the body, content type, headers (`traceparent`) and the
//! `user_id` of the original. RabbitMQ checks `user_id` against the
//! publishing connection's user: a worker that parks another user's
//! request must connect as a user with the `impersonator` tag. The copy is
//! a new message, so its delivery count (the quorum queue's
//! `x-delivery-limit`) starts again: parking never brings a request closer
//! to the dead-letter queue.

use std::time::Duration;

use backon::Retryable;
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use super::broker::Broker;
use super::consumer::Incoming;
use super::names::BUILD_KEY;
use crate::error::{Error, Result};

/// Header of a parked copy: how many times the request was parked (for
/// logs and metrics; it decides nothing).
pub const PARKED_HEADER: &str = "kiln-parked";

impl Broker {
    /// Declares `<prefix>.parked` (see the module's docs). Idempotent; part
    /// of the topology.
    pub(super) async fn declare_parked(&self, ch: &lapin::Channel) -> Result<()> {
        let n = &self.names;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(n.requests().into()),
        );
        // At-least-once dead-lettering (quorum queues, RabbitMQ 3.10+): the
        // message leaves the parked queue only once the target confirmed
        // it; it needs reject-publish overflow.
        // Back with the builds' routing key: a copy is published through
        // the default exchange (keyed by this queue's name, reaching no
        // other binding), and dead-lettering would otherwise keep that key.
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(BUILD_KEY.into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        ch.queue_declare(
            n.parked().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        // Bound to nothing: only `park` publishes there.
        Ok(())
    }

    /// Parks `delivery` for `delay`: publishes its copy to `<prefix>.parked`
    /// (confirmed), then acks it. An error leaves the original unacked (and
    /// at worst a copy parked as well: a duplicate the id rules absorb).
    pub async fn park(&self, delivery: &Incoming, delay: Duration) -> Result<()> {
        let mut headers = delivery.headers.clone();
        let times = match headers.inner().get(PARKED_HEADER) {
            Some(AMQPValue::LongLongInt(n)) => n.saturating_add(1),
            _ => 1,
        };
        headers.insert(PARKED_HEADER.into(), AMQPValue::LongLongInt(times));
        let millis = delay.as_millis().max(1).to_string();
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
            .with_expiration(millis.into());
        if let Some(ct) = &delivery.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        if let Some(user) = &delivery.user_id {
            props = props.with_user_id(user.as_str().into());
        }
        let parked = self.names.parked();
        (|| self.publish_once("", &parked, &delivery.body, props.clone(), true))
            .retry(crate::retry::amqp_publish().with_max_times(20))
            .when(Error::is_transient)
            .await?;
        delivery.ack().await
    }
}
