//! The one masker of Kiln: every text that leaves the worker (event
//! `message` and `logTail`, validation reasons in `build.rejected`,
//! `request.rejected`, the `kiln-error` dead-letter header, worker logs,
//! start-up errors) goes through [`mask_text`] or [`mask_secrets`].

use std::sync::LazyLock;

use regex::Regex;

use crate::limits::LOG_TAIL_MAX_BYTES;

/// What a masked value is replaced with.
pub const MASK: &str = "***";

struct Rule {
    re: Regex,
    replacement: &'static str,
}

fn rule(pattern: &str, replacement: &'static str) -> Rule {
    Rule {
        re: Regex::new(pattern).expect("static pattern compiles"),
        replacement,
    }
}

/// Credential shapes that show up in Kaniko, git and curl output. Each keeps
/// the part that tells a reader *what* was there (the header name, the key)
/// and masks the value.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // Authorization: Bearer xyz / Authorization: Basic xyz / authorization=xyz
        rule(
            r#"(?i)\b(authorization["']?\s*[:=]\s*["']?(?:(?:bearer|basic|token|digest)\s+)?)[^\s"',;]+"#,
            "${1}***",
        ),
        // A bare bearer token anywhere else.
        rule(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", "${1}***"),
        // Docker config.json: "auth": "base64(user:pass)"
        rule(r#"("auth"\s*:\s*")[^"]*(")"#, "${1}***${2}"),
        // password=..., "secret": "...", API_KEY: ..., aws_secret_access_key = ...
        rule(
            r#"(?i)\b([A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)[A-Za-z0-9_.-]*["']?\s*[:=]\s*["']?)[^\s"'&,;]+"#,
            "${1}***",
        ),
        // https://user:password@host
        rule(
            r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@",
            "${1}***@",
        ),
        // AWS access key ids.
        rule(
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
            "***",
        ),
        // GitHub tokens (often used as the user in https clone URLs).
        rule(
            r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}",
            "***",
        ),
        // GitLab personal, deploy and CI job tokens.
        rule(r"\b(?:glpat|gldt|glcbt|glptt)-[A-Za-z0-9_-]{20,}", "***"),
        // https://token@host: userinfo without a password is a token too.
        rule(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@'\x22]+@", "${1}***@"),
        // Private key blocks (PEM), whole.
        rule(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            "***",
        ),
        // The query string of a URL: presigned S3 URLs carry
        // X-Amz-Credential (the access key id) and X-Amz-Signature there,
        // other services their tokens. The path stays to tell which object.
        rule(
            r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?'\x22]*\?)[^\s'\x22]+",
            "${1}***",
        ),
        // The same parameters outside a URL.
        rule(
            r"(?i)\b(x-amz-(?:signature|credential|security-token)=)[^\s&'\x22]+",
            "${1}***",
        ),
    ]
});

/// Masks `secrets` (exact values, e.g. those of the registry and git
/// Secrets the worker mounted) and common credential patterns in `log`, then
/// keeps the last [`LOG_TAIL_MAX_BYTES`] bytes, cut on a character boundary.
///
/// Masking happens before truncation so a secret cut in half at the start of
/// the window cannot leak its second half unmasked. Patterns err on the side
/// of masking too much: a log with a harmless `token=` masked is better than
/// a leaked credential. Empty secrets are ignored; all others are masked,
/// however short.
pub fn mask_secrets(log: &str, secrets: &[&str]) -> String {
    let out = mask_text(log, secrets);
    tail(&out, LOG_TAIL_MAX_BYTES).to_owned()
}

/// Masks `secrets` (exact values) and every credential pattern in `text`,
/// without truncating: for messages, validation reasons and error texts.
pub fn mask_text(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    let mut exact: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret containing another is masked whole.
    exact.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in exact {
        if out.contains(s) {
            out = out.replace(s, MASK);
        }
    }
    for r in RULES.iter() {
        if let std::borrow::Cow::Owned(s) = r.re.replace_all(&out, r.replacement) {
            out = s;
        }
    }
    out
}

/// Whether a build-arg (or variable) name looks like it holds a secret.
pub fn secret_looking_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "PAT",
        "PRIVATE",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The values of the build args whose names look secret: known values for
/// [`mask_text`], since a failing `RUN` step may echo them.
pub fn secret_build_arg_values<'a>(
    args: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<&'a str> {
    args.into_iter()
        .filter(|(k, _)| secret_looking_name(k))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A URL with its password (and any userinfo-only token) replaced by
/// [`MASK`], for start-up errors and logs that name a broker, Redis or a
/// collector; the query string is masked as in [`mask_text`].
///
/// Unlike free text, the input is known to be one URL, so everything
/// between `://` and the last `@` is userinfo: a password with a raw `@`,
/// `/` or `:` in it is masked whole (the patterns of [`mask_text`] stop at
/// those characters and would leave its tail).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return mask_text(url, &[]);
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let Some(at) = rest.rfind('@') else {
        return mask_text(url, &[]);
    };
    let userinfo = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:{MASK}"),
        None => MASK.to_owned(),
    };
    mask_text(&format!("{head}{userinfo}{}", &rest[at..]), &[])
}

