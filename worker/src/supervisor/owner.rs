//! Who holds a build id without asking Redis: the build driven here (its
//! plan), else its pods (`kiln.dev/tenant` and the plan's fingerprint).
//! The owner is written on the pods so that it survives Redis losing the
//! record; requests and cancels consult this before, or instead of, the
//! record. The [`Owner`] type and reading it from pods are
//! `kiln_core::owner`'s.

use kiln_core::owner::Owner;

use super::Supervisor;

/// The owner of `id` as this worker knows it from the cluster: the build
/// driven here, else the pods of `id` in the namespaces where this worker
/// saw them (one LIST each), else in `fallback` (the namespace the
/// sender's tenant builds in, for a cancel). `None`: no pod of `id` found.
///
/// Never more than the namespaces the worker saw the id in, or the one
/// fallback: a cancel must not buy a LIST in every namespace of the policy.
/// A build of another tenant in another namespace is then not found, which
/// is safe: the cancel is kept for the sender's tenant only and never
/// touches it. Each LIST goes through the pod client's API-call limit.
pub(super) async fn known(sup: &Supervisor, id: &str, fallback: Option<&str>) -> Option<Owner> {
    if let Some(owner) = sup.registry.owner(id) {
        return Some(owner);
    }
    let ids = [id.to_owned()];
    let mut namespaces: Vec<String> = sup
        .registry
        .foreign_among(&ids)
        .into_iter()
        .flat_map(|(_, ns)| ns)
        .collect();
    if let (true, Some(ns)) = (namespaces.is_empty(), fallback) {
        namespaces.push(ns.to_owned());
    }
    for ns in namespaces {
        let mut pods = match sup.ctx.pods.build_pods(&ns, id).await {
            Ok(pods) => pods,
            // The other namespaces may still name the owner; without it the
            // caller goes by the record alone.
            Err(e) => {
                sup.ctx.metrics.error(&e);
                tracing::warn!(build_id = %id, namespace = %ns, error = %e, "cannot list the build's pods to find its owner");
                continue;
            }
        };
        // A pod names its tenant truly only in that tenant's namespace:
        // elsewhere its `kiln.dev/tenant` is forged, and squats no id.
        pods.retain(|p| {
            p.tenant
                .as_deref()
                .and_then(|t| sup.ctx.policy.tenant(t))
                .is_some_and(|t| t.namespace == p.namespace)
        });
        if let Some(owner) = Owner::of_pods(&pods) {
            return Some(owner);
        }
    }
    None
}
