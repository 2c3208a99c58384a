//! Validation errors and the small syntax rules shared by requests and names.
//!
//! Every rule reports instead of failing fast: a publisher whose request is
//! rejected should learn about every problem from one `build.rejected` event,
//! not fix them one round trip at a time.

use std::fmt;

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
    /// `kiln-error` dead-letter header and the worker log.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: crate::mask_text(&reason.into(), &[]),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ValidationError {}

/// All problems found in one document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.0.iter()
    }

    /// `Ok(())` when nothing was found, so validators can end with `errors.into_result()`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ValidationError::new(path, reason));
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
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

/// `parent[index]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `parent.key` for identifier keys, `parent["key"]` for anything else.
pub(crate) fn key(parent: &str, key: &str) -> String {
    if is_identifier(key) {
        field(parent, key)
    } else {
        let quoted = serde_json::Value::String(key.to_owned()).to_string();
        if parent.is_empty() || parent == ROOT_PATH {
            format!("[{quoted}]")
        } else {
            format!("{parent}[{quoted}]")
        }
    }
}

/// Quotes a user value for a message, JSON-style, so control characters and
/// quotes in it cannot garble the message, and shortens very long values.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 256;
    if value.chars().count() <= MAX {
        serde_json::Value::String(value.to_owned()).to_string()
    } else {
        let head: String = value.chars().take(MAX).collect();
        let quoted = serde_json::Value::String(head).to_string();
        format!("{}...\"", &quoted[..quoted.len() - 1])
    }
}

/// Build ids are the idempotency key and appear in Redis keys, event ids and
/// (hashed when needed) pod names, so the charset is kept to what is safe in
/// all of them: `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_build_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= crate::MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The reasons a build id is not valid, as a sentence (`None` when it is valid).
pub(crate) fn build_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if id.len() > crate::MAX_ID_LEN {
        return Some(format!(
            "is {} characters long; the limit is {}",
            id.chars().count(),
            crate::MAX_ID_LEN
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
        assert_eq!(index("images", 2), "images[2]");
        assert_eq!(key("labels", "team"), "labels.team");
        assert_eq!(
            key("labels", "app.kubernetes.io/name"),
            "labels[\"app.kubernetes.io/name\"]"
        );
    }

    #[test]
    fn display_one_per_line() {
        let errs = ValidationErrors(vec![
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
        let q = quote(&long);
        assert!(q.len() < 270, "{q}");
        assert!(q.ends_with("...\""));
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
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
