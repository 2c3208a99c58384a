//! What this worker knows of every Kiln build in the cluster, for the status
//! page: the builds in flight (from the pods the watchers see, whoever owns
//! them) and a bounded ring of recent outcomes.
//!
//! Pods are the state (docs/guarantees.md), so the view is rebuilt from the pod
//! watch alone: a build appears with its first pod and leaves when its last
//! pod is deleted (Kiln deletes a build's pods only after its terminal event is
//! confirmed). The driving worker calls [`ClusterView::finished`] with the
//! exact terminal phase; for builds other workers finish, the phase is read
//! from the last pods seen (all succeeded: `succeeded`; one failed: `failed`;
//! else `cancelled`) and marked as inferred. Nothing here does IO.
//!
//! Derived from the pod cache (`supervisor/pod_cache.rs`), the one truth of
//! the pods: `supervisor/routing.rs` applies every watch event to the cache
//! first and then here, including the deletions the cache finds at the end
//! of a relist, so this view keeps no relist state of its own. A build's
//! history is not kept here either: its task owns its journal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use kiln_protocol::Phase;

use crate::classify::{PodPhase, PodView};

/// How many finished builds the view remembers.
pub const RECENT: usize = 100;

/// Builds in flight and recent outcomes across the cluster.
#[derive(Debug, Default)]
pub struct ClusterView {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    builds: HashMap<String, Build>,
    recent: VecDeque<Outcome>,
}

#[derive(Debug)]
struct Build {
    namespace: String,
    first_seen: jiff::Timestamp,
    /// Latest attempt seen per image, kept after its pod is gone so that the
    /// outcome can be inferred.
    images: Few<ImageStatus>,
    /// Pods that exist now, by name.
    pods: Few<()>,
}

/// A few entries by name, in name order: what one build has (an image or
/// two, a pod or two). A `BTreeMap` allocates a node for eleven entries on
/// the first insert and a `HashMap` four buckets; with ten thousand builds
/// in flight that was over a kilobyte per build.
#[derive(Debug)]
struct Few<V>(Vec<(String, V)>);

impl<V> Default for Few<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> Few<V> {
    fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.0.iter_mut().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn insert(&mut self, name: &str, value: V) {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (name.to_owned(), value));
            }
        }
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
struct ImageStatus {
    attempt: u32,
    pod: String,
    phase: Option<PodPhase>,
    deleting: bool,
    detail: Option<String>,
    since: Option<jiff::Timestamp>,
}

/// One build in flight, as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    pub id: String,
    pub namespace: String,
    pub first_seen: jiff::Timestamp,
    pub images: Vec<ImageSummary>,
}

/// The latest attempt of one image of a build in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSummary {
    pub name: String,
    /// `scheduled`, `running`, `succeeded`, `failed`, `deleting`, `unknown`.
    pub phase: &'static str,
    pub attempt: u32,
    pub pod: String,
    /// Why a pod waits (`ImagePullBackOff`, `Unschedulable`, ...), or the
    /// reason of a failure.
    pub detail: Option<String>,
    /// When the pod was created or started running.
    pub since: Option<jiff::Timestamp>,
}

/// A build that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub namespace: String,
    pub phase: Phase,
    /// True when read from the pods rather than told by the worker driving the build.
    pub inferred: bool,
    pub first_seen: Option<jiff::Timestamp>,
    pub finished_at: jiff::Timestamp,
    pub images: usize,
}

