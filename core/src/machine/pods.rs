//! What the pods and the build's other inputs do to the machine: pods
//! created, refused, observed or deleted, failed attempts, cancels, and
//! the settling of the build once no image is left active.

use std::sync::Arc;
use std::time::Instant;

use kiln_protocol::{Phase, Reason};

use super::events::{delete, fill_failure, masked_message};
use super::image::{ImgState, PodId};
use super::state::{Action, Machine, Stage};
use super::timers::quota_wait;
use crate::classify::{Failure, Observation, PodView, classify_with_log, hopeless};

impl Machine {
    pub(super) fn created(
        &mut self,
        i: usize,
        attempt: u32,
        pod: &PodView,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(img) = self.images.get_mut(i) else {
            return out;
        };
        if img.attempt != attempt || img.state != ImgState::Creating {
            return out;
        }
        img.state = ImgState::Pending;
        img.pod = Some(PodId::of(pod));
        img.pending_since = Some(now);
        img.quota_tries = 0;
        img.quota_message = None;
        let stale = std::mem::take(&mut img.stale);
        out.push(self.image_event(i, Phase::Scheduled, wall, |_| {}));
        // The previous attempt's pod stayed until this one existed.
        out.extend(stale.into_iter().map(delete));
        // The pod may already be past Pending (it existed: 409).
        out.extend(self.observe(pod, None, now, wall));
        out
    }

    /// A ResourceQuota refused the pod of the current attempt: wait
    /// [`quota_wait`] and try again. The first refusal of an attempt
    /// publishes `image.waiting` (id `<build>/<image>/<attempt>/waiting`);
    /// later ones only lengthen the wait. The request stays unacked (no pod
    /// exists), so nothing is lost if this worker dies meanwhile.
    pub(super) fn quota_refused(
        &mut self,
        i: usize,
        attempt: u32,
        message: String,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(img) = self.images.get_mut(i) else {
            return Vec::new();
        };
        if img.attempt != attempt || img.state != ImgState::Creating {
            return Vec::new();
        }
        img.quota_tries += 1;
        let wait = quota_wait(img.quota_tries);
        img.state = ImgState::Waiting;
        img.retry_at = Some(now + wait);
        if img.quota_tries > 1 {
            img.quota_message = Some(message);
            return Vec::new();
        }
        self.waits += 1;
        let known = kiln_protocol::secret_build_arg_values(&self.plan.images[i].build_args);
        let event = self.image_event(i, Phase::Waiting, wall, |d| {
            d.reason = Some(Reason::QuotaExceeded);
            d.message = Some(kiln_protocol::mask_text(
                &format!("a ResourceQuota refuses the build pod for now: {message}"),
                &known,
            ));
            d.retry_in_seconds = Some(wait.as_secs_f64());
        });
        self.images[i].quota_message = Some(message);
        vec![event]
    }

    pub(super) fn observe(
        &mut self,
        pod: &PodView,
        log_tail: Option<String>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(i) = self.plan.image_index(&pod.image) else {
            return Vec::new();
        };
        let img = &mut self.images[i];
        if pod.attempt != img.attempt || img.state.terminal() || img.state == ImgState::Retrying {
            return Vec::new();
        }
        if img.state == ImgState::Creating {
            // Seen by the watcher before the create call returned.
            return Vec::new();
        }
        if img.state == ImgState::Waiting {
            // The pod exists although the quota refused our create: the
            // previous owner created it (quota admission answers before the
            // name is checked, so a refused create may be a pod that exists).
            img.state = ImgState::Creating;
            img.retry_at = None;
            return self.created(i, pod.attempt, pod, now, wall);
        }
        match classify_with_log(pod, log_tail.as_deref()) {
            Observation::Pending { stuck } => {
                if hopeless(pod)
                    && let Some((reason, message)) = stuck.clone()
                {
                    let f = Failure {
                        reason,
                        retryable: false,
                        message,
                        exit_code: None,
                        log: None,
                    };
                    return self.fail_attempt(i, &f, log_tail, now, wall);
                }
                img.stuck = stuck;
                Vec::new()
            }
            Observation::Running { since } => {
                if img.state == ImgState::Pending {
                    img.state = ImgState::Running;
                    img.started_at = since.or(Some(wall));
                    img.pending_since = None;
                    img.stuck = None;
                    vec![self.image_event(i, Phase::Running, wall, |_| {})]
                } else {
                    Vec::new()
                }
            }
            Observation::Succeeded {
                digest,
                started_at,
                finished_at,
            } => {
                let attempt = img.attempt;
                img.state = ImgState::Succeeded;
                img.digest = digest;
                img.started_at = img.started_at.or(started_at);
                img.finished_at = finished_at.or(Some(wall));
                img.pending_since = None;
                let provenance = match (&self.settings.provenance, &self.images[i].digest) {
                    (Some(a), Some(digest)) => a.attest(&self.plan, i, attempt, digest, pod),
                    _ => None,
                };
                vec![self.image_event(i, Phase::Succeeded, wall, |d| {
                    d.provenance = provenance;
                })]
            }
            Observation::Failed(f) => self.fail_attempt(i, &f, log_tail, now, wall),
        }
    }

