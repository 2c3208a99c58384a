//! Finding builds whose lease lapsed and taking them over from their pods:
//! a periodic sweep of the foreign builds, plus the release notices of
//! workers that shut down. What to do with a build is decided purely from
//! its pods and its record (`kiln_core::adoption::decide`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use kiln_core::adoption::{Adoption, PodSource, decide};

use super::{Supervisor, build_task, give_back, pod_cache};
use crate::classify::PodView;
use crate::error::Result;
use crate::machine::{Input, Machine};
use crate::plan::BuildPlan;
use crate::store::{Claim, LeaseToken, Renewal};

/// Whether `p` is under the name Kiln gives attempt `p.attempt` of image
/// `p.image` of build `id` (of the platform or the publish step its labels
/// name). Names are unique in a namespace, so a pod of the build's labels
/// under another name is not one Kiln made (anyone who may create pods can
/// copy labels): adoption neither reads, drives nor deletes it.
fn named_by_kiln(id: &str, p: &PodView) -> bool {
    let unit = match (&p.platform, p.publish) {
        (None, false) => p.image.clone(),
        (None, true) => kiln_protocol::publish_unit(&p.image),
        (Some(label), false) => match kiln_protocol::platform_of_label(label) {
            Some(platform) => kiln_protocol::platform_unit(&p.image, &platform),
            None => return false,
        },
        (Some(_), true) => return false,
    };
    p.name == kiln_protocol::pod_name(id, &unit, p.attempt)
}

/// Periodically adopts foreign builds whose lease lapsed.
pub(super) async fn adopt_loop(sup: Supervisor) {
    // A build seen for the first time is checked at the next tick; after
    // that, every half lease TTL (a lapsed lease is found within one TTL).
    let every = (sup.ctx.store.ttl() / 2).max(Duration::from_millis(200));
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
            let holders = match sup.ctx.store.holders(&ids).await {
                Ok(holders) => holders,
                // Tried again at the next tick.
                Err(e) => {
                    sup.ctx.metrics.error(&e);
                    tracing::warn!(error = %e, "cannot read the leases of foreign builds; trying at the next tick");
                    continue;
                }
            };
            for ((id, namespaces), holder) in chunk.iter().zip(holders) {
                if holder.is_none() {
                    spawn(&sup, id.clone(), namespaces.clone());
                }
            }
        }
    }
}

/// Tries to take over `id`, seen in `namespaces`, in a task of its own
/// (one adoption per build at a time).
pub(super) fn spawn(sup: &Supervisor, id: String, namespaces: Vec<String>) {
    let sup = sup.clone();
    tokio::spawn(async move {
        if !sup.registry.begin_adopting(&id) {
            return;
        }
        adopt(&sup, &id, &namespaces).await;
        sup.registry.end_adopting(&id);
    });
}

async fn adopt(sup: &Supervisor, id: &str, namespaces: &[String]) {
    // The pods come from the watch cache, and a namespace whose first list
    // is still arriving is a partial view: wait for it before claiming, so
    // the lease does not run down meanwhile.
    if namespaces.is_empty() || !sup.pod_cache.wait_synced(namespaces, &sup.stop).await {
        return;
    }
    // The fence of an adopted build counts from the claim's send, not from
    // after the pods and the record were read.
    let claimed_at = Instant::now();
    let token = match sup.ctx.store.claim(id).await {
        Ok(Claim::Acquired(token)) => token,
        Ok(Claim::HeldBy(_)) => return,
        // The sweep tries again while the build stays foreign.
        Err(e) => {
            sup.ctx.metrics.error(&e);
            tracing::warn!(build_id = %id, error = %e, "cannot claim a lapsed build; trying again later");
            return;
        }
    };
    if sup.registry.owns(id) {
        give_back::release(sup, id, &token).await;
        return;
    }
    // The build's namespace is the one its record names (the plan's): a
    // pod under its id elsewhere (anyone may write an id on a pod) is not
    // its build's. Without a record, the first namespace it was seen in.
    let namespace = match sup.ctx.store.record(id).await {
        Ok(Some(r)) if !r.namespace.is_empty() => r.namespace,
        _ => namespaces[0].clone(),
    };
    if let Err(e) = take_over(sup, id, &namespace, claimed_at, &token).await {
        sup.ctx.metrics.error(&e);
        tracing::warn!(build_id = %id, error = %e, "adoption failed; releasing the lease");
        give_back::release(sup, id, &token).await;
    }
}

