//! Pod events from the watchers to the builds: into the pod cache, then to
//! the build's task when it is driven here, else into the foreign set that
//! adoption sweeps. Pods a relist no longer lists were deleted while the
//! watch was down: they are routed as deletions.

use futures::StreamExt;

use super::Supervisor;
use crate::classify::PodView;
use crate::machine::Input;
use crate::pod::PodEvent;

/// Follows the Kiln pods of one namespace and routes what it sees.
pub(super) async fn watch_namespace(sup: Supervisor, namespace: String) {
    let stream = sup.ctx.pods.watch(&namespace);
    tokio::pin!(stream);
    loop {
        let ev = tokio::select! {
            () = sup.stop.cancelled() => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        match ev {
            PodEvent::Applied(v) => route(&sup, v, false),
            PodEvent::Deleted(v) => route(&sup, v, true),
            PodEvent::Resync => sup.pod_cache.resync(&namespace),
            PodEvent::Synced => {
                let gone = sup.pod_cache.synced(&namespace);
                if !gone.is_empty() {
                    tracing::info!(namespace = %namespace, pods = gone.len(), "pods deleted while the watch was down");
                }
                // Routed like any deletion: the status view, derived from
                // the cache, hears of them here and has no relist of its own.
                for v in gone {
                    route(&sup, v, true);
                }
            }
        }
    }
}

/// What an event of a pod whose build is not driven here means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForeignPod {
    /// The last pod of a build driven elsewhere went away: most likely the
    /// build ended. Forget it.
    Forget,
    /// A live pod: the build is an adoption candidate.
    Remember,
    /// A pod being deleted mostly belongs to a build that just ended (its
    /// holder deletes pods after the terminal event): it does not make a
    /// build a candidate, though it keeps one that already is.
    Ignore,
}

/// Pure: see [`ForeignPod`]. `pods_left`: the build has other pods (a
/// retried attempt's old pod going leaves the build a candidate).
pub(super) fn foreign(deleted: bool, deleting: bool, pods_left: bool) -> ForeignPod {
    match (deleted, deleting) {
        (true, _) if pods_left => ForeignPod::Ignore,
        (true, _) => ForeignPod::Forget,
        (false, false) => ForeignPod::Remember,
        (false, true) => ForeignPod::Ignore,
    }
}

fn route(sup: &Supervisor, v: PodView, deleted: bool) {
    if v.build_id.is_empty() {
        return;
    }
    // The cache first: whoever reads it after the build task heard of the
    // pod sees at least as much as the task.
    let pods_left = sup.pod_cache.apply(&v, deleted);
    // The status view follows the cache: the same events, in the same order.
    sup.cluster.apply(&v, deleted);
    let id = v.build_id.clone();
    let ns = v.namespace.clone();
    // A pod in another namespace than the plan of the build driven here
    // is not that build's, whatever its annotations say (anyone who may
    // create pods in a watched namespace can copy them). The machine
    // checks the uid as well; this keeps such pods from reaching it.
    if let Some(plan_ns) = sup.registry.namespace_of(&id)
        && plan_ns != ns
    {
        ignore_foreign(sup, &v, &plan_ns);
        return;
    }
    let verdict = foreign(deleted, v.deleting, pods_left);
    // A pod marked cancelled (by the worker that took the cancel) cancels
    // its build here, whatever Redis still remembers of the flag; the
    // machine ignores a cancel of a build that is ending already.
    let marked = v.cancelled.clone().filter(|_| !deleted);
    let input = if deleted {
        Input::Deleted(Box::new(v))
    } else {
        Input::Observed {
            pod: Box::new(v),
            log_tail: None,
        }
    };
    if sup.registry.send(&id, input) {
        if let Some(reason) = marked {
            sup.registry.send(&id, Input::Cancel(reason));
        }
        return;
    }
    match verdict {
        ForeignPod::Forget => sup.registry.forget_foreign(&id),
        ForeignPod::Remember => sup.registry.seen_foreign(&id, &ns),
        ForeignPod::Ignore => {}
    }
}

/// Counts (and logs once per pod) a pod that names a build driven here
/// from a namespace that is not the build's.
fn ignore_foreign(sup: &Supervisor, v: &PodView, plan_ns: &str) {
    sup.ctx.metrics.foreign_pod_ignored();
    if sup.registry.first_ignored(&v.namespace, &v.name) {
        tracing::warn!(
            build_id = %v.build_id,
            namespace = %v.namespace,
            pod = %v.name,
            build_namespace = plan_ns,
            "ignoring a pod that names a build of another namespace"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_forget_live_pods_remember_dying_pods_do_nothing() {
        for pods_left in [false, true] {
            assert_eq!(foreign(false, false, pods_left), ForeignPod::Remember);
            assert_eq!(foreign(false, true, pods_left), ForeignPod::Ignore);
        }
        assert_eq!(foreign(true, false, false), ForeignPod::Forget);
        assert_eq!(foreign(true, true, false), ForeignPod::Forget);
    }

    #[test]
    fn a_deletion_that_leaves_pods_keeps_the_build_a_candidate() {
        assert_eq!(foreign(true, false, true), ForeignPod::Ignore);
        assert_eq!(foreign(true, true, true), ForeignPod::Ignore);
    }
}
