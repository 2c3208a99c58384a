//! One repository of one registry, through oci-client, with every error
//! sorted into a [`PublishClass`] and transient ones retried
//! ([`crate::retry::registry_call`]).

use std::time::Duration;

use backon::Retryable as _;
use kiln_core::classify::PublishClass;
use kiln_core::index::{Descriptor, Document, MANIFEST_TYPES, OCI_INDEX};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

/// The largest config blob read (a config is a few KiB).
const MAX_CONFIG: u64 = 4 << 20;

/// A registry call that failed.
#[derive(Debug, Clone)]
pub(super) struct CallError {
    pub class: PublishClass,
    /// The registry does not have what was asked for (404,
    /// `MANIFEST_UNKNOWN`, `MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`).
    pub not_found: bool,
    pub text: String,
}

impl CallError {
    fn transient(&self) -> bool {
        self.class == PublishClass::Retryable && !self.not_found
    }
}

/// The client of the publish step: plain HTTP for the registries in
/// `insecure`, HTTPS (rustls, the system's roots) elsewhere.
pub(super) fn client(insecure: &[String]) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::from("sha256:"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// One repository (`registry/repository`) with its credentials.
pub(super) struct Repo<'a> {
    client: &'a Client,
    registry: String,
    repository: String,
}

impl<'a> Repo<'a> {
    /// The repository of `reference`; `auth` is stored with the client for
    /// its registry (oci-client keeps one per registry, the first given).
    pub(super) async fn new(
        client: &'a Client,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Self {
        client
            .store_auth_if_needed(reference.resolve_registry(), auth)
            .await;
        Self {
            client,
            registry: reference.registry().to_owned(),
            repository: reference.repository().to_owned(),
        }
    }

    /// `registry/repository`, for messages.
    pub(super) fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_owned(),
        )
    }

    fn by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            tag.to_owned(),
        )
    }

    /// The manifest `digest` (bytes checked against it), any manifest type.
    pub(super) async fn manifest(&self, digest: &str) -> Result<Vec<u8>, CallError> {
        let reference = self.by_digest(digest);
        retried(|| async {
            self.client
                .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &MANIFEST_TYPES)
                .await
                .map(|(bytes, _)| bytes.to_vec())
        })
        .await
    }

    /// The index tagged `tag` (the referrers tag schema's), `None` when
    /// the tag does not exist.
    pub(super) async fn index_at(&self, tag: &str) -> Result<Option<Vec<u8>>, CallError> {
        let reference = self.by_tag(tag);
        let got = retried(|| async {
            self.client
                .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &[OCI_INDEX])
                .await
                .map(|(bytes, _)| bytes.to_vec())
        })
        .await;
        match got {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.not_found => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The blob `desc` (digest checked), at most [`MAX_CONFIG`] bytes.
    pub(super) async fn small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, CallError> {
        if desc.size > MAX_CONFIG {
            return Err(CallError {
                class: PublishClass::Invalid,
                not_found: false,
                text: format!(
                    "blob {} is {} bytes, more than the {MAX_CONFIG} a config may be",
                    desc.digest, desc.size
                ),
            });
        }
        let reference = self.by_digest(&desc.digest);
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        retried(|| async {
            let mut out = Vec::new();
            self.client
                .pull_blob(&reference, &oci, &mut out)
                .await
                .map(|()| out)
        })
        .await
    }

    /// Uploads `bytes` as a blob unless the repository has it.
    pub(super) async fn ensure_blob(&self, bytes: &[u8]) -> Result<String, CallError> {
        let digest = sha256_digest(bytes);
        let reference = self.by_digest(&digest);
        let exists = retried(|| self.client.blob_exists(&reference, &digest)).await?;
        if !exists {
            retried(|| self.client.push_blob(&reference, bytes.to_vec(), &digest)).await?;
        }
        Ok(digest)
    }

    /// Puts `doc` under `tag`, or by its digest when `tag` is `None`, and
    /// returns the digest the registry then reports for it
    /// (`Docker-Content-Digest` of a `HEAD`).
    pub(super) async fn put(&self, tag: Option<&str>, doc: &Document) -> Result<String, CallError> {
        let own = sha256_digest(&doc.bytes);
        let reference = match tag {
            Some(tag) => self.by_tag(tag),
            None => self.by_digest(&own),
        };
        let content_type = reqwest::header::HeaderValue::from_static(doc.media_type);
        retried(|| {
            self.client
                .push_manifest_raw(&reference, doc.bytes.clone(), content_type.clone())
        })
        .await?;
        retried(|| {
            self.client
                .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        })
        .await
    }

    /// The digests of `subject`'s referrers: from the referrers API, or
    /// from the tag schema's index where the registry has no API.
    pub(super) async fn referrers(&self, subject: &str) -> Result<Vec<String>, CallError> {
        let reference = self.by_digest(subject);
        let index = retried(|| self.client.pull_referrers(&reference, None)).await?;
        Ok(index.manifests.into_iter().map(|m| m.digest).collect())
    }
}

