//! Deterministic Kubernetes names for a build's objects.
//!
//! These functions are part of the contract between workers: after a
//! takeover, another worker (possibly of another version) must compute the
//! same pod name for the same `(build, image, attempt)` so that creating it
//! answers 409 and the pod is adopted instead of built twice. Never change
//! the algorithm below; add a new function instead.
//!
//! # Algorithm (`pod_name`, `configmap_name`)
//!
//! 1. `raw = "<prefix>-<build>-<image>-<attempt>"` with `attempt` in decimal
//!    (prefix `kiln` for pods, `kiln-df` for Dockerfile ConfigMaps).
//! 2. `clean` = `raw` with ASCII uppercase lowercased and every character
//!    other than `[a-z0-9-]` replaced by `-`.
//! 3. If `clean == raw`, `raw` is at most 63 bytes and `image` contains no
//!    `-`, the name is `raw`. (With no `-` in the image and a decimal
//!    attempt at the end, `raw` splits back into its parts unambiguously, so
//!    distinct inputs cannot share a name.)
//! 4. Otherwise the name is `clean` cut to its first 52 bytes, with
//!    trailing `-` removed, then `-` and the first 10 hex digits of
//!    `sha256(u64be(len(build)) ‖ build ‖ u64be(len(image)) ‖ image ‖ u32be(attempt))`
//!    (lengths in bytes of the UTF-8 encoding). The hash covers the exact
//!    inputs, so inputs that sanitise or truncate to the same text still get
//!    different names.
//!
//! The result is a DNS-1123 label of at most 63 characters: it starts with
//! `k` and ends with a digit (the attempt) or a hex digit (the hash).
//!
//! # Request fingerprints (`request_fingerprint`)
//!
//! Workers store a fingerprint of the request a build was accepted for and
//! compare it with the fingerprint of a later request under the same id:
//! equal means the owner re-sent it (a duplicate), different means the id is
//! reused for another request (`IdConflict`). Workers of different versions
//! must agree, so this algorithm is fixed too:
//!
//! 1. The parsed request (so whitespace, key order, escapes and explicit
//!    `null`s of the message are gone) is written as a JSON value.
//! 2. Defaults of the wire contract are made explicit: an image with neither
//!    `dockerfile` nor `dockerfileInline` gets `"dockerfile": "Dockerfile"`;
//!    empty `retry` and `resources` objects are removed. Defaults of the
//!    worker's policy are not applied (policy may change between the two
//!    requests; the request did not).
//! 3. The value is written compactly with the keys of every object sorted
//!    by their UTF-8 bytes; strings and numbers as `serde_json` writes them.
//! 4. The fingerprint is the 64 lowercase hex digits of the SHA-256 of that
//!    text.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::request::{BuildRequest, DEFAULT_DOCKERFILE};

pub use crate::validate::is_dns1123_label;
use crate::validate::is_label_value;

/// Longest Kubernetes label / DNS label.
pub const MAX_LABEL_LEN: usize = 63;
/// Hex digits of the hash suffix in object names.
const NAME_HASH_HEX: usize = 10;

/// Name of the Kaniko pod of one attempt of one image.
pub fn pod_name(build_id: &str, image: &str, attempt: u32) -> String {
    object_name("kiln", build_id, image, attempt)
}

/// The `image` argument of [`pod_name`] and [`configmap_name`] for the pods
/// of one platform of an image with `platforms`: `<image>/<platform>`.
/// Image names never contain `/`, so these names are always the hashed
/// form (step 4) and never meet an image's own.
pub fn platform_unit(image: &str, platform: &str) -> String {
    format!("{image}/{platform}")
}

/// The `image` argument of [`pod_name`] for the publish step of an image
/// with `platforms`: `<image>/publish` (`publish` is no platform, which
/// always has a `/`).
pub fn publish_unit(image: &str) -> String {
    format!("{image}/publish")
}

/// Name of the ConfigMap holding the rendered inline Dockerfile of one
/// attempt. (ConfigMap names may be 253 long; keeping 63 lets the same rule
/// serve both.)
pub fn configmap_name(build_id: &str, image: &str, attempt: u32) -> String {
    object_name("kiln-df", build_id, image, attempt)
}

