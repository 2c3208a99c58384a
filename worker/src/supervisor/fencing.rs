//! Lease renewal, and what happens when it fails (fencing).
//!
//! Every lease this worker holds is renewed in one batched call every third
//! of the TTL (more often for short TTLs: [`renew_period`]), each against
//! the token of its claim. A lease held under
//! another token (another worker's, or a newer claim of this worker's), or
//! one found missing, stops its build here (renewal is compare-and-extend
//! only). When renewals keep
//! failing for a whole TTL, the leases may have lapsed and another worker
//! may have adopted the builds: this worker then stops acting on all of
//! them and re-adopts them from their pods once Redis answers again.
//!
//! Fencing by time: each build carries a [`Fence`], moved forward by every
//! confirmed renewal to the renewal's SEND time + TTL − [`margin`]. The
//! build's task checks it before every action (pod create or delete,
//! publish, finish). A worker that stalled (stopped process, long GC-like
//! pause, overloaded host) therefore finds its fence closed when it resumes
//! and acts on nothing, even before its renewal loop runs again: Redis let
//! the lease expire at most TTL after the send, by Redis's clock, and the
//! margin absorbs the clock rate difference and the scheduling delay
//! between checking the fence and the action reaching its target.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::Supervisor;
use super::fence::{Fence, margin};
use crate::machine::Input;
use crate::store::{LeaseToken, Renewal};

/// How often leases are renewed: a third of the TTL, and at least twice
/// within a fence's life (TTL − margin), so that one late reply does not
/// close the fences of every build. With a 30 s TTL that is every 10 s
/// (fences last 24 s); with a 2 s TTL, every 500 ms (fences last 1 s).
pub(super) fn renew_period(ttl: Duration) -> Duration {
    (ttl / 3).min(ttl.saturating_sub(margin(ttl)) / 2)
}

/// What one renewal round means for the builds renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RenewalVerdict {
    /// Keep going (renewed, or failing for less than a TTL).
    Keep,
    /// Renewals failed for a whole TTL: stop every build.
    StopAll,
}

/// Whether a failed renewal round fences the worker. Pure.
pub(super) fn after_failure(
    last_ok: Instant,
    now: Instant,
    ttl: std::time::Duration,
) -> RenewalVerdict {
    if now.duration_since(last_ok) >= ttl {
        RenewalVerdict::StopAll
    } else {
        RenewalVerdict::Keep
    }
}

pub(super) async fn renew_loop(sup: Supervisor) {
    let ttl = sup.ctx.store.ttl();
    let period = renew_period(ttl);
    let mut every = tokio::time::interval_at(Instant::now() + period, period);
    // A late round (a slow Redis) is followed by a full period, not a burst.
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = sup.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let held = sup.registry.leases();
        if held.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        // The fence counts from the send: Redis extended the lease at some
        // instant after it, so the lease lasts at least until send + TTL.
        let sent = Instant::now();
        match sup.ctx.store.renew_many(&held).await {
            Ok(results) => {
                last_ok = Instant::now();
                let fence = Fence::from_send(sent, ttl);
                for ((id, token), r) in held.iter().zip(results) {
                    if r != Renewal::Lost {
                        sup.registry.extend_fence(id, token, fence);
                    }
                    renewed(&sup, id, token, r).await;
                }
            }
            Err(e) => {
                sup.ctx.metrics.lease_renewal_failed();
                sup.ctx.metrics.error(&e);
                tracing::warn!(error = %e, "lease renewal failed");
                if after_failure(last_ok, Instant::now(), ttl) == RenewalVerdict::StopAll {
                    tracing::error!(
                        builds = held.len(),
                        "leases could not be renewed for a whole TTL; stopping every build until Redis answers"
                    );
                    for (id, token) in &held {
                        lost(&sup, id, token);
                    }
                }
            }
        }
    }
}

/// Acts on the renewal of one lease.
async fn renewed(sup: &Supervisor, id: &str, token: &LeaseToken, r: Renewal) {
    match r {
        Renewal::Renewed => {}
        Renewal::CancelPending => {
            if let Some(reason) = super::notices::cancel_reason(sup, id).await {
                sup.registry.send(id, Input::Cancel(reason));
            }
        }
        Renewal::Lost => {
            tracing::warn!(build_id = %id, "lease missing or held under another claim's token; stopping");
            lost(sup, id, token);
        }
    }
}

/// Stops acting on a build whose lease (the claim of `token`) is, or may
/// be, gone; a newer claim's task of the same build goes on.
fn lost(sup: &Supervisor, id: &str, token: &LeaseToken) {
    sup.ctx.metrics.lease_lost();
    sup.registry.stop_claim(id, token);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::supervisor::fence::SharedFence;

    #[tokio::test(start_paused = true)]
    async fn the_fence_holds_until_send_plus_ttl_minus_the_margin() {
        let ttl = Duration::from_secs(10);
        let sent = Instant::now();
        let fence = Fence::from_send(sent, ttl);
        assert!(fence.holds(Instant::now()));
        tokio::time::advance(Duration::from_millis(7_999)).await;
        assert!(fence.holds(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!fence.holds(Instant::now()), "closed at 10 s - 2 s margin");
    }

    #[test]
    fn the_margin_is_a_fifth_at_least_a_second_at_most_half() {
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(6));
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_never_moves_the_fence_back() {
        let ttl = Duration::from_secs(10);
        let early = Fence::from_send(Instant::now(), ttl);
        tokio::time::advance(Duration::from_secs(3)).await;
        let later = Fence::from_send(Instant::now(), ttl);
        let shared = SharedFence::new(later);
        shared.extend(early);
        tokio::time::advance(Duration::from_millis(7_500)).await;
        assert!(shared.holds(Instant::now()), "still the later fence");
        assert_eq!(early.extended(later), later);
    }

    #[test]
    fn renewals_come_at_least_twice_per_fence() {
        assert_eq!(
            renew_period(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            renew_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        for ttl in [1, 2, 5, 9, 30, 120].map(Duration::from_secs) {
            let fence = ttl.saturating_sub(margin(ttl));
            assert!(renew_period(ttl) * 2 <= fence, "{ttl:?}");
            assert!(renew_period(ttl) <= ttl / 3, "{ttl:?}");
        }
    }

    #[test]
    fn failures_fence_only_after_a_whole_ttl() {
        let ttl = Duration::from_secs(9);
        let ok = Instant::now();
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(3), ttl),
            RenewalVerdict::Keep
        );
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(9), ttl),
            RenewalVerdict::StopAll
        );
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(12), ttl),
            RenewalVerdict::StopAll
        );
    }
}
