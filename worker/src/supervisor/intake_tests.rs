//! Every branch of the intake decisions, without a network.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

/// Tenant `shop` may push under `registry.example.com/shop/` only.
pub(in crate::supervisor) fn policy() -> Policy {
    Policy::from_toml_str(
        r#"
[tenants.shop]
namespace = "builds"
allowedDestinations = ["registry.example.com/shop/"]
"#,
    )
    .unwrap()
}

fn image(name: &str) -> Value {
    json!({
        "name": name,
        "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
        "destinations": [format!("registry.example.com/shop/{name}:1.0.0")]
    })
}

fn request(id: &str, images: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "images": images,
    }))
    .unwrap()
}

fn decide_shop(body: &[u8]) -> Decision {
    decide(body, Some("shop"), Some("00-trace-01"), &policy(), now())
}

fn rejection(d: Decision) -> Rejection {
    match d {
        Decision::Reject(r) => r,
        Decision::Accept(plan) => panic!("accepted: {}", plan.id),
    }
}

#[test]
fn a_valid_request_becomes_a_plan_with_its_tenant_and_trace() {
    let Decision::Accept(plan) = decide_shop(&request("b-1", &[image("api")])) else {
        panic!("rejected");
    };
    assert_eq!(plan.id, "b-1");
    assert_eq!(plan.tenant, "shop");
    assert_eq!(plan.namespace, "builds");
    assert_eq!(plan.accepted_at, now());
    assert_eq!(plan.traceparent.as_deref(), Some("00-trace-01"));
}

#[test]
fn unreadable_json_is_rejected_without_an_id() {
    let r = rejection(decide_shop(b"{not json"));
    assert_eq!(r.id, None);
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(!r.message.is_empty());
}

#[test]
fn an_invalid_request_with_a_readable_id_is_rejected_by_id() {
    let r = rejection(decide_shop(&request("b-2", &[])));
    assert_eq!(r.id.as_deref(), Some("b-2"));
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(r.message.contains("images"), "{}", r.message);
}

#[test]
fn a_destination_outside_the_tenant_is_a_policy_violation() {
    let mut img = image("api");
    img["destinations"] = json!(["registry.example.com/other/api:1"]);
    let r = rejection(decide_shop(&request("b-3", &[img])));
    assert_eq!(r.id.as_deref(), Some("b-3"));
    assert_eq!(r.reason, Reason::PolicyViolation);
    assert!(r.message.contains("destinations"), "{}", r.message);
}

#[test]
fn a_template_that_does_not_render_is_a_config_error_naming_the_image() {
    let mut img = image("api");
    img["dockerfileInline"] = json!("FROM {{ base }}\n");
    let r = rejection(decide_shop(&request("b-4", &[image("web"), img])));
    assert_eq!(r.id.as_deref(), Some("b-4"));
    assert_eq!(r.reason, Reason::ConfigError);
    assert!(
        r.message.starts_with("images[1].dockerfileInline: "),
        "{}",
        r.message
    );
}

#[test]
fn a_plan_too_large_for_an_annotation_is_rejected() {
    // Four inline Dockerfiles of 60 KiB each: every one is allowed, the
    // plan carrying them all is not.
    let line = "RUN echo 0123456789abcdef0123456789abcdef0123456789abcdef\n";
    let dockerfile = format!("FROM scratch\n{}", line.repeat(60 * 1024 / line.len()));
    let images = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            let mut img = image(n);
            img["dockerfileInline"] = json!(dockerfile);
            img
        })
        .collect::<Vec<_>>();
    let r = rejection(decide_shop(&request("b-5", &images)));
    assert_eq!(r.id.as_deref(), Some("b-5"));
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(r.message.contains("200 KiB"), "{}", r.message);
}

/// The plan of a valid `shop` request with id `b`.
fn shop_plan() -> BuildPlan {
    let Decision::Accept(plan) = decide_shop(&request("b", &[image("api")])) else {
        panic!("rejected");
    };
    *plan
}

fn holder(state: &str, tenant: &str, fingerprint: &str) -> Holder {
    Holder {
        state: state.to_owned(),
        tenant: tenant.to_owned(),
        fingerprint: fingerprint.to_owned(),
    }
}

