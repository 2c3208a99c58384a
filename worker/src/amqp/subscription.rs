//! The client's subscription: an exclusive, auto-delete queue bound to the
//! events exchange (`kiln wait`, `kiln watch`, tests), on a connection of
//! its own. When that connection is lost (its node died, the broker
//! restarted) the queue is gone with it: the subscription connects again
//! (to the next node of the list), declares a new queue with the same
//! bindings and goes on. Events published in between reached no queue of
//! its and are missed; [`EventSubscription::gaps`] counts such gaps, so
//! that `kiln wait` reads the build's record again at once.

use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ConnectionProperties};

use super::broker::Broker;
use super::consumer::{Consumer, Incoming};
use super::nodes::Nodes;
use crate::error::Result;

/// How long a subscription that lost its connection tries to subscribe
/// again before it ends (`next` returns `None`).
pub const RESUBSCRIBE_FOR: Duration = Duration::from_secs(60);

/// A plain AMQP subscriber to the events exchange, for the client and tests.
pub struct EventSubscription {
    /// The subscription's own connection, without lapin's recovery (its
    /// server-named queue could not be declared again under the same name):
    /// a lost one is replaced whole.
    broker: Broker,
    channel: Channel,
    consumer: Consumer,
    queue: String,
    keys: Vec<String>,
    optional: Vec<String>,
    /// The connection name of the broker it was made from.
    name: String,
    gaps: u32,
    /// Since when it has been trying to subscribe again.
    lost_since: Option<Instant>,
}

impl std::fmt::Debug for EventSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscription")
            .field("queue", &self.queue)
            .field("gaps", &self.gaps)
            .finish_non_exhaustive()
    }
}

/// A connection for a subscription: the nodes of `nodes`, each tried twice
/// at most (as the client's), no recovery.
async fn connect_own(nodes: &Nodes, prefix: &str, name: &str) -> Result<Broker> {
    Broker::connect_with(
        nodes,
        prefix,
        &format!("{name} (events)"),
        ConnectionProperties::default(),
        crate::retry::amqp_connect_client(nodes.len()),
    )
    .await
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
    /// it was. The queue is exclusive to the subscription's connection, so
    /// any of its channels may bind it.
    pub async fn subscribe_events_optional(
        &self,
        keys: &[&str],
        optional: &[&str],
    ) -> Result<EventSubscription> {
        let own = connect_own(&self.nodes, &self.names.prefix, &self.connection_name).await?;
        let owned = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect();
        EventSubscription::open(own, owned(keys), owned(optional), &self.connection_name).await
    }
}

impl EventSubscription {
    async fn open(
        broker: Broker,
        keys: Vec<String>,
        optional: Vec<String>,
        name: &str,
    ) -> Result<Self> {
        match Self::declare(&broker, &keys, &optional).await {
            Ok((channel, consumer, queue)) => Ok(Self {
                broker,
                channel,
                consumer,
                queue,
                keys,
                optional,
                name: name.to_owned(),
                gaps: 0,
                lost_since: None,
            }),
            Err(e) => {
                broker.close().await;
                Err(e)
            }
        }
    }

    async fn declare(
        broker: &Broker,
        keys: &[String],
        optional: &[String],
    ) -> Result<(Channel, Consumer, String)> {
        let ch = broker.conn.create_channel().await?;
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
                broker.names.events().into(),
                ShortString::from(key.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        if !optional.is_empty() {
            broker.bind_optional(&queue, optional).await;
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
        let consumer = Consumer {
            channel: ch.clone(),
            inner,
            queue: queue.clone(),
            tag: String::new(),
            dead: false,
        };
        Ok((ch, consumer, queue))
    }

    /// How many times the subscription lost its connection and subscribed
    /// again: events published during each gap were missed.
    pub fn gaps(&self) -> u32 {
        self.gaps
    }

    /// Subscribes again on a new connection, within [`RESUBSCRIBE_FOR`] of
    /// the loss. Safe to cancel (the next call goes on where it stopped).
    async fn resubscribe(&mut self) -> bool {
        let since = *self.lost_since.get_or_insert_with(|| {
            tracing::warn!(queue = %self.queue, "event subscription lost its connection; subscribing again (events published meanwhile are missed)");
            Instant::now()
        });
        let mut waits = backon::BackoffBuilder::build(crate::retry::amqp_connect());
        while since.elapsed() < RESUBSCRIBE_FOR {
            let nodes = self.broker.nodes.clone();
            let opened = match connect_own(&nodes, &self.broker.names.prefix, &self.name).await {
                Ok(own) => {
                    Self::open(own, self.keys.clone(), self.optional.clone(), &self.name).await
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(mut new) => {
                    new.gaps = self.gaps + 1;
                    tracing::warn!(queue = %new.queue, gaps = new.gaps, "event subscription subscribed again");
                    // The old connection is dead: nothing to close politely.
                    *self = new;
                    return true;
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe again yet"),
            }
            tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(5))).await;
        }
        tracing::error!("event subscription could not subscribe again within {RESUBSCRIBE_FOR:?}");
        false
    }
}

impl Broker {
    async fn bind_optional(&self, queue: &str, keys: &[String]) {
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
                    ShortString::from(key.as_str()),
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
    /// After a lost connection it subscribes again first; `None` when it
    /// cannot within [`RESUBSCRIBE_FOR`].
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            if self.lost_since.is_none()
                && let Some(msg) = self.consumer.next().await
            {
                // The queue is this subscriber's own and auto-deleted: an
                // ack that fails costs at most a redelivery on the same
                // subscription.
                let _ = msg.ack().await;
                return Some(msg);
            }
            if !self.resubscribe().await {
                return None;
            }
        }
    }

    pub async fn close(self) {
        super::broker::close_channel(&self.channel, "done").await;
        self.broker.close().await;
    }
}
