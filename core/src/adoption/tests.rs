//! Every branch of the adoption decision, without a network.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;
use crate::policy::Policy;

/// Two tenants: `shop` (git credentials, registry Secret, a destination
/// prefix, small caps) and `bank`, each in a namespace of its own.
fn policy() -> Policy {
    Policy::from_toml_str(
        r#"
[tenants.shop]
namespace = "shop-builds"
allowedDestinations = ["registry.example.com/shop"]
registrySecret = "shop-registry"
serviceAccountName = "shop-builder"
caps = { maxAttempts = 3, maxTimeoutSeconds = 3600, maxCpu = "2", maxMemory = "4Gi" }

[tenants.shop.gitCredentials]
secret = "shop-git"
hosts = ["github.com"]

[tenants.bank]
namespace = "bank-builds"
allowedDestinations = ["registry.example.com/bank"]
registrySecret = "bank-registry"
serviceAccountName = "bank-builder"

[tenants.bank.gitCredentials]
secret = "bank-git"
hosts = ["github.com"]
"#,
    )
    .unwrap()
}

/// The plan `policy()` gives `shop` for a one-image git build of id `b`.
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
    let admission = policy().admit(Some("shop"), &req).unwrap();
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
        namespace: "shop-builds".to_owned(),
        name: format!("kiln-b-api-{attempt}"),
        uid: format!("uid-{attempt}"),
        build_id: "b".to_owned(),
        image: "api".to_owned(),
        attempt,
        plan: plan.map(Into::into),
        tenant: Some("shop".to_owned()),
        ..PodView::default()
    }
}

fn record(state: RecordState) -> BuildRecord {
    BuildRecord {
        state,
        phase: None,
        tenant: "shop".to_owned(),
        fingerprint: String::new(),
        namespace: "shop-builds".to_owned(),
        worker: "w1".to_owned(),
        images: BTreeMap::new(),
        updated_at: jiff::Timestamp::UNIX_EPOCH,
        history: crate::record::History::default(),
    }
}

/// The decision for pods carrying `plan`, with no record.
fn decide_plan(plan: &BuildPlan, pod_edit: impl Fn(&mut PodView)) -> Adoption {
    let annotation = plan.to_annotation();
    let mut p = pod(1, Some(&annotation));
    pod_edit(&mut p);
    decide("b", &[p], None, &policy())
}

