//! Hand-made histories: for every anomaly, one that has it and one that
//! comes as close as the promises allow without having it.

use super::*;
use crate::chaos::history::{EndState, LeftPod, MalformedOp, PodOp, RequestOp, body_hash};

const ALICE: &str = "alice";
const BOB: &str = "bob";

#[derive(Default)]
struct H(History);

impl H {
    fn req(mut self, at: Millis, id: &str, tenant: &str, body: &str, valid: bool) -> Self {
        self.0.requests.push(RequestOp {
            at,
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            body_hash: body_hash(body.as_bytes()),
            valid,
        });
        self
    }

    fn cancel(mut self, at: Millis, id: &str, tenant: &str) -> Self {
        self.0.cancels.push(super::super::history::CancelOp {
            at,
            id: id.to_owned(),
            tenant: tenant.to_owned(),
        });
        self
    }

    /// An event with the id Kiln would give it; `image` is (name, attempt).
    fn ev(
        mut self,
        at: Millis,
        key: &str,
        id: &str,
        tenant: &str,
        image: Option<(&str, u32)>,
    ) -> Self {
        let (level, phase) = key.split_once('.').expect("level.phase");
        let level = match level {
            "build" => EventLevel::Build,
            "image" => EventLevel::Image,
            _ => EventLevel::Request,
        };
        let event_id = match (level, image) {
            (EventLevel::Request, _) => format!("{id}/request/{tenant}-{at}"),
            (_, Some((i, n))) => format!("{id}/{i}/{n}/{phase}"),
            _ => format!("{id}/{phase}"),
        };
        self.0.events.push(EventOp {
            at,
            event_id,
            routing_key: key.to_owned(),
            level,
            phase: phase.to_owned(),
            build_id: id.to_owned(),
            tenant: Some(tenant.to_owned()),
            image: image.map(|(i, _)| i.to_owned()),
            attempt: image.map(|(_, n)| n),
            reason: None,
            worker: "w1".to_owned(),
            digests: Vec::new(),
        });
        self
    }

    fn pod(mut self, at: Millis, id: &str, image: &str, attempt: u32, fails: bool) -> Self {
        self.0.pods.push(PodOp {
            at,
            namespace: "ns".to_owned(),
            name: format!("kiln-{id}-{image}-{attempt}"),
            build_id: id.to_owned(),
            image: image.to_owned(),
            attempt,
            fails,
        });
        self
    }

    /// The whole life of a one-image build that succeeds.
    fn good(self, at: Millis, id: &str, tenant: &str) -> Self {
        self.req(at, id, tenant, &format!("body of {id}"), true)
            .ev(at + 10, "build.accepted", id, tenant, None)
            .pod(at + 5, id, "api", 1, false)
            .ev(at + 11, "image.scheduled", id, tenant, Some(("api", 1)))
            .ev(at + 20, "image.running", id, tenant, Some(("api", 1)))
            .ev(at + 30, "image.succeeded", id, tenant, Some(("api", 1)))
            .ev(at + 31, "build.succeeded", id, tenant, None)
    }

    fn check(self) -> Verdict {
        check(&self.0)
    }
}

/// Only anomalies of `kind`, at least one.
fn only(v: &Verdict, kind: AnomalyKind) {
    assert!(v.count(kind) > 0, "expected {kind}:\n{}", v.table(5));
    assert!(
        v.anomalies.iter().all(|a| a.kind == kind),
        "expected only {kind}:\n{}",
        v.table(5)
    );
}

fn clean(v: &Verdict) {
    assert!(v.ok(), "expected no anomaly:\n{}", v.table(5));
}

#[test]
fn a_clean_run_passes() {
    let v = H::default().good(0, "b1", ALICE).good(5, "b2", BOB).check();
    clean(&v);
    assert_eq!((v.ids, v.requests, v.events, v.pods), (2, 2, 10, 2));
}

#[test]
fn lost_build_accepted_without_terminal() {
    let v = H::default()
        .req(0, "b1", ALICE, "x", true)
        .ev(10, "build.accepted", "b1", ALICE, None)
        .ev(11, "image.scheduled", "b1", ALICE, Some(("api", 1)))
        .pod(5, "b1", "api", 1, false)
        .check();
    only(&v, AnomalyKind::Lost);
    assert_eq!(v.count(AnomalyKind::Lost), 1);
}

