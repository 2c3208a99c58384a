//! The registry side of the publish step (`kiln publish`, run in a pod of
//! the build with the tenant's registry Secret; docs/protocol.md, "The
//! publish step"): fetch each platform manifest and its config, check the
//! platform, push the image index under every destination tag, attach the
//! signed provenance as referrers.
//!
//! The only module that knows the registry client (`oci-client`) and the
//! docker config reader (`docker_credential`); what it decides (the index,
//! the referrer manifests, the classes of failure) is kiln-core's
//! (`kiln_core::index`, `kiln_core::classify::PublishClass`). The worker
//! itself never runs this: it holds no registry credentials.
//!
//! What the client does, read from oci-client 0.18's source:
//! - `pull_manifest_raw` sends the `Accept` it is given and, for a reference
//!   by digest, checks the body's sha256 against it;
//! - `pull_blob` checks the blob's digest;
//! - `push_manifest_raw` returns the `Location`, not the digest: the
//!   registry's `Docker-Content-Digest` is read with a `HEAD` afterwards
//!   (`fetch_manifest_digest`);
//! - credentials: a `GET /v2/` learns the challenge; `Basic` is sent as is,
//!   `Bearer` is exchanged for a token at the realm, per repository and
//!   operation; an authentication error there is swallowed and the request
//!   itself then answers 401;
//! - `pull_referrers` uses the referrers API and, on its 404, the referrers
//!   tag schema (`sha256-<hex>`), so one call lists a subject's referrers on
//!   either kind of registry.

mod client;
mod credentials;
mod error;
mod publish;

pub use error::PublishError;
pub use publish::{PublishRequest, publish};
