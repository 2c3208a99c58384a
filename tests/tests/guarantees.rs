//! Ownership guarantees (docs/protocol.md, "Ownership and rejections") against other tenants and bad
//! publishers: a request that cannot become the build its id names is
//! answered with `request.rejected` and dead-lettered, never with a
//! `build.*` event, and a cancel never stops another tenant's build. Each
//! test reproduces a case that broke before (issue 9).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::{BuildEvent, Level, Reason, request_rejected_id};
use kiln_tests::fakekube::Resource;
use kiln_tests::harness::{
    ANY, Env, NAMESPACE, ONE_IMAGE_SUCCEEDS, one_image, only_outcome, unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// Tenants `default` (no user id) and `guest` (the tests' AMQP user), both
/// allowed everything in the test namespace.
fn two_tenants(env: &Env) -> std::path::PathBuf {
    env.write_policy(&format!(
        "[tenants.default]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n\n[tenants.guest]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n"
    ))
}

/// A worker serving [`two_tenants`] and a build of tenant `default`,
/// running (for 3 s) by the time this returns.
async fn running_build_of_default(prefix: &str) -> (Env, String) {
    let mut env = Env::new().await;
    let policy = two_tenants(&env);
    env.slow_pods(Duration::from_secs(3));
    env.start_worker_with(|c| c.build.policy = Some(policy.clone()));
    let id = unique(prefix);
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    (env, id)
}

/// The `request.rejected` events among `events`.
/// `guest` cancels `id`, a running build of `default`: the cancel is
/// answered by `request.rejected` (PolicyViolation) and dead-lettered, and
/// the build still succeeds. Returns the build's events.
async fn guest_cancel_is_refused(env: &mut Env, id: &str) -> Vec<BuildEvent> {
    env.cancel_as(id, "not yours", Some("guest")).await;
    let events = env
        .expect_sequence(id, &[ANY, "request.rejected", ANY, "build.succeeded"], WAIT)
        .await;
    let rejected = request_rejections(&events);
    assert_eq!(rejected[0].data.reason, Some(Reason::PolicyViolation));
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.starts_with("PolicyViolation: "), "{}", dead[0].1);
    events
}

fn request_rejections(events: &[BuildEvent]) -> Vec<&BuildEvent> {
    events
        .iter()
        .filter(|e| e.level() == Level::Request)
        .collect()
}

/// Asserts that `events` hold exactly one `request.rejected`, answering
/// `body` from `tenant` with `reason`.
#[track_caller]
fn assert_request_rejected(
    events: &[BuildEvent],
    build: &str,
    body: &[u8],
    tenant: &str,
    reason: Reason,
) {
    let rejected = request_rejections(events);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let ev = rejected[0];
    assert_eq!(ev.id, request_rejected_id(build, body));
    assert_eq!(ev.event_type, "dev.kiln.request.rejected.v1");
    assert_eq!(ev.data.reason, Some(reason));
    assert_eq!(ev.data.tenant.as_deref(), Some(tenant));
}

/// The other request of the same tenant under `id`: another tag.
fn other_request(id: &str) -> serde_json::Value {
    let mut req = one_image(id);
    req["images"][0]["destinations"] = serde_json::json!(["registry.example.com/shop/api:2.0.0"]);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_body_naming_a_running_build_does_not_end_it() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(3));
    env.start_worker();
    let id = unique("forged");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    let body = format!(r#"{{"apiVersion":"kiln/v1","kind":"BuildRequest","id":"{id}"}}"#);
    env.publish_raw(body.as_bytes(), None).await;
    let events = env.events_of(&id, WAIT).await;
    assert_eq!(
        only_outcome(&events).data.phase,
        kiln_protocol::Phase::Succeeded
    );
    assert_request_rejected(
        &events,
        &id,
        body.as_bytes(),
        "default",
        Reason::InvalidRequest,
    );
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, body.as_bytes());
    assert!(dead[0].1.starts_with("InvalidRequest: "), "{}", dead[0].1);
}

/// Tenant `guest` publishes her own request under `id`, held by a build of
/// `default` that runs to success: she gets `request.rejected`
/// (`IdConflict`) and no `build.*` or `image.*` event of hers exists.
async fn guest_conflicts_with_the_running_build(env: &mut Env, id: &str) {
    let theirs = serde_json::to_vec(&other_request(id)).unwrap();
    env.publish_raw(&theirs, Some("guest")).await;
    let events = env.events_of(id, WAIT).await;
    assert_eq!(
        only_outcome(&events).data.phase,
        kiln_protocol::Phase::Succeeded
    );
    assert_request_rejected(&events, id, &theirs, "guest", Reason::IdConflict);
    let foreign: Vec<&BuildEvent> = events
        .iter()
        .filter(|e| e.level() != Level::Request && e.data.tenant.as_deref() == Some("guest"))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_request_under_a_held_id_is_an_id_conflict() {
    // Tenant `default` holds the id first.
    let (mut env, id) = running_build_of_default("squat").await;
    guest_conflicts_with_the_running_build(&mut env, &id).await;
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.starts_with("IdConflict: "), "{}", dead[0].1);
    assert_eq!(env.created(Resource::Pods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_reusing_a_live_id_with_another_request_is_an_id_conflict() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(3));
    env.start_worker();
    let id = unique("reuse");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // The same request again: a duplicate, acked silently.
    env.publish(&one_image(&id)).await;
    // Another request under the same id: refused.
    let other = serde_json::to_vec(&other_request(&id)).unwrap();
    env.publish_raw(&other, None).await;
    let events = env.events_of(&id, WAIT).await;
    assert_eq!(
        only_outcome(&events).data.phase,
        kiln_protocol::Phase::Succeeded
    );
    assert_request_rejected(&events, &id, &other, "default", Reason::IdConflict);
    // After the build finished too, while its record lasts.
    env.publish_raw(&other, None).await;
    let dead = env.wait_dead_letters(WAIT).await;
    let mut all = dead;
    if all.len() < 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        all.extend(env.dead_letters().await);
    }
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .all(|(b, e)| b == &other && e.starts_with("IdConflict: ")),
        "{all:?}"
    );
    assert_eq!(env.created(Resource::Pods), 1);
}

