//! Owns the builds of one worker. Each concept has a file:
//!
//! - [`context`]: the immutable clients and settings every task shares;
//! - [`registry`]: the mutable state (builds driven here, foreign builds,
//!   adoptions in progress), behind one lock;
//! - [`intake`]: a build request, from delivery to an accepted build, a
//!   duplicate or a rejection; [`cancels`]: a cancel request;
//! - [`build_task`]: the task of one build, feeding its machine and
//!   executing its actions;
//! - [`fencing`]: lease renewal, and stopping builds whose lease is lost;
//! - [`adoption`]: finding builds whose lease lapsed and taking them over;
//! - [`backlog`]: the cancels waiting at start-up, handled before any request;
//! - [`notices`]: cancel and release notices from other workers;
//! - [`routing`]: pod events from the watchers to the builds;
//! - [`lending`]: prefetch slots lent while quota waits hold deliveries;
//! - [`pod_cache`]: the pods the watchers saw, for adoption;
//! - this file: running all of it, and the hand-over at shutdown.

mod adoption;
mod backlog;
mod build_task;
mod cancels;
mod context;
mod fence;
mod fencing;
mod give_back;
mod intake;
mod lending;
mod log_keep;
mod notices;
mod owner;
mod pod_cache;
mod registry;
mod routing;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::amqp::Consumer;
use crate::cluster::ClusterView;
use crate::error::Result;

pub use context::Context;

/// Unacknowledged cancels a worker holds at once (part of the delivery
/// window that `KILN_MAX_INFLIGHT_BYTES` bounds).
pub const CANCEL_PREFETCH: u16 = 64;
pub use pod_cache::PodCache;
pub use registry::Registry;

/// The supervisor of one worker: what its tasks share. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub ctx: Arc<Context>,
    pub registry: Arc<Registry>,
    /// Every Kiln build seen in the cluster, for the status page.
    pub cluster: Arc<ClusterView>,
    /// Deliveries held by quota waits (see [`lending`]).
    pub lending: Arc<lending::Lending>,
    /// The pods of every build namespace, from the watch: adoption reads
    /// them here, never with a LIST.
    pub pod_cache: Arc<PodCache>,
    /// Cancelled at shutdown: ends the loops and every retry that serves
    /// no build yet (claims, cancel flags).
    stop: CancellationToken,
}

