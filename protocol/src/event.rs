//! CloudEvents published to `kiln.events`.
//!
//! Ids, types, subjects and routing keys are pure functions of the build, the
//! image, the attempt and the phase, so a duplicate delivered after a fault
//! (or published twice across a worker takeover) carries the same id and a
//! subscriber can drop it.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::request::BuildRequest;
use crate::validate::ValidationErrors;

/// CloudEvents version of the envelope.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";
/// `datacontenttype` of every event.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// AMQP `content_type` of an event message (structured mode).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// `dataschema` of every event Kiln publishes: the committed event schema
/// (`protocol/schema/build-event.schema.json`) at the release tag
/// `v<version>` of this crate, through GitHub's `/raw/` path (which serves
/// the file itself). CloudEvents asks that incompatible schema changes get a
/// new URI; the contract only grows, so a new release's URI is a superset.
/// The URI is fixed at build time, so it names exactly the schema the
/// publisher was built against.
pub const DATA_SCHEMA: &str = concat!(
    env!("CARGO_PKG_REPOSITORY"),
    "/raw/v",
    env!("CARGO_PKG_VERSION"),
    "/protocol/schema/build-event.schema.json"
);

/// Hex digits of the message hash in a `request.rejected` event id
/// (64 bits: ids need only tell apart the bodies sent under one build id).
pub const REQUEST_HASH_HEX: usize = 16;

/// Whether an event is about a whole build, one image of it, or one request
/// that could not become the build its id names (`request.rejected`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Build,
    Image,
    Request,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Build, Level::Image, Level::Request];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Build => "build",
            Level::Image => "image",
            Level::Request => "request",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a build or an image is in its life. Build events use `accepted`,
