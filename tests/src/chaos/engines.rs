//! The engines a chaos run uses: the machine's RabbitMQ and Redis (shared
//! with other tests, the run keeping to a fresh prefix), or, when the run's
//! fault kinds include a clustered one (`amqp-node`, `redis-failover`),
//! private clustered engines started for the run ([`crate::cluster`]): a
//! three-node RabbitMQ cluster and a Redis primary with a replica under three
//! Sentinels. The workers are then configured with the three node URLs and
//! the Sentinels, as in production, and the run's own connections (tenants,
//! observer) with the node list too.
//!
//! The clustered faults are played one of a kind at a time, each to its end
//! (the node started again, the old primary back as a replica): a second
//! node killed while the first is down would cost the quorum queues their
//! majority, a second primary killed before the first is back would leave
//! no Redis at all — outages, not the failovers the run is about.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kiln_worker::amqp::{Broker, Names};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::history::{FaultKind, History, Millis, Recorder};
use crate::cluster::{Clustered, RabbitCluster, RabbitOptions, RedisOptions, SentinelRedis};
use crate::harness::{amqp_url, redis_url};

/// Where the run's RabbitMQ and Redis are.
pub struct Engines {
    cluster: Option<Cluster>,
}

struct Cluster {
    rabbit: Mutex<RabbitCluster>,
    redis: Mutex<SentinelRedis>,
    /// The three node URLs.
    urls: Vec<String>,
    worker_env: Vec<(String, String)>,
    /// Held through a whole node fault, and a whole failover: one at a time.
    node_fault: Mutex<()>,
    failover: Mutex<()>,
}

/// What a clustered fault did, for the history.
#[derive(Debug)]
pub struct Injected {
    /// When the node or the primary was killed.
    pub start: Millis,
    pub target: String,
    pub note: String,
    /// For a failover: from the kill to the next lease write.
    pub lease_write_after: Option<Millis>,
}

