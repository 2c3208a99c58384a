//! Credentials go only where the policy says (issue 18 items 7 and 12,
//! DESIGN section 8): the tenant's git Secret only to the hosts
//! `gitCredentials.hosts` lists, build secrets only from the Secrets
//! `buildSecrets` lists, as files and never as values. Real RabbitMQ and
//! Redis, the fake Kubernetes API: what the API receives is the proof.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kiln_protocol::Reason;
use kiln_tests::fakekube::Fate;
use kiln_tests::harness::{Env, NAMESPACE, unique};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The `default` tenant (requests published without a user) with a git
/// Secret for github.com only and one Secret its builds may mount.
fn policy(other_hosts: &str) -> String {
    format!(
        r#"
[tenants.default]
namespace = "{NAMESPACE}"
allowedDestinations = ["registry.example.com/shop"]
buildSecrets = ["ci-tokens"]
gitCredentials = {{ secret = "shop-git", hosts = ["github.com"], otherHosts = "{other_hosts}" }}
"#
    )
}

fn git_image(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "context": {"git": {"url": url, "ref": "refs/heads/main"}},
        "destinations": [format!("registry.example.com/shop/{name}:1")],
    })
}

fn request(id: &str, images: &[Value]) -> Value {
    json!({"apiVersion": "kiln/v1", "kind": "BuildRequest", "id": id, "images": images})
}

/// The pod of attempt 1 of `image`, once the API has it.
async fn pod_of(env: &Env, id: &str, image: &str) -> Pod {
    let name = kiln_protocol::pod_name(id, image, 1);
    assert!(
        env.eventually(WAIT, |e| e.kube.pod(NAMESPACE, &name).is_some())
            .await,
        "pod {name} never created: {:?}",
        env.pod_names()
    );
    env.kube.pod(NAMESPACE, &name).unwrap()
}

/// The Secrets the Kaniko container's environment refers to.
fn env_secrets(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|r| r.name.clone())
        .collect()
}

/// The one dead letter's `kiln-error` header, after a `build.rejected` with
/// `PolicyViolation`.
async fn policy_violation(env: &mut Env, id: &str) -> String {
    let events = env.expect_sequence(id, &["build.rejected"], WAIT).await;
    assert_eq!(events[0].data.reason, Some(Reason::PolicyViolation));
    let dead = env.wait_dead_letters(WAIT).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    dead[0].1.clone()
}

/// A git context on a host the policy does not list builds without the
/// tenant's git Secret (no secretKeyRef to it in its pod); one on a listed
/// host gets it. Fails on the code before: there, `hosts` is an unknown
/// policy field and every git pod gets the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_host_not_listed_gets_no_credentials_under_omit() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    let path = env.write_policy(&policy("omit"));
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("githost");
    env.publish(&request(
        &id,
        &[
            git_image("listed", "https://github.com/acme/cart.git"),
            git_image("other", "https://evil.example.com/acme/cart.git"),
        ],
    ))
    .await;
    let listed = pod_of(&env, &id, "listed").await;
    assert_eq!(env_secrets(&listed), ["shop-git", "shop-git"]);
    let other = pod_of(&env, &id, "other").await;
    assert!(env_secrets(&other).is_empty(), "{:?}", env_secrets(&other));
    // The plan annotation names the Secret for the listed image; the spec
    // of this pod does not refer to it.
    let spec = serde_json::to_string(&other.spec).unwrap();
    assert!(!spec.contains("shop-git"), "{spec}");
    assert!(
        other.metadata.annotations.as_ref().unwrap()["kiln.dev/plan"]
            .contains(r#""gitCredentialsOmitted":true"#)
    );
}

/// Under `otherHosts = "refuse"` such a request is rejected before any pod
/// exists, naming the field and the allowed hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_host_not_listed_is_refused_under_refuse() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy("refuse"));
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("githost");
    env.publish(&request(
        &id,
        &[git_image("other", "https://evil.example.com/acme/cart.git")],
    ))
    .await;
    let header = policy_violation(&mut env, &id).await;
    assert!(header.contains("images[0].context.git.url"), "{header}");
    assert!(header.contains("allowed hosts: github.com"), "{header}");
    assert_eq!(env.pod_names(), Vec::<String>::new());
}

/// Build secrets: a listed Secret is mounted as files (one volume, only the
/// named key, 0400, read-only) and named by `--secret`; another Secret is a
/// `PolicyViolation` naming `images[0].secrets.<id>.secret`. Fails on the
/// code before: `secrets` was an unknown field (`InvalidRequest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_secrets_are_mounted_files_and_only_the_policys() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    let path = env.write_policy(&policy("omit"));
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("secrets");
    let mut image = git_image("api", "https://github.com/acme/cart.git");
    image["secrets"] = json!({"npm": {"secret": "ci-tokens", "key": ".npmrc"}});
    env.publish(&request(&id, &[image])).await;
    let pod = pod_of(&env, &id, "api").await;
    let spec = pod.spec.as_ref().unwrap();
    let kaniko = &spec.containers[0];
    let args = kaniko.args.clone().unwrap();
    assert!(
        args.contains(&"--secret=id=npm,src=/kaniko/build-secrets/npm/.npmrc".to_owned()),
        "{args:?}"
    );
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| {
            v.secret
                .as_ref()
                .filter(|s| s.secret_name.as_deref() == Some("ci-tokens"))
        })
        .unwrap();
    let keys: Vec<&str> = volume
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, [".npmrc"]);
    assert_eq!(volume.default_mode, Some(0o400));
    let mount = kaniko
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/kaniko/build-secrets/npm")
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    // The reference is in the plan the pod carries; the Secret's value is
    // nowhere Kiln writes (it never reads it).
    let plan = &pod.metadata.annotations.as_ref().unwrap()["kiln.dev/plan"];
    assert!(
        plan.contains(r#""secrets":{"npm":{"secret":"ci-tokens","key":".npmrc"}}"#),
        "{plan}"
    );

    let id = unique("secrets");
    let mut image = git_image("api", "https://github.com/acme/cart.git");
    image["secrets"] = json!({"npm": {"secret": "bank-tokens", "key": "npm"}});
    env.publish(&request(&id, &[image])).await;
    let header = policy_violation(&mut env, &id).await;
    assert!(header.contains("images[0].secrets.npm.secret"), "{header}");
    assert!(header.contains("bank-tokens"), "{header}");
}
