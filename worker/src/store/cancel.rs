//! Cancel flags. `P cancel:<id>` holds the cancel reason, set by whichever
//! worker consumed the cancel and read by the holder of the lease (pushed on
//! `P cancels`, and polled with every renewal in case the push was missed).
//! `P cancel:<id>@<tenant>` keeps a cancel for an id nobody held when it
//! came, read only by a claim of that tenant's request; `P
//! kept-cancels:<tenant>` caps how many a tenant has at once
//! ([`CancelKeeping`]).

use std::sync::LazyLock;
use std::time::Duration;

use redis::AsyncCommands;

use super::client::{Store, millis};
use crate::error::Result;

/// How cancels for ids nobody holds are kept: for how long, and how many
/// per tenant at most. Such a cancel costs Redis a key and the worker a
/// LIST; without a cap, a flood of cancels for made-up ids fills Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelKeeping {
    /// How long a kept cancel waits for its request (`KILN_KEPT_CANCEL_TTL`).
    pub ttl: Duration,
    /// Most kept cancels per tenant at once (`KILN_KEPT_CANCELS_PER_TENANT`).
    pub per_tenant: u32,
}

impl Default for CancelKeeping {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            per_tenant: 1000,
        }
    }
}

/// Keeps a cancel for a tenant's build not held yet, within the tenant's
/// cap: `P kept-cancels:<tenant>` is a sorted set of the kept ids scored by
/// their expiry (Redis time, ms); expired members are dropped first, then
/// the id is added unless the set is full (an id already kept is renewed).
/// KEYS: the kept cancel, the tenant's set. ARGV: id, reason, ttl ms, cap,
/// the notice channel. 1 = kept, 0 = the tenant's cap is reached.
const KEEP_CANCEL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1])
   and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
";

static KEEP: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(KEEP_CANCEL));

impl Store {
    /// Flags a cancel for the holder of `id` and tells every worker about
    /// it.
    pub async fn request_cancel(&self, id: &str, reason: &str, keep: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(self.cancel_key(id))
            .arg(reason)
            .arg("PX")
            .arg(millis(keep))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.cancel_channel())
            .arg(id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Keeps a cancel of `id` for a build of `tenant` not held yet (read
    /// when its request is claimed), for `keeping.ttl`, unless the tenant
    /// already has `keeping.per_tenant` kept cancels: then `false`, and
    /// nothing is written.
    pub async fn keep_cancel(
        &self,
        id: &str,
        tenant: &str,
        reason: &str,
        keeping: CancelKeeping,
    ) -> Result<bool> {
        let mut conn = self.conn.clone();
        let kept: i64 = KEEP
            .key(self.tenant_cancel_key(id, tenant))
            .key(self.kept_cancels_key(tenant))
            .arg(id)
            .arg(reason)
            .arg(millis(keeping.ttl).max(1))
            .arg(keeping.per_tenant)
            .arg(self.cancel_channel())
            .invoke_async(&mut conn)
            .await?;
        Ok(kept == 1)
    }

    /// How many cancels are kept for `tenant` now (for tests and operators).
    pub async fn kept_cancels(&self, tenant: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let now_ms = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        Ok(conn
            .zcount(self.kept_cancels_key(tenant), now_ms, "+inf")
            .await?)
    }

    /// The pending cancel reason of `id`, if any.
    pub async fn cancel_reason(&self, id: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.get(self.cancel_key(id)).await?)
    }

    /// The cancel pending for a build of `tenant` under `id`: the holder's
    /// (`cancel:<id>`), else the one kept for the tenant
    /// (`cancel:<id>@<tenant>`). One round trip.
    pub async fn pending_cancel(&self, id: &str, tenant: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let keys = [self.cancel_key(id), self.tenant_cancel_key(id, tenant)];
        let mut values: Vec<Option<String>> = conn.mget(&keys).await?;
        values.resize(2, None);
        let kept = values.pop().flatten();
        Ok(first_cancel(values.pop().flatten(), kept))
    }
}

/// The reason of a pending cancel: the holder's flag first, else the one
/// kept for the tenant; an empty value is no cancel (as in `CLAIM_REQUEST`).
/// Pure.
fn first_cancel(holders: Option<String>, kept: Option<String>) -> Option<String> {
    holders
        .filter(|r| !r.is_empty())
        .or(kept.filter(|r| !r.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holders_cancel_comes_before_the_kept_one() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(first_cancel(some("a"), some("b")), some("a"));
        assert_eq!(first_cancel(None, some("b")), some("b"));
        assert_eq!(first_cancel(some(""), some("b")), some("b"));
        assert_eq!(first_cancel(some("a"), None), some("a"));
        assert_eq!(first_cancel(None, some("")), None);
        assert_eq!(first_cancel(None, None), None);
    }
}
