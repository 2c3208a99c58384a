//! Image references (`registry/repository:tag@digest`).
//!
//! Parsing is delegated to `oci_spec::distribution::Reference` (the Docker
//! distribution grammar, with Docker Hub normalisation); this module only adds
//! the rules Kiln needs on top: lowercase registry hosts (so two spellings of a
//! destination cannot slip past a tenant's prefix policy) and tag-only push
//! targets.

use std::fmt;

use oci_spec::distribution::{ParseError, Reference};

/// A parsed, normalised image reference.
///
/// `Display` gives the normalised form: registry always present (`docker.io`
/// for Docker Hub, `library/` added for official images) and tag `latest`
/// when neither tag nor digest was given, as Docker and Kaniko do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference(Reference);

impl ImageReference {
    /// The registry host, with port if one was given (`registry.example.com:5000`).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path inside the registry (`shop/cart-api`).
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same image pinned to a digest (`registry/repo:tag@sha256:…`), the
    /// form events carry in `imageRefs`.
    pub fn with_digest(&self, digest: &str) -> String {
        let mut s = format!("{}/{}", self.registry(), self.repository());
        if let Some(t) = self.tag() {
            s.push(':');
            s.push_str(t);
        }
        s.push('@');
        s.push_str(digest);
        s
    }

    pub fn as_oci(&self) -> &Reference {
        &self.0
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

const LOWERCASE: &str = "repository names must be lowercase";

/// Parses any image reference, tag or digest or both.
///
/// The error is the reason alone (no path, no input echo), so callers can put
/// it after their own `"<input>" is not a valid image reference: `.
pub fn parse_image_reference(s: &str) -> Result<ImageReference, String> {
    if s.trim() != s {
        return Err("remove the surrounding whitespace".to_owned());
    }
    match Reference::try_from(s) {
        Ok(r) => {
            // The Docker grammar accepts uppercase in the host; registries
            // treat hosts case-insensitively, so "Registry.Example.com" and
            // "registry.example.com" would be one registry with two spellings.
            if r.registry().bytes().any(|b| b.is_ascii_uppercase())
                || r.repository().bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(LOWERCASE.to_owned());
            }
            Ok(ImageReference(r))
        }
        Err(e) => Err(explain(s, &e)),
    }
}

/// Parses a push target: like [`parse_image_reference`], but a digest is
/// refused, because a registry names what you push by its tag and computes
/// the digest itself.
pub fn parse_destination(s: &str) -> Result<ImageReference, String> {
    let r = parse_image_reference(s)?;
    if r.digest().is_some() {
        return Err(
            "a destination must not carry a digest (@sha256:...); push targets are tags".to_owned(),
        );
    }
    Ok(r)
}

fn explain(s: &str, e: &ParseError) -> String {
    match e {
        ParseError::NameEmpty => "the reference is empty".to_owned(),
        ParseError::ReferenceInvalidFormat => {
            // oci-spec reports uppercase in a repository as a format error;
            // say what is actually wrong when lowercasing the name would fix it.
            let (name, rest) = split_name(s);
            if name.bytes().any(|b| b.is_ascii_uppercase())
                && Reference::try_from(format!("{}{rest}", name.to_ascii_lowercase())).is_ok()
            {
                LOWERCASE.to_owned()
            } else {
                "expected [registry/]repository[:tag][@digest], e.g. registry.example.com/team/app:1.0".to_owned()
            }
        }
        ParseError::NameContainsUppercase => LOWERCASE.to_owned(),
        ParseError::NameTooLong => "the repository name is longer than 255 characters".to_owned(),
        ParseError::TagInvalidFormat => {
            "the tag must be 1-128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                .to_owned()
        }
        ParseError::DigestInvalidFormat
        | ParseError::DigestInvalidLength
        | ParseError::DigestUnsupported => {
            "the digest must be sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>".to_owned()
        }
    }
}

/// Splits `name[:tag][@digest]` into the name and the rest.
fn split_name(s: &str) -> (&str, &str) {
    let end = s.find('@').unwrap_or(s.len());
    let before_digest = &s[..end];
    let last_slash = before_digest.rfind('/').map_or(0, |i| i + 1);
    let name_end = before_digest[last_slash..]
        .find(':')
        .map_or(end, |i| last_slash + i);
    s.split_at(name_end)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_normalises() {
        let r = parse_image_reference("registry.example.com/shop/cart-api:1.2.3").unwrap();
        assert_eq!(r.registry(), "registry.example.com");
        assert_eq!(r.repository(), "shop/cart-api");
        assert_eq!(r.tag(), Some("1.2.3"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.to_string(), "registry.example.com/shop/cart-api:1.2.3");

        let r = parse_image_reference("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");

        let r = parse_image_reference("localhost:5000/x").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.to_string(), "localhost:5000/x:latest");
    }

    #[test]
    fn uppercase_is_refused_with_a_clear_reason() {
        assert_eq!(
            parse_image_reference("Registry.Example.com/x").unwrap_err(),
            "repository names must be lowercase"
        );
        assert_eq!(
            parse_image_reference("registry.example.com/Shop/x:1").unwrap_err(),
            "repository names must be lowercase"
        );
        // Uppercase tags are fine.
        assert!(parse_image_reference("registry.example.com/x:V1").is_ok());
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            parse_image_reference("not a ref").unwrap_err(),
            "expected [registry/]repository[:tag][@digest], e.g. registry.example.com/team/app:1.0"
        );
        assert_eq!(
            parse_image_reference("").unwrap_err(),
            "the reference is empty"
        );
        assert_eq!(
            parse_image_reference(" alpine").unwrap_err(),
            "remove the surrounding whitespace"
        );
    }

    #[test]
    fn destinations_refuse_digests() {
        let with_digest = format!("registry.example.com/x@{DIGEST}");
        assert!(parse_image_reference(&with_digest).is_ok());
        assert_eq!(
            parse_destination(&with_digest).unwrap_err(),
            "a destination must not carry a digest (@sha256:...); push targets are tags"
        );
    }

    #[test]
    fn pins_to_a_digest() {
        let r = parse_destination("registry.example.com/shop/cart-api:1.2.3").unwrap();
        assert_eq!(
            r.with_digest(DIGEST),
            format!("registry.example.com/shop/cart-api:1.2.3@{DIGEST}")
        );
    }
}
