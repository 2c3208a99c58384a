//! A cancel request: checked against the build's record ([`decide`], pure),
//! flagged in Redis, and handed to the owner, whoever it is.

use backon::Retryable;
use kiln_protocol::Reason;

use super::Supervisor;
use super::intake::{Rejection, ack, joined, reject};
use crate::amqp::Incoming;
use crate::lease::{BuildRecord, RecordState};
use crate::machine::Input;
use crate::policy::{DEFAULT_TENANT, Policy};
use crate::retry;

/// What to do with a readable cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CancelStep {
    /// Flag the cancel and tell the owner.
    Flag,
    /// The build is over: nothing to cancel.
    Ignore,
    Reject(Rejection),
}

/// Only the tenant that owns a build may cancel it; a user without a policy
/// entry of its own acts as `default`, as for requests. A build with no
/// record (not seen yet, or Redis did not answer) is flagged: the flag waits
/// for its request. Pure.
pub(super) fn decide(
    id: &str,
    user_id: Option<&str>,
    policy: &Policy,
    record: Option<&BuildRecord>,
) -> CancelStep {
    let tenant = user_id
        .filter(|u| policy.tenant(u).is_some())
        .unwrap_or(DEFAULT_TENANT);
    match record {
        Some(r) if r.tenant != tenant => CancelStep::Reject(Rejection {
            id: None,
            reason: Reason::PolicyViolation,
            message: format!("build {id} belongs to another tenant"),
        }),
        Some(r) if r.state == RecordState::Finished => CancelStep::Ignore,
        _ => CancelStep::Flag,
    }
}

/// One cancel request, from delivery to ack.
pub(super) async fn handle_cancel(sup: Supervisor, d: Incoming) {
    let ctx = &sup.ctx;
    let cancel = match kiln_protocol::parse_cancel_request(&d.body) {
        Ok(c) => c,
        Err(e) => {
            let r = Rejection {
                id: None,
                reason: Reason::InvalidRequest,
                message: joined(&e.errors()),
            };
            return reject(&sup, &d, r).await;
        }
    };
    let id = &cancel.id;
    let record = ctx.leases.record(id).await.ok().flatten();
    match decide(id, d.user_id.as_deref(), &ctx.policy, record.as_ref()) {
        CancelStep::Reject(r) => return reject(&sup, &d, r).await,
        CancelStep::Ignore => {
            tracing::info!(build_id = %id, "cancel of a finished build ignored");
            return ack(&d, id).await;
        }
        CancelStep::Flag => {}
    }
    let reason = cancel.reason.as_deref().unwrap_or("cancelled");
    let keep = ctx.record_ttl.max(std::time::Duration::from_secs(3600));
    // Redis trouble is waited out while holding the delivery, as for
    // requests. `None`: shutting down; the broker redelivers the cancel.
    let flag = (|| ctx.leases.request_cancel(id, reason, keep))
        .retry(retry::redis())
        .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot record cancel; retrying"));
    if let Some(Ok(())) = retry::bounded(flag, &sup.stop).await {
        // The owner hears it through the notice; if it is us, act now.
        sup.registry.send(id, Input::Cancel(reason.to_owned()));
        ack(&d, id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::intake::tests::policy;

    fn record(tenant: &str, state: RecordState) -> BuildRecord {
        BuildRecord {
            state,
            phase: None,
            tenant: tenant.to_owned(),
            namespace: "builds".to_owned(),
            worker: "w1".to_owned(),
            images: std::collections::BTreeMap::new(),
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            history: crate::lease::History::default(),
        }
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
        assert_eq!(rej.message, "build b belongs to another tenant");
        assert_eq!(rej.id, None);
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
    fn a_build_without_a_record_is_flagged_for_when_it_comes() {
        assert_eq!(decide("b", Some("shop"), &policy(), None), CancelStep::Flag);
    }
}
