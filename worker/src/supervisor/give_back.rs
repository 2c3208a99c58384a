//! Giving back what a request or an adoption took: a lease claim, a
//! delivery. Neither failure stops the caller, but none is silent: each is
//! logged and counted in `kiln_errors_total`.

use super::Supervisor;
use crate::amqp::Incoming;
use crate::store::LeaseToken;

/// Releases the claim `token` holds on `id`. A failure leaves the lease to
/// lapse by itself within its TTL (only then can another worker claim it).
pub(super) async fn release(sup: &Supervisor, id: &str, token: &LeaseToken) {
    if let Err(e) = sup.ctx.store.release(id, token).await {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "cannot release the lease; it lapses within its TTL");
    }
}

/// Puts a delivery back on its queue for another worker. A failure means
/// the channel is gone, and the broker redelivers the message when it
/// notices (the delivery is never lost, only later).
pub(super) async fn requeue(sup: &Supervisor, d: &Incoming, id: &str) {
    if let Err(e) = d.requeue().await {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "cannot requeue the message; the broker redelivers it when its channel closes");
    }
}
