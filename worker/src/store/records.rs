//! Reading and writing build records (`P build:<id>`, JSON [`BuildRecord`]):
//! for dedupe, ownership (tenant and request fingerprint, from the claim
//! on), `kiln status` and the status page.

use std::time::Duration;

use redis::AsyncCommands;

use super::client::{Store, encode, millis};
use super::record::BuildRecord;
use crate::error::Result;

impl Store {
    /// Writes the record of `id`, kept for `keep`.
    pub async fn put_record(&self, id: &str, record: &BuildRecord, keep: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        let json = encode(record)?;
        let keep_ms = millis(keep);
        let _: () = redis::cmd("SET")
            .arg(self.record_key(id))
            .arg(json)
            .arg("PX")
            .arg(keep_ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Reads the record of `id`. A record this version cannot read counts as
    /// absent: the pods remain the truth.
    pub async fn record(&self, id: &str) -> Result<Option<BuildRecord>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.record_key(id)).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }
}
