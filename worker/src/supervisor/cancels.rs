//! A cancel request: checked against the build's record ([`decide`], pure),
//! flagged in Redis, and handed to the owner, whoever it is.

use backon::Retryable;
use kiln_protocol::Reason;

use super::intake::{Rejection, ack, joined, refuse, reject, tenant_of};
use super::{Supervisor, owner};
use crate::amqp::Incoming;
use crate::machine::Input;
use crate::policy::Policy;
use crate::retry;
use crate::store::{BuildRecord, RecordState};

/// What to do with a readable cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CancelStep {
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

/// Who holds a build id, from its record or, without one, from its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner<'a> {
    pub tenant: &'a str,
    /// The record says finished (the pods never do: they are deleted).
    pub finished: bool,
}

impl<'a> Owner<'a> {
    pub(super) fn of_record(r: &'a BuildRecord) -> Self {
        Self {
            tenant: &r.tenant,
            finished: r.state == RecordState::Finished,
        }
    }
}

/// Only the tenant that owns a build may cancel it; a user without a policy
/// entry of its own acts as `default`, as for requests. The owner comes
/// from the record or, when Redis has none, from the pods; a build nobody
/// holds gets the cancel kept for the sender's tenant until its request
/// comes. Pure.
pub(super) fn decide(
    id: &str,
    user_id: Option<&str>,
    policy: &Policy,
    owner: Option<Owner<'_>>,
) -> CancelStep {
    let tenant = tenant_of(user_id, policy);
    match owner {
        Some(o) if o.tenant != tenant => CancelStep::Reject(Rejection {
            id: Some(id.to_owned()),
            reason: Reason::PolicyViolation,
            message: format!("build {id} belongs to another tenant"),
        }),
        Some(o) if o.finished => CancelStep::Ignore,
        Some(_) => CancelStep::Flag,
        None => CancelStep::Keep(tenant.to_owned()),
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
    // Redis trouble is waited out while holding the delivery, as for
    // requests: deciding without the record could stop another tenant's
    // build. `None`: shutting down; the broker redelivers the cancel.
    let read = (|| ctx.store.record(id))
        .retry(retry::redis())
        .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot read the build record; retrying"));
    let Some(Ok(record)) = retry::bounded(read, &sup.stop).await else {
        return;
    };
    let reason = cancel.reason.as_deref().unwrap_or("cancelled");
    let keep = ctx.record_ttl.max(std::time::Duration::from_secs(3600));
    let from_pods = if record.is_some() {
        None
    } else {
        // Without a record the id is most likely not claimed yet: keep the
        // cancel for the sender's tenant at once (it touches no other
        // tenant's build), so a request consumed while the pods are being
        // looked up still starts cancelled. The decision below writes it
        // again or refuses the cancel.
        let tenant = tenant_of(d.user_id.as_deref(), &ctx.policy);
        if let Err(e) = ctx
            .store
            .request_cancel(id, Some(tenant), reason, keep)
            .await
        {
            tracing::warn!(build_id = %id, error = %e, "cannot keep the cancel yet; deciding first");
        }
        owner::known(&sup, id, true).await.map(|o| o.tenant)
    };
    let owner = record
        .as_ref()
        .map(Owner::of_record)
        .or(from_pods.as_deref().map(|tenant| Owner {
            tenant,
            finished: false,
        }));
    let for_tenant = match decide(id, d.user_id.as_deref(), &ctx.policy, owner) {
        CancelStep::Reject(r) => return refuse(&sup, &d, r, true).await,
        CancelStep::Ignore => {
            tracing::info!(build_id = %id, "cancel of a finished build ignored");
            return ack(&d, id).await;
        }
        CancelStep::Flag => None,
        CancelStep::Keep(tenant) => Some(tenant),
    };
    let flag = (|| ctx.store.request_cancel(id, for_tenant.as_deref(), reason, keep))
        .retry(retry::redis())
        .notify(|e, wait| tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot record cancel; retrying"));
    if let Some(Ok(())) = retry::bounded(flag, &sup.stop).await {
        // The owner hears it through the notice; if it is us, act now.
        if for_tenant.is_none() {
            sup.registry.send(id, Input::Cancel(reason.to_owned()));
        }
        ack(&d, id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DEFAULT_TENANT;
    use crate::supervisor::intake::tests::policy;

    fn record(tenant: &str, state: RecordState) -> BuildRecord {
        BuildRecord {
            state,
            phase: None,
            tenant: tenant.to_owned(),
            fingerprint: String::new(),
            namespace: "builds".to_owned(),
            worker: "w1".to_owned(),
            images: std::collections::BTreeMap::new(),
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            history: crate::store::History::default(),
        }
    }

    #[test]
    fn the_owning_tenant_may_cancel_a_running_build() {
        let r = record("shop", RecordState::Accepted);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(Owner::of_record(&r))),
            CancelStep::Flag
        );
    }

    #[test]
    fn another_tenant_is_refused_by_name() {
        let r = record("shop", RecordState::Accepted);
        let CancelStep::Reject(rej) =
            decide("b", Some("other"), &policy(), Some(Owner::of_record(&r)))
        else {
            panic!("not rejected");
        };
        assert_eq!(rej.reason, Reason::PolicyViolation);
        assert_eq!(rej.message, "build b belongs to another tenant");
        assert_eq!(rej.id.as_deref(), Some("b"));
    }

    #[test]
    fn a_build_in_its_claimed_state_is_flagged_for_its_owner() {
        let r = record("shop", RecordState::Claimed);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(Owner::of_record(&r))),
            CancelStep::Flag
        );
        let CancelStep::Reject(_) = decide("b", None, &policy(), Some(Owner::of_record(&r))) else {
            panic!("another tenant's cancel of a claimed build was not refused");
        };
    }

    #[test]
    fn a_user_without_a_policy_entry_acts_as_default() {
        let r = record(DEFAULT_TENANT, RecordState::Accepted);
        assert_eq!(
            decide("b", Some("stranger"), &policy(), Some(Owner::of_record(&r))),
            CancelStep::Flag
        );
        assert_eq!(
            decide("b", None, &policy(), Some(Owner::of_record(&r))),
            CancelStep::Flag
        );
    }

    #[test]
    fn a_finished_build_is_left_alone() {
        let r = record("shop", RecordState::Finished);
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(Owner::of_record(&r))),
            CancelStep::Ignore
        );
    }

    #[test]
    fn without_a_record_the_owner_read_from_the_pods_decides() {
        let pods = Owner {
            tenant: "shop",
            finished: false,
        };
        assert_eq!(
            decide("b", Some("shop"), &policy(), Some(pods)),
            CancelStep::Flag
        );
        let CancelStep::Reject(rej) = decide("b", None, &policy(), Some(pods)) else {
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
