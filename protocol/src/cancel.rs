//! `CancelRequest`: what upstream publishes with routing key `cancel`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::API_VERSION;
use crate::request::ID_PATTERN;
use crate::validate::{ValidationErrors, build_id_problem, check_header};

/// The `kind` of a cancel request.
pub const CANCEL_REQUEST_KIND: &str = "CancelRequest";

/// Longest `reason` accepted; it is copied into the `build.cancelled` event.
pub const MAX_CANCEL_REASON_LEN: usize = 1024;

/// Asks Kiln to stop a build. Cancels travel on their own queue so they never
/// wait behind a backlog of builds; cancelling an unknown or finished build
/// is not an error (the cancel may overtake the build or arrive late).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Kiln CancelRequest")]
pub struct CancelRequest {
    /// Always `kiln/v1`.
    #[schemars(extend("const" = "kiln/v1"))]
    pub api_version: String,
    /// Always `CancelRequest`.
    #[schemars(extend("const" = "CancelRequest"))]
    pub kind: String,
    /// Id of the build to cancel.
    #[schemars(pattern(ID_PATTERN))]
    pub id: String,
    /// Why, for people reading the `build.cancelled` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

impl CancelRequest {
    pub fn new(id: impl Into<String>, reason: Option<String>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: CANCEL_REQUEST_KIND.to_owned(),
            id: id.into(),
            reason,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        check_header(
            &mut errs,
            &self.api_version,
            &self.kind,
            CANCEL_REQUEST_KIND,
        );
        if let Some(p) = build_id_problem(&self.id) {
            errs.push("id", p);
        }
        if let Some(r) = &self.reason
            && r.chars().count() > MAX_CANCEL_REASON_LEN
        {
            errs.push(
                "reason",
                format_args!(
                    "is {} characters long; the limit is {MAX_CANCEL_REASON_LEN}",
                    r.chars().count()
                ),
            );
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        assert_eq!(
            CancelRequest::new("b-1", Some("superseded".into())).validate(),
            Ok(())
        );
    }

    #[test]
    fn every_problem() {
        let c = CancelRequest {
            api_version: "kiln/v2".into(),
            kind: "BuildRequest".into(),
            id: "a b".into(),
            reason: Some("x".repeat(1025)),
        };
        let errs = c.validate().expect_err("invalid");
        let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "apiVersion: \"kiln/v2\" is not supported; use \"kiln/v1\"",
                "kind: \"BuildRequest\" is not valid here; use \"CancelRequest\"",
                "id: \"a b\" contains \" \"; use only letters, digits, '.', '_' and '-'",
                "reason: is 1025 characters long; the limit is 1024",
            ]
        );
    }
}
