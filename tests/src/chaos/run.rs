//! A chaos run: real `kiln worker` processes against the machine's RabbitMQ
//! and Redis (a fresh prefix) and an in-process fake Kubernetes API (through
//! a kubeconfig file, as `scripts/bench` does), two tenants publishing
//! builds as two RabbitMQ users, and the seeded [`Schedule`] of faults. Every
//! request, cancel, event, fault and pod goes into the [`History`]; the
//! [`Verdict`] is the checker's over it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kiln_worker::amqp::{BUILD_KEY, Broker, CANCEL_KEY, Names};
use kiln_worker::pod::{ANN_BUILD_ID, LABEL_ATTEMPT, LABEL_IMAGE};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::checker::{AnomalyKind, Verdict, check};
use super::engines::{Engines, delete_prefix_at, keys_with_prefix_at};
pub use super::engines::{delete_prefix, keys_with_prefix};
use super::faults::{
    FORGED_DIGEST, FORGED_LABEL, Forge, Params, PlannedFault, Schedule, Tenant, fresh_seed,
    schedule,
};
use super::history::{EndState, FaultKind, History, LeftPod, PodOp, Recorder};
use crate::fakekube::{FakeKube, Fate, FaultResponse, FaultRule, Timing};
use crate::harness::unique;
use crate::process::{Signal, WorkerProcess};

/// The two tenants: RabbitMQ users created (idempotently) by the run, shared
/// by every run on the machine, and named so no other test's users clash.
pub const TENANTS: [&str; 2] = ["kiln-chaos-alice", "kiln-chaos-bob"];
const PASSWORD: &str = "kiln-chaos";

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub params: Params,
    /// The `kiln` binary.
    pub kiln: PathBuf,
    /// How long a pod runs before it succeeds (or is evicted).
    pub pod_running: Duration,
    /// After the last scheduled action, how long to wait for every build's
    /// answer.
    pub settle: Duration,
}

impl RunOptions {
    /// Options for `builds` builds and `faults` faults on `workers` workers,
    /// with the seed from `KILN_CHAOS_SEED` (else a fresh one) and the kinds
    /// from `KILN_CHAOS_FAULTS` (else all).
    pub fn from_env(
        kiln: PathBuf,
        builds: usize,
        faults: usize,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let seed = match std::env::var("KILN_CHAOS_SEED") {
            Ok(s) => s.trim().parse().with_context(|| {
                format!("KILN_CHAOS_SEED: {s:?} is not an unsigned 64-bit number")
            })?,
            Err(_) => fresh_seed(),
        };
        let kinds = match std::env::var("KILN_CHAOS_FAULTS") {
            Ok(s) => {
                FaultKind::parse_list(&s).map_err(|e| anyhow::anyhow!("KILN_CHAOS_FAULTS: {e}"))?
            }
            Err(_) => FaultKind::ALL.to_vec(),
        };
        // Publishing at about 12 builds/s keeps the 2-core machine this was
        // written on busy but not swamped.
        let window = (builds as u64 * 1000 / 12).max(2000);
        Ok(Self {
            params: Params {
                seed,
                builds,
                faults,
                workers,
                kinds,
                window,
                lease_ttl: 2000,
            },
            kiln,
            pod_running: Duration::from_secs(3),
            settle: Duration::from_secs(45) + Duration::from_millis(window / 2),
        })
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub schedule: String,
    pub history: History,
    pub verdict: Verdict,
    /// Whether every build got its answer before the settle timeout.
    pub settled: bool,
    /// Worker processes that ended without being killed, with their log tail.
    pub crashes: Vec<String>,
}

impl Outcome {
    /// Panics with the report unless the run was clean: no worker crashed,
    /// every build answered, no anomaly. Prints the report either way.
    pub fn assert_clean(&self) {
        let report = self.report();
        println!("{report}");
        assert!(self.crashes.is_empty(), "a worker crashed:\n{report}");
        assert!(self.settled, "not every build was answered:\n{report}");
        assert!(self.verdict.ok(), "{report}");
    }

