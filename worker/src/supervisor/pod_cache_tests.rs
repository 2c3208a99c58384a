//! The pod cache: watch events, relists that miss deletions, the first
//! sync, and what a task started from a read missed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

fn pod(ns: &str, build: &str, attempt: u32) -> PodView {
    PodView {
        namespace: ns.to_owned(),
        name: format!("kiln-{build}-api-{attempt}"),
        uid: format!("uid-{build}-{attempt}"),
        build_id: build.to_owned(),
        image: "api".to_owned(),
        attempt,
        ..PodView::default()
    }
}

/// A cache whose namespace `ns` completed its first list with `pods`.
fn listed(ns: &str, pods: &[PodView]) -> PodCache {
    let c = PodCache::default();
    c.resync(ns);
    for p in pods {
        c.apply(p, false);
    }
    assert!(c.synced(ns).is_empty());
    c
}

fn names(mut pods: Vec<PodView>) -> Vec<String> {
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.into_iter().map(|p| p.name).collect()
}

#[test]
fn nothing_is_answered_before_the_first_list_completes() {
    let c = PodCache::default();
    c.resync("ns");
    c.apply(&pod("ns", "b", 1), false);
    assert_eq!(c.build_pods("ns", "b"), None, "partial view");
    assert_eq!(c.build_pods("other", "b"), None, "never listed");
    c.synced("ns");
    assert_eq!(names(c.build_pods("ns", "b").unwrap()), ["kiln-b-api-1"]);
    assert_eq!(c.build_pods("ns", "nope"), Some(Vec::new()));
}

#[test]
fn events_update_and_delete_pods() {
    let c = listed("ns", &[pod("ns", "b", 1)]);
    let mut running = pod("ns", "b", 1);
    running.phase = Some(crate::classify::PodPhase::Running);
    assert!(c.apply(&running, false));
    assert_eq!(c.build_pods("ns", "b").unwrap(), [running.clone()]);
    assert!(c.apply(&pod("ns", "b", 2), false));
    assert!(c.apply(&running, true), "attempt 2 is left");
    assert!(!c.apply(&pod("ns", "b", 2), true), "no pod left");
    assert!(!c.lock().has_pods("b"));
    assert!(
        !c.apply(&pod("elsewhere", "x", 1), true),
        "unknown namespace"
    );
}

#[test]
fn a_relist_that_misses_a_pod_returns_it_as_gone() {
    let c = listed(
        "ns",
        &[pod("ns", "a", 1), pod("ns", "b", 1), pod("ns", "b", 2)],
    );
    c.resync("ns");
    c.apply(&pod("ns", "b", 2), false);
    c.apply(&pod("ns", "c", 1), false);
    // Until the relist ends, the previous view stands.
    assert_eq!(names(c.build_pods("ns", "a").unwrap()), ["kiln-a-api-1"]);
    let gone = names(c.synced("ns"));
    assert_eq!(gone, ["kiln-a-api-1", "kiln-b-api-1"]);
    assert!(!c.lock().has_pods("a"));
    assert_eq!(names(c.build_pods("ns", "b").unwrap()), ["kiln-b-api-2"]);
    assert_eq!(names(c.build_pods("ns", "c").unwrap()), ["kiln-c-api-1"]);
}

#[test]
fn only_the_last_of_several_relist_starts_counts() {
    // kube-runtime sends `Init` again when the list fails halfway.
    let c = listed("ns", &[pod("ns", "a", 1), pod("ns", "b", 1)]);
    c.resync("ns");
    c.apply(&pod("ns", "a", 1), false);
    c.resync("ns");
    c.apply(&pod("ns", "b", 1), false);
    assert_eq!(names(c.synced("ns")), ["kiln-a-api-1"]);
}

#[test]
fn a_relist_touches_only_its_own_namespace() {
    let c = listed("ns", &[pod("ns", "a", 1)]);
    c.resync("other");
    c.apply(&pod("other", "b", 1), false);
    c.synced("other");
    c.resync("ns");
    assert_eq!(names(c.synced("ns")), ["kiln-a-api-1"]);
    assert!(c.lock().has_pods("b"));
}

#[test]
fn a_later_relist_keeps_the_namespace_synced() {
    let c = listed("ns", &[pod("ns", "a", 1)]);
    c.resync("ns");
    assert_eq!(names(c.build_pods("ns", "a").unwrap()), ["kiln-a-api-1"]);
}

#[tokio::test]
async fn waiting_for_a_sync_ends_with_the_sync_or_the_stop() {
    let c = std::sync::Arc::new(PodCache::default());
    let stop = CancellationToken::new();
    let both = ["a".to_owned(), "b".to_owned()];
    let waiter = tokio::spawn({
        let (c, stop, both) = (c.clone(), stop.clone(), both.clone());
        async move { c.wait_synced(&both, &stop).await }
    });
    c.synced("a");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "b is not synced yet");
    c.synced("b");
    assert!(waiter.await.unwrap());
    assert!(c.wait_synced(&both, &stop).await, "already synced");
    stop.cancel();
    assert!(!c.wait_synced(&["c".to_owned()], &stop).await);
}

#[test]
fn a_task_started_from_a_read_gets_what_changed_since() {
    let one = pod("ns", "b", 1);
    let two = pod("ns", "b", 2);
    let same = std::slice::from_ref(&one);
    assert!(missed(same, same).is_empty());
    let mut running = one.clone();
    running.phase = Some(crate::classify::PodPhase::Running);
    let inputs = missed(&[one.clone(), two.clone()], &[running.clone()]);
    let [
        Input::Deleted(gone),
        Input::Observed {
            pod: seen,
            log_tail: None,
        },
    ] = &inputs[..]
    else {
        panic!("{inputs:?}");
    };
    assert_eq!(**gone, two);
    assert_eq!(**seen, running);
    let inputs = missed(&[], std::slice::from_ref(&one));
    assert!(matches!(&inputs[..], [Input::Observed { pod, .. }] if **pod == one));
}

/// The status view has no relist of its own: the deletions the cache finds
/// at the end of a relist reach it as deletions (as `routing.rs` routes
/// them), and a build whose pods all went ends there too.
#[test]
fn the_status_view_drops_pods_a_relist_no_longer_lists() {
    let cache = PodCache::default();
    let view = crate::cluster::ClusterView::new();
    let (gone, kept) = (pod("ns", "gone", 1), pod("ns", "kept", 1));
    cache.resync("ns");
    for p in [&gone, &kept] {
        cache.apply(p, false);
        view.apply(p, false);
    }
    assert!(cache.synced("ns").is_empty());
    cache.resync("ns");
    cache.apply(&kept, false);
    view.apply(&kept, false);
    for p in cache.synced("ns") {
        view.apply(&p, true);
    }
    let s = view.snapshot(10);
    assert_eq!(s.in_flight.len(), 1);
    assert_eq!(s.in_flight[0].id, "kept");
    assert_eq!(s.recent[0].id, "gone");
}