/// `call` with transient failures retried.
async fn retried<T, F, Fut>(call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut call = call;
    (|| {
        let fut = call();
        async move { fut.await.map_err(|e| sort(&e)) }
    })
    .retry(crate::retry::registry_call())
    .when(CallError::transient)
    .notify(|e, wait| tracing::warn!(error = %e.text, ?wait, "registry call failed; retrying"))
    .await
}

/// The class of a client error.
fn sort(e: &OciDistributionError) -> CallError {
    let (class, not_found) = match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => (PublishClass::Denied, false),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            by_codes(&codes)
        }
        OciDistributionError::ServerError { code, message, .. } => by_status(*code, message),
        OciDistributionError::RequestError(r) => match r.status() {
            Some(status) => by_status(status.as_u16(), ""),
            // Connection refused or dropped, a timeout, a broken body.
            None => (PublishClass::Retryable, false),
        },
        OciDistributionError::UrlParseError(_) | OciDistributionError::GenericError(_) => {
            (PublishClass::Invalid, false)
        }
        // The rest (I/O, digests that do not match, answers the client
        // could not read) is the registry's or the network's trouble.
        _ => (PublishClass::Retryable, false),
    };
    CallError {
        class,
        not_found,
        text: with_causes(e),
    }
}

/// The error and its causes, one after the other (reqwest's own text does
/// not say "connection refused"; its source does).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let t = cause.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = cause.source();
    }
    text
}

fn by_codes(codes: &[&OciErrorCode]) -> (PublishClass, bool) {
    use OciErrorCode as C;
    if codes
        .iter()
        .any(|c| matches!(c, C::Unauthorized | C::Denied))
    {
        (PublishClass::Denied, false)
    } else if codes.iter().any(|c| {
        matches!(
            c,
            C::ManifestUnknown
                | C::ManifestBlobUnknown
                | C::BlobUnknown
                | C::NameUnknown
                | C::NotFound
        )
    }) {
        (PublishClass::Retryable, true)
    } else if codes.iter().any(|c| matches!(c, C::Toomanyrequests)) {
        (PublishClass::Retryable, false)
    } else {
        (PublishClass::Invalid, false)
    }
}

fn by_status(code: u16, body: &str) -> (PublishClass, bool) {
    match code {
        401 | 403 => (PublishClass::Denied, false),
        404 => (PublishClass::Retryable, true),
        429 | 500..=599 => (PublishClass::Retryable, false),
        // A manifest naming a blob or child the repository lacks.
        _ if body.contains("MANIFEST_BLOB_UNKNOWN") || body.contains("BLOB_UNKNOWN") => {
            (PublishClass::Retryable, true)
        }
        _ => (PublishClass::Invalid, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_classes() {
        assert_eq!(by_status(401, ""), (PublishClass::Denied, false));
        assert_eq!(by_status(403, ""), (PublishClass::Denied, false));
        assert_eq!(by_status(404, ""), (PublishClass::Retryable, true));
        assert_eq!(by_status(429, ""), (PublishClass::Retryable, false));
        assert_eq!(by_status(503, ""), (PublishClass::Retryable, false));
        assert_eq!(
            by_status(400, r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#),
            (PublishClass::Retryable, true)
        );
        assert_eq!(
            by_status(400, "MANIFEST_INVALID"),
            (PublishClass::Invalid, false)
        );
    }

    #[test]
    fn registry_codes_sort_into_classes() {
        use OciErrorCode as C;
        assert_eq!(by_codes(&[&C::Denied]), (PublishClass::Denied, false));
        assert_eq!(
            by_codes(&[&C::ManifestBlobUnknown]),
            (PublishClass::Retryable, true)
        );
        assert_eq!(
            by_codes(&[&C::Toomanyrequests]),
            (PublishClass::Retryable, false)
        );
        assert_eq!(
            by_codes(&[&C::ManifestInvalid]),
            (PublishClass::Invalid, false)
        );
    }
}
