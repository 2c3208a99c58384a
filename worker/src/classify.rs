//! What a pod says about its attempt (DESIGN section 6).
//!
//! [`PodView`] is the little that Kiln reads of a pod, copied out of the
//! Kubernetes object by `pod.rs` so that nothing here depends on kube.
//! [`classify`] turns it into an [`Observation`]: still pending (maybe stuck),
//! running, succeeded with a digest, or failed with a `Reason` and whether a
//! new attempt may help.

use std::sync::Arc;

use kiln_protocol::Reason;

/// Pod phase as reported by the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// The terminated state of the Kaniko container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: Option<String>,
    /// Termination message: the digest on success (`--digest-file
    /// /dev/termination-log`), the log tail on failure
    /// (`FallbackToLogsOnError`).
    pub message: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
}

/// What Kiln reads of one of its pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Full build id (annotation `kiln.dev/build-id`).
    pub build_id: String,
    pub image: String,
    pub attempt: u32,
    pub phase: Option<PodPhase>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub created_at: Option<jiff::Timestamp>,
    /// `PodScheduled=False` with this reason and message.
    pub unschedulable: Option<(String, String)>,
    /// Waiting reason and message of the Kaniko container.
    pub waiting: Option<(String, String)>,
    pub running_since: Option<jiff::Timestamp>,
    pub terminated: Option<Terminated>,
    /// `status.reason` / `status.message` (Evicted, DeadlineExceeded, ...).
    pub pod_reason: Option<String>,
    pub pod_message: Option<String>,
    /// A `DisruptionTarget=True` condition (preemption, node drain, taint).
    pub disrupted: bool,
    /// The raw `kiln.dev/plan` annotation, parsed only when adopting.
    pub plan: Option<Arc<str>>,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    pub message: String,
    pub exit_code: Option<i32>,
    /// The termination message (log tail) if the container wrote one.
    pub log: Option<String>,
}

/// What a pod says about its attempt right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Not started yet; `stuck` says why, if the cluster says something
    /// is wrong (unschedulable, image pull).
    Pending {
        stuck: Option<(Reason, String)>,
    },
    Running {
        since: Option<jiff::Timestamp>,
    },
    Succeeded {
        digest: Option<String>,
        started_at: Option<jiff::Timestamp>,
        finished_at: Option<jiff::Timestamp>,
    },
    Failed(Failure),
}

/// Log fragments that mean the push failed (network, registry trouble):
/// worth another attempt.
const PUSH_TRANSIENT: &[&str] = &[
    "error pushing image",
    "failed to push to destination",
    "push retry",
    "connection reset by peer",
    "i/o timeout",
    "tls handshake timeout",
    "unexpected status code 5",
    "503 service unavailable",
    "502 bad gateway",
    "too many requests",
];

/// Log fragments that mean the registry refused us: another attempt would
/// fail the same way.
const PUSH_DENIED: &[&str] = &[
    "unauthorized",
    "denied: requested access to the resource is denied",
    "authentication required",
    "checking push permissions",
];

/// Log fragments that mean the build context could not be fetched or the
/// Dockerfile is missing: a configuration problem.
const CONFIG_ERRORS: &[&str] = &[
    "error resolving dockerfile path",
    "failed to get fs from context",
    "error resolving source context",
    "repository not found",
    "couldn't find remote ref",
    "nosuchkey",
    "nosuchbucket",
];

/// Classifies the current state of a pod.
pub fn classify(pod: &PodView) -> Observation {
    match pod.phase {
        Some(PodPhase::Succeeded) => {
            let t = pod.terminated.clone().unwrap_or_default();
            Observation::Succeeded {
                digest: t.message.as_deref().and_then(parse_digest),
                started_at: t.started_at,
                finished_at: t.finished_at,
            }
        }
        Some(PodPhase::Failed) => Observation::Failed(failure(pod)),
        Some(PodPhase::Running) => {
            // A Running pod whose container already terminated is about to
            // turn Failed/Succeeded; wait for the phase.
            Observation::Running {
                since: pod.running_since,
            }
        }
        _ => Observation::Pending { stuck: stuck(pod) },
    }
}

