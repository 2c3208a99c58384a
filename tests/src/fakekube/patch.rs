//! PATCH bodies.
//!
//! * `application/merge-patch+json`: RFC 7386 JSON merge patch, exactly.
//! * `application/strategic-merge-patch+json`: SIMPLIFIED. Treated as a JSON
//!   merge patch, except that the lists the real server merges by key
//!   (`patchMergeKey` in the Go types) are merged by that key here too:
//!   `conditions` by `type`, `containerStatuses` / `initContainerStatuses` /
//!   `containers` / `initContainers` by `name`, `ownerReferences` by `uid`.
//!   `$patch`, `$retainKeys`, `$setElementOrder` directives are not supported
//!   (keys starting with `$` are dropped).
//! * `application/apply-patch+yaml` (server-side apply, kube sends JSON):
//!   SIMPLIFIED to a merge patch of the applied configuration (no field
//!   ownership, no conflicts); creates the object when it does not exist.
//! * `application/json-patch+json`: not supported (415).

use serde_json::Value;

/// How a PATCH body is interpreted, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    merge_inner(target, patch, false);
}

/// Strategic merge patch, simplified (see the module docs).
pub fn strategic(target: &mut Value, patch: &Value) {
    merge_inner(target, patch, true);
}

fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" => Some("type"),
        "containerStatuses" | "initContainerStatuses" | "containers" | "initContainers" => {
            Some("name")
        }
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

fn merge_inner(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (k, v) in patch_map {
        if strategic && k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            target_map.remove(k);
            continue;
        }
        if strategic
            && let (Some(key), Value::Array(items)) = (merge_key(k), v)
            && let Some(Value::Array(existing)) = target_map.get_mut(k)
        {
            for item in items {
                let id = item.get(key);
                match existing
                    .iter_mut()
                    .find(|e| id.is_some() && e.get(key) == id)
                {
                    Some(e) => merge_inner(e, item, true),
                    None => existing.push(item.clone()),
                }
            }
            continue;
        }
        let slot = target_map.entry(k.clone()).or_insert(Value::Null);
        if v.is_object() {
            merge_inner(slot, v, strategic);
        } else {
            *slot = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_conditions_by_type() {
        let mut t = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}});
        strategic(
            &mut t,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}]}}),
        );
        assert_eq!(
            t["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}, {"type": "X", "status": "True"}])
        );
    }
}
