//! `BuildRequest`: what upstream publishes with routing key `build`.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reference::parse_destination;
use crate::validate::{
    ValidationErrors, build_id_problem, field, index, is_dns1123_label, is_identifier,
    is_label_key, is_label_value, key, quote, relative_path_problem,
};
use crate::{
    API_VERSION, MAX_ATTEMPTS_LIMIT, MAX_BUILD_ARG_VALUE_BYTES, MAX_BUILD_ARGS, MAX_DESTINATIONS,
    MAX_IMAGES, MAX_LABELS, MAX_REQUEST_BYTES, MAX_TEMPLATE_ARGS, MAX_TIMEOUT_SECONDS,
};

/// The `kind` of a build request.
pub const BUILD_REQUEST_KIND: &str = "BuildRequest";

/// The Dockerfile path used when an image names neither `dockerfile` nor
/// `dockerfileInline`.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// Label keys under this prefix are set by Kiln on every pod; a request may
/// not set them, or it could make its pods look like another build's.
pub const RESERVED_LABEL_PREFIX: &str = "kiln.dev/";

// Patterns shared by the JSON Schema and the validator (ECMA-262 and Rust
// `regex` agree on these simple forms).
pub(crate) const ID_PATTERN: &str = r"^[A-Za-z0-9._-]{1,128}$";
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
const LABEL_VALUE_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
const IDENTIFIER_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
const GIT_URL_PATTERN: &str = r"^https://[^\s/@]+/\S+$";
/// A full SHA-1 commit: the executor checks out `plumbing.NewHash(commit)`
/// (pkg/buildcontext/git.go), which zero-pads an abbreviated one, and only
/// `plumbing.IsHash` (40 hex) makes `repo#<commit>` a commit.
const COMMIT_PATTERN: &str = r"^[0-9a-f]{40}$";
const BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
const REGION_PATTERN: &str = r"^[a-z0-9-]{1,32}$";
const ENDPOINT_PATTERN: &str = r"^https?://[^\s/@]+(/\S*)?$";
const TARBALL_URL_PATTERN: &str = r"^https://[^\s/@?#]+/[^\s?#]*\.(tar\.gz|tgz)([?#]\S*)?$";
const TARGET_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$";
const PLATFORM_PATTERN: &str = r"^[a-z0-9_]{1,32}/[a-z0-9_]{1,32}(/[a-z0-9_.]{1,32})?$";
/// The Kubernetes quantity grammar without the minus sign.
const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static pattern compiles")
}

static COMMIT_RE: LazyLock<Regex> = LazyLock::new(|| re(COMMIT_PATTERN));
static BUCKET_RE: LazyLock<Regex> = LazyLock::new(|| re(BUCKET_PATTERN));
static REGION_RE: LazyLock<Regex> = LazyLock::new(|| re(REGION_PATTERN));
static TARGET_RE: LazyLock<Regex> = LazyLock::new(|| re(TARGET_PATTERN));
static PLATFORM_RE: LazyLock<Regex> = LazyLock::new(|| re(PLATFORM_PATTERN));
static QUANTITY_RE: LazyLock<Regex> = LazyLock::new(|| re(QUANTITY_PATTERN));
static SCP_RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+$"));
/// Why ssh and scp-style URLs are refused rather than passed on.
const NO_SSH: &str = "Kiln mounts no SSH key or known_hosts into the build, so the clone could never authenticate; use the https:// URL of the repository (the tenant's git Secret gives the credentials)";

