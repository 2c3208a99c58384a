//! Helpers for tests and operators: deleting a prefix's topology and taking
//! one message off a queue without a consumer.

use super::broker::Broker;
use super::consumer::Incoming;
use crate::error::Result;

impl Broker {
    /// Deletes every queue and exchange under this prefix (tests, and
    /// operators retiring a prefix). Missing ones are fine.
    pub async fn delete_topology(&self) -> Result<()> {
        let ch = self.conn.create_channel().await?;
        let n = &self.names;
        // Missing ones are fine (errors ignored): the point is that none is left.
        for q in [n.builds(), n.cancels(), n.dead(), n.parked()] {
            let _ = ch
                .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
        for x in [n.requests(), n.events(), n.dead()] {
            // As above: a missing exchange is what we want.
            let _ = ch
                .exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default())
                .await;
        }
        super::broker::close_channel(&ch, "deleted").await;
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
        super::broker::close_channel(&ch, "done").await;
        Ok(out)
    }
}
