//! Kiln's pure core: everything that decides, and nothing that does IO.
//! The per-build state machine, pod classification, build plans, tenant
//! policy, Dockerfile templates, the journal of a build and the schema of
//! its Redis record. Time and jitter are inputs; this crate depends on no
//! async runtime, AMQP, Redis or Kubernetes client, so the compiler keeps
//! it pure. The worker (`kiln-worker`) carries its decisions out.

pub mod classify;
pub mod journal;
pub mod machine;
pub mod plan;
pub mod policy;
pub mod record;
pub mod render;
