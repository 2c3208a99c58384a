//! The control plane and node in one: a scheduler that binds every new pod to
//! `fake-node-1`, and a kubelet that moves it through its phases to the
//! outcome a script chooses.
//!
//! Every status change goes through [`Store::update`] with
//! [`Subresource::Status`] and a uid precondition, the same path as
//! `PATCH pods/{name}/status`, so watchers see each step as a MODIFIED event.
//! Shapes follow what a kubelet (1.29+) writes: conditions
//! `PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady`,
//! `PodScheduled`; container `state.waiting/running/terminated`, `lastState: {}`,
//! `ready`, `started`, `restartCount`, `image`, `imageID`, `containerID`.
//!
//! Deletion: a graceful delete (deletionTimestamp set) makes the kubelet stop
//! the container (SIGTERM, exit 143), write the final status (phase Failed),
//! and remove the pod with a grace-0 delete guarded by its uid, as the real
//! kubelet's status manager does.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::executor::{Executor, Exit, render};
use super::logs;
use super::resource::Resource;
use super::store::{DeleteOptions, Event, EventType, Preconditions, Store, Subresource};

/// The node every pod is scheduled to.
pub const NODE_NAME: &str = "fake-node-1";
const HOST_IP: &str = "172.18.0.2";

/// Why a pod stays Pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingReason {
    /// Never scheduled: `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable,
    /// Scheduled; the container waits with reason `ErrImagePull`.
    ErrImagePull,
    /// `ErrImagePull` first, then `ImagePullBackOff`.
    ImagePullBackOff,
    /// The image reference does not parse.
    InvalidImageName,
    /// A referenced Secret or ConfigMap is missing.
    CreateContainerConfigError,
}

/// What happens to a pod, chosen by the kubelet script when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Exit 0. The termination message is the digest (Kaniko writes it to
    /// `/dev/termination-log` with `--digest-file`); `None` means
    /// `"sha256:" + hex(sha256(pod name))`.
    Succeed { digest: Option<String>, log: String },
    /// Exit non-zero, reason `Error`. Under `FallbackToLogsOnError` the
    /// termination message is the tail of `log`.
    Fail { exit_code: i32, log: String },
    /// Container terminated `OOMKilled`, exit 137.
    OomKilled,
    /// Evicted by the kubelet for memory pressure: phase Failed, reason
    /// `Evicted`, `DisruptionTarget` condition (reason `TerminationByKubelet`).
    Evicted,
    /// Killed for `activeDeadlineSeconds`: phase Failed, reason `DeadlineExceeded`
    /// (also happens by itself when the pod's deadline passes first).
    DeadlineExceeded,
    /// The node went away: `DisruptionTarget` (reason `DeletionByTaintManager`),
    /// the pod is deleted, ends Failed with exit 137 (`ContainerStatusUnknown`)
    /// and is removed.
    NodeLost,
    /// Stays Pending for the given reason (until deleted, or until its
    /// `activeDeadlineSeconds` passes once it is on the node).
    StayPending { reason: PendingReason },
    /// Runs until deleted (or its deadline passes).
    RunForever,
    /// The Kaniko executor does this, rendered from the pod's own args
    /// (`--log-format`, `--digest-file`, `--destination`, `--push-retry`) as
    /// the executor would print and write it (see [`executor`](super::executor)).
    Executor(Executor),
    /// The container exits like this (what [`Fate::Executor`] renders to).
    Exit(Exit),
    /// The fate is the outcome of real work done for the pod before it
    /// starts (pushing an image to a real registry, running `kiln
    /// publish`): the pod stays as created until it is known.
    Deferred(Deferred),
}

/// Work whose outcome is a pod's [`Fate`] (see [`Fate::Deferred`]).
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct Deferred(Arc<dyn Fn(Pod) -> Pin<Box<dyn Future<Output = Fate> + Send>> + Send + Sync>);

impl Deferred {
    pub fn new<F, Fut>(work: F) -> Self
    where
        F: Fn(Pod) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Fate> + Send + 'static,
    {
        Self(Arc::new(move |pod| Box::pin(work(pod))))
    }