/// A copy of the view at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Builds in flight, oldest first, at most the asked limit.
    pub in_flight: Vec<BuildSummary>,
    /// All builds in flight, including those past the limit.
    pub in_flight_total: usize,
    /// Finished builds, newest first.
    pub recent: Vec<Outcome>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClusterView {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pod was added or changed.
    pub fn observe(&self, v: &PodView) {
        self.observe_at(v, jiff::Timestamp::now());
    }

    fn observe_at(&self, v: &PodView, now: jiff::Timestamp) {
        if v.build_id.is_empty() {
            return;
        }
        let mut inner = lock(&self.inner);
        if !inner.builds.contains_key(&v.build_id) {
            // A build that already ended (its pods are being cleaned up) or
            // a pod on its way out does not start a new entry.
            // A pod created after the outcome belongs to a new build that
            // reuses the id once its record expired.
            let ended = inner
                .recent
                .iter()
                .any(|o| o.id == v.build_id && v.created_at.is_none_or(|c| c <= o.finished_at));
            if v.deleting || ended {
                return;
            }
        }
        let build = inner
            .builds
            .entry(v.build_id.clone())
            .or_insert_with(|| Build {
                namespace: v.namespace.clone(),
                first_seen: v.created_at.unwrap_or(now),
                images: Few::default(),
                pods: Few::default(),
            });
        if let Some(created) = v.created_at
            && created < build.first_seen
        {
            build.first_seen = created;
        }
        build.pods.insert(&v.name, ());
        let state = ImageStatus {
            attempt: v.attempt,
            pod: v.name.clone(),
            phase: v.phase,
            deleting: v.deleting,
            detail: detail(v),
            since: v.running_since.or(v.created_at),
        };
        let key = unit_key(v);
        match build.images.get_mut(&key) {
            Some(old) if old.attempt > v.attempt => {}
            Some(old) => *old = state,
            None => build.images.insert(&key, state),
        }
    }

    /// A pod was deleted. When it was the build's last pod, the build has
    /// ended: it moves to the recent outcomes.
    pub fn pod_deleted(&self, v: &PodView) {
        if v.build_id.is_empty() {
            return;
        }
        // The deleted pod's last state counts for the outcome.
        let mut inner = lock(&self.inner);
        let Some(build) = inner.builds.get_mut(&v.build_id) else {
            return;
        };
        if let Some(img) = build.images.get_mut(&unit_key(v))
            && img.attempt == v.attempt
        {
            if v.phase.is_some() {
                img.phase = v.phase;
            }
            img.deleting = true;
        }
        build.pods.remove(&v.name);
        if build.pods.is_empty() {
            let id = v.build_id.clone();
            inner.end(&id, None, jiff::Timestamp::now());
        }
    }

    /// Routes one watch event: `observe` or `pod_deleted`.
    pub fn apply(&self, v: &PodView, deleted: bool) {
        if deleted {
            self.pod_deleted(v);
        } else {
            self.observe(v);
        }
    }

    /// The worker driving the build published its terminal event.
    pub fn finished(&self, build: &str, phase: Phase) {
        lock(&self.inner).end(build, Some(phase), jiff::Timestamp::now());
    }

    /// Drops a build without recording an outcome.
    pub fn forget(&self, build: &str) {
        lock(&self.inner).builds.remove(build);
    }

    /// Number of builds in flight.
    pub fn len(&self) -> usize {
        lock(&self.inner).builds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The builds in flight (oldest first, at most `limit`) and the recent
    /// outcomes (newest first).
    pub fn snapshot(&self, limit: usize) -> Snapshot {
        let inner = lock(&self.inner);
        let mut in_flight: Vec<BuildSummary> = inner
            .builds
            .iter()
            .map(|(id, b)| BuildSummary {
                id: id.clone(),
                namespace: b.namespace.clone(),
                first_seen: b.first_seen,
                images: b
                    .images
                    .iter()
                    .map(|(name, s)| ImageSummary {
                        name: name.clone(),
                        phase: phase_name(s),
                        attempt: s.attempt,
                        pod: s.pod.clone(),
                        detail: s.detail.clone(),
                        since: s.since,
                    })
                    .collect(),
            })
            .collect();
        in_flight.sort_by(|a, b| a.first_seen.cmp(&b.first_seen).then(a.id.cmp(&b.id)));
        let in_flight_total = in_flight.len();
        in_flight.truncate(limit);
        Snapshot {
            in_flight,
            in_flight_total,
            recent: inner.recent.iter().rev().cloned().collect(),
        }
    }
}

impl Inner {
    /// Moves a build to the recent outcomes. With `phase` None the outcome is
    /// inferred from the last pods seen.
    fn end(&mut self, id: &str, phase: Option<Phase>, now: jiff::Timestamp) {
        let build = self.builds.remove(id);
        if build.is_none()
            && let Some(o) = self.recent.iter_mut().rev().find(|o| o.id == id)
        {
            // Told once already: the last pod's deletion, then the driving worker,
            // whose word replaces the inference.
            if let Some(p) = phase
                && o.inferred
            {
                o.phase = p;
                o.inferred = false;
            }
            return;
        }
        if build.is_none() && phase.is_none() {
            return;
        }
        let (namespace, first_seen, images, inferred_phase) = match &build {
            Some(b) => (
                b.namespace.clone(),
                Some(b.first_seen),
                b.images.len(),
                infer(b),
            ),
            None => (String::new(), None, 0, Phase::Cancelled),
        };
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Outcome {
            id: id.to_owned(),
            namespace,
            phase: phase.unwrap_or(inferred_phase),
            inferred: phase.is_none(),
            first_seen,
            finished_at: now,
            images,
        });
    }
}

