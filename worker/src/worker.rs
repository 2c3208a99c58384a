//! `kiln worker`: connects to RabbitMQ, Redis and Kubernetes, declares the
//! topology and runs the supervisor until shutdown.

use std::sync::Arc;

use crate::amqp::Broker;
use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::machine::Settings;
use crate::metrics::Metrics;
use crate::pod::{KubeClient, Pods};
use crate::store::Store;
use crate::supervisor::{self, Context, Supervisor};

/// Connects everything and returns the supervisor, ready to run.
pub async fn connect(config: &WorkerConfig, kube: Option<KubeClient>) -> Result<Supervisor> {
    config.check().map_err(Error::Config)?;
    let worker = config.worker_name();
    let (policy, warning) = config.build.load_policy().map_err(Error::Config)?;
    if let Some(warning) = warning {
        tracing::warn!(namespace = %config.build.namespace, "{warning}");
    }
    for (flag, image) in config.unpinned_images() {
        tracing::warn!(
            image,
            "{flag} names no digest: the tag can be moved to other content; pin it as image:tag@sha256:…"
        );
    }
    let c = &config.connections;
    let broker = Broker::connect(
        &c.amqp_url,
        &c.amqp_prefix,
        &format!("kiln worker {worker}"),
    )
    .await?;
    broker
        .declare_topology_with(config.bounds.dead_limits())
        .await?;
    let store = connect_store(
        &c.redis_target()?,
        &c.redis_prefix,
        &worker,
        config.lease_ttl,
    )
    .await?;
    let client = match kube {
        Some(k) => k,
        None => Pods::default_client().await?,
    };
    let pods = Pods::new(client, config.build.pod_settings());
    let settings = Arc::new(Settings {
        pending_timeout: config.pending_timeout,
        retry_base_delay: config.retry_base_delay,
        retry_max_delay: config.retry_max_delay,
        source: format!("urn:kiln:{}", config.cluster),
        worker: worker.clone(),
        provenance: config.attestor().map_err(Error::Config)?,
    });
    Ok(Supervisor::new(Context {
        broker: Arc::new(broker),
        store,
        pods,
        policy: Arc::new(policy),
        settings,
        record_ttl: config.record_ttl,
        prefetch: inflight_prefetch(config),
        kept_cancels: config.bounds.cancel_keeping(),
        render_slots: Arc::new(tokio::sync::Semaphore::new(render_slots())),
        log_retention: config.log_retention,
        park_after: config.park_after,
        metrics: Arc::new(Metrics::new()),
    }))
}

/// The prefetch whose whole delivery window fits `KILN_MAX_INFLIGHT_BYTES`
/// (lapin holds each delivery's body whole, so the window is what bounds the
/// memory large messages can take); logged when it lowers `KILN_PREFETCH`.
fn inflight_prefetch(config: &WorkerConfig) -> u16 {
    let max_message = crate::amqp::BROKER_MAX_MESSAGE_BYTES as u64;
    let prefetch = crate::config::bounded_prefetch(
        config.prefetch,
        config.bounds.max_inflight_bytes,
        max_message,
        supervisor::CANCEL_PREFETCH,
    );
    if prefetch < config.prefetch {
        tracing::warn!(
            configured = config.prefetch,
            prefetch,
            max_inflight_bytes = config.bounds.max_inflight_bytes,
            max_message_bytes = max_message,
            "prefetch lowered so that the deliveries held fit KILN_MAX_INFLIGHT_BYTES"
        );
    }
    prefetch
}

/// Renderings at once: one per CPU, so rendering never takes more than the
/// machine while the async runtime keeps its own threads.
fn render_slots() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Runs a worker until `shutdown` resolves.
pub async fn run(
    config: WorkerConfig,
    kube: Option<KubeClient>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let sup = connect(&config, kube).await?;
    // The HTTP server outlives the supervisor's hand-over and stops with it.
    let http_stop = tokio_util::sync::CancellationToken::new();
    let auth = crate::http_auth::StatusAuth::from_config(&config.status)?;
    if config.status.status_insecure {
        tracing::warn!(
            "KILN_STATUS_INSECURE: the status page serves every tenant's builds to anyone who reaches it"
        );
    }
    let (metrics_app, status_app) = match (config.metrics_addr, config.status.status_addr) {
        (_, Some(status)) => {
            let (ops, page) = crate::http::split_routers(sup.clone(), auth);
            (config.metrics_addr.map(|a| (a, ops)), Some((status, page)))
        }
        (Some(addr), None) => (Some((addr, crate::http::router(sup.clone(), auth))), None),
        (None, None) => (None, None),
    };
    let mut http = Vec::new();
    for (addr, app, setting) in metrics_app
        .map(|(a, r)| (a, r, "KILN_METRICS_ADDR"))
        .into_iter()
        .chain(status_app.map(|(a, r)| (a, r, "KILN_STATUS_ADDR")))
    {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr} ({setting}): {e}")))?;
        let stop = http_stop.clone();
        http.push(tokio::spawn(crate::http::serve_on(
            listener,
            app,
            async move { stop.cancelled().await },
        )));
    }
    let result = supervisor::run(sup, shutdown).await;
    http_stop.cancel();
    for h in http {
        match h.await {
            Ok(Err(e)) => tracing::error!(error = %e, "metrics server"),
            Err(e) => tracing::error!(error = %e, "metrics server task"),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// Redis at start-up. Under Sentinel a failover may be under way (the
/// primary dead, the Sentinels not naming a new one yet): waited out with
/// [`crate::retry::redis_startup`] rather than the worker exiting; one
/// server (`KILN_REDIS_URL`) is tried once, as before.
async fn connect_store(
    target: &crate::store::RedisTarget,
    prefix: &str,
    worker: &str,
    ttl: std::time::Duration,
) -> Result<Store> {
    let mut waits = backon::BackoffBuilder::build(crate::retry::redis_startup());
    loop {
        match Store::connect_to(target, prefix, worker, ttl).await {
            Ok(store) => return Ok(store),
            Err(e) if matches!(target, crate::store::RedisTarget::Sentinel { .. }) => {
                let Some(wait) = waits.next() else {
                    return Err(e);
                };
                tracing::warn!(error = %e, retry_in = ?wait, "no Redis primary yet (a failover under way?); retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}
