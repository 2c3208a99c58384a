//! Fair share: a tenant's builds in flight across every worker.
//!
//! `P inflight:<tenant>` is a sorted set of the tenant's build ids (scored by
//! when each took its slot). A member counts while its build's lease exists:
//! the lease is the truth of "in flight" (it lapses when a worker dies, goes
//! when the build finishes, and is taken over, under the same id, by an
//! adoption), so nothing but this script maintains the set: taking a slot
//! first drops the members whose lease is gone.

use super::client::Store;
use crate::error::Result;

/// KEYS[1] the tenant's set; ARGV[1] the id, ARGV[2] the cap, ARGV[3] the
/// lease key prefix. 1 = the id has a slot (new or already), 0 = full.
const TAKE_SLOT: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 1
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
";

impl Store {
    /// Takes one of `tenant`'s `cap` slots for `id`, whose lease the caller
    /// holds (so the slot counts from now on). `false`: the tenant has `cap`
    /// builds in flight already.
    pub async fn take_slot(&self, tenant: &str, id: &str, cap: usize) -> Result<bool> {
        let mut conn = self.conn.clone();
        let took: i64 = redis::Script::new(TAKE_SLOT)
            .key(format!("{}inflight:{tenant}", self.prefix))
            .arg(id)
            .arg(cap)
            .arg(self.lease_key(""))
            .invoke_async(&mut conn)
            .await?;
        Ok(took == 1)
    }
}
