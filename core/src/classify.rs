//! What a pod says about its attempt (docs/protocol.md, "Reasons").
//!
//! [`classify`] turns it into an [`Observation`]: still pending (maybe stuck),
//! running, succeeded with a digest, or failed with a `Reason` and whether a
//! new attempt may help.

use kiln_protocol::Reason;

// Re-exported: the views are what classification reads.
pub use crate::pod_view::{PodPhase, PodView, Terminated};

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

/// Log fragments of a build context that cannot be fetched however often we
/// try (go-git, aws-sdk-go-v2 and os errors as the executor prints them in
/// `error resolving source context: ...`, cmd/executor/cmd/root.go).
const CONTEXT_PERMANENT: &[&str] = &[
    "repository not found",
    "authentication required",
    "authorization failed",
    "couldn't find remote ref",
    "reference not found",
    "object not found",
    "invalid branch",
    "nosuchkey",
    "nosuchbucket",
    "accessdenied",
    "statuscode: 403",
    "statuscode: 404",
    "no such file or directory",
    "unknown build context prefix",
];

/// Prefixes of the executor's own error line (cmd/executor/cmd/root.go):
/// `exit()` prints the error plainly with `fmt.Fprintln(os.Stderr, err)`,
/// cobra prints a `PersistentPreRunE` error as `Error: <err>`.
const SETUP_CONTEXT: &str = "error resolving source context";
const SETUP_DOCKERFILE: &str = "error resolving dockerfile path";

/// Lines of cobra's usage text, which cobra prints after a
/// `PersistentPreRunE` error because the executor does not set
/// `SilenceUsage`: several KiB, more than the kubelet's 2 KiB tail. The
/// usage of a command with subcommands (the executor has `version`, `push`,
/// `login`) ends with the last marker (spf13/cobra `defaultUsageFunc`).
const USAGE_MARKERS: &[&str] = &[
    "usage:\n  executor [flags]",
    "\nflags:\n",
    "[command] --help\" for more information about a command.",
];

/// [`classify`], with the longer pod log (`log`, fetched by the watcher)
/// read when the kubelet's 2 KiB termination message holds only cobra's
/// usage text: the executor's `Error:` line sits above that text in the
/// log, and it tells a missing repository from a network timeout.
pub fn classify_with_log(pod: &PodView, log: Option<&str>) -> Observation {
    let message = pod.terminated.as_ref().and_then(|t| t.message.as_deref());
    if let (Some(PodPhase::Failed), Some(msg), Some(log)) = (pod.phase, message, log)
        && error_line(msg).is_none()
        && has_usage(msg)
    {
        // Only the part of the log before the usage text: the usage itself
        // must not decide.
        let lower = log.to_ascii_lowercase();
        let cut = USAGE_MARKERS
            .iter()
            .filter_map(|m| lower.find(m))
            .min()
            .unwrap_or(log.len());
        let before = log.get(..cut).unwrap_or(log);
        if error_line(before).is_some() {
            let mut p = pod.clone();
            if let Some(t) = p.terminated.as_mut() {
                t.message = Some(before.to_owned());
            }
            return classify(&p);
        }
    }
    classify(pod)
}

fn has_usage(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    USAGE_MARKERS.iter().any(|m| lower.contains(m))
}

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

/// A failure's reason, whether another attempt may help, and its message.
type Verdict = (Reason, bool, String);

fn failure(pod: &PodView) -> Failure {
    let t = pod.terminated.as_ref();
    let exit_code = t.map(|t| t.exit_code);
    let log = t.and_then(|t| t.message.clone()).filter(|m| !m.is_empty());
    let (reason, retryable, message) = if let Some(verdict) = kubelet_verdict(pod) {
        verdict
    } else if let Some(t) = t {
        // The executor writes `--digest-file` in `DoPush` before it pushes
        // (pkg/executor/push.go), so a non-zero exit with a digest as the
        // termination message is a push that failed after the build: with
        // Kiln's flags nothing else runs after the digest file is written. A
        // digest is proof of success only with exit code 0.
        if let Some(digest) = log.as_deref().and_then(parse_digest) {
            return Failure {
                reason: Reason::PushError,
                retryable: true,
                message: format!(
                    "the image was built ({digest}) but pushing it failed with exit code {}; the push error is in the pod log",
                    t.exit_code
                ),
                exit_code,
                log: None,
            };
        }
        log_verdict(log.as_deref().unwrap_or_default(), t.exit_code)
    } else {
        // Failed without a container state: the node went away.
        (
            Reason::Internal,
            true,
            pod_message_or(pod, "the pod failed before its container ran"),
        )
    };
    Failure {
        reason,
        retryable,
        message,
        exit_code,
        log,
    }
}

