//! Fencing: a worker that stalled past its lease acts on nothing once it
//! resumes; FINISH and renewal never touch a lease the caller lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::BuildEvent;
use kiln_tests::fakekube::Resource;
use kiln_tests::harness::{Env, one_image, redis_url, unique};
use kiln_worker::lease::{BuildRecord, Claim, Leases, RecordState, Renewal};

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
        phase: Some("succeeded".to_owned()),
        tenant: "default".to_owned(),
        fingerprint: String::new(),
        history: kiln_worker::lease::History::default(),
        namespace: "kiln-builds".to_owned(),
        worker: worker.to_owned(),
        images: std::collections::BTreeMap::new(),
        updated_at: jiff::Timestamp::now(),
    }
}

/// Two workers' lease handles on one fresh prefix (keys expire on their
/// own: short TTLs).
async fn two_workers() -> (Leases, Leases) {
    let prefix = format!("{}:", unique("kiln-lease-test"));
    let ttl = Duration::from_secs(2);
    let a = Leases::connect(&redis_url(), &prefix, "worker-a", ttl)
        .await
        .unwrap();
    let b = Leases::connect(&redis_url(), &prefix, "worker-b", ttl)
        .await
        .unwrap();
    (a, b)
}

/// FINISH of a worker that lost the lease writes no record and reports the
/// loss; the holder's record stands.
#[tokio::test]
async fn finish_without_the_lease_writes_nothing() {
    let (a, b) = two_workers().await;
    let id = unique("finish");
    assert_eq!(b.claim(&id).await.unwrap(), Claim::Acquired);
    let keep = Duration::from_secs(10);
    let lost = a.finish(&id, &record("worker-a"), keep).await;
    assert!(
        matches!(lost, Err(kiln_worker::error::Error::LeaseLost(_))),
        "{lost:?}"
    );
    assert_eq!(b.record(&id).await.unwrap(), None, "no record written");
    b.finish(&id, &record("worker-b"), keep).await.unwrap();
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
    let (a, b) = two_workers().await;
    let missing = unique("missing");
    let taken = unique("taken");
    let mine = unique("mine");
    assert_eq!(b.claim(&taken).await.unwrap(), Claim::Acquired);
    assert_eq!(a.claim(&mine).await.unwrap(), Claim::Acquired);
    let ids = [missing.clone(), taken.clone(), mine.clone()];
    assert_eq!(
        a.renew_many(&ids).await.unwrap(),
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
