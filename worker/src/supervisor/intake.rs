//! A build request, from delivery to ack: an accepted build, a duplicate or
//! a rejection.
//!
//! Two pure steps decide: `kiln_core::intake::plan_request` (parse, policy
//! admission, template rendering, plan size) and [`decide_claim`] (what the
//! lease says). The rest of this file carries the decisions out.

use std::sync::Arc;

use backon::{BackoffBuilder, Retryable};
use kiln_core::intake::plan_request;
use kiln_core::owner::tenant_of;
use kiln_core::rejection::Rejection;
use kiln_protocol::{MAX_TEXT_BYTES, Phase, error_header};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Supervisor, build_task, give_back, owner};
use crate::amqp::Incoming;
use crate::machine::Machine;
use crate::plan::BuildPlan;
use crate::retry;
use crate::store::{Admit, LeaseToken, RecordState};

/// What the lease says about a request that became a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Accepted or finished already (here or elsewhere), from the same
    /// tenant and the same request: ack it.
    Duplicate,
    /// Ours to start, under this claim's token.
    Start(LeaseToken),
    /// Ours (this token), but a cancel came while it was queued.
    Cancelled(String, LeaseToken),
    /// The id is held by another tenant's build or by a different request:
    /// `request.rejected`.
    Conflict(Rejection),
}

/// Whether this worker drives the build of an id, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Driven {
    No,
    /// Its task runs and is creating the first pods.
    Accepting,
    /// Its task runs and the build was accepted.
    Accepted,
}

/// What to do with a valid request (`plan`) given the lease and the record
/// (`admit`) and whether this worker drives the build already. `None`: the
/// build under this id is being accepted (here or by another worker); keep
/// this copy until it has been, then ask again. Pure.
///
/// An id is held by the tenant and the request of its record: a request of
/// another tenant, or of the same tenant with a different fingerprint, is a
/// conflict, never a duplicate, whatever state the record is in.
///
/// A lease `Acquired` here was free (a fresh token): whatever is decided
/// but `Start` or `Cancelled`, the caller gives it back. A build driven here
/// whose lease was free lapsed meanwhile; its task stops at its next renewal.
pub(super) fn decide_claim(admit: &Admit, plan: &BuildPlan, driven: Driven) -> Option<Claimed> {
    let record = match admit {
        Admit::Duplicate(r) => Some(r),
        Admit::Acquired { record, .. } | Admit::HeldBy { record, .. } => record.as_ref(),
    };
    if let Some(rejection) = record.and_then(|r| r.conflict(plan)) {
        return Some(Claimed::Conflict(rejection));
    }
    match (admit, driven) {
        // Accepted here: whoever holds the lease now, the request is done.
        (Admit::Duplicate(_), _) | (_, Driven::Accepted) => Some(Claimed::Duplicate),
        // Driven here and not accepted yet: its record comes with acceptance.
        (_, Driven::Accepting) | (Admit::HeldBy { .. }, Driven::No) => None,
        (Admit::Acquired { token, cancel, .. }, Driven::No) => Some(match cancel {
            Some(reason) => Claimed::Cancelled(reason.clone(), token.clone()),
            None => Claimed::Start(token.clone()),
        }),
    }
}

/// One build request, from delivery to ack.
pub(super) async fn handle_request(sup: Supervisor, mut d: Incoming) {
    let received = Instant::now();
    let ctx = &sup.ctx;
    let plan = match plan_off_runtime(ctx, &mut d).await {
        Some(Ok(plan)) => Box::new(plan),
        Some(Err(r)) => return refuse(&sup, &d, r, Held::Unknown).await,
        None => {
            // Planning panicked (a bug): the request goes back; past the
            // queue's delivery limit the broker dead-letters it.
            tracing::error!("planning a request panicked; requeueing it");
            return give_back::requeue(&sup, &d, "?").await;
        }
    };
    let id = plan.id.clone();
    // `None`: shutting down; the request goes back to the queue when the
    // channel closes. A claim that waits (for another worker's acceptance)
    // longer than the park bound parks the request instead of holding it.
    let claimed = tokio::select! {
        claimed = claim(&sup, &plan) => claimed,
        () = tokio::time::sleep(ctx.park_after) => {
            if park_waiting(&sup, &d, &id).await {
                return;
            }
            claim(&sup, &plan).await
        }
    };
    let Some(claimed) = claimed else {
        return;
    };
    match claimed {
        Claimed::Duplicate => {
            tracing::info!(build_id = %id, "duplicate request acked");
            ctx.metrics.duplicate();
            ack(&sup, &d, &id).await;
        }
        Claimed::Conflict(rejection) => refuse(&sup, &d, rejection, Held::Yes).await,
        Claimed::Cancelled(reason, token) => {
            finish_cancelled(&sup, &d, *plan, &reason, token).await;
        }
        Claimed::Start(token) => match cancelled_meanwhile(&sup, &plan).await {
            Some(reason) => finish_cancelled(&sup, &d, *plan, &reason, token).await,
            None if !has_slot(&sup, &plan).await => {
                give_back::release(&sup, &id, &token).await;
                park(&sup, &d, &id, SLOT_WAIT).await;
            }
            None => start(&sup, &d, *plan, received, token).await,
        },
    }
}

