//! `kiln submit FILE|-`: validate locally, publish with confirms and the
//! mandatory flag, print the build id; with `--wait`, follow it to the end.

use std::time::Duration;

use kiln_protocol::request_rejected_id;

use super::exit;
use super::input::{RequestFile, print_problems};
use super::output::Output;
use super::wait::{Follow, REQUEST_REJECTED_KEY, follow, optional_redis};
use crate::amqp::{BUILD_KEY, url_user};
use crate::config::{Connections, parse_duration};
use crate::store::RecordState;

pub const AFTER_HELP: &str = concat!(
    "\
The request (JSON or YAML) is validated first: every problem is printed with
its path and nothing is published (exit code 2). The tenant is the RabbitMQ
user of KILN_AMQP_URL (sent as the verified `user_id`). The build id goes to
standard output; progress and explanations go to standard error.

Examples:
  kiln submit examples/two-images.json
  kiln submit build.yaml --id shop-cart-1.2.3 --wait
  render-request | kiln submit - --wait --timeout 1h --output json

",
    crate::kiln_exit_codes!()
);

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Build request file (JSON or YAML); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Build id (the idempotency key). Default: the file's `id`, else a new
    /// ULID.
    #[arg(long)]
    pub id: Option<String>,
    /// Wait for the build to finish, showing progress per image.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit code 5).
    #[arg(long, default_value = "30m", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
    /// `text`: the id (and progress with --wait); `json`/`yaml`:
    /// `{"id": …}`, or with --wait only the terminal event (or the
    /// `request.rejected` answering this request).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    /// W3C traceparent to continue: the worker's spans and every event of
    /// the build carry it.
    #[arg(long, env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<u8> {
    let file = RequestFile::read(&args.file)?;
    let name = file.name;
    let mut doc = match file.decoded {
        Ok(doc) => doc,
        Err(errs) => return Ok(invalid(&name, &errs)),
    };
    doc.assign_id(args.id.as_deref());
    let request = match doc.build_request() {
        Ok(r) => r,
        Err(errs) => return Ok(invalid(&name, &errs)),
    };
    let user = url_user(&args.connections.amqp_url).map_err(|e| anyhow::anyhow!("{e}"))?;

    let broker = super::connect_broker(&args.connections, "submit").await?;
    // Subscribe before publishing, so that no event is missed (nor the
    // `request.rejected` answering this very message).
    let sub = if args.wait {
        Some(super::subscribe(&broker, &["build.*", "image.*", REQUEST_REJECTED_KEY]).await?)
    } else {
        None
    };
    // A build whose record says it finished before this publish is a
    // duplicate: the worker acks it with no new event; the record answers.
    let leases = if args.wait {
        optional_redis(&args.connections).await
    } else {
        None
    };
    let mut follow_args = Follow {
        build_id: request.id.clone(),
        images: request.images.iter().map(|i| i.name.clone()).collect(),
        timeout: args.timeout,
        output: args.output,
        duplicate: false,
        rejected_id: Some(request_rejected_id(&request.id, &doc.bytes)),
        tenant: Some(user.clone()),
    };
    if let Some(l) = &leases {
        follow_args.duplicate = matches!(
            l.record(&request.id).await,
            Ok(Some(rec)) if rec.state == RecordState::Finished && follow_args.ours(&rec)
        );
    }
    if let Err(e) = broker
        .publish_request(
            BUILD_KEY,
            &doc.bytes,
            Some(&user),
            args.traceparent.as_deref(),
        )
        .await
    {
        broker.close().await;
        return Err(super::explain_amqp(
            &e.to_string(),
            &broker.names().requests(),
        ));
    }
    match args.output {
        Output::Text => outln!("{}", request.id),
        data if !args.wait => data.print(&serde_json::json!({ "id": request.id }))?,
        _ => {}
    }
    let Some(sub) = sub else {
        broker.close().await;
        return Ok(exit::OK);
    };
    let code = follow(sub, follow_args, leases.as_ref()).await;
    broker.close().await;
    code
}

/// Prints the problems; nothing was published.
fn invalid(name: &str, errs: &[kiln_protocol::ValidationError]) -> u8 {
    // Standard error closed: the exit code still says it.
    let _ = print_problems(&mut std::io::stderr().lock(), name, errs);
    errln!(
        "kiln: {name} is not a valid build request ({} problem{}); nothing was published",
        errs.len(),
        if errs.len() == 1 { "" } else { "s" }
    );
    exit::INVALID
}
