//! Validation errors and the small syntax rules shared by requests and names.
//!
//! Every rule reports instead of failing fast: a publisher whose request is
//! rejected should learn about its problems from one `build.rejected` event,
//! not fix them one round trip at a time. The list is bounded
//! ([`MAX_PROBLEMS`]): past it, problems are only counted, without building
//! their path or text, so a request made of mistakes costs no more to
//! answer than a short one.

use std::fmt;

use crate::bounded::bounded;
use crate::limits::{API_VERSION, MAX_ID_LEN, MAX_PROBLEMS, MAX_REASON_BYTES};
use crate::secrets::mask_text;

/// One problem with a request: where it is and what to do about it.
///
/// `path` is a JSON path relative to the document root without a leading
/// `$.` (`images[1].destinations[0]`, `labels["app.kubernetes.io/name"]`);
/// the document as a whole is `$`. Object keys that are plain identifiers are
/// written `.key`, any other key `["key"]` (JSON-quoted), so a path is never
/// ambiguous even when a label key contains dots or slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub reason: String,
}

impl ValidationError {
    /// The reason is masked ([`crate::mask_text`]): reasons quote the
    /// request's values (`https://user:token@host/repo.git`, presigned S3
    /// URLs) and travel in `build.rejected`, `request.rejected`, the
    /// `kiln-error` dead-letter header and the worker log. It is then cut to
    /// [`MAX_REASON_BYTES`](crate::MAX_REASON_BYTES).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        let masked = mask_text(&reason.into(), &[]);
        Self {
            path: path.into(),
            reason: bounded(&masked, MAX_REASON_BYTES).into_owned(),
        }
    }

    /// The closing line of a list cut at [`MAX_PROBLEMS`]: `… and N more
    /// problems`, at the document root.
    pub fn more(omitted: usize) -> Self {
        Self::new(ROOT_PATH, more_line(omitted))
    }
}

fn more_line(omitted: usize) -> String {
    let noun = if omitted == 1 { "problem" } else { "problems" };
    format!("… and {omitted} more {noun}")
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ValidationError {}

/// The problems found in one document, in document order: the first
/// [`MAX_PROBLEMS`], and how many more were found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    listed: Vec<ValidationError>,
    omitted: usize,
}

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.omitted == 0
    }

    /// Every problem found, listed or not.
    pub fn len(&self) -> usize {
        self.listed.len() + self.omitted
    }

    /// Problems found past [`MAX_PROBLEMS`], counted but not listed.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The listed problems (at most [`MAX_PROBLEMS`]).
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.listed.iter()
    }

    /// The listed problems, then, when some were left out, one
    /// [`ValidationError::more`] counting them: what a rejection reports.
    pub fn to_vec(&self) -> Vec<ValidationError> {
        let mut v = self.listed.clone();
        if self.omitted > 0 {
            v.push(ValidationError::more(self.omitted));
        }
        v
    }

    /// `Ok(())` when nothing was found, so validators can end with `errors.into_result()`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Records a problem. Past [`MAX_PROBLEMS`] it is only counted: `path`
    /// and `reason` are `Display` so that callers can pass
    /// `format_args!` and lazy paths, which are then never rendered.
    pub(crate) fn push(&mut self, path: impl fmt::Display, reason: impl fmt::Display) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed
                .push(ValidationError::new(path.to_string(), reason.to_string()));
        } else {
            self.omitted += 1;
        }
    }
}

