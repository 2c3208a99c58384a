//! `BuildRequest::validate`: every rule of the wire contract a request
//! must meet, each problem reported with its path.

use std::collections::{BTreeMap, HashMap};

use super::patterns::{
    BUCKET_RE, COMMIT_RE, DNS_SUBDOMAIN_RE, PLATFORM_RE, QUANTITY_RE, REGION_RE, SECRET_ID_RE,
    SECRET_KEY_RE, TARGET_RE,
};
use super::types::{
    BUILD_REQUEST_KIND, BuildContext, BuildRequest, GitContext, ImageSpec, RESERVED_LABEL_PREFIX,
    S3Context,
};
use super::urls::{endpoint_problem, git_ref_problem, git_url_problem, tarball_url_problem};
use crate::limits::{
    MAX_ATTEMPTS_LIMIT, MAX_BUILD_ARG_VALUE_BYTES, MAX_BUILD_ARGS, MAX_BUILD_SECRETS,
    MAX_DESTINATIONS, MAX_IMAGES, MAX_LABELS, MAX_REQUEST_BYTES, MAX_TEMPLATE_ARGS,
    MAX_TIMEOUT_SECONDS,
};
use crate::reference::parse_destination;
use crate::validate::{
    ROOT_PATH, ValidationErrors, build_id_problem, check_header, field, index, is_dns1123_label,
    is_identifier, is_label_key, is_label_value, key, quote, relative_path_problem,
};

impl BuildRequest {
    /// Checks every rule of the wire contract and reports the problems (the
    /// first [`MAX_PROBLEMS`](crate::MAX_PROBLEMS), and how many more).
    /// Tenant policy (allowed destinations, caps) is the worker's business.
    ///
    /// Images past [`MAX_IMAGES`] and destinations past
    /// [`MAX_DESTINATIONS`] are not checked one by one: their number alone
    /// refuses the request, and checking each (parsing references, URLs)
    /// would let one large message buy as much work as it likes.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        check_header(&mut errs, &self.api_version, &self.kind, BUILD_REQUEST_KIND);
        if let Some(p) = build_id_problem(&self.id) {
            errs.push("id", p);
        }
        check_dns_label_opt(&mut errs, "app", self.app.as_deref());
        check_dns_label_opt(&mut errs, "component", self.component.as_deref());
        check_labels(&mut errs, &self.labels);
        if let Some(t) = self.timeout_seconds
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            errs.push(
                "timeoutSeconds",
                format_args!("{t} is out of range; use 1 to {MAX_TIMEOUT_SECONDS} seconds"),
            );
        }
        if let Some(n) = self.max_attempts()
            && !(1..=MAX_ATTEMPTS_LIMIT).contains(&n)
        {
            errs.push(
                "retry.maxAttempts",
                format_args!("{n} is out of range; use 1 to {MAX_ATTEMPTS_LIMIT}"),
            );
        }
        if self.images.is_empty() {
            errs.push("images", "at least one image is required");
        } else if self.images.len() > MAX_IMAGES {
            errs.push(
                "images",
                format_args!(
                    "has {} images; the limit is {MAX_IMAGES}, split the build",
                    self.images.len()
                ),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, image) in self.images.iter().enumerate().take(MAX_IMAGES) {
            let path = index("images", i).to_string();
            if !is_dns1123_label(&image.name) {
                // reported by image.check
            } else if let Some(&first) = seen.get(image.name.as_str()) {
                errs.push(
                    field(&path, "name"),
                    format_args!(
                        "{} is already used by images[{first}]; image names must be unique",
                        quote(&image.name)
                    ),
                );
            } else {
                seen.insert(&image.name, i);
            }
            image.check(&mut errs, &path);
        }
        if errs.is_empty()
            && let Ok(bytes) = serde_json::to_vec(self)
            && bytes.len() > MAX_REQUEST_BYTES
        {
            errs.push(
                ROOT_PATH,
                format_args!(
                    "the request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                    bytes.len()
                ),
            );
        }
        errs.into_result()
    }
}

