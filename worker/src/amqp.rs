//! RabbitMQ: topology, consumers, publishing with confirms, dead-lettering.
//! The only module that knows lapin.
//!
//! The connection uses lapin's auto-recovery: after a connection loss lapin
//! reconnects and replays the topology and consumers. Deliveries received
//! before the loss can no longer be acked (the broker redelivers them), which
//! is safe because the build id is the idempotency key.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::RwLock;

use crate::error::{Error, Result};

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Amqp {
            context: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// Routing key of build requests on the requests exchange.
pub const BUILD_KEY: &str = "build";
/// Routing key of cancel requests on the requests exchange.
pub const CANCEL_KEY: &str = "cancel";
/// Header naming why a message was dead-lettered.
pub const ERROR_HEADER: &str = "kiln-error";
/// Delivery limit of the quorum queues: a poison message that crashes
/// workers is dead-lettered after this many deliveries.
pub const DELIVERY_LIMIT: i64 = 10;

/// Exchange and queue names under one prefix (DESIGN section 2).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn requests(&self) -> String {
        format!("{}.requests", self.prefix)
    }
    pub fn builds(&self) -> String {
        format!("{}.builds", self.prefix)
    }
    pub fn cancels(&self) -> String {
        format!("{}.cancels", self.prefix)
    }
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }
}

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

/// A connection with a confirm-mode publishing channel.
pub struct Broker {
    conn: Connection,
    publisher: RwLock<Channel>,
    names: Names,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn publish_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

impl Broker {
    /// Connects with auto-recovery and opens the publishing channel.
    pub async fn connect(url: &str, prefix: &str, connection_name: &str) -> Result<Self> {
        let props = ConnectionProperties::default().enable_auto_recover();
        Self::connect_with(url, prefix, connection_name, props).await
    }

    async fn connect_with(
        url: &str,
        prefix: &str,
        connection_name: &str,
        props: ConnectionProperties,
    ) -> Result<Self> {
        let props = props.with_connection_name(LongString::from(connection_name.to_owned()));
        let conn = Connection::connect(url, props).await.map_err(|e| {
            Error::amqp_caused(
                &format!("cannot connect to {}", kiln_protocol::redact_url(url)),
                e,
            )
        })?;
        let publisher = Self::confirm_channel(&conn).await?;
        Ok(Self {
            conn,
            publisher: RwLock::new(publisher),
            names: Names::new(prefix),
        })
    }

