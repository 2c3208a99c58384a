//! Scenarios with faults: a worker killed or stopped mid-build, Kubernetes
//! API errors, the RabbitMQ connection cut, Redis losing its keys.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::Phase;
use kiln_tests::fakekube::{Fate, FaultResponse, FaultRule, Resource, Verb};
use kiln_tests::harness::{
    ANY, Env, NAMESPACE, ONE_IMAGE_SUCCEEDS, one_image, only_outcome, pod_labels, two_images,
    unique,
};

const WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_taken_over_without_rebuilding() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(8));
    let first = env.start_worker();
    let id = unique("takeover");
    env.publish(&two_images(&id)).await;
    env.wait_running(&id, 2, WAIT).await;
    env.kill_worker(first).await;
    let pods_before = env.pod_names();
    assert_eq!(pods_before.len(), 2);
    // A second worker adopts once the lease lapses (2 s in tests), while
    // the pods still run.
    env.start_worker();
    let events = env.events_of(&id, WAIT).await;
    let outcome = only_outcome(&events);
    assert_eq!(outcome.data.phase, Phase::Succeeded);
    assert_ne!(
        outcome.kilnworker, events[0].kilnworker,
        "finished by the second worker"
    );
    // Exactly one pod per image: nothing was built again.
    assert_eq!(env.created(Resource::Pods), 2);
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

