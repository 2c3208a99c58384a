//! Multi-platform images end to end (issue 21): a request with `platforms`
//! runs one pod per platform (node selectors), the simulated kubelet pushes
//! a synthetic image for each to a real registry (Debian's docker-registry
//! on loopback) and runs the publish pod's real `kiln publish`; the index is
//! read back with skopeo.
//!
//! Needs `docker-registry`, `skopeo` (scripts/lib/registry.sh) and the
//! `kiln` binary (`cargo build -p kiln-worker --bin kiln`).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::provenance::{Envelope, verify_envelope};
use kiln_protocol::{BuildEvent, Phase};
use kiln_tests::harness::provenance::public_key;
use kiln_tests::harness::{Env, one_image, unique};
use kiln_tests::platform_fates::{RegistryFates, node_platform};
use kiln_tests::registry::{OCI_INDEX, OCI_MANIFEST, Registry, sha256_digest};
use serde::Deserialize;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const AMD64: &str = "linux/amd64";
const ARM64: &str = "linux/arm64";

/// A two-platform request pushing to two repositories of `registry`.
fn request(id: &str, registry: &Registry) -> Value {
    let mut r = one_image(id);
    r["images"][0]["destinations"] = json!([
        registry.reference("shop/api", "1.0"),
        registry.reference("mirror/api", "stable")
    ]);
    r["images"][0]["platforms"] = json!([AMD64, ARM64]);
    r
}

/// A registry, a test world whose kubelet builds against it, and one
/// worker that may talk plain HTTP to it.
async fn world() -> (Arc<Registry>, Env, RegistryFates) {
    let registry = Arc::new(Registry::start().await.unwrap());
    let mut env = Env::new().await;
    let fates = RegistryFates::new(registry.clone()).with_configmaps(env.kube.configmap_reader());
    env.kube.kubelet().set_script(fates.script());
    let host = registry.host();
    env.start_worker_with(|c| c.build.insecure_registries = vec![host]);
    (registry, env, fates)
}

fn succeeded(events: &[BuildEvent]) -> Vec<&BuildEvent> {
    events
        .iter()
        .filter(|e| e.kind() == "image.succeeded")
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    media_type: String,
    manifests: Vec<Child>,
}

#[derive(Deserialize)]
struct Child {
    digest: String,
    platform: ChildPlatform,
}

#[derive(Deserialize)]
struct ChildPlatform {
    os: String,
    architecture: String,
}

/// The index under `reference`: its bytes hash to `digest`, and its
/// children, as (platform, digest).
async fn index_at(registry: &Registry, reference: &str, digest: &str) -> BTreeMap<String, String> {
    let raw = registry.skopeo_inspect_raw(reference).await.unwrap();
    assert_eq!(sha256_digest(&raw), digest, "{reference}");
    let index: Index = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index.media_type, OCI_INDEX);
    index
        .manifests
        .into_iter()
        .map(|c| {
            (
                format!("{}/{}", c.platform.os, c.platform.architecture),
                c.digest,
            )
        })
        .collect()
}

/// The DSSE envelopes attached to `subject` in `repo`, through the
/// referrers tag schema (the registry has no referrers API).
async fn attached(registry: &Registry, repo: &str, subject: &str) -> Vec<Envelope> {
    let tag = subject.replacen(':', "-", 1);
    let listed = registry
        .manifest(repo, &tag, &[OCI_INDEX])
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{repo}: no referrers tag {tag}"));
    let mut out = Vec::new();
    for entry in listed.json()["manifests"].as_array().unwrap() {
        assert_eq!(
            entry["artifactType"],
            "application/vnd.dsse.envelope.v1+json"
        );
        let referrer = registry
            .manifest(repo, entry["digest"].as_str().unwrap(), &[OCI_MANIFEST])
            .await
            .unwrap()
            .unwrap()
            .json();
        assert_eq!(referrer["subject"]["digest"], subject, "{referrer}");
        let layer = referrer["layers"][0]["digest"].as_str().unwrap();
        let blob = registry.blob(repo, layer).await.unwrap();
        out.push(serde_json::from_slice(&blob).unwrap());
    }
    out
}

