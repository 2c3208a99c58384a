//! One unit of a build as the machine tracks it: an image's own pod, or
//! one platform's pod or the publish step of an image with `platforms`
//! ([`Step`]); its state, its current pod and what its attempts left
//! behind.

use std::time::Instant;

use kiln_protocol::{Phase, Reason};

use crate::classify::Failure;
use crate::plan::Step;
use crate::pod_view::PodView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImgState {
    /// Pod of the current attempt asked for, not yet known to exist.
    Creating,
    Pending,
    Running,
    /// Waiting out the backoff before the next attempt.
    Retrying,
    /// The pod of the current attempt was refused by a ResourceQuota:
    /// waiting before trying to create it again.
    Waiting,
    /// The publish step of an image with `platforms`, waiting for every
    /// platform to succeed.
    Blocked,
    Succeeded,
    Failed,
    Cancelled,
}

impl ImgState {
    pub(super) fn terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub(super) fn phase(self) -> Phase {
        match self {
            Self::Creating | Self::Pending | Self::Blocked => Phase::Scheduled,
            Self::Running => Phase::Running,
            Self::Retrying => Phase::Retrying,
            Self::Waiting => Phase::Waiting,
            Self::Succeeded => Phase::Succeeded,
            Self::Failed => Phase::Failed,
            Self::Cancelled => Phase::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodId {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
}

impl PodId {
    pub(super) fn of(v: &PodView) -> Self {
        Self {
            namespace: v.namespace.clone(),
            name: v.name.clone(),
            uid: v.uid.clone(),
        }
    }

    /// `v` is this very pod: same namespace and uid (the API server assigns
    /// uids; a pod with another uid is another pod, whatever its name).
    pub(super) fn is(&self, v: &PodView) -> bool {
        self.uid == v.uid && self.namespace == v.namespace
    }
}

#[derive(Debug, Clone)]
pub(super) struct Img {
    /// The image (index into the plan's images) and which of its pods.
    pub(super) image: usize,
    pub(super) step: Step,
    pub(super) attempt: u32,
    pub(super) state: ImgState,
    /// Pod of the current attempt.
    pub(super) pod: Option<PodId>,
    /// Pods of earlier attempts, deleted once the current one exists.
    pub(super) stale: Vec<PodId>,
    pub(super) pending_since: Option<Instant>,
    pub(super) stuck: Option<(Reason, String)>,
    pub(super) retry_at: Option<Instant>,
    pub(super) started_at: Option<jiff::Timestamp>,
    pub(super) finished_at: Option<jiff::Timestamp>,
    pub(super) digest: Option<String>,
    pub(super) failure: Option<Failure>,
    /// Refusals by a ResourceQuota of the current attempt's pod so far, and
    /// the API server's last message about it.
    pub(super) quota_tries: u32,
    pub(super) quota_message: Option<String>,
}

impl Img {
    pub(super) fn new(image: usize, step: Step, attempt: u32) -> Self {
        Self {
            image,
            step,
            attempt,
            state: if step == Step::Publish {
                ImgState::Blocked
            } else {
                ImgState::Creating
            },
            pod: None,
            stale: Vec::new(),
            pending_since: None,
            stuck: None,
            retry_at: None,
            started_at: None,
            finished_at: None,
            digest: None,
            failure: None,
            quota_tries: 0,
            quota_message: None,
        }
    }
}
