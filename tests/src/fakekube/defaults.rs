//! What the real API server fills in on create: defaulting
//! (`pkg/apis/core/v1/defaults.go`), the admission plugins every cluster runs
//! (ServiceAccount, DefaultTolerationSeconds, Priority) and the pod strategy's
//! `PrepareForCreate` (status reset to Pending with a QoS class, generation 1).

use serde_json::{Value, json};

fn set_default(obj: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_owned(), value);
    }
}

/// `imagePullPolicy` default: `Always` for `:latest` or untagged images.
fn pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// `qos.GetPodQOS`, simplified to cpu and memory.
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            // A request defaults to the limit when only the limit is set.
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed && !containers.is_empty() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Fills pod defaults and resets the status, as on a real create.
pub fn pod_on_create(pod: &mut Value) {
    let Some(obj) = pod.as_object_mut() else {
        return;
    };
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        set_default(spec, "restartPolicy", json!("Always"));
        set_default(spec, "dnsPolicy", json!("ClusterFirst"));
        set_default(spec, "schedulerName", json!("default-scheduler"));
        set_default(spec, "terminationGracePeriodSeconds", json!(30));
        set_default(spec, "securityContext", json!({}));
        set_default(spec, "enableServiceLinks", json!(true));
        set_default(spec, "serviceAccountName", json!("default"));
        set_default(spec, "priority", json!(0));
        set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(json!("default"));
        set_default(spec, "serviceAccount", sa);
        let mut tolerations = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !tolerations
                .iter()
                .any(|t| t.get("key").and_then(Value::as_str) == Some(key))
            {
                tolerations.push(json!({
                    "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300
                }));
            }
        }
        spec.insert("tolerations".into(), Value::Array(tolerations));
        if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
                set_default(c, "resources", json!({}));
            }
        }
    }
    let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
    obj.insert(
        "status".into(),
        json!({"phase": "Pending", "qosClass": qos}),
    );
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("generation".into(), json!(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies() {
        assert_eq!(
            pull_policy("gcr.io/kaniko-project/executor:latest"),
            "Always"
        );
        assert_eq!(pull_policy("gcr.io/kaniko-project/executor"), "Always");
        assert_eq!(pull_policy("localhost:5000/executor"), "Always");
        assert_eq!(
            pull_policy("gcr.io/kaniko-project/executor:v1.23.2"),
            "IfNotPresent"
        );
        assert_eq!(pull_policy("x@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn qos() {
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}
