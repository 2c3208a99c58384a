//! Kiln's pure core: everything that decides, and nothing that does IO.
//! The per-build state machine, pod classification, build plans, tenant
//! policy, Dockerfile templates, the journal of a build, the schema of its
//! Redis record, and the decisions about requests, cancels and adoption.
//! Time and jitter are inputs; this crate depends on no async runtime, AMQP,
//! Redis or Kubernetes client, so the compiler keeps it pure. The worker
//! (`kiln-worker`) carries its decisions out.

pub mod adoption;
pub mod cancels;
pub mod classify;
pub mod index;
pub mod intake;
pub mod journal;
pub mod log_cap;
pub mod machine;
pub mod owner;
pub mod plan;
pub mod pod_view;
pub mod policy;
pub mod record;
pub mod rejection;
pub mod render;
pub mod timeline;

/// Shared by the core's unit tests and the worker's (feature `fixtures`,
/// enabled only as a dev-dependency).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
