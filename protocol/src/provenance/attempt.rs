//! The statement of one succeeded attempt, from the facts the worker saw.

use std::collections::BTreeMap;

use serde_json::Value;

use super::statement::{
    BUILD_TYPE, BuildDefinition, BuildMetadata, Builder, Provenance, ResourceDescriptor,
    RunDetails, Statement,
};

/// What the worker observed of one attempt that pushed `digest`. Everything
/// here is fixed once the attempt ended, so its statement is too.
#[derive(Debug, Clone)]
pub struct AttemptFacts<'a> {
    pub build_id: &'a str,
    pub image: &'a str,
    pub attempt: u32,
    /// The image's destinations as the request names them.
    pub destinations: &'a [String],
    /// `sha256:<hex>`, what the executor reported and the event carries.
    pub digest: &'a str,
    /// The request as received, secrets masked, with its fingerprint.
    pub external_parameters: Value,
    /// What policy and the worker's settings added.
    pub internal_parameters: Value,
    /// The source (git commit, context archive) and the executor image.
    pub resolved_dependencies: Vec<ResourceDescriptor>,
    /// This installation (see docs/protocol.md).
    pub builder_id: &'a str,
    pub started_on: Option<jiff::Timestamp>,
    pub finished_on: Option<jiff::Timestamp>,
}

/// `<build>/<image>/<attempt>`, the statement's `invocationId`.
pub fn invocation_id(build_id: &str, image: &str, attempt: u32) -> String {
    format!("{build_id}/{image}/{attempt}")
}

/// The statement of `facts`: one subject per destination, each with the
/// pushed digest. `None` when the digest is not `sha256:<64 hex>`, which no
/// subject could carry.
pub fn statement_for(facts: AttemptFacts<'_>) -> Option<Statement> {
    sha256_hex_of(facts.digest)?;
    let subject = facts
        .destinations
        .iter()
        .map(|destination| subject_of(destination, facts.digest, None))
        .collect::<Option<Vec<_>>>()?;
    Some(statement_about(subject, facts))
}

/// A subject: `name` (an image reference with its tag) pushed as `digest`
/// (`sha256:<64 hex>`, else `None`), with the annotation `platform` when
/// it is one platform's manifest of a multi-platform image.
pub fn subject_of(name: &str, digest: &str, platform: Option<&str>) -> Option<ResourceDescriptor> {
    let hex = sha256_hex_of(digest)?;
    Some(ResourceDescriptor {
        name: Some(name.to_owned()),
        digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
        annotations: platform
            .map(|p| BTreeMap::from([("platform".to_owned(), Value::from(p))]))
            .unwrap_or_default(),
        ..ResourceDescriptor::default()
    })
}

/// The statement about `subject` (which replaces the one `facts`'
/// destinations and digest would give): the platform manifests of a
/// multi-platform image, signed before its index exists.
pub fn statement_about(subject: Vec<ResourceDescriptor>, facts: AttemptFacts<'_>) -> Statement {
    Statement::new(
        subject,
        Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.to_owned(),
                external_parameters: facts.external_parameters,
                internal_parameters: facts.internal_parameters,
                resolved_dependencies: facts.resolved_dependencies,
            },
            run_details: RunDetails {
                builder: Builder {
                    id: facts.builder_id.to_owned(),
                    version: BTreeMap::new(),
                    builder_dependencies: Vec::new(),
                },
                metadata: BuildMetadata {
                    invocation_id: Some(invocation_id(facts.build_id, facts.image, facts.attempt)),
                    started_on: facts.started_on,
                    finished_on: facts.finished_on,
                },
                byproducts: Vec::new(),
            },
        },
    )
}

/// A git source: `git+<url>@<ref>` (SLSA's convention) with the commit, when
/// it is a full hex object id.
pub fn git_dependency(
    url: &str,
    reference: Option<&str>,
    commit: Option<&str>,
) -> ResourceDescriptor {
    let uri = match reference {
        Some(r) if !r.is_empty() => format!("git+{url}@{r}"),
        _ => format!("git+{url}"),
    };
    let digest = commit
        .filter(|c| matches!(c.len(), 40 | 64) && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|c| BTreeMap::from([("gitCommit".to_owned(), c.to_ascii_lowercase())]))
        .unwrap_or_default();
    ResourceDescriptor {
        uri: Some(uri),
        digest,
        ..ResourceDescriptor::default()
    }
}

/// The image a container ran, from the kubelet's `imageID`
/// (`docker-pullable://repo@sha256:…`, `repo@sha256:…`, or `sha256:…` alone
/// from some runtimes): `uri` the repository (or `image`, the reference the
/// pod spec named, when the id has none) and `digest.sha256`.
pub fn image_dependency(image: &str, image_id: &str) -> Option<ResourceDescriptor> {
    let id = image_id
        .strip_prefix("docker-pullable://")
        .or_else(|| image_id.strip_prefix("docker://"))
        .unwrap_or(image_id);
    let (repository, digest) = match id.rsplit_once('@') {
        Some((repo, digest)) => (repo, digest),
        None => (image.split('@').next().unwrap_or(image), id),
    };
    let hex = sha256_hex_of(digest)?;
    Some(ResourceDescriptor {
        uri: Some(format!("oci://{repository}")),
        digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
        ..ResourceDescriptor::default()
    })
}

fn sha256_hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn executor_image_ids_of_every_runtime() {
        let digest = format!("sha256:{HEX}");
        for id in [
            format!("docker-pullable://gcr.io/kaniko-project/executor@{digest}"),
            format!("gcr.io/kaniko-project/executor@{digest}"),
            digest.clone(),
        ] {
            let dep = image_dependency("gcr.io/kaniko-project/executor:v1.23.2", &id).unwrap();
            assert_eq!(dep.digest_of("sha256"), Some(HEX), "{id}");
            let uri = dep.uri.unwrap();
            assert!(
                uri.starts_with("oci://gcr.io/kaniko-project/executor"),
                "{id}: {uri}"
            );
        }
        // A tag is not a digest: nothing is claimed.
        assert!(image_dependency("x", "gcr.io/kaniko-project/executor:v1").is_none());
    }

    #[test]
    fn git_commit_only_when_it_is_one() {
        let c = "0123456789ABCDEF0123456789abcdef01234567";
        let dep = git_dependency(
            "https://git.example.com/a.git",
            Some("refs/heads/main"),
            Some(c),
        );
        assert_eq!(
            dep.uri.as_deref(),
            Some("git+https://git.example.com/a.git@refs/heads/main")
        );
        assert_eq!(
            dep.digest_of("gitCommit"),
            Some(c.to_ascii_lowercase().as_str())
        );
        assert!(git_dependency("u", None, Some("main")).digest.is_empty());
    }

    #[test]
    fn a_digest_that_is_not_sha256_has_no_statement() {
        let facts = |digest| AttemptFacts {
            build_id: "b",
            image: "api",
            attempt: 2,
            destinations: &[],
            digest,
            external_parameters: Value::Null,
            internal_parameters: Value::Null,
            resolved_dependencies: Vec::new(),
            builder_id: "urn:kiln:test",
            started_on: None,
            finished_on: None,
        };
        assert!(statement_for(facts("sha512:00")).is_none());
        let s = statement_for(facts(&format!("sha256:{HEX}"))).unwrap();
        assert_eq!(
            s.predicate.run_details.metadata.invocation_id.as_deref(),
            Some("b/api/2")
        );
    }
}
