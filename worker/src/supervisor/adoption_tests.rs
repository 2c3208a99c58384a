//! Every branch of the adoption decision, without a network.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;
use crate::policy::Policy;

fn plan(id: &str) -> BuildPlan {
    let body = serde_json::json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "images": [{
            "name": "api",
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
            "destinations": ["registry.example.com/shop/api:1.0.0"]
        }]
    });
    let req = kiln_protocol::parse_build_request(&serde_json::to_vec(&body).unwrap()).unwrap();
    let admission = Policy::single_tenant("builds").admit(None, &req).unwrap();
    BuildPlan::new(
        &req,
        &admission,
        vec![None],
        jiff::Timestamp::UNIX_EPOCH,
        None,
    )
}

fn pod(attempt: u32, plan: Option<&str>) -> PodView {
    PodView {
        namespace: "builds".to_owned(),
        name: format!("kiln-b-api-{attempt}"),
        uid: format!("uid-{attempt}"),
        build_id: "b".to_owned(),
        image: "api".to_owned(),
        attempt,
        plan: plan.map(Into::into),
        ..PodView::default()
    }
}

fn record(state: RecordState) -> BuildRecord {
    BuildRecord {
        state,
        phase: None,
        tenant: "default".to_owned(),
        fingerprint: String::new(),
        namespace: "builds".to_owned(),
        worker: "w1".to_owned(),
        images: BTreeMap::new(),
        updated_at: jiff::Timestamp::UNIX_EPOCH,
        history: crate::lease::History::default(),
    }
}

#[test]
fn no_pods_means_nothing_to_adopt() {
    assert!(matches!(decide(&[], None), Adoption::Forget));
    let finished = record(RecordState::Finished);
    assert!(matches!(decide(&[], Some(&finished)), Adoption::Forget));
}

#[test]
fn pods_of_a_finished_build_are_only_cleaned_up() {
    let annotation = plan("b").to_annotation();
    let pods = [pod(1, Some(&annotation))];
    let finished = record(RecordState::Finished);
    assert!(matches!(decide(&pods, Some(&finished)), Adoption::CleanUp));
}

#[test]
fn pods_without_a_readable_plan_cannot_be_adopted() {
    let pods = [pod(1, None), pod(2, Some("{not a plan"))];
    assert!(matches!(decide(&pods, None), Adoption::Unreadable));
}

#[test]
fn the_first_readable_plan_resumes_the_build() {
    let annotation = plan("b").to_annotation();
    let pods = [pod(1, Some("{not a plan")), pod(2, Some(&annotation))];
    let accepted = record(RecordState::Accepted);
    for rec in [None, Some(&accepted)] {
        let Adoption::Resume(p) = decide(&pods, rec) else {
            panic!("not resumed with record {rec:?}");
        };
        assert_eq!(p.id, "b");
        assert_eq!(p.namespace, "builds");
    }
}
