//! What an event is about ([`Level`]), where the build or image is
//! ([`Phase`]) and why it failed ([`Reason`]): the vocabularies subscribers
//! switch on.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether an event is about a whole build, one image of it, or one request
/// that could not become the build its id names (`request.rejected`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Build,
    Image,
    Request,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Build, Level::Image, Level::Request];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Build => "build",
            Level::Image => "image",
            Level::Request => "request",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a build or an image is in its life. Build events use `accepted`,
/// `succeeded`, `failed`, `cancelled`, `rejected`; image events use
/// `scheduled`, `running`, `retrying`, `succeeded`, `failed`, `cancelled`
/// and `waiting` (the pod of the attempt is refused for now, e.g. by a
/// ResourceQuota; non-terminal); request events only `rejected`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Accepted,
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Rejected,
    Waiting,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Accepted,
        Phase::Scheduled,
        Phase::Running,
        Phase::Retrying,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Rejected,
        Phase::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Scheduled => "scheduled",
            Phase::Running => "running",
            Phase::Retrying => "retrying",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Rejected => "rejected",
            Phase::Waiting => "waiting",
        }
    }

    /// Whether events of `level` may carry this phase.
    pub fn valid_for(self, level: Level) -> bool {
        match level {
            Level::Build => matches!(
                self,
                Phase::Accepted
                    | Phase::Succeeded
                    | Phase::Failed
                    | Phase::Cancelled
                    | Phase::Rejected
            ),
            Level::Image => matches!(
                self,
                Phase::Scheduled
                    | Phase::Running
                    | Phase::Retrying
                    | Phase::Succeeded
                    | Phase::Failed
                    | Phase::Cancelled
                    | Phase::Waiting
            ),
            Level::Request => self == Phase::Rejected,
        }
    }

    /// Whether nothing follows this phase at `level`. False for phases not
    /// valid at that level. `request.rejected` is terminal for the request
    /// it answers, never for the build its id names.
    pub fn is_terminal(self, level: Level) -> bool {
        self.valid_for(level)
            && match level {
                Level::Build => self != Phase::Accepted,
                Level::Image => {
                    matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
                }
                Level::Request => true,
            }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a build or image failed, was cancelled or was rejected: a fixed
/// vocabulary subscribers can switch on.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The Dockerfile build itself failed (a `RUN` step, a missing file).
    BuildError,
    /// The image was built but could not be pushed.
    PushError,
    /// The build container ran out of memory.
    #[serde(rename = "OOMKilled")]
    OOMKilled,
    /// The node evicted the pod (or the pod was disrupted).
    Evicted,
    /// The pod or the build ran past its deadline.
    DeadlineExceeded,
    /// The pod stayed Pending past the pending timeout.
    PendingTimeout,
    /// The Kaniko image could not be pulled.
    ImagePullFailed,
    /// No node could take the pod.
    Unschedulable,
    /// The pod could not be configured (missing Secret, bad template).
    ConfigError,
    /// The tenant's policy does not allow the request.
    PolicyViolation,
    /// The request is not valid.
    InvalidRequest,
    /// Someone cancelled the build, or a sibling image failed.
    Cancelled,
    /// A fault in Kiln itself.
    Internal,
    /// `request.rejected`: the id is held by another tenant's build, or by
    /// the same tenant's build of a different request.
    IdConflict,
    /// A Kubernetes ResourceQuota of the build namespace refuses the pod for
    /// now: the reason of `image.waiting`. Not terminal: the worker keeps
    /// trying while the build's deadline allows (events and status show it
    /// meanwhile); a build that runs out of time ends with
    /// `DeadlineExceeded`, its message naming the quota.
    QuotaExceeded,
}

impl Reason {
    /// Every reason, in declaration order (tests and docs checks iterate it;
    /// `every_reason_is_in_all` fails when a new variant is missing).
    pub const ALL: [Reason; 15] = [
        Reason::BuildError,
        Reason::PushError,
        Reason::OOMKilled,
        Reason::Evicted,
        Reason::DeadlineExceeded,
        Reason::PendingTimeout,
        Reason::ImagePullFailed,
        Reason::Unschedulable,
        Reason::ConfigError,
        Reason::PolicyViolation,
        Reason::InvalidRequest,
        Reason::Cancelled,
        Reason::Internal,
        Reason::IdConflict,
        Reason::QuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BuildError => "BuildError",
            Reason::PushError => "PushError",
            Reason::OOMKilled => "OOMKilled",
            Reason::Evicted => "Evicted",
            Reason::DeadlineExceeded => "DeadlineExceeded",
            Reason::PendingTimeout => "PendingTimeout",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::Unschedulable => "Unschedulable",
            Reason::ConfigError => "ConfigError",
            Reason::PolicyViolation => "PolicyViolation",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::Cancelled => "Cancelled",
            Reason::Internal => "Internal",
            Reason::IdConflict => "IdConflict",
            Reason::QuotaExceeded => "QuotaExceeded",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn phases_per_level() {
        let build: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.valid_for(Level::Build))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            build,
            ["accepted", "succeeded", "failed", "cancelled", "rejected"]
        );
        let image: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.valid_for(Level::Image))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            image,
            [
                "scheduled",
                "running",
                "retrying",
                "succeeded",
                "failed",
                "cancelled",
                "waiting"
            ]
        );
        let terminal_build: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.is_terminal(Level::Build))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            terminal_build,
            ["succeeded", "failed", "cancelled", "rejected"]
        );
        let terminal_image: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.is_terminal(Level::Image))
            .map(Phase::as_str)
            .collect();
        assert_eq!(terminal_image, ["succeeded", "failed", "cancelled"]);
        assert!(!Phase::Rejected.is_terminal(Level::Image));
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&Reason::OOMKilled).unwrap(),
            "\"OOMKilled\""
        );
        assert_eq!(
            serde_json::to_string(&Reason::DeadlineExceeded).unwrap(),
            "\"DeadlineExceeded\""
        );
        assert_eq!(
            serde_json::to_string(&Phase::Retrying).unwrap(),
            "\"retrying\""
        );
        assert_eq!(serde_json::to_string(&Level::Image).unwrap(), "\"image\"");
        for r in [Reason::OOMKilled, Reason::PushError, Reason::Internal] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    #[test]
    fn every_reason_serialises_by_name() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Reason::QuotaExceeded.as_str(), "QuotaExceeded");
    }

    #[test]
    fn every_reason_is_in_all() {
        // Exhaustive: a new variant does not compile here until it has a
        // position, and the loop fails until ALL holds it there.
        let position = |r: Reason| match r {
            Reason::BuildError => 0,
            Reason::PushError => 1,
            Reason::OOMKilled => 2,
            Reason::Evicted => 3,
            Reason::DeadlineExceeded => 4,
            Reason::PendingTimeout => 5,
            Reason::ImagePullFailed => 6,
            Reason::Unschedulable => 7,
            Reason::ConfigError => 8,
            Reason::PolicyViolation => 9,
            Reason::InvalidRequest => 10,
            Reason::Cancelled => 11,
            Reason::Internal => 12,
            Reason::IdConflict => 13,
            Reason::QuotaExceeded => 14,
        };
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(position(r), i, "{r} out of place in Reason::ALL");
        }
    }
}
