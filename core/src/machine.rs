//! The state machine of one build. Pure: it does no IO and never reads a
//! clock. Inputs are pod observations, the results of the actions it asked
//! for, cancels and timer ticks, each with the current time; outputs are
//! [`Action`]s that the supervisor executes in order.
//!
//! Ordering is the contract: an action list is executed front to back, and
//! the machine always asks to publish an outcome before it asks to delete the
//! pod that produced it, and to publish the terminal `build.*` event before
//! deleting the pods that remain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::{BuildEvent, EventData, ImageSummary, Level, Phase, PodRef, Reason};

use crate::classify::{Failure, Observation, PodView, classify, classify_with_log, hopeless};
use crate::plan::{BuildPlan, ImagePlan};

/// Knobs of the machine, from the worker configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pending_timeout: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `kilnworker`.
    pub worker: String,
}

/// Something that happened to the build. Pod views are boxed: inputs wait
/// in per-build channels, and a small `Input` keeps 10,000 idle builds cheap.
#[derive(Debug, Clone)]
pub enum Input {
    /// The pod of `attempt` exists (created now, or found: 409 = adopt).
    PodCreated {
        image: usize,
        attempt: u32,
        pod: Box<PodView>,
    },
    /// A ResourceQuota of the namespace refused the pod of `attempt` for
    /// now (403 `exceeded quota`): wait and try again, within the deadline.
    QuotaExceeded {
        image: usize,
        attempt: u32,
        /// The API server's message (quota name, requested, used, limited).
        message: String,
    },
    /// The pod cannot be created and retrying will not help (invalid spec,
    /// forbidden, namespace missing).
    PodCreateFailed {
        image: usize,
        attempt: u32,
        message: String,
    },
    /// The watcher saw a pod of this build; `log_tail` is the masked tail of
    /// its log when it failed.
    Observed {
        pod: Box<PodView>,
        log_tail: Option<String>,
    },
    /// The watcher saw a pod of this build disappear.
    Deleted(Box<PodView>),
    /// Someone asked to cancel the build.
    Cancel(String),
    /// A timer armed through [`Machine::next_wakeup`] is due.
    Tick,
}

