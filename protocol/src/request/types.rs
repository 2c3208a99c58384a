//! The types of a `BuildRequest`, with the schema attributes that make its
//! JSON Schema.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns::{
    BUCKET_PATTERN, COMMIT_PATTERN, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, ENDPOINT_PATTERN,
    GIT_URL_PATTERN, ID_PATTERN, IDENTIFIER_PATTERN, LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN,
    PLATFORM_PATTERN, QUANTITY_PATTERN, REGION_PATTERN, RELATIVE_PATH_PATTERN, SECRET_ID_PATTERN,
    SECRET_KEY_PATTERN, TARBALL_URL_PATTERN, TARGET_PATTERN,
};
use super::urls::{git_authority, git_host};

/// The `kind` of a build request.
pub const BUILD_REQUEST_KIND: &str = "BuildRequest";

/// The Dockerfile path used when an image names neither `dockerfile` nor
/// `dockerfileInline`.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// Label keys under this prefix are set by Kiln on every pod; a request may
/// not set them, or it could make its pods look like another build's.
pub const RESERVED_LABEL_PREFIX: &str = "kiln.dev/";
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
    #[schemars(length(min = 1, max = 1024), pattern(RELATIVE_PATH_PATTERN))]
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
    /// Build secrets for `RUN --mount=type=secret,id=<id>`: each id (1-64
    /// of `[A-Za-z0-9_.-]`, not `.` or `..`; at most 16) names a key of a
    /// Secret in the tenant's build namespace that its policy allows
    /// (`buildSecrets`). The value reaches the build as a file, never as an
    /// argument, a variable or part of an image layer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 16,
        "propertyNames" = { "pattern": SECRET_ID_PATTERN, "not": { "enum": [".", ".."] } }
    ))]
    pub secrets: BTreeMap<String, SecretRef>,
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
    /// Build one image for several platforms (2-8 distinct `os/arch[/variant]`,
    /// exclusive with `platform`): one pod per platform, each pushing under
    /// `<tag>-<os>-<arch>[-<variant>]`, then one OCI image index under every
    /// destination tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 8), extend("uniqueItems" = true), inner(pattern(PLATFORM_PATTERN)))]
    pub platforms: Option<Vec<String>>,
    /// Use the layer cache (the cache repository comes from the worker's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// Resources for the build pod; the worker's policy caps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// A key of a Kubernetes Secret: where a build secret's value comes from.
/// Only the reference travels; Kiln never reads the value.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret in the tenant's build namespace (a DNS-1123
    /// subdomain, at most 253).
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub secret: String,
    /// Key in the Secret (`[-._a-zA-Z0-9]`, at most 253; not `.`, and not
    /// starting with `..`).
    #[schemars(pattern(SECRET_KEY_PATTERN), extend("not" = { "pattern": "^\\.\\.|^\\.$" }))]
    pub key: String,
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
}

/// A git repository checkout.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitContext {
    /// `https://host/path` (ssh and scp-style URLs are refused: no key can
    /// be supplied). Credentials never go in the URL: they come from the tenant's Secret.
    /// No `#`: the executor reads it as the start of the ref and commit.
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
    #[schemars(length(min = 1, max = 1024), pattern(RELATIVE_PATH_PATTERN))]
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
}

impl GitContext {
    /// The host the URL names (lowercase, IDNA-normalised, without the
    /// port), parsed as the validator parses it: what a policy that limits
    /// where the tenant's git credentials may go should compare. `None` when
    /// the URL is not one validation accepts.
    pub fn host(&self) -> Option<String> {
        git_host(&self.url)
    }

    /// `host` or `host:port` (a port other than 443 only): what the
    /// executor connects to, and sends the tenant's git credentials to;
    /// what a policy's `gitCredentials.hosts` lists. `None` when the URL is
    /// not one validation accepts.
    pub fn authority(&self) -> Option<String> {
        git_authority(&self.url)
    }
}

impl ImageSpec {
    /// The Dockerfile path Kaniko is given when the image has no inline
    /// Dockerfile.
    pub fn dockerfile_path(&self) -> &str {
        self.dockerfile.as_deref().unwrap_or(DEFAULT_DOCKERFILE)
    }
}
