//! Resolution: a parsed file becomes a [`Policy`]. Each cap and default is
//! the tenant's value, else the top-level `defaults`, else the built-in;
//! every check a file must pass is made here, and all problems are reported
//! together.

use std::collections::BTreeMap;
use std::fmt;

use kiln_protocol::is_dns1123_label;

use super::file::{
    CapsFile, DefaultsFile, GitCredentialsFile, InheritedFile, PolicyFile, QuantityText,
    S3CredentialsFile, TenantFile,
};
use super::{
    BuildSecretGrant, Caps, DEFAULT_SERVICE_ACCOUNT, Defaults, DestinationPrefix, GitCredentials,
    Policy, PolicyError, PolicyProblem, Quantity, S3Credentials, Tenant, builtin, builtin_quantity,
    key, quote,
};

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

/// The value of `field` (`caps.maxAttempts`) for the tenant at `base`: the
/// tenant's own, else the top-level `defaults` one, else the built-in.
fn pick<T: Clone>(
    base: &str,
    field: &str,
    tenant: Option<&T>,
    top: Option<&T>,
    builtin: T,
) -> Sourced<T> {
    let (value, level, path) = match (tenant, top) {
        (Some(v), _) => (v.clone(), Level::Tenant, format!("{base}.{field}")),
        (None, Some(v)) => (v.clone(), Level::Top, format!("defaults.{field}")),
        (None, None) => (builtin, Level::Builtin, String::new()),
    };
    Sourced { value, level, path }
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

pub(super) fn resolve(file: PolicyFile) -> Result<Policy, PolicyError> {
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
    let allowed = r.allowed_destinations(base, &tf.allowed_destinations);
    if let Some(s) = &tf.registry_secret {
        r.secret_name(format!("{base}.registrySecret"), s);
    }
    let git = tf
        .git_credentials
        .map(|g| r.git_credentials(&format!("{base}.gitCredentials"), g));
    let allow_insecure = tf.allow_insecure_s3_endpoint;
    let s3 = tf
        .s3_credentials
        .map(|s| r.s3_credentials(base, s, allow_insecure));
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
        && let Some(reason) = cache_repo_problem(repo, &allowed)
    {
        r.problem(format!("{base}.cacheRepo"), reason);
    }
    let (caps, defaults) = r.limits(base, &tf.caps, &tf.defaults, top);
    if let Some(rc) = &tf.runtime_class_name {
        r.name(
            format!("{base}.runtimeClassName"),
            rc,
            "RuntimeClass name",
            is_dns1123_subdomain,
        );
    }
    Tenant {
        namespace: tf.namespace,
        allowed_destinations: allowed,
        registry_secret: tf.registry_secret,
        git_credentials: git,
        s3_credentials: s3,
        service_account,
        cache_repo: tf.cache_repo,
        runtime_class_name: tf.runtime_class_name,
        allow_insecure_s3_endpoint: allow_insecure,
        allowed_label_keys: tf.allowed_label_keys,
        build_secrets: r.build_secrets(base, &tf.build_secrets),
        caps,
        defaults,
    }
}

/// The tenant's part of a resolution: each group of fields checked, and
/// turned into its resolved form.
impl Resolver {
    fn allowed_destinations(&mut self, base: &str, prefixes: &[String]) -> Vec<DestinationPrefix> {
        if prefixes.is_empty() {
            self.problem(
                format!("{base}.allowedDestinations"),
                "list at least one prefix (\"*\" allows any destination)",
            );
        }
        let mut allowed = Vec::new();
        for (i, p) in prefixes.iter().enumerate() {
            match DestinationPrefix::parse(p) {
                Ok(p) => allowed.push(p),
                Err(reason) => self.problem(format!("{base}.allowedDestinations[{i}]"), reason),
            }
        }
        allowed
    }

    /// `buildSecrets`: each `name` or `name/key`, both valid.
    fn build_secrets(&mut self, base: &str, entries: &[String]) -> Vec<BuildSecretGrant> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let path = format!("{base}.buildSecrets[{i}]");
            let (secret, key) = match e.split_once('/') {
                Some((s, k)) => (s, Some(k)),
                None => (e.as_str(), None),
            };
            let before = self.problems.len();
            self.secret_name(path.clone(), secret);
            if let Some(k) = key {
                self.secret_key(path, k);
            }
            if self.problems.len() == before {
                out.push(BuildSecretGrant {
                    secret: secret.to_owned(),
                    key: key.map(str::to_owned),
                });
            }
        }
        out
    }

    fn secret_name(&mut self, path: String, name: &str) {
        self.name(path, name, "Secret name", is_dns1123_subdomain);
    }

    /// `path` is `tenants.<name>.gitCredentials`.
    fn git_credentials(&mut self, path: &str, g: GitCredentialsFile) -> GitCredentials {
        self.secret_name(format!("{path}.secret"), &g.secret);
        self.secret_key(format!("{path}.usernameKey"), &g.username_key);
        self.secret_key(format!("{path}.passwordKey"), &g.password_key);
        let hosts = self.git_hosts(path, g.hosts);
        GitCredentials {
            secret: g.secret,
            username_key: g.username_key,
            password_key: g.password_key,
            hosts,
            other_hosts: g.other_hosts,
        }
    }

    /// `gitCredentials.hosts`: required, each a lowercase `host` or
    /// `host:port`; `:443` is dropped (it is how a git URL without a port
    /// is compared).
    fn git_hosts(&mut self, path: &str, hosts: Option<Vec<String>>) -> Vec<String> {
        let path = format!("{path}.hosts");
        let Some(hosts) = hosts else {
            self.problem(
                path,
                "is required: list the hosts (\"github.com\", \"git.example.com:8443\") these credentials may be sent to; the executor sends them as Basic auth to the host of every git context that gets them",
            );
            return Vec::new();
        };
        if hosts.is_empty() {
            self.problem(
                path.clone(),
                "lists no host; name at least one, or drop gitCredentials",
            );
        }
        let mut out = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            match git_host_problem(h) {
                Some(reason) => self.problem(format!("{path}[{i}]"), reason),
                None => out.push(h.strip_suffix(":443").unwrap_or(h).to_owned()),
            }
        }
        out
    }

    /// `base` is `tenants.<name>`; a plain-http endpoint needs the tenant's
    /// `allowInsecureS3Endpoint`.
    fn s3_credentials(
        &mut self,
        base: &str,
        s: S3CredentialsFile,
        allow_insecure: bool,
    ) -> S3Credentials {
        let p = format!("{base}.s3Credentials");
        self.secret_name(format!("{p}.secret"), &s.secret);
        self.secret_key(format!("{p}.accessKeyIdKey"), &s.access_key_id_key);
        self.secret_key(format!("{p}.secretAccessKeyKey"), &s.secret_access_key_key);
        if let Some(region) = &s.region
            && !is_region(region)
        {
            self.problem(
                format!("{p}.region"),
                format!(
                    "{} is not a region name (e.g. \"eu-west-1\")",
                    quote(region)
                ),
            );
        }
        if let Some(endpoint) = &s.endpoint
            && let Some(reason) = s3_endpoint_problem(endpoint, allow_insecure, base)
        {
            self.problem(format!("{p}.endpoint"), reason);
        }
        S3Credentials {
            secret: s.secret,
            access_key_id_key: s.access_key_id_key,
            secret_access_key_key: s.secret_access_key_key,
            region: s.region,
            endpoint: s.endpoint,
        }
    }

    /// Caps and defaults, field by field: each is the tenant's (`caps`,
    /// `defaults`), else the top-level one, else built in; a default is then
    /// bounded by its cap.
    fn limits(
        &mut self,
        base: &str,
        caps: &CapsFile,
        defaults: &DefaultsFile,
        top: &InheritedFile,
    ) -> (Caps, Defaults) {
        let q = |text: &str| QuantityText(text.to_owned());
        // `$section` is `caps` or `defaults`: the tenant's parameter and
        // the field of `top` of that name.
        macro_rules! inherit {
            ($section:ident, $name:literal, $field:ident, $builtin:expr) => {
                pick(
                    base,
                    concat!(stringify!($section), ".", $name),
                    $section.$field.as_ref(),
                    top.$section.$field.as_ref(),
                    $builtin,
                )
            };
        }
        // A cap with the default it bounds: the name in the file, the
        // field and the built-in of each.
        macro_rules! capped {
            ($cap:literal, $cap_field:ident, $cap_builtin:expr;
             $default:literal, $default_field:ident, $default_builtin:expr) => {
                (
                    inherit!(caps, $cap, $cap_field, $cap_builtin),
                    inherit!(defaults, $default, $default_field, $default_builtin),
                )
            };
        }
        let (max_attempts, attempts) = capped!(
            "maxAttempts", max_attempts, builtin::MAX_ATTEMPTS;
            "attempts", attempts, builtin::ATTEMPTS
        );
        let (max_timeout, timeout) = capped!(
            "maxTimeoutSeconds", max_timeout_seconds, builtin::MAX_TIMEOUT_SECONDS;
            "timeoutSeconds", timeout_seconds, builtin::TIMEOUT_SECONDS
        );
        let (max_cpu, cpu) = capped!(
            "maxCpu", max_cpu, q(builtin::MAX_CPU);
            "cpu", cpu, q(builtin::CPU)
        );
        let (max_memory, memory) = capped!(
            "maxMemory", max_memory, q(builtin::MAX_MEMORY);
            "memory", memory, q(builtin::MEMORY)
        );
        let (max_storage, storage) = capped!(
            "maxEphemeralStorage", max_ephemeral_storage, q(builtin::MAX_EPHEMERAL_STORAGE);
            "ephemeralStorage", ephemeral_storage, q(builtin::EPHEMERAL_STORAGE)
        );
        let max_images = inherit!(caps, "maxImages", max_images, builtin::MAX_IMAGES);
        let max_in_flight = inherit!(
            caps,
            "maxBuildsInFlight",
            max_builds_in_flight,
            builtin::MAX_BUILDS_IN_FLIGHT
        );
        self.at_least_one(&max_attempts);
        self.at_least_one(&attempts);
        self.at_least_one(&max_timeout);
        self.at_least_one(&timeout);
        self.at_least_one(&max_images);
        let [max_cpu, max_memory, cpu, memory, max_storage, storage] =
            [max_cpu, max_memory, cpu, memory, max_storage, storage].map(|q| self.quantity(q));
        let defaults = Defaults {
            attempts: self.bounded(attempts, &max_attempts, "maxAttempts"),
            timeout_seconds: self.bounded(timeout, &max_timeout, "maxTimeoutSeconds"),
            cpu: self.bounded(cpu, &max_cpu, "maxCpu"),
            memory: self.bounded(memory, &max_memory, "maxMemory"),
            ephemeral_storage: self.bounded(storage, &max_storage, "maxEphemeralStorage"),
        };
        let caps = Caps {
            max_attempts: max_attempts.value,
            max_timeout_seconds: max_timeout.value,
            max_cpu: max_cpu.value,
            max_memory: max_memory.value,
            max_ephemeral_storage: max_storage.value,
            max_images: max_images.value,
            max_builds_in_flight: max_in_flight.value,
            // No built-in: without a cap the worker's KILN_LOG_RETENTION
            // holds. Zero is allowed (keep no logs of this tenant).
            max_log_retention_seconds: caps
                .max_log_retention_seconds
                .or(top.caps.max_log_retention_seconds),
        };
        (caps, defaults)
    }

    fn secret_key(&mut self, path: String, k: &str) {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            self.problem(
                path,
                format!(
                    "{} is not a valid Secret key (letters, digits, '-', '_' and '.')",
                    quote(k)
                ),
            );
        }
    }
}

