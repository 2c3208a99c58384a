//! Redis: build leases, cancel flags, build records, the builds index and
//! the notices between workers. The only module that knows Redis; one
//! concept per file (`lease`, `cancel`, `record` (the schema), `records`,
//! `index`, `notices`), each adding its commands to [`Store`].
//!
//! Keys (with the configured prefix `P`, default `kiln:`):
//! - `P lease:<id>`  — a [`LeaseToken`], `<worker id>/<ulid>`, minted per
//!   claim; `SET NX PX` to claim, renewed by compare-and-extend, released by
//!   compare-and-delete, all against the exact token of that claim (Lua, so
//!   a worker can never extend or delete a lease another worker, or another
//!   claim of its own, took over).
//! - `P cancel:<id>` — the cancel reason; set by whichever worker consumed the
//!   cancel, read by the lease's holder (pushed on `P cancels`, and polled
//!   with every renewal in case the push was missed).
//! - `P cancel:<id>@<tenant>` — a cancel for an id nobody held when it came,
//!   read only by a claim of that tenant's request.
//! - `P build:<id>`  — a JSON [`BuildRecord`] for dedupe, ownership (tenant
//!   and request fingerprint, from the claim on), `kiln status` and the
//!   status page.
//! - `P builds`      — sorted set of build ids by the time (ms) their record
//!   was last written, trimmed to [`INDEX_MAX`] by the same round trip that
//!   writes the record: the status page's list, the same on every replica.
//!
//! Losing Redis costs at worst duplicate work: pod names fence the cluster.

mod cancel;
mod index;
mod lease;
mod notices;
mod record;
mod records;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{Error, Result};

pub use index::INDEX_MAX;
pub use lease::{Admit, Claim, LeaseToken, Renewal, holder_worker};
pub use notices::Notice;
pub use record::{
    BuildRecord, History, ImageHistory, ImageRecord, RecordState, TIMELINE_MAX, TimelineEntry,
    trace_id,
};

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
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    worker: String,
    ttl: Duration,
    scripts: lease::Scripts,
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
    /// Connects to Redis. The connection manager reconnects on its own after
    /// a Redis restart; commands issued meanwhile fail and are retried by
    /// the caller.
    pub async fn connect(url: &str, prefix: &str, worker: &str, ttl: Duration) -> Result<Self> {
        // Errors name the URL without its password: they end up on the
        // worker's stderr and in the client's one line.
        let shown = kiln_protocol::redact_url(url);
        let client = redis::Client::open(url)
            .map_err(|e| Error::redis_caused(&format!("invalid Redis URL {shown:?}"), e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| Error::redis_caused(&format!("cannot connect to {shown}"), e))?;
        Ok(Self {
            conn,
            client,
            prefix: prefix.to_owned(),
            worker: worker.to_owned(),
            ttl,
            scripts: lease::Scripts::new(),
        })
    }

    /// This worker's id: the holder named in the lease tokens it mints.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lease_key(&self, id: &str) -> String {
        format!("{}lease:{id}", self.prefix)
    }

    fn cancel_key(&self, id: &str) -> String {
        format!("{}cancel:{id}", self.prefix)
    }

    /// A cancel for an id nobody held when it came, kept for the tenant
    /// that sent it only: it never stops another tenant's build.
    fn tenant_cancel_key(&self, id: &str, tenant: &str) -> String {
        format!("{}cancel:{id}@{tenant}", self.prefix)
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}build:{id}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}builds", self.prefix)
    }

    fn cancel_channel(&self) -> String {
        format!("{}cancels", self.prefix)
    }

    fn released_channel(&self) -> String {
        format!("{}released", self.prefix)
    }
    /// Round trip to Redis (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn ttl_ms(&self) -> u64 {
        millis(self.ttl)
    }
}

/// A duration in whole milliseconds for `PX` (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A record as the JSON Redis keeps.
fn encode(record: &BuildRecord) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::redis_caused("cannot encode the build record", e))
}
