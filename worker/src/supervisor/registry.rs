//! The mutable state of one worker, behind one lock: the builds it drives,
//! the builds it saw in the cluster that another worker owns, the builds
//! being adopted right now, and whether the build consumer runs.
//!
//! One lock, held only for map operations (never across an `.await`), so
//! "is this build mine, or being adopted, or foreign" is always answered
//! from one consistent state.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fence::{Fence, SharedFence};
use crate::machine::Input;
use crate::store::LeaseToken;
use kiln_core::owner::Owner;

/// How the rest of the supervisor reaches one running build task.
pub(super) struct BuildHandle {
    pub tx: mpsc::UnboundedSender<Input>,
    pub stop: CancellationToken,
    /// Becomes true once every first-attempt pod exists and `accepted` is
    /// confirmed (or the build already ended).
    pub accepted: watch::Receiver<bool>,
    /// Build namespace, to find the pods again after the build is stopped.
    pub namespace: String,
    /// Until when the worker may act on the build (moved by renewals).
    pub fence: SharedFence,
    /// The token of the claim this task drives the build under.
    pub token: LeaseToken,
    /// Tenant and fingerprint of the plan driven: the owner of the id, even
    /// when Redis lost the record.
    pub owner: Owner,
}

/// One registration of a build: a build stopped and adopted again here
/// gets a new one, so the old task's end cannot remove the new handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation(u64);

struct Entry {
    handle: BuildHandle,
    generation: Generation,
}

/// A build seen in the cluster that another worker owns (or owned).
struct ForeignBuild {
    namespace: String,
    /// When its lease was last looked at; `None`: at the next sweep.
    checked: Option<Instant>,
}

#[derive(Default)]
struct State {
    builds: HashMap<String, Entry>,
    next_generation: u64,
    foreign: HashMap<String, ForeignBuild>,
    /// Foreign builds whose pods adoption refused (see
    /// `kiln_core::adoption::Adoption::Untrusted`): never candidates again while they
    /// have pods.
    refused: HashSet<String>,
    adopting: HashSet<String>,
    consuming: bool,
}

