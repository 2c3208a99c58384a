//! The committed schemas under `protocol/schema/` match the Rust types.
//!
//! After changing a wire type, regenerate them with
//! `KILN_BLESS=1 cargo test -p kiln-protocol --test schema` and commit the result.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

fn check(file: &str, generated: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(file);
    let mut text = serde_json::to_string_pretty(generated).unwrap();
    text.push('\n');
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is out of date with the Rust types.\n\
         Regenerate it with `KILN_BLESS=1 cargo test -p kiln-protocol --test schema`, \
         review the diff and commit it (the schemas are part of the wire contract: \
         only extend them).",
        path.display()
    );
}

#[test]
fn build_request_schema_is_committed() {
    check(
        "build-request.schema.json",
        &kiln_protocol::build_request_schema(),
    );
}

#[test]
fn cancel_request_schema_is_committed() {
    check(
        "cancel-request.schema.json",
        &kiln_protocol::cancel_request_schema(),
    );
}

#[test]
fn build_event_schema_is_committed() {
    check(
        "build-event.schema.json",
        &kiln_protocol::build_event_schema(),
    );
}

#[test]
fn schemas_are_valid_draft_2020_12() {
    for s in [
        kiln_protocol::build_request_schema(),
        kiln_protocol::cancel_request_schema(),
        kiln_protocol::build_event_schema(),
    ] {
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        jsonschema::draft202012::meta::validate(&s).unwrap();
        jsonschema::draft202012::new(&s).unwrap();
    }
}

/// Events as the worker builds them satisfy the committed event schema.
#[test]
fn built_events_match_the_committed_schema() {
    use kiln_protocol::{BuildEvent, EventData, ImageSummary, Phase, PodRef, Reason, mask_secrets};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/build-event.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let time: jiff::Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    let mut failed = EventData::for_image("b-1", "api", 2, Phase::Failed);
    failed.pod = Some(PodRef {
        namespace: "kiln-builds".into(),
        name: "kiln-b-1-api-2".into(),
    });
    failed.reason = Some(Reason::OOMKilled);
    failed.exit_code = Some(137);
    failed.message = Some("the build container ran out of memory".into());
    failed.log_tail = Some(mask_secrets(&"é".repeat(10_000), &[]));
    failed.started_at = Some(time);
    failed.finished_at = Some(time);
    failed.duration_seconds = Some(0.0);

    let mut retrying = EventData::for_image("b-1", "api", 1, Phase::Retrying);
    retrying.retry_in_seconds = Some(12.5);
    retrying.reason = Some(Reason::PushError);

    let mut done = EventData::for_build("b-1", Phase::Succeeded);
    done.tenant = Some("payments".into());
    done.images = Some(vec![ImageSummary {
        name: "api".into(),
        phase: Phase::Succeeded,
        digest: Some(digest.into()),
        attempts: 2,
        image_refs: vec![format!("registry.example.com/a:1@{digest}")],
        platform_digests: std::collections::BTreeMap::new(),
        reason: None,
    }]);

    let rejected = BuildEvent::request_rejected(
        "urn:kiln:test",
        "kiln-0",
        time,
        br#"{"apiVersion":"kiln/v1","kind":"BuildRequest","id":"b-1"}"#,
        EventData::request_rejected(
            "b-1",
            "bob",
            Reason::IdConflict,
            "build b-1 belongs to another tenant",
        ),
    );

    // Issue 18, item 3: a message of any size becomes at most 4 KiB.
    let mut huge = EventData::for_build("b-1", Phase::Rejected);
    huge.reason = Some(Reason::InvalidRequest);
    huge.message = Some("labels[\"é€\"]: bad; ".repeat(50_000));

    let built = [failed, retrying, done, huge]
        .map(|data| BuildEvent::new("urn:kiln:test", "kiln-0", time, data));
    for ev in built.into_iter().chain([rejected]) {
        let ev = ev.with_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ));
        ev.validate().unwrap();
        assert!(
            ev.data
                .message
                .as_ref()
                .is_none_or(|m| m.len() <= kiln_protocol::MAX_TEXT_BYTES)
        );
        assert_eq!(ev.dataschema.as_deref(), Some(kiln_protocol::DATA_SCHEMA));
        let v = serde_json::to_value(&ev).unwrap();
        let problems: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(problems.is_empty(), "{}: {problems:?}", ev.id);
    }
}

/// Issue 18, item 7: the committed request schema refuses what the validator
/// refuses about `#` in a git context, so a publisher checking against the
/// schema learns it before publishing.
#[test]
fn the_request_schema_refuses_hash_in_git_fields() {
    let validator = request_validator();
    let request = |git: Value| {
        serde_json::json!({
            "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "b-1",
            "images": [{ "name": "api", "context": { "git": git },
                         "destinations": ["registry.example.com/a:1"] }]
        })
    };
    let ok = request(
        serde_json::json!({"url": "https://github.com/a/b.git", "ref": "main", "subPath": "svc"}),
    );
    assert!(validator.is_valid(&ok));
    for git in [
        serde_json::json!({"url": "https://github.com/a/b.git#evil"}),
        serde_json::json!({"url": "https://github.com/a/b.git", "ref": "main#x"}),
        serde_json::json!({"url": "https://github.com/a/b.git", "subPath": "svc#x"}),
        serde_json::json!({"url": r"https://github.com\@evil.example/a/b.git"}),
    ] {
        let req = request(git.clone());
        assert!(!validator.is_valid(&req), "{git}");
        assert!(
            kiln_protocol::parse_build_request(&serde_json::to_vec(&req).unwrap()).is_err(),
            "{git}"
        );
    }
}

/// Issue 18 item 12: the schema refuses what validation refuses in
/// `secrets` (ids, Secret names, keys, count).
#[test]
fn the_request_schema_checks_build_secrets() {
    let validator = request_validator();
    let request = |secrets: Value| {
        serde_json::json!({
            "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "b-1",
            "images": [{ "name": "api", "context": { "url": "https://e.com/c.tgz" },
                         "destinations": ["registry.example.com/a:1"], "secrets": secrets }]
        })
    };
    let ok = request(serde_json::json!({"npm": {"secret": "ci-tokens", "key": ".npmrc"}}));
    assert!(validator.is_valid(&ok));
    assert!(kiln_protocol::parse_build_request(&serde_json::to_vec(&ok).unwrap()).is_ok());
    for secrets in [
        serde_json::json!({"..": {"secret": "s", "key": "k"}}),
        serde_json::json!({"a/b": {"secret": "s", "key": "k"}}),
        serde_json::json!({"npm": {"secret": "S", "key": "k"}}),
        serde_json::json!({"npm": {"secret": "s", "key": "..data"}}),
        serde_json::json!({"npm": {"secret": "s", "key": "."}}),
        serde_json::json!({"npm": {"secret": "s"}}),
        serde_json::json!({"npm": {"secret": "s", "key": "k", "value": "v"}}),
    ] {
        let req = request(secrets.clone());
        assert!(!validator.is_valid(&req), "{secrets}");
        assert!(
            kiln_protocol::parse_build_request(&serde_json::to_vec(&req).unwrap()).is_err(),
            "{secrets}"
        );
    }
}

/// A validator of the committed request schema.
fn request_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/build-request.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}
