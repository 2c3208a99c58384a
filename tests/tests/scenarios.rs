//! End-to-end scenarios: real RabbitMQ and Redis, the fake Kubernetes API,
//! in-process workers. Each asserts the exact event sequence of its build
//! and the pods left behind.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::{Phase, Reason};
use kiln_tests::fakekube::{Fate, Resource};
use kiln_tests::harness::{
    ANY, Env, NAMESPACE, ONE_IMAGE_FAILS, ONE_IMAGE_SUCCEEDS, assert_sequence, one_image,
    pod_labels, two_images, unique, with_image,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_images_succeed_with_digests() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("two");
    env.publish(&two_images(&id)).await;
    // The two images build side by side, in any interleaving.
    let events = env
        .expect_sequence(&id, &["build.accepted", ANY, "build.succeeded"], WAIT)
        .await;
    for image in ["api", "worker"] {
        assert_sequence(
            &with_image(&events, image),
            &[
                "build.accepted",
                &format!("image.scheduled:{image}#1"),
                &format!("image.running:{image}#1"),
                &format!("image.succeeded:{image}#1"),
                "build.succeeded",
            ],
        );
    }
    let done = events.last().unwrap();
    let summary = done.data.images.as_ref().unwrap();
    assert_eq!(summary.len(), 2);
    for s in summary {
        assert_eq!(s.phase, Phase::Succeeded);
        let digest = s.digest.as_deref().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        assert_eq!(s.image_refs.len(), 1);
        assert!(s.image_refs[0].ends_with(&format!("@{digest}")));
    }
    // Event ids are deterministic; data carries the request's metadata.
    assert_eq!(done.id, format!("{id}/succeeded"));
    assert_eq!(done.data.app.as_deref(), Some("shop"));
    assert_eq!(
        done.data.labels.get("team").map(String::as_str),
        Some("payments")
    );
    // The inline Dockerfile went through a ConfigMap owned by the pod.
    assert_eq!(
        env.created(Resource::ConfigMaps),
        1,
        "one ConfigMap, for the inline Dockerfile"
    );
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "pods left: {:?}",
        env.pod_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failure_then_success() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|pod| {
        let (_, attempt) = pod_labels(pod);
        if attempt == 1 {
            Fate::fail(1, "INFO pushing\nerror pushing image: failed to push to destination registry.example.com/shop/api:1.0.0: 503 Service Unavailable")
        } else {
            Fate::succeed()
        }
    });
    env.start_worker();
    let id = unique("retry");
    env.publish(&one_image(&id)).await;
    let events = env
        .expect_sequence(
            &id,
            &[
                "build.accepted",
                "image.scheduled:api#1",
                "image.running:api#1",
                "image.retrying:api#1",
                "image.scheduled:api#2",
                "image.running:api#2",
                "image.succeeded:api#2",
                "build.succeeded",
            ],
            WAIT,
        )
        .await;
    let retrying = &events[3];
    assert_eq!(retrying.data.reason, Some(Reason::PushError));
    let wait = retrying.data.retry_in_seconds.unwrap();
    assert!((0.1..=1.0).contains(&wait), "backoff {wait}");
    // Backoff honoured: attempt 2 was scheduled no sooner than announced.
    let gap = events[4].time.duration_since(retrying.time).as_secs_f64();
    assert!(
        gap + 0.05 >= wait,
        "scheduled after {gap}s, announced {wait}s"
    );
    assert_eq!(
        events[4].data.pod.as_ref().unwrap().name,
        kiln_protocol::pod_name(&id, "api", 2)
    );
    assert_eq!(
        events.last().unwrap().data.images.as_ref().unwrap()[0].attempts,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_error_fails_without_retry_with_log_tail() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| {
        Fate::fail(1, "INFO[0001] RUN make\nmake: *** No rule to make target 'all'.  Stop.\nerror building image: error building stage: failed to execute command: waiting for process to exit: exit status 2")
    });
    env.start_worker();
    let id = unique("dockerfile");
    env.publish(&one_image(&id)).await;
    let events = env.expect_sequence(&id, ONE_IMAGE_FAILS, WAIT).await;
    let failed = &events[3];
    assert_eq!(failed.data.reason, Some(Reason::BuildError));
    assert_eq!(failed.data.exit_code, Some(1));
    let tail = failed.data.log_tail.as_deref().unwrap();
    assert!(tail.contains("No rule to make target"), "{tail}");
    assert_eq!(events[4].data.reason, Some(Reason::BuildError));
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_retries_then_fails() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::OomKilled);
    env.start_worker();
    let id = unique("oom");
    let mut req = one_image(&id);
    req["retry"] = serde_json::json!({"maxAttempts": 2});
    env.publish(&req).await;
    let events = env
        .expect_sequence(
            &id,
            &[
                "build.accepted",
                "image.scheduled:api#1",
                "image.running:api#1",
                "image.retrying:api#1",
                "image.scheduled:api#2",
                "image.running:api#2",
                "image.failed:api#2",
                "build.failed",
            ],
            WAIT,
        )
        .await;
    assert_eq!(events[6].data.reason, Some(Reason::OOMKilled));
    assert_eq!(events[7].data.reason, Some(Reason::OOMKilled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_is_retried() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|pod| {
        if pod_labels(pod).1 == 1 {
            Fate::Evicted
        } else {
            Fate::succeed()
        }
    });
    env.start_worker();
    let id = unique("evict");
    env.publish(&one_image(&id)).await;
    let events = env
        .expect_sequence(
            &id,
            &[ANY, "image.retrying:api#1", ANY, "build.succeeded"],
            WAIT,
        )
        .await;
    let retrying = events
        .iter()
        .find(|e| e.data.phase == Phase::Retrying)
        .unwrap();
    assert_eq!(retrying.data.reason, Some(Reason::Evicted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_timeout_fails_with_reason() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::StayPending {
        reason: kiln_tests::fakekube::PendingReason::Unschedulable,
    });
    env.start_worker_with(|c| c.pending_timeout = Duration::from_secs(1));
    let id = unique("pending");
    env.publish(&one_image(&id)).await;
    let events = env
        .expect_sequence(
            &id,
            &[
                "build.accepted",
                "image.scheduled:api#1",
                "image.failed:api#1",
                "build.failed",
            ],
            WAIT,
        )
        .await;
    assert_eq!(events[2].data.reason, Some(Reason::Unschedulable));
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fails_the_build() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    env.start_worker();
    let id = unique("deadline");
    let mut req = one_image(&id);
    req["timeoutSeconds"] = serde_json::json!(2);
    env.publish(&req).await;
    let events = env.expect_sequence(&id, ONE_IMAGE_FAILS, WAIT).await;
    assert_eq!(events[3].data.reason, Some(Reason::DeadlineExceeded));
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_queued() {
    let mut env = Env::new().await;
    let id = unique("cq");
    env.publish(&one_image(&id)).await;
    // Nobody consumes yet: the cancel is flagged by the first worker that
    // takes it, and the build is cancelled when its request is consumed.
    env.cancel(&id, "superseded").await;
    env.start_worker();
    let events = env.expect_sequence(&id, &["build.cancelled"], WAIT).await;
    assert_eq!(events[0].data.reason, Some(Reason::Cancelled));
    assert!(env.pod_names().is_empty());
}

/// A backlog of requests, each cancelled while queued: every cancel wins,
/// however the worker interleaves the two queues when it starts. (A single
/// request races only under load; many make the race likely on any host.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cancels_while_queued_all_win() {
    let mut env = Env::new().await;
    let ids: Vec<String> = (0..16).map(|i| unique(&format!("cm{i}-"))).collect();
    for id in &ids {
        env.publish(&one_image(id)).await;
    }
    for id in &ids {
        env.cancel(id, "superseded").await;
    }
    env.start_worker();
    for id in &ids {
        let events = env.expect_sequence(id, &["build.cancelled"], WAIT).await;
        assert_eq!(events[0].data.reason, Some(Reason::Cancelled), "{id}");
    }
    assert_eq!(env.created(Resource::Pods), 0, "{:?}", env.pod_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_running() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    env.start_worker();
    let id = unique("cr");
    env.publish(&two_images(&id)).await;
    env.wait_running(&id, 2, WAIT).await;
    env.cancel(&id, "superseded by 1.2.4").await;
    // Both images end cancelled, then the build: nothing else after the
    // first cancellation.
    let events = env
        .expect_sequence(
            &id,
            &[
                ANY,
                "image.cancelled:*",
                "image.cancelled:*",
                "build.cancelled",
            ],
            WAIT,
        )
        .await;
    for image in ["api", "worker"] {
        assert_sequence(
            &with_image(&events, image),
            &[
                "build.accepted",
                &format!("image.scheduled:{image}#1"),
                &format!("image.running:{image}#1"),
                &format!("image.cancelled:{image}#1"),
                "build.cancelled",
            ],
        );
    }
    assert_eq!(
        events.last().unwrap().data.message.as_deref(),
        Some("superseded by 1.2.4")
    );
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "{:?}",
        env.pod_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_is_one_build() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("dup");
    env.publish(&one_image(&id)).await;
    env.publish(&one_image(&id)).await;
    env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    // Once more after it finished: acked, nothing new.
    env.publish(&one_image(&id)).await;
    assert!(env.next_event(Duration::from_secs(2)).await.is_none());
    assert_eq!(env.created(Resource::Pods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_and_dead_lettered() {
    let mut env = Env::new().await;
    env.start_worker();
    let bad_id = unique("bad");
    // Not JSON at all.
    env.publish_raw(b"this is not json", None).await;
    // Unknown field, readable id.
    let mut unknown = one_image(&bad_id);
    unknown["images"][0]["contxt"] = serde_json::json!({});
    env.publish(&unknown).await;
    // Invalid destination.
    let refs_id = unique("refs");
    let mut refs = one_image(&refs_id);
    refs["images"][0]["destinations"] = serde_json::json!(["Registry.Example.com/X"]);
    env.publish(&refs).await;
    let rejected = env
        .expect_sequence(&bad_id, &["build.rejected"], WAIT)
        .await;
    assert_eq!(rejected[0].data.reason, Some(Reason::InvalidRequest));
    assert!(
        rejected[0]
            .data
            .message
            .as_deref()
            .unwrap()
            .contains("contxt")
    );
    let rejected = env
        .expect_sequence(&refs_id, &["build.rejected"], WAIT)
        .await;
    assert!(
        rejected[0]
            .data
            .message
            .as_deref()
            .unwrap()
            .contains("images[0].destinations[0]")
    );
    // The worker still serves.
    let ok = unique("ok");
    env.publish(&one_image(&ok)).await;
    env.expect_sequence(&ok, &[ANY, "build.succeeded"], WAIT)
        .await;
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().all(|(_, e)| e.starts_with("InvalidRequest: ")),
        "{dead:?}"
    );
    assert!(dead.iter().any(|(b, _)| b == b"this is not json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_violation_is_rejected() {
    let mut env = Env::new().await;
    let path = env.write_policy(&format!(
        "[tenants.default]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"registry.example.com/allowed\"]\n"
    ));
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("policy");
    env.publish(&one_image(&id)).await;
    let events = env.expect_sequence(&id, &["build.rejected"], WAIT).await;
    assert_eq!(events[0].data.reason, Some(Reason::PolicyViolation));
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.starts_with("PolicyViolation: "), "{}", dead[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owning_tenant_may_cancel() {
    let mut env = Env::new().await;
    let path = env.write_policy(&format!(
        "[tenants.default]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n\n[tenants.guest]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n"
    ));
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    // Published without a user id: tenant "default".
    let id = unique("owned");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // Tenant "guest" may not cancel it: dead-lettered, the build goes on.
    env.cancel_as(&id, "not yours", Some("guest")).await;
    let dead = env.wait_dead_letters(WAIT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.starts_with("PolicyViolation: "), "{}", dead[0].1);
    // Answered by request.rejected (docs/protocol.md, "Ownership and rejections"), nothing else.
    let answer = env.next_event(WAIT).await.unwrap();
    assert_eq!(answer.level(), kiln_protocol::Level::Request, "{answer:?}");
    assert!(env.next_event(Duration::from_secs(1)).await.is_none());
    // Its own tenant may.
    env.cancel(&id, "mine").await;
    env.expect_sequence(&id, &[ANY, "build.cancelled"], WAIT)
        .await;
}