    /// The schedule, the faults as injected, and the checker's table.
    pub fn report(&self) -> String {
        let mut s = self.schedule.clone();
        s.push_str("faults as injected:\n");
        for f in &self.history.faults {
            let _ = writeln!(
                s,
                "  {:>6}-{:<6} ms {:<5} {} {}",
                f.start,
                f.end,
                f.kind.as_str(),
                f.target,
                f.note
            );
        }
        if !self.settled {
            s.push_str("NOT SETTLED: some builds had no answer when the run gave up waiting\n");
        }
        for c in &self.crashes {
            let _ = writeln!(s, "worker crash: {c}");
        }
        let _ = writeln!(
            s,
            "end state: {} pods, {} lease keys, {} other keys of the prefix",
            self.history.end.pods.len(),
            self.history.end.leases.len(),
            self.history.end.other_keys
        );
        s.push_str(&self.verdict.table(3));
        let lost = self.verdict.count(AnomalyKind::Lost);
        if let Some(f) = super::engines::figures(&self.history, lost) {
            s.push_str(&f);
        }
        s
    }
}

// ---------------------------------------------------------------- tenants

/// Creates the tenants' users unless they exist, and lets them publish.
async fn ensure_tenants(engines: &Engines) -> anyhow::Result<()> {
    let users = engines
        .rabbitmqctl(&["--no-table-headers", "list_users"])
        .await?;
    for t in TENANTS {
        if !users
            .lines()
            .any(|l| l.split_whitespace().next() == Some(t))
            && let Err(e) = engines.rabbitmqctl(&["add_user", t, PASSWORD]).await
            // Another run may have created it meanwhile.
            && !e.to_string().contains("already")
        {
            return Err(e);
        }
        // Publish only: no configure or read rights are needed to publish
        // requests.
        engines
            .rabbitmqctl(&["set_permissions", "-p", "/", t, "^$", ".*", "^$"])
            .await?;
    }
    Ok(())
}

/// `urls` (one URL or several, comma-separated) with their user and
/// password replaced.
fn url_as(urls: &str, user: &str) -> String {
    let one = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{user}:{PASSWORD}@{host}")
    };
    urls.split(',').map(one).collect::<Vec<_>>().join(",")
}