fn object_name(prefix: &str, build_id: &str, image: &str, attempt: u32) -> String {
    let raw = format!("{prefix}-{build_id}-{image}-{attempt}");
    let clean: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if clean == raw && raw.len() <= MAX_LABEL_LEN && !image.contains('-') {
        return raw;
    }
    let keep = MAX_LABEL_LEN - NAME_HASH_HEX - 1;
    // `clean` is ASCII, so any byte index is a char boundary.
    let head = clean[..clean.len().min(keep)].trim_end_matches('-');
    let hash = tuple_hash(build_id, image, attempt);
    format!("{head}-{}", &hash[..NAME_HASH_HEX])
}

fn tuple_hash(build_id: &str, image: &str, attempt: u32) -> String {
    let mut h = Sha256::new();
    h.update((build_id.len() as u64).to_be_bytes());
    h.update(build_id.as_bytes());
    h.update((image.len() as u64).to_be_bytes());
    h.update(image.as_bytes());
    h.update(attempt.to_be_bytes());
    hex(&h.finalize())
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The fingerprint of a request (see the module docs): equal for requests
/// that mean the same build, different otherwise.
pub fn request_fingerprint(request: &BuildRequest) -> String {
    let mut value = serde_json::to_value(request).unwrap_or(Value::Null);
    if let Some(obj) = value.as_object_mut() {
        remove_if_empty(obj, "retry");
        if let Some(Value::Array(images)) = obj.get_mut("images") {
            for image in images.iter_mut().filter_map(Value::as_object_mut) {
                if !image.contains_key("dockerfile") && !image.contains_key("dockerfileInline") {
                    image.insert("dockerfile".into(), DEFAULT_DOCKERFILE.into());
                }
                remove_if_empty(image, "resources");
            }
        }
    }
    let mut text = String::new();
    canonical_json(&value, &mut text);
    sha256_hex(text.as_bytes())
}

fn remove_if_empty(obj: &mut serde_json::Map<String, Value>, key: &str) {
    if obj
        .get(key)
        .and_then(Value::as_object)
        .is_some_and(serde_json::Map::is_empty)
    {
        obj.remove(key);
    }
}

/// Compact JSON with every object's keys sorted by their bytes, whatever
/// order the map keeps them in (`serde_json`'s `preserve_order` feature may
/// be on in a dependency graph).
pub(crate) fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A Kubernetes label value standing for `value`: `value` itself when it is a
/// valid label value, else `h-` and the first 40 hex digits of
/// `sha256(value)` (so label selectors still work for build ids that are not
/// label values; the full value goes in an annotation).
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_owned();
    }
    let digest = sha256_hex(value.as_bytes());
    format!("h-{}", &digest[..40])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn readable_when_possible() {
        assert_eq!(pod_name("build7", "api", 1), "kiln-build7-api-1");
        assert_eq!(configmap_name("build7", "api", 1), "kiln-df-build7-api-1");
        assert_eq!(
            pod_name("shop-cart-7f3a", "api", 2),
            "kiln-shop-cart-7f3a-api-2"
        );
    }

    /// Pinned outputs, computed by an independent (Python) implementation of
    /// the algorithm in the module docs: if one of these changes, workers of different versions
    /// would disagree on names and rebuild instead of adopting.
    #[test]
    fn stable_across_versions() {
        assert_eq!(
            pod_name("shop-cart-1.2.3-7f3a", "api", 2),
            "kiln-shop-cart-1-2-3-7f3a-api-2-16942c3d74"
        );
        assert_eq!(pod_name("b", "cart-api", 1), "kiln-b-cart-api-1-08edc7d123");
        assert_eq!(
            pod_name(&"x".repeat(128), "api", 10),
            "kiln-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-87774b85b1"
        );
        assert_eq!(
            configmap_name("Shop_Cart", "web", 1),
            "kiln-df-shop-cart-web-1-4a59580cd1"
        );
        assert_eq!(label_value("shop-cart-1.2.3-7f3a"), "shop-cart-1.2.3-7f3a");
        assert_eq!(
            label_value(&"x".repeat(100)),
            "h-09ecb6ebc8bcefc733f6f2ec44f791abeed6a99e"
        );
    }

    /// Pinned like the names above (the same algorithm, with the unit as
    /// the image).
    #[test]
    fn platform_and_publish_pods_are_named_apart() {
        let amd = pod_name("b", &platform_unit("api", "linux/amd64"), 1);
        let arm = pod_name("b", &platform_unit("api", "linux/arm64"), 1);
        let publish = pod_name("b", &publish_unit("api"), 1);
        assert!(amd.starts_with("kiln-b-api-linux-amd64-1-"), "{amd}");
        assert!(publish.starts_with("kiln-b-api-publish-1-"), "{publish}");
        assert_ne!(amd, arm);
        assert_ne!(amd, pod_name("b", "api-linux-amd64", 1));
        for n in [amd, arm, publish] {
            assert!(is_dns1123_label(&n), "{n}");
        }
    }

    #[test]
    fn ambiguous_splits_differ() {
        assert_ne!(pod_name("a-b", "c", 1), pod_name("a", "b-c", 1));
        assert_ne!(pod_name("a.b", "c", 1), pod_name("a-b", "c", 1));
        assert_ne!(pod_name("A", "c", 1), pod_name("a", "c", 1));
    }

    #[test]
    fn always_dns_labels() {
        for (b, i, a) in [
            ("", "", 0),
            ("...", "---", u32::MAX),
            ("ÄÖÜ", "日本", 3),
            (&*"Z".repeat(300), "x", 1),
        ] {
            let n = pod_name(b, i, a);
            assert!(is_dns1123_label(&n), "{n}");
            let n = configmap_name(b, i, a);
            assert!(is_dns1123_label(&n), "{n}");
        }
    }

    fn request(json: &str) -> BuildRequest {
        crate::decode::parse_build_request(json.as_bytes()).unwrap()
    }

    /// Pinned: workers of different versions compare fingerprints, so the
    /// algorithm of the module docs must not change. The expected value is
    /// the SHA-256 of the canonical text written out here (computed with
    /// `sha256sum`).
    #[test]
    fn fingerprints_are_stable_across_versions() {
        let r = request(
            r#"{"kind":"BuildRequest","apiVersion":"kiln/v1","id":"b-1","labels":{"z":"1","a":"2"},
                "retry":{},"images":[{"name":"api","destinations":["r.example.com/a:1"],
                "context":{"url":"https://e.example.com/c.tar.gz"},"resources":{},
                "templateArgs":{}}]}"#,
        );
        let canonical = r#"{"apiVersion":"kiln/v1","id":"b-1","images":[{"context":{"url":"https://e.example.com/c.tar.gz"},"destinations":["r.example.com/a:1"],"dockerfile":"Dockerfile","name":"api"}],"kind":"BuildRequest","labels":{"a":"2","z":"1"}}"#;
        assert_eq!(request_fingerprint(&r), sha256_hex(canonical.as_bytes()));
        assert_eq!(
            request_fingerprint(&r),
            "ded481057a7dc9548b5c4db1054fa10d64a4c49afd6ac5816f530bcd1d2a299a"
        );
    }

    #[test]
    fn fingerprints_make_contract_defaults_explicit() {
        let base = r#"{"apiVersion":"kiln/v1","kind":"BuildRequest","id":"b","images":[{"name":"api",
            "context":{"url":"https://e.example.com/c.tar.gz"},"destinations":["r.example.com/a:1"]XX}]}"#;
        let with = |extra: &str| request_fingerprint(&request(&base.replace("XX", extra)));
        let plain = with("");
        assert_eq!(with(r#","dockerfile":"Dockerfile""#), plain);
        assert_eq!(with(r#","resources":{}"#), plain);
        assert_eq!(with(r#","dockerfile":null"#), plain);
        assert_ne!(with(r#","dockerfile":"other/Dockerfile""#), plain);
        assert_ne!(with(r#","dockerfileInline":"FROM x""#), plain);
        assert_ne!(
            with(r#","cache":false"#),
            plain,
            "policy defaults are not applied"
        );
        assert_ne!(with(r#","resources":{"cpu":"1"}"#), plain);
    }
}