/// A request to build one or more images, published to `kiln.requests` with
/// routing key `build`. The `id` is the idempotency key: the same id twice is
/// one build.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Kiln BuildRequest")]
pub struct BuildRequest {
    /// Always `kiln/v1`.
    #[schemars(extend("const" = "kiln/v1"))]
    pub api_version: String,
    /// Always `BuildRequest`.
    #[schemars(extend("const" = "BuildRequest"))]
    pub kind: String,
    /// Idempotency key chosen by the publisher: 1-128 of `[A-Za-z0-9._-]`.
    #[schemars(pattern(ID_PATTERN))]
    pub id: String,
    /// Application the images belong to (a DNS label), copied onto events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL_PATTERN))]
    pub app: Option<String>,
    /// Component of the application (a DNS label), copied onto events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL_PATTERN))]
    pub component: Option<String>,
    /// Kubernetes labels copied onto the build pods and events. Keys under
    /// `kiln.dev/` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "propertyNames" = { "pattern": LABEL_KEY_PATTERN, "maxLength": 317 },
        "additionalProperties" = { "type": "string", "pattern": LABEL_VALUE_PATTERN }
    ))]
    pub labels: BTreeMap<String, String>,
    /// Deadline of the whole build in seconds (1-86400); the worker's policy
    /// gives the default and may lower the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400))]
    pub timeout_seconds: Option<u64>,
    /// Retry settings for failed image builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// The images to build, in parallel (1-32).
    #[schemars(length(min = 1, max = 32))]
    pub images: Vec<ImageSpec>,
}

/// How often a failed image build may be attempted.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per image including the first (1-10); the worker's policy
    /// gives the default and may lower the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: Option<u32>,
}

/// One image to build and push.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    /// Name of the image within the request: a DNS label, unique in the request.
    #[schemars(pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// Where the build context comes from: exactly one of `git`, `s3`, `url`.
    pub context: BuildContext,
    /// Path of the Dockerfile inside the context (default `Dockerfile`);
    /// relative, without `..`. Exclusive with `dockerfileInline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^[^/]"))]
    pub dockerfile: Option<String>,
    /// A Dockerfile as a Jinja template, rendered with `templateArgs`
    /// (undefined names are errors). Exclusive with `dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub dockerfile_inline: Option<String>,
    /// Values for the `dockerfileInline` template; only allowed with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "propertyNames" = { "pattern": IDENTIFIER_PATTERN, "maxLength": 256 }
    ))]
    pub template_args: BTreeMap<String, serde_json::Value>,
    /// Dockerfile `ARG` values (names `[A-Za-z_][A-Za-z0-9_]*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "propertyNames" = { "pattern": IDENTIFIER_PATTERN, "maxLength": 256 },
        "additionalProperties" = { "type": "string", "maxLength": 32_768 }
    ))]
    pub build_args: BTreeMap<String, String>,
    /// Build stage to stop at (`FROM ... AS <target>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(TARGET_PATTERN))]
    pub target: Option<String>,
    /// Image references to push to (1-8, tags only, lowercase registry and
    /// repository), each allowed by the tenant's policy.
    #[schemars(length(min = 1, max = 8), extend("uniqueItems" = true), inner(length(min = 1, max = 512)))]
    pub destinations: Vec<String>,
    /// Target platform `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(PLATFORM_PATTERN))]
    pub platform: Option<String>,
    /// Use the layer cache (the cache repository comes from the worker's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// Resources for the build pod; the worker's policy caps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Requests (and limits) of the build pod, as Kubernetes quantities.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU as a positive Kubernetes quantity (`500m`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(QUANTITY_PATTERN))]
    pub cpu: Option<String>,
    /// Memory as a positive Kubernetes quantity (`512Mi`, `2Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(QUANTITY_PATTERN))]
    pub memory: Option<String>,
    /// Ephemeral storage (node disk: the unpacked context, the layers
    /// Kaniko snapshots) as a positive Kubernetes quantity (`10Gi`); the
    /// pod is evicted when it writes more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(QUANTITY_PATTERN))]
    pub ephemeral_storage: Option<String>,
}

// A struct rather than an enum so the JSON stays `{"git": {...}}` and an
// unknown key is reported by name; `validate` enforces "exactly one".
/// Where the build context comes from: exactly one of `git`, `s3` or `url`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct BuildContext {
    /// A git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitContext>,
    /// A tar.gz object in S3 (or an S3-compatible store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Context>,
    /// An https URL of a `.tar.gz`/`.tgz` archive (a presigned URL is fine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(TARBALL_URL_PATTERN), length(max = 4096))]
    pub url: Option<String>,
}