/// What the kubelet itself says ended the pod: an eviction, the deadline,
/// a disruption, an OOM kill. These decide before any log does.
fn kubelet_verdict(pod: &PodView) -> Option<Verdict> {
    match pod.pod_reason.as_deref() {
        Some("Evicted") => {
            return Some((
                Reason::Evicted,
                true,
                pod_message_or(pod, "the pod was evicted"),
            ));
        }
        Some("DeadlineExceeded") => {
            return Some((
                Reason::DeadlineExceeded,
                false,
                pod_message_or(pod, "the pod ran past its activeDeadlineSeconds"),
            ));
        }
        _ => {}
    }
    if pod.disrupted {
        return Some((
            Reason::Evicted,
            true,
            pod_message_or(pod, "the pod was disrupted (preemption or node loss)"),
        ));
    }
    let t = pod.terminated.as_ref()?;
    (t.reason.as_deref() == Some("OOMKilled")).then(|| {
        (
            Reason::OOMKilled,
            true,
            format!(
                "the build ran out of memory (exit code {}); raise resources.memory",
                t.exit_code
            ),
        )
    })
}

/// What the container's log tail (`text`) and exit code say: a setup step
/// that failed, a push, an executor that stopped before building, a kill,
/// else a build error.
fn log_verdict(text: &str, exit_code: i32) -> Verdict {
    if let Some(verdict) = setup_verdict(text).or_else(|| push_verdict(text)) {
        return verdict;
    }
    let lower = text.to_ascii_lowercase();
    if error_line(text).is_none() && USAGE_MARKERS.iter().any(|m| lower.contains(m)) {
        // Cobra's usage text pushed the error line out of the tail: the
        // executor stopped in its setup (flags, secrets, build context,
        // Dockerfile path). With the flags Kiln writes, fetching the build
        // context is the step that fails in practice, and most of its
        // failures are transient; a permanent one costs the remaining
        // attempts, a misjudged transient one would cost the build.
        return (
            Reason::Internal,
            true,
            format!(
                "the executor stopped before building (exit code {exit_code}): its setup failed, most likely fetching the build context; the error is above the usage text in the pod log"
            ),
        );
    }
    if matches!(exit_code, 137 | 143) {
        return (
            Reason::Internal,
            true,
            format!("the build container was killed (exit code {exit_code})"),
        );
    }
    let last_line = last_meaningful_line(text);
    let message = if last_line.is_empty() {
        format!("the build failed with exit code {exit_code}")
    } else {
        format!("the build failed with exit code {exit_code}: {last_line}")
    };
    (Reason::BuildError, false, message)
}

/// The executor's setup error line: a build context that could not be
/// fetched (permanently or not) or a Dockerfile that is not in it.
fn setup_verdict(text: &str) -> Option<Verdict> {
    let line = error_line(text)?;
    let l = line.to_ascii_lowercase();
    if l.contains(SETUP_CONTEXT) {
        return Some(if CONTEXT_PERMANENT.iter().any(|p| l.contains(p)) {
            (
                Reason::ConfigError,
                false,
                format!("the build context could not be fetched: {line}"),
            )
        } else {
            // A network or server error: the protocol has no reason for
            // a transient fetch failure and `ConfigError` means "do not
            // retry", so it is `Internal` (retryable), the reason of other
            // infrastructure faults.
            (
                Reason::Internal,
                true,
                format!("fetching the build context failed: {line}"),
            )
        });
    }
    l.contains(SETUP_DOCKERFILE).then(|| {
        (
            Reason::ConfigError,
            false,
            format!("the Dockerfile could not be found in the build context: {line}"),
        )
    })
}

/// A push the registry refused (permanent) or that failed on the way
/// (transient).
fn push_verdict(text: &str) -> Option<Verdict> {
    let lower = text.to_ascii_lowercase();
    if PUSH_DENIED.iter().any(|p| lower.contains(p)) {
        return Some((
            Reason::PushError,
            false,
            format!(
                "the registry refused the push: {}",
                last_meaningful_line(text)
            ),
        ));
    }
    PUSH_TRANSIENT.iter().any(|p| lower.contains(p)).then(|| {
        (
            Reason::PushError,
            true,
            format!("pushing the image failed: {}", last_meaningful_line(text)),
        )
    })
}

/// The pod's `status.message`, or `default` when it has none.
fn pod_message_or(pod: &PodView, default: &str) -> String {
    non_empty(pod.pod_message.clone().unwrap_or_default(), default)
}

fn non_empty(s: String, default: &str) -> String {
    if s.trim().is_empty() {
        default.to_owned()
    } else {
        s
    }
}

/// The executor's own final error line, if the tail shows it: the last line
/// that names a setup step, or cobra's `Error: ` line.
fn error_line(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            l.starts_with("Error: ")
                || lower.contains(SETUP_CONTEXT)
                || lower.contains(SETUP_DOCKERFILE)
        })
        .map(|l| truncate(l.strip_prefix("Error: ").unwrap_or(l)))
}

