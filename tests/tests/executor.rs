//! Builds against a kubelet that fails the way the real Kaniko executor
//! fails (issue 12): the executor's exit codes, its termination message
//! (digest written before the push) and its log lines, rendered from the
//! pod's own args by `fakekube::Executor`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use kiln_protocol::{Phase, Reason};
use kiln_tests::fakekube::{Executor, Fate, digest_of};
use kiln_tests::harness::{Env, one_image, pod_labels, sequence, unique};

const WAIT: Duration = Duration::from_secs(30);

/// A kubelet script: attempt 1 does `what`, later attempts build.
fn first_attempt(what: Executor) -> impl Fn(&Pod) -> Fate + Send + Sync + 'static {
    move |pod| {
        let (_, attempt) = pod_labels(pod);
        Fate::Executor(if attempt == 1 {
            what.clone()
        } else {
            Executor::Builds
        })
    }
}

/// Finding 1: `DoPush` writes the digest to `/dev/termination-log` before
/// it pushes, so a failed push ends with exit 1 and the digest as the
/// termination message; the build must retry it and succeed on attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_fails_like_the_executor_is_retried() {
    let mut env = Env::new().await;
    env.kube
        .kubelet()
        .set_script(first_attempt(Executor::push_unavailable()));
    env.start_worker();
    let id = unique("pushfail");
    env.publish(&one_image(&id)).await;
    let events = env.events_of(&id, WAIT).await;
    assert_eq!(
        sequence(&events),
        [
            "build.accepted",
            "image.scheduled:api#1",
            "image.running:api#1",
            "image.retrying:api#1",
            "image.scheduled:api#2",
            "image.running:api#2",
            "image.succeeded:api#2",
            "build.succeeded"
        ],
        "{events:#?}"
    );
    let retrying = &events[3];
    assert_eq!(retrying.data.reason, Some(Reason::PushError));
    assert_eq!(retrying.data.exit_code, Some(1));
    // The log tail read from the pod shows the push error itself.
    let tail = retrying.data.log_tail.as_deref().unwrap_or_default();
    assert!(
        tail.contains(
            "error pushing image: failed to push to destination registry.example.com/shop/api:1.0.0"
        ),
        "{tail}"
    );
    let done = events.last().unwrap();
    let summary = &done.data.images.as_ref().unwrap()[0];
    assert_eq!(summary.phase, Phase::Succeeded);
    assert_eq!(
        summary.digest.as_deref(),
        Some(digest_of(&kiln_protocol::pod_name(&id, "api", 2)).as_str())
    );
    env.cleanup().await;
}

/// Finding 9: the git host refusing connections is transient: the image
/// retries (the executor's error line is hidden behind cobra's usage text
/// in the termination message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_fetch_network_error_is_retried() {
    let mut env = Env::new().await;
    env.kube
        .kubelet()
        .set_script(first_attempt(Executor::git_unreachable()));
    env.start_worker();
    let id = unique("fetchfail");
    env.publish(&one_image(&id)).await;
    let events = env.events_of(&id, WAIT).await;
    let seq = sequence(&events);
    assert_eq!(
        seq.last().map(String::as_str),
        Some("build.succeeded"),
        "{seq:?}"
    );
    let retrying = events
        .iter()
        .find(|e| e.event_type == "dev.kiln.image.retrying.v1")
        .unwrap_or_else(|| panic!("no retry: {seq:?}"));
    assert_eq!(retrying.data.reason, Some(Reason::Internal));
    env.cleanup().await;
}

/// Finding 7: the executor's `--log-format` defaults to `color`; Kiln asks
/// for `text`, so messages and log tails carry no ANSI escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_logs_carry_no_colour_codes() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| {
        Fate::Executor(Executor::RunFails {
            command: "make".into(),
            exit_code: 2,
        })
    });
    env.start_worker();
    let id = unique("nocolour");
    env.publish(&one_image(&id)).await;
    let events = env.events_of(&id, WAIT).await;
    let failed = events
        .iter()
        .find(|e| e.event_type == "dev.kiln.image.failed.v1")
        .unwrap_or_else(|| panic!("no image.failed: {:?}", sequence(&events)));
    assert_eq!(failed.data.reason, Some(Reason::BuildError));
    assert_eq!(failed.data.exit_code, Some(2), "the RUN's exit status");
    let tail = failed.data.log_tail.as_deref().unwrap_or_default();
    assert!(tail.contains("Running: [/bin/sh -c make]"), "{tail}");
    assert!(
        !tail.contains('\x1b'),
        "colour codes in the log tail: {tail:?}"
    );
    let message = failed.data.message.as_deref().unwrap_or_default();
    assert!(!message.contains('\x1b'), "{message:?}");
    env.cleanup().await;
}