/// Why an S3 endpoint of the tenant at `base` is refused, if it is.
fn s3_endpoint_problem(endpoint: &str, allow_insecure: bool, base: &str) -> Option<String> {
    if endpoint.starts_with("http://") && !allow_insecure {
        Some(format!(
            "{} is plain http: signed requests and the access key id would travel in clear; use https:// or set {base}.allowInsecureS3Endpoint = true",
            quote(endpoint)
        ))
    } else if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        Some(format!(
            "{} must be an http(s) URL, e.g. \"https://minio.example.com\"",
            quote(endpoint)
        ))
    } else {
        None
    }
}

/// Why `h` is not a host git credentials may be listed for.
fn git_host_problem(h: &str) -> Option<String> {
    if h.contains('*') {
        return Some(format!(
            "{} has a wildcard; list each host (wildcards would send the credentials to hosts nobody chose)",
            quote(h)
        ));
    }
    if h.contains("://") || h.contains('/') {
        return Some(format!(
            "{} is not a host; write the host alone, e.g. \"github.com\" or \"git.example.com:8443\"",
            quote(h)
        ));
    }
    if !super::is_registry_host(h) {
        return Some(format!(
            "{} is not a host name (lowercase letters, digits, '-' and '.', optional :port)",
            quote(h)
        ));
    }
    None
}

/// Kaniko's `--cache-repo` is a repository: a reference without tag or
/// digest, under one of the tenant's allowed destinations (Kaniko pushes
/// cache layers there with the tenant's registry credentials, like any
/// destination).
fn cache_repo_problem(repo: &str, allowed: &[DestinationPrefix]) -> Option<String> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if repo.contains('@') || (repo.contains('/') && last.contains(':')) {
        return Some(format!(
            "{} must be a repository without tag or digest, e.g. \"registry.example.com/team/cache\"",
            quote(repo)
        ));
    }
    let reference = match kiln_protocol::parse_image_reference(repo) {
        Ok(r) => r,
        Err(reason) => {
            return Some(format!(
                "{} is not a valid repository: {reason}",
                quote(repo)
            ));
        }
    };
    let normalised = format!("{}/{}", reference.registry(), reference.repository());
    // With no valid prefix at all, allowedDestinations has its own problem.
    if allowed.is_empty() || allowed.iter().any(|p| p.allows(&normalised)) {
        return None;
    }
    Some(format!(
        "{} is not under the tenant's allowedDestinations: Kaniko pushes cache layers there with the tenant's registry credentials; allow it there or choose a repository under them",
        quote(repo)
    ))
}

fn is_region(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}
