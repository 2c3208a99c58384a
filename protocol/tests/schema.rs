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
