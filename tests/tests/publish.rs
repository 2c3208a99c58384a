//! `kiln publish` (the real binary) against a real registry: Debian's
//! docker-registry 2.8 on loopback (tests/src/registry.rs), read back with
//! skopeo. Each test starts its own registry.
//!
//! Needs `docker-registry` and `skopeo` (scripts/lib/registry.sh installs
//! them) and the `kiln` binary (`cargo build -p kiln-worker --bin kiln`).
#![allow(clippy::unwrap_used)]

use kiln_protocol::Reason;
use kiln_tests::registry::{
    ALL_MANIFESTS, DOCKER_LIST, Format, OCI_INDEX, OCI_MANIFEST, PASSWORD, PublishRun, Registry,
    USER, platform_tag, push_synthetic_image, push_synthetic_image_as, run_publish, sha256_digest,
};
use kiln_worker::classify::classify_publish_message;
use serde_json::Value;

const AMD64: &str = "linux/amd64";
const ARM64: &str = "linux/arm64";

/// The publish pod's arguments for `platforms` (platform, digest) and
/// `destinations`, plain HTTP to `registry`.
fn args(registry: &Registry, platforms: &[(&str, &str)], destinations: &[String]) -> Vec<String> {
    let mut v: Vec<String> = platforms
        .iter()
        .map(|(p, d)| format!("--platform={p}={d}"))
        .collect();
    v.extend(destinations.iter().map(|d| format!("--destination={d}")));
    v.push(format!("--insecure-registry={}", registry.host()));
    v
}

/// Pushes an amd64 and an arm64 image to `repo` under `tag`'s per-platform
/// tags, as the platform pods do; their digests.
async fn two_platforms(
    registry: &Registry,
    repo: &str,
    tag: &str,
    format: Format,
) -> (String, String) {
    let amd = push_synthetic_image_as(registry, repo, &platform_tag(tag, AMD64), AMD64, format)
        .await
        .unwrap();
    let arm = push_synthetic_image_as(registry, repo, &platform_tag(tag, ARM64), ARM64, format)
        .await
        .unwrap();
    (amd, arm)
}

/// The index under `reference` as skopeo reads it, checked against
/// `digest`: its JSON.
async fn index_at(registry: &Registry, reference: &str, digest: &str) -> Value {
    let raw = registry.skopeo_inspect_raw(reference).await.unwrap();
    assert_eq!(sha256_digest(&raw), digest, "{reference}");
    serde_json::from_slice(&raw).unwrap()
}

fn children(index: &Value) -> Vec<(String, String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_owned(),
                m["mediaType"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `run` failed as `class`, with one line that the worker reads as
/// `reason` (retryable or not).
fn assert_failed(run: &PublishRun, class: &str, reason: Reason, retryable: bool) {
    assert_eq!(run.code, Some(1), "{run:?}");
    let prefix = format!("kiln publish failed ({class}): ");
    assert!(run.message.starts_with(&prefix), "{run:?}");
    assert!(!run.message.contains('\n'), "one line: {:?}", run.message);
    let failure = classify_publish_message(&run.message).unwrap();
    assert_eq!(
        (failure.reason, failure.retryable),
        (reason, retryable),
        "{run:?}"
    );
}

/// Nothing is tagged `tag` in `repo`: no index was pushed.
async fn assert_no_index(registry: &Registry, repo: &str, tag: &str) {
    let got = registry.manifest(repo, tag, ALL_MANIFESTS).await.unwrap();
    assert!(got.is_none(), "{repo}:{tag} exists: {got:?}");
}

#[tokio::test]
async fn two_platforms_make_one_index_under_every_destination_stable_and_kept_by_gc() {
    let registry = Registry::start().await.unwrap();
    let (amd, arm) = two_platforms(&registry, "team/app", "1.0", Format::Oci).await;
    let (amd2, arm2) = two_platforms(&registry, "team/mirror", "1.0", Format::Oci).await;
    assert_eq!(
        (&amd, &arm),
        (&amd2, &arm2),
        "the same images in both repositories"
    );
    let destinations = vec![
        registry.reference("team/app", "1.0"),
        registry.reference("team/app", "latest"),
        registry.reference("team/mirror", "1.0"),
    ];
    // The arguments in the "wrong" order: the index sorts its children.
    let a = args(&registry, &[(ARM64, &arm), (AMD64, &amd)], &destinations);
    let run = run_publish(&a, None).await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}\n{}", registry.log());
    let digest = run.message.clone();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71 && !digest.ends_with('\n'),
        "{digest:?}"
    );
    let expected = vec![
        (AMD64.to_owned(), amd.clone(), OCI_MANIFEST.to_owned()),
        (ARM64.to_owned(), arm.clone(), OCI_MANIFEST.to_owned()),
    ];
    for d in &destinations {
        let index = index_at(&registry, d, &digest).await;
        assert_eq!(index["mediaType"], OCI_INDEX, "{d}");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(children(&index), expected, "{d}");
        assert!(index.get("annotations").is_none());
    }

    // Retried (a publish pod that crashed after pushing): the same bytes.
    let again = run_publish(&a, None).await.unwrap();
    assert_eq!(
        (again.code, again.message.as_str()),
        (Some(0), digest.as_str()),
        "{again:?}"
    );

    // A garbage collection keeps the index and every child: the
    // per-platform tags name them.
    registry.garbage_collect().await.unwrap();
    for repo in ["team/app", "team/mirror"] {
        for child in [&amd, &arm] {
            assert!(
                registry
                    .manifest(repo, child, ALL_MANIFESTS)
                    .await
                    .unwrap()
                    .is_some(),
                "{repo}@{child} was collected"
            );
        }
    }
    index_at(&registry, &destinations[0], &digest).await;
}

