//! `kiln cancel ID`: publishes a `CancelRequest` (routing key `cancel`).

use kiln_protocol::CancelRequest;

use super::exit;
use super::output::Output;
use crate::amqp::{CANCEL_KEY, url_user};
use crate::config::Connections;

pub const AFTER_HELP: &str = "\
Cancels travel on their own queue, so they never wait behind a backlog of
builds. Cancelling an unknown or finished build is not an error. Follow the
outcome with `kiln wait ID` (exit code 3 once cancelled).

Examples:
  kiln cancel shop-cart-1.2.3-7f3a
  kiln cancel shop-cart-1.2.3-7f3a --reason superseded && kiln wait shop-cart-1.2.3-7f3a";

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The build id.
    pub id: String,
    /// Why (copied into the `build.cancelled` event).
    #[arg(long)]
    pub reason: Option<String>,
    /// `text`: a sentence; `json`/`yaml`: the request that was published.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    /// W3C traceparent to continue.
    #[arg(long, env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: CancelArgs) -> anyhow::Result<u8> {
    let request = CancelRequest::new(args.id.clone(), args.reason.clone());
    if let Err(errs) = request.validate() {
        for e in &errs {
            errln!("kiln: {e}");
        }
        errln!("kiln: nothing was published");
        return Ok(exit::INVALID);
    }
    let body = serde_json::to_vec(&request)?;
    let user = url_user(&args.connections.amqp_url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let broker = super::connect_broker(&args.connections, "cancel").await?;
    let published = broker
        .publish_request(CANCEL_KEY, &body, Some(&user), args.traceparent.as_deref())
        .await;
    let requests = broker.names().requests();
    broker.close().await;
    published.map_err(|e| super::explain_amqp(&e.to_string(), &requests))?;
    match args.output {
        Output::Text => outln!("cancel of build {} requested", args.id),
        data => data.print(&request)?,
    }
    Ok(exit::OK)
}
