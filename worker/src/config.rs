//! `kiln worker` configuration: flags with `KILN_*` environment fallbacks
//! (docs/configuration.md). Durations are written like `500ms`, `3s`, `2m`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::machine::Attest;
use crate::provenance::Attestor;

use crate::pod::PodSettings;
use crate::policy::Policy;

/// The executor image Kiln's pods were checked against (see
/// `worker/src/pod/EXECUTOR.md`): the fork's v1.28.3 release, by its index
/// digest, so a re-pushed tag can never change what builds run. The digest is
/// the one published for that tag; a wrong digest fails the pull loudly
/// (`ErrImagePull`), it never runs something else.
pub const DEFAULT_KANIKO_IMAGE: &str = "ghcr.io/osscontainertools/kaniko:v1.28.3@sha256:779f463aaa3219151ceff518249aa043a60bcb09a17fab58b915f63c678ecde6";

/// The publish step's image: Kiln's own (it runs `kiln publish`). Not
/// pinned: a release pins it in its manifests (the worker warns at start).
pub const DEFAULT_PUBLISH_IMAGE: &str = "ghcr.io/kiln-build/kiln";

/// The context-download image (curl 8.17.0), by its index digest.
pub const DEFAULT_FETCH_IMAGE: &str = "docker.io/curlimages/curl:8.17.0@sha256:935d9100e9ba842cdb060de42472c7ca90cfe9a7c96e4dacb55e79e560b3ff40";

/// Where the worker finds RabbitMQ and Redis. Shared by the worker and the
/// client commands so both are configured the same way.
#[derive(Debug, Clone, clap::Args)]
pub struct Connections {
    /// RabbitMQ URL, or the URLs of a cluster's nodes, comma-separated
    /// (tried in a random order; the same user and vhost in each).
    #[arg(
        long,
        env = "KILN_AMQP_URL",
        // `--help` would print the variable's value, password included.
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name (`<prefix>.requests`, ...).
    #[arg(long, env = "KILN_AMQP_PREFIX", default_value = "kiln")]
    pub amqp_prefix: String,
    /// Redis URL.
    #[arg(
        long,
        env = "KILN_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (`<prefix>lease:<id>`, ...).
    #[arg(long, env = "KILN_REDIS_PREFIX", default_value = "kiln:")]
    pub redis_prefix: String,
    /// Redis Sentinels, `host:port` comma-separated: when set, Redis is the
    /// primary they name for `--redis-master`, followed through failovers,
    /// and `--redis-url` is not used.
    #[arg(long, env = "KILN_REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,
    /// The master name the Sentinels monitor (with `--redis-sentinels`).
    #[arg(long, env = "KILN_REDIS_MASTER")]
    pub redis_master: Option<String>,
    /// Password of the Redis servers under Sentinel (`requirepass`).
    #[arg(long, env = "KILN_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Password of the Sentinels themselves, if they require one.
    #[arg(long, env = "KILN_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
}

impl Connections {
    /// Where Redis is: the Sentinels' primary when `--redis-sentinels` is
    /// set, else `--redis-url`. An error names the setting and the rule.
    pub fn redis_target(&self) -> crate::error::Result<crate::store::RedisTarget> {
        crate::store::RedisTarget::from_settings(
            &self.redis_url,
            self.redis_sentinels.as_deref(),
            self.redis_master.as_deref(),
            self.redis_password.as_deref(),
            self.redis_sentinel_password.as_deref(),
        )
    }
}

