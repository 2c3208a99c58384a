//! Test environment: a fresh AMQP prefix and Redis prefix, a fake Kubernetes
//! API, in-process workers (each on a runtime of its own, so a "kill" drops
//! every task of that worker at once, as a crash would), an events
//! subscriber bound before anything is published, and clean-up.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_protocol::{BuildEvent, Level};
use kiln_worker::amqp::{BUILD_KEY, Broker, CANCEL_KEY, EventSubscription};
use kiln_worker::config::{Connections, WorkerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::fakekube::FakeKube;

/// RabbitMQ URL of the tests (override with `KILN_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("KILN_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Redis URL of the tests (override with `KILN_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("KILN_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique name for this test's prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The build namespace the tests' default tenant uses.
pub const NAMESPACE: &str = "kiln-builds";

/// One test's world.
pub struct Env {
    pub prefix: String,
    pub redis_prefix: String,
    pub kube: FakeKube,
    pub broker: Broker,
    pub events: EventSubscription,
    workers: Vec<Option<WorkerHandle>>,
    seen: Vec<BuildEvent>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A worker running on its own runtime.
pub struct WorkerHandle {
    pub id: String,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Env {
    /// Fresh prefixes, fake cluster, topology declared, events subscribed.
    pub async fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kiln_worker=info")),
            )
            .try_init();
        let prefix = unique("kiln-test");
        let redis_prefix = format!("{prefix}:");
        let kube = FakeKube::start().await;
        let broker = Broker::connect(&amqp_url(), &prefix, "kiln tests")
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README)");
        broker.declare_topology().await.expect("declare topology");
        let events = broker.subscribe_events(&["#"]).await.expect("subscribe");
        Self {
            prefix,
            redis_prefix,
            kube,
            broker,
            events,
            workers: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Worker settings tuned for tests: short lease, short backoff.
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            connections: Connections {
                amqp_url: amqp_url(),
                amqp_prefix: self.prefix.clone(),
                redis_url: redis_url(),
                redis_prefix: self.redis_prefix.clone(),
            },
            namespace: NAMESPACE.to_owned(),
            policy: None,
            cluster: "test".to_owned(),
            metrics_addr: None,
            lease_ttl: Duration::from_secs(2),
            pending_timeout: Duration::from_secs(60),
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(1),
            kaniko_image: "kaniko:test".to_owned(),
            s3_region: "us-east-1".to_owned(),
            worker_id: None,
            prefetch: 64,
            record_ttl: Duration::from_secs(600),
        }
    }

    /// Starts a worker with [`Env::config`] adjusted by `tweak`.
    pub fn start_worker_with(&mut self, tweak: impl FnOnce(&mut WorkerConfig)) -> usize {
        let mut config = self.config();
        let id = unique("w");
        config.worker_id = Some(id.clone());
        tweak(&mut config);
        let url = self.kube.url();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut kc = kube::Config::new(url.parse().expect("fake url"));
                NAMESPACE.clone_into(&mut kc.default_namespace);
                let client = kube::Client::try_from(kc).expect("kube client");
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                tokio::select! {
                    r = kiln_worker::worker::run(config, Some(client), shutdown) => {
                        if let Err(e) = r {
                            eprintln!("worker ended with error: {e}");
                        }
                    }
                    _ = kill_rx => {}
                }
            });
            // A kill: every task of this worker is dropped, no clean-up runs.
            rt.shutdown_background();
        });
        self.workers.push(Some(WorkerHandle {
            id,
            stop: Some(stop_tx),
            kill: Some(kill_tx),
            thread: Some(thread),
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
            if let Some(s) = w.stop.take() {
                let _ = s.send(());
            }
            join(w.thread.take()).await;
        }
    }

    /// Crash: every task of the worker stops at once, leases stay behind.
    pub async fn kill_worker(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i].take() {
            if let Some(k) = w.kill.take() {
                let _ = k.send(());
            }
            join(w.thread.take()).await;
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
        self.seen.push(ev.clone());
        Some(ev)
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

    /// Writes a policy file (TOML) for this test's workers; `cleanup`
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
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }

    /// Closes a worker's AMQP connection from the broker side
    /// (`rabbitmqctl close_connection`), as a broker restart or network cut
    /// would.
    pub async fn close_worker_connection(&self, i: usize) -> bool {
        let name = format!("kiln worker {}", self.worker_id(i));
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
        let Ok(out) = out else { return false };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut closed = false;
        for line in text.lines().filter(|l| l.contains(&name)) {
            let Some(pid) = line.split_whitespace().next() else {
                continue;
            };
            let st = tokio::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "kiln test: connection cut"])
                .status()
                .await;
            closed |= st.is_ok_and(|s| s.success());
        }
        closed
    }

    /// Stops the workers and removes this test's queues, exchanges and keys.
    pub async fn cleanup(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        let _ = self.broker.delete_topology().await;
        self.flush_redis().await;
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.prefix));
        self.broker.close().await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed test still stops its workers (their threads would
        // otherwise keep consuming).
        for w in self.workers.iter_mut().flatten() {
            if let Some(k) = w.kill.take() {
                let _ = k.send(());
            }
        }
    }
}

async fn join(thread: Option<std::thread::JoinHandle<()>>) {
    if let Some(t) = thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

pub fn is_build_terminal(ev: &BuildEvent) -> bool {
    ev.level() == Level::Build && ev.data.phase.is_terminal(Level::Build)
}

/// `routing key[:image#attempt]` per event, for exact sequence assertions.
pub fn sequence(events: &[BuildEvent]) -> Vec<String> {
    events
        .iter()
        .map(|ev| {
            let key = kiln_protocol::routing_key(ev.level(), ev.data.phase);
            match (&ev.data.image, ev.data.attempt) {
                (Some(i), Some(n)) => format!("{key}:{i}#{n}"),
                _ => key,
            }
        })
        .collect()
}

/// Events of one image, in order.
pub fn of_image<'a>(events: &'a [BuildEvent], image: &str) -> Vec<&'a BuildEvent> {
    events
        .iter()
        .filter(|e| e.data.image.as_deref() == Some(image))
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

/// The two-image request of DESIGN section 3 with `id`.
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
