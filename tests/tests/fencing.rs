//! Fencing: a worker that stalled past its lease acts on nothing once it
//! resumes; FINISH and renewal never touch a lease the caller lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::BuildEvent;
use kiln_tests::fakekube::Resource;
use kiln_tests::harness::{Env, RedisPrefix, one_image, redis_url, unique};
use kiln_worker::store::{BuildRecord, Claim, LeaseToken, RecordState, Renewal, Store};

const WAIT: Duration = Duration::from_secs(40);

/// Every event of `build` that arrives within `window`.
async fn all_events_for(env: &mut Env, build: &str, window: Duration) -> Vec<BuildEvent> {
    let until = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return out;
        }
        if let Some(ev) = env.next_event(until - now).await
            && ev.data.build_id == build
        {
            out.push(ev);
        }
    }
}

fn count(events: &[BuildEvent], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event_type.ends_with(kind))
        .count()
}

/// Issue 9, reproduction 4. Worker A stalls (as under `SIGSTOP`) longer
/// than the lease TTL while its build runs; worker B adopts it, sees the
/// pod succeed, publishes the outcome and cleans up. When A resumes it must
/// not publish the outcome a second time (nor start anything): its lease is
/// gone, and by its own clock it stopped holding it long ago.
///
/// The stall is an in-process freeze of A's runtime (see
/// `Env::freeze_worker`): none of A's tasks or timers runs, and whatever
/// the fake API and Redis sent meanwhile waits in A's sockets, as for a
/// stopped process. Only A's AMQP connection keeps its heartbeats (lapin
/// runs its own IO thread), which makes A's late publishes succeed: the
/// worst case, the one fencing must handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_does_not_publish_after_its_lease_was_taken() {
    let mut env = Env::new().await;
    env.slow_pods(Duration::from_secs(4));
    let a = env.start_worker();
    let b = env.start_worker();
    let id = unique("stalled");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    // TTL is 2 s: B adopts after about 3 s, the pod ends at about 4 s.
    env.freeze_worker(a, Duration::from_secs(9));
    let events = all_events_for(&mut env, &id, Duration::from_secs(16)).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(count(&events, "build.succeeded.v1"), 1, "{kinds:?}");
    assert_eq!(count(&events, "image.succeeded.v1"), 1, "{kinds:?}");
    let last = events.last().unwrap();
    assert_eq!(
        last.kilnworker,
        env.worker_id(b),
        "the adopting worker published the outcome: {kinds:?}"
    );
    assert_eq!(env.created(Resource::Pods), 1, "nothing was built again");
    assert!(env.eventually(WAIT, |e| e.pod_names().is_empty()).await);
}

/// A record for the lease tests.
fn record(worker: &str) -> BuildRecord {
    BuildRecord {
        state: RecordState::Finished,
        phase: Some(kiln_protocol::Phase::Succeeded),
        tenant: "default".to_owned(),
        fingerprint: String::new(),
        history: kiln_worker::store::History::default(),
        namespace: "kiln-builds".to_owned(),
        worker: worker.to_owned(),
        images: std::collections::BTreeMap::new(),
        updated_at: jiff::Timestamp::now(),
    }
}

/// Two workers' lease handles on one fresh prefix, whose keys go when the
/// returned guard drops.
async fn two_workers() -> (Store, Store, RedisPrefix) {
    two_workers_with(Duration::from_secs(2)).await
}

async fn two_workers_with(ttl: Duration) -> (Store, Store, RedisPrefix) {
    let prefix = RedisPrefix::new("kiln-lease-test");
    let a = Store::connect(&redis_url(), prefix.as_str(), "worker-a", ttl)
        .await
        .unwrap();
    let b = Store::connect(&redis_url(), prefix.as_str(), "worker-b", ttl)
        .await
        .unwrap();
    (a, b, prefix)
}

/// FINISH of a worker that lost the lease writes no record and reports the
/// loss; the holder's record stands.
#[tokio::test]
async fn finish_without_the_lease_writes_nothing() {
    let (a, b, _keys) = two_workers().await;
    let id = unique("finish");
    let b_token = acquired(b.claim(&id).await.unwrap());
    let keep = Duration::from_secs(10);
    let forged = LeaseToken::mint("worker-a");
    let lost = a.finish(&id, &forged, &record("worker-a"), keep).await;
    assert!(
        matches!(lost, Err(kiln_worker::error::Error::LeaseLost(_))),
        "{lost:?}"
    );
    assert_eq!(b.record(&id).await.unwrap(), None, "no record written");
    b.finish(&id, &b_token, &record("worker-b"), keep)
        .await
        .unwrap();
    assert_eq!(b.record(&id).await.unwrap().unwrap().worker, "worker-b");
    assert_eq!(
        b.holders(std::slice::from_ref(&id)).await.unwrap(),
        [None],
        "released"
    );
}

