//! The documents of the publish step (docs/protocol.md, "The publish
//! step"): the image index of a multi-platform image, built from its
//! platform manifests, and the referrer manifests that attach a DSSE
//! envelope to a subject, with the referrers tag schema's index.
//!
//! Same inputs, same bytes: fields are written in one fixed order, children
//! are sorted by platform, and nothing varies (no timestamps, no
//! annotations), so a publish retried after a crash pushes the very index
//! it pushed before and the registry reports the same digest. The digests
//! themselves are computed by the caller (this crate hashes nothing).

use std::fmt;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest media type a registry may serve: what the publish step
/// accepts (a registry serves a manifest only to a client naming its type).
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
/// The referrers' `artifactType`, and the media type of their one layer:
/// the DSSE envelope itself.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The OCI empty descriptor (`{}`), the config of an artifact manifest.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A document's problem, said so that the caller can name the child.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("platform {0:?} is not os/arch[/variant] (lowercase letters, digits, _)")]
    BadPlatform(String),
    #[error("{0}")]
    BadManifest(String),
    #[error("an index needs at least one child")]
    NoChildren,
    #[error("platform {0} is named twice")]
    DuplicatePlatform(Platform),
    #[error("the children mix OCI and Docker manifests ({0}); an index holds one kind")]
    MixedKinds(String),
}

/// `os/architecture[/variant]`, ordered as its string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` as the request's `platforms` entries are
    /// written (`[a-z0-9_]` os and arch, `[a-z0-9_.]` variant, 1-32 each).
    pub fn parse(s: &str) -> Result<Self, IndexError> {
        let bad = || IndexError::BadPlatform(s.to_owned());
        let part = |p: &str, dot: bool| {
            (1..=32).contains(&p.len())
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dot && b == b'.')
                })
        };
        let mut parts = s.split('/');
        let (os, arch) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
        let variant = parts.next();
        if parts.next().is_some()
            || !part(os, false)
            || !part(arch, false)
            || variant.is_some_and(|v| !part(v, true))
        {
            return Err(bad());
        }
        Ok(Self {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }

    /// The label- and tag-safe form: `os-arch[-variant]`.
    pub fn dashed(&self) -> String {
        self.to_string().replace('/', "-")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The per-platform tag a platform pod pushes to: `<tag>-<os>-<arch>[-<variant>]`.
pub fn platform_tag(tag: &str, platform: &Platform) -> String {
    format!("{tag}-{}", platform.dashed())
}

/// A content descriptor: what a document is, where (digest) and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// A platform manifest as the registry served it, read for the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildManifest {
    /// OCI image manifest or Docker v2 manifest.
    pub media_type: String,
    /// The config blob, whose os/architecture/variant are checked.
    pub config: Descriptor,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// Reads a child manifest (`content_type` as served): an OCI image
/// manifest or a Docker v2 manifest with a config; an index, a schema 1
/// manifest or anything else is refused, saying what it is.
pub fn read_child_manifest(bytes: &[u8], content_type: &str) -> Result<ChildManifest, IndexError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| IndexError::BadManifest(format!("the manifest is not JSON: {e}")))?;
    // The body's own mediaType wins over the header (a registry may answer
    // with a parameter or a generic type).
    let media_type = raw.media_type.clone().unwrap_or_else(|| {
        content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    });
    if raw.schema_version != Some(2)
        || ![OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type.as_str())
    {
        return Err(IndexError::BadManifest(format!(
            "the manifest is a {media_type:?} (schemaVersion {:?}), not an image manifest",
            raw.schema_version
        )));
    }
    let config = raw
        .config
        .ok_or_else(|| IndexError::BadManifest("the manifest has no config".to_owned()))?;
    Ok(ChildManifest {
        media_type,
        config: Descriptor {
            media_type: config.media_type,
            digest: config.digest,
            size: config.size,
        },
    })
}

#[derive(Deserialize)]
struct RawConfig {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

/// The platform an image config says (`os`, `architecture`, `variant`).
pub fn config_platform(config: &[u8]) -> Result<Platform, IndexError> {
    let raw: RawConfig = serde_json::from_slice(config)
        .map_err(|e| IndexError::BadManifest(format!("the image config is not JSON: {e}")))?;
    Ok(Platform {
        os: raw.os.unwrap_or_default(),
        architecture: raw.architecture.unwrap_or_default(),
        variant: raw.variant.filter(|v| !v.is_empty()),
    })
}

/// Whether an image whose config says `found` is one for `asked`. The
/// variant is compared only when `asked` names one: `linux/arm64` matches
/// an image whose config says `arm64/v8`, as a runtime's default does.
pub fn platform_matches(asked: &Platform, found: &Platform) -> bool {
    asked.os == found.os
        && asked.architecture == found.architecture
        && (asked.variant.is_none() || asked.variant == found.variant)
}

/// One child of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub platform: Platform,
    pub manifest: Descriptor,
}

/// A document to push: its bytes and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

