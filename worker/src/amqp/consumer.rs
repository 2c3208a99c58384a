//! Consuming a queue: deliveries that ride out connection recoveries, and
//! what Kiln reads of a message.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel};

use super::broker::Broker;
use crate::error::{Error, Result};

impl Broker {
    /// Starts consuming `queue` on a channel of its own with at most
    /// `prefetch` unacknowledged deliveries.
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Consumer> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let inner = ch
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer {
            channel: ch,
            inner,
            queue: queue.to_owned(),
            tag: tag.to_owned(),
            dead: false,
        })
    }
}

/// A queue consumer that rides out connection recoveries (lapin replays
/// it on the new connection, possibly to another node of the cluster) and
/// cancels by the broker (`basic.cancel`: it consumes again).
pub struct Consumer {
    pub(super) channel: Channel,
    pub(super) inner: lapin::Consumer,
    pub(super) queue: String,
    pub(super) tag: String,
    /// Its channel could not be recovered: it yields nothing any more. Set
    /// before `next` returns `None`, so that a `next` dropped on the way
    /// (a `select!` taking another branch) does not leave a caller waiting
    /// on a dead stream for ever.
    pub(super) dead: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next delivery; `None` when the consumer cannot consume any more
    /// (its channel cannot be recovered).
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            if self.dead {
                return None;
            }
            let Some(next) = self.inner.next().await else {
                // The stream ends only when the broker cancelled the
                // consumer (`basic.cancel`: the queue's leader moved, the
                // queue was deleted): Kiln's own cancel closes the channel
                // instead. Consume again.
                if !self.consume_again().await {
                    self.dead = true;
                    return None;
                }
                continue;
            };
            match next {
                Ok(d) => return Some(Incoming::from_delivery(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer interrupted; waiting for recovery");
                    if let Err(e) = self.channel.wait_for_recovery(e).await {
                        tracing::error!(error = %e, "consumer cannot recover");
                        self.dead = true;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return None;
                    }
                }
            }
        }
    }

    /// After a `basic.cancel` from the broker: consumes the queue again on
    /// the same channel (waiting out a recovery of the channel), paced like
    /// the worker's reconnects. False when the channel cannot come back.
    async fn consume_again(&mut self) -> bool {
        let mut waits = backon::BackoffBuilder::build(crate::retry::amqp_connect());
        loop {
            tracing::warn!(queue = %self.queue, "consumer cancelled by the broker; consuming again");
            let consumed = self
                .channel
                .basic_consume(
                    self.queue.as_str().into(),
                    self.tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await;
            match consumed {
                Ok(inner) => {
                    self.inner = inner;
                    return true;
                }
                Err(e) => {
                    if let Err(e) = self.channel.wait_for_recovery(e).await {
                        tracing::error!(queue = %self.queue, error = %e, "consumer cannot recover");
                        return false;
                    }
                }
            }
            tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }

    /// Stops consuming: the broker delivers nothing more on this channel and
    /// requeues what was not acked when the channel closes.
    pub async fn cancel(self) {
        super::broker::close_channel(&self.channel, "consumer stopped").await;
    }
}

/// A received message, with what Kiln reads of its properties.
pub struct Incoming {
    pub body: Vec<u8>,
    /// The AMQP `user_id` property (verified by RabbitMQ): the tenant.
    pub user_id: Option<String>,
    /// W3C `traceparent` header, if any.
    pub traceparent: Option<String>,
    pub content_type: Option<String>,
    pub redelivered: bool,
    pub routing_key: String,
    pub(super) headers: FieldTable,
    acker: Acker,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("bytes", &self.body.len())
            .field("user_id", &self.user_id)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

fn header_str(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl Incoming {
    pub(super) fn from_delivery(d: lapin::message::Delivery) -> Self {
        let headers = d.properties.headers().clone().unwrap_or_default();
        Self {
            user_id: d
                .properties
                .user_id()
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            traceparent: header_str(&headers, "traceparent"),
            content_type: d
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            redelivered: d.redelivered,
            routing_key: d.routing_key.as_str().to_owned(),
            body: d.data,
            headers,
            acker: d.acker,
        }
    }

    /// String headers of the message (for `kiln watch` and tests).
    pub fn string_headers(&self) -> BTreeMap<String, String> {
        self.headers
            .inner()
            .keys()
            .filter_map(|k| {
                header_str(&self.headers, k.as_str()).map(|v| (k.as_str().to_owned(), v))
            })
            .collect()
    }

    /// Acknowledges: the work is safe elsewhere.
    pub async fn ack(&self) -> Result<()> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Hands the message back to the queue (counts towards the delivery
    /// limit of the quorum queue).
    pub async fn requeue(&self) -> Result<()> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
        Ok(())
    }
}

/// Whether `e` is the broker's 404 `NOT_FOUND` (a queue it does not have:
/// a lone broker that came back without its data).
pub fn is_not_found(e: &Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(l) = s.downcast_ref::<lapin::Error>()
            && let lapin::ErrorKind::ProtocolError(p) = l.kind()
            && matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        {
            return true;
        }
        source = s.source();
    }
    false
}
