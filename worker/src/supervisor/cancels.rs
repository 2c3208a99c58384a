//! A cancel request: checked against the owner of its build id
//! (`kiln_core::cancels::decide`, pure), flagged in Redis, and handed to
//! the owner, whoever it is.

use backon::Retryable;
use kiln_core::cancels::{CancelStep, decide, too_many_kept};
use kiln_core::owner::{Owner, tenant_of};
use kiln_core::rejection::Rejection;
use kiln_protocol::{MAX_REASON_BYTES, Reason, bounded};

use super::intake::{Held, ack, refuse};
use super::{Supervisor, owner};
use crate::amqp::Incoming;
use crate::machine::Input;
use crate::retry;

/// One cancel request, from delivery to ack.
pub(super) async fn handle_cancel(sup: Supervisor, d: Incoming) {
    let ctx = &sup.ctx;
    let cancel = match kiln_protocol::parse_cancel_request(&d.body) {
        Ok(c) => c,
        Err(e) => {
            let r = Rejection::new(None, Reason::InvalidRequest, e.errors());
            return refuse(&sup, &d, r, Held::Unknown).await;
        }
    };
    let id = &cancel.id;
    // Redis trouble is waited out while holding the delivery, as for
    // requests: deciding without the record could stop another tenant's
    // build. `None`: shutting down; the broker redelivers the cancel.
    let read = (|| ctx.store.record(id))
        .retry(retry::redis())
        .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot read the build record; retrying"));
    let record = match retry::bounded(read, &sup.stop).await {
        Some(Ok(record)) => record,
        None => return,
        // Not expected (`retry::redis` retries without end): the cancel is
        // held, and redelivered when the channel closes.
        Some(Err(e)) => return gave_up(&sup, id, &e),
    };
    // The reason is copied into Redis and the `build.cancelled` event:
    // bounded in bytes, as every text derived from a message.
    let reason = bounded(
        cancel.reason.as_deref().unwrap_or("cancelled"),
        MAX_REASON_BYTES,
    );
    let reason = reason.as_ref();
    let keep = ctx.record_ttl.max(std::time::Duration::from_secs(3600));
    let keeping = ctx.kept_cancels;
    let tenant = tenant_of(d.user_id.as_deref(), &ctx.policy);
    let from_pods = if record.is_some() {
        None
    } else {
        // Without a record the id is most likely not claimed yet: keep the
        // cancel for the sender's tenant at once (it touches no other
        // tenant's build), so a request consumed while the pods are being
        // looked up still starts cancelled. The decision below keeps it
        // again or refuses the cancel. A full cap is answered below, once
        // the pods have said whether the sender holds the id after all.
        if let Err(e) = ctx.store.keep_cancel(id, tenant, reason, keeping).await {
            tracing::warn!(build_id = %id, error = %e, "cannot keep the cancel yet; deciding first");
        }
        // Only the sender's own namespace: a build there is the only one
        // this cancel may stop.
        let namespace = ctx.policy.tenant(tenant).map(|t| t.namespace.as_str());
        owner::known(&sup, id, namespace).await
    };
    let owner = record.as_ref().map(Owner::of_record).or(from_pods);
    let for_tenant = match decide(id, d.user_id.as_deref(), &ctx.policy, owner.as_ref()) {
        CancelStep::Reject(r) => return refuse(&sup, &d, r, Held::Yes).await,
        CancelStep::Ignore => {
            tracing::info!(build_id = %id, "cancel of a finished build ignored");
            return ack(&sup, &d, id).await;
        }
        CancelStep::Flag => None,
        CancelStep::Keep(tenant) => Some(tenant),
    };
    let written = if let Some(t) = &for_tenant {
        let kept = (|| ctx.store.keep_cancel(id, t, reason, keeping))
            .retry(retry::redis())
            .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot keep the cancel; retrying"));
        retry::bounded(kept, &sup.stop).await
    } else {
        let flag = (|| ctx.store.request_cancel(id, reason, keep))
            .retry(retry::redis())
            .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot record cancel; retrying"));
        retry::bounded(flag, &sup.stop)
            .await
            .map(|r| r.map(|()| true))
    };
    match written {
        Some(Ok(true)) => {
            // The owner hears it through the notice; if it is us, act now.
            if for_tenant.is_none() {
                sup.registry.send(id, Input::Cancel(reason.to_owned()));
                // A Redis failover may lose the flag (and the notice) before
                // the owner applied it: the cancel is marked on the build's
                // pods too, which survive, before it is acked. Not marked:
                // the cancel goes back to the queue and is handled again.
                if !mark_pods(&sup, id, reason).await {
                    if let Err(e) = d.requeue().await {
                        tracing::warn!(build_id = %id, error = %e, "cannot requeue the cancel; the broker redelivers it when the channel closes");
                    }
                    return;
                }
            }
            ack(&sup, &d, id).await;
        }
        // The tenant's kept cancels are at their cap: refused, so that a
        // flood of cancels for made-up ids costs Redis at most the cap.
        Some(Ok(false)) => {
            let t = for_tenant.as_deref().unwrap_or(tenant);
            let r = too_many_kept(id, t, keeping.per_tenant);
            refuse(&sup, &d, r, Held::Yes).await;
        }
        None => {}
        Some(Err(e)) => gave_up(&sup, id, &e),
    }
}

/// A Redis call of a cancel ended in an error (`retry::redis` retries
/// without end, so it should not): the cancel stays held until its channel
/// closes and the broker redelivers it.
fn gave_up(sup: &Supervisor, id: &str, e: &crate::Error) {
    sup.ctx.metrics.error(e);
    tracing::error!(build_id = %id, error = %e, "cancel gave up; holding the message");
}

/// Marks every pod of build `id` the watch shows (in any build namespace)
/// with the cancel (`kiln.dev/cancelled`): whoever drives or adopts the
/// build reads it from the pods even when Redis lost the flag. One PATCH
/// per pod, bounded by the build's images. False if a pod could not be
/// marked.
async fn mark_pods(sup: &Supervisor, id: &str, reason: &str) -> bool {
    let mut marked = true;
    for ns in sup.ctx.policy.namespaces() {
        let pods = sup.pod_cache.build_pods(&ns, id).unwrap_or_default();
        for pod in pods.iter().filter(|p| !p.deleting && p.cancelled.is_none()) {
            if let Err(e) = sup.ctx.pods.mark_cancelled(&ns, &pod.name, reason).await {
                tracing::warn!(build_id = %id, pod = %pod.name, error = %e, "cannot mark the pod cancelled");
                marked = false;
            }
        }
    }
    marked
}