impl ImageSpec {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if !is_dns1123_label(&self.name) {
            errs.push(field(path, "name"), dns_label_reason(&self.name));
        }
        self.context.check(errs, &field(path, "context"));
        self.check_dockerfile(errs, path);
        self.check_template_args(errs, path);
        self.check_build_args(errs, path);
        self.check_secrets(errs, path);
        if let Some(t) = &self.target
            && !TARGET_RE.is_match(t)
        {
            errs.push(
                field(path, "target"),
                format_args!(
                    "{} is not a valid build stage name; use a letter followed by letters, digits, '_', '.' or '-' (at most 128)",
                    quote(t)
                ),
            );
        }
        self.check_destinations(errs, path);
        if let Some(p) = &self.platform
            && !PLATFORM_RE.is_match(p)
        {
            errs.push(field(path, "platform"), platform_reason(p));
        }
        self.check_platforms(errs, path);
        self.check_resources(errs, path);
    }

    /// `platforms`: 2-8 distinct platforms, not with `platform`, and
    /// destinations from which per-platform tags can be derived.
    fn check_platforms(&self, errs: &mut ValidationErrors, path: &str) {
        let Some(platforms) = &self.platforms else {
            return;
        };
        let p_path = field(path, "platforms");
        if self.platform.is_some() {
            errs.push(
                &p_path,
                "set either platform or platforms, not both; one platform goes in platform",
            );
        }
        if let Some(problem) = crate::platform::platforms_count_problem(platforms.len()) {
            errs.push(&p_path, problem);
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, p) in platforms.iter().enumerate().take(crate::MAX_PLATFORMS) {
            if !PLATFORM_RE.is_match(p) {
                errs.push(index(&p_path, i), platform_reason(p));
            } else if let Some(first) = seen.insert(p, i) {
                errs.push(
                    index(&p_path, i),
                    format_args!(
                        "{} is already platforms[{first}]; platforms must be distinct",
                        quote(p)
                    ),
                );
            }
        }
        let longest = seen.keys().max_by_key(|p| p.len());
        let d_path = field(path, "destinations");
        for (i, d) in self.destinations.iter().enumerate().take(MAX_DESTINATIONS) {
            if parse_destination(d).is_err() {
                continue; // reported by check_destinations
            }
            if let Some(Err(reason)) = longest.map(|p| crate::platform::platform_destination(d, p))
            {
                errs.push(index(&d_path, i), format_args!("{}: {reason}", quote(d)));
            }
        }
    }

    /// `dockerfile` or `dockerfileInline`, not both, and each well-formed.
    fn check_dockerfile(&self, errs: &mut ValidationErrors, path: &str) {
        match (&self.dockerfile, &self.dockerfile_inline) {
            (Some(_), Some(_)) => {
                errs.push(path, "set either dockerfile or dockerfileInline, not both");
            }
            (Some(d), None) => {
                if let Some(p) = relative_path_problem(d) {
                    errs.push(field(path, "dockerfile"), p);
                }
            }
            (None, Some(inline)) => {
                if inline.trim().is_empty() {
                    errs.push(
                        field(path, "dockerfileInline"),
                        "must not be empty; give the Dockerfile template",
                    );
                } else if inline.contains('\0') {
                    errs.push(
                        field(path, "dockerfileInline"),
                        "contains a NUL character; remove it",
                    );
                }
            }
            (None, None) => {}
        }
    }

    /// `templateArgs`: only with an inline Dockerfile, few, with identifier names.
    fn check_template_args(&self, errs: &mut ValidationErrors, path: &str) {
        let ta_path = field(path, "templateArgs");
        if !self.template_args.is_empty() && self.dockerfile_inline.is_none() {
            errs.push(
                &ta_path,
                "templateArgs only apply to dockerfileInline; remove them or use dockerfileInline",
            );
        }
        if self.template_args.len() > MAX_TEMPLATE_ARGS {
            errs.push(
                &ta_path,
                format_args!(
                    "has {} entries; the limit is {MAX_TEMPLATE_ARGS}",
                    self.template_args.len()
                ),
            );
        }
        for k in self.template_args.keys() {
            if !is_identifier(k) || k.len() > 256 {
                errs.push(
                    key(&ta_path, k),
                    format_args!(
                        "{} is not a valid template variable name; use letters, digits and '_', not starting with a digit (at most 256)",
                        quote(k)
                    ),
                );
            }
        }
    }

    /// `buildArgs`: few, identifier names, bounded values without NUL.
    fn check_build_args(&self, errs: &mut ValidationErrors, path: &str) {
        let ba_path = field(path, "buildArgs");
        if self.build_args.len() > MAX_BUILD_ARGS {
            errs.push(
                &ba_path,
                format_args!(
                    "has {} entries; the limit is {MAX_BUILD_ARGS}",
                    self.build_args.len()
                ),
            );
        }
        for (k, v) in &self.build_args {
            let p = key(&ba_path, k);
            if !is_identifier(k) || k.len() > 256 {
                errs.push(
                    p,
                    format_args!(
                        "{} is not a valid build argument name; use letters, digits and '_', not starting with a digit (at most 256)",
                        quote(k)
                    ),
                );
            }
            if v.len() > MAX_BUILD_ARG_VALUE_BYTES {
                errs.push(
                    p,
                    format_args!(
                        "the value is {} bytes; the limit is {MAX_BUILD_ARG_VALUE_BYTES}",
                        v.len()
                    ),
                );
            } else if v.contains('\0') {
                errs.push(p, "the value contains a NUL character; remove it");
            }
        }
    }

    /// `secrets`: few, file-name ids, each naming a Secret and a key that
    /// Kubernetes accepts as an object name and a projected file name.
    fn check_secrets(&self, errs: &mut ValidationErrors, path: &str) {
        let s_path = field(path, "secrets");
        if self.secrets.len() > MAX_BUILD_SECRETS {
            errs.push(
                &s_path,
                format_args!(
                    "has {} entries; the limit is {MAX_BUILD_SECRETS}",
                    self.secrets.len()
                ),
            );
            return;
        }
        for (id, r) in &self.secrets {
            let p = key(&s_path, id).to_string();
            if !SECRET_ID_RE.is_match(id) || id == "." || id == ".." {
                errs.push(
                    &p,
                    format_args!(
                        "{} is not a valid secret id; use 1-64 of letters, digits, '_', '.' and '-', not \".\" or \"..\"",
                        quote(id)
                    ),
                );
            }
            if r.secret.len() > 253 || !DNS_SUBDOMAIN_RE.is_match(&r.secret) {
                errs.push(
                    field(&p, "secret"),
                    format_args!(
                        "{} is not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253)",
                        quote(&r.secret)
                    ),
                );
            }
            if !SECRET_KEY_RE.is_match(&r.key) || r.key == "." || r.key.starts_with("..") {
                errs.push(
                    field(&p, "key"),
                    format_args!(
                        "{} is not a valid Secret key (1-253 of letters, digits, '-', '_' and '.', not \".\" and not starting with \"..\")",
                        quote(&r.key)
                    ),
                );
            }
        }
    }

    /// `destinations`: 1 to the limit, valid references, no image twice.
    fn check_destinations(&self, errs: &mut ValidationErrors, path: &str) {
        let d_path = field(path, "destinations");
        if self.destinations.is_empty() {
            errs.push(&d_path, "at least one destination is required");
        } else if self.destinations.len() > MAX_DESTINATIONS {
            errs.push(
                &d_path,
                format_args!(
                    "has {} destinations; the limit is {MAX_DESTINATIONS}",
                    self.destinations.len()
                ),
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, d) in self.destinations.iter().enumerate().take(MAX_DESTINATIONS) {
            let p = index(&d_path, i);
            match parse_destination(d) {
                Ok(r) => {
                    if let Some(first) = seen.get(&r.to_string()) {
                        errs.push(
                            p,
                            format_args!(
                                "{} is the same image as destinations[{first}]; remove the duplicate",
                                quote(d)
                            ),
                        );
                    } else {
                        seen.insert(r.to_string(), i);
                    }
                }
                Err(reason) => errs.push(
                    p,
                    format_args!("{} is not a valid image reference: {reason}", quote(d)),
                ),
            }
        }
    }

    /// `resources`: each a Kubernetes quantity.
    fn check_resources(&self, errs: &mut ValidationErrors, path: &str) {
        if let Some(r) = &self.resources {
            let rp = field(path, "resources");
            check_quantity(errs, &field(&rp, "cpu"), r.cpu.as_deref(), "500m or 2");
            check_quantity(
                errs,
                &field(&rp, "memory"),
                r.memory.as_deref(),
                "512Mi or 2Gi",
            );
            check_quantity(
                errs,
                &field(&rp, "ephemeralStorage"),
                r.ephemeral_storage.as_deref(),
                "10Gi",
            );
        }
    }
}