/// What turns a request into pods: the policy and the pods' images and
/// defaults. Shared by `kiln worker` and `kiln plan`, so that a plan is made
/// under exactly the settings a worker with the same flags and `KILN_*`
/// variables uses.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildConfig {
    /// Build namespace of the `default` tenant when no policy file is given.
    #[arg(long, env = "KILN_NAMESPACE", default_value = "kiln-builds")]
    pub namespace: String,
    /// Tenancy policy file (TOML or YAML). Without one, every request runs
    /// as the `default` tenant in `--namespace` with any destination.
    #[arg(long, env = "KILN_POLICY")]
    pub policy: Option<PathBuf>,
    /// Kaniko executor image. Google archived upstream Kaniko in June 2025;
    /// the default is the community-maintained fork, pinned by digest (a
    /// reference without a digest draws a warning at start).
    #[arg(long, env = "KILN_KANIKO_IMAGE", default_value = DEFAULT_KANIKO_IMAGE)]
    pub kaniko_image: String,
    /// Image of the init container that downloads `url` build contexts
    /// (runs `curl`, non-root); pinned by digest like the executor.
    #[arg(long, env = "KILN_FETCH_IMAGE", default_value = DEFAULT_FETCH_IMAGE)]
    pub fetch_image: String,
    /// Image of the publish step of images with `platforms` (Kiln's own
    /// image, running `kiln publish`); pin it by digest.
    #[arg(long, env = "KILN_PUBLISH_IMAGE", default_value = DEFAULT_PUBLISH_IMAGE)]
    pub publish_image: String,
    /// Registries (`host[:port]`) the publish step talks to over plain
    /// HTTP, comma-separated; default none.
    #[arg(
        long,
        env = "KILN_INSECURE_REGISTRIES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub insecure_registries: Vec<String>,
    /// `AWS_REGION` of S3 build contexts when neither the request nor the
    /// tenant policy names one: the executor's AWS SDK sends no request
    /// without a region, even to an S3-compatible endpoint.
    #[arg(long, env = "KILN_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
}

impl BuildConfig {
    /// The policy file or, without one, the single `default` tenant in
    /// `--namespace`, with the warning that deserves (`None` with a file).
    pub fn load_policy(&self) -> Result<(Policy, Option<String>), String> {
        match &self.policy {
            Some(path) => crate::policy::load(path)
                .map(|p| (p, None))
                .map_err(|e| e.to_string()),
            None => Ok((
                Policy::single_tenant(&self.namespace),
                Some(format!(
                    "no policy file (KILN_POLICY): every request runs as tenant \"default\" in {} and may push anywhere",
                    self.namespace
                )),
            )),
        }
    }

    /// The pods' images and the S3 region default.
    pub fn pod_settings(&self) -> PodSettings {
        PodSettings {
            kaniko_image: self.kaniko_image.clone(),
            fetch_image: self.fetch_image.clone(),
            s3_region: self.s3_region.clone(),
            publish_image: self.publish_image.clone(),
            insecure_registries: self
                .insecure_registries
                .iter()
                .filter(|r| !r.is_empty())
                .cloned()
                .collect(),
        }
    }
}

/// Everything `kiln worker` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub connections: Connections,
    #[command(flatten)]
    pub build: BuildConfig,
    /// Cluster name, used as the CloudEvents `source` (`urn:kiln:<cluster>`).
    #[arg(long, env = "KILN_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Address of the metrics, health and status HTTP server.
    #[arg(long, env = "KILN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the status page listens and who may read it.
    #[command(flatten)]
    pub status: crate::http_auth::StatusConfig,
    /// How long a build lease lives without renewal. A killed worker's builds
    /// are adopted by another worker after at most this long.
    #[arg(long, env = "KILN_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long a pod may stay Pending (unschedulable, image pull) before its
    /// image fails.
    #[arg(long, env = "KILN_PENDING_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub pending_timeout: Duration,
    /// First retry delay; doubles each attempt, with jitter.
    #[arg(long, env = "KILN_RETRY_BASE_DELAY", default_value = "10s", value_parser = parse_duration)]
    pub retry_base_delay: Duration,
    /// Upper bound of the retry delay.
    #[arg(long, env = "KILN_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// Name of this worker in events (`kilnworker`) and lease values.
    /// Defaults to the host name (the pod name in Kubernetes).
    #[arg(long, env = "KILN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Unacknowledged build requests this worker holds at once.
    #[arg(long, env = "KILN_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,
    /// A request that waits longer than this for its first pods (a quota)
    /// or for another worker's acceptance is parked in `<prefix>.parked`
    /// and acked, so no delivery outlives the broker's consumer_timeout
    /// (30 minutes by default): keep it well below that.
    #[arg(long, env = "KILN_PARK_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub park_after: Duration,
    /// How long the Redis record of a finished build is kept (duplicate
    /// requests within it are acked with no new build; `kiln status` reads it).
    #[arg(long, env = "KILN_RECORD_TTL", default_value = "24h", value_parser = parse_duration)]
    pub record_ttl: Duration,
    /// PEM file of the ECDSA P-256 private key (PKCS#8 or SEC1) that signs
    /// the SLSA provenance of every succeeded image (`image.succeeded`
    /// `data.provenance`). Read once at start; mount it from a Secret into
    /// the worker only. Without it, events carry no provenance.
    #[arg(long, env = "KILN_PROVENANCE_KEY")]
    pub provenance_key: Option<PathBuf>,
    #[command(flatten)]
    pub bounds: Bounds,
    /// How long the whole log of each build attempt is kept in Redis after
    /// its pod is deleted (a tenant's `caps.maxLogRetentionSeconds` may
    /// shorten it); `0s` keeps none.
    #[arg(long, env = "KILN_LOG_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub log_retention: Duration,
}

