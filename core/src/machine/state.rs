//! The build: its inputs, actions and settings, and its lifecycle (start,
//! start cancelled, adopt, what it reports, the dispatch of an input).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::provenance::Envelope;
use kiln_protocol::{BuildEvent, Phase, Reason};

use crate::classify::{Failure, Observation, PodView, classify};
use crate::plan::{BuildPlan, Step};

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

    /// The envelope the publish step (attempt `attempt`) of multi-platform
    /// image `image` attaches to the index and to each platform manifest:
    /// a statement whose subjects are the platform manifests
    /// (`platform_digests`, platform to digest), signed before the index
    /// exists. A function of the plan and the digests alone (no pod is
    /// read: an adopting worker may find the platform pods gone), so every
    /// worker that creates the publish pod gives it the same bytes. `None`:
    /// nothing is attached.
    fn attest_platforms(
        &self,
        _plan: &BuildPlan,
        _image: usize,
        _attempt: u32,
        _platform_digests: &BTreeMap<String, String>,
    ) -> Option<Envelope> {
        None
    }
}

/// Something that happened to the build. Pod views are boxed: inputs wait
/// in per-build channels, and a small `Input` keeps 10,000 idle builds cheap.
#[derive(Debug, Clone)]
pub enum Input {
    /// The pod of `attempt` exists (created now, or found: 409 = adopt).
    PodCreated {
        image: usize,
        step: Step,
        attempt: u32,
        pod: Box<PodView>,
    },
    /// A ResourceQuota of the namespace refused the pod of `attempt` for
    /// now (403 `exceeded quota`): wait and try again, within the deadline.
    QuotaExceeded {
        image: usize,
        step: Step,
        attempt: u32,
        /// The API server's message (quota name, requested, used, limited).
        message: String,
    },
    /// The pod cannot be created and retrying will not help (invalid spec,
    /// forbidden, namespace missing).
    PodCreateFailed {
        image: usize,
        step: Step,
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
    /// Create the pod of attempt `attempt` of `step` of image `image`.
    CreatePod {
        image: usize,
        step: Step,
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
    /// The units of every image, in plan order (`new_units`).
    pub(super) units: Vec<Img>,
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
        units: Vec<Img>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Self {
        let deadline = now + plan.remaining(wall);
        Self {
            plan,
            settings,
            units,
            deadline,
            stage: Stage::Active,
            waits: 0,
        }
    }

    /// A new build: publish `build.accepted`, then create attempt 1 of every
    /// image (of every platform of an image with `platforms`).
    pub fn start(
        plan: Arc<BuildPlan>,
        settings: Arc<Settings>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> (Self, Vec<Action>) {
        let units = new_units(&plan);
        let m = Self::active(plan, settings, units, now, wall);
        let mut out = vec![Action::Publish(Box::new(m.build_event(
            Phase::Accepted,
            wall,
            None,
        )))];
        for u in m.units.iter().filter(|u| u.state == ImgState::Creating) {
            out.push(Action::CreatePod {
                image: u.image,
                step: u.step,
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
        let units = new_units(&plan)
            .into_iter()
            .map(|u| Img {
                state: ImgState::Cancelled,
                attempt: 0,
                ..u
            })
            .collect();
        let mut m = Self::active(plan, settings, units, now, wall);
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
        let mut units = new_units(&plan);
        let mut latest: Vec<Option<PodView>> = Vec::with_capacity(units.len());
        for unit in &mut units {
            let spec = &plan.images[unit.image];
            let name = spec.unit(unit.step);
            // Only pods under the names Kiln gives its own, in the plan's
            // namespace: names are unique there, so a pod of this build's
            // labels under another name (anyone who may create pods can
            // make one) is not one of its attempts.
            let mut mine: Vec<&PodView> = pods
                .iter()
                .filter(|p| {
                    p.image == spec.name
                        && p.namespace == plan.namespace
                        && p.name == kiln_protocol::pod_name(&plan.id, &name, p.attempt)
                })
                .collect();
            mine.sort_by_key(|p| p.attempt);
            unit.attempt = mine.last().map_or(1, |p| p.attempt);
            unit.stale = mine
                .iter()
                .take(mine.len().saturating_sub(1))
                .map(|p| PodId::of(p))
                .collect();
            latest.push(mine.last().map(|p| (*p).clone()));
        }
        let mut m = Self::active(plan, settings, units, now, wall);
        let mut out = Vec::new();
        let any_failed = latest.iter().flatten().any(|p| {
            matches!(classify(p), Observation::Failed(ref f) if !f.retryable || p.attempt >= m.plan.max_attempts)
        });
        for (u, pod) in latest.into_iter().enumerate() {
            match pod {
                None if any_failed => m.units[u].state = ImgState::Cancelled,
                // A publish step without a pod waits for its platforms
                // (`settle` asks for it once they all succeeded).
                None if m.units[u].state == ImgState::Blocked => {}
                // The previous owner died before this pod existed: create it
                // (a 409 adopts it if it appeared meanwhile).
                None => out.push(Action::CreatePod {
                    image: m.units[u].image,
                    step: m.units[u].step,
                    attempt: m.units[u].attempt,
                }),
                Some(pod) => {
                    let img = &mut m.units[u];
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
        self.stage == Stage::Active && self.units.iter().any(|i| i.state == ImgState::Waiting)
    }

    /// Whether every image's current pod exists (or the image is over):
    /// the moment a build request may be acked.
    pub fn pods_exist(&self) -> bool {
        self.units.iter().all(|i| {
            i.state.terminal()
                || i.pod.is_some()
                || matches!(i.state, ImgState::Retrying | ImgState::Blocked)
        })
    }

    /// Current phase and attempt per image, for records and status.
    pub fn image_states(&self) -> Vec<ImageProgress> {
        (0..self.plan.images.len())
            .map(|i| self.image_progress(i))
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
                step,
                attempt,
                pod,
            } => {
                if let Some(u) = self.unit_index(image, step) {
                    out.extend(self.created(u, attempt, &pod, now, wall));
                }
            }
            Input::QuotaExceeded {
                image,
                step,
                attempt,
                message,
            } => {
                if let Some(u) = self.unit_index(image, step) {
                    out.extend(self.quota_refused(u, attempt, message, now, wall));
                }
            }
            Input::PodCreateFailed {
                image,
                step,
                attempt,
                message,
            } => {
                if let Some(u) = self.unit_index(image, step)
                    && self.units[u].attempt == attempt
                {
                    let f = Failure {
                        reason: Reason::ConfigError,
                        retryable: false,
                        message: format!("the build pod could not be created: {message}"),
                        exit_code: None,
                        log: None,
                    };
                    out.extend(self.fail_attempt(u, &f, None, now, wall));
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

/// The units of a new build: per image, its own pod, or each platform's
/// and then the publish step (blocked until the platforms succeed).
fn new_units(plan: &BuildPlan) -> Vec<Img> {
    plan.images
        .iter()
        .enumerate()
        .flat_map(|(i, spec)| spec.steps().into_iter().map(move |s| Img::new(i, s, 1)))
        .collect()
}
