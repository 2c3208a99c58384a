//! Lease renewal, and what happens when it fails (fencing).
//!
//! Every lease this worker holds is renewed in one batched call every third
//! of the TTL. A lease another worker took stops its build here. When
//! renewals keep failing for a whole TTL, the leases may have lapsed and
//! another worker may have adopted the builds: this worker then stops
//! acting on all of them and re-adopts them from their pods once Redis
//! answers again.

use tokio::time::{Instant, MissedTickBehavior};

use super::Supervisor;
use crate::lease::Renewal;
use crate::machine::Input;

/// What one renewal round means for the builds renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Keep going (renewed, or failing for less than a TTL).
    Keep,
    /// Renewals failed for a whole TTL: stop every build.
    StopAll,
}

/// Whether a failed renewal round fences the worker. Pure.
pub(super) fn after_failure(last_ok: Instant, now: Instant, ttl: std::time::Duration) -> Verdict {
    if now.duration_since(last_ok) >= ttl {
        Verdict::StopAll
    } else {
        Verdict::Keep
    }
}

pub(super) async fn renew_loop(sup: Supervisor) {
    let ttl = sup.ctx.leases.ttl();
    let mut every = tokio::time::interval_at(Instant::now() + ttl / 3, ttl / 3);
    // A late round (a slow Redis) is followed by a full period, not a burst.
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = sup.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let ids = sup.registry.ids();
        if ids.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        match sup.ctx.leases.renew_many(&ids).await {
            Ok(results) => {
                last_ok = Instant::now();
                for (id, r) in ids.iter().zip(results) {
                    renewed(&sup, id, r).await;
                }
            }
            Err(e) => {
                sup.ctx.metrics.lease_renewal_failed();
                tracing::warn!(error = %e, "lease renewal failed");
                if after_failure(last_ok, Instant::now(), ttl) == Verdict::StopAll {
                    tracing::error!(
                        builds = ids.len(),
                        "leases could not be renewed for a whole TTL; stopping every build until Redis answers"
                    );
                    for id in &ids {
                        lost(&sup, id);
                    }
                }
            }
        }
    }
}

/// Acts on the renewal of one lease.
async fn renewed(sup: &Supervisor, id: &str, r: Renewal) {
    match r {
        Renewal::Renewed => {}
        Renewal::CancelPending => {
            if let Ok(Some(reason)) = sup.ctx.leases.cancel_reason(id).await {
                sup.registry.send(id, Input::Cancel(reason));
            }
        }
        Renewal::Lost => {
            tracing::warn!(build_id = %id, "lease taken by another worker; stopping");
            lost(sup, id);
        }
    }
}

/// Stops acting on a build whose lease is (or may be) gone.
fn lost(sup: &Supervisor, id: &str) {
    sup.ctx.metrics.lease_lost();
    sup.registry.stop(id);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn failures_fence_only_after_a_whole_ttl() {
        let ttl = Duration::from_secs(9);
        let ok = Instant::now();
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(3), ttl),
            Verdict::Keep
        );
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(9), ttl),
            Verdict::StopAll
        );
        assert_eq!(
            after_failure(ok, ok + Duration::from_secs(12), ttl),
            Verdict::StopAll
        );
    }
}