/// `plan_request` (parse, admission, template rendering) of a delivery on
/// a blocking thread ([`plan_blocking`]). `None`: planning panicked.
async fn plan_off_runtime(
    ctx: &super::Context,
    d: &mut Incoming,
) -> Option<Result<BuildPlan, Rejection>> {
    let body = std::mem::take(&mut d.body);
    let planned = plan_blocking(
        &ctx.render_slots,
        ctx.policy.clone(),
        body,
        d.user_id.clone(),
        d.traceparent.clone(),
    )
    .await;
    match planned {
        Ok((body, planned)) => {
            d.body = body;
            Some(planned)
        }
        Err(e) => {
            tracing::error!(error = %e, "the planning thread failed");
            None
        }
    }
}

/// `plan_request` on a blocking thread, at most `slots` at once: a
/// request's templates may take a whole fuel budget of CPU, which on the
/// async runtime would delay lease renewals and every other build's events.
/// The body moves to the blocking thread and back, uncopied.
pub(super) async fn plan_blocking(
    slots: &tokio::sync::Semaphore,
    policy: Arc<crate::policy::Policy>,
    body: Vec<u8>,
    user_id: Option<String>,
    traceparent: Option<String>,
) -> Result<(Vec<u8>, Result<BuildPlan, Rejection>), tokio::task::JoinError> {
    // The semaphore is never closed.
    let _slot = slots.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let planned = plan_request(
            &body,
            user_id.as_deref(),
            traceparent.as_deref(),
            &policy,
            jiff::Timestamp::now(),
        );
        (body, planned)
    })
    .await
}

/// How long a request over its tenant's `maxBuildsInFlight` stays parked
/// before it is tried again.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the build may start under its tenant's `maxBuildsInFlight`
/// (counted across workers, see `store/share.rs`). A Redis failure lets it
/// start: the cap is fairness, not safety, and holding the delivery would
/// be the unfairness it exists to prevent.
async fn has_slot(sup: &Supervisor, plan: &BuildPlan) -> bool {
    let ctx = &sup.ctx;
    let cap = ctx
        .policy
        .tenant(&plan.tenant)
        .map_or(0, |t| t.caps.max_builds_in_flight);
    if cap == 0 {
        return true;
    }
    match ctx.store.take_slot(&plan.tenant, &plan.id, cap).await {
        Ok(took) => took,
        Err(e) => {
            ctx.metrics.error(&e);
            tracing::warn!(build_id = %plan.id, error = %e, "cannot count the tenant's builds in flight; starting the build");
            true
        }
    }
}

/// Parks the delivery in RabbitMQ for `delay` (`amqp/park.rs`): it comes
/// back to the builds queue then, and this worker's prefetch is free for
/// other tenants meanwhile. A failure requeues it instead.
async fn park(sup: &Supervisor, d: &Incoming, id: &str, delay: std::time::Duration) {
    tracing::info!(build_id = %id, delay = ?delay, "tenant at its maxBuildsInFlight; parking the request");
    if let Err(e) = sup.ctx.broker.park(d, delay).await {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "cannot park the request; requeueing it");
        give_back::requeue(sup, d, id).await;
    }
}

/// The cancel flagged or kept while the claim ran, read once more just
/// before the first pods: a cancel handled during the claim still wins.
/// Redis trouble counts as none (the build starts; a cancel flagged later
/// reaches its task).
async fn cancelled_meanwhile(sup: &Supervisor, plan: &BuildPlan) -> Option<String> {
    match sup.ctx.store.pending_cancel(&plan.id, &plan.tenant).await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::warn!(build_id = %plan.id, error = %e, "cannot re-check the cancel flags; starting");
            None
        }
    }
}

