//! Tenancy (DESIGN section 8): who may build what, where, with which
//! credentials and within which caps.
//!
//! A policy file maps a tenant — the AMQP `user_id` of the request, which
//! RabbitMQ verifies against the connection's user — to its build
//! namespace, allowed destination prefixes, credential Secrets, builder
//! ServiceAccount, cache repository, caps and defaults. A request from a
//! user that has no entry of its own falls back to the `default` tenant
//! when there is one, and is rejected otherwise. Without a policy file the
//! worker runs [`Policy::single_tenant`]: one `default` tenant that builds in
//! the worker's namespace, may push anywhere, and has the built-in caps.
//!
//! The file is TOML (`.toml`) or YAML (`.yaml`, `.yml`); both spell the same
//! document (see `examples/policy.toml` and `examples/policy.yaml`):
//!
//! ```toml
//! [defaults.caps]          # inherited by tenants, field by field
//! maxAttempts = 5
//! [defaults.defaults]
//! timeoutSeconds = 1800
//!
//! [tenants.payments]
//! namespace = "kiln-payments"
//! allowedDestinations = ["registry.example.com/payments"]
//! registrySecret = "payments-registry"           # mounted at /kaniko/.docker/config.json
//! serviceAccountName = "kiln-builder"            # the default
//! cacheRepo = "registry.example.com/payments/cache"
//! gitCredentials = { secret = "payments-git" }   # usernameKey "username", passwordKey "password" by default
//! s3Credentials = { secret = "payments-s3", region = "eu-west-1" }
//! caps = { maxCpu = "2", maxMemory = "4Gi", maxImages = 8 }
//! defaults = { cpu = "500m", memory = "1Gi" }
//! ```
//!
//! Unknown fields are errors, and every loading error names the file, the
//! field path (`tenants.payments.caps.maxCpu`) and the reason.
//!
//! # Caps and defaults
//!
//! Each cap and default is looked up field by field: the tenant's own value,
//! else the top-level `defaults` block's, else the built-in one:
//!
//! | cap | built-in | default | built-in |
//! |---|---|---|---|
//! | `maxAttempts` | 5 | `attempts` | 3 |
//! | `maxTimeoutSeconds` | 21600 (6 h) | `timeoutSeconds` | 3600 |
//! | `maxCpu` | `4` | `cpu` | `1` |
//! | `maxMemory` | `8Gi` | `memory` | `2Gi` |
//! | `maxImages` | 32 | | |
//!
//! A default above its cap is an error when the default is written at the
//! same level as the cap or below it (a tenant's default above the tenant's
//! or the inherited cap; a top-level default above the top-level or the
//! built-in cap). When a tenant lowers a cap below an *inherited* default,
//! the default is lowered to the cap instead: a tenant with
//! `maxTimeoutSeconds = 600` gets 600-second builds by default.
//!
//! # Destinations
//!
//! A destination is allowed when its normalised repository
//! (`registry/repository`, as [`kiln_protocol::parse_image_reference`]
//! gives it: `alpine` is `docker.io/library/alpine`) equals an allowed prefix
//! or continues it after a `/`: `registry.example.com/shop` allows
//! `registry.example.com/shop/cart:1` and `registry.example.com/shop:1`, not
//! `registry.example.com/shopping/x`. A prefix starts with a registry host
//! (`registry.example.com`, `localhost:5000`, `docker.io`) and has no tag or
//! digest; `*` allows any destination.
//!
//! # Credentials
//!
//! [`Admission`] carries the git (S3) credentials only when an image of the
//! request has a git (S3) context: a pod never sees a Secret it does not
//! need. The S3 `region` and `endpoint` of the policy are defaults for
//! contexts that do not name their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_protocol::{BuildRequest, ROOT_PATH, ValidationError, is_dns1123_label};
use serde::Deserialize;

/// The tenant that requests without a tenant of their own fall back to.
pub const DEFAULT_TENANT: &str = "default";

/// The builder ServiceAccount when a tenant names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "kiln-builder";

/// The prefix that allows every destination.
const ANY_DESTINATION: &str = "*";

