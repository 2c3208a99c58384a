//! The URLs and refs a request names: git repositories, S3 endpoints and
//! tarball URLs, each parsed with the `url` crate (the WHATWG URL standard)
//! rather than cut apart by hand.
//!
//! The executor is given the text of the request, not this parse, so each
//! check also refuses what two parsers could read differently (a `\`, which
//! WHATWG reads as `/` and Go's `net/url` does not) and the `#` that shifts
//! the executor's `#`-separated git context fields.

use std::sync::LazyLock;

use regex::Regex;
use url::Url;

use crate::validate::quote;

/// Why ssh and scp-style URLs are refused rather than passed on.
const NO_SSH: &str = "Kiln mounts no SSH key or known_hosts into the build, so the clone could never authenticate; use the https:// URL of the repository (the tenant's git Secret gives the credentials)";

/// `user@host:path`, the scp-like syntax git accepts for ssh.
static SCP_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+$").expect("static pattern compiles")
});

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The checks every URL gets before it is parsed: its length, and no
/// whitespace or control character (which WHATWG would strip or encode and
/// the executor would not).
fn text_problem(text: &str, max: usize) -> Option<String> {
    if text.len() > max {
        return Some(format!("is {} bytes long; the limit is {max}", text.len()));
    }
    if has_space_or_control(text) {
        return Some(format!(
            "{} contains whitespace or a control character",
            quote(text)
        ));
    }
    None
}

/// Whether the URL carries a user or a password. (An empty `user@` is
/// dropped by the WHATWG parser; the schema refuses any `@` before the
/// host, and nothing is embedded in it, so it passes here.)
fn has_credentials(u: &Url) -> bool {
    !u.username().is_empty() || u.password().is_some()
}

/// What the parsers disagree on, and what is not a URL at all: the text,
/// the reason.
fn unparsable(text: &str) -> Result<Url, String> {
    if text.contains('\\') {
        return Err(format!(
            "{} contains '\\', which URL parsers read differently (as '/' or as part of the host); remove it",
            quote(text)
        ));
    }
    Url::parse(text).map_err(|e| format!("{} is not a valid URL: {e}", quote(text)))
}

