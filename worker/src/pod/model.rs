//! What the pod client is given and answers: its settings, a created (or
//! adopted) pod, and the watcher's events.

use std::collections::BTreeMap;

use crate::classify::PodView;
use crate::plan::Step;

/// Which pod to create: attempt `attempt` of `step` of image `image`; the
/// publish step also names each platform's manifest digest
/// (`platform_digests`, empty for the other steps) and, when the worker
/// signs provenance, the DSSE envelope it attaches (`attachment`, the
/// envelope's JSON: the pod reads it from a ConfigMap Kiln creates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUnit {
    pub image: usize,
    pub step: Step,
    pub attempt: u32,
    pub platform_digests: BTreeMap<String, String>,
    pub attachment: Option<String>,
}

/// Pod-level settings of the worker.
#[derive(Debug, Clone, Default)]
pub struct PodSettings {
    pub kaniko_image: String,
    /// Image of the init container that downloads `url` contexts.
    pub fetch_image: String,
    /// `AWS_REGION` of S3 contexts whose request and policy name none.
    pub s3_region: String,
    /// Image of the publish step (Kiln's own, `kiln publish`).
    pub publish_image: String,
    /// Registries the publish step reaches over plain HTTP.
    pub insecure_registries: Vec<String>,
}

/// How a create went.
#[derive(Debug, Clone)]
pub enum Created {
    /// We made it.
    New(PodView),
    /// It existed already (409): adopt it, never build again.
    Existing(PodView),
}

/// A change the watcher saw.
#[derive(Debug, Clone)]
pub enum PodEvent {
    Applied(PodView),
    Deleted(PodView),
    /// The watcher (re)lists: `Applied` events for every pod follow.
    Resync,
    /// The relist is complete.
    Synced,
}
