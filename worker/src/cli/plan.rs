//! `kiln plan FILE [--tenant T]`: the ConfigMaps and pods a worker would
//! create for a request under the current policy, without a broker, Redis
//! or a cluster.
//!
//! It runs the worker's own path from a request to pods: the core's
//! [`plan_request`] (parse, policy admission, template rendering, plan
//! size) and the pod builders of `pod/` ([`attempt_objects`]), with the
//! worker's [`BuildConfig`] flags and `KILN_*` variables. Nothing here
//! builds any part of a pod.

use kiln_protocol::{Reason, ValidationError};

use super::exit;
use super::input::{RequestFile, print_problems};
use super::output::Output;
use crate::config::BuildConfig;
use crate::plan::BuildPlan;
use crate::pod::{BUILD_SECRETS_DIR, attempt_objects};
use crate::policy::{DEFAULT_TENANT, Policy};
use kiln_core::intake::plan_request;

pub const AFTER_HELP: &str = "\
Prints, as a multi-document YAML stream (`--output json`: one object per
line), exactly what a worker with the same flags and KILN_* variables sends
to the Kubernetes API for the first attempt of the request: the ConfigMaps
of inline Dockerfiles, then one pod per image, with their labels,
annotations (the plan) and specs. Fields the API server sets are absent;
a ConfigMap's owner uid (its pod's, assigned by the API server) is empty.
`activeDeadlineSeconds` and the plan's `acceptedAt` are counted from now;
the plan carries no `traceparent` (a worker copies the message's).

Standard error says, per image, which git and S3 credentials its pod gets
and where they are sent (or why git credentials are omitted: the host is
not in the tenant's gitCredentials.hosts), and each build secret mount (id,
Secret, key, path); never a value. Build args whose names look secret get a
warning: their values are in clear in the pod spec; use `secrets`.

The tenant is the AMQP user the request would be published as (`--tenant`,
default `default`: a request without user_id). A file without `id` is
planned under `--id` or, as `kiln submit` does, a fresh ULID (told on
standard error). A request the worker would reject prints every problem as
`FILE: PATH: REASON` on standard error, exit code 2.

Examples:
  kiln plan examples/two-images.json
  kiln plan build.yaml --tenant payments --policy policy.yaml
  kiln plan build.yaml -o json | jq -r '.metadata.name'";

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Request file (JSON or YAML); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// The tenant (AMQP user) the request is planned for.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// Build id, replacing the file's (a file without one gets a fresh ULID).
    #[arg(long)]
    pub id: Option<String>,
    /// `text` and `yaml`: a multi-document YAML stream; `json`: one object
    /// per line.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub build: BuildConfig,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<u8> {
    let (policy, warning) = args.build.load_policy().map_err(|e| anyhow::anyhow!(e))?;
    if let Some(warning) = warning {
        errln!("kiln: {warning}");
    }
    let file = RequestFile::read(&args.file)?;
    let name = file.name;
    let mut doc = match file.decoded {
        Ok(doc) => doc,
        Err(errs) => return Ok(refused(&name, &errs, Reason::InvalidRequest)),
    };
    if let Some(id) = doc.assign_id(args.id.as_deref()) {
        errln!(
            "kiln: {name} has no id: planned under {id}, a fresh ULID as `kiln submit` would choose (fix it with --id)"
        );
    }
    // The document's own validation first: its messages point into the file.
    let request = match doc.build_request() {
        Ok(request) => request,
        Err(errs) => return Ok(refused(&name, &errs, Reason::InvalidRequest)),
    };
    let now = jiff::Timestamp::now();
    let plan = match plan_request(&doc.bytes, Some(&args.tenant), None, &policy, now) {
        Ok(plan) => plan,
        Err(refusal) => return Ok(refused(&name, &refusal.problems, refusal.reason)),
    };
    for w in request.warnings() {
        errln!("kiln: warning: {name}: {}: {}", w.path, w.reason);
    }
    for note in credential_notes(&plan, &policy) {
        errln!("kiln: {note}");
    }
    print_objects(args.output, &plan, &args.build, now)?;
    Ok(exit::OK)
}

