//! Kubernetes: the Kaniko pod and its ConfigMap, create-or-adopt, delete,
//! logs, and the label-selected pod watcher. The only module that knows
//! kube and k8s-openapi.
//!
//! Pods carry everything needed to resume their build (docs/guarantees.md):
//! deterministic names, labels `app.kubernetes.io/managed-by=kiln`,
//! `kiln.dev/build`, `kiln.dev/image`, `kiln.dev/attempt`, and annotations
//! with the full build id and the [`BuildPlan`](crate::plan::BuildPlan).
//!
//! - [`spec`]: the pure pod spec, one builder per part of the pod.
//! - [`view`](mod@view): what Kiln reads back out of a pod.
//! - [`client`]: the API calls (create-or-adopt, delete, logs, list, watch).

mod build_secrets;
mod client;
mod labels;
mod logs;
mod model;
mod ownership;
mod spec;
mod view;

pub use build_secrets::BUILD_SECRETS_DIR;
pub use client::{MAX_CONCURRENT_CALLS, Pods};
pub use labels::{
    ANN_BUILD_ID, ANN_CANCELLED, ANN_CONTENT_SHA256, ANN_PLAN, ANN_SPEC_SHA256, ANN_TENANT,
    LABEL_ATTEMPT, LABEL_BUILD, LABEL_IMAGE, MANAGED_BY, SELECTOR,
};
pub use model::{Created, PodEvent, PodSettings};
pub use spec::{attempt_objects, configmap_spec, pod_spec};
pub use view::view;

/// The Kubernetes client type, for callers that build their own.
pub use kube::Client as KubeClient;
