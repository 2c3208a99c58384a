//! A fake Kubernetes API server for integration tests and benchmarks.
//!
//! It serves what Kiln calls of the core/v1 API, over real HTTP/1.1 (the
//! paths, query parameters, status codes and `Status` bodies of the real API
//! server, so an unmodified `kube::Client` and `kube::runtime::watcher` work
//! against it): create, get, delete and annotation patches of pods, create of ConfigMaps, pod
//! logs, and lists and watches selected by `key=value` labels. With:
//!
//! * an in-memory store with a global resourceVersion, bounded watch history
//!   and list pagination ([`store`], [`pagination`]);
//! * watch streams with bookmarks, timeouts and 410 Expired ([`watch`]);
//! * real pod deletion semantics (graceful deletion, preconditions) and owner
//!   reference garbage collection ([`gc`]);
//! * a scheduler + kubelet simulator driven by a per-pod script ([`Kubelet`]);
//! * a pods ResourceQuota per namespace, refusing creates over it with the
//!   quota admission's 403 ([`FakeKube::set_pod_quota`]);
//! * fault injection ([`Faults`]) and a log of every call ([`CallRecord`]).
//!
//! What Kiln never sends is refused rather than imitated, so a Kiln change
//! that starts sending it fails its tests with a message saying so: PUT
//! (405), any PATCH but a merge patch of a pod's annotations (400, 405 off
//! pods), the `status` subresource (404), field selectors and
//! set-based label selectors (400, [`selector`]), dry-run (400).
//!
//! ```ignore
//! let kube = FakeKube::start().await;
//! kube.kubelet().set_script(|pod| if pod.metadata.name.as_deref() == Some("bad") {
//!     Fate::fail(1, "error building image\n")
//! } else {
//!     Fate::succeed()
//! });
//! let pods: Api<Pod> = Api::default_namespaced(kube.client());
//! ```
//!
//! Deliberate simplifications are documented where they live: Foreground
//! propagation ([`store::Propagation`]), namespaces (created on use).

mod calls;
mod defaults;
mod executor;
mod faults;
mod gc;
mod kubelet;
mod logs;
mod pagination;
mod quota;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use tokio_util::sync::CancellationToken;

pub use calls::CallRecord;
pub use defaults::pod_on_create;
pub use executor::{Executor, Exit, digest_of};
pub use faults::{FaultResponse, FaultRule, Faults, Injected};
pub use kubelet::{Deferred, Fate, Kubelet, NODE_NAME, PendingReason, Timing};
pub use quota::Quota;
pub use resource::{Resource, Verb};

use calls::CallLog;
use store::{Store, StoreOptions};

/// Settings of a [`FakeKube`].
#[derive(Debug, Clone)]
pub struct FakeKubeOptions {
    /// Default namespace of [`FakeKube::client`] and of the kubeconfig.
    pub namespace: String,
    /// Watch events kept for resuming watches (older resourceVersions get 410).
    pub history: usize,
    /// Events a watcher may lag behind before its stream is closed.
    pub broadcast: usize,
    /// Interval of BOOKMARK events (the real server: about a minute).
    pub bookmark_interval: Duration,
    /// API calls kept in the call log.
    pub call_log: usize,
    /// Initial kubelet timing.
    pub timing: Timing,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        let store = StoreOptions::default();
        Self {
            namespace: "default".to_owned(),
            history: store.history,
            broadcast: store.broadcast,
            bookmark_interval: Duration::from_secs(5),
            call_log: 1_000_000,
            timing: Timing::default(),
        }
    }
}

/// Reads the ConfigMaps of a [`FakeKube`] (see
/// [`FakeKube::configmap_reader`]).
#[derive(Debug, Clone)]
pub struct ConfigMapReader(Arc<Store>);

impl ConfigMapReader {
    pub fn get(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.0
            .get(Resource::ConfigMaps, namespace, name)
            .and_then(|v| serde_json::from_value((*v).clone()).ok())
    }
}

/// A running fake API server. Dropping it stops the server, its watches and
/// the kubelet.
#[derive(Debug)]
pub struct FakeKube {
    addr: SocketAddr,
    namespace: String,
    store: Arc<Store>,
    faults: Arc<Faults>,
    calls: Arc<CallLog>,
    kubelet: Kubelet,
    shutdown: CancellationToken,
}

impl FakeKube {
    /// Starts a server on `127.0.0.1:<random port>` with default options.
    pub async fn start() -> Self {
        Self::start_with(FakeKubeOptions::default()).await
    }