fn truncate(line: &str) -> String {
    truncate_to(line, 300)
}

fn truncate_to(line: &str, max: usize) -> String {
    let mut s: String = line.chars().take(max).collect();
    if line.chars().count() > max {
        s.push('…');
    }
    s
}

fn last_meaningful_line(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    truncate(line)
}

/// Kaniko's digest file holds `sha256:<64 hex>`.
pub fn parse_digest(message: &str) -> Option<String> {
    let d = message.trim();
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The first words of the one line a failed `kiln publish` writes to its
/// termination message: `kiln publish failed (<class>): <detail>`
/// (docs/protocol.md, "The publish step").
pub const PUBLISH_FAILED: &str = "kiln publish failed (";

/// Why a `kiln publish` failed: the `<class>` of its termination message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishClass {
    /// The registry answered 5xx or 429, the connection dropped, was refused
    /// or timed out, or a child manifest is missing
    /// (`MANIFEST_BLOB_UNKNOWN`): another attempt may succeed.
    Retryable,
    /// The registry answered 401 or 403.
    Denied,
    /// A child's config names another os/architecture/variant than its
    /// platform: the platform pod ran on the wrong node.
    PlatformMismatch,
    /// Bad arguments or an unreadable docker config.
    Invalid,
}

impl PublishClass {
    pub const ALL: [Self; 4] = [
        Self::Retryable,
        Self::Denied,
        Self::PlatformMismatch,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Denied => "denied",
            Self::PlatformMismatch => "platform-mismatch",
            Self::Invalid => "invalid",
        }
    }

    /// The reason of the publish step's failure and whether another publish
    /// pod may succeed.
    pub fn verdict(self) -> (Reason, bool) {
        match self {
            Self::Retryable => (Reason::PushError, true),
            Self::Denied | Self::Invalid => (Reason::ConfigError, false),
            Self::PlatformMismatch => (Reason::BuildError, false),
        }
    }

    /// The termination message's line: one line, whatever `detail` holds.
    pub fn line(self, detail: &str) -> String {
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        // Well inside the kubelet's 4 KiB termination message, long enough
        // for a context, a URL and the cause.
        format!(
            "{PUBLISH_FAILED}{}): {}",
            self.as_str(),
            truncate_to(&detail, 1000)
        )
    }
}

