//! The publish step itself: per destination repository, the children by
//! digest, their configs checked against the platforms asked, the index
//! pushed under each destination tag, then each envelope attached to the
//! index and to every child.

use std::path::PathBuf;

use kiln_core::classify::{PublishClass, parse_digest};
use kiln_core::index::{self, Child, DSSE_ENVELOPE, Descriptor, Document, OCI_MANIFEST, Platform};
use oci_client::Reference;

use super::client::{self, CallError, Repo};
use super::credentials::DockerConfig;
use super::error::PublishError;

/// How many platforms and destinations a publish takes (the request's
/// bounds: `platforms` 2-8, `destinations` 1-8).
const PLATFORMS: std::ops::RangeInclusive<usize> = 2..=8;
const DESTINATIONS: std::ops::RangeInclusive<usize> = 1..=8;

/// What `kiln publish` was asked, checked.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Each platform with the manifest digest its pod reported.
    pub platforms: Vec<(Platform, String)>,
    /// `registry/repo:tag`, as requested.
    pub destinations: Vec<Reference>,
    /// Registries spoken to over plain HTTP (`host[:port]`).
    pub insecure_registries: Vec<String>,
    /// DSSE envelope files to attach as referrers.
    pub attach: Vec<PathBuf>,
    /// The directory of the docker config (`config.json`).
    pub docker_config: Option<PathBuf>,
}

impl PublishRequest {
    /// Checks the command line's values: `os/arch[/variant]=sha256:<hex>`
    /// platforms (2-8, distinct), `registry/repo:tag` destinations (1-8).
    pub fn parse(
        platforms: &[String],
        destinations: &[String],
        insecure_registries: &[String],
        attach: &[PathBuf],
    ) -> Result<Self, PublishError> {
        if !PLATFORMS.contains(&platforms.len()) {
            return Err(PublishError::invalid(format!(
                "--platform: {} given, 2 to 8 expected",
                platforms.len()
            )));
        }
        if !DESTINATIONS.contains(&destinations.len()) {
            return Err(PublishError::invalid(format!(
                "--destination: {} given, 1 to 8 expected",
                destinations.len()
            )));
        }
        let mut parsed: Vec<(Platform, String)> = Vec::new();
        for arg in platforms {
            let (platform, digest) = parse_platform_arg(arg)?;
            if parsed.iter().any(|(p, _)| *p == platform) {
                return Err(PublishError::invalid(format!(
                    "--platform={arg}: platform {platform} is given twice"
                )));
            }
            parsed.push((platform, digest));
        }
        let destinations = destinations
            .iter()
            .map(|d| parse_destination(d))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = insecure_registries
            .iter()
            .find(|r| r.is_empty() || r.contains('/'))
        {
            return Err(PublishError::invalid(format!(
                "--insecure-registry={bad}: not a host[:port]"
            )));
        }
        Ok(Self {
            platforms: parsed,
            destinations,
            insecure_registries: insecure_registries.to_vec(),
            attach: attach.to_vec(),
            docker_config: DockerConfig::default_dir(),
        })
    }
}

fn parse_platform_arg(arg: &str) -> Result<(Platform, String), PublishError> {
    let (platform, digest) = arg.split_once('=').ok_or_else(|| {
        PublishError::invalid(format!(
            "--platform={arg}: expected os/arch[/variant]=sha256:<hex>"
        ))
    })?;
    let platform = Platform::parse(platform)
        .map_err(|e| PublishError::invalid(format!("--platform={arg}: {e}")))?;
    match parse_digest(digest) {
        Some(d) if d == digest => Ok((platform, d)),
        _ => Err(PublishError::invalid(format!(
            "--platform={arg}: the digest is not sha256:<64 lowercase hex>"
        ))),
    }
}

fn parse_destination(arg: &str) -> Result<Reference, PublishError> {
    let reference: Reference = arg
        .parse()
        .map_err(|e| PublishError::invalid(format!("--destination={arg}: {e}")))?;
    if reference.digest().is_some() || !arg.rsplit('/').next().unwrap_or("").contains(':') {
        return Err(PublishError::invalid(format!(
            "--destination={arg}: a destination must name a tag (registry/repo:tag) and no digest"
        )));
    }
    Ok(reference)
}

