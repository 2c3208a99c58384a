//! Tenant names.
//!
//! A tenant is the AMQP user a request is published as (RabbitMQ checks the
//! `user_id` property against the connection's user) and the key of its
//! policy. Its name is the last word of every event routing key
//! (`build.<phase>.<tenant>`), so that RabbitMQ topic permissions can
//! confine a subscriber to its own tenant's events: a name with `.` would
//! add a word, and `*` or `#` would be read as wildcards. Hence the grammar
//! of a DNS label, which also fits a Kubernetes label value and a namespace.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::validate::{is_dns1123_label, quote};

/// The grammar of a tenant name (JSON Schema / ECMA-262 form).
pub const TENANT_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// Whether `name` is a valid tenant name: 1 to 63 lowercase letters, digits
/// and `-`, starting and ending with a letter or digit.
pub fn is_valid_tenant(name: &str) -> bool {
    is_dns1123_label(name)
}

/// Why `name` is not a valid tenant name, as a sentence for a
/// [`ValidationError`](crate::ValidationError) whose path names the field
/// it came from (`None` when it is valid).
pub fn tenant_problem(name: &str) -> Option<String> {
    (!is_valid_tenant(name)).then(|| {
        format!(
            "{} is not a valid tenant name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (it is a word of the event routing keys, where '.', '*' and '#' would change their meaning)",
            quote(name)
        )
    })
}

/// A valid tenant name; the only way to put a tenant into a routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

/// A name that is not a valid tenant name; its text is the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TenantError(String);

impl Tenant {
    pub fn new(name: impl Into<String>) -> Result<Self, TenantError> {
        let name = name.into();
        match tenant_problem(&name) {
            None => Ok(Self(name)),
            Some(reason) => Err(TenantError(reason)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tenant {
    type Error = TenantError;
    fn try_from(name: String) -> Result<Self, TenantError> {
        Self::new(name)
    }
}

impl FromStr for Tenant {
    type Err = TenantError;
    fn from_str(name: &str) -> Result<Self, TenantError> {
        Self::new(name)
    }
}

impl From<Tenant> for String {
    fn from(t: Tenant) -> String {
        t.0
    }
}

impl AsRef<str> for Tenant {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        let pattern = regex::Regex::new(TENANT_PATTERN).unwrap_or_else(|e| panic!("{e}"));
        for ok in ["alice", "a", "team-7", "0", &"a".repeat(63)] {
            assert!(Tenant::new(ok).is_ok(), "{ok}");
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "a.b",
            "a*",
            "a#",
            "-a",
            "a-",
            "a_b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_tenant(bad), "{bad}");
            assert!(!pattern.is_match(bad), "{bad}");
        }
        assert_eq!(
            "a.b".parse::<Tenant>().map_err(|e| e.to_string()),
            Err(r#""a.b" is not a valid tenant name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (it is a word of the event routing keys, where '.', '*' and '#' would change their meaning)"#.to_owned())
        );
    }

    #[test]
    fn serde_refuses_invalid_names() {
        assert_eq!(
            serde_json::from_str::<Tenant>(r#""alice""#).ok(),
            Tenant::new("alice").ok()
        );
        assert!(serde_json::from_str::<Tenant>(r#""a.b""#).is_err());
    }
}