impl BuildContext {
    fn set_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.git.is_some() {
            v.push("git");
        }
        if self.s3.is_some() {
            v.push("s3");
        }
        if self.url.is_some() {
            v.push("url");
        }
        v
    }

    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        let set = self.set_names();
        match set.len() {
            0 => errs.push(path, "set exactly one of git, s3 or url"),
            1 => {}
            _ => errs.push(
                path,
                format_args!(
                    "set exactly one of git, s3 or url, not {}",
                    set.join(" and ")
                ),
            ),
        }
        if let Some(g) = &self.git {
            g.check(errs, &field(path, "git"));
        }
        if let Some(s) = &self.s3 {
            s.check(errs, &field(path, "s3"));
        }
        if let Some(u) = &self.url
            && let Some(reason) = tarball_url_problem(u)
        {
            errs.push(field(path, "url"), reason);
        }
    }
}

impl GitContext {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if let Some(reason) = git_url_problem(&self.url) {
            errs.push(field(path, "url"), reason);
        }
        if let Some(r) = &self.git_ref
            && let Some(reason) = git_ref_problem(r)
        {
            errs.push(field(path, "ref"), reason);
        }
        if let Some(c) = &self.commit
            && !COMMIT_RE.is_match(c)
        {
            errs.push(
                field(path, "commit"),
                format_args!(
                    "{} is not a full commit hash; give all 40 lowercase hex digits (the executor checks out no abbreviated commit)",
                    quote(c)
                ),
            );
        }
        if let Some(s) = &self.sub_path
            && let Some(reason) = relative_path_problem(s)
        {
            errs.push(field(path, "subPath"), reason);
        }
    }
}