    async fn run(&self, pod: Pod) -> Fate {
        (self.0)(pod).await
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Deferred")
    }
}

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Deferred {}

impl Fate {
    /// The log of [`Fate::succeed`].
    pub fn succeed_log() -> String {
        match Self::succeed() {
            Self::Succeed { log, .. } => log,
            _ => String::new(),
        }
    }

    /// Success with the default digest and a Kaniko-like log.
    pub fn succeed() -> Self {
        Self::Succeed {
            digest: None,
            log: "INFO[0000] Retrieving image manifest alpine:3.20\nINFO[0001] Building stage 'alpine:3.20' [idx: '0', base-idx: '-1']\nINFO[0002] Taking snapshot of full filesystem...\nINFO[0003] Pushing image\nINFO[0004] Pushed image\n".to_owned(),
        }
    }

    /// Failure with this exit code and log.
    pub fn fail(exit_code: i32, log: impl Into<String>) -> Self {
        Self::Fail {
            exit_code,
            log: log.into(),
        }
    }

    fn log(&self) -> String {
        match self {
            Self::Succeed { log, .. } | Self::Fail { log, .. } => log.clone(),
            Self::Exit(e) => e.log.clone(),
            Self::OomKilled => "INFO[0000] Retrieving image manifest alpine:3.20\nINFO[0003] RUN make -j64\n".to_owned(),
            _ => "INFO[0000] Retrieving image manifest alpine:3.20\nINFO[0001] Building stage 'alpine:3.20'\n".to_owned(),
        }
    }
}

/// How long the simulated steps take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// From the kubelet seeing the pod (ContainerCreating) to Running.
    pub pending: Duration,
    /// From Running to the outcome.
    pub running: Duration,
    /// From a graceful delete to the container's exit.
    pub terminating: Duration,
}

impl Timing {
    /// As fast as possible; each step is still its own write and event.
    pub fn instant() -> Self {
        Self {
            pending: Duration::ZERO,
            running: Duration::ZERO,
            terminating: Duration::ZERO,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            pending: Duration::from_millis(10),
            running: Duration::from_millis(50),
            terminating: Duration::from_millis(10),
        }
    }
}

type Script = Arc<dyn Fn(&Pod) -> Fate + Send + Sync>;

#[derive(Debug, Clone, Copy, Default)]
struct Signal {
    deleting: bool,
    gone: bool,
}

struct Shared {
    store: Arc<Store>,
    script: RwLock<Script>,
    timing: Mutex<Timing>,
    /// pod uid -> container log
    logs: Mutex<HashMap<String, String>>,
    /// pod uid -> signal to its task
    pods: Mutex<HashMap<String, watch::Sender<Signal>>>,
    next_ip: AtomicU32,
    shutdown: CancellationToken,
    /// Bumped when a log grows or a pod's status changes: wakes the log
    /// endpoint's `follow=true` streams (the real kubelet uses fsnotify).
    log_changes: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kubelet (and scheduler) simulator of one [`FakeKube`](super::FakeKube).
#[derive(Clone)]
pub struct Kubelet {
    shared: Arc<Shared>,
}

impl fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubelet")
            .field("timing", &self.timing())
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    pub(crate) fn spawn(store: Arc<Store>, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        store.set_kubelet(tx);
        let shared = Arc::new(Shared {
            store,
            script: RwLock::new(Arc::new(|_: &Pod| Fate::succeed())),
            timing: Mutex::new(Timing::default()),
            logs: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            next_ip: AtomicU32::new(0),
            shutdown,
            log_changes: watch::Sender::new(0),
        });
        tokio::spawn(dispatch(shared.clone(), rx));
        Self { shared }
    }

    /// Chooses each new pod's fate (default: [`Fate::succeed`]).
    pub fn set_script(&self, script: impl Fn(&Pod) -> Fate + Send + Sync + 'static) {
        *self
            .shared
            .script
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(script);
    }

    /// Timing for pods created from now on.
    pub fn set_timing(&self, timing: Timing) {
        *lock(&self.shared.timing) = timing;
    }

    pub fn timing(&self) -> Timing {
        *lock(&self.shared.timing)
    }

