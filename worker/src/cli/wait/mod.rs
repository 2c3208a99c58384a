//! `kiln wait ID` (and `kiln submit --wait`): follows one build's events to
//! its terminal `build.*` event, with live progress per image, and ends with
//! the digest-pinned references or the reason and the log tail.
//!
//! The subscription is made before anything else (before the publish, for
//! `submit --wait`), so no event is missed. After a publish, the
//! `request.rejected` event answering that very message (its id is computed
//! from the body published) also ends the wait, with exit code 4; the ones
//! answering other messages under the same id are someone else's. A build that already finished
//! is answered from its Redis record, which is also polled while waiting:
//! a terminal event published before the subscription existed would
//! otherwise never arrive. The same covers a lost connection: the
//! subscription is made again (on another node of a cluster) and the record
//! is read at once for what was published in the gap.

mod followed;
mod progress;
mod report;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kiln_protocol::{Level, is_valid_build_id};

use super::exit;
use super::output::{Output, Received};
use super::scope::{ScopeArgs, binding_keys};
use crate::amqp::EventSubscription;
use crate::config::{Connections, parse_duration};
use crate::store::{BuildRecord, RecordState, Store};
pub use followed::{Follow, exit_code};
use progress::Tracker;
use report::{report_event, report_record, report_rejected_request};

pub const AFTER_HELP: &str = concat!(
    "\
Shows the phase, attempt and elapsed time of each image (a live display on a
terminal, one line per event otherwise), then the digest-pinned references
on success, or the reason and the end of the build log on failure. A build
that already finished is answered at once from its Redis record.

Examples:
  kiln wait shop-cart-1.2.3-7f3a
  kiln wait shop-cart-1.2.3-7f3a --timeout 2h --output json | jq .data.images

",
    crate::kiln_exit_codes!()
);

/// How often the Redis record is read while waiting.
const RECORD_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The build id.
    pub id: String,
    /// Give up waiting after this long (exit code 5); the build goes on.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `text`: progress, then a summary; `json`: only the terminal event.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: WaitArgs) -> anyhow::Result<u8> {
    if !is_valid_build_id(&args.id) {
        errln!(
            "kiln: {:?} is not a build id (1-128 of A-Z a-z 0-9 . _ -)",
            args.id
        );
        return Ok(exit::INVALID);
    }
    let scope = args.scope.scope(&args.connections)?;
    let broker = super::connect_broker(&args.connections, "wait").await?;
    let keys = binding_keys(&scope, &[Level::Build, Level::Image], &[]);
    let sub = super::subscribe(&broker, &keys).await?;
    let leases = optional_redis(&args.connections).await;
    let code = follow(
        sub,
        Follow {
            build_id: args.id,
            images: Vec::new(),
            timeout: args.timeout,
            output: args.output,
            duplicate: false,
            rejected_id: None,
            tenant: None,
        },
        leases.as_ref(),
    )
    .await;
    broker.close().await;
    code
}

/// Redis for the record, or a one-line warning and none: waiting works on
/// the events alone.
pub async fn optional_redis(c: &Connections) -> Option<Store> {
    match super::connect_redis(c).await {
        Ok(l) => Some(l),
        Err(e) => {
            errln!(
                "kiln: warning: {}; following the events only",
                super::one_line(&e)
            );
            None
        }
    }
}

/// Follows the build to its end; returns the exit code.
pub async fn follow(
    mut sub: EventSubscription,
    f: Follow,
    leases: Option<&Store>,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let interrupted = super::ctrl_c();
    tokio::pin!(interrupted);
    let mut tracker = Tracker::new(&f);
    if let Some(rec) = first_record(&f, leases, &mut tracker).await {
        tracker.view.clear();
        sub.close().await;
        return Ok(report_record(&f, &rec));
    }
    let deadline = tokio::time::Instant::now() + f.timeout;
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + RECORD_POLL, RECORD_POLL);
    let mut finished_record: Option<BuildRecord> = None;
    let mut seen = HashSet::new();
    let mut gaps = 0;
    let code = loop {
        if sub.gaps() != gaps {
            // Events published while the subscription was being made again
            // were missed: the record says whether the build ended then.
            gaps = sub.gaps();
            errln!(
                "kiln: warning: the connection to RabbitMQ was lost and made again; reading the build's record for what may have been missed"
            );
            poll.reset_immediately();
        }
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else {
                    tracker.view.abandon();
                    anyhow::bail!(
                        "lost the connection to RabbitMQ while waiting for build {} (it goes on; kiln wait {0})",
                        f.build_id
                    );
                };
                if let Some(code) = on_event(&f, &msg.body, &mut tracker, &mut seen, started) {
                    break code;
                }
            }
            _ = poll.tick(), if leases.is_some() => {
                // A terminal event published before the subscription existed
                // never comes; the record says so. Give the event a moment
                // to arrive first, as it says more (log tail, references).
                if let Some(rec) = finished_record.take() {
                    tracker.view.clear();
                    break report_record(&f, &rec);
                }
                if let Some(leases) = leases
                    && let Ok(Some(rec)) = leases.record(&f.build_id).await
                    && rec.state == RecordState::Finished
                    && f.ours(&rec)
                {
                    finished_record = Some(rec);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracker.view.abandon();
                break timed_out(&f);
            }
            () = &mut interrupted => {
                tracker.view.abandon();
                errln!(
                    "kiln: stopped waiting; build {} goes on (kiln wait {0}, kiln cancel {0})",
                    f.build_id
                );
                break exit::INTERRUPTED;
            }
        }
    };
    sub.close().await;
    Ok(code)
}

/// Reads the Redis record before waiting: returns it when this build has
/// already finished (the answer), else shows what it knows of the build.
async fn first_record(
    f: &Follow,
    leases: Option<&Store>,
    tracker: &mut Tracker,
) -> Option<BuildRecord> {
    match leases?.record(&f.build_id).await {
        Ok(Some(rec)) if !f.ours(&rec) => {}
        Ok(Some(rec)) if rec.state == RecordState::Finished => return Some(rec),
        Ok(Some(rec)) => tracker.seed(&rec),
        Ok(None) => {}
        Err(e) => errln!("kiln: warning: cannot read the Redis record: {e}"),
    }
    None
}

/// Shows one event delivered if it is of this build; returns the exit code
/// when it ends the wait (the terminal build event, or the
/// `request.rejected` answering the message published).
fn on_event(
    f: &Follow,
    body: &[u8],
    tracker: &mut Tracker,
    seen: &mut HashSet<String>,
    started: Instant,
) -> Option<u8> {
    let r = Received::decode(body)?;
    if r.event.data.build_id != f.build_id || !seen.insert(r.event.id.clone()) {
        return None;
    }
    if r.event.level() == Level::Request {
        if f.rejected_id.as_deref() != Some(r.event.id.as_str()) {
            return None;
        }
        tracker.view.clear();
        return Some(report_rejected_request(f, &r));
    }
    if !f.tenant_may_be(r.event.data.tenant.as_deref()) {
        // Another tenant's build under this id: not ours to show.
        return None;
    }
    tracker.apply(&r.event);
    if r.event.level() == Level::Build && r.event.is_terminal() {
        tracker.view.clear();
        return Some(report_event(f, &r, tracker, started));
    }
    None
}

/// `--timeout` reached: the build goes on without us.
fn timed_out(f: &Follow) -> u8 {
    if f.output == Output::Text {
        errln!(
            "kiln: gave up waiting for build {} after {}; it goes on (kiln wait {0}, kiln status {0})",
            f.build_id,
            humantime::format_duration(f.timeout)
        );
    }
    exit::TIMED_OUT
}
