//! The in-toto Statement v1 with the SLSA Provenance v1 predicate.
//!
//! Written here rather than taken from a crate: the `in-toto` crate
//! (in-toto-rs 0.4) models Statement v0.1 and SLSA Provenance v0.1/v0.2
//! only, and no maintained crate on crates.io carries the v1 types. They are
//! plain data (the field names are the specs' camelCase), so owning them
//! costs a page and lets the statement be deterministic by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of a Kiln image build: one Kaniko executor run of one image of
/// a request. docs/protocol.md defines what its parameters mean.
pub const BUILD_TYPE: &str = "https://kiln.dev/build-types/kaniko/v1";

/// An in-toto Statement v1 whose predicate is SLSA Provenance v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// What was built: one entry per destination, each with `digest.sha256`.
    pub subject: Vec<ResourceDescriptor>,
    /// Always [`SLSA_PROVENANCE_V1`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

impl Statement {
    /// A statement about `subject` with the fixed `_type` and `predicateType`.
    pub fn new(subject: Vec<ResourceDescriptor>, predicate: Provenance) -> Self {
        Self {
            type_: STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: SLSA_PROVENANCE_V1.to_owned(),
            predicate,
        }
    }
}

/// An in-toto ResourceDescriptor: a subject, a resolved dependency or a
/// builder dependency. At least one of `uri`, `digest` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm (`sha256`, `gitCommit`, ...) to lowercase hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, Value>,
}

impl ResourceDescriptor {
    /// The digests of `algorithm` this descriptor names (`sha256` -> hex).
    pub fn digest_of(&self, algorithm: &str) -> Option<&str> {
        self.digest.get(algorithm).map(String::as_str)
    }
}

/// The SLSA Provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

/// What the build was asked to do and what it resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`] for Kiln's builds.
    pub build_type: String,
    /// What the tenant asked for: the request as received, secrets masked.
    pub external_parameters: Value,
    /// What the platform added: policy and settings.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub internal_parameters: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// Who ran the build and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    pub builder: Builder,
    #[serde(default)]
    pub metadata: BuildMetadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// The build platform that vouches for the statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Builder {
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builder_dependencies: Vec<ResourceDescriptor>,
}

/// One run of the build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_on: Option<jiff::Timestamp>,
}
