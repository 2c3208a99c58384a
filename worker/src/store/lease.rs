//! Store: who holds a build id. A lease's value is a [`LeaseToken`],
//! `<worker id>/<ulid>`, minted per claim; claimed with `SET NX PX`, renewed
//! by compare-and-extend, released by compare-and-delete, all against the
//! exact token of that claim (Lua, so a worker can never extend or delete a
//! lease another worker, or another claim of its own, took over). The
//! final record is written by the same script that releases (`FINISH`).

use std::sync::LazyLock;
use std::time::Duration;

use redis::AsyncCommands;

use kiln_core::owner::{Learnt, Owner};

use super::client::{Store, encode, encode_summary, millis};
use super::index::INDEX_MAX;
use super::record::{BuildRecord, RecordState};
use crate::error::{Error, Result};

/// Compare-and-extend for many leases in one round trip. Returns per key:
/// 0 = lost (missing, or held under another value), 1 = renewed, 2 =
/// renewed and a cancel is pending. A lease that vanished is never taken
/// again here: it may have lapsed while this worker stalled, and another
/// worker may have adopted and even finished the build since. The build
/// goes through adoption instead (claim, then pods and record decide).
/// `ARGV[i]` is the token of `KEYS[i]`'s claim, `ARGV[n + 1]` the TTL.
const RENEW: &str = r"
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local ours = redis.call('GET', KEYS[i]) == ARGV[i]
  if ours then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + 1])
  end
  if not ours then
    out[i] = 0
  elseif redis.call('EXISTS', KEYS[n + i]) == 1 then
    out[i] = 2
  else
    out[i] = 1
  end
end
return out
";

/// Compare-and-delete.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Admission of a new request in one round trip. Reply:
/// `{kind, detail, state, tenant, fingerprint}`, the last three from the
/// record as it was before the call (empty without one). `dup` when the
/// record says accepted or finished; otherwise claim the lease (`SET NX PX`
/// with the fresh token `ARGV[1]`): `ok` with the pending cancel reason (the
/// holder's `KEYS[3]`, or the one kept for this tenant, `KEYS[4]`) if it was
/// free, else `held` with the holder's value (another worker's, or another
/// claim of this one: a token is never shared).
/// A lease taken on a free id writes a `claimed` record (`ARGV[3]`) so that
/// the owner is known from the claim on. The caller compares tenant and
/// fingerprint (a conflicting claim is released by the caller).
const CLAIM_REQUEST: &str = r"
local raw = redis.call('GET', KEYS[2])
local st, tenant, fp = '', '', ''
if raw then
  local ok, r = pcall(cjson.decode, raw)
  if ok and type(r) == 'table' then
    st = tostring(r.state or '')
    tenant = tostring(r.tenant or '')
    if type(r.fingerprint) == 'string' then fp = r.fingerprint end
  end
end
if st == 'accepted' or st == 'finished' then
  return {'dup', '', st, tenant, fp}
end
local holder = redis.call('GET', KEYS[1])
if holder then
  return {'held', holder, st, tenant, fp}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if not raw then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
local c = redis.call('GET', KEYS[3]) or redis.call('GET', KEYS[4]) or ''
return {'ok', c, st, tenant, fp}
";

/// Writes the final record and releases the lease (compare-and-delete) in one
/// round trip, only while the caller holds the lease: a worker that lost it
/// must not overwrite what the new holder records. 1 = done, 0 = lost.
const FINISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1 - tonumber(ARGV[6]))
redis.call('DEL', KEYS[1])
return 1
";

/// Keys renewed per script call: bounds the time Redis spends in one script.
const RENEW_CHUNK: usize = 500;

/// The Lua scripts of the lease commands, each hashed once per process.
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    renew: redis::Script::new(RENEW),
    release: redis::Script::new(RELEASE),
    claim_request: redis::Script::new(CLAIM_REQUEST),
    finish: redis::Script::new(FINISH),
});

struct Scripts {
    renew: redis::Script,
    release: redis::Script,
    claim_request: redis::Script,
    finish: redis::Script,
}

