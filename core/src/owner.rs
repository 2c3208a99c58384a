//! Who holds a build id: the tenant and the request (its fingerprint) of
//! the build under it, and where that was learnt. The owner is written in
//! the record from the claim on and on the pods (`kiln.dev/tenant`, the
//! plan), so it survives Redis losing the record; requests and cancels are
//! checked against it.

use crate::plan::BuildPlan;
use crate::pod_view::PodView;
use crate::policy::{DEFAULT_TENANT, Policy};
use crate::record::{BuildRecord, RecordState};
use crate::rejection::Rejection;
use kiln_protocol::Reason;

/// The owner of a build id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tenant: String,
    /// The request's fingerprint; empty when unknown (records written
    /// before fingerprints, pods without a readable plan): it then matches
    /// any request of the tenant.
    pub fingerprint: String,
    pub learnt: Learnt,
}

/// Where an [`Owner`] was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learnt {
    /// The build's Redis record, in this state.
    Record(RecordState),
    /// The plan of the build this worker drives.
    Driven,
    /// The build's pods.
    Pods,
}

impl Owner {
    /// The owner a record names.
    pub fn of_record(r: &BuildRecord) -> Self {
        Self {
            tenant: r.tenant.clone(),
            fingerprint: r.fingerprint.clone(),
            learnt: Learnt::Record(r.state),
        }
    }

    /// The owner a plan driven here stands for.
    pub fn of_plan(plan: &BuildPlan) -> Self {
        Self {
            tenant: plan.tenant.clone(),
            fingerprint: plan.fingerprint.clone(),
            learnt: Learnt::Driven,
        }
    }

    /// The owner the pods name: the tenant of their annotation (or, for pods
    /// written before it, of their plan) and the fingerprint of their plan
    /// (empty when unreadable: it then matches any request).
    pub fn of_pods(pods: &[PodView]) -> Option<Self> {
        let plan = pods
            .iter()
            .filter_map(|p| p.plan.as_deref())
            .find_map(BuildPlan::from_annotation);
        let tenant = pods
            .iter()
            .find_map(|p| p.tenant.clone())
            .or_else(|| plan.as_ref().map(|p| p.tenant.clone()))?;
        Some(Self {
            tenant,
            fingerprint: plan.map(|p| p.fingerprint).unwrap_or_default(),
            learnt: Learnt::Pods,
        })
    }

    /// The owner of a duplicate whose record named none (never written so
    /// by Kiln): no tenant, so every request conflicts with it rather than
    /// passing as its duplicate.
    pub fn unknown() -> Self {
        Self {
            tenant: String::new(),
            fingerprint: String::new(),
            learnt: Learnt::Record(RecordState::Accepted),
        }
    }

    /// The record says the build finished (the pods never do: they are
    /// deleted).
    pub fn finished(&self) -> bool {
        self.learnt == Learnt::Record(RecordState::Finished)
    }

    /// Why `plan` cannot be the build this owner holds, if it cannot: the
    /// `request.rejected` (`IdConflict`) it gets. An id is held by its
    /// owner's tenant and request: another tenant's request, or one of the
    /// same tenant with a different fingerprint, is a conflict, never a
    /// duplicate. An empty fingerprint compares equal to any.
    pub fn conflict(&self, plan: &BuildPlan) -> Option<Rejection> {
        let id = &plan.id;
        let message = if self.tenant != plan.tenant {
            format!("build id {id} is held by another tenant; choose another id")
        } else if !self.fingerprint.is_empty()
            && !plan.fingerprint.is_empty()
            && self.fingerprint != plan.fingerprint
        {
            format!(
                "build id {id} is held by a different request of this tenant; resend the same request or choose another id"
            )
        } else {
            return None;
        };
        Some(Rejection::of_id(id, Reason::IdConflict, message))
    }
}

/// The tenant a sender acts as: its own policy entry, else `default`.
pub fn tenant_of<'a>(user_id: Option<&'a str>, policy: &Policy) -> &'a str {
    user_id
        .filter(|u| policy.tenant(u).is_some())
        .unwrap_or(DEFAULT_TENANT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{policy, shop_plan};

    fn pod(tenant: Option<&str>, plan: Option<&str>) -> PodView {
        PodView {
            tenant: tenant.map(str::to_owned),
            plan: plan.map(Into::into),
            ..PodView::default()
        }
    }

    #[test]
    fn the_pods_name_their_tenant_and_the_plans_fingerprint() {
        let plan = shop_plan();
        let annotation = plan.to_annotation();
        let owner = Owner::of_pods(&[
            pod(None, Some("{broken")),
            pod(Some("shop"), Some(&annotation)),
        ]);
        assert_eq!(
            owner,
            Some(Owner {
                learnt: Learnt::Pods,
                ..Owner::of_plan(&plan)
            })
        );
    }

    #[test]
    fn pods_before_the_tenant_annotation_name_the_plans_tenant() {
        let plan = shop_plan();
        let owner = Owner::of_pods(&[pod(None, Some(&plan.to_annotation()))]).unwrap();
        assert_eq!(owner.tenant, "shop");
        assert_eq!(owner.fingerprint, plan.fingerprint);
    }

    #[test]
    fn pods_without_a_plan_match_any_request_of_their_tenant_and_none_names_nobody() {
        let owner = Owner::of_pods(&[pod(Some("shop"), None)]).unwrap();
        assert_eq!(
            (owner.tenant.as_str(), owner.fingerprint.as_str()),
            ("shop", "")
        );
        assert_eq!(Owner::of_pods(&[pod(None, None)]), None);
        assert_eq!(Owner::of_pods(&[]), None);
    }

    #[test]
    fn a_sender_acts_as_its_tenant_or_default() {
        assert_eq!(tenant_of(Some("shop"), &policy()), "shop");
        assert_eq!(tenant_of(Some("stranger"), &policy()), DEFAULT_TENANT);
        assert_eq!(tenant_of(None, &policy()), DEFAULT_TENANT);
    }
}
