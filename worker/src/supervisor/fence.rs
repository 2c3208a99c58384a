//! The fence of a build: until when this worker may act on it, moved
//! forward by every confirmed renewal to the renewal's send time + TTL −
//! [`margin`] (see `fencing.rs` for the renewals). Pure but for the shared
//! cell the build task and the renewal loop both hold.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The safety margin of the fence: a fifth of the TTL, at least a second,
/// but never more than half the TTL (a fence must open at all).
pub(super) fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_secs(1)).min(ttl / 2)
}

/// Until when this worker may act on a build: pure, see the module
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fence {
    valid_until: Instant,
}

impl Fence {
    /// The fence of a lease claimed or renewed by a call sent at `sent`.
    pub(super) fn from_send(sent: Instant, ttl: Duration) -> Self {
        Self {
            valid_until: sent + ttl.saturating_sub(margin(ttl)),
        }
    }

    pub(super) fn holds(self, now: Instant) -> bool {
        now < self.valid_until
    }

    /// The later of two fences: a slow renewal reply arriving after a
    /// quicker later one must not move the fence back.
    #[must_use]
    pub(super) fn extended(self, other: Self) -> Self {
        Self {
            valid_until: self.valid_until.max(other.valid_until),
        }
    }
}

/// A build's fence, shared by its task (reads) and the renewal loop
/// (writes).
#[derive(Debug, Clone)]
pub(super) struct SharedFence(Arc<Mutex<Fence>>);

impl SharedFence {
    pub(super) fn new(fence: Fence) -> Self {
        Self(Arc::new(Mutex::new(fence)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fence> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn holds(&self, now: Instant) -> bool {
        self.lock().holds(now)
    }

    pub(super) fn extend(&self, fence: Fence) {
        let mut f = self.lock();
        *f = f.extended(fence);
    }
}
