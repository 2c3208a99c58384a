//! The builds index, `P builds`: a sorted set of build ids by the time (ms)
//! their record was last written, trimmed to [`INDEX_MAX`] by the same round
//! trip that writes the record. The status page's list, the same on every
//! replica. Beside each record, `P sum:<id>` holds its list line (a
//! [`BuildSummary`]: no log tails, no messages), written by the same round
//! trip and kept as long: a list view reads the summaries, never the records.

use std::time::Duration;

use kiln_core::record::BuildSummary;

use super::client::{Store, encode, encode_summary, millis};
use super::record::BuildRecord;
use crate::error::Result;

/// Builds kept in the `P builds` index (newest by record update).
pub const INDEX_MAX: usize = 1000;

impl Store {
    /// Writes the record of `id` (kept for `keep`) and puts it on top of the
    /// index, trimmed to [`INDEX_MAX`], in one round trip.
    pub async fn put_indexed_record(
        &self,
        id: &str,
        record: &BuildRecord,
        keep: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let json = encode(record)?;
        let summary = encode_summary(id, record)?;
        let keep_ms = millis(keep);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.record_key(id))
            .arg(json)
            .arg("PX")
            .arg(keep_ms.max(1))
            .ignore()
            .cmd("SET")
            .arg(self.summary_key(id))
            .arg(summary)
            .arg("PX")
            .arg(keep_ms.max(1))
            .ignore()
            .cmd("ZADD")
            .arg(self.index_key())
            .arg(record.updated_at.as_millisecond())
            .arg(id)
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(self.index_key())
            .arg(0)
            .arg(-1 - i64::try_from(INDEX_MAX).unwrap_or(i64::MAX))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The list lines of the newest builds of the index (at most `limit`),
    /// newest first, in two round trips (three when some were written by a
    /// worker before summaries: their records are read and summarised).
    /// Ids whose record expired are left out.
    pub async fn recent_summaries(&self, limit: usize) -> Result<Vec<BuildSummary>> {
        let ids = self.newest_ids(limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| self.summary_key(id)).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        let mut out: Vec<Option<BuildSummary>> = raw
            .into_iter()
            .map(|r| serde_json::from_str(&r?).ok())
            .collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let keys: Vec<String> = missing.iter().map(|&i| self.record_key(&ids[i])).collect();
            let raw: Vec<Option<String>> =
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
            for (i, r) in missing.into_iter().zip(raw) {
                out[i] = r
                    .and_then(|r| serde_json::from_str::<BuildRecord>(&r).ok())
                    .map(|r| r.summary(&ids[i]));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The newest `limit` ids of the index.
    async fn newest_ids(&self, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        Ok(redis::cmd("ZREVRANGE")
            .arg(self.index_key())
            .arg(0)
            .arg(stop)
            .query_async(&mut conn)
            .await?)
    }

    /// The whole records of the newest builds of the index (at most
    /// `limit`), newest first: what a list view read before summaries (kept
    /// for the cost comparison in the tests). Ids whose record expired are
    /// left out.
    pub async fn recent_records(&self, limit: usize) -> Result<Vec<(String, BuildRecord)>> {
        let mut conn = self.conn.clone();
        let ids = self.newest_ids(limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(raw)
            // A record this version cannot read is left out, as in `record`.
            .filter_map(|(id, r)| Some((id, serde_json::from_str(&r?).ok()?)))
            .collect())
    }
}