impl Engines {
    /// The shared engines, or (`clustered`) private clustered ones, started
    /// now (about 20 s for the RabbitMQ cluster on a busy two-core machine).
    pub async fn start(clustered: bool) -> anyhow::Result<Self> {
        if !clustered {
            return Ok(Self { cluster: None });
        }
        let t0 = Instant::now();
        let c = Clustered::start(RabbitOptions::default(), RedisOptions::default())
            .await
            .context("starting the clustered engines for the clustered faults")?;
        eprintln!(
            "chaos: clustered engines up in {:.1?}: RabbitMQ nodes {}, Sentinels {}",
            t0.elapsed(),
            c.rabbit.url_list(),
            c.redis.sentinel_list()
        );
        let urls = c.rabbit.urls();
        let worker_env = c.worker_env();
        let Clustered { rabbit, redis } = c;
        Ok(Self {
            cluster: Some(Cluster {
                rabbit: Mutex::new(rabbit),
                redis: Mutex::new(redis),
                urls,
                worker_env,
                node_fault: Mutex::new(()),
                failover: Mutex::new(()),
            }),
        })
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// `KILN_AMQP_URL` for the run's connections: one URL, or the nodes.
    pub fn amqp_urls(&self) -> String {
        match &self.cluster {
            Some(c) => c.urls.join(","),
            None => amqp_url(),
        }
    }

    /// One node's URL, for a plain lapin connection made while every node
    /// runs (before the faults).
    pub fn node_url(&self) -> String {
        match &self.cluster {
            Some(c) => c.urls[0].clone(),
            None => amqp_url(),
        }
    }

    /// The workers' settings for RabbitMQ and Redis.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        match &self.cluster {
            Some(c) => c.worker_env.clone(),
            None => vec![
                ("KILN_AMQP_URL".to_owned(), amqp_url()),
                ("KILN_REDIS_URL".to_owned(), redis_url()),
            ],
        }
    }

    /// A URL of the Redis primary now (waiting out a failover under way).
    pub async fn redis_url(&self) -> anyhow::Result<String> {
        match &self.cluster {
            Some(c) => {
                let r = c.redis.lock().await;
                Ok(r.server_url(r.primary_port().await?))
            }
            None => Ok(redis_url()),
        }
    }

    /// `rabbitmqctl -q ARGS` against the broker (a running node of the
    /// cluster); its standard output, or an error quoting what it said.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        if let Some(c) = &self.cluster {
            let mut r = c.rabbit.lock().await;
            let node = (1..=3).find(|&i| r.is_running(i)).context("no node runs")?;
            return r.ctl(node, args).await;
        }
        let out = tokio::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(args)
            .output()
            .await
            .context("cannot run rabbitmqctl (the chaos run manages its tenants' RabbitMQ users and closes connections with it)")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts recording every event of the prefix. On the shared broker an
    /// exclusive subscription does (no node dies); on the cluster a quorum
    /// queue of the run's own, consumed through the node list, so that no
    /// event is missed while a node is down (a redelivered one repeats its
    /// id, which the checker takes as at-least-once delivery).
    pub async fn observe(
        &self,
        observer: &Arc<Broker>,
        prefix: &str,
        rec: Arc<Recorder>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        if self.cluster.is_none() {
            let mut sub = observer.subscribe_events(&["#"]).await?;
            return Ok(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    rec.event(&m.routing_key, &m.body);
                }
            }));
        }
        let queue = format!("{prefix}.chaos-observer");
        let conn =
            lapin::Connection::connect(&self.node_url(), lapin::ConnectionProperties::default())
                .await?;
        let ch = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await?;
        ch.queue_bind(
            queue.as_str().into(),
            Names::new(prefix).events().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = conn.close(200, "declared".into()).await;
        let mut consumer = observer
            .consume(&queue, 1000, "kiln-chaos-observer")
            .await?;
        let observer = observer.clone();
        Ok(tokio::spawn(async move {
            loop {
                while let Some(m) = consumer.next().await {
                    rec.event(&m.routing_key, &m.body);
                    // Unacked, it comes again after a recovery: the same id.
                    let _ = m.ack().await;
                }
                // Its channel could not be recovered: consume again on a
                // new one, as the workers do.
                eprintln!("chaos: the observer's consumer ended; consuming again");
                consumer = loop {
                    match observer.consume(&queue, 1000, "kiln-chaos-observer").await {
                        Ok(c) => break c,
                        Err(e) => eprintln!("chaos: the observer cannot consume yet: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
            }
        }))
    }

    /// kill -9 the node leading quorum queue `queue`, start it again after
    /// `down`, and wait until it runs.
    pub async fn kill_queue_leader(
        &self,
        rec: &Recorder,
        queue: &str,
        down: Duration,
    ) -> anyhow::Result<Injected> {
        let c = self.clustered()?;
        let _one = c.node_fault.lock().await;
        let (node, name, start) = {
            let mut r = c.rabbit.lock().await;
            let node = r.leader_of(queue).await?;
            let start = rec.now();
            r.kill(node)?;
            (node, r.node_name(node).to_owned(), start)
        };
        tokio::time::sleep(down).await;
        let t = Instant::now();
        let mut r = c.rabbit.lock().await;
        let restarted = match r.restart(node).await {
            Ok(()) => format!("started again in {:.1?}", t.elapsed()),
            Err(e) => format!("restart failed: {e:#}"),
        };
        let leader = match r.leader_of(queue).await {
            Ok(n) => format!("node {n}"),
            Err(e) => format!("unknown ({e:#})"),
        };
        Ok(Injected {
            start,
            target: format!("rabbitmq node {node} ({name})"),
            note: format!(
                "kill -9 (leader of {queue}); down {} ms, {restarted}; leader now {leader}",
                down.as_millis()
            ),
            lease_write_after: None,
        })
    }

    /// kill -9 the Redis primary and wait for the Sentinels' failover; with
    /// `lose_writes`, first stop the replica and cut it off for `alone`, so
    /// that the workers' writes meanwhile reach the primary alone and are
    /// lost with it. Then waits for the next lease write of `lease_prefix`
    /// on the new primary (a lease's remaining time close to `ttl`) and
    /// starts the old primary again, as a replica.
    pub async fn fail_over_redis(
        &self,
        rec: &Recorder,
        lose_writes: bool,
        alone: Duration,
        lease_prefix: &str,
        ttl: Duration,
    ) -> anyhow::Result<Injected> {
        let c = self.clustered()?;
        let _one = c.failover.lock().await;
        let mut r = c.redis.lock().await;
        let (old, start, now) = if lose_writes {
            let isolated = r.isolate_primary().await?;
            let old = isolated.primary;
            tokio::time::sleep(alone).await;
            let start = rec.now();
            (old, start, r.fail_over_isolated(isolated).await?)
        } else {
            let start = rec.now();
            let old = r.kill_primary().await?;
            (old, start, r.wait_failover(old).await?)
        };
        let promoted = rec.now() - start;
        let url = r.server_url(now);
        drop(r);
        let lease_write_after = next_lease_write(&url, lease_prefix, ttl)
            .await
            .map(|()| rec.now() - start);
        let restarted = match c.redis.lock().await.restart(old).await {
            Ok(()) => "back as a replica".to_owned(),
            Err(e) => format!("restart failed: {e:#}"),
        };
        let variant = if lose_writes {
            format!(
                "replica stopped and cut off for {} ms, then ",
                alone.as_millis()
            )
        } else {
            String::new()
        };
        let lease = lease_write_after.map_or_else(
            || "no lease write within 30 s".to_owned(),
            |ms| format!("next lease write after {ms} ms"),
        );
        Ok(Injected {
            start,
            target: format!("redis primary {old}"),
            note: format!(
                "{variant}kill -9; {now} primary after {promoted} ms; {lease}; old primary {restarted}"
            ),
            lease_write_after,
        })
    }

    fn clustered(&self) -> anyhow::Result<&Cluster> {
        self.cluster
            .as_ref()
            .context("a clustered fault needs the clustered engines")
    }
}

/// Waits (up to 30 s) for a lease of `prefix` on the server at `url` whose
/// remaining time is within 150 ms of `ttl`: one written since a failover
/// that took longer than that.
async fn next_lease_write(url: &str, prefix: &str, ttl: Duration) -> Option<()> {
    let fresh = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX) - 150;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(mut conn) = redis_conn(url).await {
            let keys = keys_at(&mut conn, &format!("{prefix}lease:")).await;
            for key in keys.unwrap_or_default() {
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(-1);
                if pttl >= fresh {
                    return Some(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

// ---------------------------------------------------------------- Redis

/// A connection with timeouts long enough for a machine under load (the
/// client's defaults, 500 ms per response, fail there).
async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn keys_at(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Keys under `prefix` on the Redis at `url` (SCAN, never KEYS on a shared
/// server).
pub async fn keys_with_prefix_at(url: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    keys_at(&mut redis_conn(url).await?, prefix).await
}

/// Deletes every key under `prefix` on the Redis at `url` (only this run's:
/// other tests share the server). Returns how many were deleted.
pub async fn delete_prefix_at(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let mut conn = redis_conn(url).await?;
    let keys = keys_at(&mut conn, prefix).await?;
    for chunk in keys.chunks(1000) {
        let () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
    }
    Ok(keys.len())
}

/// Keys under `prefix` on the shared Redis (`KILN_REDIS_URL`).
pub async fn keys_with_prefix(prefix: &str) -> anyhow::Result<Vec<String>> {
    keys_with_prefix_at(&redis_url(), prefix).await
}

/// Deletes every key under `prefix` on the shared Redis.
pub async fn delete_prefix(prefix: &str) -> anyhow::Result<usize> {
    delete_prefix_at(&redis_url(), prefix).await
}

// ---------------------------------------------------------------- figures

/// The clustered faults' figures (docs/benchmarks.md): for each node kill,
/// milliseconds to the first `build.accepted` the observer received of a
/// request published (confirmed) after the kill; for each Redis failover,
/// to the next lease write on the new primary; and the builds lost. `None`
/// when the run had no clustered fault.
pub fn figures(history: &History, lost: usize) -> Option<String> {
    let mut published: std::collections::HashMap<&str, Millis> = std::collections::HashMap::new();
    for r in &history.requests {
        let at = published.entry(r.id.as_str()).or_insert(r.at);
        *at = (*at).min(r.at);
    }
    let mut node = Vec::new();
    let mut failover = Vec::new();
    for f in &history.faults {
        match f.kind {
            FaultKind::AmqpNode => node.push(
                history
                    .events
                    .iter()
                    .filter(|e| e.at >= f.start && e.routing_key.starts_with("build.accepted"))
                    .filter(|e| {
                        published
                            .get(e.build_id.as_str())
                            .is_some_and(|&p| p >= f.start)
                    })
                    .map(|e| e.at - f.start)
                    .min(),
            ),
            FaultKind::RedisFailover => failover.push(f.lease_write_after),
            _ => {}
        }
    }
    if node.is_empty() && failover.is_empty() {
        return None;
    }
    let list = |v: &[Option<Millis>]| {
        v.iter()
            .map(|ms| {
                ms.map_or_else(
                    || "none".to_owned(),
                    |ms| format!("{:.2} s", ms as f64 / 1000.0),
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "figures: rabbitmq node kill -> next build.accepted: [{}]; redis primary kill -> next lease write: [{}]; builds lost: {lost}\n",
        list(&node),
        list(&failover)
    ))
}
