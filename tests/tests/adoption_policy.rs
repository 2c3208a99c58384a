//! Adoption re-checks the plan against the current policy (issue 9): pods
//! labelled as Kiln's by anyone who may create pods in a watched namespace
//! never make a worker create pods with another tenant's Secrets.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kiln_tests::fakekube::Resource;
use kiln_tests::harness::{Env, NAMESPACE, unique};
use kiln_worker::plan::BuildPlan;
use kiln_worker::pod::{PodSettings, pod_spec};
use kiln_worker::policy::Policy;
use serde_json::json;

/// Tenant `shop` builds in the tests' namespace, `bank` in its own; each
/// with registry and git Secrets of its own.
fn policy_text() -> String {
    format!(
        r#"
[tenants.shop]
namespace = "{NAMESPACE}"
allowedDestinations = ["registry.example.com/shop"]
registrySecret = "shop-registry"
gitCredentials = {{ secret = "shop-git", hosts = ["github.com"] }}

[tenants.bank]
namespace = "kiln-bank"
allowedDestinations = ["registry.example.com/bank"]
registrySecret = "bank-registry"
gitCredentials = {{ secret = "bank-git", hosts = ["github.com"] }}
"#
    )
}

/// The plan the policy gives `shop` for a two-image git build.
fn shop_plan(id: &str) -> BuildPlan {
    let image = |name: &str| {
        json!({
            "name": name,
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
            "destinations": [format!("registry.example.com/shop/{name}:1.0.0")]
        })
    };
    let body = json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "images": [image("api"), image("worker")],
    });
    let req = kiln_protocol::parse_build_request(&serde_json::to_vec(&body).unwrap()).unwrap();
    let policy = Policy::from_toml_str(&policy_text()).unwrap();
    let admission = policy.admit(Some("shop"), &req).unwrap();
    BuildPlan::new(
        &req,
        &admission,
        vec![None, None],
        jiff::Timestamp::now(),
        None,
    )
}

/// A pod with Kiln's labels and a plan naming bank's Secrets, in shop's
/// namespace, with no lease in Redis and only the first image's pod: a
/// worker that trusted the plan would create the second image's pod
/// mounting `bank-registry` and `bank-git`. It must create nothing, publish
/// nothing and leave the forged pod alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pod_naming_another_tenants_secrets_is_not_adopted() {
    let mut env = Env::new().await;
    env.kube
        .kubelet()
        .set_script(|_| kiln_tests::fakekube::Fate::RunForever);
    let path = env.write_policy(&policy_text());
    let id = unique("forged");
    let mut forged = shop_plan(&id);
    forged.registry_secret = Some("bank-registry".to_owned());
    if let Some(git) = forged.git_secret.as_mut() {
        git.secret = "bank-git".to_owned();
    }
    let settings = PodSettings {
        kaniko_image: "kaniko:test".to_owned(),
        fetch_image: "curl:test".to_owned(),
        s3_region: "us-east-1".to_owned(),
        ..PodSettings::default()
    };
    let pod = pod_spec(&settings, &forged, 0, 1, jiff::Timestamp::now());
    let pods: kube::Api<Pod> = kube::Api::namespaced(env.kube.client(), NAMESPACE);
    pods.create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    // TTL 2 s: the worker sees the pod at once and sweeps it within a
    // second; a worker trusting the plan creates the missing pod within 3 s.
    let events = env.events_of(&id, Duration::from_secs(8)).await;
    assert!(events.is_empty(), "nothing published: {events:?}");
    assert_eq!(
        env.created(Resource::Pods),
        1,
        "only the forged pod exists: {:?}",
        env.pod_names()
    );
    assert_eq!(env.pod_names().len(), 1, "the forged pod is left alone");
}