/// The last `max` bytes of `s` or fewer, starting on a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_secrets() {
        assert_eq!(
            mask_secrets("login hunter2 ok hunter2", &["hunter2", ""]),
            "login *** ok ***"
        );
        assert_eq!(mask_secrets("abcdef", &["abc", "abcdef"]), "***");
    }

    #[test]
    fn patterns() {
        let cases = [
            (
                "Authorization: Bearer abc.def.ghi",
                "Authorization: Bearer ***",
            ),
            (
                "authorization=Basic dXNlcjpwYXNz",
                "authorization=Basic ***",
            ),
            (
                "got bearer eyJhbGciOiJIUzI1NiJ9 back",
                "got bearer *** back",
            ),
            (
                r#"{"auths":{"r":{"auth":"dXNlcjpwYXNz"}}}"#,
                r#"{"auths":{"r":{"auth":"***"}}}"#,
            ),
            ("password=hunter2 next", "password=*** next"),
            (r#""db_password": "s3cr3t""#, r#""db_password": "***""#),
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
                "AWS_SECRET_ACCESS_KEY=***",
            ),
            ("key AKIAIOSFODNN7EXAMPLE used", "key *** used"),
            (
                "fatal: unable to access 'https://bob:pa55@git.example.com/x.git/'",
                "fatal: unable to access 'https://bob:***@git.example.com/x.git/'",
            ),
            (
                "clone https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/a/b",
                "clone https://***@github.com/a/b",
            ),
            ("ssh://git@host/repo.git", "ssh://***@host/repo.git"),
            (
                "clone https://oauth2@gitlab.example.com/a/b failed",
                "clone https://***@gitlab.example.com/a/b failed",
            ),
            (
                "token glpat-abcdefghij0123456789xyz leaked",
                "token *** leaked",
            ),
            (
                "GET https://b.s3.amazonaws.com/ctx.tgz?X-Amz-Credential=AKIAX%2F2024&X-Amz-Signature=deadbeef failed",
                "GET https://b.s3.amazonaws.com/ctx.tgz?*** failed",
            ),
            ("X-Amz-Signature=deadbeef", "X-Amz-Signature=***"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----\nafter",
                "***\nafter",
            ),
            (
                "plain build output\nSTEP 3/5",
                "plain build output\nSTEP 3/5",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(mask_secrets(input, &[]), want, "input: {input}");
        }
    }

    #[test]
    fn secret_build_args_are_known_values() {
        let args = std::collections::BTreeMap::from([
            ("NPM_TOKEN".to_owned(), "n0tAPattern".to_owned()),
            ("VERSION".to_owned(), "1.2.3".to_owned()),
        ]);
        let known = secret_build_arg_values(&args);
        assert_eq!(known, ["n0tAPattern"]);
        assert_eq!(
            mask_text("echo n0tAPattern 1.2.3", &known),
            "echo *** 1.2.3"
        );
    }

    /// A connection URL is one value: everything between `://` and the
    /// last `@` is userinfo, whatever characters a password holds (a raw
    /// `@` or `/` is common in generated passwords, and the patterns for
    /// free text stop at both).
    #[test]
    fn a_url_loses_its_whole_password() {
        let cases = [
            (
                "amqp://kiln:p@ss/w0rd@rabbit:5672/%2f",
                "amqp://kiln:***@rabbit:5672/%2f",
            ),
            ("redis://:a/b@c@redis:6379/0", "redis://:***@redis:6379/0"),
            ("rediss://default:pw@r:6380", "rediss://default:***@r:6380"),
            ("redis://tok3n@redis:6379", "redis://***@redis:6379"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "http://otel:pw@collector:4318/v1/traces",
                "http://otel:***@collector:4318/v1/traces",
            ),
            (
                "amqps://u:pw@mq:5671/%2f?heartbeat=10&auth_mechanism=plain",
                "amqps://u:***@mq:5671/%2f?***",
            ),
            ("not a url: password=x", "not a url: password=***"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "input: {input}");
        }
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("redis://:hunter2@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("amqp://kiln:hunter2@rabbit:5672/%2f"),
            "amqp://kiln:***@rabbit:5672/%2f"
        );
    }

    #[test]
    fn truncates_to_the_tail_on_a_char_boundary() {
        let log = format!("{}{}", "é".repeat(LOG_TAIL_MAX_BYTES), "end");
        let out = mask_secrets(&log, &[]);
        assert!(out.len() <= LOG_TAIL_MAX_BYTES);
        assert!(out.len() >= LOG_TAIL_MAX_BYTES - 1);
        assert!(out.ends_with("end"));
    }

    #[test]
    fn masks_before_truncating() {
        let secret = "s".repeat(100);
        let log = format!("{secret}{}", "x".repeat(LOG_TAIL_MAX_BYTES - 50));
        let out = mask_secrets(&log, &[&secret]);
        assert!(!out.contains('s'), "half a secret leaked");
    }
}
