//! The handle to Redis: the connection, this worker's id and lease TTL, and
//! the key of every concept under the configured prefix. Each concept's
//! file adds its commands to [`Store`].

use std::time::Duration;

use super::conn::{RedisConn, RedisTarget};
use super::record::{BuildRecord, RECORD_MAX_BYTES};
use crate::error::{Error, Result};

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis {
            context: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// Handle to the Redis store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) conn: RedisConn,
    pub(super) prefix: String,
    pub(super) worker: String,
    pub(super) ttl: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to the Redis at `url`. The connection reconnects on its own
    /// after a Redis restart; commands issued meanwhile fail and are retried
    /// by the caller.
    pub async fn connect(url: &str, prefix: &str, worker: &str, ttl: Duration) -> Result<Self> {
        Self::connect_to(&RedisTarget::Url(url.to_owned()), prefix, worker, ttl).await
    }

    /// Connects to `target`: one server, or the primary Sentinel names,
    /// followed through failovers (see [`RedisTarget`]). Errors name the
    /// target without its passwords: they end up on the worker's stderr and
    /// in the client's one line.
    pub async fn connect_to(
        target: &RedisTarget,
        prefix: &str,
        worker: &str,
        ttl: Duration,
    ) -> Result<Self> {
        Ok(Self {
            conn: RedisConn::connect(target).await?,
            prefix: prefix.to_owned(),
            worker: worker.to_owned(),
            ttl,
        })
    }

    /// This worker's id: the holder named in the lease tokens it mints.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn lease_key(&self, id: &str) -> String {
        format!("{}lease:{id}", self.prefix)
    }

    pub(super) fn cancel_key(&self, id: &str) -> String {
        format!("{}cancel:{id}", self.prefix)
    }

    /// A cancel for an id nobody held when it came, kept for the tenant
    /// that sent it only: it never stops another tenant's build.
    pub(super) fn tenant_cancel_key(&self, id: &str, tenant: &str) -> String {
        format!("{}cancel:{id}@{tenant}", self.prefix)
    }

    /// The ids a tenant has kept cancels for, scored by their expiry.
    pub(super) fn kept_cancels_key(&self, tenant: &str) -> String {
        format!("{}kept-cancels:{tenant}", self.prefix)
    }

    pub(super) fn record_key(&self, id: &str) -> String {
        format!("{}build:{id}", self.prefix)
    }

    pub(super) fn summary_key(&self, id: &str) -> String {
        format!("{}sum:{id}", self.prefix)
    }

    pub(super) fn index_key(&self) -> String {
        format!("{}builds", self.prefix)
    }

    pub(super) fn cancel_channel(&self) -> String {
        format!("{}cancels", self.prefix)
    }

    pub(super) fn released_channel(&self) -> String {
        format!("{}released", self.prefix)
    }
    /// Round trip to Redis (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub(super) fn ttl_ms(&self) -> u64 {
        millis(self.ttl)
    }
}

/// A duration in whole milliseconds for `PX` (saturating).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A record as the JSON Redis keeps, at most [`RECORD_MAX_BYTES`] (its
/// oldest timeline entries, then its texts give way; see
/// [`BuildRecord::capped_json`]).
pub(super) fn encode(record: &BuildRecord) -> Result<String> {
    record
        .clone()
        .capped_json(RECORD_MAX_BYTES)
        .map_err(|e| Error::redis_caused("cannot encode the build record", e))
}

/// The list line of `id`'s record (`P sum:<id>`).
pub(super) fn encode_summary(id: &str, record: &BuildRecord) -> Result<String> {
    serde_json::to_string(&record.summary(id))
        .map_err(|e| Error::redis_caused("cannot encode the build summary", e))
}
