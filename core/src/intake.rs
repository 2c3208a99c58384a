//! A build request becomes a plan: parsed, admitted by the policy, its
//! templates rendered and its size checked. The worker's intake and
//! `kiln plan` both call [`plan_request`], so a plan cannot drift from what
//! is built.

use kiln_protocol::{BuildRequest, ROOT_PATH, Reason, ValidationError};

use crate::plan::{BuildPlan, MAX_PLAN_BYTES};
use crate::policy::Policy;
use crate::rejection::Rejection;
use crate::render::render_dockerfile;

/// Parse, admit, render and size-check a request: the plan the worker
/// builds it by, or why it refuses it (every problem with its path). Pure. `kiln plan` calls it too, so
/// that the plan it prints is the one a worker would make.
pub fn plan_request(
    body: &[u8],
    user_id: Option<&str>,
    traceparent: Option<&str>,
    policy: &Policy,
    now: jiff::Timestamp,
) -> Result<BuildPlan, Rejection> {
    let req = kiln_protocol::parse_build_request(body).map_err(|e| {
        let id = kiln_protocol::readable_id(body);
        Rejection::new(id.as_deref(), Reason::InvalidRequest, e.errors())
    })?;
    let id = Some(req.id.as_str());
    let admission = policy
        .admit(user_id, &req)
        .map_err(|violations| Rejection::new(id, Reason::PolicyViolation, violations))?;
    let rendered =
        render_all(&req).map_err(|problems| Rejection::new(id, Reason::ConfigError, problems))?;
    let plan = BuildPlan::new(
        &req,
        &admission,
        rendered,
        now,
        traceparent.map(str::to_owned),
    );
    if plan.to_annotation().len() > MAX_PLAN_BYTES {
        let message = format!(
            "the normalised request is larger than the {} KiB a pod annotation can carry; shorten inline Dockerfiles or split the build",
            MAX_PLAN_BYTES / 1024
        );
        let problem = ValidationError::new(ROOT_PATH, message);
        return Err(Rejection::new(id, Reason::InvalidRequest, vec![problem]));
    }
    Ok(plan)
}

/// Renders every inline Dockerfile; every problem, with its path, if any
/// fails.
fn render_all(req: &BuildRequest) -> Result<Vec<Option<String>>, Vec<ValidationError>> {
    let mut rendered = Vec::with_capacity(req.images.len());
    let mut problems = Vec::new();
    for (i, img) in req.images.iter().enumerate() {
        let Some(template) = &img.dockerfile_inline else {
            rendered.push(None);
            continue;
        };
        match render_dockerfile(template, &img.template_args) {
            Ok(s) => rendered.push(Some(s)),
            Err(e) => problems.push(ValidationError::new(
                format!("images[{i}].dockerfileInline"),
                e.to_string(),
            )),
        }
    }
    if problems.is_empty() {
        Ok(rendered)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;