/// With the lease in hand: read the record and the pods (from the watch
/// cache, synced: see [`adopt`]; from the server when there is no record,
/// see `PodSource`), and act on them.
async fn take_over(
    sup: &Supervisor,
    id: &str,
    namespace: &str,
    claimed_at: Instant,
    token: &LeaseToken,
) -> Result<()> {
    let ctx = &sup.ctx;
    let record = ctx.store.record(id).await?;
    // `cached` is the base against which the watch's later events are
    // handed to the build (see [`resume`]); `fresh`, the server's pods
    // when they are read instead of the cache's.
    let (cached, fresh, claimed_at) = match PodSource::of(record.as_ref()) {
        PodSource::Cache => (sup.pod_cache.build_pods(namespace, id), None, claimed_at),
        PodSource::Server => match outwait_previous_owner(sup, id, token).await? {
            Some(renewed_at) => (
                sup.pod_cache.build_pods(namespace, id),
                Some(ctx.pods.build_pods(namespace, id).await?),
                renewed_at,
            ),
            None => (None, None, claimed_at),
        },
    };
    // No view: a namespace that unsynced (it never does once synced), or
    // the claim lost while waiting out the previous owner. Decide nothing.
    let Some(cached) = cached else {
        return ctx.store.release(id, token).await.map(drop);
    };
    // Only pods under Kiln's own names: another pod with the build's labels
    // (anyone may copy them) is neither adopted, nor refused for, nor
    // deleted.
    let pods: Vec<PodView> = fresh
        .as_deref()
        .unwrap_or(&cached)
        .iter()
        .filter(|p| named_by_kiln(id, p))
        .cloned()
        .collect();
    let pods = pods.as_slice();
    match decide(id, pods, record.as_ref(), &ctx.policy) {
        Adoption::Forget => sup.registry.forget_foreign(id),
        Adoption::CleanUp => {
            // The build ended with its pods still there (its worker died
            // between the terminal event and the deletes): keep their logs
            // as that worker would have.
            let plan = pods.iter().find_map(|p| {
                serde_json::from_str::<crate::plan::BuildPlan>(p.plan.as_deref()?).ok()
            });
            for p in pods {
                if let Some(plan) = &plan {
                    super::log_keep::keep_log(ctx, plan, &p.namespace, &p.name).await;
                }
                ctx.pods.delete(&p.namespace, &p.name, &p.uid).await?;
            }
            sup.registry.forget_foreign(id);
        }
        Adoption::Unreadable => {
            tracing::error!(build_id = %id, "pods carry no readable plan; cannot adopt");
        }
        Adoption::Untrusted(why) => {
            // Pods Kiln cannot trust as its own: left alone (never deleted,
            // never driven), and not looked at again by this worker until
            // they are gone or it restarts with another policy.
            tracing::error!(build_id = %id, namespace, "refusing to adopt pods the policy does not allow: {why}");
            ctx.metrics.adoption_refused();
            sup.registry.refuse_foreign(id);
        }
        Adoption::Resume(plan) => {
            resume(sup, *plan, pods, &cached, claimed_at, token.clone()).await;
            return Ok(());
        }
    }
    ctx.store.release(id, token).await.map(drop)
}

