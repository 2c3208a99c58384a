//! Whether an object found under a name Kiln was about to create (HTTP 409)
//! is provably the one Kiln makes (docs/protocol.md: only Kiln's own objects speak for
//! a build). Anyone who may create pods or ConfigMaps in a build namespace
//! can copy Kiln's names, labels and annotations; what they cannot do is
//! make an object whose contents are Kiln's and still run something else.
//!
//! Pods carry `kiln.dev/spec-sha256`, a hash of the pod Kiln generates
//! (computed before creation, without the fields the API server or time
//! changes), and ConfigMaps `kiln.dev/content-sha256`, a hash of their
//! data. The annotation alone proves nothing (`kiln plan` prints it): the
//! found object's own contents are compared with what Kiln would create.
//! Pure: no IO.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::labels::ANN_SPEC_SHA256;

/// Fields the API server (or its default admission plugins) adds to a pod
/// Kiln creates: a found pod may have them where Kiln's has none. Nothing
/// here changes what runs (command, args, image, env, mounts, volumes are
/// all compared).
const DEFAULTED: &[&str] = &[
    "activeDeadlineSeconds",
    "dnsPolicy",
    "schedulerName",
    "terminationGracePeriodSeconds",
    "tolerations",
    "serviceAccount",
    "nodeName",
    "priority",
    "preemptionPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "defaultMode",
    "resources",
];

/// Compared loosely or not at all: the API server rewrites quantities into
/// canonical form (`0.5` → `500m`), and the deadline counts down from the
/// create.
const NOT_COMPARED: &[&str] = &["activeDeadlineSeconds", "resources"];

/// The hash `kiln.dev/spec-sha256` of the pod Kiln generates: its name,
/// namespace, labels and annotations (but this one) and its spec without
/// the deadline (which depends on the instant of the create). Stable for
/// one plan and attempt.
pub fn pod_sha256(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.remove(ANN_SPEC_SHA256);
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.active_deadline_seconds = None;
    // k8s-openapi structs serialise their fields in declaration order and
    // maps are BTreeMaps: the bytes are canonical.
    let canonical = serde_json::json!({
        "name": meta.name,
        "namespace": meta.namespace,
        "labels": meta.labels,
        "annotations": annotations,
        "spec": spec,
    });
    sha256_hex(canonical.to_string().as_bytes())
}

