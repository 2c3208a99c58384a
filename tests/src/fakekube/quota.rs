//! ResourceQuota admission for pods, as the API server's `ResourceQuota`
//! admission plugin does it (`staging/src/k8s.io/apiserver/pkg/admission/
//! plugin/resourcequota/controller.go`): a create that would take a
//! namespace's usage past a quota's `hard` limit is refused with 403
//! `Forbidden` and `<resource> "<name>" is forbidden: exceeded quota:
//! <quota>, requested: <r>=<n>, used: <r>=<n>, limited: <r>=<n>` (only the
//! exceeded resources, sorted by name, as `prettyPrint` prints them).
//!
//! Simplification: only the `pods` count is tracked (no `requests.cpu`,
//! `requests.memory`, scopes or other objects), and usage is counted from
//! the store at admission time instead of from `status.used` (the real
//! server re-counts in the quota controller; the admission itself charges
//! `status.used` atomically, which the store's lock stands in for).

use serde_json::Value;

use super::status::ApiError;

/// A ResourceQuota of one namespace: `spec.hard.pods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The ResourceQuota's name (quoted in the refusal).
    pub name: String,
    /// `hard.pods`: pods that may count at once.
    pub pods: u64,
}

/// Whether a pod counts against `pods` (`QuotaV1Pod` in
/// `pkg/quota/v1/evaluator/core/pods.go`): a pod in a terminal phase
/// (`Succeeded`, `Failed`) does not; nor does one being deleted once `now`
/// is past its `deletionTimestamp` plus `deletionGracePeriodSeconds`.
pub fn counts(pod: &Value, now: jiff::Timestamp) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return false;
    }
    let meta = &pod["metadata"];
    let deletion = meta["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match (deletion, meta["deletionGracePeriodSeconds"].as_i64()) {
        (Some(at), Some(grace)) => now <= at + jiff::SignedDuration::from_secs(grace),
        _ => true,
    }
}

/// Admits one more pod named `name` when `used` pods count already, or the
/// API server's refusal.
pub fn admit(quota: &Quota, used: u64, name: &str) -> Result<(), ApiError> {
    if used < quota.pods {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "pods",
        name,
        &format!(
            "exceeded quota: {}, requested: pods=1, used: pods={used}, limited: pods={}",
            quota.name, quota.pods
        ),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn quota(pods: u64) -> Quota {
        Quota {
            name: "compute".into(),
            pods,
        }
    }

    #[test]
    fn admits_below_the_limit_and_refuses_at_it_with_the_servers_words() {
        assert!(admit(&quota(2), 1, "p").is_ok());
        let e = admit(&quota(2), 2, "kiln-b-api-1").unwrap_err();
        assert_eq!(e.code.as_u16(), 403);
        assert_eq!(e.status["reason"], "Forbidden");
        assert_eq!(e.status["code"], 403);
        assert_eq!(
            e.status["message"],
            r#"pods "kiln-b-api-1" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"#
        );
        assert_eq!(
            e.status["details"],
            json!({"name": "kiln-b-api-1", "kind": "pods"})
        );
        assert!(admit(&quota(0), 0, "p").is_err());
    }

    #[test]
    fn terminal_and_expired_deleting_pods_do_not_count() {
        let now: jiff::Timestamp = "2026-12-02T01:00:00Z".parse().unwrap();
        let pod = |phase: &str| json!({"metadata": {}, "status": {"phase": phase}});
        assert!(counts(&pod("Pending"), now));
        assert!(counts(&pod("Running"), now));
        assert!(!counts(&pod("Succeeded"), now));
        assert!(!counts(&pod("Failed"), now));
        let deleting = |at: &str| {
            json!({"metadata": {"deletionTimestamp": at, "deletionGracePeriodSeconds": 30},
                   "status": {"phase": "Running"}})
        };
        // Counted until its deletion timestamp plus the grace period.
        assert!(counts(&deleting("2026-12-02T00:59:30Z"), now));
        assert!(!counts(&deleting("2026-12-02T00:59:29Z"), now));
    }
}