/// Waits until the worker kept the cancel of `id` for `tenant` (the key it
/// writes first, as soon as it consumed the cancel), then a little longer
/// for the rest of its decision (one LIST, one SET). A fixed sleep was not
/// enough on a loaded machine: the worker may start consuming later than
/// that, and then takes the cancel and the request together.
async fn cancel_kept(env: &Env, id: &str, tenant: &str) {
    let client = redis::Client::open(kiln_tests::harness::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}cancel:{id}@{tenant}", env.redis_prefix);
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "cancel of {id} never kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_build_is_kept_for_its_tenant_only() {
    let mut env = Env::new().await;
    let policy = two_tenants(&env);
    env.start_worker_with(|c| c.build.policy = Some(policy.clone()));
    // Tenant `guest` cancels an id nobody holds yet...
    let id = unique("precancel");
    env.cancel_as(&id, "not yours", Some("guest")).await;
    cancel_kept(&env, &id, "guest").await;
    // ... and tenant `default`'s build under it runs to success.
    env.publish(&one_image(&id)).await;
    env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    // Her own build under an id she cancelled beforehand starts cancelled.
    let own = unique("precancel-own");
    env.cancel_as(&own, "changed my mind", Some("guest")).await;
    cancel_kept(&env, &own, "guest").await;
    let body = serde_json::to_vec(&one_image(&own)).unwrap();
    env.publish_raw(&body, Some("guest")).await;
    let events = env.expect_sequence(&own, &["build.cancelled"], WAIT).await;
    assert_eq!(events[0].data.tenant.as_deref(), Some("guest"));
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_cancel_of_a_running_build_is_refused_with_request_rejected() {
    let (mut env, id) = running_build_of_default("owned").await;
    let events = guest_cancel_is_refused(&mut env, &id).await;
    let rejected = request_rejections(&events);
    assert_eq!(rejected[0].data.tenant.as_deref(), Some("guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_lost_the_record_the_pods_still_name_the_owner() {
    let (mut env, id) = running_build_of_default("unrecorded").await;
    let pod = &env.kube.pods(NAMESPACE)[0];
    let ann = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        ann.get("kiln.dev/tenant").map(String::as_str),
        Some("default")
    );
    // Redis forgets the build (restart, flush, TTL): only the pods know.
    env.flush_redis().await;
    guest_cancel_is_refused(&mut env, &id).await;
}

/// Deletes one of this test's Redis keys (`build:<id>`, `lease:<id>`), as
/// Redis losing it (expiry, eviction, a failover to a replica that never
/// got it) would.
async fn lose_key(env: &Env, key: &str) {
    let client = redis::Client::open(kiln_tests::harness::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = redis::cmd("DEL")
        .arg(format!("{}{key}", env.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "{key} existed");
}

/// Issue 9, Redis losing a build's record and lease while its pods run:
/// another tenant's request under the id must still be refused. The owner
/// then comes from the build driven here and from the pods (tenant, plan).
/// Before, the claim found a free id: the request was acked as a duplicate
/// of the running build (or started and adopted its pods), unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_request_is_refused_after_redis_lost_the_record_and_lease() {
    let (mut env, id) = running_build_of_default("amnesia").await;
    lose_key(&env, &format!("build:{id}")).await;
    lose_key(&env, &format!("lease:{id}")).await;
    guest_conflicts_with_the_running_build(&mut env, &id).await;
    assert_eq!(env.created(Resource::Pods), 1, "nothing built for guest");
}

/// Issue 9, Redis losing only the record of a build whose first pod is
/// still being created (its lease lives on): the owner's cancel must reach
/// the build. Before, with no record and no pod yet, the cancel was kept
/// for a request of the sender's tenant still to come, which never came:
/// the build ran to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_cancel_reaches_its_build_after_redis_lost_only_the_record() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(3));
    env.start_worker();
    // Pod creation fails (retried) until the record is gone and the cancel
    // is in.
    let id = env.publish_while_pod_creates_fail("unrecorded", WAIT).await;
    lose_key(&env, &format!("build:{id}")).await;
    env.cancel(&id, "changed my mind").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.kube.faults().clear();
    let events = env.events_of(&id, WAIT).await;
    assert_eq!(
        only_outcome(&events).data.phase,
        kiln_protocol::Phase::Cancelled,
        "{:?}",
        events.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
}