/// Publishes the index under every destination and returns its digest
/// (`sha256:<hex>`, the same for every destination: same children, same
/// bytes).
pub async fn publish(req: &PublishRequest) -> Result<String, PublishError> {
    let config = DockerConfig::load(req.docker_config.as_deref())?;
    let envelopes = req
        .attach
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|e| {
                PublishError::invalid(format!("--attach={}: cannot be read: {e}", p.display()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = client::client(&req.insecure_registries);
    let mut published: Option<String> = None;
    for (repo_ref, tags) in repositories(&req.destinations) {
        let auth = config.auth_for(repo_ref.registry())?;
        let repo = Repo::new(&client, repo_ref, &auth).await;
        let children = fetch_children(&repo, &req.platforms).await?;
        let index = index::image_index(&children)
            .map_err(|e| PublishError::invalid(format!("the index of {}: {e}", repo.name())))?;
        let own = client::sha256_digest(&index.bytes);
        for tag in tags {
            let reported = repo
                .put(Some(tag), &index)
                .await
                .map_err(|e| push_error(&e, &repo, tag, &children))?;
            if reported != own {
                return Err(PublishError::new(
                    PublishClass::Retryable,
                    format!(
                        "the registry reports {reported} for {}:{tag}, whose index has sha256 {own}",
                        repo.name()
                    ),
                ));
            }
        }
        for envelope in &envelopes {
            attach(&repo, &index, &own, &children, envelope).await?;
        }
        match &published {
            Some(d) if *d != own => {
                return Err(PublishError::new(
                    PublishClass::Retryable,
                    format!("the index differs between repositories ({d} and {own})"),
                ));
            }
            _ => published = Some(own),
        }
    }
    published.ok_or_else(|| PublishError::invalid("--destination: none given"))
}

/// The destinations grouped by repository, in their order: each
/// repository's first reference and its tags.
fn repositories(destinations: &[Reference]) -> Vec<(&Reference, Vec<&str>)> {
    let mut out: Vec<(&Reference, Vec<&str>)> = Vec::new();
    for d in destinations {
        let tag = d.tag().unwrap_or("latest");
        match out
            .iter_mut()
            .find(|(r, _)| r.registry() == d.registry() && r.repository() == d.repository())
        {
            Some((_, tags)) if tags.contains(&tag) => {}
            Some((_, tags)) => tags.push(tag),
            None => out.push((d, vec![tag])),
        }
    }
    out
}

fn call_error(e: &CallError, context: &str) -> PublishError {
    PublishError::new(e.class, format!("{context}: {}", e.text))
}

/// Each platform's manifest and config, checked: the children of the
/// index, with the platform their configs say.
async fn fetch_children(
    repo: &Repo<'_>,
    platforms: &[(Platform, String)],
) -> Result<Vec<Child>, PublishError> {
    let mut children = Vec::new();
    for (asked, digest) in platforms {
        let what = format!("child {digest} ({asked}) in {}", repo.name());
        let bytes = repo.manifest(digest).await.map_err(|e| {
            if e.not_found {
                PublishError::new(
                    PublishClass::Retryable,
                    format!("{what} is missing: {}", e.text),
                )
            } else {
                call_error(&e, &format!("fetching {what}"))
            }
        })?;
        let manifest = index::read_child_manifest(&bytes, "")
            .map_err(|e| PublishError::invalid(format!("{what}: {e}")))?;
        let config = repo
            .small_blob(&manifest.config)
            .await
            .map_err(|e| call_error(&e, &format!("fetching the config of {what}")))?;
        let found = index::config_platform(&config)
            .map_err(|e| PublishError::invalid(format!("{what}: {e}")))?;
        if !index::platform_matches(asked, &found) {
            return Err(PublishError::new(
                PublishClass::PlatformMismatch,
                format!("{what} was built for {found} (its config says so), not for {asked}"),
            ));
        }
        children.push(Child {
            platform: found,
            manifest: Descriptor {
                media_type: manifest.media_type,
                digest: digest.clone(),
                size: bytes.len() as u64,
            },
        });
    }
    Ok(children)
}

/// An index push that failed: when the registry says a child is missing
/// (`MANIFEST_BLOB_UNKNOWN`), the message names it.
fn push_error(e: &CallError, repo: &Repo<'_>, tag: &str, children: &[Child]) -> PublishError {
    let context = format!("pushing the index to {}:{tag}", repo.name());
    match children
        .iter()
        .find(|c| e.text.contains(&c.manifest.digest))
    {
        Some(c) if e.not_found => PublishError::new(
            PublishClass::Retryable,
            format!(
                "child {} ({}) is missing from {} ({context}): {}",
                c.manifest.digest,
                c.platform,
                repo.name(),
                e.text
            ),
        ),
        _ => call_error(e, &context),
    }
}

/// Attaches `envelope` to the index and to each child: an artifact
/// manifest per subject, listed by the referrers API where the registry
/// has one, else added to the subject's referrers tag (`sha256-<hex>`).
async fn attach(
    repo: &Repo<'_>,
    index: &Document,
    index_digest: &str,
    children: &[Child],
    envelope: &[u8],
) -> Result<(), PublishError> {
    let context = |what: &str| format!("attaching an envelope in {}: {what}", repo.name());
    // The artifact manifests' config: the empty descriptor's `{}`.
    repo.ensure_blob(b"{}")
        .await
        .map_err(|e| call_error(&e, &context("the empty config")))?;
    let envelope = Descriptor {
        media_type: DSSE_ENVELOPE.to_owned(),
        digest: repo
            .ensure_blob(envelope)
            .await
            .map_err(|e| call_error(&e, &context("the envelope blob")))?,
        size: envelope.len() as u64,
    };
    let subjects = std::iter::once(Descriptor {
        media_type: index.media_type.to_owned(),
        digest: index_digest.to_owned(),
        size: index.bytes.len() as u64,
    })
    .chain(children.iter().map(|c| c.manifest.clone()));
    for subject in subjects {
        let what = context(&format!("subject {}", subject.digest));
        let doc = index::referrer_manifest(&subject, &envelope);
        let referrer = repo
            .put(None, &doc)
            .await
            .map_err(|e| call_error(&e, &what))?;
        let listed = repo
            .referrers(&subject.digest)
            .await
            .map_err(|e| call_error(&e, &what))?;
        if listed.contains(&referrer) {
            continue;
        }
        let tag = index::referrers_tag(&subject.digest);
        let existing = repo
            .index_at(&tag)
            .await
            .map_err(|e| call_error(&e, &what))?;
        let entry = Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: referrer,
            size: doc.bytes.len() as u64,
        };
        let updated = index::referrers_index(existing.as_deref(), &entry, DSSE_ENVELOPE)
            .map_err(|e| PublishError::invalid(format!("{what}: {e}")))?;
        if let Some(updated) = updated {
            repo.put(Some(&tag), &updated)
                .await
                .map_err(|e| call_error(&e, &what))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn good_arguments_parse() {
        let req = PublishRequest::parse(
            &[
                format!("linux/amd64={}", d('a')),
                format!("linux/arm64/v8={}", d('b')),
            ],
            &strings(&[
                "127.0.0.1:5000/team/app:1.0",
                "127.0.0.1:5000/team/app:latest",
            ]),
            &strings(&["127.0.0.1:5000"]),
            &[],
        )
        .expect("valid");
        assert_eq!(req.platforms[1].0.to_string(), "linux/arm64/v8");
        assert_eq!(req.platforms[1].1, d('b'));
        let repos = repositories(&req.destinations);
        assert_eq!(repos.len(), 1);
        assert_eq!(repos[0].1, vec!["1.0", "latest"]);
    }

    #[test]
    fn bad_arguments_are_invalid_naming_the_argument() {
        let two = [
            format!("linux/amd64={}", d('a')),
            format!("linux/arm64={}", d('b')),
        ];
        let dest = strings(&["r.example/app:1"]);
        let cases: Vec<(Vec<String>, Vec<String>, &str)> = vec![
            (two[..1].to_vec(), dest.clone(), "--platform: 1 given"),
            (
                vec![two[0].clone(), two[0].clone()],
                dest.clone(),
                "given twice",
            ),
            (
                vec![two[0].clone(), "linux/arm64=sha256:abc".to_owned()],
                dest.clone(),
                "--platform=linux/arm64=sha256:abc",
            ),
            (
                vec![two[0].clone(), format!("Linux/arm64={}", d('b'))],
                dest.clone(),
                "--platform=Linux/arm64",
            ),
            (two.to_vec(), vec![], "--destination: 0 given"),
            (
                two.to_vec(),
                strings(&["r.example/app"]),
                "--destination=r.example/app: a destination must name a tag",
            ),
            (
                two.to_vec(),
                vec![format!("r.example/app@{}", d('c'))],
                "must name a tag",
            ),
        ];
        for (platforms, destinations, expected) in cases {
            let err =
                PublishRequest::parse(&platforms, &destinations, &[], &[]).expect_err(expected);
            assert_eq!(err.class, PublishClass::Invalid, "{expected}");
            assert!(
                err.detail.contains(expected),
                "{} lacks {expected}",
                err.detail
            );
        }
    }
}
