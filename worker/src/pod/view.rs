//! What Kiln reads out of a pod: the Kubernetes object becomes a
//! [`PodView`], so that `classify.rs` and the machine never see kube types.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, Pod, PodCondition, PodStatus,
};

use super::labels::{
    ANN_BUILD_ID, ANN_CANCELLED, ANN_PLAN, ANN_TENANT, KANIKO, LABEL_ATTEMPT, LABEL_IMAGE,
    LABEL_PLATFORM, LABEL_STEP, PUBLISH, STEP_PUBLISH,
};
use crate::classify::{PodPhase, PodView, Terminated};

/// Copies what Kiln reads out of a pod.
pub fn view(p: &Pod) -> PodView {
    let meta = &p.metadata;
    let labels = meta.labels.as_ref();
    let annotations = meta.annotations.as_ref();
    let status = p.status.as_ref();
    let state = status.and_then(explaining_state);
    let conditions = status.and_then(|s| s.conditions.as_ref());
    PodView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        build_id: annotations
            .and_then(|a| a.get(ANN_BUILD_ID))
            .cloned()
            .unwrap_or_default(),
        image: labels
            .and_then(|l| l.get(LABEL_IMAGE))
            .cloned()
            .unwrap_or_default(),
        platform: labels.and_then(|l| l.get(LABEL_PLATFORM)).cloned(),
        publish: labels
            .and_then(|l| l.get(LABEL_STEP))
            .is_some_and(|s| s == STEP_PUBLISH),
        attempt: labels
            .and_then(|l| l.get(LABEL_ATTEMPT))
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        phase: status.and_then(|s| s.phase.as_deref()).map(phase),
        deleting: meta.deletion_timestamp.is_some(),
        created_at: meta.creation_timestamp.as_ref().map(|t| t.0),
        unschedulable: conditions.and_then(|cs| unschedulable(cs)),
        waiting: state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))),
        running_since: state
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .map(|t| t.0),
        terminated: state.and_then(|s| s.terminated.as_ref()).map(terminated),
        pod_reason: status.and_then(|s| s.reason.clone()),
        pod_message: status.and_then(|s| s.message.clone()),
        disrupted: conditions.is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        }),
        plan: annotations
            .and_then(|a| a.get(ANN_PLAN))
            .map(|s| Arc::from(s.as_str())),
        tenant: annotations.and_then(|a| a.get(ANN_TENANT)).cloned(),
        cancelled: annotations.and_then(|a| a.get(ANN_CANCELLED)).cloned(),
        executor_image_id: status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| main_container(&c.name)))
            .map(|c| c.image_id.clone())
            .filter(|id| !id.is_empty()),
    }
}

/// The state of the container that explains the pod: an init container
/// (context download) that failed, else the Kaniko container.
fn explaining_state(status: &PodStatus) -> Option<&ContainerState> {
    let kaniko = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| main_container(&c.name)));
    let init_failed = status.init_container_statuses.as_ref().and_then(|cs| {
        cs.iter().find(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
        })
    });
    init_failed
        .and_then(|c| c.state.as_ref())
        .or_else(|| kaniko.and_then(|c| c.state.as_ref()))
}

/// The container whose end is the pod's outcome: Kaniko's, or the publish
/// step's.
fn main_container(name: &str) -> bool {
    name == KANIKO || name == PUBLISH
}

fn phase(phase: &str) -> PodPhase {
    match phase {
        "Pending" => PodPhase::Pending,
        "Running" => PodPhase::Running,
        "Succeeded" => PodPhase::Succeeded,
        "Failed" => PodPhase::Failed,
        _ => PodPhase::Unknown,
    }
}

fn terminated(t: &ContainerStateTerminated) -> Terminated {
    Terminated {
        exit_code: t.exit_code,
        reason: t.reason.clone(),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|x| x.0),
        finished_at: t.finished_at.as_ref().map(|x| x.0),
    }
}

/// `PodScheduled=False`: its reason and message.
fn unschedulable(conditions: &[PodCondition]) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
}
