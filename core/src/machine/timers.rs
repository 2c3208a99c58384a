//! Time in the machine: the retry backoff (jittered by a hash, not a
//! random draw), the quota waits, the deadline and the timer tick.

use std::time::{Duration, Instant};

use kiln_protocol::{Phase, Reason};

use super::events::fill_failure;
use super::image::ImgState;
use super::state::{Action, Machine, Settings, Stage};
use crate::classify::Failure;

/// The wait after failed attempt `attempt` (1-based) of one image:
/// exponential from `retry_base_delay`, doubled per attempt and capped at
/// `retry_max_delay`, plus a jitter in `[0, that delay)`, capped again.
///
/// The jitter spreads the retries of many builds that failed together (a
/// registry outage) so they do not return in one wave. It is a pure
/// function of build id, image and attempt instead of a random draw: the
/// machine stays deterministic, its tests assert exact delays, and a worker
/// that adopts the build computes the same wait.
pub fn backoff(settings: &Settings, build_id: &str, image: &str, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let delay = settings
        .retry_base_delay
        .saturating_mul(1 << doublings)
        .min(settings.retry_max_delay);
    let fraction = jitter_fraction(build_id, image, attempt);
    (delay + delay.mul_f64(fraction)).min(settings.retry_max_delay)
}

/// First wait after a ResourceQuota refusal.
pub const QUOTA_WAIT_MIN: Duration = Duration::from_secs(1);

/// Cap of the wait between tries while a ResourceQuota refuses the pod.
pub const QUOTA_WAIT_MAX: Duration = Duration::from_secs(30);

/// The wait after the `tries`-th (1-based) ResourceQuota refusal of one
/// attempt's pod: 1 s, doubled per refusal, capped at 30 s. No jitter: a
/// refused create is cheap for the API server (admission answers before
/// storage), and builds waiting on the same quota are spread anyway by when
/// they were refused. The deadline caps it through [`Machine::next_wakeup`].
pub fn quota_wait(tries: u32) -> Duration {
    let doublings = tries.saturating_sub(1).min(16);
    QUOTA_WAIT_MIN
        .saturating_mul(1 << doublings)
        .min(QUOTA_WAIT_MAX)
}

/// A number in `[0, 1)` spread evenly by FNV-1a over build id, image and
/// attempt (FNV rather than `DefaultHasher`, whose output may change
/// between Rust releases).
pub(super) fn jitter_fraction(build_id: &str, image: &str, attempt: u32) -> f64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let bytes = build_id
        .bytes()
        .chain([0])
        .chain(image.bytes())
        .chain([0])
        .chain(attempt.to_le_bytes());
    let hash = bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // The top 53 bits fill an f64 mantissa exactly.
    #[allow(clippy::cast_precision_loss)]
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    fraction
}

impl Machine {
    /// When the machine next wants a [`Input::Tick`].
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.stage != Stage::Active {
            return None;
        }
        let mut next = self.deadline;
        for img in &self.units {
            if img.state == ImgState::Pending
                && let Some(since) = img.pending_since
            {
                next = next.min(since + self.settings.pending_timeout);
            }
            if let Some(at) = img.retry_at {
                next = next.min(at);
            }
        }
        Some(next)
    }

    /// The wait before the attempt after `attempt` of unit `u` (an
    /// image's own pod keeps the jitter of its image name).
    pub(super) fn backoff(&self, u: usize, attempt: u32) -> Duration {
        let img = &self.units[u];
        let unit = self.plan.images[img.image].unit(img.step);
        backoff(&self.settings, &self.plan.id, &unit, attempt)
    }

    /// The build's deadline passed: every unfinished image fails (one
    /// `image.failed` per image, from its first unfinished unit).
    pub(super) fn expire(&mut self, wall: jiff::Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        let secs = self
            .plan
            .deadline
            .duration_since(self.plan.accepted_at)
            .as_secs();
        let mut spoke = vec![false; self.plan.images.len()];
        for u in 0..self.units.len() {
            let img = &mut self.units[u];
            if img.state.terminal() {
                continue;
            }
            let mut message = format!("the build did not finish within timeoutSeconds ({secs}s)");
            if img.state == ImgState::Waiting
                && let Some(refused) = &img.quota_message
            {
                // Why it never ran: the quota, in the API server's words.
                message = format!(
                    "{message}: a ResourceQuota refused the build pod {} times, last: {refused}",
                    img.quota_tries
                );
            }
            img.state = ImgState::Failed;
            img.retry_at = None;
            img.finished_at = Some(wall);
            let f = Failure {
                reason: Reason::DeadlineExceeded,
                retryable: false,
                message,
                exit_code: None,
                log: None,
            };
            img.failure = Some(f.clone());
            let i = img.image;
            if std::mem::replace(&mut spoke[i], true) {
                continue;
            }
            let spec = &self.plan.images[i];
            out.push(self.image_event(u, Phase::Failed, wall, |d| {
                fill_failure(d, &f, None, spec);
            }));
        }
        out
    }

    pub(super) fn tick(&mut self, now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
        if now >= self.deadline {
            return self.expire(wall);
        }
        let mut out = Vec::new();
        for u in 0..self.units.len() {
            let img = &mut self.units[u];
            match img.state {
                ImgState::Pending
                    if img
                        .pending_since
                        .is_some_and(|s| now >= s + self.settings.pending_timeout) =>
                {
                    let (reason, detail) = img.stuck.clone().unwrap_or((
                        Reason::PendingTimeout,
                        "the pod was never scheduled or started".to_owned(),
                    ));
                    let f = Failure {
                        reason,
                        retryable: false,
                        message: format!(
                            "the pod stayed Pending for more than {}: {detail}",
                            humantime::format_duration(self.settings.pending_timeout)
                        ),
                        exit_code: None,
                        log: None,
                    };
                    out.extend(self.fail_attempt(u, &f, None, now, wall));
                }
                ImgState::Waiting if img.retry_at.is_some_and(|at| now >= at) => {
                    img.retry_at = None;
                    img.state = ImgState::Creating;
                    out.push(Action::CreatePod {
                        image: img.image,
                        step: img.step,
                        attempt: img.attempt,
                    });
                }
                ImgState::Retrying if img.retry_at.is_some_and(|at| now >= at) => {
                    img.retry_at = None;
                    img.attempt += 1;
                    img.state = ImgState::Creating;
                    img.stuck = None;
                    img.started_at = None;
                    img.finished_at = None;
                    out.push(Action::CreatePod {
                        image: img.image,
                        step: img.step,
                        attempt: img.attempt,
                    });
                }
                _ => {}
            }
        }
        out
    }
}