// Field order is the serialised order (serde derives keep it), so the bytes
// depend on nothing but the values.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexOut<'a> {
    schema_version: u8,
    media_type: &'a str,
    manifests: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryOut<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformOut<'a>>,
}

#[derive(Serialize)]
struct PlatformOut<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// The index of `children`: sorted by platform string, each platform once,
/// an OCI image index when the children are OCI manifests, a Docker
/// manifest list when they are Docker v2 manifests (never a mix).
pub fn image_index(children: &[Child]) -> Result<Document, IndexError> {
    let mut sorted: Vec<&Child> = children.iter().collect();
    sorted.sort_by_key(|c| c.platform.to_string());
    if let Some(w) = sorted.windows(2).find(|w| w[0].platform == w[1].platform) {
        return Err(IndexError::DuplicatePlatform(w[0].platform.clone()));
    }
    let first = sorted.first().ok_or(IndexError::NoChildren)?;
    let kind = &first.manifest.media_type;
    if let Some(other) = sorted.iter().find(|c| &c.manifest.media_type != kind) {
        return Err(IndexError::MixedKinds(format!(
            "{} is {}, {} is {}",
            first.platform, kind, other.platform, other.manifest.media_type
        )));
    }
    let media_type = match kind.as_str() {
        OCI_MANIFEST => OCI_INDEX,
        DOCKER_MANIFEST => DOCKER_LIST,
        other => {
            return Err(IndexError::BadManifest(format!(
                "a child is a {other:?}, not an image manifest"
            )));
        }
    };
    let manifests = sorted
        .iter()
        .map(|c| EntryOut {
            media_type: &c.manifest.media_type,
            digest: &c.manifest.digest,
            size: c.manifest.size,
            artifact_type: None,
            platform: Some(PlatformOut {
                architecture: &c.platform.architecture,
                os: &c.platform.os,
                variant: c.platform.variant.as_deref(),
            }),
        })
        .collect();
    Ok(Document {
        bytes: to_vec(&IndexOut {
            schema_version: 2,
            media_type,
            manifests,
        }),
        media_type,
    })
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string
    // keys, no failing Serialize impls).
    serde_json::to_vec(value).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerOut<'a> {
    schema_version: u8,
    media_type: &'a str,
    artifact_type: &'a str,
    config: ConfigOut<'a>,
    layers: [EntryOut<'a>; 1],
    subject: EntryOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigOut<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    data: &'a str,
}

fn entry(d: &Descriptor) -> EntryOut<'_> {
    EntryOut {
        media_type: &d.media_type,
        digest: &d.digest,
        size: d.size,
        artifact_type: None,
        platform: None,
    }
}

/// The artifact manifest that attaches `envelope` (a DSSE envelope blob)
/// to `subject`: an OCI image manifest with `artifactType`
/// [`DSSE_ENVELOPE`], the empty config, the envelope as its one layer and
/// `subject`.
pub fn referrer_manifest(subject: &Descriptor, envelope: &Descriptor) -> Document {
    Document {
        bytes: to_vec(&ReferrerOut {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            artifact_type: DSSE_ENVELOPE,
            config: ConfigOut {
                media_type: OCI_EMPTY,
                digest: EMPTY_DIGEST,
                size: 2,
                data: "e30=",
            },
            layers: [entry(envelope)],
            subject: entry(subject),
        }),
        media_type: OCI_MANIFEST,
    }
}

/// The referrers tag schema's tag of `digest`: `sha256:<hex>` ->
/// `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    media_type: String,
    digest: String,
    size: u64,
    artifact_type: Option<String>,
}

/// The referrers tag schema's index with `referrer` (an artifact manifest
/// of type `artifact_type`) added to `existing` (the index the tag holds, if
/// any); `None` when it is there already (nothing to push). Existing
/// entries are kept as they are, in their order; the new one goes last.
pub fn referrers_index(
    existing: Option<&[u8]>,
    referrer: &Descriptor,
    artifact_type: &str,
) -> Result<Option<Document>, IndexError> {
    let entries = match existing {
        Some(bytes) => {
            serde_json::from_slice::<RawIndex>(bytes)
                .map_err(|e| {
                    IndexError::BadManifest(format!("the referrers tag's index is not JSON: {e}"))
                })?
                .manifests
        }
        None => Vec::new(),
    };
    if entries.iter().any(|e| e.digest == referrer.digest) {
        return Ok(None);
    }
    let mut manifests: Vec<EntryOut<'_>> = entries
        .iter()
        .map(|e| EntryOut {
            media_type: &e.media_type,
            digest: &e.digest,
            size: e.size,
            artifact_type: e.artifact_type.as_deref(),
            platform: None,
        })
        .collect();
    manifests.push(EntryOut {
        artifact_type: Some(artifact_type),
        ..entry(referrer)
    });
    Ok(Some(Document {
        bytes: to_vec(&IndexOut {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests,
        }),
        media_type: OCI_INDEX,
    }))
}

#[cfg(test)]
mod tests;
