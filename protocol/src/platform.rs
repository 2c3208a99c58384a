//! Multi-platform images (`platforms` on an image): the names Kiln derives
//! from a platform. Part of the contract: the per-platform tags are what the
//! platform pods push and the publish step reads, and a worker of another
//! version must derive the same ones.

use crate::limits::{MAX_PLATFORMS, MIN_PLATFORMS};
use crate::names::label_value;

/// Longest tag a registry accepts (the distribution grammar).
const MAX_TAG_LEN: usize = 128;

/// `linux/arm64/v8` → `linux-arm64-v8`: the suffix of the per-platform tags.
pub fn platform_suffix(platform: &str) -> String {
    platform.replace('/', "-")
}

/// The value of the `kiln.dev/platform` label of a platform's pods: the
/// suffix when it is a valid label value (always, for platforms of up to 63
/// characters), else its hashed form ([`label_value`]).
pub fn platform_label(platform: &str) -> String {
    label_value(&platform_suffix(platform))
}

/// The platform a `kiln.dev/platform` label stands for (platforms have no
/// `-`, so the suffix reads back); `None` for a hashed label.
pub fn platform_of_label(label: &str) -> Option<String> {
    (!label.starts_with("h-")).then(|| label.replace('-', "/"))
}

/// The tag of `destination` (`registry/repo:tag`, no digest), if it names one.
pub fn destination_tag(destination: &str) -> Option<&str> {
    if destination.contains('@') {
        return None;
    }
    let last = destination.rsplit('/').next().unwrap_or(destination);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Where a platform's pod pushes for `destination`: the same repository
/// under `<tag>-<os>-<arch>[-<variant>]`, spelled as the request spelled the
/// destination. The reason when `destination` names no tag or the tag gets
/// too long.
pub fn platform_destination(destination: &str, platform: &str) -> Result<String, String> {
    let Some(tag) = destination_tag(destination) else {
        return Err(
            "with platforms, every destination must name its tag (registry/repo:tag): the per-platform tags are derived from it"
                .to_owned(),
        );
    };
    let suffix = platform_suffix(platform);
    let len = tag.len() + 1 + suffix.len();
    if len > MAX_TAG_LEN {
        return Err(format!(
            "the per-platform tag {tag}-{suffix} would be {len} characters; tags are at most {MAX_TAG_LEN}"
        ));
    }
    Ok(format!("{destination}-{suffix}"))
}

/// How many platforms an image may name.
pub fn platforms_count_problem(n: usize) -> Option<String> {
    (!(MIN_PLATFORMS..=MAX_PLATFORMS).contains(&n)).then(|| {
        format!("has {n} platforms; give {MIN_PLATFORMS} to {MAX_PLATFORMS} (one platform: use platform)")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_platform_tags_keep_the_spelling() {
        assert_eq!(
            platform_destination("r.example.com/shop/api:1.2", "linux/arm64/v8").as_deref(),
            Ok("r.example.com/shop/api:1.2-linux-arm64-v8")
        );
        assert_eq!(
            platform_destination("localhost:5000/api:v1", "linux/amd64").as_deref(),
            Ok("localhost:5000/api:v1-linux-amd64")
        );
        let e = platform_destination("localhost:5000/api", "linux/amd64").unwrap_err();
        assert!(e.contains("must name its tag"), "{e}");
        let e = platform_destination(
            &format!("r.example.com/a:{}", "t".repeat(120)),
            "linux/amd64",
        )
        .unwrap_err();
        assert!(e.contains("at most 128"), "{e}");
    }

    #[test]
    fn labels_and_suffixes() {
        assert_eq!(platform_suffix("linux/amd64"), "linux-amd64");
        assert_eq!(platform_label("linux/arm64/v8"), "linux-arm64-v8");
        assert_eq!(
            platform_of_label("linux-arm64-v8").as_deref(),
            Some("linux/arm64/v8")
        );
        assert!(platform_label(&format!("linux/{}", "a".repeat(63))).starts_with("h-"));
        assert_eq!(destination_tag("r.example.com:5000/a"), None);
        assert_eq!(destination_tag("r.example.com:5000/a:b"), Some("b"));
    }
}
