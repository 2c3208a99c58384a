//! Tenancy (docs/configuration.md, "The policy file"): who may build what, where, with which
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
//! runtimeClassName = "gvisor"                    # optional sandbox around Kaniko's root
//! allowInsecureS3Endpoint = false                # the default: S3 endpoints must be https
//! buildSecrets = ["npm-token", "ci-keys/pypi"]   # Secrets (or Secret/key) requests may mount as build secrets
//! gitCredentials = { secret = "payments-git", hosts = ["github.com"] }  # usernameKey "username", passwordKey "password" by default
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
//! | `maxEphemeralStorage` | `50Gi` | `ephemeralStorage` | `10Gi` |
//! | `maxImages` | 32 | | |
//! | `maxBuildsInFlight` | 0 (no cap) | | |
//! | `maxLogRetentionSeconds` | none (the worker's `KILN_LOG_RETENTION`) | | |
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
//! need. Git credentials go only to the hosts `gitCredentials.hosts` lists
//! (required): a git context on another host builds without them
//! (`otherHosts = "omit"`, the default) or is refused (`"refuse"`). S3
//! credentials go only to the policy's `endpoint`, which wins over a
//! request's, or to AWS when the policy names none: then a request naming
//! an endpoint is refused. The S3 `region` of the policy is a default for
//! contexts that do not name their own.

mod admit;
mod credentials;
mod file;
mod parse;
mod recheck;
mod resolve;

pub use credentials::{BuildSecretGrant, GitCredentials, OtherHosts, S3Credentials};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub const MAX_EPHEMERAL_STORAGE: &str = "50Gi";
    pub const MAX_IMAGES: usize = 32;
    /// 0: no cap on a tenant's builds in flight.
    pub const MAX_BUILDS_IN_FLIGHT: usize = 0;
    pub const ATTEMPTS: u32 = 3;
    pub const TIMEOUT_SECONDS: u64 = 3_600;
    pub const CPU: &str = "1";
    pub const MEMORY: &str = "2Gi";
    pub const EPHEMERAL_STORAGE: &str = "10Gi";
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
    /// The build pods' `runtimeClassName`.
    pub runtime_class_name: Option<String>,
    /// Whether an `http://` S3 endpoint is allowed.
    pub allow_insecure_s3_endpoint: bool,
    /// The request label keys allowed (`allowedLabelKeys`): exact keys, or
    /// prefixes ending in `/`. `None`: any key but those
    /// [`refused_label_key`] names.
    pub allowed_label_keys: Option<Vec<String>>,
    /// The Secrets (and keys) a request's `secrets` may name
    /// (`buildSecrets`); empty: none.
    pub build_secrets: Vec<BuildSecretGrant>,
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
    pub max_ephemeral_storage: Quantity,
    pub max_images: usize,
    /// Builds of the tenant in flight at once across every worker (0: no
    /// cap). A request over it is parked in RabbitMQ and tried again later,
    /// holding no delivery other tenants need.
    pub max_builds_in_flight: usize,
    /// The longest a kept attempt log of the tenant's builds stays (the
    /// worker's `KILN_LOG_RETENTION` when shorter); `None`: no cap.
    pub max_log_retention_seconds: Option<u64>,
}

/// What a request gets when it does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub attempts: u32,
    pub timeout_seconds: u64,
    pub cpu: Quantity,
    pub memory: Quantity,
    pub ephemeral_storage: Quantity,
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
    /// Only when an image of the request has a git context on a host the
    /// credentials list.
    pub git_credentials: Option<GitCredentials>,
    /// One per image, in request order: `true` when its git context names
    /// a host the tenant's git credentials do not list, so that its pod
    /// goes without them (`otherHosts = "omit"`).
    pub git_credentials_omitted: Vec<bool>,
    /// Only when an image of the request has an S3 context.
    pub s3_credentials: Option<S3Credentials>,
    pub cache_repo: Option<String>,
    /// The build pods' `runtimeClassName`.
    pub runtime_class_name: Option<String>,
    /// One per image, in request order: requests (= limits) with the
    /// tenant's defaults applied.
    pub resources: Vec<ResourceQuantities>,
}

/// CPU and memory of one build pod (requests and limits alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceQuantities {
    pub cpu: String,
    pub memory: String,
    pub ephemeral_storage: String,
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

impl Policy {
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
            runtime_class_name: None,
            allow_insecure_s3_endpoint: false,
            allowed_label_keys: None,
            build_secrets: Vec::new(),
            caps: Caps {
                max_attempts: builtin::MAX_ATTEMPTS,
                max_timeout_seconds: builtin::MAX_TIMEOUT_SECONDS,
                max_cpu: builtin_quantity(builtin::MAX_CPU),
                max_memory: builtin_quantity(builtin::MAX_MEMORY),
                max_ephemeral_storage: builtin_quantity(builtin::MAX_EPHEMERAL_STORAGE),
                max_images: builtin::MAX_IMAGES,
                max_builds_in_flight: builtin::MAX_BUILDS_IN_FLIGHT,
                max_log_retention_seconds: None,
            },
            defaults: Defaults {
                attempts: builtin::ATTEMPTS,
                timeout_seconds: builtin::TIMEOUT_SECONDS,
                cpu: builtin_quantity(builtin::CPU),
                memory: builtin_quantity(builtin::MEMORY),
                ephemeral_storage: builtin_quantity(builtin::EPHEMERAL_STORAGE),
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
}

fn builtin_quantity(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|_| Quantity {
        text: text.to_owned(),
        nanos: 0,
    })
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

#[cfg(test)]
mod tests;