/// What one message, or one tenant's flood of them, may cost a worker and
/// the broker (docs/configuration.md, "Bounds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Bounds {
    /// Memory the deliveries this worker holds may take at most, in bytes:
    /// the prefetch window is lowered until every slot holding a message of
    /// the broker's `max_message_size` fits.
    #[arg(long, env = "KILN_MAX_INFLIGHT_BYTES", default_value_t = DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: u64,
    /// How long a cancel for an id nobody holds is kept for its request.
    #[arg(long, env = "KILN_KEPT_CANCEL_TTL", default_value = "10m", value_parser = parse_duration)]
    pub kept_cancel_ttl: Duration,
    /// Most cancels kept per tenant for ids nobody holds; more are refused.
    #[arg(long, env = "KILN_KEPT_CANCELS_PER_TENANT", default_value_t = 1000)]
    pub kept_cancels_per_tenant: u32,
    /// Most messages `kiln.dead` keeps (`x-max-length`); the oldest go first.
    #[arg(long, env = "KILN_DEAD_MAX_LENGTH", default_value_t = DEFAULT_DEAD_MAX_LENGTH)]
    pub dead_max_length: u32,
    /// Most bytes of bodies `kiln.dead` keeps (`x-max-length-bytes`).
    #[arg(long, env = "KILN_DEAD_MAX_BYTES", default_value_t = DEFAULT_DEAD_MAX_BYTES)]
    pub dead_max_bytes: u64,
}

/// 256 MiB: half of the Deployment's 512Mi limit.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 * 1024 * 1024;
/// `kiln.dead`'s default length limit.
pub const DEFAULT_DEAD_MAX_LENGTH: u32 = 100_000;
/// `kiln.dead`'s default byte limit: 1 GiB of bodies.
pub const DEFAULT_DEAD_MAX_BYTES: u64 = 1024 * 1024 * 1024;

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            kept_cancel_ttl: Duration::from_secs(600),
            kept_cancels_per_tenant: 1000,
            dead_max_length: DEFAULT_DEAD_MAX_LENGTH,
            dead_max_bytes: DEFAULT_DEAD_MAX_BYTES,
        }
    }
}

impl Bounds {
    /// How cancels for ids nobody holds are kept.
    pub fn cancel_keeping(&self) -> crate::store::CancelKeeping {
        crate::store::CancelKeeping {
            ttl: self.kept_cancel_ttl,
            per_tenant: self.kept_cancels_per_tenant,
        }
    }

    /// `kiln.dead`'s limits.
    pub fn dead_limits(&self) -> crate::amqp::DeadLimits {
        crate::amqp::DeadLimits {
            max_length: self.dead_max_length,
            max_bytes: self.dead_max_bytes,
        }
    }
}

/// The prefetch a worker uses: `configured`, lowered so that its whole
/// delivery window fits `budget` bytes when every message is as large as
/// the broker accepts (`max_message`). The window is twice the prefetch
/// (lent consumers add up to as much again while quota waits hold
/// deliveries) plus the cancel consumer's `cancel_prefetch`. At least 1.
/// Pure.
pub fn bounded_prefetch(
    configured: u16,
    budget: u64,
    max_message: u64,
    cancel_prefetch: u16,
) -> u16 {
    let slots = budget / max_message.max(1);
    let for_builds = slots.saturating_sub(u64::from(cancel_prefetch)) / 2;
    u16::try_from(for_builds.min(u64::from(configured)))
        .unwrap_or(configured)
        .max(1)
}