impl S3Context {
    fn check(&self, errs: &mut ValidationErrors, path: &str) {
        if !BUCKET_RE.is_match(&self.bucket) {
            errs.push(
                field(path, "bucket"),
                format_args!(
                    "{} is not a valid bucket name; use 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit",
                    quote(&self.bucket)
                ),
            );
        }
        if self.key.is_empty() {
            errs.push(
                field(path, "key"),
                "must not be empty; give the object key of the context archive",
            );
        } else if self.key.len() > 1024 {
            errs.push(
                field(path, "key"),
                format_args!("is {} bytes long; the limit is 1024", self.key.len()),
            );
        } else if self.key.chars().any(char::is_control) {
            errs.push(
                field(path, "key"),
                "contains a control character; remove it",
            );
        }
        if let Some(r) = &self.region
            && !REGION_RE.is_match(r)
        {
            errs.push(
                field(path, "region"),
                format_args!(
                    "{} is not a valid region; use lowercase letters, digits and '-', e.g. eu-west-1",
                    quote(r)
                ),
            );
        }
        if let Some(e) = &self.endpoint
            && let Some(reason) = endpoint_problem(e)
        {
            errs.push(field(path, "endpoint"), reason);
        }
    }
}

fn dns_label_reason(s: &str) -> String {
    format!(
        "{} is not a valid name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        quote(s)
    )
}

fn check_dns_label_opt(errs: &mut ValidationErrors, path: &str, value: Option<&str>) {
    if let Some(v) = value
        && !is_dns1123_label(v)
    {
        errs.push(path, dns_label_reason(v));
    }
}

fn check_labels(errs: &mut ValidationErrors, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        errs.push(
            "labels",
            format_args!("has {} labels; the limit is {MAX_LABELS}", labels.len()),
        );
    }
    for (k, v) in labels {
        let p = key("labels", k);
        if !is_label_key(k) {
            errs.push(
                p,
                format_args!(
                    "{} is not a valid Kubernetes label key; use an optional DNS prefix and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                    quote(k)
                ),
            );
        } else if k.starts_with(RESERVED_LABEL_PREFIX) {
            errs.push(
                p,
                format_args!("label keys under {RESERVED_LABEL_PREFIX} are reserved for Kiln; choose another prefix"),
            );
        }
        if !is_label_value(v) {
            errs.push(
                p,
                format_args!(
                    "{} is not a valid Kubernetes label value; use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
                    quote(v)
                ),
            );
        }
    }
}

fn check_quantity(errs: &mut ValidationErrors, path: &str, value: Option<&str>, example: &str) {
    let Some(v) = value else { return };
    let parsed = if QUANTITY_RE.is_match(v) {
        crate::quantity::quantity_nanos(v)
    } else {
        None
    };
    match parsed {
        None => errs.push(
            path,
            format_args!(
                "{} is not a Kubernetes quantity; write it like {example}",
                quote(v)
            ),
        ),
        Some(0) => {
            errs.push(path, format_args!("{} must be greater than zero", quote(v)));
        }
        Some(_) => {}
    }
}

fn platform_reason(p: &str) -> String {
    format!(
        "{} is not a valid platform; use os/arch or os/arch/variant in lowercase, e.g. linux/amd64 or linux/arm64/v8",
        quote(p)
    )
}
