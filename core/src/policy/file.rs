//! The policy file format (TOML or YAML, the same document): what a file
//! may say, read into plain structs with every unknown field refused, and
//! the parsing that names the line (TOML) or path of a mistake.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::resolve::resolve;
use super::{Policy, PolicyError, PolicyProblem};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PolicyFile {
    #[serde(default)]
    pub(super) defaults: Option<InheritedFile>,
    #[serde(default)]
    pub(super) tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InheritedFile {
    #[serde(default)]
    pub(super) caps: CapsFile,
    #[serde(default)]
    pub(super) defaults: DefaultsFile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TenantFile {
    pub(super) namespace: String,
    pub(super) allowed_destinations: Vec<String>,
    #[serde(default)]
    pub(super) registry_secret: Option<String>,
    #[serde(default)]
    pub(super) git_credentials: Option<GitCredentialsFile>,
    #[serde(default)]
    pub(super) s3_credentials: Option<S3CredentialsFile>,
    #[serde(default)]
    pub(super) service_account_name: Option<String>,
    #[serde(default)]
    pub(super) cache_repo: Option<String>,
    /// The pod's `runtimeClassName` (gVisor, Kata, a user-namespaced
    /// runtime): a sandbox around Kaniko's root.
    #[serde(default)]
    pub(super) runtime_class_name: Option<String>,
    /// Allows a plain `http://` S3 endpoint (the policy's or a request's):
    /// the SDK would send signed requests and the access key id in clear.
    #[serde(default)]
    pub(super) allow_insecure_s3_endpoint: bool,
    #[serde(default)]
    pub(super) caps: CapsFile,
    #[serde(default)]
    pub(super) defaults: DefaultsFile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GitCredentialsFile {
    pub(super) secret: String,
    #[serde(default = "default_username_key")]
    pub(super) username_key: String,
    #[serde(default = "default_password_key")]
    pub(super) password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct S3CredentialsFile {
    pub(super) secret: String,
    #[serde(default = "default_access_key_id_key")]
    pub(super) access_key_id_key: String,
    #[serde(default = "default_secret_access_key_key")]
    pub(super) secret_access_key_key: String,
    #[serde(default)]
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) endpoint: Option<String>,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(clippy::struct_field_names)] // the names are the file format
pub(super) struct CapsFile {
    #[serde(default)]
    pub(super) max_attempts: Option<u32>,
    #[serde(default)]
    pub(super) max_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) max_cpu: Option<QuantityText>,
    #[serde(default)]
    pub(super) max_memory: Option<QuantityText>,
    #[serde(default)]
    pub(super) max_ephemeral_storage: Option<QuantityText>,
    #[serde(default)]
    pub(super) max_images: Option<usize>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DefaultsFile {
    #[serde(default)]
    pub(super) attempts: Option<u32>,
    #[serde(default)]
    pub(super) timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) cpu: Option<QuantityText>,
    #[serde(default)]
    pub(super) memory: Option<QuantityText>,
    #[serde(default)]
    pub(super) ephemeral_storage: Option<QuantityText>,
}

/// A quantity written as a string (`"500m"`) or a bare number (`2`).
#[derive(Clone)]
pub(super) struct QuantityText(pub(super) String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity such as \"500m\" or \"2Gi\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

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
