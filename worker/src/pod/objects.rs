//! Which pod a unit of a build is, and every object of an attempt as `kiln
//! plan` shows them: the Kaniko pods (an image's own, or one per platform)
//! and the publish step's pod.

use k8s_openapi::api::core::v1::Pod;

use super::model::{PodSettings, PodUnit};
use super::publish_spec::publish_pod;
use super::spec::{configmap_spec, kaniko_pod};
use crate::plan::{BuildPlan, Step};

/// The pod `unit` asks for: an image's Kaniko pod, a platform's, or the
/// publish step's.
pub fn unit_pod_spec(
    settings: &PodSettings,
    plan: &BuildPlan,
    unit: &PodUnit,
    now: jiff::Timestamp,
) -> Pod {
    match unit.step {
        Step::Publish => publish_pod(settings, plan, unit, now),
        step => kaniko_pod(settings, plan, unit.image, step, unit.attempt, now),
    }
}

/// The argv of `pod`'s first container (Kaniko's, or `kiln publish`'s).
pub fn container_args(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

/// The objects the worker sends to the API for attempt `attempt` of every
/// image of `plan`, as their JSON: the ConfigMaps of inline Dockerfiles,
/// then the pods (`kiln plan`): every platform's pod and the publish step
/// of an image with `platforms` (its `--platform` digests are known only
/// once the platforms are built: `<digest of its pod>` stands for them).
/// A ConfigMap's owner is its pod, whose uid only the API server assigns:
/// it is empty here.
pub fn attempt_objects(
    settings: &PodSettings,
    plan: &BuildPlan,
    attempt: u32,
    now: jiff::Timestamp,
) -> Vec<serde_json::Value> {
    let units: Vec<PodUnit> = plan
        .images
        .iter()
        .enumerate()
        .flat_map(|(i, spec)| {
            spec.steps().into_iter().map(move |step| PodUnit {
                image: i,
                step,
                attempt,
                platform_digests: spec
                    .platforms
                    .iter()
                    .map(|p| (p.clone(), "<digest of its pod>".to_owned()))
                    .collect(),
                attachment: None,
            })
        })
        .collect();
    let pods: Vec<Pod> = units
        .iter()
        .map(|u| unit_pod_spec(settings, plan, u, now))
        .collect();
    let configmaps = pods.iter().zip(&units).filter_map(|(pod, u)| {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        configmap_spec(plan, u, name, "")
    });
    // k8s-openapi objects always serialise: nothing is dropped here.
    configmaps
        .filter_map(|cm| serde_json::to_value(cm).ok())
        .chain(pods.iter().filter_map(|p| serde_json::to_value(p).ok()))
        .collect()
}
