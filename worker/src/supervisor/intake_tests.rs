//! Every branch of the claim decision, without a network (the plan's are
//! `kiln_core::intake`'s).
#![allow(clippy::unwrap_used)]

use kiln_core::fixtures::shop_plan;
use kiln_core::owner::{Learnt, Owner};
use kiln_protocol::Reason;

use super::*;

/// The owner a record in `state` names.
fn holder(state: RecordState, tenant: &str, fingerprint: &str) -> Owner {
    Owner {
        tenant: tenant.to_owned(),
        fingerprint: fingerprint.to_owned(),
        learnt: Learnt::Record(state),
    }
}

#[test]
fn the_lease_decides_between_start_duplicate_cancel_and_wait() {
    let plan = shop_plan();
    let token = LeaseToken::mint("w1");
    let acquired = |cancel: Option<&str>| Admit::Acquired {
        token: token.clone(),
        cancel: cancel.map(str::to_owned),
        record: None,
    };
    let claim = |admit: Admit, driven| decide_claim(&admit, &plan, driven);
    assert_eq!(
        claim(acquired(None), Driven::No),
        Some(Claimed::Start(token.clone()))
    );
    assert_eq!(
        claim(acquired(Some("superseded")), Driven::No),
        Some(Claimed::Cancelled("superseded".to_owned(), token.clone()))
    );
    assert_eq!(
        claim(acquired(None), Driven::Accepted),
        Some(Claimed::Duplicate)
    );
    assert_eq!(
        claim(acquired(Some("x")), Driven::Accepted),
        Some(Claimed::Duplicate)
    );
    // Driven here but not accepted yet: wait for its record.
    assert_eq!(claim(acquired(None), Driven::Accepting), None);
    let same = holder(RecordState::Accepted, "shop", &plan.fingerprint);
    assert_eq!(
        claim(Admit::Duplicate(same.clone()), Driven::No),
        Some(Claimed::Duplicate)
    );
    let held = Admit::HeldBy {
        holder: "w2".to_owned(),
        record: Some(holder(RecordState::Claimed, "shop", &plan.fingerprint)),
    };
    assert_eq!(claim(held, Driven::No), None);
    // Held by this worker's own build, accepted meanwhile: a duplicate.
    let held_here = Admit::HeldBy {
        holder: "w1".to_owned(),
        record: None,
    };
    assert_eq!(
        claim(held_here.clone(), Driven::Accepted),
        Some(Claimed::Duplicate)
    );
    assert_eq!(claim(held_here, Driven::Accepting), None);
    // A claimed record of the same request (its worker died before
    // acceptance): ours to start.
    let reclaimed = Admit::Acquired {
        token: token.clone(),
        cancel: None,
        record: Some(holder(RecordState::Claimed, "shop", &plan.fingerprint)),
    };
    assert_eq!(claim(reclaimed, Driven::No), Some(Claimed::Start(token)));
}

#[test]
fn another_tenants_id_is_a_conflict_in_every_state() {
    let plan = shop_plan();
    let theirs = holder(RecordState::Accepted, "other", &plan.fingerprint);
    let acquired = Admit::Acquired {
        token: LeaseToken::mint("w1"),
        cancel: None,
        record: Some(theirs.clone()),
    };
    let admits = [
        (Admit::Duplicate(theirs.clone()), Driven::No),
        (
            Admit::HeldBy {
                holder: "w2".to_owned(),
                record: Some(theirs.clone()),
            },
            Driven::No,
        ),
        (acquired.clone(), Driven::No),
        // Driven here (another tenant's build this worker runs): still a
        // conflict, never this request's duplicate.
        (acquired, Driven::Accepted),
    ];
    for (admit, driven) in admits {
        let Some(Claimed::Conflict(rejection)) = decide_claim(&admit, &plan, driven) else {
            panic!("no conflict for {admit:?}");
        };
        assert_eq!(rejection.id.as_deref(), Some("b"));
        assert_eq!(rejection.reason, Reason::IdConflict);
        assert!(
            rejection.message().contains("another tenant"),
            "{}",
            rejection.message()
        );
    }
}

#[test]
fn the_same_tenant_with_a_different_request_is_a_conflict() {
    let plan = shop_plan();
    let other = Admit::Duplicate(holder(RecordState::Finished, "shop", "0123"));
    let Some(Claimed::Conflict(rejection)) = decide_claim(&other, &plan, Driven::No) else {
        panic!("no conflict");
    };
    assert_eq!(rejection.reason, Reason::IdConflict);
    assert!(
        rejection.message().contains("different request"),
        "{}",
        rejection.message()
    );
    // A record from before fingerprints: the same tenant's duplicate.
    let old = Admit::Duplicate(holder(RecordState::Accepted, "shop", ""));
    assert_eq!(
        decide_claim(&old, &plan, Driven::No),
        Some(Claimed::Duplicate)
    );
}
