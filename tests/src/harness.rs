//! Test environment: a fresh AMQP prefix and Redis prefix, a fake Kubernetes
//! API, in-process workers (each on a runtime of its own, so a "kill" drops
//! every task of that worker at once, as a crash would), an events
//! subscriber bound before anything is published, and clean-up when the
//! [`Env`] is dropped, also when a test panics halfway.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_protocol::BuildEvent;
use kiln_worker::amqp::{BUILD_KEY, Broker, CANCEL_KEY, EventSubscription};
use kiln_worker::config::{Bounds, BuildConfig, Connections, WorkerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::fakekube::{FakeKube, Fate, FaultResponse, FaultRule, Resource, Timing, Verb};

pub mod provenance;
mod sequence;
pub use sequence::{
    ANY, ONE_IMAGE_FAILS, ONE_IMAGE_SUCCEEDS, assert_sequence, check_sequence, is_build_terminal,
    of_image, only_outcome, sequence, with_image,
};

/// RabbitMQ URL of the tests (override with `KILN_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("KILN_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The test's log on the test writer, filtered by `RUST_LOG` (else
/// `default`); the first call in a test binary wins.
pub fn init_tracing(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .try_init();
}

/// Redis URL of the tests (override with `KILN_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("KILN_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The RabbitMQ and Redis a test's [`Env`] and its workers use.
#[derive(Debug, Clone)]
pub struct Engines {
    /// `KILN_AMQP_URL`: one URL, or a cluster's node URLs comma-separated.
    pub amqp_url: String,
    /// `KILN_REDIS_URL`, or with `sentinels` a server for the test's own
    /// look-ups (the primary when the test started).
    pub redis_url: String,
    /// `KILN_REDIS_SENTINELS` and `KILN_REDIS_MASTER`, when Redis is under
    /// Sentinel.
    pub sentinels: Option<(String, String)>,
    /// Private engines thrown away with the test binary: the queues and keys
    /// of a test are not removed (a node or the primary may be dead).
    pub private: bool,
}

impl Default for Engines {
    /// The shared engines at `KILN_AMQP_URL` and `KILN_REDIS_URL`.
    fn default() -> Self {
        Self {
            amqp_url: amqp_url(),
            redis_url: redis_url(),
            sentinels: None,
            private: false,
        }
    }
}

/// A unique name for this test's prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The build namespace the tests' default tenant uses.
pub const NAMESPACE: &str = "kiln-builds";

/// How long dropping an [`Env`] lets its workers hand over before it kills
/// them (a worker waiting on the fake API server of a runtime that is
/// blocked in that drop would otherwise never end).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long removing a test's queues and keys may take before the drop gives
/// up and says so.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One test's world. Dropping it stops its workers and removes its queues,
/// exchanges, Redis keys and files (see [`Env::cleanup`]).
pub struct Env {
    pub prefix: String,
    pub redis_prefix: String,
    pub kube: FakeKube,
    pub broker: Broker,
    pub events: EventSubscription,
    pub engines: Engines,
    workers: Vec<Option<WorkerHandle>>,
    seen: Vec<BuildEvent>,
    /// Whether every in-process worker started so far signs provenance
    /// (`None` before the first).
    signing: Option<bool>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Worker threads of each worker's runtime.
const WORKER_THREADS: usize = 2;

/// A worker running on its own runtime.
pub struct WorkerHandle {
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The worker's runtime, to stall it ([`Env::freeze_worker`]).
    runtime: Option<tokio::runtime::Handle>,
}

impl WorkerHandle {
    /// Asks for the graceful stop (SIGTERM path).
    fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Asks for the crash: a worker that already ended ignores it.
    fn signal_kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }

    fn is_finished(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Waits for the worker's thread, off the async threads of the caller.
    async fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Env {
    /// Fresh prefixes, fake cluster, topology declared, events subscribed.
    pub async fn new() -> Self {
        Self::on(Engines::default()).await
    }

    /// [`Env::new`] on other engines (a RabbitMQ cluster, Redis under
    /// Sentinel: see [`crate::cluster`]).
    pub async fn on(engines: Engines) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        init_tracing("kiln_worker=info");
        let prefix = unique("kiln-test");
        let redis_prefix = format!("{prefix}:");
        let kube = FakeKube::start().await;
        let broker = Broker::connect(&engines.amqp_url, &prefix, "kiln tests")
            .await
            .expect("RabbitMQ must answer at KILN_AMQP_URL (scripts/test starts a private one when none does)");
        broker.declare_topology().await.expect("declare topology");
        let events = broker.subscribe_events(&["#"]).await.expect("subscribe");
        Self {
            prefix,
            redis_prefix,
            kube,
            broker,
            events,
            engines,
            workers: Vec::new(),
            seen: Vec::new(),
            signing: None,
        }
    }

    /// Worker settings tuned for tests: short lease, short backoff.
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            connections: Connections {
                amqp_url: self.engines.amqp_url.clone(),
                amqp_prefix: self.prefix.clone(),
                redis_url: self.engines.redis_url.clone(),
                redis_prefix: self.redis_prefix.clone(),
                redis_sentinels: self.engines.sentinels.as_ref().map(|(s, _)| s.clone()),
                redis_master: self.engines.sentinels.as_ref().map(|(_, m)| m.clone()),
                redis_password: None,
                redis_sentinel_password: None,
            },
            build: BuildConfig {
                namespace: NAMESPACE.to_owned(),
                policy: None,
                kaniko_image: "kaniko:test".to_owned(),
                fetch_image: "curl:test".to_owned(),
                s3_region: "us-east-1".to_owned(),
                publish_image: "kiln:test".to_owned(),
                insecure_registries: Vec::new(),
            },
            cluster: "test".to_owned(),
            metrics_addr: None,
            status: kiln_worker::http_auth::StatusConfig::default(),
            lease_ttl: Duration::from_secs(2),
            pending_timeout: Duration::from_secs(60),
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(1),
            worker_id: None,
            prefetch: 64,
            park_after: Duration::from_secs(600),
            record_ttl: Duration::from_secs(600),
            provenance_key: Some(provenance::test_key_path()),
            bounds: Bounds::default(),
            log_retention: Duration::from_secs(600),
        }
    }

    /// Starts a worker with [`Env::config`] adjusted by `tweak`.
    pub fn start_worker_with(&mut self, tweak: impl FnOnce(&mut WorkerConfig)) -> usize {
        let mut config = self.config();
        let id = unique("w");
        config.worker_id = Some(id.clone());
        tweak(&mut config);
        self.signing = Some(self.signing.unwrap_or(true) && config.provenance_key.is_some());
        let url = self.kube.url();
        // Each worker's API client says who it is, so a fault rule can
        // target one worker's calls (`FaultRule::user_agent_contains`).
        let user_agent = worker_user_agent(config.worker_id.as_deref().unwrap_or(&id));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .enable_all()
                .build()
                .expect("runtime");
            let _ = rt_tx.send(rt.handle().clone());
            let graceful = rt.block_on(async move {
                let mut kc = kube::Config::new(url.parse().expect("fake url"));
                NAMESPACE.clone_into(&mut kc.default_namespace);
                kc.headers.push((
                    axum::http::header::USER_AGENT,
                    axum::http::HeaderValue::from_str(&user_agent).expect("user agent"),
                ));
                let client = kube::Client::try_from(kc).expect("kube client");
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                tokio::select! {
                    r = kiln_worker::worker::run(config, Some(client), shutdown) => {
                        if let Err(e) = r {
                            eprintln!("worker ended with error: {e}");
                        }
                        true
                    }
                    _ = kill_rx => false
                }
            });
            if graceful {
                // Whatever the worker left running is dropped before the
                // thread ends, so nothing of it writes after a stop returns.
                rt.shutdown_timeout(Duration::from_secs(2));
            } else {
                // A kill: every task of this worker is dropped, no clean-up
                // runs.
                rt.shutdown_background();
            }
        });
        self.workers.push(Some(WorkerHandle {
            id,
            stop: Some(stop_tx),
            kill: Some(kill_tx),
            thread: Some(thread),
            runtime: rt_rx.recv().ok(),
        }));
        self.workers.len() - 1
    }

    pub fn start_worker(&mut self) -> usize {
        self.start_worker_with(|_| {})
    }

    pub fn worker_id(&self, i: usize) -> String {
        self.workers[i]
            .as_ref()
            .map(|w| w.id.clone())
            .unwrap_or_default()
    }

    /// Graceful stop (SIGTERM path): hand builds over.
    pub async fn stop_worker(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            w.signal_stop();
            w.join().await;
        }
    }

    /// Stalls worker `i` for `pause`, as `SIGSTOP` then `SIGCONT` would:
    /// every worker thread of its runtime is occupied by a blocking sleep,
    /// so none of its tasks runs and its timers and sockets are not polled
    /// (tokio drives timers and IO only from idle worker threads). Returns
    /// at once; the worker resumes by itself after `pause`, with its clocks
    /// having moved on, exactly what a stopped process sees when continued.
    pub fn freeze_worker(&self, i: usize, pause: Duration) {
        let Some(rt) = self.workers[i].as_ref().and_then(|w| w.runtime.clone()) else {
            return;
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for _ in 0..WORKER_THREADS {
            let ready = ready_tx.clone();
            rt.spawn(async move {
                let _ = ready.send(());
                std::thread::sleep(pause);
            });
        }
        // Every thread is asleep once each has started its sleep.
        for _ in 0..WORKER_THREADS {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("every worker thread stalls");
        }
    }

    /// Crash: every task of the worker stops at once, leases stay behind.
    pub async fn kill_worker(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            w.signal_kill();
            w.join().await;
        }
    }

    /// Publishes a build request (JSON) as tenant `user` (the AMQP user id
    /// must match the connection's user, so tests use `guest` or none).
    pub async fn publish(&self, request: &Value) {
        self.publish_raw(&serde_json::to_vec(request).expect("json"), None)
            .await;
    }

    pub async fn publish_raw(&self, body: &[u8], user: Option<&str>) {
        self.broker
            .publish_request(BUILD_KEY, body, user, None)
            .await
            .expect("publish request");
    }

    pub async fn publish_with_traceparent(&self, request: &Value, traceparent: &str) {
        self.broker
            .publish_request(
                BUILD_KEY,
                &serde_json::to_vec(request).expect("json"),
                None,
                Some(traceparent),
            )
            .await
            .expect("publish request");
    }

    pub async fn cancel(&self, id: &str, reason: &str) {
        self.cancel_as(id, reason, None).await;
    }

    /// A cancel published with the AMQP `user_id` property `user` (RabbitMQ
    /// checks it against the connection's user: `guest` in tests).
    pub async fn cancel_as(&self, id: &str, reason: &str, user: Option<&str>) {
        let body =
            json!({"apiVersion": "kiln/v1", "kind": "CancelRequest", "id": id, "reason": reason});
        self.broker
            .publish_request(
                CANCEL_KEY,
                &serde_json::to_vec(&body).expect("json"),
                user,
                None,
            )
            .await
            .expect("publish cancel");
    }

    /// The next event of any build, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<BuildEvent> {
        let msg = tokio::time::timeout(timeout, self.events.next())
            .await
            .ok()??;
        let ev: BuildEvent = serde_json::from_slice(&msg.body).expect("event is a BuildEvent");
        let headers = msg.string_headers();
        assert_eq!(
            headers.get("kiln-build-id"),
            Some(&ev.data.build_id),
            "kiln-build-id header"
        );
        assert_eq!(
            headers.get("kiln-phase").map(String::as_str),
            Some(ev.data.phase.as_str()),
            "kiln-phase header"
        );
        provenance::check(&ev, &msg.body, self.signing);
        // Every event is published with its tenant as the last word, so
        // that topic permissions can confine a subscriber (`_`: no tenant).
        assert_eq!(
            msg.routing_key,
            ev.routing_key(),
            "routing key <level>.<phase>.<tenant>"
        );
        assert_eq!(
            msg.routing_key.split('.').count(),
            3,
            "three-word routing key"
        );
        self.seen.push(ev.clone());
        Some(ev)
    }

    /// Pods take `running` to finish successfully, long enough to disturb
    /// the worker (or look at it) while they run.
    pub fn slow_pods(&self, running: Duration) {
        self.kube.kubelet().set_script(|_| Fate::succeed());
        self.kube.kubelet().set_timing(Timing {
            pending: Duration::from_millis(50),
            running,
            terminating: Duration::ZERO,
        });
    }

    /// Makes every pod create fail (503, retried by the worker), publishes
    /// a one-image build of a fresh id and waits until its first create was
    /// tried: a build held before acceptance. `kube.faults().clear()` lets
    /// it go on.
    pub async fn publish_while_pod_creates_fail(&self, prefix: &str, timeout: Duration) -> String {
        self.kube.faults().add(
            FaultRule::new(Verb::Create, Resource::Pods).respond(FaultResponse::ServiceUnavailable),
        );
        let id = unique(prefix);
        self.publish(&one_image(&id)).await;
        assert!(
            self.eventually(timeout, |e| e.kube.faults().injected_count() > 0)
                .await,
            "the first pod create was tried"
        );
        id
    }

    /// Waits until `n` `image.running` events of `build` arrived.
    pub async fn wait_running(&mut self, build: &str, n: usize, timeout: Duration) {
        let mut running = 0;
        while running < n {
            let ev = self.next_event(timeout).await.expect("events");
            if ev.data.build_id == build && ev.data.phase == kiln_protocol::Phase::Running {
                running += 1;
            }
        }
    }

    /// Writes a policy file (TOML) for this test's workers; the clean-up
    /// removes it.
    pub fn write_policy(&self, toml: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(&self.prefix);
        std::fs::create_dir_all(&dir).expect("policy dir");
        let path = dir.join("policy.toml");
        std::fs::write(&path, toml).expect("policy file");
        path
    }

    /// Every event of `build` until its terminal `build.*` event (plus a
    /// short grace period to catch anything published after it).
    pub async fn events_of(&mut self, build: &str, timeout: Duration) -> Vec<BuildEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out: Vec<BuildEvent> = self
            .seen
            .iter()
            .filter(|e| e.data.build_id == build)
            .cloned()
            .collect();
        let mut grace: Option<tokio::time::Instant> = out
            .iter()
            .any(is_build_terminal)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(300));
        loop {
            let now = tokio::time::Instant::now();
            let until = grace.unwrap_or(deadline).min(deadline);
            if now >= until {
                break;
            }
            match self.next_event(until - now).await {
                Some(ev) if ev.data.build_id == build => {
                    if is_build_terminal(&ev) && grace.is_none() {
                        grace = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                    }
                    out.push(ev);
                }
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Every event of `build` (as [`Env::events_of`]), asserted to match
    /// `pattern` (see [`assert_sequence`]); the panic names the caller's
    /// line, though the assertion runs in the future.
    #[track_caller]
    pub fn expect_sequence<'a>(
        &'a mut self,
        build: &'a str,
        pattern: &'a [&'a str],
        timeout: Duration,
    ) -> impl Future<Output = Vec<BuildEvent>> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let events = self.events_of(build, timeout).await;
            if let Err(diff) = check_sequence(&events, pattern) {
                panic!("{caller}: {diff}");
            }
            events
        }
    }

    /// Messages in the dead-letter queue: (body, `kiln-error` header).
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = self.broker.get_one(&self.broker.names().dead()).await {
            let err = m
                .string_headers()
                .get("kiln-error")
                .cloned()
                .unwrap_or_default();
            out.push((m.body.clone(), err));
        }
        out
    }

    /// How many creations of `resource` the fake API server accepted.
    pub fn created(&self, resource: Resource) -> usize {
        self.kube
            .calls()
            .iter()
            .filter(|c| c.verb == Verb::Create && c.resource == resource && c.succeeded())
            .count()
    }

    /// Messages in the dead-letter queue once at least one is there, or none
    /// after `timeout`.
    pub async fn wait_dead_letters(&self, timeout: Duration) -> Vec<(Vec<u8>, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let dead = self.dead_letters().await;
            if !dead.is_empty() || tokio::time::Instant::now() >= deadline {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first request published to the builds queue (taken off it, so no
    /// worker sees it), waiting up to `timeout`: what a client under test
    /// published.
    pub async fn wait_published(&self, timeout: Duration) -> kiln_worker::amqp::Incoming {
        let builds = self.broker.names().builds();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.broker.get_one(&builds).await.expect("basic.get") {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pods of the build namespace.
    pub fn pod_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .kube
            .pods(NAMESPACE)
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        v.sort();
        v
    }

    /// Waits until `cond` holds or `timeout` passes; returns whether it held.
    pub async fn eventually(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes this test's keys whose names start with the Redis prefix
    /// (simulates losing Redis without disturbing tests running beside).
    pub async fn flush_redis(&self) {
        delete_redis_keys(&self.redis_prefix)
            .await
            .expect("flush this test's Redis keys");
    }

    /// Closes a worker's AMQP connection from the broker side
    /// (`rabbitmqctl close_connection`), as a broker restart or network cut
    /// would.
    pub async fn close_worker_connection(&self, i: usize) -> bool {
        let mut closed = false;
        for pid in amqp_connections(&worker_connection_name(&self.worker_id(i))).await {
            let st = tokio::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", &pid, "kiln test: connection cut"])
                .status()
                .await;
            closed |= st.is_ok_and(|s| s.success());
        }
        closed
    }

    /// Stops the workers and removes this test's queues, exchanges, keys
    /// and files now. Dropping the `Env` does the same (so a test need not
    /// call this); it is for a test that wants it done at a point of its
    /// choosing, and the drop after it finds nothing left to do.
    pub async fn cleanup(self) {
        self.broker.close().await;
        // The drop blocks while workers hand over; on a blocking thread the
        // test's runtime stays free to serve the fake API server meanwhile.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let workers: Vec<WorkerHandle> = std::mem::take(&mut self.workers)
            .into_iter()
            .flatten()
            .collect();
        let prefix = self.prefix.clone();
        let redis_prefix = self.redis_prefix.clone();
        let private = self.engines.private;
        // Drop is synchronous and may run on a current-thread runtime or
        // while a test unwinds: the async removal runs on a thread with a
        // runtime of its own, with connections of its own (the `Env`'s
        // broker lives on the test's runtime, which may be the one blocked
        // here).
        let outcome = on_cleanup_thread(move || {
            stop_all(workers);
            if private {
                return Ok(());
            }
            remove_test_state(&prefix, &redis_prefix)
        });
        if let Err(e) = outcome {
            // Never panic in a drop (it may run during a panic already).
            eprintln!("clean-up of {} incomplete: {e}", self.prefix);
        }
    }
}

/// Stops every worker at once (graceful first, a kill for those still
/// running after [`STOP_GRACE`]) and waits for their threads.
fn stop_all(mut workers: Vec<WorkerHandle>) {
    for w in &mut workers {
        w.signal_stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    while workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut w in workers {
        w.signal_kill();
        if let Some(t) = w.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deletes the queues and exchanges of `prefix`, the Redis keys of
/// `redis_prefix` and the test's files, on a runtime of its own.
pub fn remove_test_state(prefix: &str, redis_prefix: &str) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(prefix));
    block_on_removal(async {
        let broker = Broker::connect_client(&amqp_url(), prefix, "kiln test clean-up")
            .await
            .map_err(|e| e.to_string())?;
        let topology = broker.delete_topology().await.map_err(|e| e.to_string());
        broker.close().await;
        topology?;
        delete_redis_keys(redis_prefix).await
    })
}

/// Runs a drop's clean-up to its end on a thread of its own: a drop is
/// synchronous and may run on a current-thread runtime (which it would
/// block) or while a test unwinds.
fn on_cleanup_thread(
    work: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    match std::thread::Builder::new()
        .name("kiln-test-cleanup".to_owned())
        .spawn(work)
    {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|_| Err("the clean-up thread panicked".to_owned())),
        Err(e) => Err(format!("cannot start the clean-up thread: {e}")),
    }
}

/// Runs `removal` on a runtime of its own, within [`REMOVE_TIMEOUT`].
fn block_on_removal(removal: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        tokio::time::timeout(REMOVE_TIMEOUT, removal)
            .await
            .map_err(|_| format!("no answer within {REMOVE_TIMEOUT:?}"))?
    })
}

/// The Redis key prefix of a test that needs no whole [`Env`] (lease
/// tests): every key under it is deleted when this drops, also when the
/// test panics. Keys with no TTL (the `builds` index) would outlive it.
pub struct RedisPrefix(String);

impl RedisPrefix {
    pub fn new(name: &str) -> Self {
        Self(format!("{}:", unique(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        // As `Env`'s clean-up: on a thread and a runtime of its own.
        let prefix = self.0.clone();
        if let Err(e) = on_cleanup_thread(move || block_on_removal(delete_redis_keys(&prefix))) {
            eprintln!("clean-up of the Redis keys of {} incomplete: {e}", self.0);
        }
    }
}

/// Deletes every Redis key whose name starts with `redis_prefix`.
async fn delete_redis_keys(redis_prefix: &str) -> Result<(), String> {
    let client = redis::Client::open(redis_url()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let keys = redis_keys(&mut conn, redis_prefix).await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("redis DEL: {e}"))?;
    }
    Ok(())
}

/// The names of the Redis keys that start with `redis_prefix`.
pub async fn redis_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    redis_prefix: &str,
) -> Result<Vec<String>, String> {
    redis::cmd("KEYS")
        .arg(format!("{redis_prefix}*"))
        .query_async(conn)
        .await
        .map_err(|e| format!("redis KEYS: {e}"))
}

/// The `User-Agent` of the in-process worker `worker_id`'s API client.
pub fn worker_user_agent(worker_id: &str) -> String {
    format!("kiln-test/worker {worker_id}")
}

/// The AMQP connection name of the in-process worker `worker_id`.
pub fn worker_connection_name(worker_id: &str) -> String {
    format!("kiln worker {worker_id}")
}

/// The broker-side ids of the open AMQP connections whose client
/// properties contain `name` (`rabbitmqctl list_connections`); empty when
/// `rabbitmqctl` cannot be run.
pub async fn amqp_connections(name: &str) -> Vec<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .await;
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A one-image request from a git context.
pub fn one_image(id: &str) -> Value {
    json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "app": "shop",
        "images": [{
            "name": "api",
            "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
            "destinations": ["registry.example.com/shop/api:1.0.0"]
        }]
    })
}

/// The two-image request of docs/protocol.md, "Build requests", with `id`.
pub fn two_images(id: &str) -> Value {
    json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "app": "shop",
        "component": "cart",
        "labels": {"team": "payments"},
        "timeoutSeconds": 3600,
        "retry": {"maxAttempts": 3},
        "images": [
            {
                "name": "api",
                "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main", "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "subPath": "services/api"}},
                "dockerfile": "Dockerfile",
                "buildArgs": {"VERSION": "1.2.3"},
                "destinations": ["registry.example.com/shop/cart-api:1.2.3"],
                "resources": {"cpu": "1", "memory": "2Gi"}
            },
            {
                "name": "worker",
                "context": {"s3": {"bucket": "build-contexts", "key": "cart/worker-1.2.3.tar.gz"}},
                "dockerfileInline": "FROM {{ base_image }}\nCOPY . /app\n",
                "templateArgs": {"base_image": "alpine:3.20"},
                "destinations": ["registry.example.com/shop/cart-worker:1.2.3"]
            }
        ]
    })
}

/// Label values of a pod (image, attempt) for kubelet scripts.
pub fn pod_labels(pod: &k8s_openapi::api::core::v1::Pod) -> (String, u32) {
    let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    (
        labels.get("kiln.dev/image").cloned().unwrap_or_default(),
        labels
            .get("kiln.dev/attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
    )
}

/// A TCP proxy the test can cut and restore, to take a dependency away from
/// one worker only (as a network partition or a restart would).
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 and forwards every connection to `target`.
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_owned();
        let (c, cs) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(task);
            }
        });
        Self {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
