//! The pod client: every Kubernetes API call Kiln makes about pods and
//! their ConfigMaps.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event};

/// How much of a failed pod's log the worker reads to classify it (the
/// event carries only the last [`kiln_protocol::LOG_TAIL_MAX_BYTES`]).
pub const LOG_SEARCH_BYTES: usize = 64 * 1024;

use super::labels::{KANIKO, LABEL_BUILD, SELECTOR};
use super::model::{Created, PodEvent, PodSettings, PodUnit};
use super::objects::unit_pod_spec;
use super::ownership::{configmap_differs, pod_differs};
use super::spec::configmap_spec;
use super::view::view;
use crate::classify::PodView;
use crate::error::{Error, Result};
use crate::plan::BuildPlan;

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        // The API server puts `Retry-After` into the Status body too
        // (`details.retryAfterSeconds`); 0 means it gave none.
        let (status, retry_after) = match &e {
            kube::Error::Api(s) => (
                Some(s.code),
                s.details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|&secs| secs > 0)
                    .map(|secs| Duration::from_secs(u64::from(secs))),
            ),
            _ => (None, None),
        };
        Error::Kube {
            context: e.to_string(),
            status,
            retry_after,
            source: Some(Box::new(e)),
        }
    }
}

/// The error of an object found under a name Kiln was about to create that
/// is not provably Kiln's: the attempt fails `ConfigError` with it.
fn not_ours(kind: &str, name: &str, namespace: &str, why: &str) -> Error {
    Error::Config(format!(
        "a {kind} named {name} already exists in namespace {namespace} and is not the one Kiln creates for this build ({why})"
    ))
}

/// The pod client.
#[derive(Clone)]
pub struct Pods {
    pub(super) client: kube::Client,
    settings: Arc<PodSettings>,
    /// Bounds concurrent API calls (as client-go's QPS/burst do): a burst of
    /// requests must not open hundreds of connections to the API server.
    pub(super) calls: Arc<tokio::sync::Semaphore>,
}

/// Concurrent create/delete/log/list calls per worker.
pub const MAX_CONCURRENT_CALLS: usize = 32;

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Runs `call` until it succeeds, fails permanently, or
/// [`crate::retry::kube_call`]
/// runs out. A server that asked for a `Retry-After` waits at least that
/// long: hammering a throttling API server only prolongs the throttling.
async fn with_retries<T, F, Fut>(call: F, notify: impl FnMut(&Error, Duration)) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    call.retry(crate::retry::kube_call())
        .when(Error::is_transient)
        .adjust(|e, delay| delay.map(|d| e.retry_after().map_or(d, |r| r.max(d))))
        .notify(notify)
        .await
}

