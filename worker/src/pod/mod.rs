//! Kubernetes: the Kaniko pod and its ConfigMap, create-or-adopt, delete,
//! logs, and the label-selected pod watcher. The only module that knows
//! kube and k8s-openapi.
//!
//! Pods carry everything needed to resume their build (DESIGN section 5):
//! deterministic names, labels `app.kubernetes.io/managed-by=kiln`,
//! `kiln.dev/build`, `kiln.dev/image`, `kiln.dev/attempt`, and annotations
//! with the full build id and the [`BuildPlan`](crate::plan::BuildPlan).
//!
//! - [`spec`]: the pure pod spec, one builder per part of the pod.
//! - [`view`](mod@view): what Kiln reads back out of a pod.
//! - [`client`]: the API calls (create-or-adopt, delete, logs, list, watch).

mod client;
mod logs;
mod spec;
mod view;

pub use client::{MAX_CONCURRENT_CALLS, Pods};
pub use spec::{attempt_objects, configmap_spec, pod_spec};
pub use view::view;

use crate::classify::PodView;

/// The Kubernetes client type, for callers that build their own.
pub use kube::Client as KubeClient;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_BUILD: &str = "kiln.dev/build";
pub const LABEL_IMAGE: &str = "kiln.dev/image";
pub const LABEL_ATTEMPT: &str = "kiln.dev/attempt";
pub const ANN_BUILD_ID: &str = "kiln.dev/build-id";
pub const ANN_PLAN: &str = "kiln.dev/plan";
/// The tenant that owns the build: read without parsing the plan, and kept
/// where it survives the loss of Redis (DESIGN 10).
pub const ANN_TENANT: &str = "kiln.dev/tenant";
/// Selector of every pod Kiln manages.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=kiln";

/// Name of the Kaniko container: the spec creates it, the view reads its
/// status, the client reads its log.
const KANIKO: &str = "kaniko";

/// Pod-level settings of the worker.
#[derive(Debug, Clone)]
pub struct PodSettings {
    pub kaniko_image: String,
    /// Image of the init container that downloads `url` contexts.
    pub fetch_image: String,
    /// `AWS_REGION` of S3 contexts whose request and policy name none.
    pub s3_region: String,
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