    pub(super) fn deleted(
        &mut self,
        pod: &PodView,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(i) = self.plan.image_index(&pod.image) else {
            return Vec::new();
        };
        let img = &self.images[i];
        let current = img.pod.as_ref().is_some_and(|p| p.uid == pod.uid);
        if !current || img.state.terminal() || img.state == ImgState::Retrying {
            return Vec::new();
        }
        // Deleted by someone else before it finished (node drain, operator):
        // another attempt may succeed.
        self.images[i].pod = None;
        let f = Failure {
            reason: Reason::Evicted,
            retryable: true,
            message: "the build pod was deleted before it finished".into(),
            exit_code: None,
            log: None,
        };
        self.fail_attempt(i, &f, None, now, wall)
    }

    /// An attempt failed: retry after a backoff, or fail the image for good.
    pub(super) fn fail_attempt(
        &mut self,
        i: usize,
        f: &Failure,
        log_tail: Option<String>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let attempt = self.images[i].attempt;
        let delay = self.backoff(i, attempt);
        let retry = f.retryable && attempt < self.plan.max_attempts && now + delay < self.deadline;
        let log_tail = log_tail.or_else(|| f.log.clone());
        let plan = Arc::clone(&self.plan);
        let spec = &plan.images[i];
        let img = &mut self.images[i];
        img.finished_at = Some(wall);
        img.pending_since = None;
        img.failure = Some(f.clone());
        if retry {
            img.state = ImgState::Retrying;
            img.retry_at = Some(now + delay);
            if let Some(p) = img.pod.take() {
                img.stale.push(p);
            }
            vec![self.image_event(i, Phase::Retrying, wall, |d| {
                fill_failure(d, f, log_tail.clone(), spec);
                d.retry_in_seconds = Some(delay.as_secs_f64());
            })]
        } else {
            img.state = ImgState::Failed;
            vec![self.image_event(i, Phase::Failed, wall, |d| {
                fill_failure(d, f, log_tail.clone(), spec);
            })]
        }
    }

    pub(super) fn cancel(&mut self, reason: &str, wall: jiff::Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..self.images.len() {
            out.extend(self.cancel_image(i, reason, wall));
        }
        out.extend(self.finish(Phase::Cancelled, wall, |d| {
            d.reason = Some(Reason::Cancelled);
            d.message = Some(reason.to_owned());
        }));
        out
    }

    pub(super) fn cancel_image(
        &mut self,
        i: usize,
        message: &str,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let img = &mut self.images[i];
        if img.state.terminal() {
            return Vec::new();
        }
        img.state = ImgState::Cancelled;
        img.finished_at = Some(wall);
        img.retry_at = None;
        img.pending_since = None;
        // The pods stay until the build's terminal event is out (`finish`
        // deletes them after it): a worker that dies in between leaves the
        // pods, and whoever adopts them publishes the end. Deleted first,
        // they would take the only trace of the build with them.
        vec![self.image_event(i, Phase::Cancelled, wall, |d| {
            d.reason = Some(Reason::Cancelled);
            d.message = Some(message.to_owned());
        })]
    }

    /// Ends the build when its images say so.
    pub(super) fn settle(&mut self, _now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
        if self.stage != Stage::Active {
            return Vec::new();
        }
        let failed = self.images.iter().position(|i| i.state == ImgState::Failed);
        if let Some(first) = failed {
            let mut out = Vec::new();
            let name = self.plan.images[first].name.clone();
            for i in 0..self.images.len() {
                out.extend(self.cancel_image(i, &format!("image {name} failed"), wall));
            }
            let f = self.images[first].failure.clone();
            let message = f
                .as_ref()
                .map(|f| masked_message(f, &self.plan.images[first]));
            out.extend(self.finish(Phase::Failed, wall, |d| {
                if let (Some(f), Some(message)) = (&f, message) {
                    d.reason = Some(f.reason);
                    d.message = Some(format!("image {name}: {message}"));
                    d.exit_code = f.exit_code;
                }
            }));
            return out;
        }
        if self.images.iter().all(|i| i.state == ImgState::Succeeded) {
            return self.finish(Phase::Succeeded, wall, |_| {});
        }
        if self.images.iter().all(|i| i.state.terminal()) {
            // Cancelled images with no failure: only reachable through cancel.
            return self.finish(Phase::Cancelled, wall, |d| {
                d.reason = Some(Reason::Cancelled);
            });
        }
        Vec::new()
    }
}
