//! What the unit tests of the decisions share: a policy, requests and the
//! plan of a valid one.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use crate::intake::plan_request;
use crate::plan::BuildPlan;
use crate::policy::Policy;

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

/// Tenant `shop` may push under `registry.example.com/shop/` only.
pub fn policy() -> Policy {
    Policy::from_toml_str(
        r#"
[tenants.shop]
namespace = "builds"
allowedDestinations = ["registry.example.com/shop/"]
"#,
    )
    .unwrap()
}

pub fn image(name: &str) -> Value {
    json!({
        "name": name,
        "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
        "destinations": [format!("registry.example.com/shop/{name}:1.0.0")]
    })
}

pub fn request(id: &str, images: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "images": images,
    }))
    .unwrap()
}

/// The plan of a valid `shop` request with id `b`.
pub fn shop_plan() -> BuildPlan {
    plan_request(
        &request("b", &[image("api")]),
        Some("shop"),
        Some("00-trace-01"),
        &policy(),
        now(),
    )
    .unwrap()
}
