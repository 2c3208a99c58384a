//! The builds index, `P builds`: a sorted set of build ids by the time (ms)
//! their record was last written, trimmed to [`INDEX_MAX`] by the same round
//! trip that writes the record. The status page's list, the same on every
//! replica.

use std::time::Duration;

use super::client::{Store, encode, millis};
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
        let keep_ms = millis(keep);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.record_key(id))
            .arg(json)
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

    /// The records of the newest builds of the index (at most `limit`),
    /// newest first, in two round trips. Ids whose record expired are left
    /// out.
    pub async fn recent_records(&self, limit: usize) -> Result<Vec<(String, BuildRecord)>> {
        let mut conn = self.conn.clone();
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.index_key())
            .arg(0)
            .arg(stop)
            .query_async(&mut conn)
            .await?;
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