#[test]
fn the_plan_carries_the_fingerprint_of_its_request() {
    let plan = shop_plan();
    let req = kiln_protocol::parse_build_request(&request("b", &[image("api")])).unwrap();
    assert_eq!(plan.fingerprint, kiln_protocol::request_fingerprint(&req));
    assert!(!plan.fingerprint.is_empty());
}

#[test]
fn the_lease_decides_between_start_duplicate_cancel_and_wait() {
    let plan = shop_plan();
    let acquired = |cancel: Option<&str>| Admit::Acquired {
        cancel: cancel.map(str::to_owned),
        record: None,
    };
    let claim = |admit: Admit, driven| decide_claim(&admit, &plan, driven);
    assert_eq!(claim(acquired(None), Driven::No), Some(Claimed::Start));
    assert_eq!(
        claim(acquired(Some("superseded")), Driven::No),
        Some(Claimed::Cancelled("superseded".to_owned()))
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
    let same = holder("accepted", "shop", &plan.fingerprint);
    assert_eq!(
        claim(Admit::Duplicate(same.clone()), Driven::No),
        Some(Claimed::Duplicate)
    );
    let held = Admit::HeldBy {
        holder: "w2".to_owned(),
        record: Some(holder("claimed", "shop", &plan.fingerprint)),
    };
    assert_eq!(claim(held, Driven::No), None);
    // A claimed record of the same request (its worker died before
    // acceptance): ours to start.
    let reclaimed = Admit::Acquired {
        cancel: None,
        record: Some(holder("claimed", "shop", &plan.fingerprint)),
    };
    assert_eq!(claim(reclaimed, Driven::No), Some(Claimed::Start));
}

#[test]
fn another_tenants_id_is_a_conflict_in_every_state() {
    let plan = shop_plan();
    let theirs = holder("accepted", "other", &plan.fingerprint);
    let admits = [
        (Admit::Duplicate(theirs.clone()), false),
        (
            Admit::HeldBy {
                holder: "w2".to_owned(),
                record: Some(theirs.clone()),
            },
            false,
        ),
        (
            Admit::Acquired {
                cancel: None,
                record: Some(theirs.clone()),
            },
            true,
        ),
    ];
    for (admit, release) in admits {
        let Some(Claimed::Conflict {
            rejection,
            release: r,
        }) = decide_claim(&admit, &plan, Driven::No)
        else {
            panic!("no conflict for {admit:?}");
        };
        assert_eq!(r, release, "{admit:?}");
        assert_eq!(rejection.id.as_deref(), Some("b"));
        assert_eq!(rejection.reason, Reason::IdConflict);
        assert!(
            rejection.message.contains("another tenant"),
            "{}",
            rejection.message
        );
    }
    // Driven here (another tenant's build this worker runs): the lease is
    // the running build's, never released.
    let admit = Admit::Acquired {
        cancel: None,
        record: Some(theirs),
    };
    assert!(matches!(
        decide_claim(&admit, &plan, Driven::Accepted),
        Some(Claimed::Conflict { release: false, .. })
    ));
}

#[test]
fn the_same_tenant_with_a_different_request_is_a_conflict() {
    let plan = shop_plan();
    let other = Admit::Duplicate(holder("finished", "shop", "0123"));
    let Some(Claimed::Conflict { rejection, .. }) = decide_claim(&other, &plan, Driven::No) else {
        panic!("no conflict");
    };
    assert_eq!(rejection.reason, Reason::IdConflict);
    assert!(
        rejection.message.contains("different request"),
        "{}",
        rejection.message
    );
    // A record from before fingerprints: the same tenant's duplicate.
    let old = Admit::Duplicate(holder("accepted", "shop", ""));
    assert_eq!(
        decide_claim(&old, &plan, Driven::No),
        Some(Claimed::Duplicate)
    );
}

#[test]
fn a_sender_acts_as_its_tenant_or_default() {
    assert_eq!(tenant_of(Some("shop"), &policy()), "shop");
    assert_eq!(tenant_of(Some("stranger"), &policy()), DEFAULT_TENANT);
    assert_eq!(tenant_of(None, &policy()), DEFAULT_TENANT);
}
