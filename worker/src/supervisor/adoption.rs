//! Finding builds whose lease lapsed and taking them over from their pods:
//! a periodic sweep of the foreign builds, plus the release notices of
//! workers that shut down. What to do with a build is [`decide`]d purely
//! from its pods and its record.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::{Supervisor, build_task, pod_cache};
use crate::classify::PodView;
use crate::error::Result;
use crate::lease::{BuildRecord, Claim, RecordState};
use crate::machine::{Input, Machine};
use crate::plan::BuildPlan;

/// What a lapsed build's pods and record call for.
#[derive(Debug)]
pub(super) enum Adoption {
    /// Resume driving the build from the plan its pods carry.
    Resume(Box<BuildPlan>),
    /// The terminal event is out; only deleting the pods was missing.
    CleanUp,
    /// No pods left: nothing to adopt.
    Forget,
    /// Pods without a readable plan: nobody can resume them.
    Unreadable,
}

/// Pure: see [`Adoption`].
pub(super) fn decide(pods: &[PodView], record: Option<&BuildRecord>) -> Adoption {
    if pods.is_empty() {
        return Adoption::Forget;
    }
    if record.is_some_and(|r| r.state == RecordState::Finished) {
        return Adoption::CleanUp;
    }
    pods.iter()
        .filter_map(|p| p.plan.as_deref())
        .find_map(BuildPlan::from_annotation)
        .map_or(Adoption::Unreadable, |plan| {
            Adoption::Resume(Box::new(plan))
        })
}

/// Periodically adopts foreign builds whose lease lapsed.
pub(super) async fn adopt_loop(sup: Supervisor) {
    // A build seen for the first time is checked at the next tick; after
    // that, every half lease TTL (a lapsed lease is found within one TTL).
    let every = (sup.ctx.leases.ttl() / 2).max(Duration::from_millis(200));
    let period = every.min(Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = sup.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due = sup.registry.foreign_due(Instant::now(), every);
        for chunk in due.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let Ok(holders) = sup.ctx.leases.holders(&ids).await else {
                continue;
            };
            for ((id, ns), holder) in chunk.iter().zip(holders) {
                if holder.is_none() {
                    spawn(&sup, id.clone(), ns.clone());
                }
            }
        }
    }
}

/// Tries to take over `id` in a task of its own (one adoption per build at
/// a time).
pub(super) fn spawn(sup: &Supervisor, id: String, namespace: String) {
    let sup = sup.clone();
    tokio::spawn(async move {
        if !sup.registry.begin_adopting(&id) {
            return;
        }
        adopt(&sup, &id, &namespace).await;
        sup.registry.end_adopting(&id);
    });
}

async fn adopt(sup: &Supervisor, id: &str, namespace: &str) {
    // The pods come from the watch cache, and a namespace whose first list
    // is still arriving is a partial view: wait for it before claiming, so
    // the lease does not run down meanwhile.
    if !sup
        .pod_cache
        .wait_synced(&[namespace.to_owned()], &sup.stop)
        .await
    {
        return;
    }
    // The fence of an adopted build counts from the claim's send, not from
    // after the pods and the record were read.
    let claimed_at = Instant::now();
    match sup.ctx.leases.claim(id).await {
        Ok(Claim::Acquired) => {}
        _ => return,
    }
    if sup.registry.owns(id) {
        return;
    }
    if let Err(e) = take_over(sup, id, namespace, claimed_at).await {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "adoption failed; releasing the lease");
        let _ = sup.ctx.leases.release(id).await;
    }
}

/// With the lease in hand: read the pods (from the watch cache, synced:
/// see [`adopt`]) and the record, and act on them.
async fn take_over(sup: &Supervisor, id: &str, namespace: &str, claimed_at: Instant) -> Result<()> {
    let ctx = &sup.ctx;
    let Some(pods) = sup.pod_cache.build_pods(namespace, id) else {
        // A namespace never unsyncs once synced; should it, decide nothing.
        return ctx.leases.release(id).await.map(drop);
    };
    let record = ctx.leases.record(id).await?;
    match decide(&pods, record.as_ref()) {
        Adoption::Forget => sup.registry.forget_foreign(id),
        Adoption::CleanUp => {
            for p in &pods {
                ctx.pods.delete(&p.namespace, &p.name, &p.uid).await?;
            }
            sup.registry.forget_foreign(id);
        }
        Adoption::Unreadable => {
            tracing::error!(build_id = %id, "pods carry no readable plan; cannot adopt");
        }
        Adoption::Resume(plan) => {
            resume(sup, *plan, &pods, claimed_at).await;
            return Ok(());
        }
    }
    ctx.leases.release(id).await.map(drop)
}

async fn resume(sup: &Supervisor, plan: BuildPlan, pods: &[PodView], claimed_at: Instant) {
    let (id, namespace) = (plan.id.clone(), plan.namespace.clone());
    tracing::info!(build_id = %id, pods = pods.len(), "adopting build whose lease lapsed");
    sup.ctx.metrics.adopted();
    let (machine, actions) = Machine::adopt(
        Arc::new(plan),
        sup.ctx.settings.clone(),
        pods,
        Instant::now().into_std(),
        jiff::Timestamp::now(),
    );
    if build_task::spawn_claimed_at(sup, machine, actions, claimed_at).is_none() {
        return;
    }
    // Pod events since `pods` were read went to the foreign set.
    let now = sup
        .pod_cache
        .build_pods(&namespace, &id)
        .unwrap_or_default();
    for input in pod_cache::missed(pods, &now) {
        sup.registry.send(&id, input);
    }
    if let Ok(Some(reason)) = sup.ctx.leases.cancel_reason(&id).await {
        sup.registry.send(&id, Input::Cancel(reason));
    }
}

#[cfg(test)]
#[path = "adoption_tests.rs"]
mod tests;
