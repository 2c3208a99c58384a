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
/// saw them (one LIST each), else, with `everywhere`, in every namespace of
/// the policy. `None`: no pod of `id` found.
pub(super) async fn known(sup: &Supervisor, id: &str, everywhere: bool) -> Option<Owner> {
    if let Some(owner) = sup.registry.owner(id) {
        return Some(owner);
    }
    let ids = [id.to_owned()];
    let mut namespaces: Vec<String> = sup
        .registry
        .foreign_among(&ids)
        .into_iter()
        .map(|(_, ns)| ns)
        .collect();
    if namespaces.is_empty() && everywhere {
        namespaces = sup.ctx.policy.namespaces().into_iter().collect();
    }
    for ns in namespaces {
        let pods = match sup.ctx.pods.build_pods(&ns, id).await {
            Ok(pods) => pods,
            // The other namespaces may still name the owner; without it the
            // caller goes by the record alone.
            Err(e) => {
                sup.ctx.metrics.error(&e);
                tracing::warn!(build_id = %id, namespace = %ns, error = %e, "cannot list the build's pods to find its owner");
                continue;
            }
        };
        if let Some(owner) = Owner::of_pods(&pods) {
            return Some(owner);
        }
    }
    None
}