/// The terminal phase the last pods of a build suggest.
fn infer(b: &Build) -> Phase {
    let phases = || b.images.values().map(|s| s.phase);
    if phases().any(|p| p == Some(PodPhase::Failed)) {
        Phase::Failed
    } else if !b.images.is_empty() && phases().all(|p| p == Some(PodPhase::Succeeded)) {
        Phase::Succeeded
    } else {
        Phase::Cancelled
    }
}

fn phase_name(s: &ImageStatus) -> &'static str {
    match s.phase {
        Some(PodPhase::Succeeded) => "succeeded",
        Some(PodPhase::Failed) => "failed",
        _ if s.deleting => "deleting",
        Some(PodPhase::Running) => "running",
        Some(PodPhase::Pending) | None => "scheduled",
        Some(PodPhase::Unknown) => "unknown",
    }
}

fn detail(v: &PodView) -> Option<String> {
    if let Some(t) = &v.terminated
        && let Some(r) = &t.reason
        && t.exit_code != 0
    {
        return Some(format!("{r} (exit {})", t.exit_code));
    }
    v.waiting
        .as_ref()
        .map(|(r, _)| r.clone())
        .or_else(|| v.unschedulable.as_ref().map(|(r, _)| r.clone()))
        .or_else(|| v.pod_reason.clone())
}

