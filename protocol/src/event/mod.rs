//! CloudEvents published to `kiln.events`.
//!
//! - `phase`: the vocabularies ([`Level`], [`Phase`], [`Reason`]);
//! - `data`: the payload ([`EventData`] and what it carries);
//! - `envelope`: the CloudEvents envelope ([`BuildEvent`]);
//! - `ids`: deterministic ids, types, subjects and sources;
//! - `routing`: routing keys with the tenant word, binding keys, and the
//!   topic permission that confines a tenant.

mod data;
mod envelope;
mod ids;
mod phase;
mod routing;

pub use data::{EventData, ImageSummary, PodRef};
pub use envelope::{
    BuildEvent, CLOUDEVENTS_SPEC_VERSION, DATA_CONTENT_TYPE, DATA_SCHEMA, EVENT_CONTENT_TYPE,
};
pub use ids::{
    REQUEST_HASH_HEX, build_event_id, event_source, event_type, image_event_id, platform_event_id,
    request_rejected_id, subject,
};
pub use phase::{Level, Phase, Reason};
pub use routing::{
    NO_TENANT, binding_key, routing_key, tenant_read_permission, tenant_routing_key, tenant_word,
};
