//! Patterns shared by the JSON Schema and the validator (ECMA-262 and Rust
//! `regex` agree on these simple forms), and the compiled forms the
//! validator uses.

use std::sync::LazyLock;

use regex::Regex;

pub(crate) const ID_PATTERN: &str = r"^[A-Za-z0-9._-]{1,128}$";
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
pub(crate) const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
pub(crate) const LABEL_VALUE_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
pub(crate) const IDENTIFIER_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
/// No `#` (the executor splits its git context on it) and no `\` (URL
/// parsers disagree on it).
pub(crate) const GIT_URL_PATTERN: &str = r"^https://[^\s/@#\\]+/[^\s#\\]+$";
/// A full SHA-1 commit: the executor checks out `plumbing.NewHash(commit)`
/// (pkg/buildcontext/git.go), which zero-pads an abbreviated one, and only
/// `plumbing.IsHash` (40 hex) makes `repo#<commit>` a commit.
pub(crate) const COMMIT_PATTERN: &str = r"^[0-9a-f]{40}$";
pub(crate) const BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
pub(crate) const REGION_PATTERN: &str = r"^[a-z0-9-]{1,32}$";
pub(crate) const ENDPOINT_PATTERN: &str = r"^https?://[^\s/@\\]+(/[^\s\\]*)?$";
pub(crate) const TARBALL_URL_PATTERN: &str =
    r"^https://[^\s/@?#\\]+/[^\s?#\\]*\.(tar\.gz|tgz)([?#][^\s\\]*)?$";
/// A path inside the build context: relative, and without `#`, which the
/// executor reads as a delimiter of its git context.
pub(crate) const RELATIVE_PATH_PATTERN: &str = r"^[^/#][^#]*$";
/// A build secret's id: the executor's `--secret=id=<id>` and the file
/// name it copies the secret to; `.` and `..` are refused apart.
pub(crate) const SECRET_ID_PATTERN: &str = r"^[A-Za-z0-9_.-]{1,64}$";
/// A key of a Kubernetes Secret (`[-._a-zA-Z0-9]+`, at most 253); `.`,
/// `..` and a leading `..` are refused apart (the kubelet refuses them as
/// file names of a projected volume).
pub(crate) const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]{1,253}$";
/// A Kubernetes object name (DNS-1123 subdomain), at most 253.
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub(crate) const TARGET_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$";
pub(crate) const PLATFORM_PATTERN: &str = r"^[a-z0-9_]{1,32}/[a-z0-9_]{1,32}(/[a-z0-9_.]{1,32})?$";
/// The Kubernetes quantity grammar without the minus sign.
pub(crate) const QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static pattern compiles")
}

pub(super) static COMMIT_RE: LazyLock<Regex> = LazyLock::new(|| re(COMMIT_PATTERN));
pub(super) static BUCKET_RE: LazyLock<Regex> = LazyLock::new(|| re(BUCKET_PATTERN));
pub(super) static REGION_RE: LazyLock<Regex> = LazyLock::new(|| re(REGION_PATTERN));
pub(super) static TARGET_RE: LazyLock<Regex> = LazyLock::new(|| re(TARGET_PATTERN));
pub(super) static SECRET_ID_RE: LazyLock<Regex> = LazyLock::new(|| re(SECRET_ID_PATTERN));
pub(super) static SECRET_KEY_RE: LazyLock<Regex> = LazyLock::new(|| re(SECRET_KEY_PATTERN));
pub(super) static DNS_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| re(DNS_SUBDOMAIN_PATTERN));
pub(super) static PLATFORM_RE: LazyLock<Regex> = LazyLock::new(|| re(PLATFORM_PATTERN));
pub(super) static QUANTITY_RE: LazyLock<Regex> = LazyLock::new(|| re(QUANTITY_PATTERN));