/// The hash `kiln.dev/content-sha256` of a ConfigMap's data.
pub fn data_sha256(data: Option<&BTreeMap<String, String>>) -> String {
    sha256_hex(serde_json::to_string(&data).unwrap_or_default().as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why `found` is not the pod `ours` (as Kiln generates it) would be, or
/// `None` when it is: same name and namespace, Kiln's labels and
/// annotations (build id, plan, tenant, spec hash), and a spec holding
/// exactly Kiln's containers, volumes and settings plus only what the API
/// server defaults.
pub fn pod_differs(ours: &Pod, found: &Pod) -> Option<String> {
    let (o, f) = (&ours.metadata, &found.metadata);
    if o.namespace != f.namespace || o.name != f.name {
        return Some("another name or namespace".into());
    }
    if let Some(why) = covers_map("label", o.labels.as_ref(), f.labels.as_ref()) {
        return Some(why);
    }
    if let Some(why) = covers_map("annotation", o.annotations.as_ref(), f.annotations.as_ref()) {
        return Some(why);
    }
    // The hash annotation matched above (it is one of ours); it must also
    // be the hash of what was found, or the rest was edited around it.
    let ours_spec = serde_json::to_value(&ours.spec).unwrap_or(Value::Null);
    let found_spec = serde_json::to_value(&found.spec).unwrap_or(Value::Null);
    covers(&ours_spec, &found_spec, "spec")
}

/// Why `found` is not the ConfigMap `ours` would be, or `None`: exactly
/// Kiln's data (and its hash annotation), immutable (so it cannot be edited
/// after this check), Kiln's labels, and owned by nothing but the pod
/// `pod_uid` (`None`: the pod does not exist yet; any single pod owner of
/// Kiln's pod name passes, the pod is checked when it is met).
pub fn configmap_differs(
    ours: &ConfigMap,
    found: &ConfigMap,
    pod_uid: Option<&str>,
) -> Option<String> {
    if found.data != ours.data || found.binary_data.is_some() {
        return Some("its data is not the rendered Dockerfile".into());
    }
    if found.immutable != Some(true) {
        return Some("it is not immutable".into());
    }
    let (o, f) = (&ours.metadata, &found.metadata);
    if let Some(why) = covers_map("label", o.labels.as_ref(), f.labels.as_ref()) {
        return Some(why);
    }
    if let Some(why) = covers_map("annotation", o.annotations.as_ref(), f.annotations.as_ref()) {
        return Some(why);
    }
    let owners = f.owner_references.as_deref().unwrap_or_default();
    let ours_owner = o.owner_references.as_deref().unwrap_or_default();
    let owned = owners.len() == 1
        && owners[0].kind == "Pod"
        && ours_owner.first().is_some_and(|p| p.name == owners[0].name)
        && pod_uid.is_none_or(|uid| owners[0].uid == uid);
    if !owned {
        return Some("it is not owned by the build's pod".into());
    }
    None
}

fn covers_map(
    what: &str,
    ours: Option<&BTreeMap<String, String>>,
    found: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    let found = found.cloned().unwrap_or_default();
    ours.into_iter()
        .flatten()
        .find(|(k, v)| found.get(*k) != Some(v))
        .map(|(k, _)| format!("its {what} {k} is not Kiln's"))
}

/// Why `found` is not `ours` plus defaults: every field of ours equal in
/// found (arrays element by element, same length), and found's other
/// fields only [`DEFAULTED`] ones.
fn covers(ours: &Value, found: &Value, path: &str) -> Option<String> {
    match (ours, found) {
        (Value::Object(o), Value::Object(f)) => {
            for (k, v) in o {
                if NOT_COMPARED.contains(&k.as_str()) {
                    continue;
                }
                let here = format!("{path}.{k}");
                match f.get(k) {
                    Some(fv) => {
                        if let Some(why) = covers(v, fv, &here) {
                            return Some(why);
                        }
                    }
                    None if v.is_null() => {}
                    None => return Some(format!("{here} is missing")),
                }
            }
            f.iter()
                .find(|(k, v)| {
                    o.get(*k).is_none_or(Value::is_null)
                        && !v.is_null()
                        && !DEFAULTED.contains(&k.as_str())
                })
                .map(|(k, _)| format!("{path}.{k} is not Kiln's"))
        }
        (Value::Array(o), Value::Array(f)) if o.len() == f.len() => o
            .iter()
            .zip(f)
            .enumerate()
            .find_map(|(i, (ov, fv))| covers(ov, fv, &format!("{path}[{i}]"))),
        (o, f) if o == f => None,
        _ => Some(format!("{path} differs")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pod::labels::ANN_CONTENT_SHA256;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod() -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some("kiln-b-api-1".into()),
                namespace: Some("a".into()),
                labels: Some(BTreeMap::from([("kiln.dev/image".into(), "api".into())])),
                annotations: Some(BTreeMap::from([("kiln.dev/tenant".into(), "alice".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                active_deadline_seconds: Some(100),
                containers: vec![Container {
                    name: "kaniko".into(),
                    image: Some("executor".into()),
                    args: Some(vec!["--destination=r/a".into()]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let hash = pod_sha256(&p);
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_SPEC_SHA256.into(), hash);
        p
    }

    /// What the API server answers for `pod()`: defaults added, a uid, a
    /// deadline counted from another instant.
    fn served(p: &Pod) -> Pod {
        let mut v = serde_json::to_value(p).unwrap();
        v["metadata"]["uid"] = "u1".into();
        v["spec"]["activeDeadlineSeconds"] = 90.into();
        v["spec"]["dnsPolicy"] = "ClusterFirst".into();
        v["spec"]["tolerations"] = serde_json::json!([{"key": "k", "operator": "Exists"}]);
        v["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log".into();
        v["spec"]["containers"][0]["resources"] = serde_json::json!({});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_hash_ignores_the_deadline_and_itself() {
        let a = pod();
        let mut b = pod();
        b.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
        assert_eq!(pod_sha256(&a), pod_sha256(&b));
        b.spec.as_mut().unwrap().containers[0].args = Some(vec!["--destination=r/b".into()]);
        assert_ne!(pod_sha256(&a), pod_sha256(&b));
    }

    #[test]
    fn kilns_own_pod_as_served_is_kilns() {
        assert_eq!(pod_differs(&pod(), &served(&pod())), None);
    }

    #[test]
    fn a_pod_with_kilns_labels_and_hash_but_other_contents_is_not() {
        let ours = pod();
        // Another command around Kiln's args: the copied hash does not help.
        let mut forged = served(&ours);
        forged.spec.as_mut().unwrap().containers[0].command = Some(vec!["sh".into()]);
        assert!(pod_differs(&ours, &forged).unwrap().contains("command"));
        let mut forged = served(&ours);
        forged.spec.as_mut().unwrap().containers[0].image = Some("evil".into());
        assert!(pod_differs(&ours, &forged).unwrap().contains("image"));
        let mut forged = served(&ours);
        forged
            .spec
            .as_mut()
            .unwrap()
            .containers
            .push(Container::default());
        assert!(pod_differs(&ours, &forged).is_some());
        let mut forged = served(&ours);
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_SPEC_SHA256);
        assert!(
            pod_differs(&ours, &forged)
                .unwrap()
                .contains(ANN_SPEC_SHA256)
        );
        let mut forged = served(&ours);
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("kiln.dev/tenant".into(), "bob".into());
        assert!(
            pod_differs(&ours, &forged)
                .unwrap()
                .contains("kiln.dev/tenant")
        );
    }

    fn configmap(owner: &str) -> ConfigMap {
        let data = BTreeMap::from([("Dockerfile".into(), "FROM scratch\n".into())]);
        ConfigMap {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    ANN_CONTENT_SHA256.into(),
                    data_sha256(Some(&data)),
                )])),
                owner_references: Some(vec![OwnerReference {
                    kind: "Pod".into(),
                    name: "kiln-b-api-1".into(),
                    uid: owner.into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            data: Some(data),
            immutable: Some(true),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_configmap_is_kilns_only_with_its_data_immutable_and_owned_by_the_pod() {
        let ours = configmap("u1");
        assert_eq!(configmap_differs(&ours, &configmap("u1"), Some("u1")), None);
        assert_eq!(configmap_differs(&ours, &configmap("u2"), None), None);
        assert!(configmap_differs(&ours, &configmap("u2"), Some("u1")).is_some());
        let mut forged = configmap("u1");
        forged
            .data
            .as_mut()
            .unwrap()
            .insert("Dockerfile".into(), "FROM scratch\nRUN evil\n".into());
        assert!(
            configmap_differs(&ours, &forged, Some("u1"))
                .unwrap()
                .contains("data")
        );
        let mut editable = configmap("u1");
        editable.immutable = None;
        assert!(
            configmap_differs(&ours, &editable, Some("u1"))
                .unwrap()
                .contains("immutable")
        );
    }
}
