//! JSON Schemas (draft 2020-12) of the wire types, generated from the Rust
//! types so they cannot drift; the committed copies under `protocol/schema/`
//! are checked against these by a test.

use schemars::generate::SchemaSettings;
use schemars::transform::{RecursiveTransform, Transform};
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::cancel::CancelRequest;
use crate::event::BuildEvent;
use crate::request::BuildRequest;

/// Schema of a `BuildRequest` message.
pub fn build_request_schema() -> Value {
    generate::<BuildRequest>()
}

/// Schema of a `CancelRequest` message.
pub fn cancel_request_schema() -> Value {
    generate::<CancelRequest>()
}

/// Schema of a `BuildEvent` (CloudEvents structured JSON) message.
pub fn build_event_schema() -> Value {
    generate::<BuildEvent>()
}

fn generate<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with_transform(RecursiveTransform(NotNullable))
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Optional fields are written by leaving them out, never as `null`; the
/// schema says so, which keeps it readable and keeps publishers from relying
/// on `null` (serde tolerates it, but it is not part of the contract).
#[derive(Clone)]
struct NotNullable;

impl Transform for NotNullable {
    fn transform(&mut self, schema: &mut Schema) {
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        // {"type": ["string", "null"]} -> {"type": "string"}
        if let Some(Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                obj.insert("type".into(), only);
            }
        }
        // {"anyOf": [{"$ref": ...}, {"type": "null"}]} -> {"$ref": ...}
        let is_null = |v: &Value| {
            v.get("type").is_some_and(|t| t == "null")
                && v.as_object().is_some_and(|o| o.len() == 1)
        };
        if let Some(Value::Array(alts)) = obj.get("anyOf")
            && alts.len() == 2
            && alts.iter().any(is_null)
            && let Some(Value::Object(other)) = alts.iter().find(|v| !is_null(v)).cloned()
        {
            obj.remove("anyOf");
            for (k, v) in other {
                obj.entry(k).or_insert(v);
            }
        }
        // `enum` lists of optional enums gain a null too.
        if let Some(Value::Array(values)) = obj.get_mut("enum") {
            values.retain(|v| !v.is_null());
        }
    }
}
