//! A build request becomes a plan: parsed, admitted by the policy, its
//! templates rendered and its size checked. The worker's intake and
//! `kiln plan` both call [`plan_request`], so a plan cannot drift from what
//! is built.

use kiln_protocol::{BuildRequest, ROOT_PATH, Reason, ValidationError};

use crate::plan::{BuildPlan, MAX_PLAN_BYTES};
use crate::policy::Policy;
use crate::rejection::Rejection;
use crate::render::{FUEL, check_template, render_with_fuel};

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

/// Renders every inline Dockerfile under ONE fuel budget ([`FUEL`]) for
/// the whole request: each template gets what the ones before it left. Every
/// template is first parsed (no fuel), so every syntax error is reported;
/// rendering then stops at the first template that fails: a failed
/// rendering does not say how much fuel it used, so going on could spend up
/// to a budget per image again. Problems come in image order.
fn render_all(req: &BuildRequest) -> Result<Vec<Option<String>>, Vec<ValidationError>> {
    let path = |i: usize| format!("images[{i}].dockerfileInline");
    let templates: Vec<_> = req
        .images
        .iter()
        .map(|img| {
            img.dockerfile_inline
                .as_deref()
                .map(|t| (t, &img.template_args))
        })
        .collect();
    let mut problems: Vec<(usize, ValidationError)> = templates
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let (template, args) = (*t)?;
            let e = check_template(template, args).err()?;
            Some((i, ValidationError::new(path(i), e.to_string())))
        })
        .collect();
    let mut rendered = Vec::with_capacity(templates.len());
    let mut left = FUEL;
    for (i, t) in templates.iter().enumerate() {
        let Some((template, args)) = t else {
            rendered.push(None);
            continue;
        };
        if problems.iter().any(|(j, _)| *j == i) {
            continue;
        }
        match render_with_fuel(template, args, left) {
            Ok((s, used)) => {
                left = left.saturating_sub(used);
                rendered.push(Some(s));
            }
            Err(e) => {
                problems.push((i, ValidationError::new(path(i), e.to_string())));
                break;
            }
        }
    }
    if problems.is_empty() {
        Ok(rendered)
    } else {
        problems.sort_by_key(|(i, _)| *i);
        Err(problems.into_iter().map(|(_, p)| p).collect())
    }
}

#[cfg(test)]
mod tests;
