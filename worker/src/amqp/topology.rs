//! The topology of docs/protocol.md: the requests, events and dead-letter
//! exchanges, the quorum queues of builds and cancels (dead-lettered after
//! [`DELIVERY_LIMIT`] deliveries) and the dead-letter queue.

use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::broker::Broker;
use super::names::{BUILD_KEY, CANCEL_KEY, DELIVERY_LIMIT};
use crate::error::Result;

impl Broker {
    /// Declares the topology of docs/protocol.md, "Topology". Idempotent.
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
        self.declare_parked(&ch).await?;
        super::broker::close_channel(&ch, "topology declared").await;
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
        super::broker::close_channel(&ch, "counted").await;
        Ok(declared?.message_count())
    }
}
