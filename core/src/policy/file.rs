//! The policy file format (TOML or YAML, the same document): what a file
//! may say, read into plain structs with every unknown field refused.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

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
    /// Request label keys the tenant may set: exact keys, or prefixes
    /// ending in `/`.
    #[serde(default)]
    pub(super) allowed_label_keys: Option<Vec<String>>,
    /// Secrets the tenant's builds may mount as build secrets: `name`
    /// (any key) or `name/key`.
    #[serde(default)]
    pub(super) build_secrets: Vec<String>,
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
    /// Required: the hosts (`host` or `host:port`) the credentials may be
    /// sent to. An `Option` so that its absence gets the policy's own
    /// message, not the parser's.
    #[serde(default)]
    pub(super) hosts: Option<Vec<String>>,
    /// A git context on another host: `omit` (build without the
    /// credentials, the default) or `refuse` (`PolicyViolation`).
    #[serde(default)]
    pub(super) other_hosts: super::OtherHosts,
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
    #[serde(default)]
    pub(super) max_builds_in_flight: Option<usize>,
    pub(super) max_log_retention_seconds: Option<u64>,
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