#[test]
fn conflicting_terminals_two_distinct_ids() {
    // Issue 9, case 1: an invalid body naming a live build.
    let v = H::default()
        .good(0, "b1", ALICE)
        .req(15, "b1", BOB, "{\"id\":\"b1\"}", false)
        .ev(16, "build.rejected", "b1", BOB, None)
        .check();
    assert_eq!(
        v.count(AnomalyKind::ConflictingTerminals),
        1,
        "{}",
        v.table(5)
    );
    // ... and the rejection went to the wrong tenant and to a refused request.
    assert_eq!(v.count(AnomalyKind::RefusedButBuilt), 1);
    assert_eq!(v.count(AnomalyKind::CrossTenant), 1);
}

#[test]
fn the_same_terminal_delivered_twice_is_fine() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .ev(40, "build.succeeded", "b1", ALICE, None)
        .check();
    clean(&v);
}

#[test]
fn a_rejection_while_the_id_was_free_is_not_a_conflict() {
    // The invalid body came first: build.rejected ended it and the id
    // stayed free for the valid request.
    let v = H::default()
        .req(0, "b1", ALICE, "{\"id\":\"b1\"}", false)
        .ev(1, "build.rejected", "b1", ALICE, None)
        .good(5, "b1", ALICE)
        .check();
    clean(&v);
}

#[test]
fn refused_request_answered_with_build_rejected() {
    // The owner's own invalid body while its build runs.
    let v = H::default()
        .good(0, "b1", ALICE)
        .req(12, "b1", ALICE, "{\"id\":\"b1\"}", false)
        .ev(13, "build.rejected", "b1", ALICE, None)
        .check();
    assert_eq!(v.count(AnomalyKind::RefusedButBuilt), 1, "{}", v.table(5));
    assert_eq!(v.count(AnomalyKind::CrossTenant), 0);
    // The wrong answer is still an answer: not also unanswered.
    assert_eq!(v.count(AnomalyKind::Unanswered), 0);
}

#[test]
fn refused_request_answered_with_request_rejected_is_fine() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .req(12, "b1", ALICE, "{\"id\":\"b1\"}", false)
        .ev(13, "request.rejected", "b1", ALICE, None)
        .req(14, "b1", BOB, "bob's body", true)
        .ev(15, "request.rejected", "b1", BOB, None)
        .check();
    clean(&v);
}

#[test]
fn unanswered_squatted_id() {
    // Issue 9, case 2: Bob holds X, Alice's request is acked as a duplicate
    // and she hears nothing of her own.
    let v = H::default()
        .good(0, "x", BOB)
        .req(5, "x", ALICE, "alice's body", true)
        .check();
    only(&v, AnomalyKind::Unanswered);
    assert!(
        v.of(AnomalyKind::Unanswered)[0]
            .detail
            .contains("tenant alice")
    );
}

#[test]
fn unanswered_different_body_from_the_owner() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .req(12, "b1", ALICE, "another body", true)
        .check();
    only(&v, AnomalyKind::Unanswered);
}

#[test]
fn the_owner_resending_the_same_body_needs_no_answer() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .req(12, "b1", ALICE, "body of b1", true)
        .check();
    clean(&v);
}

#[test]
fn cross_tenant_event_in_anothers_build() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .ev(25, "image.running", "b1", BOB, Some(("api", 1)))
        .check();
    only(&v, AnomalyKind::CrossTenant);
}

#[test]
fn cross_tenant_accepted_for_a_tenant_without_a_valid_request() {
    let v = H::default()
        .req(0, "b1", ALICE, "x", true)
        .ev(10, "build.accepted", "b1", BOB, None)
        .ev(20, "build.succeeded", "b1", BOB, None)
        .check();
    assert!(v.count(AnomalyKind::CrossTenant) >= 1, "{}", v.table(5));
}

#[test]
fn cross_tenant_rejection_sent_to_a_stranger() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .ev(15, "request.rejected", "b1", BOB, None)
        .check();
    only(&v, AnomalyKind::CrossTenant);
}

#[test]
fn cross_tenant_cancel_stops_the_build() {
    // Issue 9, case 3: Bob's cancel before Alice's request.
    let v = H::default()
        .cancel(0, "y", BOB)
        .req(1, "y", ALICE, "y", true)
        .ev(10, "build.accepted", "y", ALICE, None)
        .ev(12, "build.cancelled", "y", ALICE, None)
        .check();
    only(&v, AnomalyKind::CrossTenant);
    assert!(
        v.of(AnomalyKind::CrossTenant)[0]
            .detail
            .contains("never cancelled")
    );
}

#[test]
fn the_owner_may_cancel_even_alongside_a_forged_cancel() {
    let v = H::default()
        .cancel(0, "y", BOB)
        .req(1, "y", ALICE, "y", true)
        .ev(10, "build.accepted", "y", ALICE, None)
        .cancel(11, "y", ALICE)
        .ev(12, "build.cancelled", "y", ALICE, None)
        .check();
    clean(&v);
}