/// `succeeded`, `failed`, `cancelled`, `rejected`; image events use
/// `scheduled`, `running`, `retrying`, `succeeded`, `failed`, `cancelled`
/// and `waiting` (the pod of the attempt is refused for now, e.g. by a
/// ResourceQuota; non-terminal); request events only `rejected`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Accepted,
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Rejected,
    Waiting,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Accepted,
        Phase::Scheduled,
        Phase::Running,
        Phase::Retrying,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Rejected,
        Phase::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Scheduled => "scheduled",
            Phase::Running => "running",
            Phase::Retrying => "retrying",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Rejected => "rejected",
            Phase::Waiting => "waiting",
        }
    }

    /// Whether events of `level` may carry this phase.
    pub fn valid_for(self, level: Level) -> bool {
        match level {
            Level::Build => matches!(
                self,
                Phase::Accepted
                    | Phase::Succeeded
                    | Phase::Failed
                    | Phase::Cancelled
                    | Phase::Rejected
            ),
            Level::Image => matches!(
                self,
                Phase::Scheduled
                    | Phase::Running
                    | Phase::Retrying
                    | Phase::Succeeded
                    | Phase::Failed
                    | Phase::Cancelled
                    | Phase::Waiting
            ),
            Level::Request => self == Phase::Rejected,
        }
    }

    /// Whether nothing follows this phase at `level`. False for phases not
    /// valid at that level. `request.rejected` is terminal for the request
    /// it answers, never for the build its id names.
    pub fn is_terminal(self, level: Level) -> bool {
        self.valid_for(level)
            && match level {
                Level::Build => self != Phase::Accepted,
                Level::Image => {
                    matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
                }
                Level::Request => true,
            }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a build or image failed, was cancelled or was rejected: a fixed
/// vocabulary subscribers can switch on.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The Dockerfile build itself failed (a `RUN` step, a missing file).
    BuildError,
    /// The image was built but could not be pushed.
    PushError,
    /// The build container ran out of memory.
    #[serde(rename = "OOMKilled")]
    OOMKilled,
    /// The node evicted the pod (or the pod was disrupted).
    Evicted,
    /// The pod or the build ran past its deadline.
    DeadlineExceeded,
    /// The pod stayed Pending past the pending timeout.
    PendingTimeout,
    /// The Kaniko image could not be pulled.
    ImagePullFailed,
    /// No node could take the pod.
    Unschedulable,
    /// The pod could not be configured (missing Secret, bad template).
    ConfigError,
    /// The tenant's policy does not allow the request.
    PolicyViolation,
    /// The request is not valid.
    InvalidRequest,
    /// Someone cancelled the build, or a sibling image failed.
    Cancelled,
    /// A fault in Kiln itself.
    Internal,
    /// `request.rejected`: the id is held by another tenant's build, or by
    /// the same tenant's build of a different request.
    IdConflict,
    /// A Kubernetes ResourceQuota of the build namespace refuses the pod for
    /// now: the reason of `image.waiting`. Not terminal: the worker keeps
    /// trying while the build's deadline allows (events and status show it
    /// meanwhile); a build that runs out of time ends with
    /// `DeadlineExceeded`, its message naming the quota.
    QuotaExceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BuildError => "BuildError",
            Reason::PushError => "PushError",
            Reason::OOMKilled => "OOMKilled",
            Reason::Evicted => "Evicted",
            Reason::DeadlineExceeded => "DeadlineExceeded",
            Reason::PendingTimeout => "PendingTimeout",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::Unschedulable => "Unschedulable",
            Reason::ConfigError => "ConfigError",
            Reason::PolicyViolation => "PolicyViolation",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::Cancelled => "Cancelled",
            Reason::Internal => "Internal",
            Reason::IdConflict => "IdConflict",
            Reason::QuotaExceeded => "QuotaExceeded",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CloudEvents 1.0 event in structured JSON mode.
///
/// Unknown fields are accepted when reading (unlike requests): the contract
/// only ever grows, and a subscriber built against an older `kiln-protocol`
/// must keep working when events gain fields.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[schemars(title = "Kiln BuildEvent")]
pub struct BuildEvent {
    /// Always `1.0`.
    #[schemars(extend("const" = "1.0"))]
    pub specversion: String,
    /// Deterministic: `<build>/<phase>`, `<build>/<image>/<attempt>/<phase>`,
    /// or `<build>/request/<hash>` for `request.rejected` (the first 16 hex
    /// digits of the SHA-256 of the refused message body).
    #[schemars(length(min = 1))]
    pub id: String,
    /// `urn:kiln:<cluster>`.
    #[schemars(length(min = 1))]
    pub source: String,
    /// `dev.kiln.<level>.<phase>.v1`.
    #[serde(rename = "type")]
    #[schemars(pattern(r"^dev\.kiln\.(build|image|request)\.[a-z]+\.v1$"))]
    pub event_type: String,
    /// `<build>` or `<build>/<image>`.
    #[schemars(length(min = 1))]
    pub subject: String,
    /// When the worker observed the change.
    pub time: Timestamp,
    /// Always `application/json`.
    #[schemars(extend("const" = "application/json"))]
    pub datacontenttype: String,
    /// The JSON Schema of this event (this schema): Kiln's
    /// `protocol/schema/build-event.schema.json` at the release tag of the
    /// publishing worker. An addition to the contract: events of older
    /// workers lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "uri"), length(min = 1))]
    pub dataschema: Option<String>,
    /// Extension attribute: the worker (pod name) that published the event.
    pub kilnworker: String,
    /// Extension attribute (CloudEvents distributed tracing): the W3C
    /// traceparent of the request, copied onto every event of its build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: Option<String>,
    pub data: EventData,
}

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
    /// A sentence for people; for `rejected`, every problem, one per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// `dev.kiln.<level>.<phase>.v1`.
pub fn event_type(level: Level, phase: Phase) -> String {
    format!("dev.kiln.{level}.{phase}.v1")
}

/// `<level>.<phase>`, the routing key on `kiln.events`.
pub fn routing_key(level: Level, phase: Phase) -> String {
    format!("{level}.{phase}")
}

/// `<build>/<phase>`.
pub fn build_event_id(build_id: &str, phase: Phase) -> String {
    format!("{build_id}/{phase}")
}

/// `<build>/<image>/<attempt>/<phase>`.
pub fn image_event_id(build_id: &str, image: &str, attempt: u32, phase: Phase) -> String {
    format!("{build_id}/{image}/{attempt}/{phase}")
}

/// `<build>/request/<hash>`: the id of the `request.rejected` event that
/// answers the message `body` naming `build_id`. The hash is the first
/// [`REQUEST_HASH_HEX`] hex digits of the SHA-256 of the raw body, so the
/// publisher can compute the id of the answer to its own message (and tell
/// it from the answer to someone else's message under the same id), and a
/// redelivered message is answered under the same id.
pub fn request_rejected_id(build_id: &str, body: &[u8]) -> String {
    let hash = crate::names::sha256_hex(body);
    format!("{build_id}/request/{}", &hash[..REQUEST_HASH_HEX])
}

/// Whether `id` has the shape of a `request.rejected` id for `build_id`.
fn is_request_rejected_id(build_id: &str, id: &str) -> bool {
    id.strip_prefix(build_id)
        .and_then(|rest| rest.strip_prefix("/request/"))
        .is_some_and(|h| {
            h.len() == REQUEST_HASH_HEX && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// `<build>` or `<build>/<image>`.
pub fn subject(build_id: &str, image: Option<&str>) -> String {
    match image {
        Some(i) => format!("{build_id}/{i}"),
        None => build_id.to_owned(),
    }
}

/// `urn:kiln:<cluster>`, the event `source`.
pub fn event_source(cluster: &str) -> String {
    format!("urn:kiln:{cluster}")
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
        d.message = Some(message.into());
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

impl BuildEvent {
    /// Wraps `data` in the envelope, deriving `id`, `type` and `subject`
    /// from it. An image event's id uses `data.attempt` (1 if unset;
    /// [`EventData::for_image`] always sets it).
    pub fn new(
        source: impl Into<String>,
        kilnworker: impl Into<String>,
        time: Timestamp,
        data: EventData,
    ) -> Self {
        let level = data.level();
        let id = match &data.image {
            Some(image) => {
                image_event_id(&data.build_id, image, data.attempt.unwrap_or(1), data.phase)
            }
            None => build_event_id(&data.build_id, data.phase),
        };
        Self {
            specversion: CLOUDEVENTS_SPEC_VERSION.to_owned(),
            id,
            source: source.into(),
            event_type: event_type(level, data.phase),
            subject: subject(&data.build_id, data.image.as_deref()),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            dataschema: Some(DATA_SCHEMA.to_owned()),
            kilnworker: kilnworker.into(),
            traceparent: None,
            data,
        }
    }

    /// A `request.rejected` event answering the message `body` (the raw
    /// bytes as received), with `data` from [`EventData::request_rejected`]:
    /// id [`request_rejected_id`], type `dev.kiln.request.rejected.v1`,
    /// subject the build id. `data.phase` is set to `rejected` and
    /// `data.image` cleared, whatever they were.
    pub fn request_rejected(
        source: impl Into<String>,
        kilnworker: impl Into<String>,
        time: Timestamp,
        body: &[u8],
        mut data: EventData,
    ) -> Self {
        data.phase = Phase::Rejected;
        data.image = None;
        let mut ev = Self::new(source, kilnworker, time, data);
        ev.id = request_rejected_id(&ev.data.build_id, body);
        ev.event_type = event_type(Level::Request, Phase::Rejected);
        ev
    }

    #[must_use]
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// `request` for `dev.kiln.request.*` events (the data alone cannot
    /// tell `request.rejected` from `build.rejected`); otherwise image
    /// events have `data.image` and build events do not.
    pub fn level(&self) -> Level {
        if self.event_type.starts_with("dev.kiln.request.") {
            Level::Request
        } else {
            self.data.level()
        }
    }

    pub fn phase(&self) -> Phase {
        self.data.phase
    }

    pub fn routing_key(&self) -> String {
        routing_key(self.level(), self.phase())
    }

    pub fn is_terminal(&self) -> bool {
        self.phase().is_terminal(self.level())
    }

    /// Checks that the envelope agrees with its data (id, type, subject,
    /// phase valid for the level); for tests and `kiln watch`, which may meet
    /// events from other producers.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let level = self.level();
        if self.specversion != CLOUDEVENTS_SPEC_VERSION {
            errs.push(
                "specversion",
                format!("must be \"{CLOUDEVENTS_SPEC_VERSION}\""),
            );
        }
        if !self.phase().valid_for(level) {
            errs.push(
                "data.phase",
                format!("{} is not a phase of {level} events", self.phase()),
            );
        }
        if level == Level::Image && self.data.attempt.is_none() {
            errs.push("data.attempt", "image events must carry the attempt");
        }
        if level == Level::Request && self.data.image.is_some() {
            errs.push("data.image", "request events name no image");
        }
        let want = if level == Level::Request {
            BuildEvent::request_rejected("", "", self.time, b"", self.data.clone())
        } else {
            BuildEvent::new("", "", self.time, self.data.clone())
        };
        if level == Level::Request {
            // The hash is of a body this event does not carry: check the shape.
            if !is_request_rejected_id(&self.data.build_id, &self.id) {
                errs.push(
                    "id",
                    format!(
                        "must be \"{}/request/\" and {REQUEST_HASH_HEX} lowercase hex digits",
                        self.data.build_id
                    ),
                );
            }
        } else if self.id != want.id {
            errs.push("id", format!("must be \"{}\"", want.id));
        }
        if self.event_type != want.event_type {
            errs.push("type", format!("must be \"{}\"", want.event_type));
        }
        if self.subject != want.subject {
            errs.push("subject", format!("must be \"{}\"", want.subject));
        }
        if self.data.provenance.is_some()
            && (level, self.phase()) != (Level::Image, Phase::Succeeded)
        {
            errs.push(
                "data.provenance",
                "only image.succeeded events carry provenance",
            );
        }
        if let Some(t) = &self.data.log_tail
            && t.len() > crate::LOG_TAIL_MAX_BYTES
        {
            errs.push(
                "data.logTail",
                format!("must be at most {} bytes", crate::LOG_TAIL_MAX_BYTES),
            );
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            event_type(Level::Image, Phase::Succeeded),
            "dev.kiln.image.succeeded.v1"
        );
        assert_eq!(routing_key(Level::Build, Phase::Rejected), "build.rejected");
        assert_eq!(build_event_id("b", Phase::Accepted), "b/accepted");
        assert_eq!(
            image_event_id("b", "api", 2, Phase::Succeeded),
            "b/api/2/succeeded"
        );
        assert_eq!(subject("b", None), "b");
        assert_eq!(subject("b", Some("api")), "b/api");
        assert_eq!(event_source("prod-eu"), "urn:kiln:prod-eu");
    }

    #[test]
    fn phases_per_level() {
        let build: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.valid_for(Level::Build))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            build,
            ["accepted", "succeeded", "failed", "cancelled", "rejected"]
        );
        let image: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.valid_for(Level::Image))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            image,
            [
                "scheduled",
                "running",
                "retrying",
                "succeeded",
                "failed",
                "cancelled",
                "waiting"
            ]
        );
        let terminal_build: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.is_terminal(Level::Build))
            .map(Phase::as_str)
            .collect();
        assert_eq!(
            terminal_build,
            ["succeeded", "failed", "cancelled", "rejected"]
        );
        let terminal_image: Vec<_> = Phase::ALL
            .into_iter()
            .filter(|p| p.is_terminal(Level::Image))
            .map(Phase::as_str)
            .collect();
        assert_eq!(terminal_image, ["succeeded", "failed", "cancelled"]);
        assert!(!Phase::Rejected.is_terminal(Level::Image));
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&Reason::OOMKilled).unwrap(),
            "\"OOMKilled\""
        );
        assert_eq!(
            serde_json::to_string(&Reason::DeadlineExceeded).unwrap(),
            "\"DeadlineExceeded\""
        );
        assert_eq!(
            serde_json::to_string(&Phase::Retrying).unwrap(),
            "\"retrying\""
        );
        assert_eq!(serde_json::to_string(&Level::Image).unwrap(), "\"image\"");
        for r in [Reason::OOMKilled, Reason::PushError, Reason::Internal] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    /// The event of DESIGN.md section 4 round-trips and is what `new` builds.
    #[test]
    fn design_example() {
        let json = r#"{
          "specversion": "1.0",
          "id": "shop-cart-1.2.3-7f3a/api/2/succeeded",
          "source": "urn:kiln:prod",
          "type": "dev.kiln.image.succeeded.v1",
          "subject": "shop-cart-1.2.3-7f3a/api",
          "time": "2026-11-25T10:00:00Z",
          "datacontenttype": "application/json",
          "kilnworker": "kiln-7d9c-x2",
          "data": {
            "buildId": "shop-cart-1.2.3-7f3a", "image": "api", "phase": "succeeded",
            "attempt": 2, "maxAttempts": 3, "app": "shop", "component": "cart", "labels": {"team": "payments"},
            "pod": { "namespace": "kiln-builds", "name": "kiln-shop-cart-1-2-3-7f3a-api-2" },
            "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "imageRefs": ["registry.example.com/shop/cart-api:1.2.3@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
            "startedAt": "2026-11-25T09:56:27.6Z", "finishedAt": "2026-11-25T10:00:00Z", "durationSeconds": 212.4
          }
        }"#;
        let ev: BuildEvent = serde_json::from_str(json).unwrap();
        assert_eq!(ev.level(), Level::Image);
        assert_eq!(ev.routing_key(), "image.succeeded");
        assert!(ev.is_terminal());
        ev.validate().unwrap();

        let mut data = EventData::for_image("shop-cart-1.2.3-7f3a", "api", 2, Phase::Succeeded);
        data.max_attempts = Some(3);
        data.app = Some("shop".into());
        data.component = Some("cart".into());
        data.labels.insert("team".into(), "payments".into());
        data.pod = Some(PodRef {
            namespace: "kiln-builds".into(),
            name: "kiln-shop-cart-1-2-3-7f3a-api-2".into(),
        });
        data.digest = ev.data.digest.clone();
        data.image_refs = ev.data.image_refs.clone();
        data.started_at = ev.data.started_at;
        data.finished_at = ev.data.finished_at;
        data.duration_seconds = Some(212.4);
        let built = BuildEvent::new(
            "urn:kiln:prod",
            "kiln-7d9c-x2",
            "2026-11-25T10:00:00Z".parse().unwrap(),
            data,
        );
        // DESIGN.md's example predates `dataschema`; `new` adds it.
        assert_eq!(built.dataschema.as_deref(), Some(DATA_SCHEMA));
        assert_eq!(
            BuildEvent {
                dataschema: None,
                ..built.clone()
            },
            ev
        );

        let back: BuildEvent =
            serde_json::from_str(&serde_json::to_string(&built).unwrap()).unwrap();
        assert_eq!(back, built);
    }

    #[test]
    fn build_event_is_tidy() {
        let ev = BuildEvent::new(
            "urn:kiln:c",
            "w",
            Timestamp::UNIX_EPOCH,
            EventData::for_build("b", Phase::Accepted),
        )
        .with_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ));
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "specversion": "1.0", "id": "b/accepted", "source": "urn:kiln:c",
                "type": "dev.kiln.build.accepted.v1", "subject": "b",
                "time": "1970-01-01T00:00:00Z", "datacontenttype": "application/json",
                "dataschema": DATA_SCHEMA,
                "kilnworker": "w",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "data": { "buildId": "b", "phase": "accepted" }
            })
        );
        assert_eq!(ev.level(), Level::Build);
        assert!(!ev.is_terminal());
    }

    #[test]
    fn unknown_event_fields_are_tolerated() {
        let json = r#"{"specversion":"1.0","id":"b/failed","source":"s","type":"dev.kiln.build.failed.v1",
          "subject":"b","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","kilnworker":"w",
          "somefutureattr":"x","data":{"buildId":"b","phase":"failed","reason":"OOMKilled","newField":1}}"#;
        let ev: BuildEvent = serde_json::from_str(json).unwrap();
        assert_eq!(ev.data.reason, Some(Reason::OOMKilled));
    }

    #[test]
    fn validate_catches_inconsistent_envelopes() {
        let mut ev = BuildEvent::new(
            "s",
            "w",
            Timestamp::UNIX_EPOCH,
            EventData::for_build("b", Phase::Running),
        );
        ev.id = "other".into();
        let errs = ev.validate().unwrap_err().to_string();
        assert_eq!(
            errs,
            "data.phase: running is not a phase of build events\nid: must be \"b/running\""
        );
    }

    #[test]
    fn dataschema_names_the_committed_schema_at_the_release_tag() {
        assert_eq!(
            DATA_SCHEMA,
            format!(
                "https://github.com/kiln-build/kiln/raw/v{}/protocol/schema/build-event.schema.json",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn request_rejected_ids_hash_the_raw_body() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(
            request_rejected_id("b-1", b"abc"),
            "b-1/request/ba7816bf8f01cfea"
        );
        assert_eq!(
            request_rejected_id("b-1", b""),
            "b-1/request/e3b0c44298fc1c14"
        );
        // Another body (even the same JSON re-spaced) is another request.
        assert_ne!(
            request_rejected_id("b", br#"{"id":"b"}"#),
            request_rejected_id("b", br#"{"id": "b"}"#)
        );
        assert_eq!(
            routing_key(Level::Request, Phase::Rejected),
            "request.rejected"
        );
        assert_eq!(
            event_type(Level::Request, Phase::Rejected),
            "dev.kiln.request.rejected.v1"
        );
    }

    #[test]
    fn request_rejected_event() {
        let body = br#"{"apiVersion":"kiln/v1","kind":"BuildRequest","id":"X"}"#;
        let ev = BuildEvent::request_rejected(
            "urn:kiln:c",
            "w",
            Timestamp::UNIX_EPOCH,
            body,
            EventData::request_rejected("X", "alice", Reason::IdConflict, "id X is taken"),
        );
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "specversion": "1.0", "id": request_rejected_id("X", body), "source": "urn:kiln:c",
                "type": "dev.kiln.request.rejected.v1", "subject": "X",
                "time": "1970-01-01T00:00:00Z", "datacontenttype": "application/json",
                "dataschema": DATA_SCHEMA, "kilnworker": "w",
                "data": { "buildId": "X", "phase": "rejected", "tenant": "alice",
                          "reason": "IdConflict", "message": "id X is taken" }
            })
        );
        assert_eq!(ev.level(), Level::Request);
        assert_eq!(ev.routing_key(), "request.rejected");
        // Terminal for the request; a waiter on the build must not stop.
        assert!(ev.is_terminal());
        assert!(!(ev.level() == Level::Build && ev.is_terminal()));
        ev.validate().unwrap();
        let back: BuildEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.level(), Level::Request);

        let mut bad = ev.clone();
        bad.id = "X/rejected".into();
        bad.data.image = Some("api".into());
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "data.image: request events name no image\n\
             id: must be \"X/request/\" and 16 lowercase hex digits"
        );
        let mut other_phase = ev;
        other_phase.data.phase = Phase::Accepted;
        assert!(
            other_phase
                .validate()
                .unwrap_err()
                .to_string()
                .contains("accepted is not a phase of request events")
        );
    }

    #[test]
    fn new_reasons_serialise_by_name() {
        for r in [Reason::IdConflict, Reason::QuotaExceeded] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Reason::QuotaExceeded.as_str(), "QuotaExceeded");
    }
}
