//! Kubernetes: the Kaniko pod and its ConfigMap, create-or-adopt, delete,
//! logs, and the label-selected pod watcher. The only module that knows
//! kube and k8s-openapi.
//!
//! Pods carry everything needed to resume their build (docs/guarantees.md):
//! deterministic names, labels `app.kubernetes.io/managed-by=kiln`,
//! `kiln.dev/build`, `kiln.dev/image`, `kiln.dev/attempt` (and
//! `kiln.dev/platform` or `kiln.dev/step` for images with `platforms`), and annotations
//! with the full build id and the [`BuildPlan`](crate::plan::BuildPlan).
//!
//! - [`spec`]: the pure pod spec, one builder per part of the pod;
//!   `publish_spec` the publish step's pod of an image with `platforms`;
//!   `common` what both share; `objects` the pod of a unit, and every
//!   object of an attempt.
//! - [`view`](mod@view): what Kiln reads back out of a pod.
//! - [`client`]: the API calls (create-or-adopt, delete, logs, list, watch).

mod build_secrets;
mod client;
mod common;
mod labels;
mod logs;
mod model;
mod objects;
mod ownership;
mod publish_spec;
mod spec;
mod view;

pub use build_secrets::BUILD_SECRETS_DIR;
pub use client::{MAX_CONCURRENT_CALLS, Pods};
pub use labels::{
    ANN_BUILD_ID, ANN_CANCELLED, ANN_CONTENT_SHA256, ANN_PLAN, ANN_SPEC_SHA256, ANN_TENANT,
    LABEL_ATTEMPT, LABEL_BUILD, LABEL_IMAGE, LABEL_PLATFORM, LABEL_STEP, MANAGED_BY, SELECTOR,
    STEP_PUBLISH,
};
pub use model::{Created, PodEvent, PodSettings, PodUnit};
pub use objects::{attempt_objects, container_args, unit_pod_spec};
pub use spec::{configmap_spec, pod_spec};
pub use view::view;

/// The Kubernetes client type, for callers that build their own.
pub use kube::Client as KubeClient;