/// The value of a lease: `<worker id>/<ulid>`, minted per claim. The build
/// task of the claim keeps it, and renewal, release and FINISH compare it
/// exactly: a worker that re-claims its own lapsed build gets a new token,
/// and the old task's renew and finish then fail although the worker id is
/// the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token of `worker`.
    pub fn mint(worker: &str) -> Self {
        Self(format!("{worker}/{}", ulid::Ulid::new()))
    }

    /// A lease value read back: `None` unless it is `<worker id>/<ulid>`
    /// with a non-empty worker id (the id itself may contain `/`).
    pub fn parse(value: &str) -> Option<Self> {
        (holder_worker(value).len() < value.len()).then(|| Self(value.to_owned()))
    }

    /// The worker id part.
    pub fn worker(&self) -> &str {
        holder_worker(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The worker id of a lease value: the part before the token's ulid, or
/// the whole value when it carries none (a lease of an older worker).
pub fn holder_worker(value: &str) -> &str {
    match value.rsplit_once('/') {
        Some((worker, claim)) if !worker.is_empty() && ulid::Ulid::from_string(claim).is_ok() => {
            worker
        }
        _ => value,
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease was free and is ours now, under this token.
    Acquired(LeaseToken),
    /// Another claim holds it (another worker's, or an older one of this
    /// worker's): the holder, a worker id.
    HeldBy(String),
}

/// What admitting a new request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// The build was accepted or finished already, under this record.
    Duplicate(Owner),
    /// The lease was free and is ours now, under `token`; a cancel may have
    /// come while it was queued. `record`: the one found (a `claimed` one),
    /// if any.
    Acquired {
        token: LeaseToken,
        cancel: Option<String>,
        record: Option<Owner>,
    },
    /// Another claim (another worker's, or this worker's own running one)
    /// holds the lease and has not accepted the build yet: `holder` is its
    /// worker id.
    HeldBy {
        holder: String,
        record: Option<Owner>,
    },
}

/// Result of renewing one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Renewed, and a cancel is waiting for the build.
    CancelPending,
    /// Another worker holds the lease now, or it lapsed.
    Lost,
}

impl Store {
    /// Claims the lease of `id` (`SET NX PX`) under a fresh token. A lease
    /// held under any other token, this worker's own older claims included,
    /// is held: that claim's task may still be acting on the build.
    pub async fn claim(&self, id: &str) -> Result<Claim> {
        let key = self.lease_key(id);
        let token = LeaseToken::mint(&self.worker);
        if self.set_nx(&key, &token).await? {
            return Ok(Claim::Acquired(token));
        }
        let mut conn = self.conn.clone();
        let holder: Option<String> = conn.get(&key).await?;
        match holder {
            Some(h) => Ok(Claim::HeldBy(holder_worker(&h).to_owned())),
            // Expired between the two calls: try once more.
            None => Ok(if self.set_nx(&key, &token).await? {
                Claim::Acquired(token)
            } else {
                Claim::HeldBy(String::from("another worker"))
            }),
        }
    }

    /// `SET key token NX PX ttl`: whether the key was ours to take.
    async fn set_nx(&self, key: &str, token: &LeaseToken) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token.as_str())
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Admits a new request (see `CLAIM_REQUEST`): `claimed` is the record
    /// written if the lease is taken on a free id, kept for `keep`; a pending
    /// cancel is read from the holder's key or from the one kept for
    /// `claimed.tenant`. One round trip.
    pub async fn claim_request(
        &self,
        id: &str,
        claimed: &BuildRecord,
        keep: Duration,
    ) -> Result<Admit> {
        let mut conn = self.conn.clone();
        let json = encode(claimed)?;
        let keep_ms = millis(keep).max(1);
        let token = LeaseToken::mint(&self.worker);
        let reply: Vec<String> = SCRIPTS
            .claim_request
            .key(self.lease_key(id))
            .key(self.record_key(id))
            .key(self.cancel_key(id))
            .key(self.tenant_cancel_key(id, &claimed.tenant))
            .arg(token.as_str())
            .arg(self.ttl_ms())
            .arg(json)
            .arg(keep_ms)
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
        let record = (!field(2).is_empty()).then(|| Owner {
            // Unreadable only in a record of a newer worker: the least final.
            learnt: Learnt::Record(RecordState::parse(&field(2)).unwrap_or(RecordState::Claimed)),
            tenant: field(3),
            fingerprint: field(4),
        });
        Ok(match field(0).as_str() {
            "dup" => Admit::Duplicate(record.unwrap_or_else(Owner::unknown)),
            "ok" => Admit::Acquired {
                token,
                cancel: Some(field(1)).filter(|c| !c.is_empty()),
                record,
            },
            _ => Admit::HeldBy {
                holder: holder_worker(&field(1)).to_owned(),
                record,
            },
        })
    }

    /// Whether anything in Redis holds `id`: its record or its lease.
    pub async fn holds(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.record_key(id))
            .arg(self.lease_key(id))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// Writes the final record of `id` (kept for `keep`) and releases its
    /// lease, in one round trip. [`Error::LeaseLost`], writing nothing, when
    /// the lease is no longer held under `token`.
    pub async fn finish(
        &self,
        id: &str,
        token: &LeaseToken,
        record: &BuildRecord,
        keep: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let json = encode(record)?;
        let keep_ms = millis(keep).max(1);
        let done: i64 = SCRIPTS
            .finish
            .key(self.lease_key(id))
            .key(self.record_key(id))
            .key(self.index_key())
            .key(self.summary_key(id))
            .arg(token.as_str())
            .arg(json)
            .arg(keep_ms)
            .arg(record.updated_at.as_millisecond())
            .arg(id)
            .arg(INDEX_MAX)
            .arg(encode_summary(id, record)?)
            .invoke_async(&mut conn)
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost(id.to_owned()))
        }
    }

    /// Renews every lease in `held` still held under its claim's token, in
    /// chunks. Returns, per lease, whether it is still held and whether a
    /// cancel waits.
    pub async fn renew_many(&self, held: &[(String, LeaseToken)]) -> Result<Vec<Renewal>> {
        let mut out = Vec::with_capacity(held.len());
        let mut conn = self.conn.clone();
        for chunk in held.chunks(RENEW_CHUNK) {
            let mut inv = SCRIPTS.renew.prepare_invoke();
            for (id, _) in chunk {
                inv.key(self.lease_key(id));
            }
            for (id, _) in chunk {
                inv.key(self.cancel_key(id));
            }
            for (_, token) in chunk {
                inv.arg(token.as_str());
            }
            inv.arg(self.ttl_ms());
            let codes: Vec<i64> = inv.invoke_async(&mut conn).await?;
            out.extend(codes.into_iter().map(|c| match c {
                0 => Renewal::Lost,
                2 => Renewal::CancelPending,
                _ => Renewal::Renewed,
            }));
        }
        Ok(out)
    }

    /// Releases the lease of `id` if it is still held under `token`.
    pub async fn release(&self, id: &str, token: &LeaseToken) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = SCRIPTS
            .release
            .key(self.lease_key(id))
            .arg(token.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Releases many leases and tells the other workers, so that they adopt
    /// those builds now rather than after the lease would have lapsed.
    pub async fn release_all(&self, held: &[(String, LeaseToken)]) -> Result<()> {
        for (id, token) in held {
            self.release(id, token).await?;
        }
        if !held.is_empty() {
            let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
            let mut conn = self.conn.clone();
            // A list of strings always encodes.
            let payload = serde_json::to_string(&ids).unwrap_or_default();
            let _: i64 = conn.publish(self.released_channel(), payload).await?;
        }
        Ok(())
    }

    /// The worker ids holding the leases of `ids` (one `MGET`).
    pub async fn holders(&self, ids: &[String]) -> Result<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| self.lease_key(id)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(values
            .into_iter()
            .map(|v| v.map(|v| holder_worker(&v).to_owned()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_token_is_the_worker_id_and_a_fresh_ulid() {
        let a = LeaseToken::mint("kiln-7f9c/blue");
        let b = LeaseToken::mint("kiln-7f9c/blue");
        assert_ne!(a, b, "one token per claim");
        assert_eq!(a.worker(), "kiln-7f9c/blue", "a `/` in the worker id stays");
        let (_, claim) = a.as_str().rsplit_once('/').unwrap_or_default();
        assert_eq!(claim.len(), 26);
        assert_eq!(LeaseToken::parse(a.as_str()), Some(a.clone()));
        assert_eq!(holder_worker(a.as_str()), "kiln-7f9c/blue");
    }

    #[test]
    fn values_without_a_token_are_not_tokens_and_name_their_worker_whole() {
        for value in [
            "worker-a",
            "worker-a/",
            "/01J9ZQ4M6V3X0K8Y2T1R5B7C9D",
            "w/not-a-ulid",
        ] {
            assert_eq!(LeaseToken::parse(value), None, "{value}");
            assert_eq!(holder_worker(value), value, "{value}");
        }
    }
}