/// A build without a record may have lost its lease with it (Redis lost
/// its keys), while its owner lives: that owner acts until its fence
/// closes, which is at most one TTL after its last renewal, and every
/// renewal since the loss fails. Holding the new claim (renewed as the
/// renewal loop would) for one whole TTL before reading the pods and acting makes
/// sure it has stopped: two workers never drive one build. Returns the send
/// time of the last renewal (the fence counts from it); `None` if the
/// claim was lost meanwhile or the worker is stopping.
async fn outwait_previous_owner(
    sup: &Supervisor,
    id: &str,
    token: &LeaseToken,
) -> Result<Option<Instant>> {
    let ttl = sup.ctx.store.ttl();
    let period = super::fencing::renew_period(ttl);
    let held = [(id.to_owned(), token.clone())];
    let until = Instant::now() + ttl;
    let mut renewed_at = None;
    while renewed_at.is_none_or(|at| at < until) {
        if crate::retry::bounded(tokio::time::sleep(period), &sup.stop)
            .await
            .is_none()
        {
            return Ok(None);
        }
        let sent = Instant::now();
        match sup.ctx.store.renew_many(&held).await?.first() {
            Some(Renewal::Renewed | Renewal::CancelPending) => renewed_at = Some(sent),
            _ => return Ok(None),
        }
    }
    Ok(renewed_at)
}

/// Drives the build from `pods`. `cached` is what the watch cache showed
/// before `pods` were read: what the watch delivered since (it went to the
/// foreign set, not to the task) is handed over as the difference between
/// it and the cache now. Not the difference from `pods`: when they come
/// from the server, a cache that lags behind it would make a pod it has
/// not seen yet look deleted.
async fn resume(
    sup: &Supervisor,
    plan: BuildPlan,
    pods: &[PodView],
    cached: &[PodView],
    claimed_at: Instant,
    token: LeaseToken,
) {
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
    if build_task::spawn_claimed_at(sup, machine, actions, claimed_at, token.clone()).is_none() {
        // Driven here meanwhile: that task holds its own claim.
        give_back::release(sup, &id, &token).await;
        return;
    }
    // Pod events since `pods` were read went to the foreign set.
    let now = sup
        .pod_cache
        .build_pods(&namespace, &id)
        .unwrap_or_default();
    for input in pod_cache::missed(cached, &now) {
        sup.registry.send(&id, input);
    }
    // The cancel marked on the pods survives Redis losing the flag.
    let marked = pods.iter().chain(&now).find_map(|p| p.cancelled.clone());
    if let Some(reason) = marked {
        sup.registry.send(&id, Input::Cancel(reason));
    } else if let Ok(Some(reason)) = sup.ctx.store.cancel_reason(&id).await {
        sup.registry.send(&id, Input::Cancel(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kilns_names_are_kilns() {
        let mut p = PodView {
            name: kiln_protocol::pod_name("b", "api", 2),
            image: "api".into(),
            attempt: 2,
            ..PodView::default()
        };
        assert!(named_by_kiln("b", &p));
        assert!(!named_by_kiln("c", &p));
        p.name = "forged".into();
        assert!(!named_by_kiln("b", &p));
    }

    /// Issue 21: before this, a platform's or the publish step's pod was
    /// never adopted (tests/tests/platforms.rs, the worker killed during
    /// the publish step, hung).
    #[test]
    fn platform_and_publish_pods_are_kilns_under_their_names() {
        let arm = kiln_protocol::platform_unit("api", "linux/arm64/v8");
        let mut p = PodView {
            name: kiln_protocol::pod_name("b", &arm, 1),
            image: "api".into(),
            platform: Some(kiln_protocol::platform_label("linux/arm64/v8")),
            attempt: 1,
            ..PodView::default()
        };
        assert!(named_by_kiln("b", &p));
        p.platform = Some(kiln_protocol::platform_label("linux/amd64"));
        assert!(!named_by_kiln("b", &p), "another platform's label");
        p.platform = None;
        p.publish = true;
        assert!(!named_by_kiln("b", &p));
        p.name = kiln_protocol::pod_name("b", &kiln_protocol::publish_unit("api"), 1);
        assert!(named_by_kiln("b", &p));
    }
}