/// Claims the lease, waiting while the build under this id is being
/// accepted (by another worker, or here). Redis trouble is waited out while
/// holding the delivery: requeueing would spend the queue's delivery limit
/// and dead-letter a good request. `None`: the worker is stopping. A lease
/// taken for anything but `Start` or `Cancelled` is given back here.
async fn claim(sup: &Supervisor, plan: &BuildPlan) -> Option<Claimed> {
    let id = plan.id.as_str();
    let ctx = &sup.ctx;
    let claimed = ctx.record(plan, RecordState::Claimed, None, &[]);
    let mut waits = retry::lease_held().build();
    loop {
        // The pods and the build driven here name the owner whatever Redis
        // remembers (it may have lost the record): another tenant's request
        // is refused before it can claim a free-looking id.
        if let Some(rejection) = owner::known(sup, id, None)
            .await
            .and_then(|o| o.conflict(plan))
        {
            return Some(Claimed::Conflict(rejection));
        }
        let admit = (|| ctx.store.claim_request(id, &claimed, ctx.record_ttl))
            .retry(retry::redis())
            .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot claim; retrying"));
        let admit = match retry::bounded(admit, &sup.stop).await? {
            Ok(admit) => admit,
            // Not expected: `retry::redis` retries without end. Holding the
            // delivery (it is redelivered when the channel closes) is safe.
            Err(e) => {
                ctx.metrics.error(&e);
                tracing::error!(build_id = %id, error = %e, "claim gave up; holding the request");
                return None;
            }
        };
        let accepted = sup.registry.accepted(id);
        let driven = match &accepted {
            None => Driven::No,
            Some(rx) if *rx.borrow() => Driven::Accepted,
            Some(_) => Driven::Accepting,
        };
        let decided = decide_claim(&admit, plan, driven);
        let starts = matches!(decided, Some(Claimed::Start(_) | Claimed::Cancelled(..)));
        if let (Admit::Acquired { token, .. }, false) = (&admit, starts) {
            give_back::release(sup, id, token).await;
        }
        if let Some(claimed) = decided {
            return Some(claimed);
        }
        if let Some(rx) = accepted.filter(|_| driven == Driven::Accepting) {
            retry::bounded(wait_accepted(rx), &sup.stop).await?;
            continue;
        }
        let wait = waits.next().unwrap_or(std::time::Duration::from_secs(1));
        retry::bounded(tokio::time::sleep(wait), &sup.stop).await?;
    }
}

/// Claimed, but cancelled while queued: the machine publishes
/// `build.cancelled` and finishes, as for any other build.
async fn finish_cancelled(
    sup: &Supervisor,
    d: &Incoming,
    plan: BuildPlan,
    reason: &str,
    token: LeaseToken,
) {
    let id = plan.id.clone();
    let (mut machine, actions) = Machine::start_cancelled(
        Arc::new(plan),
        sup.ctx.settings.clone(),
        reason,
        Instant::now().into_std(),
        jiff::Timestamp::now(),
    );
    if build_task::execute(sup, &mut machine, actions, &sup.stop, &token)
        .await
        .is_ok()
    {
        ack(sup, d, &id).await;
    } else {
        give_back::release(sup, &id, &token).await;
        give_back::requeue(sup, d, &id).await;
    }
}

/// Starts the build's task and acks once it is accepted.
async fn start(
    sup: &Supervisor,
    d: &Incoming,
    plan: BuildPlan,
    received: Instant,
    token: LeaseToken,
) {
    let id = plan.id.clone();
    let (machine, actions) = Machine::start(
        Arc::new(plan),
        sup.ctx.settings.clone(),
        Instant::now().into_std(),
        jiff::Timestamp::now(),
    );
    let Some(accepted) = build_task::spawn(sup, machine, actions, token.clone()) else {
        // Someone else started it between our checks (adoption): duplicate.
        give_back::release(sup, &id, &token).await;
        return ack(sup, d, &id).await;
    };
    // A build that waits (a quota) longer than the park bound keeps going,
    // but its request is parked and acked: the delivery must not outlive
    // the broker's consumer_timeout, and the parked copy brings the
    // request back if this worker dies before acceptance.
    let accepted = tokio::select! {
        accepted = wait_accepted(accepted.clone()) => accepted,
        () = tokio::time::sleep(sup.ctx.park_after) => {
            if park_waiting(sup, d, &id).await {
                return;
            }
            wait_accepted(accepted).await
        }
    };
    if accepted {
        ack(sup, d, &id).await;
        sup.ctx.metrics.accepted_latency(received.elapsed());
    } else {
        // Stopped before acceptance (lease lost, worker stopping): another
        // worker takes the request.
        tracing::info!(build_id = %id, "build stopped before acceptance; requeueing its request");
        give_back::requeue(sup, d, &id).await;
    }
}