/// The provenance of the platform manifests is attached to the index and
/// to each child in `repo`: one envelope, signed by the worker's key, whose
/// subjects are exactly the per-platform tags with their digests.
async fn check_attached(
    registry: &Registry,
    repo: &str,
    tag: &str,
    index: &str,
    platforms: &BTreeMap<String, String>,
) {
    let mut seen = Vec::new();
    for subject in std::iter::once(index).chain(platforms.values().map(String::as_str)) {
        let envelopes = attached(registry, repo, subject).await;
        assert_eq!(envelopes.len(), 1, "{repo} {subject}: {envelopes:?}");
        seen.push(envelopes[0].clone());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one envelope for all"
    );
    let statement = verify_envelope(public_key(), &seen[0]).unwrap();
    let subjects: BTreeSet<(String, String)> = statement
        .subject
        .iter()
        .filter(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.contains(&format!("/{repo}:")))
        })
        .map(|s| {
            (
                s.name.clone().unwrap(),
                format!("sha256:{}", s.digest["sha256"]),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = platforms
        .iter()
        .map(|(p, d)| {
            (
                registry.reference(repo, &format!("{tag}-{}", p.replace('/', "-"))),
                d.clone(),
            )
        })
        .collect();
    assert_eq!(subjects, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_platforms_build_two_pods_and_push_one_index_under_every_destination() {
    let (registry, mut env, fates) = world().await;
    let id = unique("mp");
    env.publish(&request(&id, &registry)).await;
    let events = env.events_of(&id, WAIT).await;
    assert!(
        events.iter().any(|e| e.kind() == "build.succeeded"),
        "{:#?}\n{}",
        events.iter().map(BuildEvent::kind).collect::<Vec<_>>(),
        registry.log()
    );
    let ok = succeeded(&events);
    assert_eq!(ok.len(), 1, "one image.succeeded");
    let ev = ok[0];
    let digest = ev.data.digest.clone().unwrap();
    let platforms = &ev.data.platform_digests;
    assert_eq!(
        platforms.keys().collect::<Vec<_>>(),
        [AMD64, ARM64],
        "{platforms:?}"
    );
    // Two pods, one per platform, each on a node of its platform.
    let pods = fates.seen();
    let platform_pods: BTreeSet<String> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("kiln.dev/platform"))
        })
        .map(node_platform)
        .collect();
    assert_eq!(platform_pods, BTreeSet::from([AMD64.into(), ARM64.into()]));
    // The index under every destination tag names those pods' digests.
    for reference in [
        registry.reference("shop/api", "1.0"),
        registry.reference("mirror/api", "stable"),
    ] {
        let children = index_at(&registry, &reference, &digest).await;
        assert_eq!(&children, platforms, "{reference}");
        assert!(
            ev.data
                .image_refs
                .contains(&format!("{reference}@{digest}")),
            "{:?}",
            ev.data.image_refs
        );
    }
    // The platforms' signed provenance is a referrer of the index and of
    // each child, in each repository.
    check_attached(&registry, "shop/api", "1.0", &digest, platforms).await;
    check_attached(&registry, "mirror/api", "stable", &digest, platforms).await;
    // A garbage collection keeps every child (the per-platform tags do).
    registry.garbage_collect().await.unwrap();
    for reference in [
        registry.reference("shop/api", "1.0"),
        registry.reference("mirror/api", "stable"),
    ] {
        for child in platforms.values() {
            let repo = reference
                .trim_start_matches(&format!("{}/", registry.host()))
                .split(':')
                .next()
                .unwrap()
                .to_owned();
            let raw = registry
                .skopeo_inspect_raw(&format!("{}/{repo}@{child}", registry.host()))
                .await;
            assert!(raw.is_ok(), "{repo}@{child} after GC: {raw:?}");
        }
    }
    env.cleanup().await;
}

/// The worker dies while the publish pod runs; the next one adopts the
/// build and the publish pod: one `image.succeeded`, the index digest the
/// registry holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_during_the_publish_step_yields_the_same_index_once() {
    let (registry, mut env, fates) = world().await;
    fates.hold_publish();
    let id = unique("mpk");
    env.publish(&request(&id, &registry)).await;
    assert!(
        env.eventually(WAIT, |e| e
            .pod_names()
            .iter()
            .any(|n| n.contains("-publish-")))
            .await,
        "the publish pod was created"
    );
    env.kill_worker(0).await;
    let host = registry.host();
    env.start_worker_with(|c| c.build.insecure_registries = vec![host]);
    fates.open_publish();
    let events = env.events_of(&id, WAIT).await;
    assert!(
        events.iter().any(|e| e.kind() == "build.succeeded"),
        "{:#?}",
        events.iter().map(BuildEvent::kind).collect::<Vec<_>>()
    );
    let ok = succeeded(&events);
    let ids: BTreeSet<&str> = ok.iter().map(|e| e.id.as_str()).collect();
    let digests: BTreeSet<Option<&String>> = ok.iter().map(|e| e.data.digest.as_ref()).collect();
    assert_eq!(ids.len(), 1, "one image.succeeded: {ids:?}");
    assert_eq!(digests.len(), 1, "one digest: {digests:?}");
    let digest = ok[0].data.digest.clone().unwrap();
    index_at(&registry, &registry.reference("shop/api", "1.0"), &digest).await;
    let publish_pods = fates
        .seen()
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("kiln.dev/step").is_some_and(|s| s == "publish"))
        })
        .count();
    assert_eq!(
        publish_pods, 1,
        "the publish pod was adopted, not made again"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_failing_for_good_fails_the_image_and_pushes_no_index() {
    let (registry, mut env, fates) = world().await;
    fates.fail_platform(ARM64);
    let id = unique("mpf");
    env.publish(&request(&id, &registry)).await;
    let events = env.events_of(&id, WAIT).await;
    let failed: Vec<&BuildEvent> = events
        .iter()
        .filter(|e| e.kind() == "image.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0].data.platform.as_deref(), Some(ARM64));
    assert!(events.iter().any(|e| e.kind() == "build.failed"));
    assert!(succeeded(&events).is_empty());
    assert!(
        !fates.seen().iter().any(|p| p
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("kiln.dev/step"))),
        "no publish pod"
    );
    for repo in ["shop/api", "mirror/api"] {
        let tags = registry.tags(repo).await.unwrap();
        assert!(!tags.contains(&"1.0".to_owned()), "{repo}: {tags:?}");
        assert!(!tags.contains(&"stable".to_owned()), "{repo}: {tags:?}");
    }
    let phases: Vec<Phase> = events.iter().map(|e| e.data.phase).collect();
    assert!(!phases.contains(&Phase::Succeeded), "{phases:?}");
    env.cleanup().await;
}
