//! Label selectors, as far as Kiln uses them: comma-separated `key=value`
//! requirements, ANDed (`app.kubernetes.io/managed-by=kiln,kiln.dev/build=…`
//! in `worker/src/pod`). `key==value` is the same requirement.
//!
//! Kiln sends no set-based requirement (`in`, `notin`, `!=`, `key`, `!key`)
//! and no field selector, so the fake refuses them with a 400 that says so
//! (see [`Selectors::parse`]): a Kiln change that starts sending one fails
//! its tests loudly instead of being answered by a matcher nobody checks.

use serde_json::Value;

use super::validation;

/// A parsed `labelSelector`. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// (key, value) pairs an object's labels must all have.
    requirements: Vec<(String, String)>,
}

impl LabelSelector {
    /// Parses a `labelSelector` query value. Errors are the message of the
    /// 400 BadRequest answered.
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in input.split(',').map(str::trim) {
            let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) else {
                return Err(unsupported(input, part));
            };
            let (key, value) = (key.trim(), value.trim());
            // `a!=b` splits at its `=` into `a!` and `b`: the key check
            // refuses it, with the other set-based forms.
            if key.ends_with('!') || value.contains(['=', '(', ')', ' ']) {
                return Err(unsupported(input, part));
            }
            if let Some(e) = validation::label_key(key).first() {
                return Err(format!(
                    "unable to parse requirement: key: Invalid value: {key:?}: {e}"
                ));
            }
            if let Some(e) = validation::label_value(value).first() {
                return Err(format!(
                    "unable to parse requirement: values[0]: Invalid value: {value:?}: {e}"
                ));
            }
            requirements.push((key.to_owned(), value.to_owned()));
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does an object with these `metadata.labels` match?
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|(key, want)| {
            labels.and_then(|l| l.get(key)).and_then(Value::as_str) == Some(want.as_str())
        })
    }

    /// Matches a whole object (its `metadata.labels`).
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.is_empty() || self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

fn unsupported(input: &str, part: &str) -> String {
    format!(
        "labelSelector {input:?}: {part:?} is not a key=value requirement; the fake API server serves only those, as Kiln sends nothing else"
    )
}

/// The selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
}

impl Selectors {
    /// `labelSelector` parsed; any `fieldSelector` is refused.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        if let Some(f) = fields.filter(|f| !f.is_empty()) {
            return Err(format!(
                "fieldSelector {f:?}: field selectors are not served by the fake API server (Kiln sends none)"
            ));
        }
        Ok(Self {
            labels: labels
                .map(LabelSelector::parse)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_requirements_only() {
        let l = json!({"app": "kiln", "tier": "build"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(l.as_object());
        assert!(m("app=kiln"));
        assert!(m("app==kiln"));
        assert!(m("app=kiln, tier=build"));
        assert!(!m("app=kiln,tier=test"));
        assert!(!m("other=kiln"));
        assert!(m(""));
        assert!(
            LabelSelector::parse("app=")
                .unwrap()
                .matches(json!({"app": ""}).as_object())
        );
        for refused in [
            "app!=kiln",
            "tier in (a,b)",
            "tier notin (a)",
            "app",
            "!app",
            "app=kiln,",
            "a/=b",
        ] {
            assert!(LabelSelector::parse(refused).is_err(), "{refused}");
        }
        assert!(Selectors::parse(None, Some("metadata.name=x")).is_err());
        assert!(Selectors::parse(None, Some("")).is_ok());
    }
}
