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

impl PodView {
    /// What the kept logs and `kiln logs` group this pod's attempts by:
    /// the image, or for a platform's pod `<image>/<platform>` (a
    /// platform's attempts are numbered on their own), the name
    /// [`crate::plan::ImagePlan::unit`] gives the same step.
    pub fn log_unit(&self) -> String {
        match &self.platform {
            None => self.image.clone(),
            Some(label) => kiln_protocol::platform_unit(
                &self.image,
                &kiln_protocol::platform_of_label(label).unwrap_or_else(|| label.clone()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platforms_pod_is_its_own_log_unit() {
        let mut v = PodView {
            image: "api".into(),
            ..PodView::default()
        };
        assert_eq!(v.log_unit(), "api");
        v.platform = Some(kiln_protocol::platform_label("linux/arm64/v8"));
        assert_eq!(v.log_unit(), "api/linux/arm64/v8");
        let mut plan = crate::fixtures::shop_plan();
        plan.images[0].platforms = vec!["linux/amd64".into(), "linux/arm64/v8".into()];
        v.image.clone_from(&plan.images[0].name);
        assert_eq!(
            v.log_unit(),
            plan.images[0].unit(crate::plan::Step::Platform(1))
        );
    }
}
