//! Parsing a policy file (TOML or YAML) into its format's structs, naming
//! the line (TOML) or path of a mistake, then resolving it into a
//! [`Policy`].

use std::path::Path;

use super::file::PolicyFile;
use super::resolve::resolve;
use super::{Policy, PolicyError, PolicyProblem};

impl Policy {
    /// A policy file: the extension of `path` (`.toml`, `.yaml`, `.yml`)
    /// picks the format, checked before `read` is called; errors name the
    /// file. `read` fetches its text: the core does no IO itself (the
    /// worker's `policy::load` passes `std::fs::read_to_string`).
    pub fn from_file(
        path: &Path,
        read: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<Policy, PolicyError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse: fn(&str) -> Result<Policy, PolicyError> = match ext.as_deref() {
            Some("toml") => Policy::from_toml_str,
            Some("yaml" | "yml") => Policy::from_yaml_str,
            _ => {
                return Err(PolicyError::UnsupportedFormat {
                    file: path.to_owned(),
                });
            }
        };
        let text = read().map_err(|source| PolicyError::Io {
            file: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_toml_str(s: &str) -> Result<Policy, PolicyError> {
        let doc: serde_json::Value = toml::from_str(s).map_err(|e| PolicyError::Syntax {
            file: None,
            message: toml_message(s, &e),
        })?;
        Policy::from_document(doc)
    }

    pub fn from_yaml_str(s: &str) -> Result<Policy, PolicyError> {
        let doc: serde_json::Value =
            serde_saphyr::from_str(s).map_err(|e| PolicyError::Syntax {
                file: None,
                message: format!("invalid YAML: {e}"),
            })?;
        Policy::from_document(doc)
    }

    fn from_document(mut doc: serde_json::Value) -> Result<Policy, PolicyError> {
        if doc.is_null() {
            // An empty YAML document.
            doc = serde_json::Value::Object(serde_json::Map::new());
        }
        let file: PolicyFile = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            PolicyError::invalid(vec![PolicyProblem {
                path: if path == "." {
                    "(top level)".to_owned()
                } else {
                    path
                },
                reason: e.into_inner().to_string(),
            }])
        })?;
        resolve(file)
    }
}

/// `line L, column C: message` for a TOML error.
fn toml_message(src: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = src.get(..span.start).unwrap_or(src);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {msg}")
        }
        None => format!("invalid TOML: {msg}"),
    }
}
