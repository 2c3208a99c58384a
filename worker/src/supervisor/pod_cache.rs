//! The Kiln pods of every build namespace as the watch last showed them,
//! fed only by the watchers (`routing.rs`): adoption reads a build's pods
//! here instead of one LIST per build.
//!
//! Relist-aware: kube-runtime's watcher relists after a 410 or a failed
//! re-watch, announcing it with `Init` ([`PodEvent::Resync`]) and ending it
//! with `InitDone` ([`PodEvent::Synced`]). Deletions that happened while the
//! watch was down are never sent as events; a pod not re-seen between the
//! two markers is gone, and [`PodCache::synced`] returns it so that the
//! build driving it hears of the deletion. Until a relist ends, the pods of
//! the previous view stay (as in kube-runtime's reflector store).
//!
//! A namespace counts as synced from its first `InitDone` on: before it the
//! view is partial (the initial list is still arriving), and nothing may be
//! decided on it ([`PodCache::build_pods`] answers `None`,
//! [`PodCache::wait_synced`] waits). Later relists do not unsync it: the
//! view they replace is complete, if possibly stale.
//!
//! [`PodEvent::Resync`]: crate::pod::PodEvent::Resync
//! [`PodEvent::Synced`]: crate::pod::PodEvent::Synced

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::classify::PodView;
use crate::machine::Input;

/// See the module documentation.
#[derive(Debug)]
pub struct PodCache {
    pods: Mutex<PodsByNamespace>,
    /// Bumped whenever a namespace completes a (re)list: wakes
    /// [`PodCache::wait_synced`].
    syncs: watch::Sender<u64>,
}

impl Default for PodCache {
    fn default() -> Self {
        Self {
            pods: Mutex::default(),
            syncs: watch::Sender::new(0),
        }
    }
}

impl PodCache {
    fn lock(&self) -> MutexGuard<'_, PodsByNamespace> {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A watch event: the pod exists in this state (`deleted`: it is gone).
    /// Returns whether the build still has pods in the view.
    pub(super) fn apply(&self, v: &PodView, deleted: bool) -> bool {
        let mut pods = self.lock();
        if deleted {
            pods.delete(v)
        } else {
            pods.apply(v);
            true
        }
    }

    /// The watcher of `namespace` starts a relist.
    pub(super) fn resync(&self, namespace: &str) {
        self.lock().resync(namespace);
    }

    /// The relist of `namespace` is complete: returns the pods it did not
    /// list (deleted while the watch was down), now gone from the view.
    pub(super) fn synced(&self, namespace: &str) -> Vec<PodView> {
        let gone = self.lock().synced(namespace);
        self.syncs.send_modify(|n| *n += 1);
        gone
    }

    /// The pods of build `id` in `namespace`; `None` while the namespace
    /// has not completed its first list.
    pub(super) fn build_pods(&self, namespace: &str, id: &str) -> Option<Vec<PodView>> {
        self.lock().build_pods(namespace, id)
    }

    /// Waits until every namespace in `namespaces` completed its first
    /// list; false if `stop` came first.
    pub(super) async fn wait_synced(
        &self,
        namespaces: &[String],
        stop: &CancellationToken,
    ) -> bool {
        let mut syncs = self.syncs.subscribe();
        let all = |_: &u64| {
            let pods = self.lock();
            namespaces.iter().all(|ns| pods.is_synced(ns))
        };
        tokio::select! {
            () = stop.cancelled() => false,
            r = syncs.wait_for(all) => r.is_ok(),
        }
    }
}

/// Pure: what a build task that started from the pods `read` missed if
/// the view is `now`: the pods gone since (deleted), then every pod whose
/// view changed or appeared. Pod events that arrive between a read and the
/// task's registration go to the foreign set, not to the task; a task
/// ignores what it knows already, so an event also delivered by the watch
/// does no harm.
pub(super) fn missed(read: &[PodView], now: &[PodView]) -> Vec<Input> {
    let gone = read
        .iter()
        .filter(|r| !now.iter().any(|n| n.uid == r.uid))
        .map(|r| Input::Deleted(Box::new(r.clone())));
    let changed = now
        .iter()
        .filter(|n| !read.contains(n))
        .map(|n| Input::Observed {
            pod: Box::new(n.clone()),
            log_tail: None,
        });
    gone.chain(changed).collect()
}

/// The view itself: pure, no IO, no clock.
#[derive(Debug, Default)]
struct PodsByNamespace {
    namespaces: HashMap<String, Namespace>,
}

#[derive(Debug, Default)]
struct Namespace {
    /// The first list completed.
    synced: bool,
    /// Relist generation: bumped by each `Init`.
    epoch: u64,
    /// Pods by build id. A build has a pod or two (one per image, and an
    /// old attempt's while it goes): a short list, not a map that would
    /// reserve room for four views per build.
    builds: HashMap<String, Vec<Cached>>,
}

#[derive(Debug)]
struct Cached {
    view: PodView,
    /// The relist generation in which the pod was last seen.
    epoch: u64,
}

impl PodsByNamespace {
    fn apply(&mut self, v: &PodView) {
        let ns = self.namespaces.entry(v.namespace.clone()).or_default();
        let epoch = ns.epoch;
        let cached = Cached {
            view: v.clone(),
            epoch,
        };
        let pods = ns.builds.entry(v.build_id.clone()).or_default();
        if let Some(p) = pods.iter_mut().find(|p| p.view.name == v.name) {
            *p = cached;
        } else {
            pods.reserve_exact(1);
            pods.push(cached);
        }
    }

    /// Returns whether the build still has pods in the view.
    fn delete(&mut self, v: &PodView) -> bool {
        let Some(ns) = self.namespaces.get_mut(&v.namespace) else {
            return self.has_pods(&v.build_id);
        };
        if let Some(pods) = ns.builds.get_mut(&v.build_id) {
            pods.retain(|p| p.view.name != v.name);
            if pods.is_empty() {
                ns.builds.remove(&v.build_id);
            }
        }
        self.has_pods(&v.build_id)
    }

    fn resync(&mut self, namespace: &str) {
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .epoch += 1;
    }

    fn synced(&mut self, namespace: &str) -> Vec<PodView> {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        ns.synced = true;
        let epoch = ns.epoch;
        let mut gone = Vec::new();
        ns.builds.retain(|_, pods| {
            pods.retain(|p| {
                let seen = p.epoch >= epoch;
                if !seen {
                    gone.push(p.view.clone());
                }
                seen
            });
            !pods.is_empty()
        });
        gone
    }

    fn is_synced(&self, namespace: &str) -> bool {
        self.namespaces.get(namespace).is_some_and(|ns| ns.synced)
    }

    fn build_pods(&self, namespace: &str, id: &str) -> Option<Vec<PodView>> {
        let ns = self.namespaces.get(namespace).filter(|ns| ns.synced)?;
        Some(
            ns.builds
                .get(id)
                .map(|pods| pods.iter().map(|p| p.view.clone()).collect())
                .unwrap_or_default(),
        )
    }

    fn has_pods(&self, id: &str) -> bool {
        self.namespaces
            .values()
            .any(|ns| ns.builds.contains_key(id))
    }
}

#[cfg(test)]
#[path = "pod_cache_tests.rs"]
mod tests;
