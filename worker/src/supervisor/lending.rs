//! Quota lending: builds whose request stays unacked while a ResourceQuota
//! refuses their pods lend their prefetch slots to other requests.
//!
//! A request is acked only once its first-attempt pods exist
//! (docs/guarantees.md), so a build waiting for quota holds a delivery. Without
//! lending, one tenant with more waiting builds than the prefetch window
//! would fill it, and every other tenant's request behind them in the queue
//! would wait until that tenant's quota frees. Instead, for every `chunk`
//! deliveries held by quota waits, the worker opens one more consumer of
//! the builds queue with prefetch `chunk`, up to `prefetch` lent slots in
//! all (the window is at most twice the configured prefetch). Lent
//! consumers stay open until shutdown: closing one would requeue the
//! deliveries it holds, and a quota that was full once tends to fill again.
//!
//! The limit: a tenant whose waiting builds exceed the whole window (2 ×
//! prefetch per worker, over all workers) still delays the requests queued
//! behind them until its quota frees; they are delayed, never lost.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::{Supervisor, intake};

/// Deliveries held by quota waits, shared by the build tasks and the loop.
#[derive(Debug, Default)]
pub struct Lending {
    held: AtomicUsize,
    changed: Notify,
}

impl Lending {
    /// A build's delivery started (`true`) or stopped (`false`) being held
    /// by a quota wait.
    pub(super) fn set_held(&self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => {
                self.held.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
            _ => return,
        }
        self.changed.notify_one();
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Prefetch of one lent consumer, and how many of them `held` deliveries
/// call for with a configured `prefetch`. Pure.
pub(super) fn lent_consumers(prefetch: u16, held: usize) -> (u16, usize) {
    let chunk = (prefetch / 4).max(1);
    let max = usize::from(prefetch / chunk);
    (chunk, (held / usize::from(chunk)).min(max))
}

/// Opens lent consumers as quota waits hold deliveries, until shutdown.
pub(super) async fn lend_loop(sup: Supervisor) {
    let names = sup.ctx.broker.names().clone();
    let mut open = 0;
    loop {
        let (chunk, wanted) = lent_consumers(sup.ctx.prefetch, sup.lending.held());
        while open < wanted {
            let tag = format!("kiln-{}-lent-{open}", sup.ctx.settings.worker);
            match sup.ctx.broker.consume(&names.builds(), chunk, &tag).await {
                Ok(consumer) => {
                    tracing::info!(consumer = %tag, prefetch = chunk, held = sup.lending.held(), "quota waits hold deliveries; lending slots to other requests");
                    tokio::spawn(consume_lent(sup.clone(), consumer));
                    open += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a lent consumer");
                    break;
                }
            }
        }
        tokio::select! {
            () = sup.stop.cancelled() => return,
            () = sup.lending.changed.notified() => {}
        }
    }
}

/// Hands every delivery of a lent consumer to intake, like the main one.
async fn consume_lent(sup: Supervisor, mut consumer: crate::amqp::Consumer) {
    loop {
        tokio::select! {
            () = sup.stop.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => { tokio::spawn(intake::handle_request(sup.clone(), d)); }
                None => break,
            },
        }
    }
    consumer.cancel().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_consumer_per_chunk_of_held_deliveries_up_to_the_prefetch() {
        // 256: chunks of 64, at most 4 lent consumers (256 lent slots).
        assert_eq!(lent_consumers(256, 0), (64, 0));
        assert_eq!(lent_consumers(256, 63), (64, 0));
        assert_eq!(lent_consumers(256, 64), (64, 1));
        assert_eq!(lent_consumers(256, 255), (64, 3));
        assert_eq!(lent_consumers(256, 10_000), (64, 4));
        // Small windows lend one slot per held delivery.
        assert_eq!(lent_consumers(2, 1), (1, 1));
        assert_eq!(lent_consumers(2, 5), (1, 2));
        assert_eq!(lent_consumers(1, 3), (1, 1));
        assert_eq!(lent_consumers(6, 4), (1, 4));
        assert_eq!(lent_consumers(6, 9), (1, 6));
    }

    #[test]
    fn held_counts_transitions_only() {
        let l = Lending::default();
        l.set_held(false, true);
        l.set_held(true, true);
        assert_eq!(l.held(), 1);
        l.set_held(true, false);
        l.set_held(false, false);
        assert_eq!(l.held(), 0);
    }
}