/// The one context source of a [`BuildContext`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContextKind<'a> {
    Git(&'a GitContext),
    S3(&'a S3Context),
    Url(&'a str),
}

impl BuildContext {
    /// The context source, or `None` unless exactly one is set (which
    /// validation guarantees for a parsed request).
    pub fn kind(&self) -> Option<ContextKind<'_>> {
        match (&self.git, &self.s3, &self.url) {
            (Some(g), None, None) => Some(ContextKind::Git(g)),
            (None, Some(s), None) => Some(ContextKind::S3(s)),
            (None, None, Some(u)) => Some(ContextKind::Url(u)),
            _ => None,
        }
    }

    fn set_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.git.is_some() {
            v.push("git");
        }
        if self.s3.is_some() {
            v.push("s3");
        }
        if self.url.is_some() {
            v.push("url");
        }
        v
    }
}

/// A git repository checkout.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitContext {
    /// `https://host/path` (ssh and scp-style URLs are refused: no key can
    /// be supplied). Credentials never go in the URL: they come from the tenant's Secret.
    #[schemars(pattern(GIT_URL_PATTERN), length(max = 2048))]
    pub url: String,
    /// Branch, tag or full ref to check out (`main`, `v1.2`, `refs/heads/main`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 255),
        pattern(r"^[^-\s~^:?*\[\\#][^\s~^:?*\[\\#]*$")
    )]
    pub git_ref: Option<String>,
    /// Commit to build (all 40 lowercase hex digits); pins the build when a
    /// branch moves. Without `ref`, the default branch is cloned and the
    /// commit fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(COMMIT_PATTERN))]
    pub commit: Option<String>,
    /// Directory inside the repository to use as the context; relative, no `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^[^/]"))]
    pub sub_path: Option<String>,
}

/// A tar.gz build context in an S3 bucket.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Context {
    /// Bucket name (3-63 of lowercase letters, digits, `.` and `-`).
    #[schemars(pattern(BUCKET_PATTERN))]
    pub bucket: String,
    /// Object key of the tar.gz archive.
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    /// Region (`eu-west-1`); the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(REGION_PATTERN))]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (`https://minio.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(ENDPOINT_PATTERN), length(max = 2048))]
    pub endpoint: Option<String>,
}

impl BuildRequest {
    /// `retry.maxAttempts`, if the request set it.
    pub fn max_attempts(&self) -> Option<u32> {
        self.retry.as_ref().and_then(|r| r.max_attempts)
    }

    /// Checks every rule of the wire contract and reports every problem.
    /// Tenant policy (allowed destinations, caps) is the worker's business.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        check_header(&mut errs, &self.api_version, &self.kind, BUILD_REQUEST_KIND);
        if let Some(p) = build_id_problem(&self.id) {
            errs.push("id", p);
        }
        check_dns_label_opt(&mut errs, "app", self.app.as_deref());
        check_dns_label_opt(&mut errs, "component", self.component.as_deref());
        check_labels(&mut errs, &self.labels);
        if let Some(t) = self.timeout_seconds
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            errs.push(
                "timeoutSeconds",
                format!("{t} is out of range; use 1 to {MAX_TIMEOUT_SECONDS} seconds"),
            );
        }
        if let Some(n) = self.max_attempts()
            && !(1..=MAX_ATTEMPTS_LIMIT).contains(&n)
        {
            errs.push(
                "retry.maxAttempts",
                format!("{n} is out of range; use 1 to {MAX_ATTEMPTS_LIMIT}"),
            );
        }
        if self.images.is_empty() {
            errs.push("images", "at least one image is required");
        } else if self.images.len() > MAX_IMAGES {
            errs.push(
                "images",
                format!(
                    "has {} images; the limit is {MAX_IMAGES}, split the build",
                    self.images.len()
                ),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, image) in self.images.iter().enumerate() {
            let path = index("images", i);
            if !is_dns1123_label(&image.name) {
                // reported by image.check
            } else if let Some(&first) = seen.get(image.name.as_str()) {
                errs.push(
                    field(&path, "name"),
                    format!(
                        "{} is already used by images[{first}]; image names must be unique",
                        quote(&image.name)
                    ),
                );
            } else {
                seen.insert(&image.name, i);
            }
            image.check(&mut errs, &path);
        }
        if errs.is_empty()
            && let Ok(bytes) = serde_json::to_vec(self)
            && bytes.len() > MAX_REQUEST_BYTES
        {
            errs.push(
                crate::validate::ROOT_PATH,
                format!(
                    "the request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                    bytes.len()
                ),
            );
        }
        errs.into_result()
    }
}