    async fn confirm_channel(conn: &Connection) -> Result<Channel> {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Whether the connection is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Declares the topology of DESIGN section 2. Idempotent.
    pub async fn declare_topology(&self) -> Result<()> {
        let ch = self.conn.create_channel().await?;
        let n = &self.names;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (exchange, kind) in [
            (n.requests(), ExchangeKind::Direct),
            (n.events(), ExchangeKind::Topic),
            (n.dead(), ExchangeKind::Fanout),
        ] {
            ch.exchange_declare(exchange.into(), kind, durable, FieldTable::default())
                .await?;
        }
        let queue_opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for (queue, key) in [(n.builds(), BUILD_KEY), (n.cancels(), CANCEL_KEY)] {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(n.dead().into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            ch.queue_declare(queue.clone().into(), queue_opts, args)
                .await?;
            ch.queue_bind(
                queue.into(),
                n.requests().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(n.dead().into(), queue_opts, args).await?;
        ch.queue_bind(
            n.dead().into(),
            n.dead().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = ch.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// How many messages `queue` holds ready for delivery (a passive
    /// declare: never creates the queue, and unacked deliveries are not
    /// counted).
    pub async fn ready_count(&self, queue: &str) -> Result<u32> {
        let ch = self.conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await;
        let _ = ch.close(200, "counted".into()).await;
        Ok(declared?.message_count())
    }

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
        Ok(Consumer { channel: ch, inner })
    }

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
            .retry(publish_backoff())
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

    async fn publish_once(
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
            Ok(Confirmation::Nack(_)) => Err(Error::NotConfirmed(format!(
                "{exchange}/{routing_key} (nacked)"
            ))),
            Ok(Confirmation::NotRequested) => Err(Error::NotConfirmed(format!(
                "{exchange}/{routing_key} (confirms not enabled)"
            ))),
            Err(e) => {
                // Wait for lapin's recovery; if the channel cannot come back
                // (closed by the broker), open a fresh confirm channel.
                if ch.wait_for_recovery(e.clone()).await.is_err() && self.is_connected() {
                    let mut slot = self.publisher.write().await;
                    if slot.id() == ch.id()
                        && let Ok(fresh) = Self::confirm_channel(&self.conn).await
                    {
                        *slot = fresh;
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Copies a message to the dead-letter exchange with `kiln-error: reason`
    /// (confirmed), then acks the original. If the copy cannot be confirmed
    /// the original is not acked, so nothing is lost.
    pub async fn dead_letter(&self, delivery: &Incoming, reason: &str) -> Result<()> {
        let mut headers = delivery.headers.clone();
        headers.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(reason.to_owned().into()),
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
        .retry(publish_backoff().with_max_times(20))
        .when(Error::is_transient)
        .await?;
        delivery.ack().await
    }

    /// Closes the connection politely (shutdown).
    pub async fn close(&self) {
        let _ = self
            .conn
            .close(200, "kiln worker shutting down".into())
            .await;
    }
}

/// A queue consumer that rides out connection recoveries.
pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next delivery; `None` when the consumer was cancelled for good.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            match self.inner.next().await? {
                Ok(d) => return Some(Incoming::from_delivery(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer interrupted; waiting for recovery");
                    if let Err(e) = self.channel.wait_for_recovery(e).await {
                        tracing::error!(error = %e, "consumer cannot recover");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return None;
                    }
                }
            }
        }
    }

    /// Stops consuming: the broker delivers nothing more on this channel and
    /// requeues what was not acked when the channel closes.
    pub async fn cancel(self) {
        let _ = self.channel.close(200, "consumer stopped".into()).await;
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
    headers: FieldTable,
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
    fn from_delivery(d: lapin::message::Delivery) -> Self {
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
    /// given binding keys (`build.*`, `#`, ...) and consumes it with
    /// auto-ack semantics handled by the caller.
    pub async fn subscribe_events(&self, keys: &[&str]) -> Result<EventSubscription> {
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
            consumer: Consumer { channel: ch, inner },
            queue,
        })
    }
}

impl EventSubscription {
    /// The next event message (acked on receipt: a subscriber's own queue).
    pub async fn next(&mut self) -> Option<Incoming> {
        let msg = self.consumer.next().await?;
        let _ = msg.ack().await;
        Some(msg)
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

impl Broker {
    /// Deletes every queue and exchange under this prefix (tests, and
    /// operators retiring a prefix). Missing ones are fine.
    pub async fn delete_topology(&self) -> Result<()> {
        let ch = self.conn.create_channel().await?;
        let n = &self.names;
        for q in [n.builds(), n.cancels(), n.dead()] {
            let _ = ch
                .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
        for x in [n.requests(), n.events(), n.dead()] {
            let _ = ch
                .exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default())
                .await;
        }
        let _ = ch.close(200, "deleted".into()).await;
        Ok(())
    }

    /// Takes one message off `queue` without a consumer (`basic.get`), acked.
    pub async fn get_one(&self, queue: &str) -> Result<Option<Incoming>> {
        let ch = self.conn.create_channel().await?;
        let got = ch
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await?;
        let out = match got {
            Some(msg) => {
                let inc = Incoming::from_delivery(msg.delivery);
                inc.ack().await?;
                Some(inc)
            }
            None => None,
        };
        let _ = ch.close(200, "done".into()).await;
        Ok(out)
    }
}

/// The user name of an AMQP URL (`guest` when the URL names none, as the
/// client then logs in as `guest`): the tenant of the requests the client
/// publishes, set as their `user_id` so that RabbitMQ verifies it.
pub fn url_user(url: &str) -> Result<String> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e| {
        Error::Config(format!(
            "invalid AMQP URL {}: {e}",
            kiln_protocol::redact_url(url)
        ))
    })?;
    Ok(uri.authority.userinfo.username)
}

impl Broker {
    /// Connects once, without auto-recovery or reconnect attempts: for the
    /// short-lived client commands, which should fail at once (and say why)
    /// when the broker cannot be reached rather than retry for minutes.
    pub async fn connect_client(url: &str, prefix: &str, connection_name: &str) -> Result<Self> {
        let props = ConnectionProperties::default()
            .with_backoff(ExponentialBuilder::default().with_max_times(0));
        Self::connect_with(url, prefix, connection_name, props).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: what the client and the worker print about a broker they
    /// cannot reach or parse names it without the password.
    #[tokio::test]
    async fn connect_errors_hide_the_password() {
        let e =
            url_user("amqp://guest:pl4ntedAmqpPw@127.0.0.1:notaport/%2f").expect_err("not a port");
        let text = format!("{e} / {e:?}");
        assert!(!text.contains("pl4ntedAmqpPw"), "{text}");
        assert!(text.contains("amqp://guest:***@127.0.0.1"), "{text}");

        let url = "amqp://guest:pl4nted@mqPw@127.0.0.1:1/%2f";
        let connect = Broker::connect_client(url, "kiln-unit", "kiln unit test");
        let e = tokio::time::timeout(Duration::from_secs(20), connect)
            .await
            .expect("nothing listens on port 1: refused at once")
            .expect_err("cannot connect");
        let text = format!("{e} / {e:?}");
        assert!(!text.contains("mqPw"), "{text}");
        assert!(text.contains("amqp://guest:***@127.0.0.1:1"), "{text}");
    }
}
