//! Kiln's wire contract: the requests upstream publishes, the CloudEvents
//! Kiln publishes, their validation and JSON Schemas, and the deterministic
//! names (event ids, routing keys, pod names) that let any worker pick up any
//! build.
//!
//! Everything here is a pure function of its input: no IO, no clock, no
//! async runtime, so the worker, the CLI and the tests agree by construction.
//! The contract itself is described in `docs/protocol.md`; change it only by
//! extending it.
//!
//! Files by concept: `request/` (types, validation, URLs), `cancel`,
//! `decode` (bytes to validated requests), `event/` (vocabularies,
//! payload, envelope, ids, routing keys), `dead_letter` (the `kiln-error`
//! header), `tenant`, `names` (Kubernetes object names, request
//! fingerprints), `platform` (per-platform tags and labels), `reference` (image references), `quantity`, `validate`
//! (problems and shared syntax rules), `secrets` (masking), `bounded` (size
//! bounds on derived text), `limits`, `schema`. This file only re-exports:
//! no module imports the crate root.

mod bounded;
mod cancel;
mod dead_letter;
mod decode;
mod event;
mod limits;
mod names;
mod platform;
pub mod provenance;
mod quantity;
mod reference;
mod request;
mod schema;
mod secrets;
mod tenant;
mod validate;

pub use bounded::bounded;
pub use cancel::{CANCEL_REQUEST_KIND, CancelRequest, MAX_CANCEL_REASON_LEN};
pub use dead_letter::{ERROR_HEADER, error_header};
pub use decode::{DecodeError, parse_build_request, parse_cancel_request, readable_id};
pub use event::{
    BuildEvent, CLOUDEVENTS_SPEC_VERSION, DATA_CONTENT_TYPE, DATA_SCHEMA, EVENT_CONTENT_TYPE,
    EventData, ImageSummary, Level, NO_TENANT, Phase, PodRef, REQUEST_HASH_HEX, Reason,
    binding_key, build_event_id, event_source, event_type, image_event_id, platform_event_id,
    request_rejected_id, routing_key, subject, tenant_read_permission, tenant_routing_key,
    tenant_word,
};
pub use limits::{
    API_VERSION, LOG_TAIL_MAX_BYTES, MAX_ATTEMPTS_LIMIT, MAX_BUILD_ARG_VALUE_BYTES, MAX_BUILD_ARGS,
    MAX_BUILD_SECRETS, MAX_DESTINATIONS, MAX_ID_LEN, MAX_IMAGES, MAX_LABELS, MAX_PLATFORMS,
    MAX_PROBLEMS, MAX_REASON_BYTES, MAX_REQUEST_BYTES, MAX_TEMPLATE_ARGS, MAX_TEXT_BYTES,
    MAX_TIMEOUT_SECONDS, MIN_PLATFORMS,
};
pub use names::{
    MAX_LABEL_LEN, configmap_name, is_dns1123_label, label_value, platform_unit, pod_name,
    publish_unit, request_fingerprint,
};
pub use platform::{
    destination_tag, platform_destination, platform_label, platform_of_label, platform_suffix,
    platforms_count_problem,
};
pub use quantity::quantity_nanos;
pub use reference::{ImageReference, parse_destination, parse_image_reference};
pub use request::{
    BUILD_REQUEST_KIND, BuildContext, BuildRequest, ContextKind, DEFAULT_DOCKERFILE, GitContext,
    ImageSpec, RESERVED_LABEL_PREFIX, Resources, RetrySpec, S3Context, SecretRef,
    build_arg_looks_secret,
};
pub use schema::{build_event_schema, build_request_schema, cancel_request_schema};
pub use secrets::{
    MASK, mask_secrets, mask_text, redact_url, secret_build_arg_values, secret_looking_name,
    tail as tail_bytes,
};
pub use tenant::{TENANT_PATTERN, Tenant, TenantError, is_valid_tenant, tenant_problem};
pub use validate::{
    ROOT_PATH, ValidationError, ValidationErrors, is_label_key, is_label_value, is_valid_build_id,
};