impl From<Vec<ValidationError>> for ValidationErrors {
    /// Keeps the first [`MAX_PROBLEMS`] and counts the rest.
    fn from(mut all: Vec<ValidationError>) -> Self {
        let omitted = all.len().saturating_sub(MAX_PROBLEMS);
        all.truncate(MAX_PROBLEMS);
        Self {
            listed: all,
            omitted,
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.listed.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        if self.omitted > 0 {
            write!(f, "\n{}", more_line(self.omitted))?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;
    /// The listed problems (see [`ValidationErrors::to_vec`] for the count
    /// of the rest).
    fn into_iter(self) -> Self::IntoIter {
        self.listed.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.listed.iter()
    }
}

/// The path of the document root.
pub const ROOT_PATH: &str = "$";

/// `parent.field`, or `field` at the root.
pub(crate) fn field(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == ROOT_PATH {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[index]`, rendered only when shown.
pub(crate) fn index(parent: &str, i: usize) -> Index<'_> {
    Index(parent, i)
}

/// `parent.key` for identifier keys, `parent["key"]` for anything else
/// (long keys shortened as [`quote`] does), rendered only when shown.
pub(crate) fn key<'a>(parent: &'a str, key: &'a str) -> Key<'a> {
    Key(parent, key)
}

/// A path ending in an array index; see [`index`].
#[derive(Clone, Copy)]
pub(crate) struct Index<'a>(&'a str, usize);

impl fmt::Display for Index<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

/// A path ending in an object key; see [`key`].
#[derive(Clone, Copy)]
pub(crate) struct Key<'a>(&'a str, &'a str);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Key(parent, key) = *self;
        let root = parent.is_empty() || parent == ROOT_PATH;
        match (is_identifier(key), root) {
            (true, true) => f.write_str(key),
            (true, false) => write!(f, "{parent}.{key}"),
            (false, true) => write!(f, "[{}]", quote(key)),
            (false, false) => write!(f, "{parent}[{}]", quote(key)),
        }
    }
}

/// Quotes a user value for a message, JSON-style, so control characters and
/// quotes in it cannot garble the message, and shortens very long values.
/// Rendered only when shown, so a problem that is only counted costs no copy.
pub(crate) fn quote(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// A value quoted for a message; see [`quote`].
#[derive(Clone, Copy)]
pub(crate) struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 256;
        let value = self.0;
        match value.char_indices().nth(MAX) {
            None => write!(f, "{}", serde_json::Value::String(value.to_owned())),
            Some((end, _)) => {
                let quoted = serde_json::Value::String(value[..end].to_owned()).to_string();
                write!(f, "{}...\"", &quoted[..quoted.len() - 1])
            }
        }
    }
}

/// apiVersion/kind rules shared by both request kinds.
pub(crate) fn check_header(errs: &mut ValidationErrors, api_version: &str, kind: &str, want: &str) {
    if api_version != API_VERSION {
        errs.push(
            "apiVersion",
            format_args!(
                "{} is not supported; use \"{API_VERSION}\"",
                quote(api_version)
            ),
        );
    }
    if kind != want {
        errs.push(
            "kind",
            format_args!("{} is not valid here; use \"{want}\"", quote(kind)),
        );
    }
}

/// Build ids are the idempotency key and appear in Redis keys, event ids and
/// (hashed when needed) pod names, so the charset is kept to what is safe in
/// all of them: `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_build_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The reasons a build id is not valid, as a sentence (`None` when it is valid).
pub(crate) fn build_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!(
            "is {} characters long; the limit is {}",
            id.chars().count(),
            MAX_ID_LEN
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{} contains {}; use only letters, digits, '.', '_' and '-'",
            quote(id),
            quote(&c.to_string())
        ));
    }
    None
}

/// RFC 1123 label as Kubernetes uses it: names of pods, namespaces, images.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain (the prefix of a Kubernetes label key).
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Kubernetes label value: empty, or at most 63 of `[A-Za-z0-9._-]` with an
/// alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name a
/// non-empty label value.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: Dockerfile `ARG` names and Jinja variable names.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The problem with a relative path inside the build context, if any.
///
/// The worker passes such paths to Kaniko; rejecting absolute paths and `..`
/// keeps a request from reading outside the context it named.
pub(crate) fn relative_path_problem(p: &str) -> Option<String> {
    const MAX: usize = 1024;
    if p.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if p.len() > MAX {
        return Some(format!("is {} bytes long; the limit is {MAX}", p.len()));
    }
    if p.chars().any(char::is_control) {
        return Some(format!(
            "{} contains a control character; remove it",
            quote(p)
        ));
    }
    if p.starts_with('/') {
        return Some(format!(
            "{} is an absolute path; give a path relative to the build context",
            quote(p)
        ));
    }
    if p.split('/').any(|seg| seg == "..") {
        return Some(format!(
            "{} contains \"..\"; give a path inside the build context",
            quote(p)
        ));
    }
    // The executor splits a git context on '#' (pkg/buildcontext/git.go)
    // and Go's url.Parse ends a path there.
    if p.contains('#') {
        return Some(format!(
            "{} contains '#', which the executor reads as a ref delimiter; rename the path",
            quote(p)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(field("$", "id"), "id");
        assert_eq!(field("images[0]", "name"), "images[0].name");
        assert_eq!(index("images", 2).to_string(), "images[2]");
        assert_eq!(key("labels", "team").to_string(), "labels.team");
        assert_eq!(
            key("labels", "app.kubernetes.io/name").to_string(),
            "labels[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(key("$", "a b").to_string(), "[\"a b\"]");
        // A key of any length makes a path of bounded length.
        assert!(key("labels", &"k/".repeat(100_000)).to_string().len() < 300);
    }

    #[test]
    fn display_one_per_line() {
        let errs = ValidationErrors::from(vec![
            ValidationError::new("id", "must not be empty"),
            ValidationError::new("images", "at least one image is required"),
        ]);
        assert_eq!(
            errs.to_string(),
            "id: must not be empty\nimages: at least one image is required"
        );
    }

    #[test]
    fn quote_shortens() {
        let long = "a".repeat(300);
        let q = quote(&long).to_string();
        assert!(q.len() < 270, "{q}");
        assert!(q.ends_with("...\""));
        assert_eq!(quote("a\"b").to_string(), "\"a\\\"b\"");
    }

    #[test]
    fn past_the_cap_problems_are_counted_not_listed() {
        let mut errs = ValidationErrors::default();
        for i in 0..MAX_PROBLEMS + 7 {
            errs.push(index("labels", i), "bad");
        }
        assert_eq!(errs.len(), MAX_PROBLEMS + 7);
        assert_eq!(errs.iter().count(), MAX_PROBLEMS);
        assert_eq!(errs.omitted(), 7);
        let all = errs.to_vec();
        assert_eq!(all.len(), MAX_PROBLEMS + 1);
        assert_eq!(all[MAX_PROBLEMS].to_string(), "$: … and 7 more problems");
        assert!(
            errs.to_string()
                .ends_with("labels[49]: bad\n… and 7 more problems")
        );
        assert_eq!(
            ValidationErrors::from(all[..MAX_PROBLEMS].to_vec()).omitted(),
            0
        );
    }

    /// Past the cap neither the path nor the reason is rendered: a request
    /// of mistakes costs a count, not a string each.
    #[test]
    fn counted_problems_are_never_rendered() {
        struct Panics;
        impl fmt::Display for Panics {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                panic!("rendered a problem past the cap")
            }
        }
        let mut errs = ValidationErrors::default();
        for _ in 0..MAX_PROBLEMS {
            errs.push("p", "r");
        }
        errs.push(Panics, Panics);
        assert_eq!(errs.omitted(), 1);
        assert_eq!(ValidationError::more(1).reason, "… and 1 more problem");
    }

    #[test]
    fn labels() {
        assert!(is_label_key("team"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("Example.com/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key(""));
        assert!(is_label_value(""));
        assert!(is_label_value("A.b_c-1"));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns1123_label("a"));
        assert!(is_dns1123_label("cart-api"));
        assert!(!is_dns1123_label("Cart"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a-"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label(&"a".repeat(63)));
    }

    #[test]
    fn build_ids() {
        assert!(is_valid_build_id("shop-cart-1.2.3-7f3a"));
        assert!(!is_valid_build_id(""));
        assert!(!is_valid_build_id("a/b"));
        assert!(!is_valid_build_id(&"a".repeat(129)));
        assert!(is_valid_build_id(&"a".repeat(128)));
    }
}
