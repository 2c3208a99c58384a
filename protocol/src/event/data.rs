//! `EventData`: the payload of a Kiln event, with the pod and per-image
//! summaries it carries.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::phase::{Level, Phase, Reason};
use crate::bounded::bounded;
use crate::limits::MAX_TEXT_BYTES;
use crate::request::BuildRequest;

/// The payload of a Kiln event.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    pub build_id: String,
    /// The image, for image events; absent on build events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub phase: Phase,
    /// 1-based attempt of the image (image events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The tenant (AMQP `user_id`) that requested the build; on
    /// `request.rejected`, the tenant that published the refused request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The build pod of this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Digest of the pushed image (`sha256:...`), on `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z0-9]+:[0-9a-f]{32,}$"))]
    pub digest: Option<String>,
    /// On `image.succeeded` of an image with `platforms`: each platform's
    /// manifest digest (`{"linux/amd64": "sha256:..."}`); `digest` is then
    /// the digest of the image index.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platform_digests: BTreeMap<String, String>,
    /// The platform (`os/arch[/variant]`) of the pod this image event is
    /// about, for an image with `platforms`; absent on the events of the
    /// image as a whole (its publish step, its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The destinations pinned to the digest (`registry/repo:tag@sha256:...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_refs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub duration_seconds: Option<f64>,
    /// On `failed`, `cancelled`, `rejected`, `retrying` and `waiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// A sentence for people; for `rejected`, the problems (at most 50,
    /// then a count of the rest). At most 4 KiB: a longer text is cut and
    /// ends with `… (N bytes cut)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The end of the build log (at most 8 KiB, secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub log_tail: Option<String>,
    /// On `retrying`: the backoff before the next attempt. On `waiting`: the
    /// wait before the next try to create the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retry_in_seconds: Option<f64>,
    /// On terminal build events: how each image ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageSummary>>,
    /// On `image.succeeded` when the worker has a signing key: the signed
    /// SLSA provenance of the digest (docs/protocol.md, "Provenance").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::provenance::Envelope>,
}

/// A Kubernetes pod.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// How one image of a build ended, in terminal build events.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub name: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Attempts made (0 when the image never got a pod).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_refs: Vec<String>,
    /// Each platform's manifest digest, for an image with `platforms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platform_digests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl EventData {
    /// Data of a build-level event; every optional field empty.
    pub fn for_build(build_id: impl Into<String>, phase: Phase) -> Self {
        Self {
            build_id: build_id.into(),
            image: None,
            phase,
            attempt: None,
            max_attempts: None,
            app: None,
            component: None,
            labels: BTreeMap::new(),
            tenant: None,
            pod: None,
            digest: None,
            platform_digests: BTreeMap::new(),
            platform: None,
            image_refs: Vec::new(),
            started_at: None,
            finished_at: None,
            duration_seconds: None,
            reason: None,
            message: None,
            exit_code: None,
            log_tail: None,
            retry_in_seconds: None,
            images: None,
            provenance: None,
        }
    }

    /// Data of an image-level event.
    pub fn for_image(
        build_id: impl Into<String>,
        image: impl Into<String>,
        attempt: u32,
        phase: Phase,
    ) -> Self {
        let mut d = Self::for_build(build_id, phase);
        d.image = Some(image.into());
        d.attempt = Some(attempt);
        d
    }

    /// Data of a `request.rejected` event: the build id the refused message
    /// names, the tenant that published it, why and a sentence for people.
    pub fn request_rejected(
        build_id: impl Into<String>,
        tenant: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        let mut d = Self::for_build(build_id, Phase::Rejected);
        d.tenant = Some(tenant.into());
        d.reason = Some(reason);
        d.message = Some(bounded_message(message.into()));
        d
    }

    /// Copies the request's `app`, `component`, `labels` and
    /// `retry.maxAttempts` (when set), which every event of a build repeats
    /// so subscribers can filter without keeping state.
    #[must_use]
    pub fn with_request(mut self, req: &BuildRequest) -> Self {
        self.app.clone_from(&req.app);
        self.component.clone_from(&req.component);
        self.labels.clone_from(&req.labels);
        if let Some(n) = req.max_attempts() {
            self.max_attempts = Some(n);
        }
        self
    }

    pub fn level(&self) -> Level {
        if self.image.is_some() {
            Level::Image
        } else {
            Level::Build
        }
    }
}

/// `message` cut to [`MAX_TEXT_BYTES`] (see [`crate::bounded`]), without a
/// copy when it fits.
pub(super) fn bounded_message(message: String) -> String {
    match bounded(&message, MAX_TEXT_BYTES) {
        std::borrow::Cow::Borrowed(_) => message,
        std::borrow::Cow::Owned(cut) => cut,
    }
}