/// Renewal never re-takes a lease that vanished (lapsed while stalled,
/// flushed) nor one another worker holds: both are lost.
#[tokio::test]
async fn renewal_is_compare_and_extend_only() {
    let (a, b, _keys) = two_workers().await;
    let missing = unique("missing");
    let taken = unique("taken");
    let mine = unique("mine");
    let b_token = acquired(b.claim(&taken).await.unwrap());
    let a_token = acquired(a.claim(&mine).await.unwrap());
    let ids = [missing.clone(), taken.clone(), mine.clone()];
    // A's renewal of `taken` under a token of its own, never B's.
    let held = [
        (missing, LeaseToken::mint("worker-a")),
        (taken, LeaseToken::mint("worker-a")),
        (mine, a_token),
    ];
    assert!(b_token.as_str().starts_with("worker-b/"));
    assert_eq!(
        a.renew_many(&held).await.unwrap(),
        [Renewal::Lost, Renewal::Lost, Renewal::Renewed]
    );
    assert_eq!(
        a.holders(&ids).await.unwrap(),
        [
            None,
            Some("worker-b".to_owned()),
            Some("worker-a".to_owned())
        ]
    );
}

/// The token of a claim that must have been free.
fn acquired(claim: Claim) -> LeaseToken {
    match claim {
        Claim::Acquired(token) => token,
        Claim::HeldBy(holder) => panic!("held by {holder}"),
    }
}

/// Issue 9: lease values carry a per-claim token. Worker A claims a build,
/// stalls until its lease lapses, and claims it again (an adoption of its
/// own build): the old claim's task, still running with the same worker id,
/// can neither renew nor finish; only the new claim can. With the worker id
/// as the lease value, the old task's renewal succeeded and it went on
/// acting beside the new one.
#[tokio::test]
async fn an_old_claim_cannot_renew_or_finish_after_a_reclaim_by_the_same_worker() {
    let (a, _, _keys) = two_workers_with(Duration::from_millis(400)).await;
    let id = unique("reclaim");
    let old = acquired(a.claim(&id).await.unwrap());
    assert_eq!(
        a.claim(&id).await.unwrap(),
        Claim::HeldBy("worker-a".to_owned()),
        "a live claim of this worker holds the lease against its next claim"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let new = acquired(a.claim(&id).await.unwrap());
    assert_ne!(old, new);
    assert_eq!(new.worker(), "worker-a");
    let old_held = [(id.clone(), old.clone())];
    assert_eq!(a.renew_many(&old_held).await.unwrap(), [Renewal::Lost]);
    let keep = Duration::from_secs(10);
    let lost = a.finish(&id, &old, &record("worker-a"), keep).await;
    assert!(
        matches!(lost, Err(kiln_worker::error::Error::LeaseLost(_))),
        "{lost:?}"
    );
    assert!(!a.release(&id, &old).await.unwrap(), "nor release it");
    assert_eq!(
        a.holders(std::slice::from_ref(&id)).await.unwrap(),
        [Some("worker-a".to_owned())],
        "holders show the worker id, not the token"
    );
    let new_held = [(id.clone(), new.clone())];
    assert_eq!(a.renew_many(&new_held).await.unwrap(), [Renewal::Renewed]);
    a.finish(&id, &new, &record("worker-a"), keep)
        .await
        .unwrap();
    assert_eq!(a.record(&id).await.unwrap().unwrap().worker, "worker-a");
}

/// Messages ready in the build queue of `env` (passive declare).
async fn builds_ready(env: &Env) -> u32 {
    let conn = lapin::Connection::connect(
        &kiln_tests::harness::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(
            format!("{}.builds", env.prefix).as_str().into(),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// Issue 9: a build that stops before acceptance has its delivery
/// requeued, never left unacked. The first pod create keeps failing (503,
/// retried) while another holder takes the lease key in Redis: the build's
/// renewal finds the lease lost and its task stops before any pod exists.
/// Once the stolen lease lapses the redelivered request builds it: exactly
/// one terminal event, one pod, and no message left behind once the worker
/// stopped (an unacked delivery would be back in the queue then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_stopped_before_acceptance_is_requeued_and_built_once() {
    let mut env = Env::new().await;
    let w = env.start_worker();
    let id = env.publish_while_pod_creates_fail("requeued", WAIT).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}lease:{id}", env.redis_prefix);
    let thief = LeaseToken::mint("thief");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(thief.as_str())
        .arg("PX")
        .arg(3_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The renewal (every 667 ms) finds the lease lost and stops the build.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.kube.faults().clear();
    let events = env.events_of(&id, WAIT).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(count(&events, "build.succeeded.v1"), 1, "{kinds:?}");
    // The stopped build had published `build.accepted` before its first
    // create; the rebuild publishes it again under the same event id.
    let accepted: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event_type.ends_with("build.accepted.v1"))
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(accepted.len(), 1, "{kinds:?}");
    assert_eq!(env.created(Resource::Pods), 1, "built once");
    env.stop_worker(w).await;
    assert_eq!(builds_ready(&env).await, 0, "no delivery left behind");
}
