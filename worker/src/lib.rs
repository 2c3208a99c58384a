//! The Kiln worker and client: takes build requests off RabbitMQ, claims them
//! with Redis leases, builds each image in a Kaniko pod on Kubernetes and
//! publishes CloudEvents about every phase change. See ARCHITECTURE.md.

pub mod amqp;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod journal;
pub mod machine;
pub mod metrics;
pub mod plan;
pub mod pod;
pub mod policy;
pub mod render;
pub mod retry;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod worker;

pub use error::{Error, Result};
