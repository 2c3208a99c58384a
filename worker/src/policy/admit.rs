//! Admission: a validated request checked against its tenant's policy,
//! giving what it is granted or every violation at once.

use std::time::Duration;

use kiln_protocol::{BuildRequest, ROOT_PATH, ValidationError};

use super::{
    Admission, DEFAULT_TENANT, DestinationPrefix, Policy, Quantity, ResourceQuantities, Tenant,
    quote,
};

impl Policy {
    // -----------------------------------------------------------------------
    // Admission.

    /// Checks a (validated) request against the tenant's policy and returns
    /// what it is granted, or every violation at once.
    ///
    /// `tenant` is the AMQP `user_id` of the request, if it had one.
    pub fn admit(
        &self,
        tenant: Option<&str>,
        req: &BuildRequest,
    ) -> Result<Admission, Vec<ValidationError>> {
        let Some((name, t)) = self.resolve_tenant(tenant) else {
            let reason = match tenant {
                Some(user) => format!(
                    "tenant {} has no policy on this worker (and there is no \"{DEFAULT_TENANT}\" tenant); ask the Kiln operators to add it",
                    quote(user)
                ),
                None => format!(
                    "the request names no tenant (no AMQP user_id) and there is no \"{DEFAULT_TENANT}\" tenant; publish with user_id set"
                ),
            };
            return Err(vec![ValidationError::new(ROOT_PATH, reason)]);
        };
        let who = match tenant {
            Some(user) if user != name => {
                format!("tenant {} (\"{DEFAULT_TENANT}\" policy)", quote(user))
            }
            _ => format!("tenant {}", quote(name)),
        };
        let caps = &t.caps;
        let mut errs = Vec::new();

        if let Some(secs) = req.timeout_seconds
            && secs > caps.max_timeout_seconds
        {
            errs.push(ValidationError::new(
                "timeoutSeconds",
                format!(
                    "{secs} seconds is more than the {} allowed for {who}",
                    caps.max_timeout_seconds
                ),
            ));
        }
        if let Some(n) = req.retry.as_ref().and_then(|r| r.max_attempts)
            && n > caps.max_attempts
        {
            errs.push(ValidationError::new(
                "retry.maxAttempts",
                format!(
                    "{n} attempts is more than the {} allowed for {who}",
                    caps.max_attempts
                ),
            ));
        }
        if req.images.len() > caps.max_images {
            errs.push(ValidationError::new(
                "images",
                format!(
                    "{} images is more than the {} per request allowed for {who}; split the build",
                    req.images.len(),
                    caps.max_images
                ),
            ));
        }

        let mut resources = Vec::with_capacity(req.images.len());
        let mut uses_git = false;
        let mut uses_s3 = false;
        for (i, image) in req.images.iter().enumerate() {
            uses_git |= image.context.git.is_some();
            uses_s3 |= image.context.s3.is_some();
            for (j, dest) in image.destinations.iter().enumerate() {
                if let Some(reason) = t.destination_problem(dest, &who) {
                    errs.push(ValidationError::new(
                        format!("images[{i}].destinations[{j}]"),
                        reason,
                    ));
                }
            }
            if let Some(endpoint) = image.context.s3.as_ref().and_then(|s| s.endpoint.as_ref())
                && endpoint.starts_with("http://")
                && !t.allow_insecure_s3_endpoint
            {
                errs.push(ValidationError::new(
                    format!("images[{i}].context.s3.endpoint"),
                    format!(
                        "{} is plain http, which {who} may not use: signed requests and the access key id would travel in clear; use https://",
                        quote(endpoint)
                    ),
                ));
            }
            let requested = image.resources.as_ref();
            let cpu = check_quantity(
                &mut errs,
                format!("images[{i}].resources.cpu"),
                requested.and_then(|r| r.cpu.as_deref()),
                &t.defaults.cpu,
                &caps.max_cpu,
                "CPU",
                &who,
            );
            let memory = check_quantity(
                &mut errs,
                format!("images[{i}].resources.memory"),
                requested.and_then(|r| r.memory.as_deref()),
                &t.defaults.memory,
                &caps.max_memory,
                "memory",
                &who,
            );
            let ephemeral_storage = check_quantity(
                &mut errs,
                format!("images[{i}].resources.ephemeralStorage"),
                requested.and_then(|r| r.ephemeral_storage.as_deref()),
                &t.defaults.ephemeral_storage,
                &caps.max_ephemeral_storage,
                "ephemeral storage",
                &who,
            );
            resources.push(ResourceQuantities {
                cpu,
                memory,
                ephemeral_storage,
            });
        }

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Admission {
            tenant: name.to_owned(),
            namespace: t.namespace.clone(),
            max_attempts: req
                .retry
                .as_ref()
                .and_then(|r| r.max_attempts)
                .unwrap_or(t.defaults.attempts),
            timeout: Duration::from_secs(req.timeout_seconds.unwrap_or(t.defaults.timeout_seconds)),
            service_account: t.service_account.clone(),
            registry_secret: t.registry_secret.clone(),
            git_credentials: t.git_credentials.clone().filter(|_| uses_git),
            s3_credentials: t.s3_credentials.clone().filter(|_| uses_s3),
            cache_repo: t.cache_repo.clone(),
            runtime_class_name: t.runtime_class_name.clone(),
            resources,
        })
    }

    fn resolve_tenant(&self, tenant: Option<&str>) -> Option<(&str, &Tenant)> {
        tenant
            .and_then(|n| self.tenants.get_key_value(n))
            .or_else(|| self.tenants.get_key_value(DEFAULT_TENANT))
            .map(|(k, v)| (k.as_str(), v))
    }
}

impl Tenant {
    /// Why `dest` may not be pushed to by this tenant, if it may not.
    fn destination_problem(&self, dest: &str, who: &str) -> Option<String> {
        if self.allowed_destinations.contains(&DestinationPrefix::Any) {
            return None;
        }
        let reference = match kiln_protocol::parse_image_reference(dest) {
            Ok(r) => r,
            Err(reason) => {
                return Some(format!(
                    "{} is not a valid image reference: {reason}",
                    quote(dest)
                ));
            }
        };
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        if self
            .allowed_destinations
            .iter()
            .any(|p| p.allows(&repository))
        {
            return None;
        }
        let normalised = reference.to_string();
        let shown = if normalised == dest {
            dest.to_owned()
        } else {
            format!("{dest} ({normalised})")
        };
        let allowed: Vec<String> = self
            .allowed_destinations
            .iter()
            .map(ToString::to_string)
            .collect();
        Some(format!(
            "{shown} is not an allowed destination for {who}; allowed prefixes: {}",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ))
    }
}

/// The quantity an image gets (`requested` or the default), recording a
/// violation when the request asks for more than the cap or for something
/// that is not a quantity.
fn check_quantity(
    errs: &mut Vec<ValidationError>,
    path: String,
    requested: Option<&str>,
    default: &Quantity,
    cap: &Quantity,
    what: &str,
    who: &str,
) -> String {
    let Some(text) = requested else {
        return default.text.clone();
    };
    match Quantity::parse(text) {
        Ok(q) if q > *cap => errs.push(ValidationError::new(
            path,
            format!(
                "{} is more than the {cap} {what} allowed for {who}",
                quote(text)
            ),
        )),
        Ok(_) => {}
        Err(reason) => errs.push(ValidationError::new(path, reason)),
    }
    text.trim().to_owned()
}
