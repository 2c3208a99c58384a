//! What to do with a build whose lease lapsed, from its pods, its record
//! and the current policy; and where to read its pods from. The worker's
//! adoption sweep carries it out.

use crate::plan::BuildPlan;
use crate::pod_view::{PodPhase, PodView};
use crate::policy::Policy;
use crate::record::{BuildRecord, RecordState};

/// What a lapsed build's pods and record call for.
#[derive(Debug)]
pub enum Adoption {
    /// Resume driving the build from the plan its pods carry.
    Resume(Box<BuildPlan>),
    /// The terminal event is out (the record says so, or the pods are what
    /// an interrupted clean-up leaves: [`cleanup_interrupted`]); only
    /// deleting the pods was missing.
    CleanUp,
    /// No pods left: nothing to adopt.
    Forget,
    /// Pods without a readable plan: nobody can resume them.
    Unreadable,
    /// Pods whose plan the current policy would not give its tenant, or
    /// that disagree with it (namespace, tenant, build id): not trusted as
    /// Kiln's. Nothing is created, published or deleted for them.
    Untrusted(String),
}

/// Pure: see [`Adoption`]. `id` is the build the pods were found under.
pub fn decide(
    id: &str,
    pods: &[PodView],
    record: Option<&BuildRecord>,
    policy: &Policy,
) -> Adoption {
    if pods.is_empty() {
        return Adoption::Forget;
    }
    if record.is_some_and(|r| r.state == RecordState::Finished) {
        return Adoption::CleanUp;
    }
    let Some(plan) = pods
        .iter()
        .filter_map(|p| p.plan.as_deref())
        .find_map(BuildPlan::from_annotation)
    else {
        return Adoption::Unreadable;
    };
    let mut problems = Vec::new();
    if plan.id != id {
        problems.push(format!(
            "the plan is of build {:?}, its pods of {id:?}",
            plan.id
        ));
    }
    for p in pods {
        if p.namespace != plan.namespace {
            problems.push(format!(
                "pod {} is in namespace {:?}, the plan says {:?}",
                p.name, p.namespace, plan.namespace
            ));
        }
        if p.tenant.as_deref() != Some(plan.tenant.as_str()) {
            problems.push(format!(
                "pod {} says tenant {:?}, the plan says {:?}",
                p.name,
                p.tenant.as_deref().unwrap_or(""),
                plan.tenant
            ));
        }
    }
    problems.extend(policy.recheck(&plan));
    if !problems.is_empty() {
        return Adoption::Untrusted(problems.join("; "));
    }
    if cleanup_interrupted(&plan, pods, record) {
        return Adoption::CleanUp;
    }
    Adoption::Resume(Box::new(plan))
}

/// Pure: whether the pods are what an interrupted clean-up leaves. A build's
/// pods are deleted only after its terminal event is out (besides an old
/// attempt's, once the next one exists), so an image with no pod left while
/// every remaining pod has ended means the build ended and its owner was
/// stopped between the deletes: resuming would build that image again.
/// Not when the record says the first pods were still being created (the
/// owner died mid-way, the request is still unacked): then the missing pod
/// never existed, and resuming creates it.
pub fn cleanup_interrupted(
    plan: &BuildPlan,
    pods: &[PodView],
    record: Option<&BuildRecord>,
) -> bool {
    let ended =
        |p: &PodView| p.deleting || matches!(p.phase, Some(PodPhase::Succeeded | PodPhase::Failed));
    let missing = plan
        .images
        .iter()
        .any(|i| !pods.iter().any(|p| p.image == i.name));
    let creating = record.is_some_and(|r| r.state == RecordState::Claimed);
    missing && !creating && pods.iter().all(ended)
}

/// Where adoption reads a lapsed build's pods from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSource {
    /// The watch cache: enough while the record exists. The cache may lag
    /// behind the server (a watch down or relisting), but the record
    /// orders what matters: a build that finished says so there, and a
    /// pod that is really gone is one the build must hear of anyway.
    Cache,
    /// One LIST of the build's pods. Without a record (Redis lost it) the
    /// pods are the only truth: a lagging cache can show a pod running
    /// that its owner saw succeed and deleted, and resuming from it would
    /// build the image again once the watch catches up. Read only after
    /// the previous owner must have stopped (the worker's `adoption::outwait_previous_owner`).
    Server,
}

impl PodSource {
    /// Pure: see [`PodSource`].
    pub fn of(record: Option<&BuildRecord>) -> Self {
        if record.is_some() {
            Self::Cache
        } else {
            Self::Server
        }
    }
}

#[cfg(test)]
mod tests;
