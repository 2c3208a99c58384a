//! What a build's pods and its Redis record tell `kiln logs`: the images
//! the build has, the plan a pod carries, why a pod has no log yet.

use std::collections::BTreeSet;

use crate::classify::PodView;
use crate::plan::BuildPlan;
use crate::store::{BuildRecord, Store};

/// The build's record, if Redis has one.
pub(super) async fn read_record(redis: Option<&Store>, id: &str) -> Option<BuildRecord> {
    // A Redis that fails now is as good as none: the pods still answer.
    redis?.record(id).await.ok().flatten()
}

/// Every image name the pods, the record or a pod's plan know of.
pub(super) fn known_images(pods: &[PodView], record: Option<&BuildRecord>) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = pods.iter().map(|v| v.image.clone()).collect();
    if let Some(r) = record {
        known.extend(r.images.keys().cloned());
    }
    if let Some(plan) = pods.iter().find_map(plan_of) {
        known.extend(plan.images.iter().map(|i| i.name.clone()));
    }
    known
}

/// The plan a pod carries in its annotation.
pub(super) fn plan_of(v: &PodView) -> Option<BuildPlan> {
    serde_json::from_str(v.plan.as_deref()?).ok()
}

/// The note for a pod that has not started: why, as far as it says.
pub(super) fn pending_note(v: &PodView) -> String {
    let why = v
        .waiting
        .as_ref()
        .map(|(r, _)| r.clone())
        .or_else(|| v.unschedulable.as_ref().map(|(r, _)| r.clone()))
        .unwrap_or_else(|| "Pending".to_owned());
    format!("pod {} has not started yet ({why}): no log yet", v.name)
}