impl Pods {
    pub fn new(client: kube::Client, settings: PodSettings) -> Self {
        Self {
            client,
            settings: Arc::new(settings),
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS)),
        }
    }

    /// Builds a client from the usual kubeconfig or in-cluster config.
    pub async fn default_client() -> Result<kube::Client> {
        kube::Client::try_default().await.map_err(|e| Error::Kube {
            context: format!(
                "cannot configure the Kubernetes client (kubeconfig or in-cluster): {e}"
            ),
            status: None,
            retry_after: None,
            source: Some(Box::new(e)),
        })
    }

    /// Round trip to the API server (readiness).
    pub async fn ping(&self) -> Result<()> {
        self.client.apiserver_version().await?;
        Ok(())
    }

    /// Creates the pod `unit` names (and, for inline
    /// Dockerfiles, its ConfigMap owned by the pod). An object already under
    /// one of these names (409; or a pod that a quota refusal hides) is used
    /// only when it is provably the one Kiln creates (`ownership.rs`):
    /// otherwise the attempt fails with [`Error::Config`] and nothing of
    /// it is used, observed or deleted. One try: the caller retries.
    pub async fn create(
        &self,
        plan: &BuildPlan,
        unit: &PodUnit,
        now: jiff::Timestamp,
    ) -> Result<Created> {
        // Boxed: the pod and ConfigMap specs live across the awaits, and
        // every build task's future would carry them inline.
        Box::pin(self.create_checked(plan, unit, now)).await
    }

    async fn create_checked(
        &self,
        plan: &BuildPlan,
        unit: &PodUnit,
        now: jiff::Timestamp,
    ) -> Result<Created> {
        let _permit = self.calls.acquire().await;
        let ns = plan.namespace.as_str();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = unit_pod_spec(&self.settings, plan, unit, now);
        let name = pod.metadata.name.clone().unwrap_or_default();
        // A ConfigMap under this attempt's name before the pod exists is
        // someone else's unless its contents are Kiln's (an earlier try of
        // ours, owned by this pod). Checked before the pod is created: a
        // pod never starts with a ConfigMap found here.
        if let Some(cm) = configmap_spec(plan, unit, &name, "") {
            self.check_existing_configmap(ns, &cm, None).await?;
        }
        let existing = |found: Pod| match pod_differs(&pod, &found) {
            None => Ok(Created::Existing(view(&found))),
            Some(why) => {
                tracing::warn!(namespace = ns, pod = %name, why, "a pod under the name Kiln creates is not Kiln's; the attempt fails");
                Err(not_ours("pod", &name, ns, &why))
            }
        };
        // One try: the build task retries creation under the build's own
        // policy (deadline, stop token, `Retry-After`), so a second layer
        // here would multiply the tries and hold the API-call permit while
        // sleeping.
        let created = match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => Created::New(view(&p)),
            Err(kube::Error::Api(s)) if s.code == 409 => match pods.get_opt(&name).await? {
                Some(found) => existing(found)?,
                // Deleted between the two calls: the next try creates it.
                None => {
                    return Err(Error::Kube {
                        context: format!("pod {name} vanished while being adopted"),
                        status: Some(503),
                        retry_after: None,
                        source: None,
                    });
                }
            },
            Err(e) => {
                let e = Error::from(e);
                // Quota admission answers before the name is checked: the
                // pod may exist (a previous owner's create). Taken only if
                // it is provably Kiln's, like a 409.
                if !e.is_quota_refusal() {
                    return Err(e);
                }
                match pods.get_opt(&name).await? {
                    Some(found) => existing(found)?,
                    None => return Err(e),
                }
            }
        };
        let uid = match &created {
            Created::New(v) | Created::Existing(v) => v.uid.clone(),
        };
        if let Some(cm) = configmap_spec(plan, unit, &name, &uid)
            && let Err(e) = self.create_configmap(ns, &cm, &uid).await
        {
            if matches!(e, Error::Config(_)) {
                // Someone else's Dockerfile under our ConfigMap's name
                // appeared after the check above: the pod must never start
                // with it. Deleted only if it is still the pod just
                // created or checked (uid precondition).
                self.delete_unlocked(ns, &name, &uid).await?;
            }
            return Err(e);
        }
        Ok(created)
    }

    /// Fails with [`Error::Config`] if a ConfigMap exists under `ours`'s name
    /// that is not provably Kiln's (`pod_uid`: the owner it must name; `None`
    /// before the pod exists: any owner passes, the pod is checked itself).
    async fn check_existing_configmap(
        &self,
        namespace: &str,
        ours: &ConfigMap,
        pod_uid: Option<&str>,
    ) -> Result<bool> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let name = ours.metadata.name.clone().unwrap_or_default();
        let Some(found) = cms.get_opt(&name).await? else {
            return Ok(false);
        };
        match configmap_differs(ours, &found, pod_uid) {
            None => Ok(true),
            Some(why) => {
                tracing::warn!(namespace, configmap = %name, why, "a ConfigMap under the name Kiln creates is not Kiln's; the attempt fails");
                Err(not_ours("ConfigMap", &name, namespace, &why))
            }
        }
    }

    async fn create_configmap(&self, namespace: &str, cm: &ConfigMap, pod_uid: &str) -> Result<()> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        // One try, like the pod: a retry of `create` finds the pod (409)
        // and creates the ConfigMap again.
        match cms.create(&PostParams::default(), cm).await {
            Ok(_) => Ok(()),
            // Ours from an earlier try, or someone else's: only its
            // contents and owner tell.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if self
                    .check_existing_configmap(namespace, cm, Some(pod_uid))
                    .await?
                {
                    Ok(())
                } else {
                    Err(Error::Kube {
                        context: format!(
                            "ConfigMap {} vanished while being checked",
                            cm.metadata.name.as_deref().unwrap_or_default()
                        ),
                        status: Some(503),
                        retry_after: None,
                        source: None,
                    })
                }
            }
            Err(e) => Err(Error::from(e)),
        }
    }

    /// Deletes a pod if it is still the one we mean (uid precondition).
    /// Gone already is fine.
    pub async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let _permit = self.calls.acquire().await;
        self.delete_unlocked(namespace, name, uid).await
    }

    /// [`Pods::delete`] for a caller that holds an API-call permit already.
    async fn delete_unlocked(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut dp = DeleteParams::background();
        if !uid.is_empty() {
            dp.preconditions = Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        let delete = || async {
            match pods.delete(name, &dp).await {
                Ok(_) => Ok(()),
                // 404: gone; 409: the name now belongs to another pod.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        };
        with_retries(delete, |_, _| {}).await
    }

    /// Marks a pod with its build's cancel (annotation `kiln.dev/cancelled`
    /// = `reason`, a merge patch: nothing else changes). A pod gone already
    /// needs no mark.
    pub async fn mark_cancelled(&self, namespace: &str, name: &str, reason: &str) -> Result<()> {
        let _permit = self.calls.acquire().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch =
            serde_json::json!({"metadata": {"annotations": {super::ANN_CANCELLED: reason}}});
        let mark = || async {
            match pods
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        };
        with_retries(mark, |_, _| {}).await
    }

    /// The end of the Kaniko log (the last [`LOG_SEARCH_BYTES`] of its last
    /// 500 lines), or `None` if the log cannot be read (the termination
    /// message is used instead). Longer than the 8 KiB an event carries:
    /// the executor's `Error:` line sits above several KiB of cobra usage
    /// text. The machine masks it and keeps the last 8 KiB.
    pub async fn log_tail(&self, namespace: &str, name: &str) -> Option<String> {
        let _permit = self.calls.acquire().await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // `limitBytes` keeps the *first* bytes of the selected lines: it
        // only bounds memory, the tail is cut here.
        let lp = LogParams {
            container: Some(KANIKO.into()),
            tail_lines: Some(500),
            limit_bytes: Some(1 << 20),
            ..LogParams::default()
        };
        match tokio::time::timeout(Duration::from_secs(5), pods.logs(name, &lp)).await {
            Ok(Ok(log)) if !log.trim().is_empty() => {
                Some(kiln_protocol::tail_bytes(&log, LOG_SEARCH_BYTES).to_owned())
            }
            _ => None,
        }
    }

    /// Every Kiln pod of one build in `namespace`.
    pub async fn build_pods(&self, namespace: &str, build_id: &str) -> Result<Vec<PodView>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{SELECTOR},{LABEL_BUILD}={}",
            kiln_protocol::label_value(build_id)
        );
        // Under the API-call limit like every other call, one permit per
        // try (not held across the retry waits): a flood of cancels looking
        // for owners must not open more calls than the limit.
        let list = || async {
            let _permit = self.calls.acquire().await;
            pods.list(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::from)
        };
        let list = with_retries(list, |_, _| {}).await?;
        Ok(list
            .items
            .iter()
            .map(view)
            .filter(|v| v.build_id == build_id)
            .collect())
    }

    /// Follows every Kiln pod of `namespace`. The stream never ends: watch
    /// errors (dropped connections, 410 Gone, 5xx) are retried with backoff
    /// by kube-runtime, which relists and yields [`PodEvent::Resync`].
    pub fn watch(&self, namespace: &str) -> impl Stream<Item = PodEvent> + Send + use<> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let cfg = watcher::Config::default().labels(SELECTOR).timeout(290);
        let ns = namespace.to_owned();
        watcher(pods, cfg).default_backoff().filter_map(move |ev| {
            let ns = ns.clone();
            async move {
                match ev {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => Some(PodEvent::Applied(view(&p))),
                    Ok(Event::Delete(p)) => Some(PodEvent::Deleted(view(&p))),
                    Ok(Event::Init) => Some(PodEvent::Resync),
                    Ok(Event::InitDone) => Some(PodEvent::Synced),
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "pod watch interrupted; resuming");
                        None
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The body of the 429 the API Priority and Fairness filter sends.
    fn throttled(details: &serde_json::Value) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "TooManyRequests", "code": 429,
            "message": "Too many requests, please try again later.",
            "details": details,
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn retry_after_comes_from_the_status_details() {
        let e = Error::from(throttled(&serde_json::json!({"retryAfterSeconds": 3})));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_transient());
        assert!(std::error::Error::source(&e).is_some());
        let none = Error::from(throttled(&serde_json::json!({})));
        assert_eq!(none.retry_after(), None);
    }
}