/// Per image, what credentials and build secrets its pod gets, and why git
/// credentials are left out: references and hosts only, never a value.
fn credential_notes(plan: &BuildPlan, policy: &Policy) -> Vec<String> {
    let tenant = policy.tenant(&plan.tenant);
    let mut notes = Vec::new();
    for (i, image) in plan.images.iter().enumerate() {
        let at = format!("images[{i}] ({})", image.name);
        if let Some(git) = &image.context.git {
            let host = git.authority().unwrap_or_default();
            let listed = tenant
                .and_then(|t| t.git_credentials.as_ref())
                .map(|g| g.hosts.join(", "))
                .unwrap_or_default();
            notes.push(match (&plan.git_secret, image.git_credentials_omitted) {
                (_, true) => format!(
                    "{at}: git credentials omitted: {host} is not in tenants.{}.gitCredentials.hosts ({listed}); the clone runs without them",
                    plan.tenant
                ),
                (Some(s), false) => format!(
                    "{at}: git credentials from Secret {:?} (keys {:?}, {:?}) sent to {host}",
                    s.secret, s.id_key, s.secret_key
                ),
                (None, false) => format!("{at}: no git credentials (the tenant has none)"),
            });
        }
        if let Some(s3) = &image.context.s3 {
            let endpoint = plan
                .s3_endpoint
                .as_deref()
                .or(s3.endpoint.as_deref())
                .unwrap_or("AWS S3");
            notes.push(match &plan.s3_secret {
                Some(s) => format!(
                    "{at}: S3 credentials from Secret {:?} sent to {endpoint}",
                    s.secret
                ),
                None => format!("{at}: no S3 credentials (the tenant has none)"),
            });
        }
        for (id, r) in &image.secrets {
            notes.push(format!(
                "{at}: build secret {id}: Secret {:?} key {:?} at {BUILD_SECRETS_DIR}/{id}/{} (RUN --mount=type=secret,id={id})",
                r.secret, r.key, r.key
            ));
        }
    }
    notes
}

/// Every problem and the reason of the worker's `build.rejected` on
/// standard error; the exit code of invalid input.
fn refused(name: &str, errs: &[ValidationError], reason: Reason) -> u8 {
    {
        let mut err = std::io::stderr().lock();
        // A closed standard error has nobody to tell.
        // Standard error closed: the exit code still says it.
        let _ = print_problems(&mut err, name, errs);
    }
    errln!("kiln: a worker would reject {name} ({reason}): nothing to plan");
    exit::INVALID
}

/// The first attempt's objects on standard output.
fn print_objects(
    output: Output,
    plan: &BuildPlan,
    build: &BuildConfig,
    now: jiff::Timestamp,
) -> anyhow::Result<()> {
    let output = match output {
        Output::Text => Output::Yaml,
        other => other,
    };
    for object in attempt_objects(&build.pod_settings(), plan, 1, now) {
        output.print(&object)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 18 items 7 and 12: the plan says which images get the git
    /// credentials, why one does not, and each build secret mount; never
    /// a value (there is none to show: only references).
    #[test]
    fn notes_say_where_credentials_go_and_what_is_mounted() {
        let policy = Policy::from_toml_str(
            r#"
[tenants.shop]
namespace = "shop"
allowedDestinations = ["*"]
buildSecrets = ["ci-tokens"]
gitCredentials = { secret = "shop-git", hosts = ["github.com"] }
"#,
        )
        .unwrap();
        let body = serde_json::json!({
            "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "n-1",
            "images": [
                {"name": "api", "context": {"git": {"url": "https://github.com/a/b.git"}},
                 "destinations": ["r.example.com/a:1"],
                 "secrets": {"npm": {"secret": "ci-tokens", "key": "npmrc"}}},
                {"name": "other", "context": {"git": {"url": "https://evil.example.com/a/b.git"}},
                 "destinations": ["r.example.com/b:1"]},
            ]
        });
        let plan = plan_request(
            &serde_json::to_vec(&body).unwrap(),
            Some("shop"),
            None,
            &policy,
            jiff::Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let notes = credential_notes(&plan, &policy);
        assert_eq!(
            notes,
            [
                "images[0] (api): git credentials from Secret \"shop-git\" (keys \"username\", \"password\") sent to github.com",
                "images[0] (api): build secret npm: Secret \"ci-tokens\" key \"npmrc\" at /kaniko/build-secrets/npm/npmrc (RUN --mount=type=secret,id=npm)",
                "images[1] (other): git credentials omitted: evil.example.com is not in tenants.shop.gitCredentials.hosts (github.com); the clone runs without them",
            ]
        );
    }
}