impl ImageSpec {
    /// The Dockerfile path Kaniko is given when the image has no inline
    /// Dockerfile.
    pub fn dockerfile_path(&self) -> &str {
        self.dockerfile.as_deref().unwrap_or(DEFAULT_DOCKERFILE)
    }

    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if !is_dns1123_label(&self.name) {
            errs.push(field(path, "name"), dns_label_reason(&self.name));
        }
        self.context.check(errs, &field(path, "context"));
        self.check_dockerfile(errs, path);
        self.check_template_args(errs, path);
        self.check_build_args(errs, path);
        if let Some(t) = &self.target
            && !TARGET_RE.is_match(t)
        {
            errs.push(
                field(path, "target"),
                format!(
                    "{} is not a valid build stage name; use a letter followed by letters, digits, '_', '.' or '-' (at most 128)",
                    quote(t)
                ),
            );
        }
        self.check_destinations(errs, path);
        if let Some(p) = &self.platform
            && !PLATFORM_RE.is_match(p)
        {
            errs.push(
                field(path, "platform"),
                format!(
                    "{} is not a valid platform; use os/arch or os/arch/variant in lowercase, e.g. linux/amd64 or linux/arm64/v8",
                    quote(p)
                ),
            );
        }
        self.check_resources(errs, path);
    }

    /// `dockerfile` or `dockerfileInline`, not both, and each well-formed.
    fn check_dockerfile(&self, errs: &mut ValidationErrors, path: &str) {
        match (&self.dockerfile, &self.dockerfile_inline) {
            (Some(_), Some(_)) => {
                errs.push(path, "set either dockerfile or dockerfileInline, not both");
            }
            (Some(d), None) => {
                if let Some(p) = relative_path_problem(d) {
                    errs.push(field(path, "dockerfile"), p);
                }
            }
            (None, Some(inline)) => {
                if inline.trim().is_empty() {
                    errs.push(
                        field(path, "dockerfileInline"),
                        "must not be empty; give the Dockerfile template",
                    );
                } else if inline.contains('\0') {
                    errs.push(
                        field(path, "dockerfileInline"),
                        "contains a NUL character; remove it",
                    );
                }
            }
            (None, None) => {}
        }
    }

    /// `templateArgs`: only with an inline Dockerfile, few, with identifier names.
    fn check_template_args(&self, errs: &mut ValidationErrors, path: &str) {
        let ta_path = field(path, "templateArgs");
        if !self.template_args.is_empty() && self.dockerfile_inline.is_none() {
            errs.push(
                &ta_path,
                "templateArgs only apply to dockerfileInline; remove them or use dockerfileInline",
            );
        }
        if self.template_args.len() > MAX_TEMPLATE_ARGS {
            errs.push(
                &ta_path,
                format!(
                    "has {} entries; the limit is {MAX_TEMPLATE_ARGS}",
                    self.template_args.len()
                ),
            );
        }
        for k in self.template_args.keys() {
            if !is_identifier(k) || k.len() > 256 {
                errs.push(
                    key(&ta_path, k),
                    format!(
                        "{} is not a valid template variable name; use letters, digits and '_', not starting with a digit (at most 256)",
                        quote(k)
                    ),
                );
            }
        }
    }

    /// `buildArgs`: few, identifier names, bounded values without NUL.
    fn check_build_args(&self, errs: &mut ValidationErrors, path: &str) {
        let ba_path = field(path, "buildArgs");
        if self.build_args.len() > MAX_BUILD_ARGS {
            errs.push(
                &ba_path,
                format!(
                    "has {} entries; the limit is {MAX_BUILD_ARGS}",
                    self.build_args.len()
                ),
            );
        }
        for (k, v) in &self.build_args {
            let p = key(&ba_path, k);
            if !is_identifier(k) || k.len() > 256 {
                errs.push(
                    &p,
                    format!(
                        "{} is not a valid build argument name; use letters, digits and '_', not starting with a digit (at most 256)",
                        quote(k)
                    ),
                );
            }
            if v.len() > MAX_BUILD_ARG_VALUE_BYTES {
                errs.push(
                    &p,
                    format!(
                        "the value is {} bytes; the limit is {MAX_BUILD_ARG_VALUE_BYTES}",
                        v.len()
                    ),
                );
            } else if v.contains('\0') {
                errs.push(&p, "the value contains a NUL character; remove it");
            }
        }
    }

    /// `destinations`: 1 to the limit, valid references, no image twice.
    fn check_destinations(&self, errs: &mut ValidationErrors, path: &str) {
        let d_path = field(path, "destinations");
        if self.destinations.is_empty() {
            errs.push(&d_path, "at least one destination is required");
        } else if self.destinations.len() > MAX_DESTINATIONS {
            errs.push(
                &d_path,
                format!(
                    "has {} destinations; the limit is {MAX_DESTINATIONS}",
                    self.destinations.len()
                ),
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let p = index(&d_path, i);
            match parse_destination(d) {
                Ok(r) => {
                    if let Some(first) = seen.get(&r.to_string()) {
                        errs.push(
                            p,
                            format!(
                                "{} is the same image as destinations[{first}]; remove the duplicate",
                                quote(d)
                            ),
                        );
                    } else {
                        seen.insert(r.to_string(), i);
                    }
                }
                Err(reason) => errs.push(
                    p,
                    format!("{} is not a valid image reference: {reason}", quote(d)),
                ),
            }
        }
    }

    /// `resources`: each a Kubernetes quantity.
    fn check_resources(&self, errs: &mut ValidationErrors, path: &str) {
        if let Some(r) = &self.resources {
            let rp = field(path, "resources");
            check_quantity(errs, &field(&rp, "cpu"), r.cpu.as_deref(), "500m or 2");
            check_quantity(
                errs,
                &field(&rp, "memory"),
                r.memory.as_deref(),
                "512Mi or 2Gi",
            );
            check_quantity(
                errs,
                &field(&rp, "ephemeralStorage"),
                r.ephemeral_storage.as_deref(),
                "10Gi",
            );
        }
    }
}