#[tokio::test]
async fn docker_children_make_a_docker_manifest_list() {
    let registry = Registry::start().await.unwrap();
    let (amd, arm) = two_platforms(&registry, "team/app", "2", Format::Docker).await;
    let dest = vec![registry.reference("team/app", "2")];
    let run = run_publish(
        &args(&registry, &[(AMD64, &amd), (ARM64, &arm)], &dest),
        None,
    )
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    let index = index_at(&registry, &dest[0], &run.message).await;
    assert_eq!(index["mediaType"], DOCKER_LIST);
    assert_eq!(children(&index).len(), 2);
}

#[tokio::test]
async fn the_index_says_the_variant_the_config_says_when_the_platform_names_none() {
    let registry = Registry::start().await.unwrap();
    let amd = push_synthetic_image(&registry, "team/app", &platform_tag("3", AMD64), AMD64)
        .await
        .unwrap();
    // An arm64 node builds arm64/v8 images: asked for linux/arm64, that is
    // a match, and the index tells runtimes the variant.
    let arm = push_synthetic_image(
        &registry,
        "team/app",
        &platform_tag("3", ARM64),
        "linux/arm64/v8",
    )
    .await
    .unwrap();
    let dest = vec![registry.reference("team/app", "3")];
    let run = run_publish(
        &args(&registry, &[(AMD64, &amd), (ARM64, &arm)], &dest),
        None,
    )
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    let index = index_at(&registry, &dest[0], &run.message).await;
    assert_eq!(index["manifests"][1]["digest"], arm.as_str());
    assert_eq!(index["manifests"][1]["platform"]["variant"], "v8");
    assert!(index["manifests"][0]["platform"].get("variant").is_none());

    // Asked for a variant, the config must say that one.
    let run = run_publish(
        &args(&registry, &[(AMD64, &amd), ("linux/arm64/v9", &arm)], &dest),
        None,
    )
    .await
    .unwrap();
    assert_failed(&run, "platform-mismatch", Reason::BuildError, false);
}

#[tokio::test]
async fn a_child_built_for_another_platform_fails_as_platform_mismatch_and_pushes_nothing() {
    let registry = Registry::start().await.unwrap();
    let amd = push_synthetic_image(&registry, "team/app", &platform_tag("1.0", AMD64), AMD64)
        .await
        .unwrap();
    // The "arm64" pod ran on an amd64 node: its image says amd64.
    let wrong = push_synthetic_image(
        &registry,
        "team/app",
        &platform_tag("1.0", ARM64),
        "linux/amd64/v3",
    )
    .await
    .unwrap();
    let dest = vec![registry.reference("team/app", "1.0")];
    let run = run_publish(
        &args(&registry, &[(AMD64, &amd), (ARM64, &wrong)], &dest),
        None,
    )
    .await
    .unwrap();
    assert_failed(&run, "platform-mismatch", Reason::BuildError, false);
    for part in [wrong.as_str(), "linux/arm64", "linux/amd64/v3"] {
        assert!(run.message.contains(part), "{} lacks {part}", run.message);
    }
    assert_no_index(&registry, "team/app", "1.0").await;
}

#[tokio::test]
async fn a_missing_child_is_retryable_and_named() {
    let registry = Registry::start().await.unwrap();
    let amd = push_synthetic_image(&registry, "team/app", &platform_tag("1.0", AMD64), AMD64)
        .await
        .unwrap();
    // The arm64 image went to another repository only.
    let arm = push_synthetic_image(&registry, "team/other", &platform_tag("1.0", ARM64), ARM64)
        .await
        .unwrap();
    let dest = vec![registry.reference("team/app", "1.0")];
    let run = run_publish(
        &args(&registry, &[(AMD64, &amd), (ARM64, &arm)], &dest),
        None,
    )
    .await
    .unwrap();
    assert_failed(&run, "retryable", Reason::PushError, true);
    assert!(
        run.message.contains(&arm) && run.message.contains(ARM64),
        "names the child: {}",
        run.message
    );
    assert_no_index(&registry, "team/app", "1.0").await;
}