impl Supervisor {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx: Arc::new(ctx),
            registry: Arc::new(Registry::default()),
            cluster: Arc::new(ClusterView::new()),
            lending: Arc::new(lending::Lending::default()),
            pod_cache: Arc::new(PodCache::default()),
            stop: CancellationToken::new(),
        }
    }

    /// Keeps the `kiln_builds_in_flight` gauge equal to the registry.
    fn set_in_flight(&self, n: usize) {
        self.ctx
            .metrics
            .builds_in_flight
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Runs the worker until `shutdown` resolves, then hands its builds over.
pub async fn run(sup: Supervisor, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let ctx = &sup.ctx;
    let names = ctx.broker.names().clone();
    let mut tasks = tokio::task::JoinSet::new();
    for ns in ctx.policy.namespaces() {
        tasks.spawn(routing::watch_namespace(sup.clone(), ns));
    }
    tasks.spawn(fencing::renew_loop(sup.clone()));
    tasks.spawn(notices::notice_loop(sup.clone()));
    tasks.spawn(adoption::adopt_loop(sup.clone()));
    tasks.spawn(lending::lend_loop(sup.clone()));

    let worker = &ctx.settings.worker;
    // Cancels first, and the ones that waited while nobody consumed handled
    // to the end before the first request is taken: a cancel already queued
    // when its request is consumed always wins (ARCHITECTURE.md).
    let ready = backlog::count(&sup, &names.cancels()).await;
    let mut cancels = ctx
        .broker
        .consume(
            &names.cancels(),
            CANCEL_PREFETCH,
            &format!("kiln-{worker}-cancels"),
        )
        .await?;
    backlog::drain(&sup, &mut cancels, ready).await;
    let builds = ctx
        .broker
        .consume(&names.builds(), ctx.prefetch, &format!("kiln-{worker}"))
        .await?;
    sup.registry.set_consuming(true);
    tracing::info!(worker = %worker, "consuming {} and {}", names.builds(), names.cancels());

    tokio::select! {
        () = shutdown => {}
        () = consume_loop(sup.clone(), builds, cancels) => {
            tracing::error!("consumers ended unexpectedly");
        }
    }
    sup.registry.set_consuming(false);
    hand_over(&sup).await;
    tasks.shutdown().await;
    Ok(())
}

/// Stops every build task and releases their leases, telling the other
/// workers so they adopt the builds at once. Pods are left running.
async fn hand_over(sup: &Supervisor) {
    sup.stop.cancel();
    let held = sup.registry.stop_all();
    if let Err(e) = sup.ctx.store.release_all(&held).await {
        tracing::warn!(error = %e, "could not release leases; they lapse after the lease TTL");
    } else {
        tracing::info!(builds = held.len(), "released leases for takeover");
    }
    sup.ctx.broker.close().await;
}

/// Hands every delivery to a task of its own until shutdown or until both
/// consumers end.
async fn consume_loop(sup: Supervisor, mut builds: Consumer, mut cancels: Consumer) {
    let names = sup.ctx.broker.names().clone();
    let worker = sup.ctx.settings.worker.clone();
    let (builds_tag, cancels_tag) = (format!("kiln-{worker}"), format!("kiln-{worker}-cancels"));
    let mut builds_open = true;
    let mut cancels_open = true;
    while builds_open || cancels_open {
        // Biased, cancels before requests: a cancel never waits behind a
        // burst of requests (docs/protocol.md, "Topology").
        tokio::select! {
            biased;
            () = sup.stop.cancelled() => break,
            d = cancels.next(), if cancels_open => match d {
                Some(d) => { tokio::spawn(cancels::handle_cancel(sup.clone(), d)); }
                None => match consume_again(&sup, &names.cancels(), 64, &cancels_tag).await {
                    Some(c) => cancels = c,
                    None => cancels_open = false,
                },
            },
            d = builds.next(), if builds_open => match d {
                Some(d) => { tokio::spawn(intake::handle_request(sup.clone(), d)); }
                None => match consume_again(&sup, &names.builds(), sup.ctx.prefetch, &builds_tag).await {
                    Some(c) => builds = c,
                    None => builds_open = false,
                },
            },
        }
    }
    builds.cancel().await;
    cancels.cancel().await;
}

/// How long one try of [`consume_again`] waits for the broker's answers.
const CONSUME_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

/// A consumer whose channel the broker closed for good (a delivery held
/// past its `consumer_timeout`, a queue gone for a moment, a lone broker
/// restarted without its data): consume the queue again on a new channel,
/// declaring the topology again after each failure, paced like the
/// worker's reconnects, until it works or the worker stops (`None`).
async fn consume_again(
    sup: &Supervisor,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Option<Consumer> {
    let mut waits = backon::BackoffBuilder::build(crate::retry::amqp_connect());
    loop {
        // Bounded: a channel opened while the connection recovers may never
        // get its answer (seen in CI: a worker whose lone broker restarted
        // empty waited two minutes on one try and never consumed again).
        let tried =
            tokio::time::timeout(CONSUME_ANSWER, sup.ctx.broker.consume(queue, prefetch, tag))
                .await;
        match tried {
            Err(_) => {
                tracing::warn!(queue, timeout = ?CONSUME_ANSWER, "no answer to consuming again; trying again");
            }
            Ok(Ok(c)) => {
                tracing::warn!(queue, "consumer lost with its channel; consuming again");
                return Some(c);
            }
            Ok(Err(e)) => {
                sup.ctx.metrics.error(&e);
                tracing::warn!(queue, error = %e, "cannot consume again yet");
                // A broker that came back empty has no queue to consume:
                // declare the topology again (idempotent; a lone broker
                // only, see `declare_again`).
                if crate::amqp::is_not_found(&e) {
                    match tokio::time::timeout(CONSUME_ANSWER, sup.ctx.broker.declare_again()).await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot declare the topology again yet");
                        }
                        Err(_) => tracing::warn!("no answer to declaring the topology again"),
                    }
                }
            }
        }
        let wait = waits.next().unwrap_or(std::time::Duration::from_secs(5));
        crate::retry::bounded(tokio::time::sleep(wait), &sup.stop).await?;
    }
}
