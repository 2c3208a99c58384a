//! The cancels that waited in their queue while no worker consumed it:
//! handled to the end before this worker takes its first request.
//!
//! Consuming both queues at once is not enough: a cancel handler reads
//! Redis before it keeps the cancel, so a request taken a moment later could
//! claim its id first and start pods for a build the sender had already
//! cancelled. Each backlog cancel is therefore flagged (or kept for its
//! tenant) before the request consumer starts, and the claim then sees it
//! (`Claimed::Cancelled`: `build.cancelled`, no pod).

use std::time::Duration;

use tokio::time::Instant;

use super::{Supervisor, cancels};
use crate::amqp::Consumer;

/// The longest start-up waits for the backlog: a cancel queue that is
/// broken, drained by another worker or slow to answer never keeps this
/// worker from building for longer.
pub(super) const BACKLOG_WAIT: Duration = Duration::from_secs(5);

/// When to stop waiting for a backlog of `ready` cancels, counted at
/// `now`; `None`: nothing waits, start at once. Pure.
pub(super) fn deadline(ready: u32, now: Instant, wait: Duration) -> Option<Instant> {
    (ready > 0).then(|| now + wait)
}

/// Counts the cancels ready in their queue. Call it before the cancel
/// consumer starts: what the consumer has been delivered is no longer
/// counted as ready. Broker trouble counts as no backlog (logged): the
/// requests are still claimed against the flags already in Redis.
pub(super) async fn count(sup: &Supervisor, queue: &str) -> u32 {
    match sup.ctx.broker.ready_count(queue).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the waiting cancels; consuming requests at once");
            0
        }
    }
}

/// Takes up to `ready` cancels off `cancels` and waits until each is
/// handled, all until `deadline`. A handler still running at the deadline
/// goes on on its own. Returns how many cancels were handled in time.
pub(super) async fn drain(sup: &Supervisor, cancels: &mut Consumer, ready: u32) -> u32 {
    let Some(deadline) = deadline(ready, Instant::now(), BACKLOG_WAIT) else {
        return 0;
    };
    let mut handlers = Vec::new();
    while handlers.len() < ready as usize {
        // Fewer than counted arrive when another worker took some, or the
        // consumer ended: the deadline ends the wait.
        match tokio::time::timeout_at(deadline, cancels.next()).await {
            Ok(Some(d)) => handlers.push(tokio::spawn(cancels::handle_cancel(sup.clone(), d))),
            Ok(None) | Err(_) => break,
        }
    }
    let received = handlers.len();
    let mut handled = 0;
    let waited = tokio::time::timeout_at(deadline, async {
        for h in handlers {
            // A handler that panicked is counted handled: the cancel stays
            // in its queue unacked and is redelivered.
            let _ = h.await;
            handled += 1;
        }
    })
    .await;
    if waited.is_err() {
        // Dropping a JoinHandle detaches its task: the rest finish later.
        tracing::warn!(
            ready,
            received,
            handled,
            "the waiting cancels were not all handled in time; consuming requests"
        );
    } else {
        tracing::info!(
            ready,
            received,
            "waiting cancels handled before the first request"
        );
    }
    u32::try_from(handled).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backlog_starts_at_once() {
        assert_eq!(deadline(0, Instant::now(), BACKLOG_WAIT), None);
    }

    #[test]
    fn a_backlog_is_waited_for_at_most_the_wait() {
        let now = Instant::now();
        let wait = Duration::from_millis(750);
        assert_eq!(deadline(1, now, wait), Some(now + wait));
        assert_eq!(deadline(u32::MAX, now, wait), Some(now + wait));
    }
}