/// The problem with a `git.url`, if any: `https://host/path`, no
/// credentials, no `#`.
pub(super) fn git_url_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("must not be empty; give the repository URL".to_owned());
    }
    if let Some(problem) = text_problem(text, 2048) {
        return Some(problem);
    }
    if !text.contains("://") && SCP_RE.is_match(text) {
        return Some(format!("{} is an SSH URL; {NO_SSH}", quote(text)));
    }
    // The worker hands the executor `git://` + the text after `https://`,
    // so the literal lowercase prefix is required (WHATWG would also read
    // `HTTPS:host/path` as https).
    let https = text.starts_with("https://");
    let url = match unparsable(text) {
        Ok(url) => url,
        Err(reason) if https => return Some(reason),
        Err(_) => return Some(unsupported_git(text)),
    };
    match url.scheme() {
        "https" if https => {}
        "ssh" | "git+ssh" | "ssh+git" => {
            return Some(format!("{} is an SSH URL; {NO_SSH}", quote(text)));
        }
        "http" | "git" => {
            return Some(format!(
                "{} uses an unencrypted protocol; use https://",
                quote(text)
            ));
        }
        _ => return Some(unsupported_git(text)),
    }
    if has_credentials(&url) {
        return Some(
            "credentials must not be embedded in the URL; the tenant's git Secret provides them"
                .to_owned(),
        );
    }
    // The executor splits its git context on '#' (pkg/buildcontext/git.go):
    // `git://repo#ref#commit`. A '#' in the URL would make the rest of it
    // the ref and push the real ref and the pinned commit out of place, so
    // the commit the plan and the events show would not be the one built.
    if url.fragment().is_some() {
        return Some(format!(
            "{} contains '#', which the executor reads as the start of the ref and commit fields; remove it and give the branch in ref and the commit in commit",
            quote(text)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.path() == "/" {
        return Some(format!(
            "{} has no repository path; use https://host/owner/repo.git",
            quote(text)
        ));
    }
    None
}

fn unsupported_git(text: &str) -> String {
    format!(
        "{} is not a supported git URL; use https://host/owner/repo.git",
        quote(text)
    )
}

/// The host a git URL names (lowercase, IDNA-normalised), for policies that
/// decide which hosts a tenant's git credentials may be sent to. `None` for
/// a URL [`git_url_problem`] refuses.
pub(super) fn git_host(text: &str) -> Option<String> {
    if git_url_problem(text).is_some() {
        return None;
    }
    Url::parse(text).ok()?.host_str().map(str::to_owned)
}

/// `host` or `host:port` of a git URL as the executor connects to it: the
/// host as [`git_host`] gives it, and the port only when the URL names one
/// other than https' 443 (`https://git.example.com:443/x` is
/// `git.example.com`). `None` for a URL [`git_url_problem`] refuses.
pub(super) fn git_authority(text: &str) -> Option<String> {
    if git_url_problem(text).is_some() {
        return None;
    }
    let url = Url::parse(text).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// A subset of `git check-ref-format` that keeps refs from being read as
/// options or globs by the tools that handle them.
pub(super) fn git_ref_problem(r: &str) -> Option<String> {
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

/// The problem with an S3 `endpoint`, if any: `http(s)://host[/path]`
/// without credentials.
pub(super) fn endpoint_problem(text: &str) -> Option<String> {
    if let Some(problem) = text_problem(text, 2048) {
        return Some(problem);
    }
    let not_http = || {
        format!(
            "{} is not an http(s) URL; write it like https://minio.example.com",
            quote(text)
        )
    };
    if !(text.starts_with("https://") || text.starts_with("http://")) {
        return Some(not_http());
    }
    let url = match unparsable(text) {
        Ok(url) => url,
        Err(reason) => return Some(reason),
    };
    if has_credentials(&url) {
        return Some(
            "credentials must not be embedded in the URL; the tenant's S3 Secret provides them"
                .to_owned(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some(format!("{} has no host", quote(text)));
    }
    None
}

/// The problem with a tarball context `url`, if any: an https URL whose
/// path names a `.tar.gz` or `.tgz` archive, without credentials (a query,
/// as presigned URLs carry, is fine).
// Case-sensitive on purpose: the schema pattern is, and `.TGZ` archives are
// rare enough that asking for a rename is fine.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
pub(super) fn tarball_url_problem(text: &str) -> Option<String> {
    if let Some(problem) = text_problem(text, 4096) {
        return Some(problem);
    }
    if !text.starts_with("https://") {
        return Some(format!(
            "{} is not an https URL; only https:// archives are fetched",
            quote(text)
        ));
    }
    let url = match unparsable(text) {
        Ok(url) => url,
        Err(reason) => return Some(reason),
    };
    if has_credentials(&url) {
        return Some(
            "credentials must not be embedded in the URL; use a presigned URL instead".to_owned(),
        );
    }
    let path = url.path();
    if url.host_str().is_none_or(str::is_empty) || path == "/" {
        return Some(format!(
            "{} has no path; give the URL of a .tar.gz archive",
            quote(text)
        ));
    }
    if !(path.ends_with(".tar.gz") || path.ends_with(".tgz")) {
        return Some(format!(
            "{} does not name a .tar.gz or .tgz archive; Kaniko needs a gzipped tarball",
            quote(text)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_in_a_git_url_is_refused_naming_the_executor_fields() {
        for url in [
            "https://github.com/acme/cart.git#main",
            "https://github.com/acme/cart.git#refs/heads/evil#0000000000000000000000000000000000000000",
            "https://github.com#x/acme/cart.git",
        ] {
            let problem = git_url_problem(url).unwrap_or_default();
            assert!(
                problem.contains("contains '#', which the executor reads as the start of the ref and commit fields"),
                "{url}: {problem}"
            );
        }
    }

    #[test]
    fn parser_differentials_are_refused() {
        // WHATWG: host github.com, path /@evil.com/x; Go: host evil.com.
        let problem = git_url_problem(r"https://github.com\@evil.com/x").unwrap_or_default();
        assert!(problem.contains(r"contains '\'"), "{problem}");
        assert!(tarball_url_problem(r"https://a.example\@b.example/c.tgz").is_some());
        assert!(endpoint_problem(r"https://minio\@evil").is_some());
    }

    #[test]
    fn bad_ports_and_hosts_are_refused() {
        assert!(
            git_url_problem("https://github.com:99999/a/b")
                .unwrap_or_default()
                .contains("is not a valid URL: invalid port number")
        );
        assert!(tarball_url_problem("https://ex ample.com/c.tgz").is_some());
    }

    #[test]
    fn hosts_come_from_the_parse() {
        assert_eq!(
            git_host("https://GitHub.com:443/acme/cart.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(git_host("https://github.com/a/b#x"), None);
        assert_eq!(git_host("ssh://git@github.com/a/b"), None);
    }

    /// Issue 18 item 7: what a policy's `gitCredentials.hosts` compares.
    #[test]
    fn authorities_keep_a_port_other_than_443() {
        for (url, want) in [
            ("https://GitHub.com:443/acme/cart.git", Some("github.com")),
            ("https://github.com/acme/cart.git", Some("github.com")),
            (
                "https://git.example.com:8443/a/b",
                Some("git.example.com:8443"),
            ),
            ("https://10.0.0.1:3000/a/b", Some("10.0.0.1:3000")),
            ("https://github.com/a/b#x", None),
        ] {
            assert_eq!(git_authority(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn queries_and_fragments_of_tarballs_do_not_hide_the_extension() {
        assert_eq!(tarball_url_problem("https://e.com/c.tgz?sig=a.zip"), None);
        assert!(tarball_url_problem("https://e.com/c.zip?x=.tgz").is_some());
        assert!(tarball_url_problem("https://e.com/?x=c.tgz").is_some());
    }
}