/// The reason of a refusal, or a panic naming what was decided instead.
fn refusal(adoption: Adoption) -> String {
    match adoption {
        Adoption::Untrusted(why) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn no_pods_means_nothing_to_adopt() {
    assert!(matches!(
        decide("b", &[], None, &policy()),
        Adoption::Forget
    ));
    let finished = record(RecordState::Finished);
    assert!(matches!(
        decide("b", &[], Some(&finished), &policy()),
        Adoption::Forget
    ));
}

#[test]
fn pods_of_a_finished_build_are_only_cleaned_up() {
    let annotation = plan("b").to_annotation();
    let pods = [pod(1, Some(&annotation))];
    let finished = record(RecordState::Finished);
    assert!(matches!(
        decide("b", &pods, Some(&finished), &policy()),
        Adoption::CleanUp
    ));
}

#[test]
fn pods_without_a_readable_plan_cannot_be_adopted() {
    let pods = [pod(1, None), pod(2, Some("{not a plan"))];
    assert!(matches!(
        decide("b", &pods, None, &policy()),
        Adoption::Unreadable
    ));
}

#[test]
fn the_first_readable_plan_resumes_the_build() {
    let annotation = plan("b").to_annotation();
    let pods = [pod(1, Some("{not a plan")), pod(2, Some(&annotation))];
    let accepted = record(RecordState::Accepted);
    for rec in [None, Some(&accepted)] {
        let Adoption::Resume(p) = decide("b", &pods, rec, &policy()) else {
            panic!("not resumed with record {rec:?}");
        };
        assert_eq!(p.id, "b");
        assert_eq!(p.namespace, "shop-builds");
    }
}

/// The forged pod of issue 9: Kiln's labels in shop's namespace, a plan
/// naming bank's Secrets and service account.
#[test]
fn a_plan_naming_another_tenants_secrets_is_refused() {
    let mut forged = plan("b");
    forged.registry_secret = Some("bank-registry".to_owned());
    forged.service_account = "bank-builder".to_owned();
    if let Some(git) = forged.git_secret.as_mut() {
        git.secret = "bank-git".to_owned();
    }
    let why = refusal(decide_plan(&forged, |_| {}));
    for field in ["registrySecret", "serviceAccount", "gitSecret.secret"] {
        assert!(why.contains(field), "{field} not named: {why}");
    }
    assert!(
        why.contains("bank-registry") && why.contains("shop-registry"),
        "{why}"
    );
}

#[test]
fn a_plan_of_a_tenant_without_policy_is_refused() {
    let mut p = plan("b");
    p.tenant = "ghost".to_owned();
    let why = refusal(decide_plan(&p, |pod| pod.tenant = Some("ghost".to_owned())));
    assert!(why.contains("\"ghost\" has no policy"), "{why}");
}

#[test]
fn pods_outside_the_tenants_namespace_are_refused() {
    // The plan and the pod agree, the policy does not.
    let mut p = plan("b");
    p.namespace = "bank-builds".to_owned();
    let why = refusal(decide_plan(&p, |pod| {
        pod.namespace = "bank-builds".to_owned();
    }));
    assert!(why.contains("namespace"), "{why}");
    // The plan is right, the pod is elsewhere.
    let why = refusal(decide_plan(&plan("b"), |pod| {
        pod.namespace = "bank-builds".to_owned();
    }));
    assert!(why.contains("is in namespace \"bank-builds\""), "{why}");
}

#[test]
fn a_pod_tenant_disagreeing_with_the_plan_is_refused() {
    for tenant in [Some("bank"), None] {
        let why = refusal(decide_plan(&plan("b"), |pod| {
            pod.tenant = tenant.map(str::to_owned);
        }));
        assert!(why.contains("the plan says \"shop\""), "{why}");
    }
}

#[test]
fn a_plan_of_another_build_id_is_refused() {
    let why = refusal(decide_plan(&plan("other"), |_| {}));
    assert!(why.contains("the plan is of build \"other\""), "{why}");
}

#[test]
fn destinations_outside_the_allowed_prefixes_are_refused() {
    let mut p = plan("b");
    p.images[0].destinations = vec!["registry.example.com/bank/api:1".to_owned()];
    let why = refusal(decide_plan(&p, |_| {}));
    assert!(why.contains("images[0].destinations[0]"), "{why}");
}

#[test]
fn resources_attempts_and_timeouts_over_the_caps_are_refused() {
    let mut p = plan("b");
    p.images[0].cpu = "8".to_owned();
    p.images[0].memory = "64Gi".to_owned();
    p.max_attempts = 9;
    p.deadline = p.accepted_at + jiff::SignedDuration::from_hours(10);
    let why = refusal(decide_plan(&p, |_| {}));
    for field in [
        "resources.cpu",
        "resources.memory",
        "maxAttempts",
        "timeoutSeconds",
    ] {
        assert!(why.contains(field), "{field} not named: {why}");
    }
}

#[test]
fn a_plan_that_is_no_valid_request_is_refused() {
    let mut p = plan("b");
    p.images[0].build_args = BTreeMap::from([("not an identifier".to_owned(), "x".to_owned())]);
    let why = refusal(decide_plan(&p, |_| {}));
    assert!(why.contains("plan: images[0].buildArgs"), "{why}");
    let mut p = plan("b");
    p.deadline = p.accepted_at + jiff::SignedDuration::from_millis(1500);
    let why = refusal(decide_plan(&p, |_| {}));
    assert!(why.contains("whole positive number of seconds"), "{why}");
}

#[test]
fn a_plan_of_an_older_worker_without_ephemeral_storage_resumes() {
    let mut p = plan("b");
    p.images[0].ephemeral_storage = None;
    assert!(matches!(decide_plan(&p, |_| {}), Adoption::Resume(_)));
}

#[test]
fn pods_come_from_the_cache_while_a_record_orders_things_else_from_the_server() {
    for state in [
        RecordState::Claimed,
        RecordState::Accepted,
        RecordState::Finished,
    ] {
        assert_eq!(PodSource::of(Some(&record(state))), PodSource::Cache);
    }
    assert_eq!(PodSource::of(None), PodSource::Server);
}

/// A two-image plan of `shop` (images `api` and `worker`).
fn two_image_plan(id: &str) -> BuildPlan {
    let image = |name: &str| {
        serde_json::json!({
            "name": name,
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
            "destinations": [format!("registry.example.com/shop/{name}:1.0.0")]
        })
    };
    let body = serde_json::json!({
        "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": id,
        "images": [image("api"), image("worker")]
    });
    let req = kiln_protocol::parse_build_request(&serde_json::to_vec(&body).unwrap()).unwrap();
    let admission = policy().admit(Some("shop"), &req).unwrap();
    BuildPlan::new(
        &req,
        &admission,
        vec![None, None],
        jiff::Timestamp::UNIX_EPOCH,
        None,
    )
}

/// Only the `worker` image's pod of [`two_image_plan`], in `phase`.
fn worker_pod_only(phase: PodPhase) -> Vec<PodView> {
    let annotation = two_image_plan("b").to_annotation();
    let mut p = pod(1, Some(&annotation));
    "worker".clone_into(&mut p.image);
    "kiln-b-worker-1".clone_into(&mut p.name);
    p.phase = Some(phase);
    vec![p]
}

/// Chaos (seed 42): the owner published `build.succeeded`, deleted the
/// `api` pod, and was fenced before deleting the `worker` pod. Resuming
/// from what is left created `api`'s pod again.
#[test]
fn an_image_without_pods_beside_ended_pods_is_an_interrupted_clean_up() {
    let pods = worker_pod_only(PodPhase::Succeeded);
    for rec in [None, Some(record(RecordState::Accepted))] {
        assert!(
            matches!(
                decide("b", &pods, rec.as_ref(), &policy()),
                Adoption::CleanUp
            ),
            "{rec:?}"
        );
    }
    let mut deleting = worker_pod_only(PodPhase::Running);
    deleting[0].deleting = true;
    assert!(matches!(
        decide("b", &deleting, None, &policy()),
        Adoption::CleanUp
    ));
}

#[test]
fn an_image_without_pods_beside_a_live_pod_or_while_creating_is_resumed() {
    let running = worker_pod_only(PodPhase::Running);
    assert!(matches!(
        decide("b", &running, None, &policy()),
        Adoption::Resume(_)
    ));
    // The record says the first pods were being created: `api`'s never
    // existed, and the request is still unacked.
    let ended = worker_pod_only(PodPhase::Succeeded);
    let claimed = record(RecordState::Claimed);
    assert!(matches!(
        decide("b", &ended, Some(&claimed), &policy()),
        Adoption::Resume(_)
    ));
}

/// Issue 18: another tenant's pods (its own plan, tenant label and
/// namespace, all consistent) under an id whose record names its owner do
/// not take the build over.
#[test]
fn pods_of_another_owner_than_the_records_are_refused() {
    let annotation = plan("b").to_annotation();
    let pods = [pod(1, Some(&annotation))];
    let mut bank = record(RecordState::Accepted);
    bank.tenant = "bank".to_owned();
    bank.namespace = "bank-builds".to_owned();
    let why = refusal(decide("b", &pods, Some(&bank), &policy()));
    assert!(why.contains("the record says tenant \"bank\""), "{why}");
    assert!(why.contains("the record says namespace"), "{why}");
    let mut other_request = record(RecordState::Accepted);
    other_request.fingerprint = "another".to_owned();
    let why = refusal(decide("b", &pods, Some(&other_request), &policy()));
    assert!(why.contains("not the request the record holds"), "{why}");
}
