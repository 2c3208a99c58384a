//! The topology of docs/protocol.md: the requests, events and dead-letter
//! exchanges, the quorum queues of builds and cancels (dead-lettered after
//! [`DELIVERY_LIMIT`] deliveries) and the dead-letter queue, bounded in
//! length and bytes ([`DeadLimits`]).

use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::broker::Broker;
use super::names::{BUILD_KEY, CANCEL_KEY, DELIVERY_LIMIT};
use crate::error::Result;

/// The limits of `kiln.dead`: repeated large rejects must not fill the
/// broker's disk. Past either limit the OLDEST dead letter is dropped
/// (`x-overflow: drop-head`). `reject-publish` would keep the old ones and
/// refuse the new: the worker's dead-lettering publish would then be nacked,
/// the refused message requeued and redelivered for ever, and every worker
/// would spin on it; dead-lettering must never block the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLimits {
    /// `x-max-length`: most messages kept.
    pub max_length: u32,
    /// `x-max-length-bytes`: most bytes of message bodies kept.
    pub max_bytes: u64,
}

impl Default for DeadLimits {
    fn default() -> Self {
        Self {
            max_length: crate::config::DEFAULT_DEAD_MAX_LENGTH,
            max_bytes: crate::config::DEFAULT_DEAD_MAX_BYTES,
        }
    }
}

impl DeadLimits {
    /// The queue arguments of `kiln.dead`.
    pub fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.max_length)),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        args
    }
}

/// Whether the broker refused a declare because the queue exists with other
/// arguments (406 PRECONDITION_FAILED).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

impl Broker {
    /// Declares the topology of docs/protocol.md, "Topology", with the
    /// default limits of `kiln.dead`. Idempotent.
    pub async fn declare_topology(&self) -> Result<()> {
        self.declare_topology_with(DeadLimits::default()).await
    }

    /// Declares the topology of docs/protocol.md, `kiln.dead` with `dead`'s
    /// limits. Idempotent. A `kiln.dead` that exists without these limits
    /// (declared by an older Kiln) is used as it is, with a warning: the
    /// broker refuses to change a queue's arguments, and deleting it would
    /// lose its messages; the operator applies a policy or recreates it
    /// (docs/operations.md).
    pub async fn declare_topology_with(&self, dead: DeadLimits) -> Result<()> {
        let _ = self.declared.set(dead);
        self.declare_all(dead).await
    }

    async fn declare_all(&self, dead: DeadLimits) -> Result<()> {
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
        let ch = match ch
            .queue_declare(n.dead().into(), queue_opts, dead.arguments())
            .await
        {
            Ok(_) => ch,
            // The refusal closed the channel: check on a fresh one that the
            // queue is there, and go on with it as it is.
            Err(e) if is_precondition_failed(&e) => {
                let ch = self.conn.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(n.dead().into(), passive, FieldTable::default())
                    .await?;
                tracing::warn!(
                    queue = %n.dead(),
                    error = %e,
                    max_length = dead.max_length,
                    max_bytes = dead.max_bytes,
                    "the dead-letter queue exists without Kiln's length and byte limits; it can fill the broker's disk. Apply a policy (max-length, max-length-bytes, overflow drop-head) or recreate the queue: see docs/operations.md"
                );
                ch
            }
            Err(e) => return Err(e.into()),
        };
        ch.queue_bind(
            n.dead().into(),
            n.dead().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        self.declare_parked(&ch).await?;
        super::broker::close_channel(&ch, "topology declared").await;
        Ok(())
    }

    /// Declares again the topology this connection declared (the same
    /// limits), if it did: a lone broker that restarted without its data
    /// (no persistent volume) has none, and consuming or publishing there
    /// fails with NOT_FOUND until someone declares it. Idempotent.
    ///
    /// Only for a lone broker (one node URL): a cluster keeps its queues on
    /// the nodes left, and a declare while a quorum queue elects a new
    /// leader (its node killed; the consume meanwhile fails with
    /// `NOT_FOUND`) kept that queue leaderless for minutes in
    /// tests/tests/cluster.rs.
    pub async fn declare_again(&self) -> Result<()> {
        if self.nodes.len() > 1 {
            return Ok(());
        }
        match self.declared.get() {
            Some(&dead) => self.declare_topology_with(dead).await,
            None => Ok(()),
        }
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
        super::broker::close_channel(&ch, "counted").await;
        Ok(declared?.message_count())
    }
}
