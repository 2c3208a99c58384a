//! The build: its inputs, actions and settings, and its lifecycle (start,
//! start cancelled, adopt, what it reports, the dispatch of an input).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::provenance::Envelope;
use kiln_protocol::{BuildEvent, Phase, Reason};

use crate::classify::{Failure, Observation, PodView, classify};
use crate::plan::BuildPlan;

use super::image::{Img, ImgState, PodId};

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
    /// Signs the provenance of each succeeded image (`image.succeeded`
    /// `data.provenance`); `None` without a signing key.
    pub provenance: Option<Arc<dyn Attest>>,
}

/// What signs a succeeded attempt's provenance: the worker's key, kept out
/// of this pure crate. A pure function of its inputs (deterministic
/// signatures), so a worker that re-publishes the event after a takeover
/// attaches the same envelope.
pub trait Attest: std::fmt::Debug + Send + Sync {
    /// The envelope for attempt `attempt` of image `image` of `plan`, whose
    /// pod `pod` reported `digest`; `None` when no statement can be made.
    fn attest(
        &self,
        plan: &BuildPlan,
        image: usize,
        attempt: u32,
        digest: &str,
        pod: &PodView,
    ) -> Option<Envelope>;
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

/// Where one image stands, for records and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProgress {
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

/// One build.
#[derive(Debug)]
pub struct Machine {
    pub(super) plan: Arc<BuildPlan>,
    pub(super) settings: Arc<Settings>,
    pub(super) images: Vec<Img>,
    pub(super) deadline: Instant,
    pub(super) stage: Stage,
    /// Quota waits begun so far (each publishes one `image.waiting`): the
    /// build task writes the record when this changes.
    pub(super) waits: u64,
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
    pub fn image_states(&self) -> Vec<ImageProgress> {
        self.plan
            .images
            .iter()
            .zip(&self.images)
            .map(|(spec, img)| ImageProgress {
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
}
