//! Every branch of turning a request into a plan, without a network.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::fixtures::{image, now, policy, request, shop_plan};

fn plan_shop(body: &[u8]) -> Result<BuildPlan, Rejection> {
    plan_request(body, Some("shop"), Some("00-trace-01"), &policy(), now())
}

fn rejection(d: Result<BuildPlan, Rejection>) -> Rejection {
    match d {
        Err(r) => r,
        Ok(plan) => panic!("accepted: {}", plan.id),
    }
}

#[test]
fn a_valid_request_becomes_a_plan_with_its_tenant_and_trace() {
    let Ok(plan) = plan_shop(&request("b-1", &[image("api")])) else {
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
    let r = rejection(plan_shop(b"{not json"));
    assert_eq!(r.id, None);
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(!r.message().is_empty());
}

#[test]
fn an_invalid_request_with_a_readable_id_is_rejected_by_id() {
    let r = rejection(plan_shop(&request("b-2", &[])));
    assert_eq!(r.id.as_deref(), Some("b-2"));
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(r.message().contains("images"), "{}", r.message());
}

#[test]
fn a_destination_outside_the_tenant_is_a_policy_violation() {
    let mut img = image("api");
    img["destinations"] = json!(["registry.example.com/other/api:1"]);
    let r = rejection(plan_shop(&request("b-3", &[img])));
    assert_eq!(r.id.as_deref(), Some("b-3"));
    assert_eq!(r.reason, Reason::PolicyViolation);
    assert!(r.message().contains("destinations"), "{}", r.message());
}

#[test]
fn a_template_that_does_not_render_is_a_config_error_naming_the_image() {
    let mut img = image("api");
    img["dockerfileInline"] = json!("FROM {{ base }}\n");
    let r = rejection(plan_shop(&request("b-4", &[image("web"), img])));
    assert_eq!(r.id.as_deref(), Some("b-4"));
    assert_eq!(r.reason, Reason::ConfigError);
    assert!(
        r.message().starts_with("images[1].dockerfileInline: "),
        "{}",
        r.message()
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
    let r = rejection(plan_shop(&request("b-5", &images)));
    assert_eq!(r.id.as_deref(), Some("b-5"));
    assert_eq!(r.reason, Reason::InvalidRequest);
    assert!(r.message().contains("200 KiB"), "{}", r.message());
}

#[test]
fn the_plan_carries_the_fingerprint_of_its_request() {
    let plan = shop_plan();
    let req = kiln_protocol::parse_build_request(&request("b", &[image("api")])).unwrap();
    assert_eq!(plan.fingerprint, kiln_protocol::request_fingerprint(&req));
    assert!(!plan.fingerprint.is_empty());
}

/// Two images with `field` set to `values` (one each), refused by
/// [`plan_request`]: its reason and the path of every problem, and whether
/// the rejection's message is those problems joined.
fn refused_paths(field: &str, values: [Value; 2]) -> (Reason, Vec<String>, bool) {
    let images: Vec<Value> = ["api", "web"]
        .into_iter()
        .zip(values)
        .map(|(name, v)| {
            let mut img = image(name);
            img[field] = v;
            img
        })
        .collect();
    let body = request("b-9", &images);
    let refused = plan_request(&body, Some("shop"), None, &policy(), now()).unwrap_err();
    let joined = refused
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let paths = refused.problems.iter().map(|p| p.path.clone()).collect();
    (refused.reason, paths, refused.message() == joined)
}

#[test]
fn plan_request_keeps_every_problem_with_its_own_path() {
    // Every problem of the failing step, each at its own path (`kiln plan`
    // prints them one per line).
    let outside = |d: &str| json!([d]);
    let (reason, paths, joined) = refused_paths(
        "destinations",
        [
            outside("registry.example.com/other/api:1"),
            outside("docker.io/library/web:1"),
        ],
    );
    assert_eq!(reason, Reason::PolicyViolation);
    assert_eq!(
        paths,
        ["images[0].destinations[0]", "images[1].destinations[0]"]
    );
    assert!(joined);

    let (reason, paths, joined) = refused_paths(
        "dockerfileInline",
        [json!("FROM {{ base }}\n"), json!("FROM {% if %}\n")],
    );
    assert_eq!(reason, Reason::ConfigError);
    assert_eq!(
        paths,
        ["images[0].dockerfileInline", "images[1].dockerfileInline"]
    );
    assert!(joined);
}
