//! Cancel flags. `P cancel:<id>` holds the cancel reason, set by whichever
//! worker consumed the cancel and read by the holder of the lease (pushed on
//! `P cancels`, and polled with every renewal in case the push was missed).
//! `P cancel:<id>@<tenant>` keeps a cancel for an id nobody held when it
//! came, read only by a claim of that tenant's request.

use std::time::Duration;

use redis::AsyncCommands;

use super::client::{Store, millis};
use crate::error::Result;

impl Store {
    /// Records a cancel for `id` and tells every worker about it. With
    /// `for_tenant`, the cancel is kept for a build of that tenant not held
    /// yet (read when its request is claimed); without, it is the holder's.
    pub async fn request_cancel(
        &self,
        id: &str,
        for_tenant: Option<&str>,
        reason: &str,
        keep: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let keep_ms = millis(keep);
        let key = match for_tenant {
            Some(t) => self.tenant_cancel_key(id, t),
            None => self.cancel_key(id),
        };
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(reason)
            .arg("PX")
            .arg(keep_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.cancel_channel())
            .arg(id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
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
