//! Issue 10: a ResourceQuota refusal (403 `exceeded quota`) waits and
//! retries within the build's deadline instead of failing the build, so a
//! Kubernetes ResourceQuota works as a per-tenant limit of concurrent builds.
//! The fake API server counts pods against the quota and refuses with the
//! API server's own 403.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kiln_protocol::{BuildEvent, Phase, Reason};
use kiln_tests::binary::kiln_bin;
use kiln_tests::fakekube::{Fate, Resource};
use kiln_tests::harness::{ANY, Env, NAMESPACE, one_image, redis_url, unique};

const WAIT: Duration = Duration::from_secs(30);

/// The next event of `build` in `phase` (by name), skipping the others
/// (they stay in the history `events_of` reads).
async fn next_of(env: &mut Env, build: &str, phase: &str) -> BuildEvent {
    loop {
        let ev = env
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {phase} event of {build} within {WAIT:?}"));
        if ev.data.build_id == build && ev.data.phase.as_str() == phase {
            return ev;
        }
    }
}

fn is_waiting_for_quota(ev: &BuildEvent) -> bool {
    ev.event_type == "dev.kiln.image.waiting.v1"
        && ev.data.reason == Some(Reason::QuotaExceeded)
        && ev.data.retry_in_seconds.is_some()
        && ev.data.message.as_deref().is_some_and(|m| {
            m.contains("exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1")
        })
}

/// `kiln status <id>` (text) against this test's Redis; no cluster.
async fn status_text(env: &Env, id: &str) -> String {
    let out = tokio::process::Command::new(kiln_bin())
        .args(["status", id])
        .env("KILN_REDIS_URL", redis_url())
        .env("KILN_REDIS_PREFIX", &env.redis_prefix)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_over_quota_waits_then_succeeds_when_quota_frees() {
    let mut env = Env::new().await;
    env.kube.set_pod_quota(NAMESPACE, "compute", 1);
    env.slow_pods(Duration::from_secs(4));
    env.start_worker();
    let first = unique("quota-first");
    let second = unique("quota-second");
    env.publish(&one_image(&first)).await;
    next_of(&mut env, &first, "running").await;
    env.publish(&one_image(&second)).await;
    let waiting = next_of(&mut env, &second, "waiting").await;
    assert!(is_waiting_for_quota(&waiting), "{waiting:?}");
    assert_eq!(waiting.id, format!("{second}/api/1/waiting"));
    // `kiln status` shows why the image has no pod.
    let mut shown = String::new();
    for _ in 0..20 {
        shown = status_text(&env, &second).await;
        if shown.contains("waiting (QuotaExceeded)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown.contains("waiting (QuotaExceeded)"), "{shown}");
    // The first build's pod ends, the quota frees, the second one runs.
    let events = env
        .expect_sequence(
            &second,
            &[
                "build.accepted",
                "image.waiting:api#1",
                "image.scheduled:api#1",
                "image.running:api#1",
                "image.succeeded:api#1",
                "build.succeeded",
            ],
            WAIT,
        )
        .await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.data.phase.as_str() == "waiting")
            .count(),
        1
    );
    env.expect_sequence(&first, kiln_tests::harness::ONE_IMAGE_SUCCEEDS, WAIT)
        .await;
    // Refused creates were tried again, one pod per build in the end.
    assert_eq!(env.created(Resource::Pods), 2);
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_deadline_passes_while_waiting_ends_once() {
    let mut env = Env::new().await;
    env.kube.set_pod_quota(NAMESPACE, "compute", 1);
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    env.start_worker();
    let holder = unique("quota-holder");
    env.publish(&one_image(&holder)).await;
    next_of(&mut env, &holder, "running").await;
    let late = unique("quota-late");
    let mut request = one_image(&late);
    request["timeoutSeconds"] = serde_json::json!(4);
    env.publish(&request).await;
    let events = env
        .expect_sequence(
            &late,
            &[
                "build.accepted",
                "image.waiting:api#1",
                "image.failed:api#1",
                "build.failed",
            ],
            WAIT,
        )
        .await;
    let outcome = events.last().unwrap();
    assert_eq!(outcome.data.reason, Some(Reason::DeadlineExceeded));
    let message = outcome.data.message.as_deref().unwrap();
    assert!(
        message.contains("a ResourceQuota refused the build pod"),
        "{message}"
    );
    // Exactly one terminal event, and no late one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = env.events_of(&late, Duration::from_millis(500)).await;
    assert_eq!(again.len(), events.len(), "{again:?}");
    assert!(env.dead_letters().await.is_empty());
    env.cancel(&holder, "done").await;
    env.expect_sequence(&holder, &[ANY, "build.cancelled"], WAIT)
        .await;
}

/// Two tenants on one worker with a small prefetch window (4): tenant
/// `default`'s namespace admits one pod at a time and it sends more builds
/// (6) than the window holds; tenant `guest`'s one build, queued behind
/// them, still runs at once (the waiting builds lend their slots), and
/// every `default` build succeeds as its quota frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_quota_does_not_starve_another() {
    let mut env = Env::new().await;
    let path = env.write_policy(
        "[tenants.default]\nnamespace = \"tenant-a\"\nallowedDestinations = [\"*\"]\n\n[tenants.guest]\nnamespace = \"tenant-b\"\nallowedDestinations = [\"*\"]\n",
    );
    env.kube.set_pod_quota("tenant-a", "compute", 1);
    env.slow_pods(Duration::from_secs(2));
    env.start_worker_with(|c| {
        c.build.policy = Some(path.clone());
        c.prefetch = 4;
    });
    let a: Vec<String> = (0..6).map(|i| unique(&format!("quota-a{i}"))).collect();
    for id in &a {
        env.publish(&one_image(id)).await;
    }
    // Behind all of them in the queue.
    let b = unique("quota-b");
    let sent = Instant::now();
    env.publish_raw(&serde_json::to_vec(&one_image(&b)).unwrap(), Some("guest"))
        .await;
    next_of(&mut env, &b, "succeeded").await;
    let took = sent.elapsed();
    // Its own pod run (2 s) and scheduling. Without lending it would wait
    // for three of A's builds to finish one after the other (3 x 2 s).
    assert!(took < Duration::from_secs(4), "tenant B waited {took:?}");
    for id in &a {
        let events = env.events_of(id, Duration::from_secs(90)).await;
        assert_eq!(
            events.last().map(|e| e.data.phase),
            Some(Phase::Succeeded),
            "{id}: {events:?}"
        );
    }
    println!("tenant B's build took {took:?} behind 6 builds of a tenant at quota (prefetch 4)");
}
