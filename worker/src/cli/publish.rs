//! `kiln publish`: the publish step of a multi-platform image. Not a client
//! command: the worker runs it as a pod of the build, in Kiln's own image,
//! with the tenant's registry Secret as the docker config (`DOCKER_CONFIG`).
//! The contract (arguments, the digest file, the failure line) is
//! docs/protocol.md, "The publish step"; the work is
//! [`crate::registry::publish`].
//!
//! Exit 0 with `sha256:<hex>` (no newline) in the digest file, or exit 1
//! with one line `kiln publish failed (<class>): <detail>` in it (the pod's
//! termination message, which the worker classifies).

use std::path::PathBuf;

use clap::Args;

use crate::registry::{PublishError, PublishRequest, publish};

pub const AFTER_HELP: &str = "Examples:\n  # as the worker writes it into the publish pod\n  \
kiln publish --platform=linux/amd64=sha256:… --platform=linux/arm64=sha256:… \\\n    \
--destination=registry.example/team/app:1.0 --digest-file=/dev/termination-log\n\n\
Each platform's image must be in every destination repository (by digest; the platform \
pods push it there under <tag>-<os>-<arch>[-<variant>]). Credentials: $DOCKER_CONFIG/config.json.\n\
Exit 0: the index digest is in the digest file. Exit 1: the digest file holds one line, \
`kiln publish failed (<class>): <detail>`, class retryable, denied, platform-mismatch or invalid.";

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// A platform and the digest of its manifest, as its pod reported it
    /// (2 to 8).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]=sha256:HEX")]
    pub platforms: Vec<String>,
    /// Where the index goes (1 to 8): the image's destinations, each with a
    /// tag.
    #[arg(long = "destination", value_name = "REGISTRY/REPO:TAG")]
    pub destinations: Vec<String>,
    /// Where the index digest (or the failure line) is written.
    #[arg(long, value_name = "FILE")]
    pub digest_file: PathBuf,
    /// A registry spoken to over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// A DSSE envelope to attach to the index and to each platform manifest
    /// as an OCI referrer (repeatable).
    #[arg(long = "attach", value_name = "FILE")]
    pub attach: Vec<PathBuf>,
}

/// Runs the step; the process's exit code.
pub async fn run(args: PublishArgs) -> u8 {
    let result = match PublishRequest::parse(
        &args.platforms,
        &args.destinations,
        &args.insecure_registries,
        &args.attach,
    ) {
        Ok(req) => publish(&req).await,
        Err(e) => Err(e),
    };
    let (text, code) = match result {
        Ok(digest) => {
            crate::outln!("{digest}");
            (digest, 0)
        }
        Err(e) => {
            let line = e.line();
            crate::errln!("{line}");
            (line, 1)
        }
    };
    if let Err(e) = std::fs::write(&args.digest_file, &text) {
        let e = PublishError::invalid(format!(
            "--digest-file={}: cannot be written: {e}",
            args.digest_file.display()
        ));
        crate::errln!("{}", e.line());
        return 1;
    }
    code
}
