//! What `kiln wait` follows (the build, its images, whose it may be) and
//! the exit code a terminal phase gives.

use std::time::Duration;

use kiln_protocol::Phase;

use crate::cli::exit;
use crate::cli::output::Output;
use crate::store::BuildRecord;

/// What to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    pub build_id: String,
    /// Image names known in advance (from the request), shown at once.
    pub images: Vec<String>,
    pub timeout: Duration,
    pub output: Output,
    /// Whether this wait follows a publish (a finished record then means the
    /// id was used before).
    pub duplicate: bool,
    /// After a publish: the id of the `request.rejected` event that would
    /// answer the message published (`request_rejected_id`).
    pub rejected_id: Option<String>,
    /// After a publish: the publishing tenant (the AMQP user). A Redis
    /// record of another tenant's build under the same id is not this
    /// request's answer (the workers answer with `request.rejected`).
    pub tenant: Option<String>,
}

impl Follow {
    /// Whether a record may be of this publisher's build. A build run under
    /// the policy's `default` tenant may be anyone's: the record cannot
    /// tell, so it counts as ours, as before tenants were compared.
    pub fn ours(&self, rec: &BuildRecord) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| *t == rec.tenant || rec.tenant == crate::policy::DEFAULT_TENANT)
    }

    /// Whether a `build.*`/`image.*` event carrying `tenant` may be of this
    /// publisher's build (same rule as [`Follow::ours`]); `request.rejected`
    /// events are matched by their id instead.
    pub(super) fn tenant_may_be(&self, tenant: Option<&str>) -> bool {
        match (&self.tenant, tenant) {
            (Some(ours), Some(t)) => t == ours || t == crate::policy::DEFAULT_TENANT,
            _ => true,
        }
    }
}

/// The exit code of a terminal build phase.
pub fn exit_code(phase: Phase) -> u8 {
    match phase {
        Phase::Succeeded => exit::OK,
        Phase::Failed => exit::FAILED,
        Phase::Cancelled => exit::CANCELLED,
        Phase::Rejected => exit::REJECTED,
        _ => exit::ERROR,
    }
}