    /// The container log of a pod, as the log endpoint would serve it in full.
    pub fn log(&self, namespace: &str, name: &str) -> Option<String> {
        let pod = self.shared.store.get(Resource::Pods, namespace, name)?;
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
        lock(&self.shared.logs).get(uid).cloned()
    }

    /// Appends to a running pod's log.
    pub fn append_log(&self, namespace: &str, name: &str, text: &str) {
        if let Some(pod) = self.shared.store.get(Resource::Pods, namespace, name)
            && let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str)
        {
            lock(&self.shared.logs)
                .entry(uid.to_owned())
                .or_default()
                .push_str(text);
            self.shared.log_changed();
        }
    }

    pub(crate) fn log_by_uid(&self, uid: &str) -> Option<String> {
        lock(&self.shared.logs).get(uid).cloned()
    }

    /// Changes whenever a log grows or a pod's status changes.
    pub(crate) fn log_changes(&self) -> watch::Receiver<u64> {
        self.shared.log_changes.subscribe()
    }
}

impl Shared {
    fn log_changed(&self) {
        self.log_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Reacts to pod events: starts a task for each new pod, tells tasks about
/// deletions.
async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Arc<Event>>) {
    loop {
        let ev = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        let Some(uid) = ev.object.pointer("/metadata/uid").and_then(Value::as_str) else {
            continue;
        };
        match ev.kind {
            EventType::Added => {
                let (tx, sig) = watch::channel(Signal::default());
                lock(&shared.pods).insert(uid.to_owned(), tx);
                let Ok(pod) = serde_json::from_value::<Pod>((*ev.object).clone()) else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let token = shared.shutdown.clone();
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = run_pod(shared, pod, sig) => {}
                    }
                });
            }
            EventType::Modified => {
                if ev.object.pointer("/metadata/deletionTimestamp").is_some()
                    && let Some(tx) = lock(&shared.pods).get(uid)
                {
                    tx.send_modify(|s| s.deleting = true);
                }
            }
            EventType::Deleted => {
                if let Some(tx) = lock(&shared.pods).remove(uid) {
                    tx.send_modify(|s| s.gone = true);
                }
                lock(&shared.logs).remove(uid);
                shared.log_changed();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Elapsed,
    Deadline,
    Deleting,
    Gone,
}

#[derive(Debug, Clone)]
struct ContainerInfo {
    name: String,
    image: String,
    fallback_to_logs: bool,
    container_id: String,
    image_id: String,
}

struct PodRun {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    containers: Vec<ContainerInfo>,
    sig: watch::Receiver<Signal>,
    deadline: Option<Instant>,
    /// When the containers started running.
    started_at: Option<Time>,
}

fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

pub(crate) fn hex_sha256(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The repository part of an image reference (tag and digest removed).
fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn set_condition(
    s: &mut PodStatus,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    let new = PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message: message.map(str::to_owned),
        last_transition_time: Some(now()),
        last_probe_time: None,
        observed_generation: None,
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status == status {
                // Same status: keep the transition time.
                c.reason = new.reason;
                c.message = new.message;
            } else {
                *c = new;
            }
        }
        None => conds.push(new),
    }
}

fn order_conditions(s: &mut PodStatus) {
    const ORDER: [&str; 6] = [
        "DisruptionTarget",
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    if let Some(c) = s.conditions.as_mut() {
        c.sort_by_key(|c| {
            ORDER
                .iter()
                .position(|o| *o == c.type_)
                .unwrap_or(ORDER.len())
        });
    }
}

impl ContainerInfo {
    fn status(
        &self,
        state: ContainerState,
        ready: bool,
        started: bool,
        ran: bool,
    ) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: if ran {
                self.image_id.clone()
            } else {
                String::new()
            },
            container_id: ran.then(|| self.container_id.clone()),
            ready,
            started: Some(started),
            restart_count: 0,
            last_state: Some(ContainerState::default()),
            state: Some(state),
            ..ContainerStatus::default()
        }
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// How a container ended.
struct Ending {
    exit_code: i32,
    reason: &'static str,
    message: Option<String>,
}

async fn run_pod(shared: Arc<Shared>, pod: Pod, sig: watch::Receiver<Signal>) {
    let script = shared
        .script
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let fate = match script(&pod) {
        Fate::Deferred(work) => work.run(pod.clone()).await,
        f => f,
    };
    let fate = match fate {
        Fate::Executor(e) => Fate::Exit(render(&pod, &e)),
        f => f,
    };
    let timing = *lock(&shared.timing);
    let meta = &pod.metadata;
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = spec
        .containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            ContainerInfo {
                name: c.name.clone(),
                fallback_to_logs: c.termination_message_policy.as_deref()
                    == Some("FallbackToLogsOnError"),
                container_id: format!("containerd://{}", hex_sha256(&format!("{uid}/{}", c.name))),
                image_id: format!("{}@sha256:{}", repository(&image), hex_sha256(&image)),
                image,
            }
        })
        .collect();
    let mut run = PodRun {
        shared,
        ns,
        name,
        uid,
        containers,
        sig,
        deadline: None,
        started_at: None,
    };
    run.lifecycle(&pod, fate, timing, spec.active_deadline_seconds)
        .await;
}

