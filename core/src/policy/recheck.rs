//! Re-checking a plan read back from pods against the current policy.
//!
//! A pod's `kiln.dev/plan` annotation is written by whoever created the pod:
//! anyone who may create pods in a watched namespace can label one as
//! Kiln's. Adoption must not trust it: a forged plan could name another
//! tenant's Secrets, service account or namespace, and the adopting worker
//! would create pods mounting them. So the plan is turned back into the
//! request it stands for, that request is validated and admitted again
//! ([`Policy::admit`], the one checker), and the plan the policy gives it
//! must be the plan the pods carry, field for field.

use kiln_protocol::{BuildRequest, ImageSpec, Resources, RetrySpec};

use super::Policy;
use crate::plan::BuildPlan;

impl Policy {
    /// Every reason the current policy would not give `plan` to its tenant;
    /// empty when it would. Pure.
    pub fn recheck(&self, plan: &BuildPlan) -> Vec<String> {
        if self.tenant(&plan.tenant).is_none() {
            return vec![format!(
                "tenant {} has no policy on this worker",
                super::quote(&plan.tenant)
            )];
        }
        let req = match request_of(plan) {
            Ok(req) => req,
            Err(problem) => return vec![problem],
        };
        if let Err(errs) = req.validate() {
            return errs.into_iter().map(|e| format!("plan: {e}")).collect();
        }
        let admission = match self.admit(Some(&plan.tenant), &req) {
            Ok(a) => a,
            Err(errs) => return errs.iter().map(|e| format!("policy: {e}")).collect(),
        };
        let rendered = plan
            .images
            .iter()
            .map(|i| i.rendered_dockerfile.clone())
            .collect();
        let mut expected = BuildPlan::new(
            &req,
            &admission,
            rendered,
            plan.accepted_at,
            plan.traceparent.clone(),
        );
        // Not policy: what the request said, kept as the pods carry it.
        expected.fingerprint.clone_from(&plan.fingerprint);
        for (want, have) in expected.images.iter_mut().zip(&plan.images) {
            if have.ephemeral_storage.is_none() {
                // Plans of workers before ephemeral storage existed.
                want.ephemeral_storage = None;
            }
        }
        differences(&expected, plan)
    }
}

/// The request `plan` stands for: what the policy decides from.
fn request_of(plan: &BuildPlan) -> Result<BuildRequest, String> {
    let timeout = plan.deadline.duration_since(plan.accepted_at);
    let secs = u64::try_from(timeout.as_secs())
        .ok()
        .filter(|s| *s > 0 && timeout.subsec_nanos() == 0)
        .ok_or_else(|| {
            format!(
                "plan: deadline - acceptedAt is {timeout:#}, not a whole positive number of seconds"
            )
        })?;
    let images = plan
        .images
        .iter()
        .map(|i| ImageSpec {
            name: i.name.clone(),
            context: i.context.clone(),
            dockerfile: i
                .rendered_dockerfile
                .is_none()
                .then(|| i.dockerfile.clone()),
            dockerfile_inline: i.rendered_dockerfile.clone(),
            template_args: std::collections::BTreeMap::new(),
            build_args: i.build_args.clone(),
            secrets: i.secrets.clone(),
            target: i.target.clone(),
            destinations: i.destinations.clone(),
            platform: i.platform.clone(),
            platforms: (!i.platforms.is_empty()).then(|| i.platforms.clone()),
            cache: Some(i.cache),
            resources: Some(Resources {
                cpu: Some(i.cpu.clone()),
                memory: Some(i.memory.clone()),
                ephemeral_storage: i.ephemeral_storage.clone(),
            }),
        })
        .collect();
    Ok(BuildRequest {
        api_version: kiln_protocol::API_VERSION.to_owned(),
        kind: kiln_protocol::BUILD_REQUEST_KIND.to_owned(),
        id: plan.id.clone(),
        app: plan.app.clone(),
        component: plan.component.clone(),
        labels: plan.labels.clone(),
        timeout_seconds: Some(secs),
        retry: Some(RetrySpec {
            max_attempts: Some(plan.max_attempts),
        }),
        images,
    })
}

/// The fields (one level into images) where `have` is not `want`, each
/// with both values.
fn differences(want: &BuildPlan, have: &BuildPlan) -> Vec<String> {
    let (Ok(want), Ok(have)) = (serde_json::to_value(want), serde_json::to_value(have)) else {
        return vec!["plan: cannot be encoded".to_owned()];
    };
    let mut out = Vec::new();
    diff("", &want, &have, 0, &mut out);
    out
}

fn diff(
    path: &str,
    want: &serde_json::Value,
    have: &serde_json::Value,
    depth: usize,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if want == have {
        return;
    }
    let null = Value::Null;
    match (want, have) {
        (Value::Object(w), Value::Object(h)) if depth < 3 => {
            let keys: std::collections::BTreeSet<&String> = w.keys().chain(h.keys()).collect();
            for k in keys {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    &at,
                    w.get(k).unwrap_or(&null),
                    h.get(k).unwrap_or(&null),
                    depth + 1,
                    out,
                );
            }
        }
        (Value::Array(w), Value::Array(h)) if depth < 3 && w.len() == h.len() => {
            for (i, (w, h)) in w.iter().zip(h).enumerate() {
                diff(&format!("{path}[{i}]"), w, h, depth + 1, out);
            }
        }
        _ => out.push(format!(
            "{path}: the plan says {} but the policy gives {}",
            shown(have),
            shown(want)
        )),
    }
}

/// A value for a log line: masked, and short (a plan value can be long).
fn shown(v: &serde_json::Value) -> String {
    let text = kiln_protocol::mask_text(&v.to_string(), &[]);
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
