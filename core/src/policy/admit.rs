//! Admission: a validated request checked against its tenant's policy,
//! giving what it is granted or every violation at once.

use std::time::Duration;

use kiln_protocol::{BuildRequest, ImageSpec, ROOT_PATH, ValidationError};

use super::{
    Admission, DEFAULT_TENANT, DestinationPrefix, OtherHosts, Policy, Quantity, ResourceQuantities,
    Tenant, quote,
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
        for key in req.labels.keys() {
            if let Some(reason) = label_key_problem(key, t.allowed_label_keys.as_deref(), &who) {
                errs.push(ValidationError::new(format!("labels.{key}"), reason));
            }
        }
        let resources: Vec<ResourceQuantities> = (req.images.iter().enumerate())
            .map(|(i, image)| t.admit_image(i, image, &who, &mut errs))
            .collect();
        let git_credentials_omitted: Vec<bool> = (req.images.iter().enumerate())
            .map(|(i, image)| t.git_credentials_omitted(i, image, &who, &mut errs))
            .collect();
        if !errs.is_empty() {
            return Err(errs);
        }
        let uses_git = (req.images.iter().zip(&git_credentials_omitted))
            .any(|(i, omitted)| i.context.git.is_some() && !omitted);
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
            git_credentials_omitted,
        })
    }

    fn resolve_tenant(&self, tenant: Option<&str>) -> Option<(&str, &Tenant)> {
        tenant
            .and_then(|n| self.tenants.get_key_value(n))
            .or_else(|| self.tenants.get_key_value(DEFAULT_TENANT))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// Label key prefixes (the part before `/`) refused unless the policy's
/// `allowedLabelKeys` names them: Kubernetes' own, and the service meshes'
/// whose labels switch injection or traffic rules on a pod
/// (`sidecar.istio.io/inject: "false"` would take a build out of the mesh
/// and out of label-selected network rules). `kiln.dev/` is refused always
/// (request validation): Kiln's own labels say what a pod is.
const REFUSED_LABEL_PREFIXES: [&str; 5] = [
    "kubernetes.io",
    "k8s.io",
    "istio.io",
    "linkerd.io",
    "kuma.io",
];

/// Whether Kiln refuses a request label key by default: a prefix in
/// [`REFUSED_LABEL_PREFIXES`] or a subdomain of one
/// (`app.kubernetes.io/managed-by`, `sidecar.istio.io/inject`,
/// `config.linkerd.io/...`), or `kiln.dev/`.
pub fn refused_label_key(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let prefix = prefix.to_ascii_lowercase();
    prefix == "kiln.dev"
        || REFUSED_LABEL_PREFIXES
            .iter()
            .any(|r| prefix == *r || prefix.ends_with(&format!(".{r}")))
}

/// Why `who` may not set the request label `key`: refused by default and
/// not named by the policy, or (with an allow-list) not in it.
fn label_key_problem(key: &str, allowed: Option<&[String]>, who: &str) -> Option<String> {
    let listed = allowed.is_some_and(|list| {
        list.iter()
            .any(|a| a == key || (a.ends_with('/') && key.starts_with(a.as_str())))
    });
    if key.starts_with("kiln.dev/") || (refused_label_key(key) && !listed) {
        return Some(format!(
            "{} is refused: labels under Kubernetes', the service meshes' and Kiln's own prefixes can change how the cluster treats the build pods (sidecars, network rules, ownership); the policy's allowedLabelKeys must name it for {who}",
            quote(key)
        ));
    }
    match allowed {
        Some(list) if !listed => Some(format!(
            "{} is not a label key {who} may set; allowed: {}",
            quote(key),
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        )),
        _ => None,
    }
}

/// `.key` for identifier keys, `["key"]` otherwise: the request's own
/// path syntax (`kiln_protocol` validation paths).
fn json_key(k: &str) -> String {
    let identifier = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        format!(".{k}")
    } else {
        format!("[{}]", quote(k))
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
        if let Some(endpoint) = image.context.s3.as_ref().and_then(|s| s.endpoint.as_ref())
            && let Some(creds) = &self.s3_credentials
            && creds.endpoint.is_none()
        {
            // With a policy endpoint, that one wins (pod/spec.rs); without
            // one the credentials are AWS's and go to AWS only.
            errs.push(ValidationError::new(
                format!("images[{i}].context.s3.endpoint"),
                format!(
                    "{} would receive the S3 credentials of {who}, which go only to AWS S3 (the policy names no s3Credentials.endpoint); drop the endpoint, or ask the operators to set it in the policy",
                    quote(endpoint)
                ),
            ));
        }
        for (id, r) in &image.secrets {
            if !self.build_secrets.iter().any(|g| g.allows(r)) {
                errs.push(ValidationError::new(
                    format!("images[{i}].secrets{}.secret", json_key(id)),
                    self.build_secret_problem(r, who),
                ));
            }
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

    /// Whether image `i` has a git context on a host the tenant's git
    /// credentials do not list, so that it goes without them; under
    /// `otherHosts = "refuse"` that is a violation instead.
    fn git_credentials_omitted(
        &self,
        i: usize,
        image: &ImageSpec,
        who: &str,
        errs: &mut Vec<ValidationError>,
    ) -> bool {
        let (Some(creds), Some(git)) = (&self.git_credentials, &image.context.git) else {
            return false;
        };
        if creds.allows(git) {
            return false;
        }
        if creds.other_hosts == OtherHosts::Refuse {
            errs.push(ValidationError::new(
                format!("images[{i}].context.git.url"),
                format!(
                    "{} is not a host the git credentials of {who} may be sent to; allowed hosts: {}",
                    quote(&git.authority().unwrap_or_default()),
                    creds.hosts.join(", ")
                ),
            ));
        }
        true
    }

    /// Why the build secret `r` may not be mounted by this tenant's builds.
    fn build_secret_problem(&self, r: &kiln_protocol::SecretRef, who: &str) -> String {
        let allowed: Vec<String> = self.build_secrets.iter().map(ToString::to_string).collect();
        format!(
            "Secret {} (key {}) is not one the builds of {who} may mount; allowed (policy buildSecrets): {}",
            quote(&r.secret),
            quote(&r.key),
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        )
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

#[cfg(test)]
mod label_tests {
    use super::*;

    /// Issue 18 item 11: mesh and Kubernetes label keys are refused by
    /// default; an allow-list admits only what it names.
    #[test]
    fn label_keys() {
        for refused in [
            "sidecar.istio.io/inject",
            "istio.io/rev",
            "kubernetes.io/metadata.name",
            "app.kubernetes.io/managed-by",
            "node.k8s.io/x",
            "k8s.io/x",
            "linkerd.io/inject",
            "config.linkerd.io/skip-inbound-ports",
            "kuma.io/sidecar-injection",
            "kiln.dev/build-id",
        ] {
            assert!(label_key_problem(refused, None, "t").is_some(), "{refused}");
        }
        for ok in [
            "team",
            "example.com/owner",
            "notkubernetes.io/x",
            "istio.iox/y",
        ] {
            assert_eq!(label_key_problem(ok, None, "t"), None, "{ok}");
        }
        let list = [
            "team".to_owned(),
            "example.com/".to_owned(),
            "sidecar.istio.io/".to_owned(),
        ];
        assert_eq!(label_key_problem("team", Some(&list), "t"), None);
        assert_eq!(
            label_key_problem("example.com/owner", Some(&list), "t"),
            None
        );
        assert_eq!(
            label_key_problem("sidecar.istio.io/inject", Some(&list), "t"),
            None
        );
        assert!(
            label_key_problem("cost", Some(&list), "t")
                .is_some_and(|m| m.contains("allowed: team"))
        );
        let kiln = ["kiln.dev/".to_owned()];
        assert!(label_key_problem("kiln.dev/x", Some(&kiln), "t").is_some());
    }
}
