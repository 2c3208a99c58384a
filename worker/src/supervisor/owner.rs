//! Who holds a build id without asking Redis: the build driven here (its
//! plan), else its pods (`kiln.dev/tenant` and the plan's fingerprint).
//! The owner is written on the pods so that it survives Redis losing the
//! record (DESIGN section 10); requests and cancels consult this before, or
//! instead of, the record.

use super::Supervisor;
use crate::classify::PodView;
use crate::plan::BuildPlan;
use crate::store::Holder;

/// The owner of `id` as this worker knows it from the cluster: the build
/// driven here, else the pods of `id` in the namespaces where this worker
/// saw them (one LIST each), else, with `everywhere`, in every namespace of
/// the policy. `None`: no pod of `id` found.
pub(super) async fn known(sup: &Supervisor, id: &str, everywhere: bool) -> Option<Holder> {
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
        let Ok(pods) = sup.ctx.pods.build_pods(&ns, id).await else {
            continue;
        };
        if let Some(owner) = of_pods(&pods) {
            return Some(owner);
        }
    }
    None
}

/// The owner the pods name: the tenant of their annotation (or, for pods
/// written before it, of their plan) and the fingerprint of their plan
/// (empty when unreadable: it then matches any request). Pure.
pub(super) fn of_pods(pods: &[PodView]) -> Option<Holder> {
    let plan = pods
        .iter()
        .filter_map(|p| p.plan.as_deref())
        .find_map(BuildPlan::from_annotation);
    let tenant = pods
        .iter()
        .find_map(|p| p.tenant.clone())
        .or_else(|| plan.as_ref().map(|p| p.tenant.clone()))?;
    Some(Holder {
        state: "pods".to_owned(),
        tenant,
        fingerprint: plan.map(|p| p.fingerprint).unwrap_or_default(),
    })
}

/// The owner a plan driven here stands for.
pub(super) fn of_plan(plan: &BuildPlan) -> Holder {
    Holder {
        state: "driven".to_owned(),
        tenant: plan.tenant.clone(),
        fingerprint: plan.fingerprint.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(tenant: Option<&str>, plan: Option<&str>) -> PodView {
        PodView {
            tenant: tenant.map(str::to_owned),
            plan: plan.map(Into::into),
            ..PodView::default()
        }
    }

    #[test]
    fn the_pods_name_their_tenant_and_the_plans_fingerprint() {
        let plan = crate::supervisor::intake::tests::shop_plan();
        let annotation = plan.to_annotation();
        let owner = of_pods(&[
            pod(None, Some("{broken")),
            pod(Some("shop"), Some(&annotation)),
        ]);
        assert_eq!(
            owner,
            Some(of_plan(&plan)).map(|h| Holder {
                state: "pods".to_owned(),
                ..h
            })
        );
    }

    #[test]
    fn pods_before_the_tenant_annotation_name_the_plans_tenant() {
        let plan = crate::supervisor::intake::tests::shop_plan();
        let owner = of_pods(&[pod(None, Some(&plan.to_annotation()))]).unwrap();
        assert_eq!(owner.tenant, "shop");
        assert_eq!(owner.fingerprint, plan.fingerprint);
    }

    #[test]
    fn pods_without_a_plan_match_any_request_of_their_tenant_and_none_names_nobody() {
        let owner = of_pods(&[pod(Some("shop"), None)]).unwrap();
        assert_eq!(
            (owner.tenant.as_str(), owner.fingerprint.as_str()),
            ("shop", "")
        );
        assert_eq!(of_pods(&[pod(None, None)]), None);
        assert_eq!(of_pods(&[]), None);
    }
}
