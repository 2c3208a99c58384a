//! The kept logs of build attempts: the whole Kaniko log of one attempt
//! (masked, capped), copied before its pod is deleted and kept for the log
//! retention, so `kiln logs` and the build page serve it after the pod is
//! gone.
//!
//! Keys:
//! - `P log:<id>/<image>/<attempt>` — the text, expiring after the retention.
//! - `P logs:<id>` — a hash, field `<image>/<attempt>`, value a JSON
//!   [`LogMeta`]: what was kept and when it expires. It outlives the texts
//!   by the record TTL, so a reader can say "expired at …" rather than "no
//!   such log".

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::client::{Store, millis};
use crate::error::{Error, Result};

/// What was kept of one attempt's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogMeta {
    /// Bytes the container wrote.
    pub bytes: u64,
    /// Bytes left out of the middle to respect the cap (0: kept whole).
    pub cut: u64,
    pub kept_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
    pub retention_seconds: u64,
}

/// What Redis has of one attempt's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptLog {
    Kept {
        meta: LogMeta,
        text: String,
    },
    /// It was kept and has expired (or was evicted before its time).
    Expired(LogMeta),
    /// Never kept (no attempt, copy failed or retention 0, or forgotten).
    Unknown,
}

fn field(image: &str, attempt: u32) -> String {
    format!("{image}/{attempt}")
}

impl Store {
    fn log_key(&self, id: &str, image: &str, attempt: u32) -> String {
        format!("{}log:{id}/{}", self.prefix, field(image, attempt))
    }

    fn logs_key(&self, id: &str) -> String {
        format!("{}logs:{id}", self.prefix)
    }

    /// Keeps one attempt's log for `meta`'s retention; its [`LogMeta`]
    /// for `remember` longer. One round trip.
    pub async fn put_log(
        &self,
        id: &str,
        image: &str,
        attempt: u32,
        meta: &LogMeta,
        text: &str,
        remember: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(meta)
            .map_err(|e| Error::redis_caused("cannot encode a log's metadata", e))?;
        let keep = Duration::from_secs(meta.retention_seconds);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.log_key(id, image, attempt))
            .arg(text)
            .arg("PX")
            .arg(millis(keep).max(1))
            .ignore()
            .cmd("HSET")
            .arg(self.logs_key(id))
            .arg(field(image, attempt))
            .arg(json)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.logs_key(id))
            .arg(millis(keep + remember).max(1))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The kept log of one attempt, or why there is none.
    pub async fn kept_log(&self, id: &str, image: &str, attempt: u32) -> Result<KeptLog> {
        let mut conn = self.conn.clone();
        let (text, meta): (Option<String>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.log_key(id, image, attempt))
            .cmd("HGET")
            .arg(self.logs_key(id))
            .arg(field(image, attempt))
            .query_async(&mut conn)
            .await?;
        let meta: Option<LogMeta> = meta.and_then(|m| serde_json::from_str(&m).ok());
        Ok(match (meta, text) {
            (Some(meta), Some(text)) => KeptLog::Kept { meta, text },
            (Some(meta), None) => KeptLog::Expired(meta),
            (None, _) => KeptLog::Unknown,
        })
    }

    /// Every attempt whose log was kept (expired ones included), by image
    /// and attempt.
    pub async fn kept_logs(&self, id: &str) -> Result<BTreeMap<(String, u32), LogMeta>> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.logs_key(id)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(f, m)| {
                let (image, attempt) = f.rsplit_once('/')?;
                let meta = serde_json::from_str(&m).ok()?;
                Some(((image.to_owned(), attempt.parse().ok()?), meta))
            })
            .collect())
    }
}