/// What the status view shows a pod under: its image, or for an image
/// with `platforms` the image and the platform (`api linux-arm64`) or the
/// publish step (`api publish`).
fn unit_key(v: &PodView) -> String {
    match (&v.platform, v.publish) {
        (Some(platform), _) => format!("{} {platform}", v.image),
        (None, true) => format!("{} publish", v.image),
        (None, false) => v.image.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(build: &str, image: &str, attempt: u32, phase: PodPhase) -> PodView {
        PodView {
            namespace: "kiln-builds".into(),
            name: format!("kiln-{build}-{image}-{attempt}"),
            uid: format!("uid-{build}-{image}-{attempt}"),
            build_id: build.into(),
            image: image.into(),
            attempt,
            phase: Some(phase),
            created_at: Some(jiff::Timestamp::UNIX_EPOCH),
            ..PodView::default()
        }
    }

    #[test]
    fn builds_appear_with_pods_and_end_with_their_last_pod() {
        let v = ClusterView::new();
        v.observe(&pod("b1", "api", 1, PodPhase::Pending));
        v.observe(&pod("b1", "web", 1, PodPhase::Running));
        v.observe(&pod("b2", "api", 1, PodPhase::Running));
        let s = v.snapshot(10);
        assert_eq!(s.in_flight_total, 2);
        let b1 = s.in_flight.iter().find(|b| b.id == "b1").expect("b1");
        assert_eq!(b1.images.len(), 2);
        assert_eq!(b1.images[0].phase, "scheduled");
        assert_eq!(b1.images[1].phase, "running");

        v.observe(&pod("b1", "api", 1, PodPhase::Succeeded));
        v.observe(&pod("b1", "web", 1, PodPhase::Succeeded));
        v.pod_deleted(&pod("b1", "api", 1, PodPhase::Succeeded));
        assert_eq!(v.len(), 2, "one pod left");
        v.pod_deleted(&pod("b1", "web", 1, PodPhase::Succeeded));
        let s = v.snapshot(10);
        assert_eq!(s.in_flight_total, 1);
        assert_eq!(s.recent.len(), 1);
        assert_eq!(s.recent[0].phase, Phase::Succeeded);
        assert!(s.recent[0].inferred);
    }

    #[test]
    fn a_new_attempt_replaces_the_old_and_failures_are_inferred() {
        let v = ClusterView::new();
        v.observe(&pod("b", "api", 1, PodPhase::Failed));
        v.observe(&pod("b", "api", 2, PodPhase::Pending));
        // A late event about attempt 1 does not go back.
        v.observe(&pod("b", "api", 1, PodPhase::Failed));
        let s = v.snapshot(10);
        assert_eq!(s.in_flight[0].images[0].attempt, 2);
        v.pod_deleted(&pod("b", "api", 1, PodPhase::Failed));
        v.observe(&pod("b", "api", 2, PodPhase::Failed));
        v.pod_deleted(&pod("b", "api", 2, PodPhase::Failed));
        let s = v.snapshot(10);
        assert!(s.in_flight.is_empty());
        assert_eq!(s.recent[0].phase, Phase::Failed);
    }

    #[test]
    fn the_owner_s_word_wins_and_cleanup_does_not_resurrect() {
        let v = ClusterView::new();
        v.observe(&pod("b", "api", 1, PodPhase::Running));
        v.finished("b", Phase::Cancelled);
        // The pod is still there while it is deleted; it must not re-add.
        v.observe(&pod("b", "api", 1, PodPhase::Running));
        v.pod_deleted(&pod("b", "api", 1, PodPhase::Running));
        let s = v.snapshot(10);
        assert!(s.in_flight.is_empty());
        assert_eq!(s.recent.len(), 1);
        assert_eq!(s.recent[0].phase, Phase::Cancelled);
        assert!(!s.recent[0].inferred);
        // Inferred first, then told: the told phase replaces it.
        v.observe(&pod("c", "api", 1, PodPhase::Running));
        v.pod_deleted(&pod("c", "api", 1, PodPhase::Running));
        v.finished("c", Phase::Failed);
        let s = v.snapshot(10);
        assert_eq!(s.recent[0].id, "c");
        assert_eq!(s.recent[0].phase, Phase::Failed);
        assert!(!s.recent[0].inferred);
    }

    #[test]
    fn recent_is_bounded_and_newest_first() {
        let v = ClusterView::new();
        for i in 0..(RECENT + 20) {
            let id = format!("b{i}");
            v.observe(&pod(&id, "api", 1, PodPhase::Succeeded));
            v.finished(&id, Phase::Succeeded);
        }
        let s = v.snapshot(10);
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.recent[0].id, format!("b{}", RECENT + 19));
        assert!(v.is_empty());
    }

    #[test]
    fn snapshot_limit_keeps_the_total() {
        let v = ClusterView::new();
        for i in 0..5 {
            v.observe(&pod(&format!("b{i}"), "api", 1, PodPhase::Running));
        }
        let s = v.snapshot(2);
        assert_eq!(s.in_flight.len(), 2);
        assert_eq!(s.in_flight_total, 5);
    }

    #[test]
    fn details_say_why_a_pod_waits_or_failed() {
        let mut p = pod("b", "api", 1, PodPhase::Pending);
        p.waiting = Some(("ImagePullBackOff".into(), "back-off".into()));
        assert_eq!(detail(&p).as_deref(), Some("ImagePullBackOff"));
        let mut p = pod("b", "api", 1, PodPhase::Failed);
        p.terminated = Some(crate::classify::Terminated {
            exit_code: 137,
            reason: Some("OOMKilled".into()),
            ..Default::default()
        });
        assert_eq!(detail(&p).as_deref(), Some("OOMKilled (exit 137)"));
    }
}