impl WorkerConfig {
    /// Checks relations between values that clap cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("--lease-ttl (KILN_LEASE_TTL) must be at least 1s".into());
        }
        if self.retry_base_delay > self.retry_max_delay {
            return Err(
                "--retry-base-delay (KILN_RETRY_BASE_DELAY) must not exceed --retry-max-delay (KILN_RETRY_MAX_DELAY)"
                    .into(),
            );
        }
        if self.prefetch == 0 {
            return Err("--prefetch (KILN_PREFETCH) must be at least 1".into());
        }
        if self.bounds.kept_cancels_per_tenant == 0 {
            return Err(
                "--kept-cancels-per-tenant (KILN_KEPT_CANCELS_PER_TENANT) must be at least 1"
                    .into(),
            );
        }
        if self.bounds.kept_cancel_ttl < Duration::from_secs(1) {
            return Err("--kept-cancel-ttl (KILN_KEPT_CANCEL_TTL) must be at least 1s".into());
        }
        if self.bounds.dead_max_length == 0 || self.bounds.dead_max_bytes == 0 {
            return Err("--dead-max-length (KILN_DEAD_MAX_LENGTH) and --dead-max-bytes (KILN_DEAD_MAX_BYTES) must be at least 1".into());
        }
        if self.park_after < Duration::from_secs(1) {
            return Err("--park-after (KILN_PARK_AFTER) must be at least 1s".into());
        }
        crate::amqp::Nodes::parse(&self.connections.amqp_url).map_err(|e| e.to_string())?;
        self.connections.redis_target().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The configured images that name no digest, as `(flag, reference)`: a
    /// tag can be moved to other content at any time, so the worker warns
    /// about each at start.
    pub fn unpinned_images(&self) -> Vec<(&'static str, &str)> {
        [
            (
                "--kaniko-image (KILN_KANIKO_IMAGE)",
                self.build.kaniko_image.as_str(),
            ),
            (
                "--fetch-image (KILN_FETCH_IMAGE)",
                self.build.fetch_image.as_str(),
            ),
            (
                "--publish-image (KILN_PUBLISH_IMAGE)",
                self.build.publish_image.as_str(),
            ),
        ]
        .into_iter()
        .filter(|(_, image)| !pinned(image))
        .collect()
    }

    /// The provenance signer of `--provenance-key`, `None` without one; a
    /// key that cannot be read or is not a P-256 key is an error naming the
    /// setting, so a worker never runs unsigned by mistake.
    pub fn attestor(&self) -> Result<Option<Arc<dyn Attest>>, String> {
        let Some(path) = &self.provenance_key else {
            return Ok(None);
        };
        let builder_id = kiln_protocol::event_source(&self.cluster);
        let attestor = Attestor::load(path, builder_id, self.build.pod_settings())?;
        tracing::info!(keyid = attestor.keyid(), "signing provenance");
        Ok(Some(attestor))
    }

    /// The worker's name: `--worker-id`, else the host name, else a ULID.
    pub fn worker_name(&self) -> String {
        if let Some(id) = &self.worker_id {
            return id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| format!("kiln-{}", ulid::Ulid::new().to_string().to_lowercase()))
    }
}

/// Whether an image reference names a digest (`…@sha256:<64 hex>`).
fn pinned(image: &str) -> bool {
    kiln_protocol::parse_image_reference(image)
        .ok()
        .is_some_and(|r| r.digest().is_some())
}

/// Parses `500ms`, `3s`, `2m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 3s or 2m: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_images_are_pinned_and_tags_are_not() {
        assert!(pinned(DEFAULT_KANIKO_IMAGE), "{DEFAULT_KANIKO_IMAGE}");
        assert!(pinned(DEFAULT_FETCH_IMAGE), "{DEFAULT_FETCH_IMAGE}");
        assert!(!pinned("ghcr.io/osscontainertools/kaniko:latest"));
        assert!(!pinned("ghcr.io/osscontainertools/kaniko"));
        assert!(!pinned("not a reference"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
    }

    /// Issue 18 item 4: the delivery window fits the memory budget.
    #[test]
    fn prefetch_is_lowered_to_fit_the_inflight_budget() {
        let mib = 1024 * 1024;
        // 256 MiB of 1.25 MiB messages: 204 slots, 64 for cancels, half of
        // the rest for the main consumer (lent consumers take as much).
        assert_eq!(bounded_prefetch(256, 256 * mib, 1280 * 1024, 64), 70);
        assert_eq!(bounded_prefetch(16, 256 * mib, 1280 * 1024, 64), 16);
        assert_eq!(bounded_prefetch(256, mib, 1280 * 1024, 64), 1);
        let max = 1280 * 1024;
        let p = u64::from(bounded_prefetch(256, 256 * mib, max, 64));
        assert!((2 * p + 64) * max <= 256 * mib);
    }
}
