//! What the pods and the build's other inputs do to the machine: pods
//! created, refused, observed or deleted, failed attempts, cancels, and
//! the settling of the build once no image is left active.

use std::sync::Arc;
use std::time::Instant;

use kiln_protocol::{Phase, Reason};

use super::events::{delete, fill_failure, masked_message};
use super::image::{ImgState, PodId};
use super::platforms::classify_publish;
use super::state::{Action, Machine, Stage};
use super::timers::quota_wait;
use crate::classify::{Failure, Observation, PodView, classify_with_log, hopeless};
use crate::plan::Step;

impl Machine {
    pub(super) fn created(
        &mut self,
        u: usize,
        attempt: u32,
        pod: &PodView,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(img) = self.units.get_mut(u) else {
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
        out.push(self.image_event(u, Phase::Scheduled, wall, |_| {}));
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
        u: usize,
        attempt: u32,
        message: String,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(img) = self.units.get_mut(u) else {
            return Vec::new();
        };
        if img.attempt != attempt || img.state != ImgState::Creating {
            return Vec::new();
        }
        let i = img.image;
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
        let event = self.image_event(u, Phase::Waiting, wall, |d| {
            d.reason = Some(Reason::QuotaExceeded);
            d.message = Some(kiln_protocol::mask_text(
                &format!("a ResourceQuota refuses the build pod for now: {message}"),
                &known,
            ));
            d.retry_in_seconds = Some(wait.as_secs_f64());
        });
        self.units[u].quota_message = Some(message);
        vec![event]
    }

    pub(super) fn observe(
        &mut self,
        pod: &PodView,
        log_tail: Option<String>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(u) = self.unit_of(pod) else {
            return Vec::new();
        };
        let namespace = &self.plan.namespace;
        let img = &mut self.units[u];
        if pod.attempt != img.attempt || img.state.terminal() || img.state == ImgState::Retrying {
            return Vec::new();
        }
        if matches!(img.state, ImgState::Creating | ImgState::Blocked) {
            // Seen by the watcher before the create call returned.
            return Vec::new();
        }
        if img.state == ImgState::Waiting {
            // A pod under this attempt's name exists although the quota
            // refused our create: the previous owner may have created it
            // (quota admission answers before the name is checked). Its
            // labels prove nothing (anyone who may create pods in the
            // namespace can copy them): create again now, and the pod
            // client takes the existing pod only if it is provably the one
            // Kiln creates (its content hash, plan and tenant).
            if pod.namespace != *namespace {
                return Vec::new();
            }
            img.state = ImgState::Creating;
            img.retry_at = None;
            return vec![Action::CreatePod {
                image: img.image,
                step: img.step,
                attempt: img.attempt,
            }];
        }
        // Only the pod this build created or adopted speaks for it: same
        // namespace, same uid. Another pod with its annotations and labels
        // (made by anyone who may create pods somewhere Kiln watches)
        // changes nothing (docs/protocol.md: only Kiln's own objects speak for a build).
        if !img.pod.as_ref().is_some_and(|p| p.is(pod)) {
            return Vec::new();
        }
        let observation = if img.step == Step::Publish {
            classify_publish(pod)
        } else {
            classify_with_log(pod, log_tail.as_deref())
        };
        match observation {
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
                    return self.fail_attempt(u, &f, log_tail, now, wall);
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
                    vec![self.image_event(u, Phase::Running, wall, |_| {})]
                } else {
                    Vec::new()
                }
            }
            Observation::Succeeded {
                digest,
                started_at,
                finished_at,
            } => {
                img.state = ImgState::Succeeded;
                img.digest = digest;
                img.started_at = img.started_at.or(started_at);
                img.finished_at = finished_at.or(Some(wall));
                img.pending_since = None;
                self.unit_succeeded(u, pod, wall)
            }
            Observation::Failed(f) => self.fail_attempt(u, &f, log_tail, now, wall),
        }
    }

    pub(super) fn deleted(
        &mut self,
        pod: &PodView,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let Some(u) = self.unit_of(pod) else {
            return Vec::new();
        };
        let img = &self.units[u];
        let current = img.pod.as_ref().is_some_and(|p| p.is(pod));
        if !current || img.state.terminal() || img.state == ImgState::Retrying {
            return Vec::new();
        }
        // Deleted by someone else before it finished (node drain, operator):
        // another attempt may succeed.
        self.units[u].pod = None;
        let f = Failure {
            reason: Reason::Evicted,
            retryable: true,
            message: "the build pod was deleted before it finished".into(),
            exit_code: None,
            log: None,
        };
        self.fail_attempt(u, &f, None, now, wall)
    }

    /// An attempt failed: retry after a backoff, or fail the image for good.
    pub(super) fn fail_attempt(
        &mut self,
        u: usize,
        f: &Failure,
        log_tail: Option<String>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let attempt = self.units[u].attempt;
        let delay = self.backoff(u, attempt);
        let retry = f.retryable && attempt < self.plan.max_attempts && now + delay < self.deadline;
        let log_tail = log_tail.or_else(|| f.log.clone());
        let plan = Arc::clone(&self.plan);
        let img = &mut self.units[u];
        let spec = &plan.images[img.image];
        img.finished_at = Some(wall);
        img.pending_since = None;
        img.failure = Some(f.clone());
        if retry {
            img.state = ImgState::Retrying;
            img.retry_at = Some(now + delay);
            if let Some(p) = img.pod.take() {
                img.stale.push(p);
            }
            vec![self.image_event(u, Phase::Retrying, wall, |d| {
                fill_failure(d, f, log_tail.clone(), spec);
                d.retry_in_seconds = Some(delay.as_secs_f64());
            })]
        } else {
            img.state = ImgState::Failed;
            vec![self.image_event(u, Phase::Failed, wall, |d| {
                fill_failure(d, f, log_tail.clone(), spec);
            })]
        }
    }

    pub(super) fn cancel(&mut self, reason: &str, wall: jiff::Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..self.plan.images.len() {
            out.extend(self.cancel_image(i, reason, wall));
        }
        out.extend(self.finish(Phase::Cancelled, wall, |d| {
            d.reason = Some(Reason::Cancelled);
            d.message = Some(reason.to_owned());
        }));
        out
    }

    /// Cancels what is left of image `i`: one `image.cancelled` (from its
    /// last unit: its own pod, or the publish step), none when the image
    /// has ended already (a platform that failed ended it: its siblings
    /// stop quietly).
    pub(super) fn cancel_image(
        &mut self,
        i: usize,
        message: &str,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let over = self.image_over(i);
        let mut speaker = None;
        for (u, img) in self.units.iter_mut().enumerate() {
            if img.image != i || img.state.terminal() {
                continue;
            }
            img.state = ImgState::Cancelled;
            img.finished_at = Some(wall);
            img.retry_at = None;
            img.pending_since = None;
            speaker = Some(u);
        }
        // The pods stay until the build's terminal event is out (`finish`
        // deletes them after it): a worker that dies in between leaves the
        // pods, and whoever adopts them publishes the end. Deleted first,
        // they would take the only trace of the build with them.
        match speaker {
            Some(u) if !over => vec![self.image_event(u, Phase::Cancelled, wall, |d| {
                d.reason = Some(Reason::Cancelled);
                d.message = Some(message.to_owned());
            })],
            _ => Vec::new(),
        }
    }

    /// Ends the build when its images say so; first, starts the publish
    /// step of every image whose platforms all succeeded.
    pub(super) fn settle(&mut self, _now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
        if self.stage != Stage::Active {
            return Vec::new();
        }
        let failed = self.units.iter().find(|u| u.state == ImgState::Failed);
        if let Some(first) = failed {
            let first_image = first.image;
            let f = first.failure.clone();
            let mut out = Vec::new();
            let name = self.plan.images[first_image].name.clone();
            for i in 0..self.plan.images.len() {
                out.extend(self.cancel_image(i, &format!("image {name} failed"), wall));
            }
            let message = f
                .as_ref()
                .map(|f| masked_message(f, &self.plan.images[first_image]));
            out.extend(self.finish(Phase::Failed, wall, |d| {
                if let (Some(f), Some(message)) = (&f, message) {
                    d.reason = Some(f.reason);
                    d.message = Some(format!("image {name}: {message}"));
                    d.exit_code = f.exit_code;
                }
            }));
            return out;
        }
        let mut out = self.unblock_publish();
        if self.units.iter().all(|i| i.state == ImgState::Succeeded) {
            out.extend(self.finish(Phase::Succeeded, wall, |_| {}));
        } else if self.units.iter().all(|i| i.state.terminal()) {
            // Cancelled images with no failure: only reachable through cancel.
            out.extend(self.finish(Phase::Cancelled, wall, |d| {
                d.reason = Some(Reason::Cancelled);
            }));
        }
        out
    }
}
