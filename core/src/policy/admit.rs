//! Admission: a validated request checked against its tenant's policy,
//! giving what it is granted or every violation at once.

use std::time::Duration;

use kiln_protocol::{BuildRequest, ImageSpec, ROOT_PATH, ValidationError};

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
            return Err(vec![ValidationError::new(ROOT_PATH, no_tenant(tenant))]);
        };
        let who = match tenant {
            Some(user) if user != name => {
                format!("tenant {} (\"{DEFAULT_TENANT}\" policy)", quote(user))
            }
            _ => format!("tenant {}", quote(name)),
        };
        let mut errs = Vec::new();
        t.check_request_caps(req, &who, &mut errs);
        let resources: Vec<ResourceQuantities> = (req.images.iter().enumerate())
            .map(|(i, image)| t.admit_image(i, image, &who, &mut errs))
            .collect();
        if !errs.is_empty() {
            return Err(errs);
        }
        let uses_git = req.images.iter().any(|i| i.context.git.is_some());
        let uses_s3 = req.images.iter().any(|i| i.context.s3.is_some());
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

/// Why a request from `tenant` has no policy to be admitted under.
fn no_tenant(tenant: Option<&str>) -> String {
    match tenant {
        Some(user) => format!(
            "tenant {} has no policy on this worker (and there is no \"{DEFAULT_TENANT}\" tenant); ask the Kiln operators to add it",
            quote(user)
        ),
        None => format!(
            "the request names no tenant (no AMQP user_id) and there is no \"{DEFAULT_TENANT}\" tenant; publish with user_id set"
        ),
    }
}

impl Tenant {
    /// The request-wide caps: timeout, attempts, number of images.
    fn check_request_caps(&self, req: &BuildRequest, who: &str, errs: &mut Vec<ValidationError>) {
        let caps = &self.caps;
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
    }

    /// Checks image `i` (destinations, S3 endpoint, resources) and returns
    /// the resources it gets.
    fn admit_image(
        &self,
        i: usize,
        image: &ImageSpec,
        who: &str,
        errs: &mut Vec<ValidationError>,
    ) -> ResourceQuantities {
        for (j, dest) in image.destinations.iter().enumerate() {
            if let Some(reason) = self.destination_problem(dest, who) {
                errs.push(ValidationError::new(
                    format!("images[{i}].destinations[{j}]"),
                    reason,
                ));
            }
        }
        if let Some(endpoint) = image.context.s3.as_ref().and_then(|s| s.endpoint.as_ref())
            && endpoint.starts_with("http://")
            && !self.allow_insecure_s3_endpoint
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
        let (defaults, caps) = (&self.defaults, &self.caps);
        // Field in the request, what it asks, default, cap, what it is.
        let table = [
            (
                "cpu",
                requested.and_then(|r| r.cpu.as_deref()),
                &defaults.cpu,
                &caps.max_cpu,
                "CPU",
            ),
            (
                "memory",
                requested.and_then(|r| r.memory.as_deref()),
                &defaults.memory,
                &caps.max_memory,
                "memory",
            ),
            (
                "ephemeralStorage",
                requested.and_then(|r| r.ephemeral_storage.as_deref()),
                &defaults.ephemeral_storage,
                &caps.max_ephemeral_storage,
                "ephemeral storage",
            ),
        ];
        let [cpu, memory, ephemeral_storage] = table.map(|(field, asked, default, cap, what)| {
            let path = format!("images[{i}].resources.{field}");
            check_quantity(errs, path, asked, default, cap, what, who)
        });
        ResourceQuantities {
            cpu,
            memory,
            ephemeral_storage,
        }
    }

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
