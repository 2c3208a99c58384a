//! The client's subscription: an exclusive, auto-delete queue bound to the
//! events exchange (`kiln wait`, `kiln watch`, tests).

use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use super::broker::Broker;
use super::consumer::{Consumer, Incoming};
use crate::error::Result;

/// A plain AMQP subscriber to the events exchange, for the client and tests.
pub struct EventSubscription {
    channel: Channel,
    consumer: Consumer,
    queue: String,
}

impl std::fmt::Debug for EventSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscription")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Binds an exclusive, auto-delete queue to the events exchange with the
    /// given binding keys (`build.succeeded.alice`, `#`, ...) and consumes it
    /// with auto-ack semantics handled by the caller.
    pub async fn subscribe_events(&self, keys: &[&str]) -> Result<EventSubscription> {
        self.subscribe_events_optional(keys, &[]).await
    }

    /// [`Broker::subscribe_events`], plus `optional` keys bound if the
    /// broker allows it: a refused binding (ACCESS_REFUSED under topic
    /// permissions) closes the channel it was made on, so they are bound
    /// on a channel of their own and a refusal leaves the subscription as
    /// it was. The queue is exclusive to the connection, so any of its
    /// channels may bind it.
    pub async fn subscribe_events_optional(
        &self,
        keys: &[&str],
        optional: &[&str],
    ) -> Result<EventSubscription> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = q.name().as_str().to_owned();
        for key in keys {
            ch.queue_bind(
                queue.clone().into(),
                self.names.events().into(),
                ShortString::from(*key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        if !optional.is_empty() {
            self.bind_optional(&queue, optional).await;
        }
        ch.basic_qos(1000, BasicQosOptions::default()).await?;
        let inner = ch
            .basic_consume(
                queue.clone().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(EventSubscription {
            channel: ch.clone(),
            consumer: Consumer {
                channel: ch,
                inner,
                queue: queue.clone(),
                tag: String::new(),
            },
            queue,
        })
    }
}

impl Broker {
    async fn bind_optional(&self, queue: &str, keys: &[&str]) {
        let ch = match self.conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::debug!(error = %e, "no channel for the optional bindings");
                return;
            }
        };
        for key in keys {
            let bound = ch
                .queue_bind(
                    queue.into(),
                    self.names.events().into(),
                    ShortString::from(*key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await;
            if let Err(e) = bound {
                // The channel is closed by the refusal: the rest would fail
                // the same way (they share the tenant word).
                tracing::debug!(error = %e, key, "optional binding refused");
                return;
            }
        }
        super::broker::close_channel(&ch, "bound").await;
    }
}

impl EventSubscription {
    /// The next event message (acked on receipt: a subscriber's own queue).
    pub async fn next(&mut self) -> Option<Incoming> {
        let msg = self.consumer.next().await?;
        // The queue is this subscriber's own and auto-deleted: an ack that
        // fails costs at most a redelivery on the same subscription.
        let _ = msg.ack().await;
        Some(msg)
    }

    pub async fn close(self) {
        super::broker::close_channel(&self.channel, "done").await;
    }
}