#[test]
fn a_request_cancelled_before_it_was_accepted_is_answered() {
    // The owner's cancel came first: the request ends build.cancelled
    // without ever being accepted.
    let v = H::default()
        .req(1, "y", ALICE, "y", true)
        .cancel(2, "y", ALICE)
        .ev(10, "build.cancelled", "y", ALICE, None)
        .check();
    clean(&v);
    let v = H::default()
        .req(1, "y", ALICE, "y", true)
        .cancel(2, "y", BOB)
        .ev(10, "build.cancelled", "y", ALICE, None)
        .check();
    only(&v, AnomalyKind::CrossTenant);
}

#[test]
fn ended_unasked_cancelled_without_any_cancel() {
    let v = H::default()
        .req(1, "y", ALICE, "y", true)
        .ev(10, "build.accepted", "y", ALICE, None)
        .ev(12, "build.cancelled", "y", ALICE, None)
        .check();
    only(&v, AnomalyKind::EndedUnasked);
}

#[test]
fn rebuild_attempt_two_without_a_failed_pod() {
    // Issue 9, case 4 had the pod vanished: attempt 2 from a stale worker.
    let v = H::default()
        .good(0, "b1", ALICE)
        .pod(50, "b1", "api", 2, false)
        .ev(51, "image.scheduled", "b1", ALICE, Some(("api", 2)))
        .check();
    only(&v, AnomalyKind::Rebuild);
    assert_eq!(v.count(AnomalyKind::Rebuild), 2, "the pod and the event");
}

#[test]
fn rebuild_the_same_pod_created_twice() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .pod(50, "b1", "api", 1, false)
        .check();
    only(&v, AnomalyKind::Rebuild);
}

#[test]
fn rebuild_retrying_without_a_failed_pod() {
    let v = H::default()
        .good(0, "b1", ALICE)
        .ev(25, "image.retrying", "b1", ALICE, Some(("api", 1)))
        .check();
    only(&v, AnomalyKind::Rebuild);
}

#[test]
fn an_earned_retry_is_no_rebuild() {
    let v = H::default()
        .req(0, "b1", ALICE, "x", true)
        .ev(10, "build.accepted", "b1", ALICE, None)
        .pod(5, "b1", "api", 1, true)
        .ev(11, "image.scheduled", "b1", ALICE, Some(("api", 1)))
        .ev(20, "image.retrying", "b1", ALICE, Some(("api", 1)))
        .pod(30, "b1", "api", 2, false)
        .ev(31, "image.scheduled", "b1", ALICE, Some(("api", 2)))
        .ev(40, "image.succeeded", "b1", ALICE, Some(("api", 2)))
        .ev(41, "build.succeeded", "b1", ALICE, None)
        .check();
    clean(&v);
}

#[test]
fn leftover_pods_and_leases() {
    let mut h = H::default().good(0, "b1", ALICE);
    h.0.end = EndState {
        pods: vec![LeftPod {
            namespace: "ns".to_owned(),
            name: "kiln-b1-api-1".to_owned(),
            build_id: "b1".to_owned(),
        }],
        leases: vec!["kiln-chaos-x:lease:b1".to_owned()],
        other_keys: 3,
    };
    let v = h.check();
    only(&v, AnomalyKind::Leftover);
    assert_eq!(v.count(AnomalyKind::Leftover), 2);
    assert!(v.anomalies.iter().all(|a| a.build_id == "b1"));
}

#[test]
fn records_left_behind_are_no_leftover() {
    let mut h = H::default().good(0, "b1", ALICE);
    h.0.end.other_keys = 3;
    clean(&h.check());
}

#[test]
fn malformed_events_are_reported() {
    let mut h = H::default().good(0, "b1", ALICE);
    h.0.malformed.push(MalformedOp {
        at: 3,
        routing_key: "build.succeeded".to_owned(),
        error: "body is not JSON".to_owned(),
    });
    only(&h.check(), AnomalyKind::MalformedEvent);
}

#[test]
fn the_table_names_every_kind_the_seed_and_examples() {
    let mut h =
        H::default()
            .req(0, "b1", ALICE, "x", true)
            .ev(10, "build.accepted", "b1", ALICE, None);
    h.0.seed = 4242;
    let t = h.check().table(3);
    for kind in AnomalyKind::ALL {
        assert!(t.contains(kind.as_str()), "{kind} missing from\n{t}");
    }
    assert!(t.contains("b1: build.accepted (tenant alice)"), "{t}");
    assert!(t.contains("KILN_CHAOS_SEED=4242"), "{t}");
    let ok = H::default().good(0, "b1", ALICE).check().table(3);
    assert!(ok.contains("VERDICT: no anomaly"), "{ok}");
}