impl BuildContext {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        let set = self.set_names();
        match set.len() {
            0 => errs.push(path, "set exactly one of git, s3 or url"),
            1 => {}
            _ => errs.push(
                path,
                format!(
                    "set exactly one of git, s3 or url, not {}",
                    set.join(" and ")
                ),
            ),
        }
        if let Some(g) = &self.git {
            g.check(errs, &field(path, "git"));
        }
        if let Some(s) = &self.s3 {
            s.check(errs, &field(path, "s3"));
        }
        if let Some(u) = &self.url {
            check_tarball_url(errs, &field(path, "url"), u);
        }
    }
}

impl GitContext {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if let Some(reason) = git_url_problem(&self.url) {
            errs.push(field(path, "url"), reason);
        }
        if let Some(r) = &self.git_ref
            && let Some(reason) = git_ref_problem(r)
        {
            errs.push(field(path, "ref"), reason);
        }
        if let Some(c) = &self.commit
            && !COMMIT_RE.is_match(c)
        {
            errs.push(
                field(path, "commit"),
                format!(
                    "{} is not a full commit hash; give all 40 lowercase hex digits (the executor checks out no abbreviated commit)",
                    quote(c)
                ),
            );
        }
        if let Some(s) = &self.sub_path
            && let Some(reason) = relative_path_problem(s)
        {
            errs.push(field(path, "subPath"), reason);
        }
    }
}

