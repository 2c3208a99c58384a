//! Every file in `examples/` parses, validates and matches the committed schema.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_protocol::{parse_build_request, parse_cancel_request};
use serde_json::Value;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn committed_schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(name);
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn every_example_is_valid() {
    let build_schema = committed_schema("build-request.schema.json");
    let cancel_schema = committed_schema("cancel-request.schema.json");
    let files = examples();
    assert!(files.len() >= 5, "expected the examples, found {files:?}");
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let name = path.display();
        let schema = match value["kind"].as_str() {
            Some("BuildRequest") => {
                parse_build_request(&bytes).unwrap_or_else(|e| panic!("{name}:\n{e}"));
                &build_schema
            }
            Some("CancelRequest") => {
                parse_cancel_request(&bytes).unwrap_or_else(|e| panic!("{name}:\n{e}"));
                &cancel_schema
            }
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        let problems: Vec<String> = schema
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            problems.is_empty(),
            "{name} fails the schema:\n{}",
            problems.join("\n")
        );
    }
}

/// `two-images.json` is the request that docs/protocol.md shows, verbatim.
#[test]
fn protocol_doc_example_is_in_step() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let design = std::fs::read_to_string(doc).unwrap();
    let start = design.find("```json\n{\n  \"apiVersion\"").unwrap() + "```json\n".len();
    let end = start + design[start..].find("```").unwrap();
    let from_design: Value = serde_json::from_str(&design[start..end]).unwrap();
    let example: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-images.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(from_design, example);
}