impl PodRun {
    /// Status write through the `/status` path, guarded by the pod's uid.
    /// False when the pod is gone (or replaced).
    fn status(&self, f: impl FnOnce(&mut PodStatus)) -> bool {
        let pre = Preconditions {
            uid: Some(self.uid.clone()),
            resource_version: None,
        };
        self.shared
            .store
            .update(
                Resource::Pods,
                &self.ns,
                &self.name,
                Subresource::Status,
                &pre,
                |cur| {
                    let mut pod: Pod = serde_json::from_value(cur.clone())
                        .map_err(|e| super::status::ApiError::internal(&e.to_string()))?;
                    let s = pod.status.get_or_insert_with(PodStatus::default);
                    f(s);
                    order_conditions(s);
                    serde_json::to_value(&pod)
                        .map_err(|e| super::status::ApiError::internal(&e.to_string()))
                },
            )
            .inspect(|_| self.shared.log_changed())
            .is_ok()
    }

    /// The scheduler's binding: `spec.nodeName` and `PodScheduled=True` in one write.
    fn bind(&self) -> bool {
        let pre = Preconditions {
            uid: Some(self.uid.clone()),
            resource_version: None,
        };
        self.shared
            .store
            .update(
                Resource::Pods,
                &self.ns,
                &self.name,
                Subresource::Internal,
                &pre,
                |cur| {
                    let mut pod: Pod = serde_json::from_value(cur.clone())
                        .map_err(|e| super::status::ApiError::internal(&e.to_string()))?;
                    pod.spec.get_or_insert_with(Default::default).node_name =
                        Some(NODE_NAME.to_owned());
                    let s = pod.status.get_or_insert_with(PodStatus::default);
                    set_condition(s, "PodScheduled", "True", None, None);
                    serde_json::to_value(&pod)
                        .map_err(|e| super::status::ApiError::internal(&e.to_string()))
                },
            )
            .is_ok()
    }

