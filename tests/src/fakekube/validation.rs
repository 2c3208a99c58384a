//! Object validation with the messages of
//! `k8s.io/apimachinery/pkg/util/validation` (IsDNS1123Subdomain,
//! IsQualifiedName, IsValidLabelValue) and `pkg/apis/core/validation`
//! (ValidateObjectMeta, ValidatePod, ValidateConfigMap). Only the rules a
//! builder can plausibly break are checked.
//!
//! Note: pod and configmap names are DNS-1123 *subdomains* (up to 253
//! characters), not labels (63): a 64-character pod name is accepted by the
//! real server, and so it is here.

use serde_json::Value;

use super::resource::Resource;
use super::status::FieldError;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIGMAP_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// Longest `generateName` prefix kept before the 5 random characters
/// (`maxGeneratedNameLength` in `names.SimpleNameGenerator`).
pub const MAX_GENERATED_PREFIX: usize = 58;

fn is_dns1123_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `IsDNS1123Subdomain`: the error details, empty when valid.
pub fn dns1123_subdomain(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !name.split('.').all(is_dns1123_label_part) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `IsQualifiedName` (label keys, annotation keys).
pub fn label_key(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_owned());
        }
        if !is_qualified_name_part(name) {
            errs.push(QUALIFIED_NAME_MSG.to_owned());
        }
    }
    errs
}

/// `IsValidLabelValue`.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

/// `ValidateObjectMeta` for a create: name (or generateName), labels,
/// annotation keys and total annotation size.
pub fn object_meta(meta: &Value, errs: &mut Vec<FieldError>) {
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() && generate.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !name.is_empty() {
        for e in dns1123_subdomain(name) {
            errs.push(FieldError::invalid("metadata.name", name, &e));
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for e in label_key(k) {
                errs.push(FieldError::invalid("metadata.labels", k, &e));
            }
            let v = v.as_str().unwrap_or_default();
            for e in label_value(v) {
                errs.push(FieldError::invalid("metadata.labels", v, &e));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            for e in label_key(&k.to_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k, &e));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errs.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

/// The parts of `ValidatePodSpec` a pod builder can get wrong.
fn pod_spec(spec: &Value, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push(FieldError::required("spec.containers", "")),
        Some(cs) if cs.is_empty() => errs.push(FieldError::required("spec.containers", "")),
        Some(cs) => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    errs.push(FieldError::required(
                        format!("spec.containers[{i}].name"),
                        "",
                    ));
                } else if !seen.insert(name.to_owned()) {
                    errs.push(FieldError {
                        field: format!("spec.containers[{i}].name"),
                        reason: "FieldValueDuplicate",
                        message: format!("Duplicate value: {name:?}"),
                    });
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty()
                {
                    errs.push(FieldError::required(
                        format!("spec.containers[{i}].image"),
                        "",
                    ));
                }
                if let Some(p) = c.get("terminationMessagePolicy").and_then(Value::as_str)
                    && p != "File"
                    && p != "FallbackToLogsOnError"
                {
                    errs.push(FieldError {
                        field: format!("spec.containers[{i}].terminationMessagePolicy"),
                        reason: "FieldValueNotSupported",
                        message: format!(
                            "Unsupported value: {p:?}: supported values: \"File\", \"FallbackToLogsOnError\""
                        ),
                    });
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        errs.push(FieldError {
            field: "spec.restartPolicy".into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && !(1..=i64::from(i32::MAX)).contains(&d)
    {
        errs.push(FieldError::invalid_int(
            "spec.activeDeadlineSeconds",
            d,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
}

/// `ValidateConfigMap`: key syntax and the 1 MiB total size.
fn configmap(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut total = 0;
    for field in ["data", "binaryData"] {
        if let Some(map) = obj.get(field).and_then(Value::as_object) {
            for (k, v) in map {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
                    && k != "."
                    && k != ".."
                    && !k.starts_with("..");
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("{field}[{k}]"),
                        k,
                        CONFIGMAP_KEY_MSG,
                    ));
                }
                total += v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > 1024 * 1024 {
        errs.push(FieldError::too_long("", 1024 * 1024));
    }
}

/// Everything checked on create.
pub fn validate_create(resource: Resource, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    object_meta(obj.get("metadata").unwrap_or(&Value::Null), &mut errs);
    // Nothing could ever remove a finalizer (Kiln sets none, and the fake
    // serves no update): an object holding one is refused at once rather
    // than deleted as if it had none.
    if obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
    {
        errs.push(FieldError::invalid(
            "metadata.finalizers",
            "",
            "finalizers are not served by the fake API server (Kiln sets none)",
        ));
    }
    match resource {
        Resource::Pods => pod_spec(obj.get("spec").unwrap_or(&Value::Null), &mut errs),
        Resource::ConfigMaps => configmap(obj, &mut errs),
        Resource::Other => {}
    }
    errs
}

/// Checks on a status update (the kubelet's): metadata labels and
/// annotations, and a ConfigMap's data. Kiln itself never updates an object,
/// so the pod spec rules of `ValidatePodUpdate` have nothing to check.
pub fn validate_update(resource: Resource, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut meta = new.get("metadata").cloned().unwrap_or(Value::Null);
    // The name cannot change on update anyway; skip generateName rules.
    if let Some(m) = meta.as_object_mut() {
        m.remove("generateName");
    }
    object_meta(&meta, &mut errs);
    if resource == Resource::ConfigMaps {
        configmap(new, &mut errs);
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("kiln-a-b-1").is_empty());
        assert!(dns1123_subdomain("a.b").is_empty());
        assert!(!dns1123_subdomain("Kiln").is_empty());
        assert!(!dns1123_subdomain("-a").is_empty());
        assert!(!dns1123_subdomain("").is_empty());
        assert!(dns1123_subdomain(&"a".repeat(253)).is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
        assert!(label_key("app.kubernetes.io/managed-by").is_empty());
        assert!(!label_key("a/").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value(&"a".repeat(64)).is_empty());
        assert!(!label_value("a b").is_empty());
    }
}
