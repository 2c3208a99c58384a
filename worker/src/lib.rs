//! The Kiln worker and client: takes build requests off RabbitMQ, claims them
//! with Redis leases, builds each image in a Kaniko pod on Kubernetes and
//! publishes CloudEvents about every phase change. See ARCHITECTURE.md.

pub mod amqp;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod http_auth;
pub mod metrics;
pub mod pod;
pub mod policy;
pub mod provenance;
pub mod registry;
pub mod retry;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod terminal;
pub mod timeline_bars;
pub mod worker;

pub use error::{Error, Result};
// The pure core moved to `kiln-core`; these keep the old paths
// (`crate::machine::…`) working for the worker's modules.
pub use kiln_core::{classify, journal, log_cap, machine, plan, render};