fn stuck(pod: &PodView) -> Option<(Reason, String)> {
    if let Some((reason, message)) = &pod.unschedulable {
        return Some((Reason::Unschedulable, format!("{reason}: {message}")));
    }
    let (reason, message) = pod.waiting.as_ref()?;
    let r = match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            Reason::ImagePullFailed
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            Reason::ConfigError
        }
        _ => return None,
    };
    Some((r, format!("{reason}: {message}")))
}

/// Whether a stuck pod can never start, so waiting out `pendingTimeout`
/// would only waste time.
pub fn hopeless(pod: &PodView) -> bool {
    matches!(
        pod.waiting.as_ref().map(|(r, _)| r.as_str()),
        Some("InvalidImageName" | "ErrImageNeverPull")
    )
}

fn failure(pod: &PodView) -> Failure {
    let t = pod.terminated.as_ref();
    let exit_code = t.map(|t| t.exit_code);
    let log = t.and_then(|t| t.message.clone()).filter(|m| !m.is_empty());
    let pod_msg = pod.pod_message.clone().unwrap_or_default();
    let fail = |reason, retryable, message: String| Failure {
        reason,
        retryable,
        message,
        exit_code,
        log: log.clone(),
    };
    match pod.pod_reason.as_deref() {
        Some("Evicted") => {
            return fail(
                Reason::Evicted,
                true,
                non_empty(pod_msg, "the pod was evicted"),
            );
        }
        Some("DeadlineExceeded") => {
            return fail(
                Reason::DeadlineExceeded,
                false,
                non_empty(pod_msg, "the pod ran past its activeDeadlineSeconds"),
            );
        }
        _ => {}
    }
    if pod.disrupted {
        return fail(
            Reason::Evicted,
            true,
            non_empty(pod_msg, "the pod was disrupted (preemption or node loss)"),
        );
    }
    let Some(t) = t else {
        // Failed without a container state: the node went away.
        return fail(
            Reason::Internal,
            true,
            non_empty(pod_msg, "the pod failed before its container ran"),
        );
    };
    if t.reason.as_deref() == Some("OOMKilled") {
        return fail(
            Reason::OOMKilled,
            true,
            format!(
                "the build ran out of memory (exit code {}); raise resources.memory",
                t.exit_code
            ),
        );
    }
    let lower = log.as_deref().unwrap_or_default().to_ascii_lowercase();
    let last_line = last_meaningful_line(log.as_deref().unwrap_or_default());
    if PUSH_DENIED.iter().any(|p| lower.contains(p)) {
        return fail(
            Reason::PushError,
            false,
            format!("the registry refused the push: {last_line}"),
        );
    }
    if PUSH_TRANSIENT.iter().any(|p| lower.contains(p)) {
        return fail(
            Reason::PushError,
            true,
            format!("pushing the image failed: {last_line}"),
        );
    }
    if CONFIG_ERRORS.iter().any(|p| lower.contains(p)) {
        return fail(
            Reason::ConfigError,
            false,
            format!("the build context or Dockerfile could not be read: {last_line}"),
        );
    }
    if matches!(t.exit_code, 137 | 143) {
        return fail(
            Reason::Internal,
            true,
            format!("the build container was killed (exit code {})", t.exit_code),
        );
    }
    fail(
        Reason::BuildError,
        false,
        if last_line.is_empty() {
            format!("the build failed with exit code {}", t.exit_code)
        } else {
            format!(
                "the build failed with exit code {}: {last_line}",
                t.exit_code
            )
        },
    )
}

fn non_empty(s: String, default: &str) -> String {
    if s.trim().is_empty() {
        default.to_owned()
    } else {
        s
    }
}

