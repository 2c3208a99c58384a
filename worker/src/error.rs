//! The worker's one error type.
//!
//! Every fallible operation of the worker returns [`Error`]. Variants say
//! which dependency failed so that retries, logs and metrics can tell a flaky
//! broker from a bad request; `metric_label()` gives the low-cardinality name
//! used as a Prometheus label.

use std::time::Duration;

/// Everything that can go wrong inside the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RabbitMQ: connection, channel, publish or ack failed.
    #[error("RabbitMQ: {0}")]
    Amqp(String),
    /// A publish was nacked by the broker or never confirmed.
    #[error("RabbitMQ did not confirm the publish of {0}")]
    NotConfirmed(String),
    /// Redis: connection or command failed.
    #[error("Redis: {0}")]
    Redis(String),
    /// The Kubernetes API answered with an error or could not be reached.
    #[error("Kubernetes API: {message}")]
    Kube {
        message: String,
        /// HTTP status when the API server answered.
        status: Option<u16>,
        /// The server's `Retry-After`, when it gave one (429).
        retry_after: Option<Duration>,
    },
    /// This worker no longer holds the lease of a build.
    #[error("lease of build {0} lost")]
    LeaseLost(String),
    /// Configuration or policy file problem (at start-up).
    #[error("configuration: {0}")]
    Config(String),
    /// The worker is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl Error {
    /// A short, stable label for metrics (`kiln_errors_total{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Amqp(_) => "amqp",
            Error::NotConfirmed(_) => "amqp_not_confirmed",
            Error::Redis(_) => "redis",
            Error::Kube { .. } => "kube",
            Error::LeaseLost(_) => "lease_lost",
            Error::Config(_) => "config",
            Error::Shutdown => "shutdown",
        }
    }

    /// Whether retrying the same call later may succeed.
    ///
    /// Kubernetes 4xx answers other than 408/409/429 are permanent: the
    /// request itself is wrong (invalid pod, forbidden, namespace missing), and
    /// retrying would only spin.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Amqp(_) | Error::NotConfirmed(_) | Error::Redis(_) => true,
            Error::Kube { status, .. } => match status {
                None => true,
                Some(code) => *code >= 500 || matches!(code, 408 | 409 | 429),
            },
            Error::LeaseLost(_) | Error::Config(_) | Error::Shutdown => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
