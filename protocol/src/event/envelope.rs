//! `BuildEvent`: the CloudEvents 1.0 envelope (structured JSON) of every
//! event published to `kiln.events`.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::data::{EventData, bounded_message};
use super::ids::{
    REQUEST_HASH_HEX, build_event_id, event_type, image_event_id, is_request_rejected_id,
    platform_event_id, request_rejected_id, subject,
};
use super::phase::{Level, Phase};
use super::routing::{routing_key, tenant_word};
use crate::limits::{LOG_TAIL_MAX_BYTES, MAX_TEXT_BYTES};
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
    /// `<build>/<image>/<platform>/<attempt>/<phase>` (an event about one
    /// platform's pod of an image with `platforms`), or `<build>/request/<hash>` for `request.rejected` (the first 16 hex
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

impl BuildEvent {
    /// Wraps `data` in the envelope, deriving `id`, `type` and `subject`
    /// from it. An image event's id uses `data.attempt` (1 if unset;
    /// [`EventData::for_image`] always sets it). `data.message` is cut to
    /// [`MAX_TEXT_BYTES`](crate::MAX_TEXT_BYTES): messages quote what
    /// requests and pods said, and no event may grow with them.
    pub fn new(
        source: impl Into<String>,
        kilnworker: impl Into<String>,
        time: Timestamp,
        mut data: EventData,
    ) -> Self {
        data.message = data.message.take().map(bounded_message);
        let level = data.level();
        let attempt = data.attempt.unwrap_or(1);
        let id = match (&data.image, &data.platform) {
            (Some(image), Some(platform)) => {
                platform_event_id(&data.build_id, image, platform, attempt, data.phase)
            }
            (Some(image), None) => image_event_id(&data.build_id, image, attempt, data.phase),
            (None, _) => build_event_id(&data.build_id, data.phase),
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

    /// `<level>.<phase>`, the kind of the event: its routing key without
    /// the tenant word (see [`routing_key`](crate::routing_key)).
    pub fn kind(&self) -> String {
        routing_key(self.level(), self.phase())
    }

    /// `<level>.<phase>.<tenant>`, the key the event is published with:
    /// the tenant of `data.tenant`, or `_` ([`NO_TENANT`](crate::NO_TENANT)) when the event
    /// names no valid tenant.
    pub fn routing_key(&self) -> String {
        format!(
            "{}.{}",
            self.kind(),
            tenant_word(self.data.tenant.as_deref())
        )
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
            && t.len() > LOG_TAIL_MAX_BYTES
        {
            errs.push(
                "data.logTail",
                format_args!("must be at most {LOG_TAIL_MAX_BYTES} bytes"),
            );
        }
        if let Some(m) = &self.data.message
            && m.len() > MAX_TEXT_BYTES
        {
            errs.push(
                "data.message",
                format_args!("must be at most {MAX_TEXT_BYTES} bytes"),
            );
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::data::PodRef;
    use super::super::phase::Reason;
    use super::*;

    /// The event of the contract's example (section 4 of the design, in
    /// docs/protocol.md) round-trips and is what `new` builds.
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
        assert_eq!(ev.kind(), "image.succeeded");
        assert_eq!(ev.routing_key(), "image.succeeded._");
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
        // The contract's example predates `dataschema`; `new` adds it.
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
        assert_eq!(ev.routing_key(), "request.rejected.alice");
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
}