    /// The kubelet's final grace-0 delete after the containers stopped.
    fn remove(&self) {
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            },
        };
        let _ = self
            .shared
            .store
            .delete(Resource::Pods, &self.ns, &self.name, &opts);
    }

    fn set_log(&self, log: String) {
        lock(&self.shared.logs).insert(self.uid.clone(), log);
        self.shared.log_changed();
    }

    fn current_log(&self) -> String {
        lock(&self.shared.logs)
            .get(&self.uid)
            .cloned()
            .unwrap_or_default()
    }

    /// Sleeps `d` (forever for `None`) unless the deadline passes or the pod
    /// is deleted first.
    async fn wait(&mut self, d: Option<Duration>) -> Wake {
        let until = d.map(|d| Instant::now() + d);
        loop {
            let s = *self.sig.borrow_and_update();
            if s.gone {
                return Wake::Gone;
            }
            if s.deleting {
                return Wake::Deleting;
            }
            let deadline = self.deadline;
            tokio::select! {
                biased;
                changed = self.sig.changed() => {
                    if changed.is_err() {
                        return Wake::Gone;
                    }
                }
                () = async { if let Some(t) = deadline { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                    return Wake::Deadline;
                }
                () = async { if let Some(t) = until { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                    return Wake::Elapsed;
                }
            }
        }
    }

    async fn lifecycle(
        &mut self,
        pod: &Pod,
        fate: Fate,
        timing: Timing,
        active_deadline: Option<i64>,
    ) {
        if fate
            == (Fate::StayPending {
                reason: PendingReason::Unschedulable,
            })
        {
            self.status(|s| {
                s.phase = Some("Pending".into());
                set_condition(
                    s,
                    "PodScheduled",
                    "False",
                    Some("Unschedulable"),
                    Some("0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."),
                );
            });
            // Deleting an unscheduled pod removes it at once.
            self.wait(None).await;
            return;
        }
        if !self.bind() {
            return;
        }
        // The kubelet admits the pod: startTime is the clock of activeDeadlineSeconds.
        self.deadline = active_deadline
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| Instant::now() + Duration::from_secs(s));
        let ip = self.shared.next_ip.fetch_add(1, Ordering::Relaxed);
        let pod_ip = format!("10.244.{}.{}", (ip / 250) % 250, ip % 250 + 2);
        let cs = self.containers.clone();
        let names: Vec<String> = cs.iter().map(|c| c.name.clone()).collect();
        let unready = format!("containers with unready status: [{}]", names.join(" "));
        if !self.status(|s| {
            s.phase = Some("Pending".into());
            s.start_time = Some(now());
            s.host_ip = Some(HOST_IP.into());
            s.host_ips = Some(vec![HostIP { ip: HOST_IP.into() }]);
            set_condition(s, "PodReadyToStartContainers", "False", None, None);
            set_condition(s, "Initialized", "True", None, None);
            set_condition(
                s,
                "Ready",
                "False",
                Some("ContainersNotReady"),
                Some(&unready),
            );
            set_condition(
                s,
                "ContainersReady",
                "False",
                Some("ContainersNotReady"),
                Some(&unready),
            );
            s.container_statuses = Some(
                cs.iter()
                    .map(|c| c.status(waiting("ContainerCreating", None), false, false, false))
                    .collect(),
            );
        }) {
            return;
        }

        if let Fate::StayPending { reason } = fate {
            self.stay_pending(pod, reason, timing).await;
            return;
        }

        let wake = self.wait(Some(timing.pending)).await;
        if self.interrupted(wake, timing).await {
            return;
        }

        // Running.
        self.set_log(fate.log());
        let started = now();
        self.started_at = Some(started.clone());
        if !self.status(|s| {
            s.phase = Some("Running".into());
            s.pod_ip = Some(pod_ip.clone());
            s.pod_ips = Some(vec![PodIP { ip: pod_ip.clone() }]);
            set_condition(s, "PodReadyToStartContainers", "True", None, None);
            set_condition(s, "Ready", "True", None, None);
            set_condition(s, "ContainersReady", "True", None, None);
            s.container_statuses = Some(
                cs.iter()
                    .map(|c| {
                        let st = ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: Some(started.clone()),
                            }),
                            ..ContainerState::default()
                        };
                        c.status(st, true, true, true)
                    })
                    .collect(),
            );
        }) {
            return;
        }

        let run_for = if fate == Fate::RunForever {
            None
        } else {
            Some(timing.running)
        };
        let wake = self.wait(run_for).await;
        if self.interrupted(wake, timing).await {
            return;
        }

        match fate {
            Fate::Succeed { digest, .. } => {
                let digest = digest.unwrap_or_else(|| format!("sha256:{}", hex_sha256(&self.name)));
                self.finish("Succeeded", None, None, |_| Ending {
                    exit_code: 0,
                    reason: "Completed",
                    message: Some(digest.clone()),
                });
            }
            Fate::Fail { exit_code, .. } => {
                self.finish("Failed", None, None, |_| Ending {
                    exit_code,
                    reason: "Error",
                    message: None,
                });
            }
            Fate::Exit(e) => {
                let phase = if e.exit_code == 0 {
                    "Succeeded"
                } else {
                    "Failed"
                };
                self.finish(phase, None, None, |_| Ending {
                    exit_code: e.exit_code,
                    reason: e.reason,
                    // The termination message file; empty means "none".
                    message: (!e.termination_file.is_empty()).then(|| e.termination_file.clone()),
                });
            }
            Fate::OomKilled => {
                self.finish("Failed", None, None, |_| Ending {
                    exit_code: 137,
                    reason: "OOMKilled",
                    message: None,
                });
            }
            Fate::Evicted => {
                let c = self
                    .containers
                    .first()
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                let msg = format!(
                    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container {c} was using 2097152Ki, request is 1Gi, has larger consumption of memory. "
                );
                self.finish(
                    "Failed",
                    Some(&("Evicted", msg.clone())),
                    Some(&("TerminationByKubelet", msg)),
                    |_| Ending {
                        exit_code: 137,
                        reason: "Error",
                        message: None,
                    },
                );
            }
            Fate::DeadlineExceeded => self.deadline_exceeded(),
            Fate::NodeLost => self.node_lost(pod, timing).await,
            Fate::RunForever | Fate::StayPending { .. } | Fate::Executor(_) | Fate::Deferred(_) => {
            }
        }
    }

    /// Handles a wake-up that is not the planned one. True when the pod's
    /// life is over (or it is gone).
    async fn interrupted(&mut self, wake: Wake, timing: Timing) -> bool {
        match wake {
            Wake::Elapsed => false,
            Wake::Gone => true,
            Wake::Deadline => {
                self.deadline_exceeded();
                true
            }
            Wake::Deleting => {
                // SIGTERM; Kaniko exits at once, a container that never
                // started is just cleaned up.
                if self.wait_gone_for(timing.terminating).await {
                    return true;
                }
                self.finish("Failed", None, None, |ran| {
                    if ran {
                        Ending {
                            exit_code: 143,
                            reason: "Error",
                            message: None,
                        }
                    } else {
                        Ending {
                            exit_code: 137,
                            reason: "ContainerStatusUnknown",
                            message: Some(
                                "The container could not be located when the pod was terminated"
                                    .into(),
                            ),
                        }
                    }
                });
                self.remove();
                true
            }
        }
    }

    /// Sleeps `d`; true if the pod disappeared meanwhile.
    async fn wait_gone_for(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.sig.borrow_and_update().gone {
                return true;
            }
            tokio::select! {
                changed = self.sig.changed() => if changed.is_err() { return true; },
                () = tokio::time::sleep_until(until) => return false,
            }
        }
    }

    async fn stay_pending(&mut self, pod: &Pod, reason: PendingReason, timing: Timing) {
        let wake = self.wait(Some(timing.pending)).await;
        if self.interrupted(wake, timing).await {
            return;
        }
        let image = self
            .containers
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let (reason_str, message) = match reason {
            PendingReason::ErrImagePull | PendingReason::ImagePullBackOff => (
                "ErrImagePull",
                format!(
                    "rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {image}: not found"
                ),
            ),
            PendingReason::InvalidImageName => (
                "InvalidImageName",
                format!(
                    "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
                ),
            ),
            PendingReason::CreateContainerConfigError => (
                "CreateContainerConfigError",
                format!("secret \"{}\" not found", missing_secret(pod)),
            ),
            PendingReason::Unschedulable => return,
        };
        let cs = self.containers.clone();
        if !self.status(|s| {
            s.container_statuses = Some(
                cs.iter()
                    .map(|c| {
                        c.status(
                            waiting(reason_str, Some(message.clone())),
                            false,
                            false,
                            false,
                        )
                    })
                    .collect(),
            );
        }) {
            return;
        }
        if reason == PendingReason::ImagePullBackOff {
            let wake = self.wait(Some(timing.pending)).await;
            if self.interrupted(wake, timing).await {
                return;
            }
            let msg = format!("Back-off pulling image \"{image}\"");
            self.status(|s| {
                s.container_statuses = Some(
                    cs.iter()
                        .map(|c| {
                            c.status(
                                waiting("ImagePullBackOff", Some(msg.clone())),
                                false,
                                false,
                                false,
                            )
                        })
                        .collect(),
                );
            });
        }
        let wake = self.wait(None).await;
        self.interrupted(wake, timing).await;
    }

    /// The kubelet's active deadline handler.
    fn deadline_exceeded(&self) {
        self.finish(
            "Failed",
            Some(&(
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline".to_owned(),
            )),
            None,
            |ran| {
                if ran {
                    Ending {
                        exit_code: 137,
                        reason: "Error",
                        message: None,
                    }
                } else {
                    Ending {
                        exit_code: 137,
                        reason: "ContainerStatusUnknown",
                        message: Some(
                            "The container could not be located when the pod was terminated".into(),
                        ),
                    }
                }
            },
        );
    }

    /// Node lost: the taint manager marks the pod as disrupted and deletes
    /// it; the pod ends Failed and is removed.
    async fn node_lost(&mut self, pod: &Pod, timing: Timing) {
        self.status(|s| {
            set_condition(
                s,
                "DisruptionTarget",
                "True",
                Some("DeletionByTaintManager"),
                Some("Taint manager: deleting due to NoExecute taint"),
            );
        });
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        let _ = self.shared.store.delete(
            Resource::Pods,
            &self.ns,
            &self.name,
            &DeleteOptions {
                grace_period_seconds: grace,
                preconditions: Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                },
            },
        );
        if self.wait_gone_for(timing.terminating).await {
            return;
        }
        self.finish("Failed", None, None, |_| Ending {
            exit_code: 137,
            reason: "ContainerStatusUnknown",
            message: Some("The container could not be located when the pod was terminated".into()),
        });
        self.remove();
    }

    /// Writes a terminal status: the phase, optional pod reason/message,
    /// optional DisruptionTarget condition, and each container terminated as
    /// `ending(ran)` says. Applies the termination message rules.
    fn finish(
        &self,
        phase: &str,
        pod_reason: Option<&(&str, String)>,
        disruption: Option<&(&str, String)>,
        ending: impl Fn(bool) -> Ending,
    ) {
        let log = self.current_log();
        let ran = self.started_at.is_some();
        let started_at = self.started_at.clone();
        let cs = self.containers.clone();
        let why = if phase == "Succeeded" {
            "PodCompleted"
        } else {
            "PodFailed"
        };
        self.status(|s| {
            s.phase = Some(phase.to_owned());
            if let Some((reason, message)) = pod_reason {
                s.reason = Some((*reason).to_owned());
                s.message = Some(message.clone());
            }
            if let Some((reason, message)) = disruption {
                set_condition(s, "DisruptionTarget", "True", Some(reason), Some(message));
            }
            set_condition(s, "PodReadyToStartContainers", "False", None, None);
            set_condition(s, "Ready", "False", Some(why), None);
            set_condition(s, "ContainersReady", "False", Some(why), None);
            s.container_statuses = Some(
                cs.iter()
                    .map(|c| {
                        let e = ending(ran);
                        // As pkg/kubelet/kuberuntime/kuberuntime_container.go
                        // `convertToKubeContainerStatus`: a non-empty
                        // termination message file wins; with an empty file,
                        // FallbackToLogsOnError uses the log tail (80 lines,
                        // 2 KiB) when the exit code is not 0.
                        let message = e.message.or_else(|| {
                            (e.exit_code != 0 && c.fallback_to_logs && ran && !log.is_empty())
                                .then(|| logs::termination_tail(&log))
                        });
                        let st = ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: e.exit_code,
                                reason: Some(e.reason.to_owned()),
                                message,
                                started_at: started_at.clone(),
                                finished_at: Some(now()),
                                container_id: ran.then(|| c.container_id.clone()),
                                signal: None,
                            }),
                            ..ContainerState::default()
                        };
                        c.status(st, false, false, ran)
                    })
                    .collect(),
            );
        });
    }
}

/// The first Secret a pod refers to, for the CreateContainerConfigError message.
fn missing_secret(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.env.iter().flatten())
        .find_map(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| r.name.clone())
        })
        .or_else(|| {
            spec.into_iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        })
        .unwrap_or_else(|| "kiln-registry".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        assert_eq!(
            repository("gcr.io/kaniko-project/executor:v1.23.2"),
            "gcr.io/kaniko-project/executor"
        );
        assert_eq!(
            repository("localhost:5000/executor"),
            "localhost:5000/executor"
        );
        assert_eq!(repository("x@sha256:00"), "x");
    }
}