/// Built-in caps and defaults (see the module documentation).
pub mod builtin {
    pub const MAX_ATTEMPTS: u32 = 5;
    pub const MAX_TIMEOUT_SECONDS: u64 = 21_600;
    pub const MAX_CPU: &str = "4";
    pub const MAX_MEMORY: &str = "8Gi";
    pub const MAX_IMAGES: usize = 32;
    pub const ATTEMPTS: u32 = 3;
    pub const TIMEOUT_SECONDS: u64 = 3_600;
    pub const CPU: &str = "1";
    pub const MEMORY: &str = "2Gi";
}

// ---------------------------------------------------------------------------
// The resolved policy.

/// The tenancy policy: tenants by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    tenants: BTreeMap<String, Tenant>,
}

/// One tenant, with inheritance resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Namespace its build pods run in.
    pub namespace: String,
    /// Allowed destination prefixes.
    pub allowed_destinations: Vec<DestinationPrefix>,
    /// Name of the registry credential Secret (a `config.json`), mounted at
    /// `/kaniko/.docker/config.json`.
    pub registry_secret: Option<String>,
    pub git_credentials: Option<GitCredentials>,
    pub s3_credentials: Option<S3Credentials>,
    /// Builder ServiceAccount (default [`DEFAULT_SERVICE_ACCOUNT`]).
    pub service_account: String,
    /// Kaniko `--cache-repo`.
    pub cache_repo: Option<String>,
    pub caps: Caps,
    pub defaults: Defaults,
}

/// Upper bounds on what a request may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    pub max_attempts: u32,
    pub max_timeout_seconds: u64,
    pub max_cpu: Quantity,
    pub max_memory: Quantity,
    pub max_images: usize,
}

/// What a request gets when it does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub attempts: u32,
    pub timeout_seconds: u64,
    pub cpu: Quantity,
    pub memory: Quantity,
}

/// A Kubernetes quantity as written, with its exact value
/// ([`kiln_protocol::quantity_nanos`]): caps compare exactly across binary
/// and decimal suffixes (`8589934593` is more than `8Gi`).
#[derive(Debug, Clone)]
pub struct Quantity {
    text: String,
    nanos: u128,
}