/// Closes, from the broker's side, every connection whose client properties
/// mention `name`. Returns how many were closed.
pub async fn close_connections_named(engines: &Engines, name: &str) -> usize {
    let Ok(text) = engines
        .rabbitmqctl(&[
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .await
    else {
        return 0;
    };
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(name)) {
        if let Some(pid) = line.split_whitespace().next()
            && engines
                .rabbitmqctl(&["close_connection", pid, "kiln chaos: connection closed"])
                .await
                .is_ok()
        {
            closed += 1;
        }
    }
    closed
}

// ---------------------------------------------------------------- workers

/// How to start a worker process; the same for every slot and restart.
struct Spawner {
    kiln: PathBuf,
    amqp_prefix: String,
    env: Vec<(String, String)>,
    dir: PathBuf,
    lease_ttl: Duration,
}

struct Proc {
    process: WorkerProcess,
    id: String,
}

impl Spawner {
    fn spawn(&self, slot: usize, generation: usize) -> anyhow::Result<Proc> {
        let id = format!("chaos-w{slot}-{generation}");
        // One log per slot: a restarted worker appends to its predecessor's.
        let log = self.dir.join(format!("worker-{slot}.log"));
        let ttl = format!("{}ms", self.lease_ttl.as_millis());
        let envs = (self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .chain([("KILN_WORKER_ID", id.as_str()), ("KILN_LEASE_TTL", &ttl)]);
        let process = WorkerProcess::spawn(&self.kiln, envs, &log)?;
        Ok(Proc { process, id })
    }
}

#[derive(Default)]
struct Slots {
    procs: Vec<Option<Proc>>,
    generation: usize,
    crashes: Vec<String>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Restarts workers that ended by themselves, and notes it.
fn reap(slots: &Shared<Slots>, spawner: &Spawner) {
    let mut s = lock(slots);
    for slot in 0..s.procs.len() {
        let exited = match s.procs[slot].as_mut() {
            Some(p) => p.process.exit_status(),
            None => None,
        };
        if let Some(status) = exited {
            let p = s.procs[slot].take();
            if let Some(p) = p {
                let note = format!(
                    "{} exited by itself ({status}); log tail:\n{}",
                    p.id,
                    p.process.log_tail(8)
                );
                s.crashes.push(note);
            }
            s.generation += 1;
            let generation = s.generation;
            s.procs[slot] = spawner.spawn(slot, generation).ok();
        }
    }
}

// ---------------------------------------------------------------- bodies

fn request_body(id: &str, images: usize, variant: &str) -> Vec<u8> {
    let imgs: Vec<Value> = ["api", "worker"]
        .iter()
        .take(images)
        .map(|name| {
            json!({
                "name": name,
                "context": {"git": {"url": "https://github.com/acme/cart.git", "ref": "refs/heads/main"}},
                "destinations": [format!("registry.example.com/chaos/{name}:{variant}")]
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "kiln/v1",
        "kind": "BuildRequest",
        "id": id,
        "app": "chaos",
        "labels": {"variant": variant},
        "retry": {"maxAttempts": 3},
        "images": imgs,
    }))
    .unwrap_or_default()
}

fn cancel_body(id: &str, reason: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "kiln/v1", "kind": "CancelRequest", "id": id, "reason": reason}),
    )
    .unwrap_or_default()
}

// ---------------------------------------------------------------- the run

/// Everything a run's tasks share.
struct World {
    rec: Arc<Recorder>,
    kube: FakeKube,
    tenants: [Broker; 2],
    slots: Shared<Slots>,
    spawner: Arc<Spawner>,
    redis_prefix: String,
    engines: Engines,
}

impl World {
    async fn publish(
        &self,
        tenant: Tenant,
        id: &str,
        body: &[u8],
        valid: bool,
    ) -> anyhow::Result<()> {
        let user = TENANTS[tenant];
        self.publish_confirmed(tenant, BUILD_KEY, body)
            .await
            .with_context(|| format!("publishing request {id} as {user}"))?;
        self.rec.request(id, user, body, valid);
        Ok(())
    }

    async fn cancel(&self, tenant: Tenant, id: &str, reason: &str) -> anyhow::Result<()> {
        let user = TENANTS[tenant];
        self.publish_confirmed(tenant, CANCEL_KEY, &cancel_body(id, reason))
            .await
            .with_context(|| format!("publishing cancel {id} as {user}"))?;
        self.rec.cancel(id, user);
        Ok(())
    }

    /// Publishes as `tenant` until the broker confirms. On the cluster a
    /// publish fails while the tenant's node is down or the queue has no
    /// leader; it is published again (a copy that did arrive is the same
    /// request twice, which Kiln takes as a duplicate), as a client would.
    async fn publish_confirmed(
        &self,
        tenant: Tenant,
        key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let user = TENANTS[tenant];
        let start = Instant::now();
        loop {
            match self.tenants[tenant]
                .publish_request(key, body, Some(user), None)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e)
                    if self.engines.is_clustered() && start.elapsed() < Duration::from_secs(90) =>
                {
                    tracing::debug!(error = %e, "publish failed; publishing again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn worker_id(&self, slot: usize) -> Option<String> {
        lock(&self.slots)
            .procs
            .get(slot)?
            .as_ref()
            .map(|p| p.id.clone())
    }

    /// Sends `signal` to the worker in `slot` if it is still the one named
    /// `id` (a kill may have replaced it meanwhile). Says how it went.
    fn signal(&self, slot: usize, id: &str, signal: Signal) -> String {
        let s = lock(&self.slots);
        match s.procs.get(slot).and_then(Option::as_ref) {
            Some(p) if p.id == id => match p.process.signal(signal) {
                Ok(()) => "sent".to_owned(),
                Err(e) => format!("failed: {e:#}"),
            },
            _ => "not sent (the worker was replaced)".to_owned(),
        }
    }
}

/// Which publishes have been confirmed (`req:<i>`, `precancel:<i>`), so that
/// publishes running concurrently keep the order the schedule means: a
/// forgery after the request it names, a pre-cancel before it.
#[derive(Default)]
struct Confirmed(Mutex<HashSet<String>>);

impl Confirmed {
    fn mark(&self, key: String) {
        lock(&self.0).insert(key);
    }

    async fn wait(&self, key: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while !lock(&self.0).contains(key) {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("{key} was never confirmed");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// A forge fault: waits for the request it names (or, for a pre-cancel,
/// goes first).
async fn forge(
    w: Arc<World>,
    b: super::faults::PlannedBuild,
    i: usize,
    kind: Forge,
    confirmed: Arc<Confirmed>,
) -> anyhow::Result<()> {
    let other = 1 - b.owner;
    if kind != Forge::PreCancel {
        confirmed.wait(&format!("req:{i}")).await?;
    }
    let start = w.rec.now();
    let invalid =
        serde_json::to_vec(&json!({"apiVersion": "kiln/v1", "kind": "BuildRequest", "id": b.id}))?;
    match kind {
        Forge::OtherTenantRequest => {
            w.publish(other, &b.id, &request_body(&b.id, 1, "forged"), true)
                .await?;
        }
        Forge::OwnerOtherBody => {
            w.publish(
                b.owner,
                &b.id,
                &request_body(&b.id, b.images, "changed"),
                true,
            )
            .await?;
        }
        Forge::InvalidBody { by_owner } => {
            w.publish(
                if by_owner { b.owner } else { other },
                &b.id,
                &invalid,
                false,
            )
            .await?;
        }
        Forge::OtherTenantCancel | Forge::PreCancel => {
            w.cancel(other, &b.id, "forged").await?;
        }
        Forge::ForgedObjects => forge_objects(&w, &b, other).await?,
    }
    if kind == Forge::PreCancel {
        confirmed.mark(format!("precancel:{i}"));
    }
    w.rec
        .fault(FaultKind::Forge, &b.id, start, &format!("{kind:?}"));
    Ok(())
}

/// The forging tenant `other` imitates build `b` with pods and ConfigMaps:
/// in its own namespace under the names Kiln gives `b`'s objects, and in
/// the victim's under other names (Kiln's own names there belong to Kiln:
/// an attempt that meets a forged one fails `ConfigError`, which the
/// checker counts as an answer, not an anomaly; the next attempt's
/// ConfigMap name is taken, which matters to inline Dockerfiles only).
/// Every forged pod exits 0 with [`FORGED_DIGEST`] at once.
async fn forge_objects(
    w: &World,
    b: &super::faults::PlannedBuild,
    other: Tenant,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{Api, PostParams};
    let victim_ns = TENANTS[b.owner];
    let forger_ns = TENANTS[other];
    let meta = |ns: &str, name: String, image: &str, attempt: u32| ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(
            [
                ("app.kubernetes.io/managed-by", "kiln".to_owned()),
                ("kiln.dev/build", kiln_protocol::label_value(&b.id)),
                (LABEL_IMAGE, image.to_owned()),
                (LABEL_ATTEMPT, attempt.to_string()),
                (FORGED_LABEL, "true".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        annotations: Some(
            [
                (ANN_BUILD_ID, b.id.clone()),
                ("kiln.dev/tenant", victim_ns.to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..ObjectMeta::default()
    };
    let pod = |m: ObjectMeta| Pod {
        metadata: m,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "kaniko".into(),
                image: Some("forger/executor:latest".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let image = "api";
    let mut pods = vec![pod(meta(
        forger_ns,
        kiln_protocol::pod_name(&b.id, image, 1),
        image,
        1,
    ))];
    pods.push(pod(meta(
        victim_ns,
        format!("forged-{}", kiln_protocol::pod_name(&b.id, image, 1)),
        image,
        1,
    )));
    for p in &pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(w.kube.client(), &ns);
        // A name taken already (Kiln's, or an earlier forgery) is fine.
        let _ = api.create(&PostParams::default(), p).await;
    }
    let evil = "FROM alpine:3.20\nRUN echo forged\n".to_owned();
    for (ns, attempt) in [(forger_ns, 1), (victim_ns, 3)] {
        let cm = ConfigMap {
            metadata: meta(
                ns,
                kiln_protocol::configmap_name(&b.id, image, attempt),
                image,
                attempt,
            ),
            data: Some(
                [("Dockerfile".to_owned(), evil.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(w.kube.client(), ns);
        let _ = api.create(&PostParams::default(), &cm).await;
    }
    Ok(())
}

/// Runs a timed fault; spawned, so slow ones do not hold up the publishing.
async fn timed_fault(w: Arc<World>, f: PlannedFault) {
    let start = w.rec.now();
    let duration = Duration::from_millis(f.duration);
    match f.kind {
        FaultKind::Kill => {
            let taken = lock(&w.slots)
                .procs
                .get_mut(f.worker)
                .and_then(Option::take);
            let Some(mut killed_proc) = taken else {
                // Another kill of this slot is under way and will restart
                // it: restarting here too would orphan a process.
                let slot = format!("slot {}", f.worker);
                w.rec
                    .fault(FaultKind::Kill, &slot, start, "no worker (already killed)");
                return;
            };
            let killed = killed_proc.process.kill();
            let (target, note) = (
                killed_proc.id,
                format!("SIGKILL {}", if killed { "sent" } else { "failed" }),
            );
            tokio::time::sleep(duration).await;
            let mut s = lock(&w.slots);
            let restarted = if s.procs[f.worker].is_some() {
                "nothing: the slot was restarted already".to_owned()
            } else {
                s.generation += 1;
                let generation = s.generation;
                match w.spawner.spawn(f.worker, generation) {
                    Ok(p) => {
                        let id = p.id.clone();
                        s.procs[f.worker] = Some(p);
                        id
                    }
                    Err(e) => format!("restart failed: {e}"),
                }
            };
            drop(s);
            w.rec.fault(
                FaultKind::Kill,
                &target,
                start,
                &format!("{note}; restarted as {restarted}"),
            );
        }
        FaultKind::Stop => {
            let Some(id) = w.worker_id(f.worker) else {
                return;
            };
            let stopped = w.signal(f.worker, &id, Signal::SIGSTOP);
            tokio::time::sleep(duration).await;
            let cont = w.signal(f.worker, &id, Signal::SIGCONT);
            w.rec.fault(
                FaultKind::Stop,
                &id,
                start,
                &format!("SIGSTOP {stopped}, SIGCONT {cont} after {} ms", f.duration),
            );
        }
        FaultKind::Amqp => {
            let Some(id) = w.worker_id(f.worker) else {
                return;
            };
            let n = close_connections_named(&w.engines, &format!("kiln worker {id}")).await;
            w.rec.fault(
                FaultKind::Amqp,
                &id,
                start,
                &format!("{n} connection(s) closed by the broker"),
            );
        }
        FaultKind::Redis => {
            let deleted = match w.engines.redis_url().await {
                Ok(url) => delete_prefix_at(&url, &w.redis_prefix).await,
                Err(e) => Err(e),
            };
            let note = match deleted {
                Ok(n) => format!("{n} keys deleted"),
                Err(e) => format!("failed: {e}"),
            };
            w.rec.fault(FaultKind::Redis, &w.redis_prefix, start, &note);
        }
        FaultKind::Api => {
            let response = match f.status {
                429 => FaultResponse::TooManyRequests,
                503 => FaultResponse::ServiceUnavailable,
                504 => FaultResponse::Timeout,
                _ => FaultResponse::InternalError,
            };
            w.kube
                .faults()
                .add(FaultRule::all().respond(response).probability(0.5));
            let before = w.kube.faults().injected_count();
            tokio::time::sleep(duration).await;
            w.kube.faults().clear();
            let n = w.kube.faults().injected_count() - before;
            w.rec.fault(
                FaultKind::Api,
                "api",
                start,
                &format!(
                    "half of all calls answered {} for {} ms: {n} injected",
                    f.status, f.duration
                ),
            );
        }
        FaultKind::Watch => {
            w.kube.faults().expire_history();
            w.kube.faults().close_watches();
            w.rec.fault(
                FaultKind::Watch,
                "api",
                start,
                "watches cut, history expired (410 on resume)",
            );
        }
        FaultKind::Forge => {}
        FaultKind::AmqpNode | FaultKind::RedisFailover => clustered_fault(&w, &f).await,
    }
}

/// A node kill or a Redis failover; the figures go into the history.
async fn clustered_fault(w: &World, f: &PlannedFault) {
    let start = w.rec.now();
    let duration = Duration::from_millis(f.duration);
    let done = if f.kind == FaultKind::AmqpNode {
        let queue = Names::new(&w.spawner.amqp_prefix).builds();
        w.engines.kill_queue_leader(&w.rec, &queue, duration).await
    } else {
        let ttl = w.spawner.lease_ttl;
        (w.engines)
            .fail_over_redis(&w.rec, f.lose_writes, duration, &w.redis_prefix, ttl)
            .await
    };
    match done {
        Ok(i) => w
            .rec
            .fault_measured(f.kind, &i.target, i.start, &i.note, i.lease_write_after),
        Err(e) => w
            .rec
            .fault(f.kind, "engines", start, &format!("failed: {e:#}")),
    }
}

/// Runs the schedule and checks the history.
pub async fn run(opts: &RunOptions) -> anyhow::Result<Outcome> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !opts.kiln.exists() {
        bail!(
            "{} does not exist: build it with `cargo build -p kiln-worker --bin kiln` (or --release)",
            opts.kiln.display()
        );
    }
    let engines = Engines::start(opts.params.kinds.iter().any(|k| k.is_clustered())).await?;
    ensure_tenants(&engines).await?;
    let prefix = unique("kiln-chaos");
    let redis_prefix = format!("{prefix}:");
    let sched = schedule(&opts.params, &prefix["kiln-chaos-".len()..]);
    let described = sched.describe();
    eprintln!("{described}");
    let rec = Arc::new(Recorder::new(opts.params.seed));

    // The cluster: pods run a while, some are evicted once; the kubelet
    // script records every pod and the fate it was given.
    let kube = FakeKube::start().await;
    kube.kubelet().set_timing(Timing {
        pending: Duration::from_millis(100),
        running: opts.pod_running,
        terminating: Duration::from_millis(50),
    });
    let fail_first: HashSet<String> = sched
        .builds
        .iter()
        .filter(|b| b.fail_first)
        .map(|b| b.id.clone())
        .collect();
    {
        let rec = rec.clone();
        kube.kubelet().set_script(move |pod| {
            let meta = &pod.metadata;
            let label = |k: &str| {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            };
            let build_id = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_BUILD_ID))
                .cloned()
                .unwrap_or_default();
            if !label(FORGED_LABEL).is_empty() {
                // Not Kiln's: no part of the history of builds.
                return Fate::Succeed {
                    digest: Some(FORGED_DIGEST.to_owned()),
                    log: String::new(),
                };
            }
            let attempt: u32 = label(LABEL_ATTEMPT).parse().unwrap_or(0);
            let fails = attempt == 1 && fail_first.contains(&build_id);
            rec.pod(PodOp {
                at: rec.now(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                build_id,
                image: label(LABEL_IMAGE),
                attempt,
                fails,
            });
            if fails {
                Fate::Evicted
            } else {
                Fate::succeed()
            }
        });
    }

    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig)?;
    let policy = dir.join("policy.toml");
    let mut toml = String::new();
    for t in TENANTS {
        let _ = write!(
            toml,
            "[tenants.{t}]\nnamespace = \"{t}\"\nallowedDestinations = [\"*\"]\n\n"
        );
    }
    std::fs::write(&policy, toml)?;

    // The observer: guest, binding `#` before anything is published.
    let observer = Broker::connect(&engines.amqp_urls(), &prefix, "kiln chaos observer")
        .await
        .map(Arc::new)
        .context("RabbitMQ must run on 127.0.0.1:5672 (or set KILN_AMQP_URL)")?;
    observer.declare_topology().await?;
    let listener = engines.observe(&observer, &prefix, rec.clone()).await?;
    let tenants = [
        Broker::connect(
            &url_as(&engines.amqp_urls(), TENANTS[0]),
            &prefix,
            "kiln chaos tenant 0",
        )
        .await?,
        Broker::connect(
            &url_as(&engines.amqp_urls(), TENANTS[1]),
            &prefix,
            "kiln chaos tenant 1",
        )
        .await?,
    ];

    let spawner = Arc::new(Spawner {
        kiln: opts.kiln.clone(),
        amqp_prefix: prefix.clone(),
        env: [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("KILN_AMQP_PREFIX", prefix.clone()),
            ("KILN_REDIS_PREFIX", redis_prefix.clone()),
            ("KILN_POLICY", policy.display().to_string()),
            ("KILN_CLUSTER", "chaos".to_owned()),
            ("KILN_RETRY_BASE_DELAY", "200ms".to_owned()),
            ("KILN_RETRY_MAX_DELAY", "1s".to_owned()),
            ("KILN_PENDING_TIMEOUT", "60s".to_owned()),
            ("KILN_PREFETCH", "64".to_owned()),
            ("KILN_RECORD_TTL", "600s".to_owned()),
            // KILN_CHAOS_WORKER_LOG: the workers' RUST_LOG (e.g. `info` to
            // follow adoptions in the logs KILN_CHAOS_KEEP_LOGS keeps).
            (
                "RUST_LOG",
                std::env::var("KILN_CHAOS_WORKER_LOG")
                    .unwrap_or_else(|_| "warn,lapin=error".to_owned()),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into_iter()
        .chain(engines.worker_env())
        .collect(),
        dir: dir.clone(),
        lease_ttl: Duration::from_millis(opts.params.lease_ttl),
    });
    let slots: Shared<Slots> = Arc::default();
    {
        let mut s = lock(&slots);
        for slot in 0..opts.params.workers {
            s.procs.push(Some(spawner.spawn(slot, 0)?));
        }
    }
    let world = Arc::new(World {
        rec: rec.clone(),
        kube,
        tenants,
        slots,
        spawner,
        redis_prefix: redis_prefix.clone(),
        engines,
    });
    let result = drive(&world, &sched, opts, &prefix).await;

    // Clean up whatever happened: workers, topology, keys, files.
    let crashes = stop_workers(&world).await;
    listener.abort();
    let _ = observer.delete_topology().await;
    if let Ok(url) = world.engines.redis_url().await {
        let _ = delete_prefix_at(&url, &redis_prefix).await;
    }
    observer.close().await;
    for t in &world.tenants {
        t.close().await;
    }
    world.kube.shutdown();
    let settled = result?;
    let history = rec.snapshot();
    if std::env::var_os("KILN_CHAOS_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // The whole history beside the logs, to follow one build.
        let _ = std::fs::write(dir.join("history.txt"), format!("{history:#?}"));
        eprintln!(
            "chaos: worker logs and history.txt kept in {}",
            dir.display()
        );
    }
    let verdict = check(&history);
    Ok(Outcome {
        schedule: described,
        history,
        verdict,
        settled,
        crashes,
    })
}

/// One entry of the timeline: publishes, owner cancels and faults.
enum Act<'a> {
    Publish(&'a super::faults::PlannedBuild),
    Cancel(&'a super::faults::PlannedBuild),
    Fault(&'a PlannedFault),
}

/// Waits for consumers, plays the schedule, waits for every answer and
/// records the end state. Returns whether every build was answered.
async fn drive(
    w: &Arc<World>,
    sched: &Schedule,
    opts: &RunOptions,
    prefix: &str,
) -> anyhow::Result<bool> {
    wait_for_consumers(prefix, opts.params.workers, w).await?;
    let mut acts: Vec<(u64, Act<'_>)> = Vec::new();
    for b in &sched.builds {
        acts.push((b.at, Act::Publish(b)));
        if let Some(c) = b.cancel_at {
            acts.push((c, Act::Cancel(b)));
        }
    }
    for f in &sched.faults {
        acts.push((f.at, Act::Fault(f)));
    }
    acts.sort_by_key(|a| a.0);
    let pre_cancelled: HashSet<usize> = sched
        .faults
        .iter()
        .filter_map(|f| f.forge)
        .filter(|(k, _)| *k == Forge::PreCancel)
        .map(|(_, i)| i)
        .collect();
    let confirmed = Arc::new(Confirmed::default());
    let start = Instant::now();
    let mut last_progress = Instant::now();
    // Publishes run concurrently (one at a time, confirmed, is too slow on
    // a loaded machine to keep to the schedule); `confirmed` orders them
    // where it matters.
    let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    for (at, act) in acts {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let (w2, c2) = (w.clone(), confirmed.clone());
        match act {
            Act::Publish(b) => {
                let i = index_of(sched, b);
                let pre = pre_cancelled.contains(&i);
                let b = b.clone();
                tasks.push(tokio::spawn(async move {
                    if pre {
                        c2.wait(&format!("precancel:{i}")).await?;
                    }
                    w2.publish(b.owner, &b.id, &request_body(&b.id, b.images, "v1"), true)
                        .await?;
                    c2.mark(format!("req:{i}"));
                    Ok(())
                }));
            }
            Act::Cancel(b) => {
                let i = index_of(sched, b);
                let b = b.clone();
                tasks.push(tokio::spawn(async move {
                    c2.wait(&format!("req:{i}")).await?;
                    w2.cancel(b.owner, &b.id, "superseded").await
                }));
            }
            Act::Fault(f) => match f.forge {
                Some((kind, i)) if f.kind == FaultKind::Forge => {
                    let b = sched.builds[i].clone();
                    tasks.push(tokio::spawn(forge(w2, b, i, kind, c2)));
                }
                _ => {
                    let f = f.clone();
                    tasks.push(tokio::spawn(async move {
                        timed_fault(w2, f).await;
                        Ok(())
                    }));
                }
            },
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            reap(&w.slots, &w.spawner);
            progress(w, sched);
            last_progress = Instant::now();
        }
    }
    for t in tasks {
        t.await??;
    }
    // Every build answered (a terminal build.* or a request.rejected).
    let deadline = Instant::now() + opts.settle;
    let settled = loop {
        let answered = w.rec.answered();
        if sched.builds.iter().all(|b| answered.contains(&b.id)) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            reap(&w.slots, &w.spawner);
            progress(w, sched);
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Clean-up after the last terminal: pods deleted, leases released.
    let until = Instant::now() + Duration::from_secs(10);
    let end = loop {
        let end = end_state(w).await?;
        if (end.pods.is_empty() && end.leases.is_empty()) || Instant::now() >= until {
            break end;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A grace period for anything published late (a stalled worker waking).
    let quiet = w.rec.event_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    if w.rec.event_count() != quiet {
        eprintln!(
            "chaos: {} events arrived after the end",
            w.rec.event_count() - quiet
        );
    }
    w.rec.set_end(end);
    Ok(settled)
}

fn index_of(sched: &Schedule, b: &super::faults::PlannedBuild) -> usize {
    sched
        .builds
        .iter()
        .position(|x| x.id == b.id)
        .unwrap_or_default()
}

fn progress(w: &World, sched: &Schedule) {
    let answered = w.rec.answered();
    let h = w.rec.snapshot();
    eprintln!(
        "  chaos: {} ms, {} requests published, {}/{} builds answered, {} events, {} faults done",
        w.rec.now(),
        h.requests.len(),
        sched
            .builds
            .iter()
            .filter(|b| answered.contains(&b.id))
            .count(),
        sched.builds.len(),
        h.events.len(),
        h.faults.len()
    );
}

async fn wait_for_consumers(prefix: &str, workers: usize, w: &World) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(
        &w.engines.node_url(),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    let queue = Names::new(prefix).builds();
    let start = Instant::now();
    loop {
        let q = ch
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        if q.consumer_count() as usize >= workers {
            break;
        }
        reap(&w.slots, &w.spawner);
        if let Some(c) = lock(&w.slots).crashes.first() {
            bail!("a worker did not start: {c}");
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the workers did not all consume {queue} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

async fn end_state(w: &World) -> anyhow::Result<EndState> {
    let mut pods = Vec::new();
    for ns in TENANTS {
        for p in w.kube.pods(ns) {
            // The forger's pods are its own to clean up: Kiln leaves them.
            if p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(FORGED_LABEL))
            {
                continue;
            }
            pods.push(LeftPod {
                namespace: ns.to_owned(),
                name: p.metadata.name.clone().unwrap_or_default(),
                build_id: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANN_BUILD_ID))
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    let keys = keys_with_prefix_at(&w.engines.redis_url().await?, &w.redis_prefix).await?;
    let lease = format!("{}lease:", w.redis_prefix);
    let (leases, other): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| k.starts_with(&lease));
    Ok(EndState {
        pods,
        leases,
        other_keys: other.len(),
    })
}

/// SIGCONT (a stopped worker cannot exit), SIGTERM, then SIGKILL after 5 s,
/// all workers at once. Returns the crashes noted during the run.
async fn stop_workers(w: &World) -> Vec<String> {
    let procs: Vec<Proc> = {
        let mut s = lock(&w.slots);
        s.procs.iter_mut().filter_map(Option::take).collect()
    };
    futures::future::join_all(procs.into_iter().map(|mut p| async move {
        p.process.stop(Duration::from_secs(5)).await;
    }))
    .await;
    std::mem::take(&mut lock(&w.slots).crashes)
}
