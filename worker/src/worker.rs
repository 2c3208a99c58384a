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
    broker.declare_topology().await?;
    let store = Store::connect_to(
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
    });
    Ok(Supervisor::new(Context {
        broker: Arc::new(broker),
        store,
        pods,
        policy: Arc::new(policy),
        settings,
        record_ttl: config.record_ttl,
        prefetch: config.prefetch,
        park_after: config.park_after,
        metrics: Arc::new(Metrics::new()),
    }))
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
    let http = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!("cannot listen on {addr} (KILN_METRICS_ADDR): {e}"))
            })?;
            let stop = http_stop.clone();
            Some(tokio::spawn(crate::http::serve_on(
                listener,
                sup.clone(),
                async move { stop.cancelled().await },
            )))
        }
        None => None,
    };
    let result = supervisor::run(sup, shutdown).await;
    http_stop.cancel();
    if let Some(h) = http {
        match h.await {
            Ok(Err(e)) => tracing::error!(error = %e, "metrics server"),
            Err(e) => tracing::error!(error = %e, "metrics server task"),
            Ok(Ok(())) => {}
        }
    }
    result
}