    /// Starts a server with these options.
    pub async fn start_with(opts: FakeKubeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fakekube: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fakekube: local address");
        let store = Store::new(StoreOptions {
            history: opts.history,
            broadcast: opts.broadcast,
        });
        let shutdown = CancellationToken::new();
        let (gc_tx, gc_rx) = tokio::sync::mpsc::unbounded_channel();
        store.set_gc(gc_tx);
        let gc_task = gc::spawn(store.clone(), gc_rx);
        let kubelet = Kubelet::spawn(store.clone(), shutdown.clone());
        kubelet.set_timing(opts.timing);
        let faults = Arc::new(Faults::new(store.clone()));
        let calls = Arc::new(CallLog::new(opts.call_log));
        let app = server::App {
            store: store.clone(),
            faults: faults.clone(),
            calls: calls.clone(),
            kubelet: kubelet.clone(),
            bookmark_interval: opts.bookmark_interval,
            shutdown: shutdown.clone(),
            addr,
        };
        let router = axum::Router::new()
            .fallback(server::dispatch)
            .with_state(app);
        let token = shutdown.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(token.clone().cancelled_owned());
            tokio::select! {
                r = serve => if let Err(e) = r { tracing::warn!("fakekube server: {e}") },
                () = async { token.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => {}
            }
            gc_task.abort();
        });
        Self {
            addr,
            namespace: opts.namespace,
            store,
            faults,
            calls,
            kubelet,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for this server, in the default namespace.
    pub fn client(&self) -> kube::Client {
        self.client_in(&self.namespace)
    }

    /// A client for this server with another default namespace.
    pub fn client_in(&self, namespace: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("fakekube: url"));
        namespace.clone_into(&mut config.default_namespace);
        kube::Client::try_from(config).expect("fakekube: client")
    }

    /// Writes a kubeconfig for another process (`KUBECONFIG=<path>`): plain
    /// HTTP to this server, no credentials, the default namespace.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fakekube\n  cluster:\n    server: {url}\ncontexts:\n- name: fakekube\n  context:\n    cluster: fakekube\n    user: fakekube\n    namespace: {ns}\ncurrent-context: fakekube\npreferences: {{}}\nusers:\n- name: fakekube\n  user: {{}}\n",
            url = self.url(),
            ns = self.namespace,
        );
        std::fs::write(path, yaml)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A ResourceQuota named `name` limiting namespace `ns` to `pods` pods
    /// that count (not Succeeded or Failed); creates beyond it get the API
    /// server's 403 `exceeded quota`.
    pub fn set_pod_quota(&self, ns: &str, name: &str, pods: u64) {
        self.store.set_quota(
            ns,
            Some(Quota {
                name: name.to_owned(),
                pods,
            }),
        );
    }

    /// Removes the ResourceQuota of `ns`.
    pub fn clear_quota(&self, ns: &str) {
        self.store.set_quota(ns, None);
    }

    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    /// Every API call answered so far, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.all()
    }

    pub fn clear_calls(&self) {
        self.calls.clear();
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.current_rv()
    }

    /// Namespaces that have held objects.
    pub fn namespaces(&self) -> Vec<String> {
        self.store.namespaces()
    }

    /// The pods of a namespace, by name.
    pub fn pods(&self, namespace: &str) -> Vec<Pod> {
        self.typed(Resource::Pods, namespace)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.store
            .get(Resource::Pods, namespace, name)
            .and_then(|v| serde_json::from_value((*v).clone()).ok())
    }

    /// What the kubelet reads to mount ConfigMap volumes, for kubelet
    /// scripts that run a pod's command for real.
    pub fn configmap_reader(&self) -> ConfigMapReader {
        ConfigMapReader(self.store.clone())
    }

    /// The configmaps of a namespace, by name.
    pub fn configmaps(&self, namespace: &str) -> Vec<ConfigMap> {
        self.typed(Resource::ConfigMaps, namespace)
    }

    pub fn configmap(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.store
            .get(Resource::ConfigMaps, namespace, name)
            .and_then(|v| serde_json::from_value((*v).clone()).ok())
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, r: Resource, namespace: &str) -> Vec<T> {
        self.store
            .all(r, Some(namespace))
            .into_iter()
            .filter_map(|v| serde_json::from_value((*v).clone()).ok())
            .collect()
    }

    /// Stops accepting connections, cuts open watches and stops the kubelet.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