/// Parks request `d` (see `amqp::park`) for the park bound, at most a
/// minute: it comes back then unless its build was accepted meanwhile (a
/// duplicate, acked). False if it could not be parked: the caller keeps it.
async fn park_waiting(sup: &Supervisor, d: &Incoming, id: &str) -> bool {
    let delay = sup.ctx.park_after.min(std::time::Duration::from_secs(60));
    match sup.ctx.broker.park(d, delay).await {
        Ok(()) => {
            tracing::info!(build_id = %id, back_in = ?delay, "request parked while its build waits");
            true
        }
        Err(e) => {
            sup.ctx.metrics.error(&e);
            tracing::warn!(build_id = %id, error = %e, "cannot park the request; holding it");
            false
        }
    }
}

/// Whether a build holds the id of a refused request or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Known to be held (an id conflict, another tenant's cancel).
    Yes,
    /// Bad input: held if driven or seen here, or in Redis ([`is_held`]).
    Unknown,
}

/// Whether a build holds `id`: driven or seen here, or a record or lease in
/// Redis. Redis trouble counts as held: a `request.rejected` too many is
/// harmless, a `build.rejected` for a live build is a second outcome.
async fn is_held(sup: &Supervisor, id: &str) -> bool {
    let ids = [id.to_owned()];
    if sup.registry.owns(id) || !sup.registry.foreign_among(&ids).is_empty() {
        return true;
    }
    sup.ctx.store.holds(id).await.unwrap_or_else(|e| {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "cannot tell whether the id is held; answering as if it were");
        true
    })
}

/// The answer to a refused request or cancel, then its dead letter with
/// `kiln-error`: `request.rejected` when its id is held by a build (which
/// it must not touch; the build goes on untouched), else `build.rejected`
/// when the id is readable (that ends the request; the id stays free).
pub(super) async fn refuse(sup: &Supervisor, d: &Incoming, r: Rejection, held: Held) {
    let ctx = &sup.ctx;
    let message = r.message();
    let Rejection { id, reason, .. } = r;
    let held = match (&id, held) {
        (_, Held::Yes) => true,
        (Some(id), Held::Unknown) => is_held(sup, id).await,
        (None, Held::Unknown) => false,
    };
    // The log line quotes the request: bounded like every answer derived
    // from a message (docs/protocol.md), whatever the problems add up to.
    let logged = kiln_protocol::bounded(&message, MAX_TEXT_BYTES);
    tracing::warn!(build_id = id.as_deref().unwrap_or("?"), %reason, held, "request rejected: {logged}");
    ctx.metrics.rejected(reason);
    if let Some(id) = &id {
        let now = jiff::Timestamp::now();
        let (source, worker) = (ctx.settings.source.clone(), ctx.settings.worker.clone());
        let ev = if held {
            let tenant = tenant_of(d.user_id.as_deref(), &ctx.policy);
            let data = kiln_protocol::EventData::request_rejected(id, tenant, reason, &message);
            kiln_protocol::BuildEvent::request_rejected(source, worker, now, &d.body, data)
        } else {
            let mut data = kiln_protocol::EventData::for_build(id, Phase::Rejected);
            data.reason = Some(reason);
            data.message = Some(message.clone());
            data.tenant.clone_from(&d.user_id);
            kiln_protocol::BuildEvent::new(source, worker, now, data)
        }
        .with_traceparent(d.traceparent.clone());
        if let Err(e) = ctx.publish(&ev).await {
            ctx.metrics.error(&e);
            tracing::error!(build_id = %id, error = %e, "could not publish the rejection; requeueing the request");
            give_back::requeue(sup, d, id).await;
            return;
        }
    }
    let header = error_header(reason, &message);
    if let Err(e) = ctx.broker.dead_letter(d, &header).await {
        ctx.metrics.error(&e);
        tracing::error!(error = %e, "could not dead-letter a rejected request; requeueing it");
        give_back::requeue(sup, d, id.as_deref().unwrap_or("?")).await;
    }
}

/// Waits until the build is accepted; false if its task ended without.
async fn wait_accepted(mut rx: watch::Receiver<bool>) -> bool {
    // An error means the task ended and the last value it sent was false.
    rx.wait_for(|accepted| *accepted).await.is_ok()
}

pub(super) async fn ack(sup: &Supervisor, d: &Incoming, id: &str) {
    if let Err(e) = d.ack().await {
        sup.ctx.metrics.error(&e);
        // The channel was recovered meanwhile: the broker redelivers the
        // request, which is then acked as a duplicate.
        tracing::warn!(build_id = %id, error = %e, "ack failed; the request will be redelivered");
    }
}

#[cfg(test)]
#[path = "intake_tests.rs"]
pub(super) mod tests;