/// Something the supervisor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreatePod {
        image: usize,
        attempt: u32,
    },
    DeletePod {
        namespace: String,
        name: String,
        uid: String,
    },
    Publish(Box<BuildEvent>),
    /// The terminal event is confirmed once the actions before this one ran:
    /// release the lease and remember the outcome (and its reason).
    Finished(Phase, Option<Reason>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImgState {
    /// Pod of the current attempt asked for, not yet known to exist.
    Creating,
    Pending,
    Running,
    /// Waiting out the backoff before the next attempt.
    Retrying,
    /// The pod of the current attempt was refused by a ResourceQuota:
    /// waiting before trying to create it again.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl ImgState {
    fn terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    fn phase(self) -> Phase {
        match self {
            Self::Creating | Self::Pending => Phase::Scheduled,
            Self::Running => Phase::Running,
            Self::Retrying => Phase::Retrying,
            Self::Waiting => Phase::Waiting,
            Self::Succeeded => Phase::Succeeded,
            Self::Failed => Phase::Failed,
            Self::Cancelled => Phase::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodId {
    namespace: String,
    name: String,
    uid: String,
}

impl PodId {
    fn of(v: &PodView) -> Self {
        Self {
            namespace: v.namespace.clone(),
            name: v.name.clone(),
            uid: v.uid.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Img {
    attempt: u32,
    state: ImgState,
    /// Pod of the current attempt.
    pod: Option<PodId>,
    /// Pods of earlier attempts, deleted once the current one exists.
    stale: Vec<PodId>,
    pending_since: Option<Instant>,
    stuck: Option<(Reason, String)>,
    retry_at: Option<Instant>,
    started_at: Option<jiff::Timestamp>,
    finished_at: Option<jiff::Timestamp>,
    digest: Option<String>,
    failure: Option<Failure>,
    /// Refusals by a ResourceQuota of the current attempt's pod so far, and
    /// the API server's last message about it.
    quota_tries: u32,
    quota_message: Option<String>,
}

impl Img {
    fn new(attempt: u32) -> Self {
        Self {
            attempt,
            state: ImgState::Creating,
            pod: None,
            stale: Vec::new(),
            pending_since: None,
            stuck: None,
            retry_at: None,
            started_at: None,
            finished_at: None,
            digest: None,
            failure: None,
            quota_tries: 0,
            quota_message: None,
        }
    }
}

/// Where one image stands, for records and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub name: String,
    pub phase: Phase,
    pub attempt: u32,
    pub pod: Option<String>,
    pub digest: Option<String>,
    /// Why the image waits (`QuotaExceeded`) or why its last attempt failed.
    pub reason: Option<Reason>,
}

/// Where the build as a whole stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Active,
    /// The terminal event and the clean-up were asked for.
    Done(Phase),
}

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
fn jitter_fraction(build_id: &str, image: &str, attempt: u32) -> f64 {
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

/// One build.
#[derive(Debug)]
pub struct Machine {
    plan: Arc<BuildPlan>,
    settings: Arc<Settings>,
    images: Vec<Img>,
    deadline: Instant,
    stage: Stage,
    /// Quota waits begun so far (each publishes one `image.waiting`): the
    /// build task writes the record when this changes.
    waits: u64,
}

impl Machine {
    /// An active build of `images`, due at the plan's deadline.
    fn active(
        plan: Arc<BuildPlan>,
        settings: Arc<Settings>,
        images: Vec<Img>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Self {
        let deadline = now + plan.remaining(wall);
        Self {
            plan,
            settings,
            images,
            deadline,
            stage: Stage::Active,
            waits: 0,
        }
    }

    /// A new build: publish `build.accepted`, then create attempt 1 of every
    /// image.
    pub fn start(
        plan: Arc<BuildPlan>,
        settings: Arc<Settings>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> (Self, Vec<Action>) {
        let images = plan.images.iter().map(|_| Img::new(1)).collect();
        let m = Self::active(plan, settings, images, now, wall);
        let mut out = vec![Action::Publish(Box::new(m.build_event(
            Phase::Accepted,
            wall,
            None,
        )))];
        for i in 0..m.images.len() {
            out.push(Action::CreatePod {
                image: i,
                attempt: 1,
            });
        }
        (m, out)
    }

    /// A build cancelled while its request was still queued: no pod was
    /// ever created, so the machine only publishes `build.cancelled` and
    /// finishes. Going through the machine keeps one path that finishes a
    /// build (the `Finished` action).
    pub fn start_cancelled(
        plan: Arc<BuildPlan>,
        settings: Arc<Settings>,
        reason: &str,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> (Self, Vec<Action>) {
        let images = plan
            .images
            .iter()
            .map(|_| Img {
                state: ImgState::Cancelled,
                ..Img::new(0)
            })
            .collect();
        let mut m = Self::active(plan, settings, images, now, wall);
        let out = m.finish(Phase::Cancelled, wall, |d| {
            d.reason = Some(Reason::Cancelled);
            d.message = Some(reason.to_owned());
        });
        (m, out)
    }

    /// Resumes a build from its pods (takeover). Events already published by
    /// the previous owner are not repeated, except terminal image events
    /// (their ids are deterministic, so a repeat is recognisable).
    pub fn adopt(
        plan: Arc<BuildPlan>,
        settings: Arc<Settings>,
        pods: &[PodView],
        now: Instant,
        wall: jiff::Timestamp,
    ) -> (Self, Vec<Action>) {
        let mut images: Vec<Img> = Vec::with_capacity(plan.images.len());
        let mut latest: Vec<Option<PodView>> = Vec::with_capacity(plan.images.len());
        for spec in &plan.images {
            let mut mine: Vec<&PodView> = pods.iter().filter(|p| p.image == spec.name).collect();
            mine.sort_by_key(|p| p.attempt);
            let mut img = Img::new(mine.last().map_or(1, |p| p.attempt));
            img.stale = mine
                .iter()
                .take(mine.len().saturating_sub(1))
                .map(|p| PodId::of(p))
                .collect();
            latest.push(mine.last().map(|p| (*p).clone()));
            images.push(img);
        }
        let mut m = Self::active(plan, settings, images, now, wall);
        let mut out = Vec::new();
        let any_failed = latest.iter().flatten().any(|p| {
            matches!(classify(p), Observation::Failed(ref f) if !f.retryable || p.attempt >= m.plan.max_attempts)
        });
        for (i, pod) in latest.into_iter().enumerate() {
            match pod {
                None if any_failed => m.images[i].state = ImgState::Cancelled,
                // The previous owner died before this pod existed: create it
                // (a 409 adopts it if it appeared meanwhile).
                None => out.push(Action::CreatePod {
                    image: i,
                    attempt: m.images[i].attempt,
                }),
                Some(pod) => {
                    let img = &mut m.images[i];
                    img.pod = Some(PodId::of(&pod));
                    img.pending_since = Some(now);
                    match classify(&pod) {
                        Observation::Pending { stuck } => {
                            img.state = ImgState::Pending;
                            img.stuck = stuck;
                        }
                        Observation::Running { since } => {
                            img.state = ImgState::Running;
                            img.started_at = since;
                        }
                        // Terminal pods go through the usual path below.
                        _ => img.state = ImgState::Running,
                    }
                    out.extend(m.observe(&pod, None, now, wall));
                }
            }
        }
        out.extend(m.settle(now, wall));
        (m, out)
    }

    pub fn plan(&self) -> &Arc<BuildPlan> {
        &self.plan
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// How many quota waits began so far (one `image.waiting` each).
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// Whether an image waits for a ResourceQuota now.
    pub fn quota_waiting(&self) -> bool {
        self.stage == Stage::Active && self.images.iter().any(|i| i.state == ImgState::Waiting)
    }

    /// Whether every image's current pod exists (or the image is over):
    /// the moment a build request may be acked.
    pub fn pods_exist(&self) -> bool {
        self.images
            .iter()
            .all(|i| i.state.terminal() || i.pod.is_some() || i.state == ImgState::Retrying)
    }

    /// Current phase and attempt per image, for records and status.
    pub fn image_states(&self) -> Vec<ImageState> {
        self.plan
            .images
            .iter()
            .zip(&self.images)
            .map(|(spec, img)| ImageState {
                name: spec.name.clone(),
                phase: img.state.phase(),
                attempt: img.attempt,
                pod: img.pod.as_ref().map(|p| p.name.clone()),
                digest: img.digest.clone(),
                reason: match img.state {
                    ImgState::Waiting => Some(Reason::QuotaExceeded),
                    ImgState::Retrying | ImgState::Failed => img.failure.as_ref().map(|f| f.reason),
                    _ => None,
                },
            })
            .collect()
    }

    /// When the machine next wants a [`Input::Tick`].
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.stage != Stage::Active {
            return None;
        }
        let mut next = self.deadline;
        for img in &self.images {
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

    /// Feeds one input; returns the actions to execute, in order.
    pub fn handle(&mut self, input: Input, now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
        if self.stage != Stage::Active {
            return Vec::new();
        }
        let mut out = Vec::new();
        match input {
            Input::PodCreated {
                image,
                attempt,
                pod,
            } => out.extend(self.created(image, attempt, &pod, now, wall)),
            Input::QuotaExceeded {
                image,
                attempt,
                message,
            } => out.extend(self.quota_refused(image, attempt, message, now, wall)),
            Input::PodCreateFailed {
                image,
                attempt,
                message,
            } => {
                if self.images.get(image).is_some_and(|i| i.attempt == attempt) {
                    let f = Failure {
                        reason: Reason::ConfigError,
                        retryable: false,
                        message: format!("the build pod could not be created: {message}"),
                        exit_code: None,
                        log: None,
                    };
                    out.extend(self.fail_attempt(image, &f, None, now, wall));
                }
            }
            Input::Observed { pod, log_tail } => {
                out.extend(self.observe(&pod, log_tail, now, wall));
            }
            Input::Deleted(pod) => out.extend(self.deleted(&pod, now, wall)),
            Input::Cancel(reason) => out.extend(self.cancel(&reason, wall)),
            Input::Tick => out.extend(self.tick(now, wall)),
        }
        out.extend(self.settle(now, wall));
        out
    }

    fn created(
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
    fn quota_refused(
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

    fn observe(
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
                img.state = ImgState::Succeeded;
                img.digest = digest;
                img.started_at = img.started_at.or(started_at);
                img.finished_at = finished_at.or(Some(wall));
                img.pending_since = None;
                vec![self.image_event(i, Phase::Succeeded, wall, |_| {})]
            }
            Observation::Failed(f) => self.fail_attempt(i, &f, log_tail, now, wall),
        }
    }

    fn deleted(&mut self, pod: &PodView, now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
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
    fn fail_attempt(
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

    /// The wait before the attempt after `attempt` of image `i`.
    fn backoff(&self, i: usize, attempt: u32) -> Duration {
        backoff(
            &self.settings,
            &self.plan.id,
            &self.plan.images[i].name,
            attempt,
        )
    }

    fn cancel(&mut self, reason: &str, wall: jiff::Timestamp) -> Vec<Action> {
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

    fn cancel_image(&mut self, i: usize, message: &str, wall: jiff::Timestamp) -> Vec<Action> {
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

    /// The build's deadline passed: every unfinished image fails.
    fn expire(&mut self, wall: jiff::Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        let secs = self
            .plan
            .deadline
            .duration_since(self.plan.accepted_at)
            .as_secs();
        for i in 0..self.images.len() {
            let img = &mut self.images[i];
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
            let spec = &self.plan.images[i];
            out.push(self.image_event(i, Phase::Failed, wall, |d| {
                fill_failure(d, &f, None, spec);
            }));
        }
        out
    }

    fn tick(&mut self, now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
        if now >= self.deadline {
            return self.expire(wall);
        }
        let mut out = Vec::new();
        for i in 0..self.images.len() {
            let img = &mut self.images[i];
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
                    out.extend(self.fail_attempt(i, &f, None, now, wall));
                }
                ImgState::Waiting if img.retry_at.is_some_and(|at| now >= at) => {
                    img.retry_at = None;
                    img.state = ImgState::Creating;
                    out.push(Action::CreatePod {
                        image: i,
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
                        image: i,
                        attempt: img.attempt,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// Ends the build when its images say so.
    fn settle(&mut self, _now: Instant, wall: jiff::Timestamp) -> Vec<Action> {
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

    fn finish(
        &mut self,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: impl FnOnce(&mut EventData),
    ) -> Vec<Action> {
        if self.stage != Stage::Active {
            return Vec::new();
        }
        self.stage = Stage::Done(phase);
        let summary = self.summary();
        let event = self.build_event(
            phase,
            wall,
            Some(Box::new(|d: &mut EventData| {
                d.images = Some(summary);
                fill(d);
            })),
        );
        let reason = event.data.reason;
        let mut out = vec![Action::Publish(Box::new(event))];
        for img in &mut self.images {
            let pods: Vec<PodId> = img
                .pod
                .take()
                .into_iter()
                .chain(img.stale.drain(..))
                .collect();
            out.extend(pods.into_iter().map(delete));
        }
        out.push(Action::Finished(phase, reason));
        out
    }

    fn summary(&self) -> Vec<ImageSummary> {
        self.plan
            .images
            .iter()
            .zip(&self.images)
            .map(|(spec, img)| ImageSummary {
                name: spec.name.clone(),
                phase: img.state.phase(),
                digest: img.digest.clone(),
                attempts: img.attempt,
                image_refs: image_refs(&spec.destinations, img.digest.as_deref()),
                reason: match img.state {
                    ImgState::Failed | ImgState::Cancelled => {
                        img.failure.as_ref().map_or(Some(Reason::Cancelled), |f| {
                            if img.state == ImgState::Cancelled {
                                Some(Reason::Cancelled)
                            } else {
                                Some(f.reason)
                            }
                        })
                    }
                    _ => None,
                },
            })
            .collect()
    }

    /// Event data with what every event of this build carries.
    fn base_data(&self, phase: Phase) -> EventData {
        let mut d = EventData::for_build(self.plan.id.clone(), phase);
        d.max_attempts = Some(self.plan.max_attempts);
        d.app.clone_from(&self.plan.app);
        d.component.clone_from(&self.plan.component);
        d.labels.clone_from(&self.plan.labels);
        d.tenant = Some(self.plan.tenant.clone());
        d
    }

    /// The CloudEvent around `data`: id, type and subject follow from it.
    fn envelope(&self, wall: jiff::Timestamp, data: EventData) -> BuildEvent {
        BuildEvent::new(
            self.settings.source.clone(),
            self.settings.worker.clone(),
            wall,
            data,
        )
        .with_traceparent(self.plan.traceparent.clone())
    }

    #[allow(clippy::type_complexity)]
    fn build_event(
        &self,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: Option<Box<dyn FnOnce(&mut EventData) + '_>>,
    ) -> BuildEvent {
        let mut data = self.base_data(phase);
        if phase.is_terminal(Level::Build) {
            data.started_at = Some(self.plan.accepted_at);
            data.finished_at = Some(wall);
            data.duration_seconds = Some(seconds_between(self.plan.accepted_at, wall));
        }
        if let Some(fill) = fill {
            fill(&mut data);
        }
        self.envelope(wall, data)
    }

    fn image_event(
        &self,
        i: usize,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: impl FnOnce(&mut EventData),
    ) -> Action {
        let spec = &self.plan.images[i];
        let img = &self.images[i];
        let mut data = self.base_data(phase);
        data.image = Some(spec.name.clone());
        data.attempt = Some(img.attempt);
        data.pod = img.pod.as_ref().or(img.stale.last()).map(|p| PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        });
        data.started_at = img.started_at;
        if phase.is_terminal(Level::Image) || phase == Phase::Retrying {
            data.finished_at = img.finished_at;
            if let (Some(s), Some(f)) = (img.started_at, img.finished_at) {
                data.duration_seconds = Some(seconds_between(s, f));
            }
        }
        if phase == Phase::Succeeded {
            data.digest.clone_from(&img.digest);
            data.image_refs = image_refs(&spec.destinations, img.digest.as_deref());
        }
        fill(&mut data);
        Action::Publish(Box::new(self.envelope(wall, data)))
    }
}

/// The failure's text goes through the masker: the message often quotes the
/// last log line (a `RUN` step that printed `Authorization: Bearer …` or a
/// secret build arg), and the values of secret-looking build args are known.
fn fill_failure(d: &mut EventData, f: &Failure, log_tail: Option<String>, image: &ImagePlan) {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    d.reason = Some(f.reason);
    d.message = Some(masked_message(f, image));
    d.exit_code = f.exit_code;
    d.log_tail = log_tail.map(|l| kiln_protocol::mask_secrets(&l, &known));
}

/// The failure's message as every event that quotes it shows it: the
/// image's and the build's (`build.failed` repeats it).
fn masked_message(f: &Failure, image: &ImagePlan) -> String {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    kiln_protocol::mask_text(&f.message, &known)
}

fn delete(p: PodId) -> Action {
    Action::DeletePod {
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
    }
}

fn image_refs(destinations: &[String], digest: Option<&str>) -> Vec<String> {
    digest.map_or_else(Vec::new, |d| {
        destinations
            .iter()
            .map(|dst| format!("{dst}@{d}"))
            .collect()
    })
}

fn seconds_between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    let secs = b.duration_since(a).as_secs_f64();
    (secs * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::classify::{PodPhase, Terminated};

    /// The machine takes `std::time::Instant`s as inputs; the tests inject
    /// them from a clock of their own (a fixed origin plus what `advance`
    /// added; one per test thread), so every instant and delay they assert
    /// is exact.
    struct Instant;
    impl Instant {
        fn now() -> std::time::Instant {
            CLOCK.with(|(origin, elapsed)| *origin + elapsed.get())
        }
    }

    thread_local! {
        static CLOCK: (std::time::Instant, std::cell::Cell<Duration>) = (
            // Any origin will do (an `Instant` has no other constructor):
            // the tests compare instants with each other only.
            #[expect(clippy::disallowed_methods, reason = "the test clock's origin")]
            std::time::Instant::now(),
            std::cell::Cell::new(Duration::ZERO),
        );
    }

    /// Moves the test clock forward.
    fn advance(by: Duration) {
        CLOCK.with(|(_, elapsed)| elapsed.set(elapsed.get() + by));
    }

    use kiln_protocol::BuildContext;
    use std::collections::BTreeMap;

    fn plan(images: &[&str], max_attempts: u32, timeout_secs: i64) -> Arc<BuildPlan> {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        Arc::new(BuildPlan {
            id: "b1".into(),
            tenant: "default".into(),
            fingerprint: String::new(),
            namespace: "ns".into(),
            app: Some("shop".into()),
            component: None,
            labels: BTreeMap::new(),
            max_attempts,
            accepted_at: now,
            deadline: now + jiff::SignedDuration::from_secs(timeout_secs),
            traceparent: None,
            service_account: "kiln-builder".into(),
            registry_secret: None,
            git_secret: None,
            s3_secret: None,
            s3_region: None,
            s3_endpoint: None,
            cache_repo: None,
            runtime_class_name: None,
            images: images
                .iter()
                .map(|n| ImagePlan {
                    name: (*n).into(),
                    context: BuildContext {
                        git: None,
                        s3: None,
                        url: Some("https://example.com/c.tar.gz".into()),
                    },
                    dockerfile: "Dockerfile".into(),
                    rendered_dockerfile: None,
                    build_args: BTreeMap::new(),
                    target: None,
                    destinations: vec![format!("r.example.com/{n}:1")],
                    platform: None,
                    cache: false,
                    cpu: "1".into(),
                    memory: "1Gi".into(),
                    ephemeral_storage: None,
                })
                .collect(),
        })
    }

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            pending_timeout: Duration::from_secs(60),
            retry_base_delay: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(40),
            source: "urn:kiln:test".into(),
            worker: "w1".into(),
        })
    }

    fn wall(m: &Machine) -> jiff::Timestamp {
        m.plan.accepted_at
    }

    fn pod(image: &str, attempt: u32, phase: PodPhase) -> PodView {
        PodView {
            namespace: "ns".into(),
            name: format!("kiln-b1-{image}-{attempt}"),
            uid: format!("uid-{image}-{attempt}"),
            build_id: "b1".into(),
            image: image.into(),
            attempt,
            phase: Some(phase),
            ..PodView::default()
        }
    }

    fn succeeded(image: &str, attempt: u32) -> PodView {
        let mut p = pod(image, attempt, PodPhase::Succeeded);
        p.terminated = Some(Terminated {
            message: Some(format!("sha256:{}", "b".repeat(64))),
            ..Terminated::default()
        });
        p
    }

    fn failed(image: &str, attempt: u32, reason: &str, msg: &str) -> PodView {
        let mut p = pod(image, attempt, PodPhase::Failed);
        p.terminated = Some(Terminated {
            exit_code: if reason == "OOMKilled" { 137 } else { 1 },
            reason: Some(reason.into()),
            message: Some(msg.into()),
            ..Terminated::default()
        });
        p
    }

    /// Routing keys of published events and the other actions, compactly.
    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Publish(ev) => {
                    let key = kiln_protocol::routing_key(ev.level(), ev.data.phase);
                    match (&ev.data.image, ev.data.attempt) {
                        (Some(i), Some(n)) => format!("{key}:{i}#{n}"),
                        _ => key,
                    }
                }
                Action::CreatePod { image, attempt } => format!("create:{image}#{attempt}"),
                Action::DeletePod { name, .. } => format!("delete:{name}"),
                Action::Finished(p, _) => format!("finished:{}", p.as_str()),
            })
            .collect()
    }

    fn feed(m: &mut Machine, input: Input) -> Vec<String> {
        let w = wall(m);
        summary(&m.handle(input, Instant::now(), w))
    }

    fn created(m: &mut Machine, i: usize, image: &str, attempt: u32) -> Vec<String> {
        feed(
            m,
            Input::PodCreated {
                image: i,
                attempt,
                pod: Box::new(pod(image, attempt, PodPhase::Pending)),
            },
        )
    }

    fn observed(m: &mut Machine, p: PodView) -> Vec<String> {
        feed(
            m,
            Input::Observed {
                pod: Box::new(p),
                log_tail: None,
            },
        )
    }

    #[test]
    fn cancelled_while_queued_publishes_only_the_build_event() {
        let p = plan(&["api", "worker"], 3, 3600);
        let (m, out) = Machine::start_cancelled(
            p.clone(),
            settings(),
            "superseded",
            Instant::now(),
            p.accepted_at,
        );
        assert_eq!(summary(&out), ["build.cancelled", "finished:cancelled"]);
        assert_eq!(m.stage(), Stage::Done(Phase::Cancelled));
        let Action::Publish(ev) = &out[0] else {
            panic!("first action is not a publish: {out:?}");
        };
        assert_eq!(ev.data.reason, Some(Reason::Cancelled));
        assert_eq!(ev.data.message.as_deref(), Some("superseded"));
        let images = ev.data.images.as_deref().unwrap_or_default();
        assert_eq!(images.len(), 2);
        assert!(
            images
                .iter()
                .all(|i| i.phase == Phase::Cancelled && i.attempts == 0),
            "{images:?}"
        );
        assert_eq!(
            out[1],
            Action::Finished(Phase::Cancelled, Some(Reason::Cancelled))
        );
    }

    #[test]
    fn cancelled_while_queued_ignores_later_inputs() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) =
            Machine::start_cancelled(p.clone(), settings(), "gone", Instant::now(), p.accepted_at);
        assert!(feed(&mut m, Input::Cancel("again".to_owned())).is_empty());
        assert!(feed(&mut m, Input::Tick).is_empty());
        assert_eq!(m.next_wakeup(), None);
    }

    /// The actions of a one-attempt build with build arg `arg` whose pod
    /// fails with `log` as its termination message and log tail.
    fn fails_once_with_secret_arg(arg: (&str, &str), log: &str) -> Vec<Action> {
        let mut p = (*plan(&["api"], 1, 3600)).clone();
        p.images[0].build_args.insert(arg.0.into(), arg.1.into());
        let p = Arc::new(p);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        let w = wall(&m);
        m.handle(
            Input::Observed {
                pod: Box::new(failed("api", 1, "Error", log)),
                log_tail: Some(log.to_owned()),
            },
            Instant::now(),
            w,
        )
    }

    /// Issue 10: the failure message quotes the last log line, which went
    /// out unmasked; the value of a secret-looking build arg is masked too.
    #[test]
    fn failure_text_is_masked() {
        let log = "curl -H 'Authorization: Bearer eyJsecretsecret' failed\necho n0tAPattern42\nerror building image: exit status 1";
        let out = fails_once_with_secret_arg(("NPM_TOKEN", "n0tAPattern42"), log);
        let mut seen = 0;
        for a in &out {
            if let Action::Publish(ev) = a {
                let text = serde_json::to_string(ev).unwrap();
                assert!(!text.contains("eyJsecretsecret"), "{text}");
                assert!(!text.contains("n0tAPattern42"), "{text}");
                seen += usize::from(ev.data.message.is_some());
            }
        }
        assert!(seen > 0, "{out:?}");
    }

    /// Issue 10: `build.failed` repeats the failed image's message, and
    /// took it unmasked from the failure (the last log line, here with a
    /// URL password and a secret build arg's value).
    #[test]
    fn the_build_failed_message_is_masked_too() {
        let log = "fetching https://ci:pw0rdInUrl@git.example.com/x.git with n0tAPattern43: exit status 1";
        let out = fails_once_with_secret_arg(("GIT_TOKEN", "n0tAPattern43"), log);
        let build_failed = out
            .iter()
            .find_map(|a| match a {
                Action::Publish(ev) if ev.event_type.contains(".build.failed.") => Some(ev),
                _ => None,
            })
            .expect("build.failed");
        let message = build_failed.data.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("image api: the build failed"),
            "{message}"
        );
        assert!(!message.contains("pw0rdInUrl"), "{message}");
        assert!(!message.contains("n0tAPattern43"), "{message}");
    }

    #[test]
    fn two_images_succeed() {
        let p = plan(&["api", "worker"], 3, 3600);
        let (mut m, start) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        assert_eq!(
            summary(&start),
            ["build.accepted", "create:0#1", "create:1#1"]
        );
        assert!(!m.pods_exist());
        assert_eq!(created(&mut m, 0, "api", 1), ["image.scheduled:api#1"]);
        assert_eq!(
            created(&mut m, 1, "worker", 1),
            ["image.scheduled:worker#1"]
        );
        assert!(m.pods_exist());
        assert_eq!(
            observed(&mut m, pod("api", 1, PodPhase::Running)),
            ["image.running:api#1"]
        );
        assert_eq!(
            observed(&mut m, succeeded("api", 1)),
            ["image.succeeded:api#1"]
        );
        assert_eq!(
            observed(&mut m, succeeded("worker", 1)),
            [
                "image.succeeded:worker#1",
                "build.succeeded",
                "delete:kiln-b1-api-1",
                "delete:kiln-b1-worker-1",
                "finished:succeeded"
            ]
        );
        assert_eq!(m.stage(), Stage::Done(Phase::Succeeded));
        // Nothing happens after the end.
        assert!(observed(&mut m, succeeded("api", 1)).is_empty());
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_doubles_per_attempt_is_capped_and_jittered_by_build_image_and_attempt() {
        let s = settings(); // 10 s base, 40 s cap
        // Golden values: FNV-1a of ("b1", "api", attempt) gives the jitter
        // fraction; they change only if the formula does.
        assert_eq!(
            backoff(&s, "b1", "api", 1),
            secs(10) + secs(10).mul_f64(0.391_484_745_138_288_1)
        );
        assert_eq!(
            backoff(&s, "b1", "api", 2),
            secs(20) + secs(20).mul_f64(0.016_403_446_343_867_034)
        );
        // 40 s + jitter, capped at 40 s.
        assert_eq!(backoff(&s, "b1", "api", 3), secs(40));
        assert_eq!(backoff(&s, "b1", "api", 30), secs(40));
        // The same inputs give the same wait (an adopting worker agrees);
        // other builds spread over [base, 2 * base).
        assert_eq!(backoff(&s, "b1", "api", 1), backoff(&s, "b1", "api", 1));
        let waits: std::collections::BTreeSet<Duration> = (0..200)
            .map(|n| backoff(&s, &format!("build-{n}"), "api", 1))
            .collect();
        assert!(waits.len() > 190, "{} distinct waits", waits.len());
        assert!(waits.iter().all(|w| (secs(10)..secs(20)).contains(w)));
        let early = waits.iter().filter(|w| **w < secs(15)).count();
        assert!(
            (70..=130).contains(&early),
            "{early} of 200 in the first half"
        );
        assert_ne!(backoff(&s, "b1", "api", 1), backoff(&s, "b1", "web", 1));
    }

    #[test]
    fn retryable_failure_waits_out_the_backoff() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        let out = m.handle(
            Input::Observed {
                pod: Box::new(failed(
                    "api",
                    1,
                    "Error",
                    "error pushing image: 503 Service Unavailable",
                )),
                log_tail: Some("push failed".into()),
            },
            Instant::now(),
            p.accepted_at,
        );
        assert_eq!(summary(&out), ["image.retrying:api#1"]);
        let Action::Publish(ev) = &out[0] else {
            panic!()
        };
        assert_eq!(ev.data.reason, Some(Reason::PushError));
        // 10 s base for attempt 1, plus this build's jitter (see below).
        let delay = backoff(&settings(), "b1", "api", 1);
        assert_eq!(delay, secs(10) + secs(10).mul_f64(0.391_484_745_138_288_1));
        assert_eq!(ev.data.retry_in_seconds, Some(delay.as_secs_f64()));
        assert_eq!(ev.data.log_tail.as_deref(), Some("push failed"));
        // Exactly after the backoff, not a nanosecond before.
        assert_eq!(m.next_wakeup(), Some(Instant::now() + delay));
        advance(delay.checked_sub(Duration::from_nanos(1)).unwrap());
        assert!(feed(&mut m, Input::Tick).is_empty());
        advance(Duration::from_nanos(1));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
        // The failed attempt's pod goes only once attempt 2 exists.
        assert_eq!(
            created(&mut m, 0, "api", 2),
            ["image.scheduled:api#2", "delete:kiln-b1-api-1"]
        );
        assert_eq!(
            observed(&mut m, succeeded("api", 2)),
            [
                "image.succeeded:api#2",
                "build.succeeded",
                "delete:kiln-b1-api-2",
                "finished:succeeded"
            ]
        );
    }

    #[test]
    fn build_error_fails_at_once_and_cancels_siblings() {
        let p = plan(&["api", "worker"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        created(&mut m, 1, "worker", 1);
        let out = observed(
            &mut m,
            failed(
                "api",
                1,
                "Error",
                "error building image: failed to execute command: exit status 1",
            ),
        );
        assert_eq!(
            out,
            [
                "image.failed:api#1",
                "image.cancelled:worker#1",
                "build.failed",
                "delete:kiln-b1-api-1",
                "delete:kiln-b1-worker-1",
                "finished:failed"
            ]
        );
    }

    #[test]
    fn oom_retries_until_attempts_run_out() {
        let p = plan(&["api"], 2, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        assert_eq!(
            observed(&mut m, failed("api", 1, "OOMKilled", "")),
            ["image.retrying:api#1"]
        );
        advance(Duration::from_secs(40));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
        created(&mut m, 0, "api", 2);
        let out = m.handle(
            Input::Observed {
                pod: Box::new(failed("api", 2, "OOMKilled", "")),
                log_tail: None,
            },
            Instant::now(),
            p.accepted_at,
        );
        assert_eq!(summary(&out)[0], "image.failed:api#2");
        let Action::Publish(ev) = &out[1] else {
            panic!()
        };
        assert_eq!(ev.data.reason, Some(Reason::OOMKilled));
        assert_eq!(ev.data.images.as_ref().unwrap()[0].attempts, 2);
    }

    #[test]
    fn pending_timeout_fails_with_the_stuck_reason() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        let mut stuck = pod("api", 1, PodPhase::Pending);
        stuck.unschedulable = Some(("Unschedulable".into(), "0/3 nodes are available".into()));
        assert!(observed(&mut m, stuck).is_empty());
        advance(Duration::from_secs(59));
        assert!(feed(&mut m, Input::Tick).is_empty());
        advance(Duration::from_secs(1));
        let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
        assert_eq!(summary(&out)[0], "image.failed:api#1");
        let Action::Publish(ev) = &out[0] else {
            panic!()
        };
        assert_eq!(ev.data.reason, Some(Reason::Unschedulable));
    }

    #[test]
    fn deadline_fails_every_unfinished_image() {
        let p = plan(&["api", "worker"], 3, 30);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        created(&mut m, 1, "worker", 1);
        observed(&mut m, succeeded("worker", 1));
        advance(Duration::from_secs(30));
        let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
        assert_eq!(
            summary(&out),
            [
                "image.failed:api#1",
                "build.failed",
                "delete:kiln-b1-api-1",
                "delete:kiln-b1-worker-1",
                "finished:failed"
            ]
        );
        let Action::Publish(ev) = &out[1] else {
            panic!()
        };
        assert_eq!(ev.data.reason, Some(Reason::DeadlineExceeded));
    }

    #[test]
    fn cancel_publishes_before_deleting() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        assert_eq!(
            feed(&mut m, Input::Cancel("superseded".into())),
            [
                "image.cancelled:api#1",
                "build.cancelled",
                "delete:kiln-b1-api-1",
                "finished:cancelled"
            ]
        );
    }

    #[test]
    fn adoption_resumes_without_rebuilding() {
        let p = plan(&["api", "worker"], 3, 3600);
        let pods = vec![pod("api", 1, PodPhase::Running), succeeded("worker", 1)];
        let (mut m, out) =
            Machine::adopt(p.clone(), settings(), &pods, Instant::now(), p.accepted_at);
        // No pod is created again; the finished image's outcome is repeated.
        assert_eq!(summary(&out), ["image.succeeded:worker#1"]);
        assert!(m.pods_exist());
        assert_eq!(
            observed(&mut m, succeeded("api", 1)),
            [
                "image.succeeded:api#1",
                "build.succeeded",
                "delete:kiln-b1-api-1",
                "delete:kiln-b1-worker-1",
                "finished:succeeded"
            ]
        );
    }

    #[test]
    fn deleted_pod_counts_as_a_retryable_failure() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        assert_eq!(
            feed(
                &mut m,
                Input::Deleted(Box::new(pod("api", 1, PodPhase::Running)))
            ),
            ["image.retrying:api#1"]
        );
    }

    fn refused(m: &mut Machine, i: usize, attempt: u32) -> Vec<Action> {
        let w = wall(m);
        m.handle(
            Input::QuotaExceeded {
                image: i,
                attempt,
                message: QUOTA_MESSAGE.to_owned(),
            },
            Instant::now(),
            w,
        )
    }

    const QUOTA_MESSAGE: &str = r#"pods "kiln-b1-api-1" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1"#;

    #[test]
    fn quota_wait_doubles_from_one_second_and_is_capped_at_thirty() {
        let waits: Vec<u64> = (1..=8).map(|n| quota_wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(quota_wait(u32::MAX), QUOTA_WAIT_MAX);
    }

    #[test]
    fn quota_refusal_waits_publishes_once_and_creates_again() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        let out = refused(&mut m, 0, 1);
        assert_eq!(summary(&out), ["image.waiting:api#1"]);
        let Action::Publish(ev) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(ev.id, "b1/api/1/waiting");
        assert_eq!(ev.event_type, "dev.kiln.image.waiting.v1");
        assert_eq!(ev.data.reason, Some(Reason::QuotaExceeded));
        assert_eq!(ev.data.retry_in_seconds, Some(1.0));
        assert!(
            ev.data
                .message
                .as_deref()
                .unwrap()
                .contains("exceeded quota: compute"),
            "{ev:?}"
        );
        // No pod: the request must stay unacked.
        assert!(!m.pods_exist());
        assert_eq!(m.waits(), 1);
        let st = &m.image_states()[0];
        assert_eq!(
            (st.phase, st.reason),
            (Phase::Waiting, Some(Reason::QuotaExceeded))
        );
        assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(1)));
        advance(secs(1).checked_sub(Duration::from_nanos(1)).unwrap());
        assert!(feed(&mut m, Input::Tick).is_empty());
        advance(Duration::from_nanos(1));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
        // Refused again: a longer wait, no second event.
        assert!(refused(&mut m, 0, 1).is_empty());
        assert_eq!(m.waits(), 1);
        assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(2)));
        advance(secs(2));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
        assert_eq!(created(&mut m, 0, "api", 1), ["image.scheduled:api#1"]);
        assert!(m.pods_exist());
        assert_eq!(m.image_states()[0].reason, None);
    }

    #[test]
    fn quota_wait_ends_at_the_deadline_with_one_terminal_event() {
        let p = plan(&["api", "worker"], 3, 5);
        let start = Instant::now();
        let (mut m, _) = Machine::start(p.clone(), settings(), start, p.accepted_at);
        created(&mut m, 1, "worker", 1);
        assert_eq!(summary(&refused(&mut m, 0, 1)), ["image.waiting:api#1"]);
        advance(secs(1));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
        assert!(refused(&mut m, 0, 1).is_empty());
        advance(secs(2));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
        assert!(refused(&mut m, 0, 1).is_empty());
        // The next try would be at 3 s + 4 s; the deadline (5 s) comes first.
        assert_eq!(m.next_wakeup(), Some(start + secs(5)));
        advance(secs(2));
        let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
        assert_eq!(
            summary(&out),
            [
                "image.failed:api#1",
                "image.failed:worker#1",
                "build.failed",
                "delete:kiln-b1-worker-1",
                "finished:failed"
            ]
        );
        let Action::Publish(ev) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(ev.data.reason, Some(Reason::DeadlineExceeded));
        let message = ev.data.message.as_deref().unwrap();
        assert!(
            message.contains("refused the build pod 3 times") && message.contains("exceeded quota"),
            "{message}"
        );
        assert!(feed(&mut m, Input::Tick).is_empty());
        assert_eq!(m.next_wakeup(), None);
    }

    #[test]
    fn cancel_ends_a_quota_wait() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        refused(&mut m, 0, 1);
        assert_eq!(
            feed(&mut m, Input::Cancel("superseded".into())),
            [
                "image.cancelled:api#1",
                "build.cancelled",
                "finished:cancelled"
            ]
        );
        assert_eq!(m.next_wakeup(), None);
    }

    #[test]
    fn a_retry_attempt_refused_by_the_quota_waits_the_same_way() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        created(&mut m, 0, "api", 1);
        assert_eq!(
            observed(&mut m, failed("api", 1, "OOMKilled", "")),
            ["image.retrying:api#1"]
        );
        advance(backoff(&settings(), "b1", "api", 1));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
        // A refusal of attempt 1 is stale; attempt 2's waits.
        assert!(refused(&mut m, 0, 1).is_empty());
        assert_eq!(summary(&refused(&mut m, 0, 2)), ["image.waiting:api#2"]);
        assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(1)));
        advance(secs(1));
        assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
        // The failed attempt's pod stays until attempt 2's exists.
        assert_eq!(
            created(&mut m, 0, "api", 2),
            ["image.scheduled:api#2", "delete:kiln-b1-api-1"]
        );
    }

    #[test]
    fn a_pod_seen_while_waiting_is_the_attempt_created() {
        let p = plan(&["api"], 3, 3600);
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        refused(&mut m, 0, 1);
        // Quota admission refuses before the name is checked: the pod may
        // exist (created by a previous owner).
        assert_eq!(
            observed(&mut m, pod("api", 1, PodPhase::Running)),
            ["image.scheduled:api#1", "image.running:api#1"]
        );
        assert!(m.pods_exist());
        // A pod of another attempt changes nothing.
        let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
        refused(&mut m, 0, 1);
        assert!(observed(&mut m, pod("api", 2, PodPhase::Running)).is_empty());
        assert!(!m.pods_exist());
    }
}
