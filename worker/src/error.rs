//! The worker's one error type.
//!
//! Every fallible operation of the worker returns [`Error`]. Variants say
//! which dependency failed so that retries, logs and metrics can tell a flaky
//! broker from a bad request; `metric_label()` gives the low-cardinality name
//! of the `kiln_errors_total{kind}` counter.
//!
//! This file names no client library: only `amqp.rs` knows lapin, only
//! `lease.rs` knows Redis, only `pod/` knows kube (ARCHITECTURE.md,
//! invariants). Their `From` impls live there and keep the library's error
//! as the [`std::error::Error::source`]; the context string is the whole
//! message (it quotes the source's text, because logs print `Display` only).

use std::time::Duration;

/// The original error of a dependency, kept for whoever walks the chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong inside the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RabbitMQ: connection, channel, publish or ack failed.
    #[error("RabbitMQ: {context}")]
    Amqp {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// A publish was nacked by the broker or never confirmed.
    #[error("RabbitMQ did not confirm the publish of {0}")]
    NotConfirmed(String),
    /// Redis: connection or command failed.
    #[error("Redis: {context}")]
    Redis {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The Kubernetes API answered with an error or could not be reached.
    #[error("Kubernetes API: {context}")]
    Kube {
        context: String,
        /// HTTP status when the API server answered.
        status: Option<u16>,
        /// The server's `Status.details.retryAfterSeconds`, when it gave one
        /// (429 from API Priority and Fairness, some 5xx): the pod client
        /// waits at least that long before its next try.
        retry_after: Option<Duration>,
        #[source]
        source: Option<Cause>,
    },
    /// This worker no longer holds the lease of a build.
    #[error("lease of build {0} lost")]
    LeaseLost(String),
    /// Configuration or policy file problem (at start-up).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A RabbitMQ error that no library error caused (or whose cause is
    /// already in the message).
    pub fn amqp(context: impl Into<String>) -> Self {
        Error::Amqp {
            context: context.into(),
            source: None,
        }
    }

    /// A RabbitMQ error caused by `source`, described as `context`.
    pub fn amqp_caused(context: &str, source: impl Into<Cause> + std::fmt::Display) -> Self {
        let (context, source) = caused(context, source);
        Error::Amqp { context, source }
    }

    /// A Redis error caused by `source`, described as `context`.
    pub fn redis_caused(context: &str, source: impl Into<Cause> + std::fmt::Display) -> Self {
        let (context, source) = caused(context, source);
        Error::Redis { context, source }
    }

    /// A short, stable label for metrics (`kiln_errors_total{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Amqp { .. } => "amqp",
            Error::NotConfirmed(_) => "amqp_not_confirmed",
            Error::Redis { .. } => "redis",
            Error::Kube { .. } => "kube",
            Error::LeaseLost(_) => "lease_lost",
            Error::Config(_) => "config",
        }
    }

    /// How long the server asked us to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Kube { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether retrying the same call later may succeed.
    ///
    /// Kubernetes 4xx answers other than 408/409/429 are permanent: the
    /// request itself is wrong (invalid pod, forbidden, namespace missing), and
    /// retrying would only spin.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Amqp { .. } | Error::NotConfirmed(_) | Error::Redis { .. } => true,
            Error::Kube { status, .. } => match status {
                None => true,
                Some(code) => *code >= 500 || matches!(code, 408 | 409 | 429),
            },
            Error::LeaseLost(_) | Error::Config(_) => false,
        }
    }

    /// Whether the API server refused a create because a ResourceQuota of
    /// the namespace is used up for now (see [`is_quota_refusal`]).
    pub fn is_quota_refusal(&self) -> bool {
        match self {
            Error::Kube {
                status, context, ..
            } => is_quota_refusal(*status, context),
            _ => false,
        }
    }
}

/// Whether an API answer is a ResourceQuota refusal that waiting can cure:
/// 403 with the quota admission's `exceeded quota:` text (the apiserver's
/// `resourcequota/controller.go`: `<resource> "<name>" is forbidden:
/// exceeded quota: <quota>, requested: ..., used: ..., limited: ...`).
///
/// Every other 403 stays permanent: RBAC denials, Pod Security admission,
/// and the quota's own `failed quota: <quota>: must specify limits.cpu`
/// (the pod lacks what the quota requires: no wait will change that).
pub fn is_quota_refusal(status: Option<u16>, message: &str) -> bool {
    status == Some(403) && message.contains("is forbidden: exceeded quota: ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message `"{context}: {source}"` and the kept source.
fn caused(context: &str, source: impl Into<Cause> + std::fmt::Display) -> (String, Option<Cause>) {
    (format!("{context}: {source}"), Some(source.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_survives_and_the_message_stays_whole() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = Error::Redis {
            context: format!("cannot connect to redis://r: {io}"),
            source: Some(Box::new(io)),
        };
        assert_eq!(
            e.to_string(),
            "Redis: cannot connect to redis://r: reset by peer"
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("reset by peer"));
        assert!(e.is_transient());
        assert_eq!(e.metric_label(), "redis");
    }

    #[test]
    fn kubernetes_client_errors_are_permanent_except_conflicts_and_throttling() {
        let kube = |status| Error::Kube {
            context: "x".into(),
            status,
            retry_after: None,
            source: None,
        };
        for code in [400, 403, 404, 422] {
            assert!(!kube(Some(code)).is_transient(), "{code}");
        }
        for code in [408, 409, 429, 500, 503] {
            assert!(kube(Some(code)).is_transient(), "{code}");
        }
        assert!(kube(None).is_transient());
    }

    const QUOTA: &str = r#"pods "kiln-b-api-1" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"#;

    #[test]
    fn only_an_exceeded_quota_403_is_a_quota_refusal() {
        assert!(is_quota_refusal(Some(403), QUOTA));
        // The same text under another status, or no status, is something else.
        for status in [None, Some(400), Some(409), Some(422), Some(500)] {
            assert!(!is_quota_refusal(status, QUOTA), "{status:?}");
        }
        // Other 403s stay permanent: RBAC, Pod Security, a pod lacking what
        // the quota requires.
        for other in [
            r#"pods is forbidden: User "system:serviceaccount:kiln:kiln" cannot create resource "pods" in API group "" in the namespace "x""#,
            r#"pods "p" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true"#,
            r#"pods "p" is forbidden: failed quota: compute: must specify limits.cpu for: kaniko"#,
        ] {
            assert!(!is_quota_refusal(Some(403), other), "{other}");
        }
    }

    #[test]
    fn the_error_answers_from_its_status_and_message() {
        let kube = |status, context: &str| Error::Kube {
            context: format!("ApiError: {context}: Forbidden"),
            status,
            retry_after: None,
            source: None,
        };
        assert!(kube(Some(403), QUOTA).is_quota_refusal());
        assert!(!kube(Some(403), QUOTA).is_transient());
        assert!(!kube(Some(403), "pods is forbidden: User x").is_quota_refusal());
        assert!(
            !Error::Redis {
                context: QUOTA.into(),
                source: None
            }
            .is_quota_refusal()
        );
    }
}