impl Quantity {
    /// Parses a positive Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`).
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let trimmed = text.trim();
        let Some(nanos) = kiln_protocol::quantity_nanos(trimmed) else {
            return Err(format!(
                "{} is not a Kubernetes quantity (e.g. \"500m\", \"2\", \"512Mi\", \"4Gi\")",
                quote(text)
            ));
        };
        if nanos == 0 {
            return Err(format!("{} must be more than 0", quote(text)));
        }
        Ok(Quantity {
            text: trimmed.to_owned(),
            nanos,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Quantities compare by value: `1` equals `1000m`.
impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An allowed destination prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationPrefix {
    /// `*`: any destination.
    Any,
    /// `registry[/path]`, lowercase, without a trailing `/`.
    Repository(String),
}

impl DestinationPrefix {
    fn parse(s: &str) -> Result<DestinationPrefix, String> {
        if s == ANY_DESTINATION {
            return Ok(DestinationPrefix::Any);
        }
        let p = s.strip_suffix('/').unwrap_or(s);
        if p.is_empty() {
            return Err("must not be empty; use \"*\" to allow any destination".to_owned());
        }
        if p.contains('@') {
            return Err(format!(
                "{} has a digest; a prefix is a registry or repository path",
                quote(s)
            ));
        }
        let mut parts = p.split('/');
        let host = parts.next().unwrap_or_default();
        if !(host.contains('.')
            || host.contains(':')
            || host == "localhost"
            || host.starts_with("localhost:"))
        {
            return Err(format!(
                "{} must start with a registry host, e.g. \"docker.io/{p}\" or \"registry.example.com/{p}\"",
                quote(s)
            ));
        }
        if !is_registry_host(host) {
            return Err(format!(
                "{} is not a registry host (lowercase host name, optional :port)",
                quote(host)
            ));
        }
        for part in parts {
            if !is_path_component(part) {
                let reason = if part.contains(':') {
                    format!(
                        "{} has a tag; a prefix is a registry or repository path",
                        quote(s)
                    )
                } else {
                    format!(
                        "{} is not a valid repository path component (lowercase letters, digits, '.', '_', '-')",
                        quote(part)
                    )
                };
                return Err(reason);
            }
        }
        Ok(DestinationPrefix::Repository(p.to_owned()))
    }

    /// Whether the normalised repository name `registry/repository` is
    /// allowed by this prefix.
    pub fn allows(&self, repository: &str) -> bool {
        match self {
            DestinationPrefix::Any => true,
            DestinationPrefix::Repository(p) => repository
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

impl fmt::Display for DestinationPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationPrefix::Any => f.write_str(ANY_DESTINATION),
            DestinationPrefix::Repository(p) => f.write_str(p),
        }
    }
}

fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Git credentials: a Secret with a user name and a password (or token),
/// given to Kaniko as `GIT_USERNAME` / `GIT_PASSWORD` through `secretKeyRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub secret: String,
    pub username_key: String,
    pub password_key: String,
}

/// S3 credentials: a Secret with an access key pair, given to Kaniko as
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` through `secretKeyRef`,
/// plus defaults for contexts that name no region or endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub secret: String,
    pub access_key_id_key: String,
    pub secret_access_key_key: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// What the policy grants an accepted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The policy tenant that applied (`default` for a user without an
    /// entry of its own).
    pub tenant: String,
    pub namespace: String,
    pub max_attempts: u32,
    /// The deadline of the whole build.
    pub timeout: Duration,
    pub service_account: String,
    pub registry_secret: Option<String>,
    /// Only when an image of the request has a git context.
    pub git_credentials: Option<GitCredentials>,
    /// Only when an image of the request has an S3 context.
    pub s3_credentials: Option<S3Credentials>,
    pub cache_repo: Option<String>,
    /// One per image, in request order: requests (= limits) with the
    /// tenant's defaults applied.
    pub resources: Vec<ResourceQuantities>,
}

/// CPU and memory of one build pod (requests and limits alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceQuantities {
    pub cpu: String,
    pub memory: String,
}

// ---------------------------------------------------------------------------
// Errors.

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy file: {source}", .file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: unsupported policy file extension; use .toml, .yaml or .yml",
        .file.display()
    )]
    UnsupportedFormat { file: PathBuf },
    /// The file is not well-formed TOML or YAML.
    #[error("{}: {message}", FileName(.file.as_deref()))]
    Syntax {
        file: Option<PathBuf>,
        message: String,
    },
    /// The file is well-formed but says something wrong: one entry per problem.
    #[error("{}: {}", FileName(.file.as_deref()), Problems(.problems))]
    Invalid {
        file: Option<PathBuf>,
        problems: Vec<PolicyProblem>,
    },
}

impl PolicyError {
    fn in_file(self, path: &Path) -> PolicyError {
        match self {
            PolicyError::Syntax { message, .. } => PolicyError::Syntax {
                file: Some(path.to_owned()),
                message,
            },
            PolicyError::Invalid { problems, .. } => PolicyError::Invalid {
                file: Some(path.to_owned()),
                problems,
            },
            other => other,
        }
    }

    fn invalid(problems: Vec<PolicyProblem>) -> PolicyError {
        PolicyError::Invalid {
            file: None,
            problems,
        }
    }
}

/// One problem in a policy file: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// `tenants.payments.caps.maxCpu`; `(top level)` for the document.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

struct FileName<'a>(Option<&'a Path>);

impl fmt::Display for FileName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("policy"),
        }
    }
}

struct Problems<'a>(&'a [PolicyProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The file format.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    defaults: Option<InheritedFile>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InheritedFile {
    #[serde(default)]
    caps: CapsFile,
    #[serde(default)]
    defaults: DefaultsFile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TenantFile {
    namespace: String,
    allowed_destinations: Vec<String>,
    #[serde(default)]
    registry_secret: Option<String>,
    #[serde(default)]
    git_credentials: Option<GitCredentialsFile>,
    #[serde(default)]
    s3_credentials: Option<S3CredentialsFile>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    cache_repo: Option<String>,
    #[serde(default)]
    caps: CapsFile,
    #[serde(default)]
    defaults: DefaultsFile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitCredentialsFile {
    secret: String,
    #[serde(default = "default_username_key")]
    username_key: String,
    #[serde(default = "default_password_key")]
    password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct S3CredentialsFile {
    secret: String,
    #[serde(default = "default_access_key_id_key")]
    access_key_id_key: String,
    #[serde(default = "default_secret_access_key_key")]
    secret_access_key_key: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
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
struct CapsFile {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_timeout_seconds: Option<u64>,
    #[serde(default)]
    max_cpu: Option<QuantityText>,
    #[serde(default)]
    max_memory: Option<QuantityText>,
    #[serde(default)]
    max_images: Option<usize>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultsFile {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    cpu: Option<QuantityText>,
    #[serde(default)]
    memory: Option<QuantityText>,
}

/// A quantity written as a string (`"500m"`) or a bare number (`2`).
#[derive(Clone)]
struct QuantityText(String);

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

// ---------------------------------------------------------------------------
// Loading.

impl Policy {
    /// Loads a policy file; the extension (`.toml`, `.yaml`, `.yml`) picks
    /// the format.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
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
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
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

    /// The no-policy-file case: one `default` tenant that builds in
    /// `namespace`, may push to any destination, and has the built-in caps
    /// and defaults.
    pub fn single_tenant(namespace: &str) -> Policy {
        let tenant = Tenant {
            namespace: namespace.to_owned(),
            allowed_destinations: vec![DestinationPrefix::Any],
            registry_secret: None,
            git_credentials: None,
            s3_credentials: None,
            service_account: DEFAULT_SERVICE_ACCOUNT.to_owned(),
            cache_repo: None,
            caps: Caps {
                max_attempts: builtin::MAX_ATTEMPTS,
                max_timeout_seconds: builtin::MAX_TIMEOUT_SECONDS,
                max_cpu: builtin_quantity(builtin::MAX_CPU),
                max_memory: builtin_quantity(builtin::MAX_MEMORY),
                max_images: builtin::MAX_IMAGES,
            },
            defaults: Defaults {
                attempts: builtin::ATTEMPTS,
                timeout_seconds: builtin::TIMEOUT_SECONDS,
                cpu: builtin_quantity(builtin::CPU),
                memory: builtin_quantity(builtin::MEMORY),
            },
        };
        Policy {
            tenants: BTreeMap::from([(DEFAULT_TENANT.to_owned(), tenant)]),
        }
    }

    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Every namespace builds may run in (the worker watches each).
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.tenants.values().map(|t| t.namespace.clone()).collect()
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

    // -----------------------------------------------------------------------
    // Admission.

    /// Checks a (validated) request against the tenant's policy and returns
    /// what it is granted, or every violation at once.
    ///
    /// `tenant` is the AMQP `user_id` of the request, if it had one.
    pub fn admit(
        &self,
        tenant: Option<&str>,
        req: &BuildRequest,
    ) -> Result<Admission, Vec<ValidationError>> {
        let Some((name, t)) = self.resolve_tenant(tenant) else {
            let reason = match tenant {
                Some(user) => format!(
                    "tenant {} has no policy on this worker (and there is no \"{DEFAULT_TENANT}\" tenant); ask the Kiln operators to add it",
                    quote(user)
                ),
                None => format!(
                    "the request names no tenant (no AMQP user_id) and there is no \"{DEFAULT_TENANT}\" tenant; publish with user_id set"
                ),
            };
            return Err(vec![ValidationError::new(ROOT_PATH, reason)]);
        };
        let who = match tenant {
            Some(user) if user != name => {
                format!("tenant {} (\"{DEFAULT_TENANT}\" policy)", quote(user))
            }
            _ => format!("tenant {}", quote(name)),
        };
        let caps = &t.caps;
        let mut errs = Vec::new();

        if let Some(secs) = req.timeout_seconds
            && secs > caps.max_timeout_seconds
        {
            errs.push(ValidationError::new(
                "timeoutSeconds",
                format!(
                    "{secs} seconds is more than the {} allowed for {who}",
                    caps.max_timeout_seconds
                ),
            ));
        }
        if let Some(n) = req.retry.as_ref().and_then(|r| r.max_attempts)
            && n > caps.max_attempts
        {
            errs.push(ValidationError::new(
                "retry.maxAttempts",
                format!(
                    "{n} attempts is more than the {} allowed for {who}",
                    caps.max_attempts
                ),
            ));
        }
        if req.images.len() > caps.max_images {
            errs.push(ValidationError::new(
                "images",
                format!(
                    "{} images is more than the {} per request allowed for {who}; split the build",
                    req.images.len(),
                    caps.max_images
                ),
            ));
        }

        let mut resources = Vec::with_capacity(req.images.len());
        let mut uses_git = false;
        let mut uses_s3 = false;
        for (i, image) in req.images.iter().enumerate() {
            uses_git |= image.context.git.is_some();
            uses_s3 |= image.context.s3.is_some();
            for (j, dest) in image.destinations.iter().enumerate() {
                if let Some(reason) = t.destination_problem(dest, &who) {
                    errs.push(ValidationError::new(
                        format!("images[{i}].destinations[{j}]"),
                        reason,
                    ));
                }
            }
            let requested = image.resources.as_ref();
            let cpu = check_quantity(
                &mut errs,
                format!("images[{i}].resources.cpu"),
                requested.and_then(|r| r.cpu.as_deref()),
                &t.defaults.cpu,
                &caps.max_cpu,
                "CPU",
                &who,
            );
            let memory = check_quantity(
                &mut errs,
                format!("images[{i}].resources.memory"),
                requested.and_then(|r| r.memory.as_deref()),
                &t.defaults.memory,
                &caps.max_memory,
                "memory",
                &who,
            );
            resources.push(ResourceQuantities { cpu, memory });
        }

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Admission {
            tenant: name.to_owned(),
            namespace: t.namespace.clone(),
            max_attempts: req
                .retry
                .as_ref()
                .and_then(|r| r.max_attempts)
                .unwrap_or(t.defaults.attempts),
            timeout: Duration::from_secs(req.timeout_seconds.unwrap_or(t.defaults.timeout_seconds)),
            service_account: t.service_account.clone(),
            registry_secret: t.registry_secret.clone(),
            git_credentials: t.git_credentials.clone().filter(|_| uses_git),
            s3_credentials: t.s3_credentials.clone().filter(|_| uses_s3),
            cache_repo: t.cache_repo.clone(),
            resources,
        })
    }

    fn resolve_tenant(&self, tenant: Option<&str>) -> Option<(&str, &Tenant)> {
        tenant
            .and_then(|n| self.tenants.get_key_value(n))
            .or_else(|| self.tenants.get_key_value(DEFAULT_TENANT))
            .map(|(k, v)| (k.as_str(), v))
    }
}

impl Tenant {
    /// Why `dest` may not be pushed to by this tenant, if it may not.
    fn destination_problem(&self, dest: &str, who: &str) -> Option<String> {
        if self.allowed_destinations.contains(&DestinationPrefix::Any) {
            return None;
        }
        let reference = match kiln_protocol::parse_image_reference(dest) {
            Ok(r) => r,
            Err(reason) => {
                return Some(format!(
                    "{} is not a valid image reference: {reason}",
                    quote(dest)
                ));
            }
        };
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        if self
            .allowed_destinations
            .iter()
            .any(|p| p.allows(&repository))
        {
            return None;
        }
        let normalised = reference.to_string();
        let shown = if normalised == dest {
            dest.to_owned()
        } else {
            format!("{dest} ({normalised})")
        };
        let allowed: Vec<String> = self
            .allowed_destinations
            .iter()
            .map(ToString::to_string)
            .collect();
        Some(format!(
            "{shown} is not an allowed destination for {who}; allowed prefixes: {}",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ))
    }
}

/// The quantity an image gets (`requested` or the default), recording a
/// violation when the request asks for more than the cap or for something
/// that is not a quantity.
fn check_quantity(
    errs: &mut Vec<ValidationError>,
    path: String,
    requested: Option<&str>,
    default: &Quantity,
    cap: &Quantity,
    what: &str,
    who: &str,
) -> String {
    let Some(text) = requested else {
        return default.text.clone();
    };
    match Quantity::parse(text) {
        Ok(q) if q > *cap => errs.push(ValidationError::new(
            path,
            format!(
                "{} is more than the {cap} {what} allowed for {who}",
                quote(text)
            ),
        )),
        Ok(_) => {}
        Err(reason) => errs.push(ValidationError::new(path, reason)),
    }
    text.trim().to_owned()
}

fn builtin_quantity(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|_| Quantity {
        text: text.to_owned(),
        nanos: 0,
    })
}

// ---------------------------------------------------------------------------
// Resolution: inheritance, and every check a file must pass.

/// Where a cap or default came from, least specific first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Builtin,
    Top,
    Tenant,
}

/// A value together with the level and field path it came from.
struct Sourced<T> {
    value: T,
    level: Level,
    path: String,
}

fn pick<T: Clone>(
    tenant: Option<&T>,
    tenant_path: &str,
    top: Option<&T>,
    top_path: &str,
    builtin: T,
) -> Sourced<T> {
    if let Some(v) = tenant {
        Sourced {
            value: v.clone(),
            level: Level::Tenant,
            path: tenant_path.to_owned(),
        }
    } else if let Some(v) = top {
        Sourced {
            value: v.clone(),
            level: Level::Top,
            path: top_path.to_owned(),
        }
    } else {
        Sourced {
            value: builtin,
            level: Level::Builtin,
            path: String::new(),
        }
    }
}

struct Resolver {
    problems: Vec<PolicyProblem>,
}

impl Resolver {
    fn problem(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(PolicyProblem {
            path: path.into(),
            reason: reason.into(),
        });
    }

    fn quantity(&mut self, q: Sourced<QuantityText>) -> Sourced<Quantity> {
        let value = match Quantity::parse(&q.value.0) {
            Ok(v) => v,
            Err(reason) => {
                self.problem(q.path.clone(), reason);
                builtin_quantity("1")
            }
        };
        Sourced {
            value,
            level: q.level,
            path: q.path,
        }
    }

    fn at_least_one<T: PartialOrd + From<u8> + Copy>(&mut self, v: &Sourced<T>) {
        if v.level != Level::Builtin && v.value < T::from(1) {
            self.problem(v.path.clone(), "must be at least 1");
        }
    }

    /// The effective default: an error when it exceeds a cap of the same or a
    /// less specific level, lowered to the cap when the cap is more specific.
    fn bounded<T: PartialOrd + Clone + fmt::Display>(
        &mut self,
        default: Sourced<T>,
        cap: &Sourced<T>,
        cap_name: &str,
    ) -> T {
        if default.value <= cap.value {
            return default.value;
        }
        if default.level >= cap.level {
            let cap_where = if cap.level == Level::Builtin {
                format!("the built-in {cap_name}")
            } else {
                cap.path.clone()
            };
            self.problem(
                default.path.clone(),
                format!(
                    "{} is more than {cap_where} ({}); lower the default or raise the cap",
                    default.value, cap.value
                ),
            );
            default.value
        } else {
            cap.value.clone()
        }
    }

    /// Checks a Kubernetes object name: a DNS label for namespaces, a DNS
    /// subdomain for the rest.
    fn name(&mut self, path: String, value: &str, what: &str, check: fn(&str) -> bool) {
        if !check(value) {
            let rule = if what.starts_with("namespace") {
                "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            } else {
                "lowercase letters, digits, '-' and '.', at most 253"
            };
            self.problem(
                path,
                format!("{} is not a valid {what} ({rule})", quote(value)),
            );
        }
    }
}

fn resolve(file: PolicyFile) -> Result<Policy, PolicyError> {
    let mut r = Resolver {
        problems: Vec::new(),
    };
    if file.tenants.is_empty() {
        r.problem(
            "tenants",
            "the policy defines no tenants; add at least one (\"default\" applies to every user without its own)",
        );
    }
    let top = file.defaults.unwrap_or_default();
    let mut tenants = BTreeMap::new();
    for (name, tf) in file.tenants {
        let base = key("tenants", &name);
        if name.is_empty() {
            r.problem(base.clone(), "a tenant name must not be empty");
        }
        let tenant = resolve_tenant(&mut r, &base, tf, &top);
        tenants.insert(name, tenant);
    }
    if r.problems.is_empty() {
        Ok(Policy { tenants })
    } else {
        Err(PolicyError::invalid(r.problems))
    }
}

fn resolve_tenant(r: &mut Resolver, base: &str, tf: TenantFile, top: &InheritedFile) -> Tenant {
    r.name(
        format!("{base}.namespace"),
        &tf.namespace,
        "namespace name",
        is_dns1123_label,
    );

    if tf.allowed_destinations.is_empty() {
        r.problem(
            format!("{base}.allowedDestinations"),
            "list at least one prefix (\"*\" allows any destination)",
        );
    }
    let mut allowed = Vec::new();
    for (i, p) in tf.allowed_destinations.iter().enumerate() {
        match DestinationPrefix::parse(p) {
            Ok(p) => allowed.push(p),
            Err(reason) => r.problem(format!("{base}.allowedDestinations[{i}]"), reason),
        }
    }

    if let Some(s) = &tf.registry_secret {
        r.name(
            format!("{base}.registrySecret"),
            s,
            "Secret name",
            is_dns1123_subdomain,
        );
    }
    let git = tf.git_credentials.map(|g| {
        let p = format!("{base}.gitCredentials");
        r.name(
            format!("{p}.secret"),
            &g.secret,
            "Secret name",
            is_dns1123_subdomain,
        );
        check_secret_key(r, format!("{p}.usernameKey"), &g.username_key);
        check_secret_key(r, format!("{p}.passwordKey"), &g.password_key);
        GitCredentials {
            secret: g.secret,
            username_key: g.username_key,
            password_key: g.password_key,
        }
    });
    let s3 = tf.s3_credentials.map(|s| {
        let p = format!("{base}.s3Credentials");
        r.name(
            format!("{p}.secret"),
            &s.secret,
            "Secret name",
            is_dns1123_subdomain,
        );
        check_secret_key(r, format!("{p}.accessKeyIdKey"), &s.access_key_id_key);
        check_secret_key(
            r,
            format!("{p}.secretAccessKeyKey"),
            &s.secret_access_key_key,
        );
        if let Some(region) = &s.region
            && !is_region(region)
        {
            r.problem(
                format!("{p}.region"),
                format!(
                    "{} is not a region name (e.g. \"eu-west-1\")",
                    quote(region)
                ),
            );
        }
        if let Some(endpoint) = &s.endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            r.problem(
                format!("{p}.endpoint"),
                format!(
                    "{} must be an http(s) URL, e.g. \"https://minio.example.com\"",
                    quote(endpoint)
                ),
            );
        }
        S3Credentials {
            secret: s.secret,
            access_key_id_key: s.access_key_id_key,
            secret_access_key_key: s.secret_access_key_key,
            region: s.region,
            endpoint: s.endpoint,
        }
    });
    let service_account = match tf.service_account_name {
        Some(sa) => {
            r.name(
                format!("{base}.serviceAccountName"),
                &sa,
                "ServiceAccount name",
                is_dns1123_subdomain,
            );
            sa
        }
        None => DEFAULT_SERVICE_ACCOUNT.to_owned(),
    };
    if let Some(repo) = &tf.cache_repo
        && let Some(reason) = cache_repo_problem(repo)
    {
        r.problem(format!("{base}.cacheRepo"), reason);
    }

    // Caps and defaults, field by field.
    let (tc, td) = (&tf.caps, &tf.defaults);
    let (gc, gd) = (&top.caps, &top.defaults);
    let tcp = format!("{base}.caps");
    let tdp = format!("{base}.defaults");
    let max_attempts = pick(
        tc.max_attempts.as_ref(),
        &format!("{tcp}.maxAttempts"),
        gc.max_attempts.as_ref(),
        "defaults.caps.maxAttempts",
        builtin::MAX_ATTEMPTS,
    );
    let max_timeout = pick(
        tc.max_timeout_seconds.as_ref(),
        &format!("{tcp}.maxTimeoutSeconds"),
        gc.max_timeout_seconds.as_ref(),
        "defaults.caps.maxTimeoutSeconds",
        builtin::MAX_TIMEOUT_SECONDS,
    );
    let max_images = pick(
        tc.max_images.as_ref(),
        &format!("{tcp}.maxImages"),
        gc.max_images.as_ref(),
        "defaults.caps.maxImages",
        builtin::MAX_IMAGES,
    );
    let max_cpu = pick(
        tc.max_cpu.as_ref(),
        &format!("{tcp}.maxCpu"),
        gc.max_cpu.as_ref(),
        "defaults.caps.maxCpu",
        QuantityText(builtin::MAX_CPU.to_owned()),
    );
    let max_memory = pick(
        tc.max_memory.as_ref(),
        &format!("{tcp}.maxMemory"),
        gc.max_memory.as_ref(),
        "defaults.caps.maxMemory",
        QuantityText(builtin::MAX_MEMORY.to_owned()),
    );
    let attempts = pick(
        td.attempts.as_ref(),
        &format!("{tdp}.attempts"),
        gd.attempts.as_ref(),
        "defaults.defaults.attempts",
        builtin::ATTEMPTS,
    );
    let timeout = pick(
        td.timeout_seconds.as_ref(),
        &format!("{tdp}.timeoutSeconds"),
        gd.timeout_seconds.as_ref(),
        "defaults.defaults.timeoutSeconds",
        builtin::TIMEOUT_SECONDS,
    );
    let cpu = pick(
        td.cpu.as_ref(),
        &format!("{tdp}.cpu"),
        gd.cpu.as_ref(),
        "defaults.defaults.cpu",
        QuantityText(builtin::CPU.to_owned()),
    );
    let memory = pick(
        td.memory.as_ref(),
        &format!("{tdp}.memory"),
        gd.memory.as_ref(),
        "defaults.defaults.memory",
        QuantityText(builtin::MEMORY.to_owned()),
    );
    r.at_least_one(&max_attempts);
    r.at_least_one(&attempts);
    r.at_least_one(&max_timeout);
    r.at_least_one(&timeout);
    r.at_least_one(&max_images);
    let max_cpu = r.quantity(max_cpu);
    let max_memory = r.quantity(max_memory);
    let cpu = r.quantity(cpu);
    let memory = r.quantity(memory);

    let defaults = Defaults {
        attempts: r.bounded(attempts, &max_attempts, "maxAttempts"),
        timeout_seconds: r.bounded(timeout, &max_timeout, "maxTimeoutSeconds"),
        cpu: r.bounded(cpu, &max_cpu, "maxCpu"),
        memory: r.bounded(memory, &max_memory, "maxMemory"),
    };
    Tenant {
        namespace: tf.namespace,
        allowed_destinations: allowed,
        registry_secret: tf.registry_secret,
        git_credentials: git,
        s3_credentials: s3,
        service_account,
        cache_repo: tf.cache_repo,
        caps: Caps {
            max_attempts: max_attempts.value,
            max_timeout_seconds: max_timeout.value,
            max_cpu: max_cpu.value,
            max_memory: max_memory.value,
            max_images: max_images.value,
        },
        defaults,
    }
}

fn check_secret_key(r: &mut Resolver, path: String, k: &str) {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        r.problem(
            path,
            format!(
                "{} is not a valid Secret key (letters, digits, '-', '_' and '.')",
                quote(k)
            ),
        );
    }
}

/// Kaniko's `--cache-repo` is a repository: a reference without tag or digest.
fn cache_repo_problem(repo: &str) -> Option<String> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if repo.contains('@') || (repo.contains('/') && last.contains(':')) {
        return Some(format!(
            "{} must be a repository without tag or digest, e.g. \"registry.example.com/team/cache\"",
            quote(repo)
        ));
    }
    kiln_protocol::parse_image_reference(repo)
        .err()
        .map(|reason| format!("{} is not a valid repository: {reason}", quote(repo)))
}

fn is_region(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// `parent.key` for identifier-like keys, `parent["key"]` otherwise.
fn key(parent: &str, k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{parent}.{k}")
    } else {
        format!("{parent}[{}]", quote(k))
    }
}

/// JSON-quotes a value for a message.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
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

#[cfg(test)]
mod tests;
