//! Kiln's wire contract: the requests upstream publishes, the CloudEvents
//! Kiln publishes, their validation and JSON Schemas, and the deterministic
//! names (event ids, routing keys, pod names) that let any worker pick up any
//! build.
//!
//! Everything here is a pure function of its input: no IO, no clock, no
//! async runtime, so the worker, the CLI and the tests agree by construction.
//! The contract itself is `shared/DESIGN.md` sections 2-4; change it only by
//! extending it.

mod cancel;
mod decode;
mod event;
mod names;
pub mod provenance;
mod quantity;
mod reference;
mod request;
mod schema;
mod secrets;
mod validate;

pub use cancel::{CANCEL_REQUEST_KIND, CancelRequest, MAX_CANCEL_REASON_LEN};
pub use decode::{DecodeError, parse_build_request, parse_cancel_request, readable_id};
pub use event::{
    BuildEvent, CLOUDEVENTS_SPEC_VERSION, DATA_CONTENT_TYPE, DATA_SCHEMA, EVENT_CONTENT_TYPE,
    EventData, ImageSummary, Level, Phase, PodRef, REQUEST_HASH_HEX, Reason, build_event_id,
    event_source, event_type, image_event_id, request_rejected_id, routing_key, subject,
};
pub use names::{
    MAX_LABEL_LEN, configmap_name, is_dns1123_label, label_value, pod_name, request_fingerprint,
};
pub use quantity::quantity_nanos;
pub use reference::{ImageReference, parse_destination, parse_image_reference};
pub use request::{
    BUILD_REQUEST_KIND, BuildContext, BuildRequest, ContextKind, DEFAULT_DOCKERFILE, GitContext,
    ImageSpec, RESERVED_LABEL_PREFIX, Resources, RetrySpec, S3Context,
};
pub use schema::{build_event_schema, build_request_schema, cancel_request_schema};
pub use secrets::{
    MASK, mask_secrets, mask_text, redact_url, secret_build_arg_values, secret_looking_name,
    tail as tail_bytes,
};
pub use validate::{
    ROOT_PATH, ValidationError, ValidationErrors, is_label_key, is_label_value, is_valid_build_id,
};

/// The only `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "kiln/v1";
/// Largest request accepted, in bytes of the message body.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most images in one request (each is a pod; policy may lower it).
pub const MAX_IMAGES: usize = 32;
/// Most destinations per image.
pub const MAX_DESTINATIONS: usize = 8;
/// Longest build id.
pub const MAX_ID_LEN: usize = 128;
/// Highest `retry.maxAttempts` (policy may lower it).
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;
/// Highest `timeoutSeconds`: one day. Kaniko builds that need longer are
/// better split; a day also bounds how long a lease-holding worker and a
/// pod can be tied to one request.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// Largest `logTail` in events.
pub const LOG_TAIL_MAX_BYTES: usize = 8 * 1024;
/// Most `labels` on a request (they are copied onto every pod and event).
pub const MAX_LABELS: usize = 64;
/// Most `buildArgs` per image.
pub const MAX_BUILD_ARGS: usize = 128;
/// Largest build-arg value: each becomes one argument of the Kaniko
/// container, and the pod spec as a whole must stay well below etcd's limit.
pub const MAX_BUILD_ARG_VALUE_BYTES: usize = 32 * 1024;
/// Most `templateArgs` per image.
pub const MAX_TEMPLATE_ARGS: usize = 128;
