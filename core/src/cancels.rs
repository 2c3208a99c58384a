//! What a readable cancel request calls for, from its sender and the owner
//! of its build id.

use kiln_protocol::Reason;

use crate::owner::{Owner, tenant_of};
use crate::policy::Policy;
use crate::rejection::Rejection;

/// What to do with a readable cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// Flag the cancel for the owner and tell it.
    Flag,
    /// Nobody holds the id yet: keep the cancel for this tenant's build
    /// under it, should one come (never for another tenant's).
    Keep(String),
    /// The build is over: nothing to cancel.
    Ignore,
    /// Another tenant's build: `request.rejected`, the build goes on.
    Reject(Rejection),
}

/// Only the tenant that owns a build may cancel it; a user without a policy
/// entry of its own acts as `default`, as for requests. The owner comes
/// from the record or, when Redis has none, from the pods; a build nobody
/// holds gets the cancel kept for the sender's tenant until its request
/// comes. Pure.
pub fn decide(
    id: &str,
    user_id: Option<&str>,
    policy: &Policy,
    owner: Option<&Owner>,
) -> CancelStep {
    let tenant = tenant_of(user_id, policy);
    match owner {
        Some(o) if o.tenant != tenant => CancelStep::Reject(Rejection::of_id(
            id,
            Reason::PolicyViolation,
            format!("build {id} belongs to another tenant"),
        )),
        Some(o) if o.finished() => CancelStep::Ignore,
        Some(_) => CancelStep::Flag,
        None => CancelStep::Keep(tenant.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::policy;
    use crate::owner::Learnt;
    use crate::policy::DEFAULT_TENANT;
    use crate::record::{BuildRecord, History, RecordState};

    fn record(tenant: &str, state: RecordState) -> Owner {
        Owner::of_record(&BuildRecord {
            state,
            phase: None,
            tenant: tenant.to_owned(),
            fingerprint: String::new(),
            namespace: "builds".to_owned(),
            worker: "w1".to_owned(),
            images: std::collections::BTreeMap::new(),
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            history: History::default(),
        })
    }

    #[test]
    fn the_owning_tenant_may_cancel_a_running_build() {
        let r = record("shop", RecordState::Accepted);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(&r)),
            CancelStep::Flag
        );
    }

    #[test]
    fn another_tenant_is_refused_by_name() {
        let r = record("shop", RecordState::Accepted);
        let CancelStep::Reject(rej) = decide("b", Some("other"), &policy(), Some(&r)) else {
            panic!("not rejected");
        };
        assert_eq!(rej.reason, Reason::PolicyViolation);
        assert_eq!(rej.message(), "id: build b belongs to another tenant");
        assert_eq!(rej.id.as_deref(), Some("b"));
    }

    #[test]
    fn a_build_in_its_claimed_state_is_flagged_for_its_owner() {
        let r = record("shop", RecordState::Claimed);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(&r)),
            CancelStep::Flag
        );
        let CancelStep::Reject(_) = decide("b", None, &policy(), Some(&r)) else {
            panic!("another tenant's cancel of a claimed build was not refused");
        };
    }

    #[test]
    fn a_user_without_a_policy_entry_acts_as_default() {
        let r = record(DEFAULT_TENANT, RecordState::Accepted);
        assert_eq!(
            decide("b", Some("stranger"), &policy(), Some(&r)),
            CancelStep::Flag
        );
        assert_eq!(decide("b", None, &policy(), Some(&r)), CancelStep::Flag);
    }

    #[test]
    fn a_finished_build_is_left_alone() {
        let r = record("shop", RecordState::Finished);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(&r)),
            CancelStep::Ignore
        );
    }

    #[test]
    fn without_a_record_the_owner_read_from_the_pods_decides() {
        let pods = Owner {
            tenant: "shop".to_owned(),
            fingerprint: String::new(),
            learnt: Learnt::Pods,
        };
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(&pods)),
            CancelStep::Flag
        );
        let CancelStep::Reject(rej) = decide("b", None, &policy(), Some(&pods)) else {
            panic!("another tenant's cancel was not refused");
        };
        assert_eq!(rej.reason, Reason::PolicyViolation);
    }

    #[test]
    fn a_build_without_a_record_keeps_the_cancel_for_the_senders_tenant() {
        assert_eq!(
            decide("b", Some("shop"), &policy(), None),
            CancelStep::Keep("shop".to_owned())
        );
        assert_eq!(
            decide("b", Some("stranger"), &policy(), None),
            CancelStep::Keep(DEFAULT_TENANT.to_owned())
        );
    }
}
