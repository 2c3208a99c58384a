//! `kiln logs`' command line and its help.

use std::time::Duration;

use crate::config::{Connections, parse_duration};

pub const AFTER_HELP: &str = concat!(
    "\
Prints the Kaniko log of the newest attempt of each image of the build (or
of IMAGE only); a multi-platform image's platforms are shown as images of
their own, `IMAGE/os/arch` (or one of them with --platform). With more than
one image each line starts with `image#attempt | ` (coloured on a terminal,
never with NO_COLOR); notes about attempts go to standard error.

--follow streams the log while the build runs and, when an attempt fails
and a retry is coming, waits for the next attempt and goes on with it; it
ends when every image is over and exits with the build's outcome (0
succeeded, 1 failed, 3 cancelled), read from Redis' record of the build or,
without Redis, from the pods (0 when every image's last attempt succeeded).

The pods exist until the build's outcome is published. Before a worker
deletes a pod it keeps the attempt's whole log (secrets masked, at most
1 MiB: the first 256 KiB and the last 768 KiB, with a line saying how much
was left out) in Redis for KILN_LOG_RETENTION (24 h by default; a tenant's
policy may shorten it), and kiln logs reads it from there, every attempt
of every image, retried ones included. After that it says when the log
expired (exit code 6). The end of each failed attempt's log (8 KiB, secrets
masked) also stays in its image.retrying / image.failed event
(data.logTail): see it as it happens with `kiln watch --build ID -o json`,
or in your event subscribers' records.
The namespace is read from Redis' record; without one, --namespace is used.
Needs get/list/watch on pods and get on pods/log in the build namespace.

Examples:
  kiln logs shop-cart-1.2.3-7f3a
  kiln logs shop-cart-1.2.3-7f3a api --follow
  kiln logs shop-cart-1.2.3-7f3a --all-attempts
  kiln logs shop-cart-1.2.3-7f3a api --platform linux/arm64

",
    crate::kiln_exit_codes!()
);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The build id.
    pub id: String,
    /// Only this image of the build.
    pub image: Option<String>,
    /// Follow the logs until the build ends, across retries.
    #[arg(long, short)]
    pub follow: bool,
    /// For an image with `platforms`: only this platform's pods and kept
    /// logs (`os/arch[/variant]`). Without it, each platform is shown as
    /// `IMAGE/os/arch[/variant]`, with its own attempts.
    #[arg(long)]
    pub platform: Option<String>,
    /// Show this attempt instead of the newest (from its pod, or its kept log).
    #[arg(long, conflicts_with_all = ["follow", "all_attempts"])]
    pub attempt: Option<u32>,
    /// Show every attempt whose pod or kept log exists, oldest first.
    #[arg(long)]
    pub all_attempts: bool,
    /// Namespace of the build pods when Redis has no record naming it.
    #[arg(long, env = "KILN_NAMESPACE", default_value = "kiln-builds")]
    pub namespace: String,
    /// How long to wait for the Kubernetes API to list the pods.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kube_timeout: Duration,
    #[command(flatten)]
    pub connections: Connections,
}
