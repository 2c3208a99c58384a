//! Masking secrets in build logs before they leave the cluster in events.

use std::sync::LazyLock;

use regex::Regex;

use crate::LOG_TAIL_MAX_BYTES;

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
            r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@",
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
    let mut out = log.to_owned();
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
    tail(&out, LOG_TAIL_MAX_BYTES).to_owned()
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
            ("ssh://git@host/repo.git", "ssh://git@host/repo.git"),
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