/// See the module documentation.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("builds", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of builds this worker drives now.
    pub fn in_flight(&self) -> usize {
        self.lock().builds.len()
    }

    /// Readiness: the build consumer is running.
    pub fn is_consuming(&self) -> bool {
        self.lock().consuming
    }

    pub(super) fn set_consuming(&self, on: bool) {
        self.lock().consuming = on;
    }

    /// Every build driven here with the token of its claim: what the
    /// renewal loop renews.
    pub(super) fn leases(&self) -> Vec<(String, LeaseToken)> {
        self.lock()
            .builds
            .iter()
            .map(|(id, e)| (id.clone(), e.handle.token.clone()))
            .collect()
    }

    pub(super) fn owns(&self, id: &str) -> bool {
        self.lock().builds.contains_key(id)
    }

    /// The owner of a build driven here.
    pub(super) fn owner(&self, id: &str) -> Option<Owner> {
        self.lock().builds.get(id).map(|e| e.handle.owner.clone())
    }

    /// Acceptance of a build driven here, to ack a duplicate of it.
    pub(super) fn accepted(&self, id: &str) -> Option<watch::Receiver<bool>> {
        self.lock()
            .builds
            .get(id)
            .map(|e| e.handle.accepted.clone())
    }

    /// Hands `input` to the build's task; false if the build is not driven
    /// here.
    pub(super) fn send(&self, id: &str, input: Input) -> bool {
        self.lock()
            .builds
            .get(id)
            .is_some_and(|e| e.handle.tx.unbounded_send(input).is_ok())
    }

    /// Registers a build task; `None` if the id is already driven here.
    /// Else the new number of builds and the registration's generation, for
    /// [`Registry::remove`].
    pub(super) fn insert(&self, id: &str, handle: BuildHandle) -> Option<(usize, Generation)> {
        let mut s = self.lock();
        if s.builds.contains_key(id) {
            return None;
        }
        s.next_generation += 1;
        let generation = Generation(s.next_generation);
        s.builds.insert(id.to_owned(), Entry { handle, generation });
        s.foreign.remove(id);
        Some((s.builds.len(), generation))
    }

    /// The task of registration `generation` ended; returns the number of
    /// builds left. A newer registration of the same id (the build was
    /// stopped, then adopted here again before the old task ended) stays.
    pub(super) fn remove(&self, id: &str, generation: Generation) -> usize {
        let mut s = self.lock();
        if s.builds.get(id).is_some_and(|e| e.generation == generation) {
            s.builds.remove(id);
        }
        s.builds.len()
    }

    /// A renewal of the lease of `id` under `token` was confirmed: the
    /// fence of that claim's task moves on (not a newer claim's).
    pub(super) fn extend_fence(&self, id: &str, token: &LeaseToken, fence: Fence) {
        if let Some(e) = self.lock().builds.get(id)
            && e.handle.token == *token
        {
            e.handle.fence.extend(fence);
        }
    }

    /// Stops acting on a build, only if `id` is still registration `generation`
    /// (a task fencing itself must not stop a newer adoption of its build).
    pub(super) fn stop_generation(&self, id: &str, generation: Generation) {
        self.stop_where(id, |e| e.generation == generation);
    }

    /// Stops acting on a build, only if it is still driven under `token` (the
    /// loss of an old claim's lease must not stop a newer claim's task). Its
    /// pods stay, so it becomes foreign and can be adopted again (by this
    /// worker too, once its lease is free).
    pub(super) fn stop_claim(&self, id: &str, token: &LeaseToken) {
        self.stop_where(id, |e| e.handle.token == *token);
    }

    fn stop_where(&self, id: &str, which: impl FnOnce(&Entry) -> bool) {
        let mut s = self.lock();
        if !s.builds.get(id).is_some_and(which) {
            return;
        }
        if let Some(Entry { handle: h, .. }) = s.builds.remove(id) {
            h.stop.cancel();
            s.foreign.insert(
                id.to_owned(),
                ForeignBuild {
                    namespace: h.namespace,
                    checked: None,
                },
            );
        }
    }

    /// Stops every build task (shutdown) and returns their ids and tokens,
    /// to release. The builds stay registered until their tasks end.
    pub(super) fn stop_all(&self) -> Vec<(String, LeaseToken)> {
        {
            let s = self.lock();
            for e in s.builds.values() {
                e.handle.stop.cancel();
            }
        }
        self.leases()
    }

    /// A pod of a build not driven here exists: remember the build as an
    /// adoption candidate.
    pub(super) fn seen_foreign(&self, id: &str, namespace: &str) {
        let mut s = self.lock();
        if s.refused.contains(id) {
            return;
        }
        s.foreign
            .entry(id.to_owned())
            .or_insert_with(|| ForeignBuild {
                namespace: namespace.to_owned(),
                checked: None,
            });
    }

    /// A pod of `id` went away, or its build was adopted or cleaned up.
    /// A refused build counts again once one of its pods is gone: the next
    /// remaining pod is then checked once more.
    pub(super) fn forget_foreign(&self, id: &str) {
        let mut s = self.lock();
        s.foreign.remove(id);
        s.refused.remove(id);
    }

    /// Adoption refused the pods of `id`: stop sweeping it.
    pub(super) fn refuse_foreign(&self, id: &str) {
        let mut s = self.lock();
        s.foreign.remove(id);
        s.refused.insert(id.to_owned());
    }

    /// The foreign builds among `ids`, with their namespaces.
    pub(super) fn foreign_among(&self, ids: &[String]) -> Vec<(String, String)> {
        let s = self.lock();
        ids.iter()
            .filter_map(|id| s.foreign.get(id).map(|f| (id.clone(), f.namespace.clone())))
            .collect()
    }

    /// Foreign builds whose lease was not looked at for `every`; marks them
    /// looked at `now`.
    pub(super) fn foreign_due(&self, now: Instant, every: Duration) -> Vec<(String, String)> {
        let mut s = self.lock();
        s.foreign
            .iter_mut()
            .filter(|(_, f)| f.checked.is_none_or(|c| now.duration_since(c) >= every))
            .map(|(id, f)| {
                f.checked = Some(now);
                (id.clone(), f.namespace.clone())
            })
            .collect()
    }

    /// Starts adopting `id`: false if it is driven here or being adopted.
    pub(super) fn begin_adopting(&self, id: &str) -> bool {
        let mut s = self.lock();
        !s.builds.contains_key(id) && s.adopting.insert(id.to_owned())
    }

    pub(super) fn end_adopting(&self, id: &str) {
        self.lock().adopting.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(namespace: &str) -> (BuildHandle, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded();
        let (_, accepted) = watch::channel(false);
        let h = BuildHandle {
            tx,
            stop: CancellationToken::new(),
            accepted,
            namespace: namespace.to_owned(),
            fence: SharedFence::new(Fence::from_send(Instant::now(), Duration::from_secs(10))),
            token: LeaseToken::mint("w"),
            owner: Owner {
                tenant: String::new(),
                fingerprint: String::new(),
                learnt: kiln_core::owner::Learnt::Driven,
            },
        };
        (h, rx)
    }

    #[test]
    fn a_build_is_registered_once_and_leaves_the_foreign_set() {
        let r = Registry::default();
        r.seen_foreign("b1", "ns");
        let (h, _rx) = handle("ns");
        let (n, generation) = r.insert("b1", h).unwrap_or_else(|| panic!("insert"));
        assert_eq!(n, 1);
        assert!(r.foreign_among(&["b1".to_owned()]).is_empty());
        let (again, _rx2) = handle("ns");
        assert!(r.insert("b1", again).is_none());
        assert!(r.owns("b1"));
        assert!(!r.begin_adopting("b1"));
        assert_eq!(r.remove("b1", generation), 0);
    }

    #[test]
    fn the_end_of_a_stopped_task_leaves_its_readoption_registered() {
        let r = Registry::default();
        let (old, _rx) = handle("ns");
        let old_token = old.token.clone();
        let (_, old_generation) = r.insert("b1", old).unwrap_or_else(|| panic!("insert"));
        // Fenced: stopped, then adopted here again before the old task ended.
        r.stop_claim("b1", &old_token);
        let (new, mut new_rx) = handle("ns");
        let new_token = new.token.clone();
        let (_, new_generation) = r.insert("b1", new).unwrap_or_else(|| panic!("insert"));
        // The old claim's renewal fails late: the new claim's task goes on.
        r.stop_claim("b1", &old_token);
        assert!(r.owns("b1"), "a lost old token stops nothing newer");
        assert_eq!(r.leases(), [("b1".to_owned(), new_token)]);
        assert_eq!(r.remove("b1", old_generation), 1, "the old task ends");
        assert!(r.owns("b1"), "the new handle stays");
        assert!(r.send("b1", Input::Tick));
        assert!(matches!(new_rx.try_recv(), Ok(Input::Tick)));
        assert_eq!(r.remove("b1", new_generation), 0);
    }

    #[test]
    fn a_stopped_build_becomes_foreign_and_its_task_is_cancelled() {
        let r = Registry::default();
        let (h, _rx) = handle("ns");
        let stop = h.stop.clone();
        let token = h.token.clone();
        r.insert("b1", h);
        r.stop_claim("b1", &token);
        assert!(stop.is_cancelled());
        assert!(!r.owns("b1"));
        assert_eq!(
            r.foreign_among(&["b1".to_owned()]),
            [("b1".to_owned(), "ns".to_owned())]
        );
    }

    #[test]
    fn inputs_reach_only_builds_driven_here() {
        let r = Registry::default();
        let (h, mut rx) = handle("ns");
        r.insert("b1", h);
        assert!(r.send("b1", Input::Tick));
        assert!(matches!(rx.try_recv(), Ok(Input::Tick)));
        assert!(!r.send("b2", Input::Tick));
    }

    #[test]
    fn foreign_builds_are_due_once_per_period() {
        let r = Registry::default();
        r.seen_foreign("b1", "ns");
        let now = Instant::now();
        let every = Duration::from_secs(5);
        assert_eq!(r.foreign_due(now, every).len(), 1);
        assert!(
            r.foreign_due(now + Duration::from_secs(1), every)
                .is_empty()
        );
        assert_eq!(r.foreign_due(now + every, every).len(), 1);
    }

    #[test]
    fn a_refused_build_is_swept_no_more_until_a_pod_of_it_goes() {
        let r = Registry::default();
        r.seen_foreign("b1", "ns");
        r.refuse_foreign("b1");
        r.seen_foreign("b1", "ns");
        let now = Instant::now();
        assert!(r.foreign_due(now, Duration::ZERO).is_empty());
        r.forget_foreign("b1");
        r.seen_foreign("b1", "ns");
        assert_eq!(r.foreign_due(now, Duration::ZERO).len(), 1);
    }

    #[test]
    fn one_adoption_per_build_at_a_time() {
        let r = Registry::default();
        assert!(r.begin_adopting("b1"));
        assert!(!r.begin_adopting("b1"));
        r.end_adopting("b1");
        assert!(r.begin_adopting("b1"));
    }
}