/// The worker that takes over reads the builds' pods from its watch cache:
/// one LIST (its watcher's initial list) whatever the number of builds,
/// never one per build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_lists_pods_once_not_once_per_build() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(10));
    let first = env.start_worker();
    let ids: Vec<String> = (0..3).map(|_| unique("takeover-list")).collect();
    for id in &ids {
        env.publish(&one_image(id)).await;
    }
    let running = |e: &Env| {
        let pods = e.kube.pods(NAMESPACE);
        pods.len() == ids.len()
            && pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    };
    assert!(env.eventually(WAIT, running).await);
    env.kill_worker(first).await;
    env.kube.clear_calls();
    env.start_worker();
    for id in &ids {
        env.expect_sequence(id, &[ANY, "build.succeeded"], WAIT)
            .await;
    }
    let lists = env
        .kube
        .calls()
        .iter()
        .filter(|c| c.verb == Verb::List && c.resource == Resource::Pods)
        .count();
    assert_eq!(lists, 1, "the watcher's list only");
    assert_eq!(
        env.created(Resource::Pods),
        0,
        "the second worker rebuilt nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_builds_over_at_once() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(5));
    let first = env.start_worker_with(|c| c.lease_ttl = Duration::from_secs(30));
    let id = unique("handover");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    env.start_worker_with(|c| c.lease_ttl = Duration::from_secs(30));
    // Let the second worker connect and see the pod, so the release notice
    // (not the lease lapsing) is what moves the build.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.stop_worker(first).await;
    // The lease would last 30 s; the release notice makes the other worker
    // adopt now, well before the pod ends.
    let events = env
        .expect_sequence(&id, &[ANY, "build.succeeded"], Duration::from_secs(15))
        .await;
    only_outcome(&events); // one outcome, published once
    assert_eq!(env.created(Resource::Pods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_errors_during_create_are_retried() {
    let mut env = Env::new().await;
    env.kube.faults().add(
        FaultRule::new(Verb::Create, Resource::Pods)
            .respond(FaultResponse::InternalError)
            .times(3),
    );
    env.kube.faults().add(
        FaultRule::new(Verb::Create, Resource::Pods)
            .respond(FaultResponse::TooManyRequests)
            .times(1),
    );
    env.start_worker();
    let id = unique("kube500");
    env.publish(&one_image(&id)).await;
    env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    assert_eq!(env.kube.faults().injected_count(), 4);
    assert_eq!(env.created(Resource::Pods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_interruptions_lose_nothing() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(4));
    env.start_worker();
    let id = unique("watch");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    env.kube.faults().expire_history();
    env.kube.faults().close_watches();
    env.expect_sequence(&id, &[ANY, "build.succeeded"], WAIT)
        .await;
}

/// A running build's pod is deleted (an operator, a node drain) while the
/// watch is down, and the watch history ages out meanwhile: the worker's
/// re-watch gets 410 and relists, and the relist no longer has the pod. The
/// build must hear of the deletion (and retry the image) instead of waiting
/// for a pod that is gone until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_while_the_watch_is_down_is_retried() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(6));
    env.start_worker();
    let id = unique("relist");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // Every watch call fails from now on, and the open one is cut.
    env.kube.faults().add(
        FaultRule::new(Verb::Watch, Resource::Pods).respond(FaultResponse::ServiceUnavailable),
    );
    env.kube.faults().close_watches();
    let [pod] = env.pod_names().try_into().unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.kube.client(), NAMESPACE);
    pods.delete(&pod, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
    env.kube.faults().expire_history();
    env.kube.faults().clear();
    env.expect_sequence(
        &id,
        &[
            ANY,
            "image.running:api#1",
            "image.retrying:api#1",
            ANY,
            "build.succeeded",
        ],
        WAIT,
    )
    .await;
    assert_eq!(env.created(Resource::Pods), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_cut_mid_build() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(4));
    let w = env.start_worker();
    let id = unique("amqpcut");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    assert!(
        env.close_worker_connection(w).await,
        "could not close the worker's connection"
    );
    let events = env
        .expect_sequence(&id, &[ANY, "build.succeeded"], WAIT)
        .await;
    only_outcome(&events); // one outcome, published once
    // And the worker still takes new work after recovering.
    let next = unique("after");
    env.publish(&one_image(&next)).await;
    env.expect_sequence(&next, &[ANY, "build.succeeded"], WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_mid_build() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(4));
    env.start_worker();
    let id = unique("flush");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    env.flush_redis().await;
    let events = env
        .expect_sequence(&id, &[ANY, "build.succeeded"], WAIT)
        .await;
    only_outcome(&events); // one outcome, published once
    assert_eq!(env.created(Resource::Pods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_travels_to_every_event() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("trace");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    env.publish_with_traceparent(&one_image(&id), tp).await;
    let events = env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    for ev in &events {
        assert_eq!(ev.traceparent.as_deref(), Some(tp), "{}", ev.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_attempt_pod_exists_before_the_failed_one_goes() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|pod| {
        if pod_labels(pod).1 == 1 {
            Fate::Evicted
        } else {
            Fate::RunForever
        }
    });
    env.start_worker();
    let id = unique("order");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await; // attempt 1 runs, then is evicted
    let second = kiln_protocol::pod_name(&id, "api", 2);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().contains(&second))
            .await
    );
    // Attempt 1's pod is deleted only after attempt 2's exists.
    let calls = env.kube.calls();
    let created2 = calls.iter().position(|c| {
        c.verb == Verb::Create && c.name.as_deref() == Some(second.as_str()) && c.succeeded()
    });
    let first = kiln_protocol::pod_name(&id, "api", 1);
    let deleted1 = calls
        .iter()
        .position(|c| c.verb == Verb::Delete && c.name.as_deref() == Some(first.as_str()));
    if let (Some(c), Some(d)) = (created2, deleted1) {
        assert!(c < d, "attempt 1 deleted before attempt 2 existed");
    }
    env.cancel(&id, "done").await;
    env.expect_sequence(&id, &[ANY, "build.cancelled"], WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_from_redis_stops_and_another_finishes() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(8));
    let redis = kiln_tests::host_port(&kiln_tests::harness::redis_url(), 6379);
    let proxy = kiln_tests::harness::TcpProxy::start(&redis).await;
    let url = format!("redis://{}", proxy.addr);
    let first = env.start_worker_with(|c| c.connections.redis_url = url);
    let id = unique("fenced");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    let first_id = env.worker_id(first);
    // The first worker loses Redis: after one lease TTL (2 s) it must stop
    // acting on the build, and a second worker adopts it from its pod.
    proxy.cut();
    env.start_worker();
    let events = env.events_of(&id, WAIT).await;
    let outcome = only_outcome(&events);
    assert_eq!(outcome.data.phase, Phase::Succeeded);
    assert_ne!(
        outcome.kilnworker, first_id,
        "the fenced worker must not finish it"
    );
    assert_eq!(env.created(Resource::Pods), 1, "no rebuild");
    // Redis comes back: the first worker serves again.
    proxy.restore();
    let next = unique("after-redis");
    env.kill_worker(1).await;
    env.publish(&one_image(&next)).await;
    env.expect_sequence(&next, &[ANY, "build.succeeded"], WAIT)
        .await;
}

/// Issue 9 (found by the chaos run, seed 12162024716214587899). Worker B's
/// watch is down while worker A finishes a build and deletes its pod, so
/// B's cache still shows the pod running. Redis then loses the build's
/// record and lease. Adopting from that stale view resumed the build; the
/// relist that followed reported the pod gone, and the image was built a
/// second time. With no record to order things, the pods are the only
/// truth about the build, and adoption must read them fresh from the API
/// server, not from a cache that may lag behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_watch_after_redis_lost_the_record_builds_nothing_twice() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(3));
    env.start_worker();
    let id = unique("stale");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // B's sweep looks at a foreign build every half of its lease TTL: at
    // 8 s, its second look comes after A finished and Redis was flushed
    // (a shorter TTL would let it clean up the finished build first).
    start_blind_observer(&mut env).await;
    env.expect_sequence(&id, &[ANY, "build.succeeded"], WAIT)
        .await;
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
    // Redis loses the finished record; B's adoption sweep (every half TTL)
    // finds the build without a holder.
    env.flush_redis().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // B's watch comes back, from a history that has aged out: it relists.
    env.kube.faults().expire_history();
    env.kube.faults().clear();
    let mut late = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match env.next_event(left).await {
            Some(ev) if ev.data.build_id == id => late.push(ev),
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        late.iter().all(|e| e.data.phase != Phase::Retrying),
        "rebuilt after the stale adoption: {:?}",
        late.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(env.created(Resource::Pods), 1, "one pod, never a second");
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

/// Starts worker B (lease TTL 8 s: its sweep looks at a foreign build every
/// 4 s) and waits until it listed the pods, so the running build is foreign
/// to it; then B's watch goes down for good (B cannot relist either) while
/// every other client's re-watch works. `faults().clear()` gives B its
/// watch back.
async fn start_blind_observer(env: &mut Env) -> usize {
    let lists = |e: &Env| {
        e.kube
            .calls()
            .iter()
            .filter(|c| c.verb == Verb::List && c.resource == Resource::Pods && c.succeeded())
            .count()
    };
    let before = lists(env);
    let b = env.start_worker_with(|c| c.lease_ttl = Duration::from_secs(8));
    assert!(env.eventually(WAIT, |e| lists(e) > before).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ua = kiln_tests::harness::worker_user_agent(&env.worker_id(b));
    for verb in [Verb::Watch, Verb::List] {
        env.kube.faults().add(
            FaultRule::new(verb, Resource::Pods)
                .user_agent_contains(ua.clone())
                .respond(FaultResponse::ServiceUnavailable),
        );
    }
    env.kube.faults().close_watches();
    b
}

/// Issue 9 (chaos, seed 42, after the fix above): adoption without a
/// record read the pods from the server, then handed the build "what the
/// watch delivered since" as the difference between those pods and the
/// cache. B's cache lagged behind the server: it had never seen attempt 2's
/// pod, so the difference said attempt 2 was deleted, and a third attempt
/// was built. The hand-over must compare the cache with itself (before and
/// after), never with what the server said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_adopters_cache_never_saw_is_not_taken_for_deleted() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(6));
    env.kube.kubelet().set_script(|pod| {
        if pod_labels(pod).1 == 1 {
            Fate::Evicted
        } else {
            Fate::succeed()
        }
    });
    let a = env.start_worker();
    let id = unique("unseen");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    start_blind_observer(&mut env).await;
    // Attempt 1 is evicted; A retries, and B does not see attempt 2.
    env.wait_running(&id, 1, WAIT).await;
    // A dies and Redis loses the build: B adopts it (record-less) from the
    // server's pods while attempt 2 still runs.
    env.kill_worker(a).await;
    env.flush_redis().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.kube.faults().expire_history();
    env.kube.faults().clear();
    let events = env.events_of(&id, WAIT).await;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.iter()
            .any(|i| i.ends_with("/succeeded") && !i.contains("/api/")),
        "the build succeeded: {ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.ends_with("/api/2/retrying")),
        "attempt 2 was taken for deleted: {ids:?}"
    );
    assert_eq!(env.created(Resource::Pods), 2, "attempts 1 and 2, no third");
}
