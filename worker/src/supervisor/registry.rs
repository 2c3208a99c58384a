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

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fencing::{Fence, SharedFence};
use crate::machine::Input;

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
struct Foreign {
    namespace: String,
    /// When its lease was last looked at; `None`: at the next sweep.
    checked: Option<Instant>,
}

#[derive(Default)]
struct State {
    builds: HashMap<String, Entry>,
    next_generation: u64,
    foreign: HashMap<String, Foreign>,
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

    pub(super) fn ids(&self) -> Vec<String> {
        self.lock().builds.keys().cloned().collect()
    }

    pub(super) fn owns(&self, id: &str) -> bool {
        self.lock().builds.contains_key(id)
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
            .is_some_and(|e| e.handle.tx.send(input).is_ok())
    }

    /// Registers a build task; `Err` with the handle back if the id is
    /// already driven here. `Ok` carries the new number of builds and the
    /// registration's generation, for [`Registry::remove`].
    pub(super) fn insert(
        &self,
        id: &str,
        handle: BuildHandle,
    ) -> Result<(usize, Generation), BuildHandle> {
        let mut s = self.lock();
        if s.builds.contains_key(id) {
            return Err(handle);
        }
        s.next_generation += 1;
        let generation = Generation(s.next_generation);
        s.builds.insert(id.to_owned(), Entry { handle, generation });
        s.foreign.remove(id);
        Ok((s.builds.len(), generation))
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

    /// A renewal of the lease of `id` was confirmed: its fence moves on.
    pub(super) fn extend_fence(&self, id: &str, fence: Fence) {
        if let Some(e) = self.lock().builds.get(id) {
            e.handle.fence.extend(fence);
        }
    }

    /// Stops acting on a build; its pods stay, so it becomes foreign and can
    /// be adopted again (by this worker too, once its lease is free).
    pub(super) fn stop(&self, id: &str) {
        self.stop_where(id, |_| true);
    }

    /// [`Registry::stop`], only if `id` is still registration `generation`
    /// (a task fencing itself must not stop a newer adoption of its build).
    pub(super) fn stop_generation(&self, id: &str, generation: Generation) {
        self.stop_where(id, |g| g == generation);
    }

    fn stop_where(&self, id: &str, which: impl FnOnce(Generation) -> bool) {
        let mut s = self.lock();
        if !s.builds.get(id).is_some_and(|e| which(e.generation)) {
            return;
        }
        if let Some(Entry { handle: h, .. }) = s.builds.remove(id) {
            h.stop.cancel();
            s.foreign.insert(
                id.to_owned(),
                Foreign {
                    namespace: h.namespace,
                    checked: None,
                },
            );
        }
    }

    /// Stops every build task (shutdown) and returns their ids. The builds
    /// stay registered until their tasks end.
    pub(super) fn stop_all(&self) -> Vec<String> {
        let s = self.lock();
        for e in s.builds.values() {
            e.handle.stop.cancel();
        }
        s.builds.keys().cloned().collect()
    }

    /// A pod of a build not driven here exists: remember the build as an
    /// adoption candidate.
    pub(super) fn seen_foreign(&self, id: &str, namespace: &str) {
        self.lock()
            .foreign
            .entry(id.to_owned())
            .or_insert_with(|| Foreign {
                namespace: namespace.to_owned(),
                checked: None,
            });
    }

    pub(super) fn forget_foreign(&self, id: &str) {
        self.lock().foreign.remove(id);
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (_, accepted) = watch::channel(false);
        let h = BuildHandle {
            tx,
            stop: CancellationToken::new(),
            accepted,
            namespace: namespace.to_owned(),
            fence: SharedFence::new(Fence::from_send(Instant::now(), Duration::from_secs(10))),
        };
        (h, rx)
    }

    #[test]
    fn a_build_is_registered_once_and_leaves_the_foreign_set() {
        let r = Registry::default();
        r.seen_foreign("b1", "ns");
        let (h, _rx) = handle("ns");
        let (n, generation) = r.insert("b1", h).ok().unwrap_or_else(|| panic!("insert"));
        assert_eq!(n, 1);
        assert!(r.foreign_among(&["b1".to_owned()]).is_empty());
        let (again, _rx2) = handle("ns");
        assert!(r.insert("b1", again).is_err());
        assert!(r.owns("b1"));
        assert!(!r.begin_adopting("b1"));
        assert_eq!(r.remove("b1", generation), 0);
    }

    #[test]
    fn the_end_of_a_stopped_task_leaves_its_readoption_registered() {
        let r = Registry::default();
        let (old, _rx) = handle("ns");
        let (_, old_generation) = r.insert("b1", old).ok().unwrap_or_else(|| panic!("insert"));
        // Fenced: stopped, then adopted here again before the old task ended.
        r.stop("b1");
        let (new, mut new_rx) = handle("ns");
        let (_, new_generation) = r.insert("b1", new).ok().unwrap_or_else(|| panic!("insert"));
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
        r.insert("b1", h).ok();
        r.stop("b1");
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
        r.insert("b1", h).ok();
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
    fn one_adoption_per_build_at_a_time() {
        let r = Registry::default();
        assert!(r.begin_adopting("b1"));
        assert!(!r.begin_adopting("b1"));
        r.end_adopting("b1");
        assert!(r.begin_adopting("b1"));
    }
}
