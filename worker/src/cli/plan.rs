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
use crate::pod::attempt_objects;
use crate::policy::DEFAULT_TENANT;
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
    if let Err(errs) = doc.build_request() {
        return Ok(refused(&name, &errs, Reason::InvalidRequest));
    }
    let now = jiff::Timestamp::now();
    let plan = match plan_request(&doc.bytes, Some(&args.tenant), None, &policy, now) {
        Ok(plan) => plan,
        Err(refusal) => return Ok(refused(&name, &refusal.problems, refusal.reason)),
    };
    print_objects(args.output, &plan, &args.build, now)?;
    Ok(exit::OK)
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