impl S3Context {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if !BUCKET_RE.is_match(&self.bucket) {
            errs.push(
                field(path, "bucket"),
                format!(
                    "{} is not a valid bucket name; use 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit",
                    quote(&self.bucket)
                ),
            );
        }
        if self.key.is_empty() {
            errs.push(
                field(path, "key"),
                "must not be empty; give the object key of the context archive",
            );
        } else if self.key.len() > 1024 {
            errs.push(
                field(path, "key"),
                format!("is {} bytes long; the limit is 1024", self.key.len()),
            );
        } else if self.key.chars().any(char::is_control) {
            errs.push(
                field(path, "key"),
                "contains a control character; remove it",
            );
        }
        if let Some(r) = &self.region
            && !REGION_RE.is_match(r)
        {
            errs.push(
                field(path, "region"),
                format!(
                    "{} is not a valid region; use lowercase letters, digits and '-', e.g. eu-west-1",
                    quote(r)
                ),
            );
        }
        if let Some(e) = &self.endpoint
            && let Some(reason) = endpoint_problem(e)
        {
            errs.push(field(path, "endpoint"), reason);
        }
    }
}

/// apiVersion/kind rules shared by both request kinds.
pub(crate) fn check_header(errs: &mut ValidationErrors, api_version: &str, kind: &str, want: &str) {
    if api_version != API_VERSION {
        errs.push(
            "apiVersion",
            format!(
                "{} is not supported; use \"{API_VERSION}\"",
                quote(api_version)
            ),
        );
    }
    if kind != want {
        errs.push(
            "kind",
            format!("{} is not valid here; use \"{want}\"", quote(kind)),
        );
    }
}

fn dns_label_reason(s: &str) -> String {
    format!(
        "{} is not a valid name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        quote(s)
    )
}

fn check_dns_label_opt(errs: &mut ValidationErrors, path: &str, value: Option<&str>) {
    if let Some(v) = value
        && !is_dns1123_label(v)
    {
        errs.push(path, dns_label_reason(v));
    }
}

fn check_labels(errs: &mut ValidationErrors, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        errs.push(
            "labels",
            format!("has {} labels; the limit is {MAX_LABELS}", labels.len()),
        );
    }
    for (k, v) in labels {
        let p = key("labels", k);
        if !is_label_key(k) {
            errs.push(
                &p,
                format!(
                    "{} is not a valid Kubernetes label key; use an optional DNS prefix and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                    quote(k)
                ),
            );
        } else if k.starts_with(RESERVED_LABEL_PREFIX) {
            errs.push(
                &p,
                format!("label keys under {RESERVED_LABEL_PREFIX} are reserved for Kiln; choose another prefix"),
            );
        }
        if !is_label_value(v) {
            errs.push(
                &p,
                format!(
                    "{} is not a valid Kubernetes label value; use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                    quote(v)
                ),
            );
        }
    }
}

