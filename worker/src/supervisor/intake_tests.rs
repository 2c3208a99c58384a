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

/// A request of 32 images whose templates each loop far past the fuel
/// budget, padded to ~392 KB as in issue 18 item 5.
pub(crate) fn heavy_request(id: &str) -> Vec<u8> {
    let pad = "x".repeat(12 * 1024 - 320);
    let template = format!(
        "{{# {pad} #}}{{% for i in range(100000) %}}{{% for j in range(100) %}}{{% endfor %}}{{% endfor %}}FROM alpine\n"
    );
    let images: Vec<serde_json::Value> = (0..32)
        .map(|i| {
            let mut img = kiln_core::fixtures::image(&format!("img{i}"));
            img["dockerfileInline"] = serde_json::json!(template);
            img
        })
        .collect();
    kiln_core::fixtures::request(id, &images)
}

/// Issue 18 item 5: rendering runs off the async runtime. On a
/// single-threaded runtime a task that only yields counts how often it ran
/// while a heavy request was planned: rendered on the runtime's own thread
/// (the old code), it could not run at all until the rendering ended.
#[tokio::test(flavor = "current_thread")]
async fn rendering_leaves_the_runtime_free() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ran = Arc::new(AtomicU64::new(0));
    let spinner = {
        let ran = ran.clone();
        tokio::spawn(async move {
            loop {
                ran.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    // Let the spinner start.
    tokio::task::yield_now().await;
    let body = heavy_request("b-heavy");
    let size = body.len();
    let slots = tokio::sync::Semaphore::new(1);
    let policy = Arc::new(kiln_core::fixtures::policy());
    let before = ran.load(Ordering::Relaxed);
    let (back, planned) = plan_blocking(&slots, policy, body, Some("shop".to_owned()), None)
        .await
        .unwrap();
    let during = ran.load(Ordering::Relaxed) - before;
    spinner.abort();
    assert_eq!(back.len(), size, "the body comes back whole");
    let r = planned.expect_err("out of fuel");
    assert_eq!(r.reason, Reason::ConfigError);
    assert!(r.message().contains("too much work"), "{}", r.message());
    assert!(
        during > 100,
        "the runtime ran other tasks only {during} times while the request was rendered"
    );
}

/// CPU time of this thread so far (Linux: `/proc/thread-self/schedstat`,
/// nanoseconds on CPU), for the measurement below.
fn thread_cpu() -> std::time::Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(ns)
}

/// Issue 18 item 5, measured (not asserted: timings vary): the ~392 KB
/// request of 32 heavy templates, planned with one fuel budget per request
/// (now) against one per image (the old `render_all`, emulated with
/// `render_dockerfile`, which has a whole budget, per image). Run with
/// `cargo test -p kiln-worker --lib fuel_cpu_time -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; prints CPU times"]
fn fuel_cpu_time_of_a_heavy_request() {
    let body = heavy_request("b-heavy");
    let start = thread_cpu();
    let planned = plan_request(
        &body,
        Some("shop"),
        None,
        &kiln_core::fixtures::policy(),
        jiff::Timestamp::now(),
    );
    let shared = thread_cpu().saturating_sub(start);
    assert!(planned.is_err());
    let req = kiln_protocol::parse_build_request(&body).unwrap();
    let start = thread_cpu();
    for img in &req.images {
        let template = img.dockerfile_inline.as_deref().unwrap();
        let rendered = kiln_core::render::render_dockerfile(template, &img.template_args);
        assert!(rendered.is_err());
    }
    let per_image = thread_cpu().saturating_sub(start);
    println!(
        "request of {} bytes, 32 templates: one budget per request {shared:?} CPU; one per image (old) {per_image:?} CPU",
        body.len()
    );
}