#[tokio::test]
async fn the_tenants_credentials_are_used_and_wrong_ones_are_denied() {
    let registry = Registry::start_with_auth().await.unwrap();
    let (amd, arm) = two_platforms(&registry, "team/app", "1.0", Format::Oci).await;
    let dest = vec![registry.reference("team/app", "1.0")];
    let a = args(&registry, &[(AMD64, &amd), (ARM64, &arm)], &dest);

    let wrong = registry
        .write_docker_config(&registry.dir().join("wrong"), USER, "not-the-password")
        .unwrap();
    for config in [Some(wrong.as_path()), None] {
        let run = run_publish(&a, config).await.unwrap();
        assert_failed(&run, "denied", Reason::ConfigError, false);
        assert!(!run.message.contains("not-the-password"), "{run:?}");
    }

    let right = registry
        .write_docker_config(&registry.dir().join("right"), USER, PASSWORD)
        .unwrap();
    let run = run_publish(&a, Some(&right)).await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    index_at(&registry, &dest[0], &run.message).await;

    // A config.json that is not JSON: invalid, not anonymous.
    let broken = registry.dir().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{ not json").unwrap();
    let run = run_publish(&a, Some(&broken)).await.unwrap();
    assert_failed(&run, "invalid", Reason::ConfigError, false);
}

#[tokio::test]
async fn an_attached_envelope_is_a_referrer_of_the_index_and_each_child_through_the_tag_schema() {
    let registry = Registry::start().await.unwrap();
    let (amd, arm) = two_platforms(&registry, "team/app", "1.0", Format::Oci).await;
    let envelope = br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"sha256:00","sig":"AA=="}]}"#;
    let file = registry.dir().join("provenance.dsse.json");
    std::fs::write(&file, envelope).unwrap();
    let dest = vec![registry.reference("team/app", "1.0")];
    let mut a = args(&registry, &[(AMD64, &amd), (ARM64, &arm)], &dest);
    a.push(format!("--attach={}", file.display()));
    let run = run_publish(&a, None).await.unwrap();
    assert_eq!(run.code, Some(0), "{run:?}\n{}", registry.log());
    let index = run.message.clone();

    // 2.8 has no referrers API: the tag schema is what ran.
    assert_eq!(
        registry
            .referrers_api_status("team/app", &index)
            .await
            .unwrap(),
        404
    );
    let check = |subject: String| {
        let registry = &registry;
        async move {
            let tag = subject.replacen(':', "-", 1);
            let listed = registry
                .manifest("team/app", &tag, &[OCI_INDEX])
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no referrers tag {tag}"));
            let entries = listed.json()["manifests"].as_array().unwrap().clone();
            assert_eq!(entries.len(), 1, "{subject}: {entries:?}");
            assert_eq!(
                entries[0]["artifactType"],
                "application/vnd.dsse.envelope.v1+json"
            );
            let referrer = registry
                .manifest(
                    "team/app",
                    entries[0]["digest"].as_str().unwrap(),
                    &[OCI_MANIFEST],
                )
                .await
                .unwrap()
                .unwrap()
                .json();
            assert_eq!(referrer["subject"]["digest"], subject.as_str());
            assert_eq!(
                referrer["artifactType"],
                "application/vnd.dsse.envelope.v1+json"
            );
            assert_eq!(
                referrer["layers"][0]["digest"],
                sha256_digest(envelope).as_str()
            );
        }
    };
    for subject in [index.clone(), amd.clone(), arm.clone()] {
        check(subject).await;
    }

    // Again: the same index, and each referrer listed once.
    let again = run_publish(&a, None).await.unwrap();
    assert_eq!(
        (again.code, again.message.as_str()),
        (Some(0), index.as_str()),
        "{again:?}"
    );
    for subject in [index, amd, arm] {
        check(subject).await;
    }
}

#[tokio::test]
async fn bad_arguments_fail_as_invalid_with_one_line() {
    let registry = Registry::start().await.unwrap();
    let mut a = vec![format!("--platform={AMD64}=sha256:{}", "a".repeat(64))];
    a.push(format!(
        "--destination={}",
        registry.reference("team/app", "1.0")
    ));
    let run = run_publish(&a, None).await.unwrap();
    assert_failed(&run, "invalid", Reason::ConfigError, false);
    assert!(run.message.contains("--platform: 1 given"), "{run:?}");
}

#[tokio::test]
async fn an_unreachable_or_failing_registry_is_retryable_after_retries() {
    let digests = [
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    ];
    let platforms = [(AMD64, digests[0].as_str()), (ARM64, digests[1].as_str())];
    let publish_to = |host: String| {
        let mut a: Vec<String> = platforms
            .iter()
            .map(|(p, d)| format!("--platform={p}={d}"))
            .collect();
        a.push(format!("--destination={host}/team/app:1.0"));
        a.push(format!("--insecure-registry={host}"));
        a
    };

    // Nothing listens there: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = run_publish(&publish_to(format!("127.0.0.1:{port}")), None)
        .await
        .unwrap();
    assert_failed(&run, "retryable", Reason::PushError, true);

    // A registry that answers 503 to everything: each call is tried again
    // before the step gives up.
    let manifest_gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = manifest_gets.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = counter.clone();
        async move {
            if uri.path().contains("/manifests/") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let run = run_publish(&publish_to(host), None).await.unwrap();
    server.abort();
    assert_failed(&run, "retryable", Reason::PushError, true);
    assert!(run.message.contains("503"), "{run:?}");
    let tries = manifest_gets.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(tries, 4, "one call and three retries");
}