/// What a failed publish pod's termination message says: the failure its
/// `kiln publish failed (<class>): <detail>` line names, or `None` when no
/// line of it is one (the pod failed before `kiln publish` could say why).
pub fn classify_publish_message(message: &str) -> Option<Failure> {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(PUBLISH_FAILED))?;
    let rest = &line[PUBLISH_FAILED.len()..];
    let (class, detail) = rest.split_once("): ")?;
    let class = PublishClass::ALL
        .into_iter()
        .find(|c| c.as_str() == class)?;
    let (reason, retryable) = class.verdict();
    Some(Failure {
        reason,
        retryable,
        message: format!(
            "publishing the image index failed ({class}): {detail}",
            class = class.as_str()
        ),
        exit_code: None,
        log: Some(line.to_owned()),
    })
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

    /// Finding 1 (issue 12): `DoPush` writes `--digest-file` before the push
    /// loop (pkg/executor/push.go), so a failed push leaves the digest in
    /// the termination message and no log there.
    #[test]
    fn a_digest_with_a_failed_exit_is_a_failed_push() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let f = failure_of(&failed(1, Some("Error"), &digest));
        assert_eq!((f.reason, f.retryable), (Reason::PushError, true));
        assert!(f.message.contains(&digest), "{}", f.message);
        assert_eq!(f.log, None, "a digest is not a log");
        // Exit 0 with the same message stays a success.
        let mut p = failed(0, Some("Completed"), &digest);
        p.phase = Some(PodPhase::Succeeded);
        assert!(matches!(
            classify(&p),
            Observation::Succeeded {
                digest: Some(_),
                ..
            }
        ));
    }

    /// Finding 9 (issue 12): a network error while fetching the context is
    /// worth another attempt; a missing repository or object is not.
    #[test]
    fn context_fetch_failures_retry_unless_permanent() {
        let transient = [
            "Error: error resolving source context: Get \"https://github.com/acme/cart.git/info/refs?service=git-upload-pack\": dial tcp 140.82.121.4:443: connect: connection refused",
            "Error: error resolving source context: unexpected client error: unexpected requesting \"https://github.com/acme/cart.git/info/refs?service=git-upload-pack\" status code: 503",
            "Error: error resolving source context: operation error S3: GetObject, exceeded maximum number of attempts, 3, https response error StatusCode: 0, RequestID: , HostID: , request send failed, Get \"https://ctx.s3.eu-west-1.amazonaws.com/a.tgz\": dial tcp: lookup ctx.s3.eu-west-1.amazonaws.com: i/o timeout",
        ];
        for log in transient {
            let f = failure_of(&failed(1, Some("Error"), log));
            assert_eq!((f.reason, f.retryable), (Reason::Internal, true), "{log}");
            assert!(f.message.contains("build context"), "{}", f.message);
        }
        let permanent = [
            "Error: error resolving source context: repository not found",
            "Error: error resolving source context: authentication required",
            "Error: error resolving source context: object not found",
            "Error: error resolving source context: operation error S3: GetObject, https response error StatusCode: 404, api error NoSuchKey: The specified key does not exist.",
            "Error: error resolving dockerfile path: please provide a valid path to a Dockerfile within the build context with --dockerfile",
        ];
        for log in permanent {
            let f = failure_of(&failed(1, Some("Error"), log));
            assert_eq!(
                (f.reason, f.retryable),
                (Reason::ConfigError, false),
                "{log}"
            );
        }
    }

    /// Cobra prints its usage after a `PersistentPreRunE` error (no
    /// `SilenceUsage` in cmd/executor/cmd/root.go), several KiB of flag
    /// help: the kubelet's 2 KiB tail then holds no error line at all.
    #[test]
    fn usage_text_means_the_setup_failed() {
        use std::fmt::Write;
        let mut log = "Error: error resolving source context: dial tcp: i/o timeout\nUsage:\n  executor [flags]\n  executor [command]\n\nFlags:\n".to_owned();
        for i in 0..80 {
            let _ = writeln!(log, "      --flag-{i} string   help text of flag {i}");
        }
        log.push_str(
            "\nUse \"executor [command] --help\" for more information about a command.\n\n",
        );
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let f = failure_of(&failed(1, Some("Error"), &tail));
        assert_eq!((f.reason, f.retryable), (Reason::Internal, true));
        assert!(f.message.contains("before building"), "{}", f.message);
        // With the error line in view, it decides.
        let f = failure_of(&failed(1, Some("Error"), &log));
        assert_eq!((f.reason, f.retryable), (Reason::Internal, true));
        assert!(f.message.contains("i/o timeout"), "{}", f.message);
        // Issue 10: the longer log the watcher fetched shows the error line
        // the 2 KiB termination message lost; a permanent one decides.
        let log = log.replace("dial tcp: i/o timeout", "repository not found");
        let Observation::Failed(f) =
            classify_with_log(&failed(1, Some("Error"), &tail), Some(&log))
        else {
            panic!("not failed");
        };
        assert!(f.message.contains("repository not found"), "{}", f.message);
        assert!(!f.retryable, "{f:?}");
    }

    #[test]
    fn run_failures_keep_their_exit_code() {
        // exit() in cmd/executor/cmd/root.go propagates the RUN's exit status.
        let f = failure_of(&failed(
            2,
            Some("Error"),
            "INFO[0003] Running: [/bin/sh -c make]\nerror building image: error building stage: failed to execute command: waiting for process to exit: exit status 2\n",
        ));
        assert_eq!(
            (f.reason, f.retryable, f.exit_code),
            (Reason::BuildError, false, Some(2))
        );
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

    #[test]
    fn publish_classes_map_to_reasons() {
        let cases = [
            ("retryable", Reason::PushError, true),
            ("denied", Reason::ConfigError, false),
            ("platform-mismatch", Reason::BuildError, false),
            ("invalid", Reason::ConfigError, false),
        ];
        for (class, reason, retryable) in cases {
            let msg = format!("kiln publish failed ({class}): something about sha256:ab");
            let f = classify_publish_message(&msg).expect(class);
            assert_eq!((f.reason, f.retryable), (reason, retryable), "{class}");
            assert!(
                f.message.contains("something about sha256:ab"),
                "{}",
                f.message
            );
            assert_eq!(f.log.as_deref(), Some(msg.as_str()));
        }
    }

    #[test]
    fn publish_lines_round_trip_as_one_line() {
        for class in PublishClass::ALL {
            let line = class.line("child sha256:1 (linux/arm64)\nis missing\t here");
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(
                line,
                format!(
                    "kiln publish failed ({}): child sha256:1 (linux/arm64) is missing here",
                    class.as_str()
                )
            );
            let f = classify_publish_message(&format!("noise\n{line}\n")).expect("parsed");
            assert_eq!((f.reason, f.retryable), class.verdict());
        }
    }

    #[test]
    fn other_messages_are_not_publish_failures() {
        for msg in [
            "",
            "sha256:0000",
            "kiln publish failed (exploded): nope",
            "kiln publish failed (denied) no colon",
            "error pushing image: kiln publish failed",
        ] {
            assert_eq!(classify_publish_message(msg), None, "{msg:?}");
        }
    }
}
