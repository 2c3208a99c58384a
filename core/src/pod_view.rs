//! [`PodView`]: the little that Kiln reads of one of its pods, copied out
//! of the Kubernetes object by the worker (`pod/view.rs`), so that nothing
//! in the core depends on kube. The machine, classification, adoption and
//! the owner of an id decide on it.

use std::sync::Arc;

/// Pod phase as reported by the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// The terminated state of the Kaniko container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: Option<String>,
    /// Termination message: the digest (`--digest-file
    /// /dev/termination-log`, written before the push, so also there when
    /// the push failed), else on failure the log tail
    /// (`FallbackToLogsOnError`).
    pub message: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
}

/// What Kiln reads of one of its pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Full build id (annotation `kiln.dev/build-id`).
    pub build_id: String,
    pub image: String,
    /// The `kiln.dev/platform` label of a platform's pod (the label form
    /// of the platform, [`kiln_protocol::platform_label`]).
    pub platform: Option<String>,
    /// The pod is the publish step of an image with `platforms` (label
    /// `kiln.dev/step: publish`).
    pub publish: bool,
    pub attempt: u32,
    pub phase: Option<PodPhase>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub created_at: Option<jiff::Timestamp>,
    /// `PodScheduled=False` with this reason and message.
    pub unschedulable: Option<(String, String)>,
    /// Waiting reason and message of the Kaniko container.
    pub waiting: Option<(String, String)>,
    pub running_since: Option<jiff::Timestamp>,
    pub terminated: Option<Terminated>,
    /// `status.reason` / `status.message` (Evicted, DeadlineExceeded, ...).
    pub pod_reason: Option<String>,
    pub pod_message: Option<String>,
    /// A `DisruptionTarget=True` condition (preemption, node drain, taint).
    pub disrupted: bool,
    /// The raw `kiln.dev/plan` annotation, parsed only when adopting.
    pub plan: Option<Arc<str>>,
    /// The owning tenant (annotation `kiln.dev/tenant`).
    pub tenant: Option<String>,
    /// The cancel of the build, marked on its pods (annotation
    /// `kiln.dev/cancelled`, the cancel's reason) before the cancel was
    /// acked: it survives Redis losing the cancel flag.
    pub cancelled: Option<String>,
    /// The Kaniko container's `imageID` once it started: the digest the
    /// node actually ran, for the provenance.
    pub executor_image_id: Option<String>,
}