fn check_quantity(errs: &mut ValidationErrors, path: &str, value: Option<&str>, example: &str) {
    let Some(v) = value else { return };
    let parsed = if QUANTITY_RE.is_match(v) {
        crate::quantity::quantity_nanos(v)
    } else {
        None
    };
    match parsed {
        None => errs.push(
            path,
            format!(
                "{} is not a Kubernetes quantity; write it like {example}",
                quote(v)
            ),
        ),
        Some(0) => {
            errs.push(path, format!("{} must be greater than zero", quote(v)));
        }
        Some(_) => {}
    }
}

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The authority (host part) of `scheme://authority/...`.
fn authority(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn git_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("must not be empty; give the repository URL".to_owned());
    }
    if url.len() > 2048 {
        return Some(format!("is {} bytes long; the limit is 2048", url.len()));
    }
    if has_space_or_control(url) {
        return Some(format!(
            "{} contains whitespace or a control character",
            quote(url)
        ));
    }
    if let Some(rest) = url.strip_prefix("https://") {
        let auth = authority(rest);
        if auth.contains('@') {
            return Some("credentials must not be embedded in the URL; the tenant's git Secret provides them".to_owned());
        }
        if auth.is_empty() || rest.len() <= auth.len() + 1 {
            return Some(format!(
                "{} has no repository path; use https://host/owner/repo.git",
                quote(url)
            ));
        }
        return None;
    }
    if url.starts_with("ssh://") || (!url.contains("://") && SCP_RE.is_match(url)) {
        return Some(format!("{} is an SSH URL; {NO_SSH}", quote(url)));
    }
    if url.starts_with("http://") || url.starts_with("git://") {
        return Some(format!(
            "{} uses an unencrypted protocol; use https://",
            quote(url)
        ));
    }
    Some(format!(
        "{} is not a supported git URL; use https://host/owner/repo.git",
        quote(url)
    ))
}

/// A subset of `git check-ref-format` that keeps refs from being read as
/// options or globs by the tools that handle them.
fn git_ref_problem(r: &str) -> Option<String> {
    if r.is_empty() {
        return Some("must not be empty; omit it to use the default branch".to_owned());
    }
    if r.len() > 255 {
        return Some(format!("is {} bytes long; the limit is 255", r.len()));
    }
    if r.starts_with('-')
        || r.contains("..")
        || has_space_or_control(r)
        // '#' is legal in git but the executor splits its context on it.
        || r.contains(['~', '^', ':', '?', '*', '[', '\\', '#'])
    {
        return Some(format!(
            "{} is not a valid git ref; use a branch, tag or ref name such as main, v1.2.3 or refs/heads/main, without '#'",
            quote(r)
        ));
    }
    None
}

fn endpoint_problem(e: &str) -> Option<String> {
    if has_space_or_control(e) {
        return Some(format!(
            "{} contains whitespace or a control character",
            quote(e)
        ));
    }
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!(
            "{} is not an http(s) URL; write it like https://minio.example.com",
            quote(e)
        ));
    };
    let auth = authority(rest);
    if auth.contains('@') {
        return Some(
            "credentials must not be embedded in the URL; the tenant's S3 Secret provides them"
                .to_owned(),
        );
    }
    if auth.is_empty() {
        return Some(format!("{} has no host", quote(e)));
    }
    if e.len() > 2048 {
        return Some(format!("is {} bytes long; the limit is 2048", e.len()));
    }
    None
}

// Case-sensitive on purpose: the schema pattern is, and `.TGZ` archives are
// rare enough that asking for a rename is fine.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn check_tarball_url(errs: &mut ValidationErrors, path: &str, u: &str) {
    let problem = if u.len() > 4096 {
        Some(format!("is {} bytes long; the limit is 4096", u.len()))
    } else if has_space_or_control(u) {
        Some(format!(
            "{} contains whitespace or a control character",
            quote(u)
        ))
    } else if let Some(rest) = u.strip_prefix("https://") {
        let auth = authority(rest);
        let path_part = rest.split(['?', '#']).next().unwrap_or_default();
        if auth.contains('@') {
            Some(
                "credentials must not be embedded in the URL; use a presigned URL instead"
                    .to_owned(),
            )
        } else if auth.is_empty() || path_part.len() <= auth.len() {
            Some(format!(
                "{} has no path; give the URL of a .tar.gz archive",
                quote(u)
            ))
        } else if !(path_part.ends_with(".tar.gz") || path_part.ends_with(".tgz")) {
            Some(format!(
                "{} does not name a .tar.gz or .tgz archive; Kaniko needs a gzipped tarball",
                quote(u)
            ))
        } else {
            None
        }
    } else {
        Some(format!(
            "{} is not an https URL; only https:// archives are fetched",
            quote(u)
        ))
    };
    if let Some(p) = problem {
        errs.push(path, p);
    }
}