fn last_meaningful_line(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let mut s: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// Kaniko's digest file holds `sha256:<64 hex>`.
pub fn parse_digest(message: &str) -> Option<String> {
    let d = message.trim();
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(exit: i32, reason: Option<&str>, msg: &str) -> PodView {
        PodView {
            phase: Some(PodPhase::Failed),
            terminated: Some(Terminated {
                exit_code: exit,
                reason: reason.map(str::to_owned),
                message: Some(msg.to_owned()),
                ..Terminated::default()
            }),
            ..PodView::default()
        }
    }

    fn failure_of(p: &PodView) -> Failure {
        match classify(p) {
            Observation::Failed(f) => f,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn success_reads_the_digest() {
        let digest = format!("sha256:{}", "A".repeat(64));
        let p = PodView {
            phase: Some(PodPhase::Succeeded),
            terminated: Some(Terminated {
                message: Some(format!("{digest}\n")),
                ..Terminated::default()
            }),
            ..PodView::default()
        };
        let Observation::Succeeded { digest: d, .. } = classify(&p) else {
            panic!("not succeeded")
        };
        assert_eq!(d, Some(format!("sha256:{}", "a".repeat(64))));
        assert_eq!(parse_digest("sha256:abc"), None);
    }

    #[test]
    fn dockerfile_errors_are_final() {
        let f = failure_of(&failed(
            1,
            Some("Error"),
            "INFO Running: [/bin/sh -c make]\nerror building image: error building stage: failed to execute command: exit status 2",
        ));
        assert_eq!(f.reason, Reason::BuildError);
        assert!(!f.retryable);
        assert_eq!(f.exit_code, Some(1));
        assert!(f.message.contains("exit status 2"), "{}", f.message);
    }

    #[test]
    fn push_errors_retry_unless_denied() {
        let f = failure_of(&failed(
            1,
            Some("Error"),
            "error pushing image: failed to push to destination r.io/x:1: 503 Service Unavailable",
        ));
        assert_eq!((f.reason, f.retryable), (Reason::PushError, true));
        let f = failure_of(&failed(
            1,
            Some("Error"),
            "error checking push permissions -- UNAUTHORIZED: authentication required",
        ));
        assert_eq!((f.reason, f.retryable), (Reason::PushError, false));
    }

    #[test]
    fn oom_eviction_and_deadline() {
        let f = failure_of(&failed(137, Some("OOMKilled"), ""));
        assert_eq!((f.reason, f.retryable), (Reason::OOMKilled, true));
        let evicted = PodView {
            phase: Some(PodPhase::Failed),
            pod_reason: Some("Evicted".into()),
            pod_message: Some("The node was low on resource: memory.".into()),
            ..PodView::default()
        };
        let f = failure_of(&evicted);
        assert_eq!((f.reason, f.retryable), (Reason::Evicted, true));
        assert!(f.message.contains("low on resource"));
        let deadline = PodView {
            phase: Some(PodPhase::Failed),
            pod_reason: Some("DeadlineExceeded".into()),
            ..PodView::default()
        };
        let f = failure_of(&deadline);
        assert_eq!((f.reason, f.retryable), (Reason::DeadlineExceeded, false));
    }

    #[test]
    fn stuck_pending_pods_say_why() {
        let p = PodView {
            phase: Some(PodPhase::Pending),
            waiting: Some(("ImagePullBackOff".into(), "Back-off pulling image".into())),
            ..PodView::default()
        };
        assert_eq!(
            classify(&p),
            Observation::Pending {
                stuck: Some((
                    Reason::ImagePullFailed,
                    "ImagePullBackOff: Back-off pulling image".into()
                ))
            }
        );
        let p = PodView {
            phase: Some(PodPhase::Pending),
            unschedulable: Some(("Unschedulable".into(), "0/3 nodes are available".into())),
            ..PodView::default()
        };
        assert!(matches!(
            classify(&p),
            Observation::Pending {
                stuck: Some((Reason::Unschedulable, _))
            }
        ));
    }
}
