//! `kiln-bench`: end-to-end figures of one real `kiln worker` process against
//! the machine's RabbitMQ and Redis and an in-process fake Kubernetes API.
//!
//! Phases (each prints its figures; nothing is asserted):
//!
//! 1. throughput — N one-image builds published as fast as possible
//!    (pipelined, confirmed), pods complete instantly; builds/s from the first
//!    publish to the last `build.succeeded` seen by a subscriber.
//! 2. latency — builds offered at a fixed rate; publish -> `build.accepted`.
//! 3. idle CPU — the same worker with nothing to do, over 5 s.
//! 4. memory — a fresh worker holding M builds whose pods run for an hour;
//!    VmRSS / VmHWM once every build is running.
//! 5. ceiling — a bare lapin loop doing only the AMQP work of one build.
//! 6. takeover — worker A holds K builds whose pods run for an hour, A is
//!    SIGKILLed and worker B started; the time from the kill until B holds
//!    every lease, and the API calls B made meanwhile.
//!
//! `scripts/bench` builds both binaries in release and runs this one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kiln_tests::chaos::run::{delete_prefix, keys_with_prefix};
use kiln_tests::fakekube::{FakeKube, Timing, Verb};
use kiln_tests::harness::{NAMESPACE, amqp_url, one_image, redis_url, unique};
use kiln_tests::process::{Stopped, WorkerProcess};
use kiln_worker::amqp::{BUILD_KEY, Broker, Names};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    builds: usize,
    rate: u32,
    latency_secs: u64,
    in_flight: usize,
    prefetch: u16,
    idle_secs: u64,
    kiln: PathBuf,
    phases: Vec<String>,
    takeover_builds: usize,
    takeover_ttl: Duration,
}

const USAGE: &str = "usage: kiln-bench [--builds N] [--rate PER_S] [--latency-secs S] [--in-flight N] [--prefetch N] [--idle-secs S] [--takeover-builds N] [--takeover-ttl DURATION] [--kiln PATH] [--phases throughput,latency,idle,memory,ceiling,takeover]";

fn parse_opts() -> Opts {
    let mut o = Opts {
        builds: 5000,
        rate: 100,
        latency_secs: 10,
        in_flight: 10_000,
        prefetch: 512,
        idle_secs: 5,
        kiln: default_kiln(),
        phases: [
            "throughput",
            "latency",
            "idle",
            "memory",
            "ceiling",
            "takeover",
        ]
        .map(str::to_owned)
        .to_vec(),
        takeover_builds: 10_000,
        takeover_ttl: Duration::from_secs(5),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value\n{USAGE}")))
        };
        let num = |s: String, name: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{name}: {s:?} is not a number")))
        };
        match a.as_str() {
            "--builds" => o.builds = num(val("--builds"), "--builds") as usize,
            "--rate" => o.rate = num(val("--rate"), "--rate") as u32,
            "--latency-secs" => o.latency_secs = num(val("--latency-secs"), "--latency-secs"),
            "--in-flight" => o.in_flight = num(val("--in-flight"), "--in-flight") as usize,
            "--prefetch" => o.prefetch = num(val("--prefetch"), "--prefetch") as u16,
            "--idle-secs" => o.idle_secs = num(val("--idle-secs"), "--idle-secs"),
            "--kiln" => o.kiln = PathBuf::from(val("--kiln")),
            "--takeover-builds" => {
                o.takeover_builds = num(val("--takeover-builds"), "--takeover-builds") as usize;
            }
            "--takeover-ttl" => {
                let v = val("--takeover-ttl");
                o.takeover_ttl = kiln_worker::config::parse_duration(&v)
                    .unwrap_or_else(|e| die(&format!("--takeover-ttl: {v:?}: {e}")));
            }
            "--phases" => {
                o.phases = val("--phases")
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("kiln-bench: {msg}");
    std::process::exit(2)
}

/// `target/release/kiln` next to this binary, else the workspace's.
fn default_kiln() -> PathBuf {
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let p = dir.join("kiln");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/release/kiln"
    ))
}

// ---------------------------------------------------------------- /proc

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// utime + stime of a process, in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (VmRSS, VmHWM) in kB.
fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Pids of processes whose `comm` is one of `names` (RabbitMQ, Redis).
fn pids_named(names: &[&str]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            let comm = comm.trim();
            if names.contains(&comm) {
                out.push((comm.to_owned(), pid));
            }
        }
    }
    out
}

/// CPU use of the interesting processes over one interval.
struct CpuProbe {
    at: Instant,
    machine: Option<(u64, u64)>,
    procs: Vec<(String, u32, Option<u64>)>,
}

impl CpuProbe {
    fn start(worker: Option<u32>) -> Self {
        let mut procs: Vec<(String, u32)> = Vec::new();
        if let Some(w) = worker {
            procs.push(("kiln worker".to_owned(), w));
        }
        procs.push(("bench (fake API + clients)".to_owned(), std::process::id()));
        for (name, pid) in pids_named(&["beam.smp", "redis-server"]) {
            let label = if name == "beam.smp" {
                "RabbitMQ (beam.smp)".to_owned()
            } else {
                name
            };
            procs.push((label, pid));
        }
        Self {
            at: Instant::now(),
            machine: machine_ticks(),
            procs: procs
                .into_iter()
                .map(|(n, p)| {
                    let t = cpu_ticks(p);
                    (n, p, t)
                })
                .collect(),
        }
    }

    /// "name: 87% of a core" lines, and the machine's busy share.
    fn report(&self) -> String {
        let secs = self.at.elapsed().as_secs_f64();
        let mut s = String::new();
        for (name, pid, t0) in &self.procs {
            if let (Some(t0), Some(t1)) = (t0, cpu_ticks(*pid)) {
                let pct = (t1 - t0) as f64 / CLK_TCK / secs * 100.0;
                let _ = writeln!(s, "    cpu {name:<28} {pct:6.1}% of one core");
            }
        }
        if let (Some((b0, t0)), Some((b1, t1))) = (self.machine, machine_ticks())
            && t1 > t0
        {
            let pct = (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0;
            let _ = writeln!(
                s,
                "    cpu {:<28} {pct:6.1}% busy ({} cores)",
                "machine (all processes)",
                std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
            );
        }
        s
    }
}

// ---------------------------------------------------------------- worker process

/// The worker under measurement, with what the bench needs on top of the
/// harness's process: dying loudly when it exits, and its warnings.
struct Worker {
    process: WorkerProcess,
}

impl Worker {
    fn spawn(
        opts: &Opts,
        kubeconfig: &Path,
        prefix: &str,
        redis_prefix: &str,
        tag: &str,
        extra_env: &[(&str, String)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{prefix}-{tag}.log"));
        let envs = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("KILN_AMQP_URL", amqp_url()),
            ("KILN_REDIS_URL", redis_url()),
            ("KILN_AMQP_PREFIX", prefix.to_owned()),
            ("KILN_REDIS_PREFIX", redis_prefix.to_owned()),
            ("KILN_NAMESPACE", NAMESPACE.to_owned()),
            ("KILN_WORKER_ID", format!("bench-{tag}")),
            ("KILN_PREFETCH", opts.prefetch.to_string()),
            ("RUST_LOG", "warn,lapin::returned_messages=error".to_owned()),
        ];
        let envs = envs
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra_env.iter().map(|(k, v)| (*k, v.as_str())));
        let process = WorkerProcess::spawn(&opts.kiln, envs, &log).unwrap_or_else(|e| {
            die(&format!(
                "{e:#} (in release: `cargo build --release -p kiln-worker --bin kiln`)"
            ))
        });
        Self { process }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn check_alive(&mut self) {
        if let Some(status) = self.process.exit_status() {
            die(&format!(
                "the worker exited ({status}); its log:\n{}",
                self.process.log_tail(20)
            ));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Says how it ended; the log
    /// is kept when it had to be killed.
    async fn stop(mut self, grace: Duration) -> String {
        let how = self.process.stop(grace).await;
        if let Stopped::Killed(_) = how {
            format!("{how} (log kept at {})", self.process.log_path().display())
        } else {
            let _ = std::fs::remove_file(self.process.log_path());
            how.to_string()
        }
    }

    /// SIGKILL, as a crash; the log goes.
    fn kill(mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(self.process.log_path());
    }

    /// Warnings and errors the worker logged.
    fn log_lines(&self) -> Vec<String> {
        self.process
            .log_text()
            .lines()
            .filter(|l| !l.contains("no policy file"))
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------- AMQP helpers

async fn connect(name: &str) -> Connection {
    Connection::connect(
        &amqp_url(),
        ConnectionProperties::default().with_connection_name(name.to_owned().into()),
    )
    .await
    .expect("RabbitMQ must run on 127.0.0.1:5672 (or set KILN_AMQP_URL)")
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

/// What the event subscriber saw.
#[derive(Default)]
struct Seen {
    /// routing key -> count
    counts: Mutex<HashMap<String, u64>>,
    /// build id -> time of its first event with the watched key
    first: Mutex<HashMap<String, Instant>>,
    last_event: Mutex<Option<Instant>>,
    total: AtomicU64,
}

impl Seen {
    fn count(&self, key: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    fn counts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort();
        v
    }
    fn last_event(&self) -> Option<Instant> {
        *self
            .last_event
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Binds an exclusive queue to `exchange` with `keys` and counts what arrives
/// (no-ack consumer: the subscriber must never be what slows the run down).
/// Records the arrival time of the first `stamp_key` event of each build.
///
/// Each key is bound as `<key>.#` and counted by its first two words, so
/// `build.succeeded` matches the event both as `build.succeeded` and with the
/// tenant word the routing keys carry since the tenant split
/// (`build.succeeded.<tenant>`).
async fn subscribe(
    conn: &Connection,
    exchange: &str,
    keys: &[&str],
    stamp_key: Option<&str>,
) -> (Arc<Seen>, Channel) {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare subscriber queue");
    for k in keys {
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            format!("{k}.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind subscriber queue");
    }
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume events");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let stamp_key = stamp_key.map(str::to_owned);
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let now = Instant::now();
            let key = phase_key(d.routing_key.as_str());
            if stamp_key.as_deref() == Some(key)
                && let Some(id) = header(&d.properties, "kiln-build-id")
            {
                s.first
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(id)
                    .or_insert(now);
            }
            *s.counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.to_owned())
                .or_default() += 1;
            *s.last_event.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
            s.total.fetch_add(1, Ordering::Relaxed);
        }
    });
    (seen, ch)
}

/// `build.succeeded` of `build.succeeded` and of `build.succeeded.<tenant>`.
fn phase_key(routing_key: &str) -> &str {
    match routing_key.match_indices('.').nth(1) {
        Some((i, _)) => &routing_key[..i],
        None => routing_key,
    }
}

fn request_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

async fn publish_one(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
        body,
        request_props(),
    )
    .await
    .expect("basic.publish")
}

/// Publishes `bodies` as fast as possible with at most `window` unconfirmed.
async fn publish_all(ch: &Channel, exchange: &str, key: &str, bodies: Vec<Vec<u8>>, window: usize) {
    let mut pending = FuturesUnordered::new();
    for body in bodies {
        while pending.len() >= window {
            check_confirm(pending.next().await);
        }
        pending.push(publish_one(ch, exchange, key, &body).await);
    }
    while let Some(c) = pending.next().await {
        check_confirm(Some(c));
    }
}

fn check_confirm(c: Option<lapin::Result<Confirmation>>) {
    match c {
        Some(Ok(Confirmation::Ack(None))) | None => {}
        Some(Ok(other)) => die(&format!("publish not confirmed as routed: {other:?}")),
        Some(Err(e)) => die(&format!("publish failed: {e}")),
    }
}

/// Waits until `queue` has a consumer (the worker is up).
async fn wait_consumer(conn: &Connection, queue: &str, worker: &mut Worker) {
    let ch = conn.create_channel().await.expect("channel");
    let start = Instant::now();
    loop {
        worker.check_alive();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare (channel closed?)");
        if q.consumer_count() > 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            die("the worker did not start consuming within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = ch.close(200, "ok".into()).await;
}

/// Waits until `cond` holds, printing progress; false on timeout or stall.
async fn wait_for(
    what: &str,
    timeout: Duration,
    worker: &mut Worker,
    mut progress: impl FnMut() -> (u64, u64),
) -> bool {
    let start = Instant::now();
    let mut last = (0, Instant::now());
    let mut last_print = Instant::now();
    loop {
        worker.check_alive();
        let (have, want) = progress();
        if have >= want {
            return true;
        }
        if have != last.0 {
            last = (have, Instant::now());
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("  ... {what}: {have}/{want} after {:.0?}", start.elapsed());
            last_print = Instant::now();
        }
        if start.elapsed() > timeout || last.1.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "  !! {what}: gave up at {have}/{want} after {:.0?}",
                start.elapsed()
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- world

/// One prefix, one fake cluster, one worker process.
struct World {
    prefix: String,
    redis_prefix: String,
    kube: FakeKube,
    broker: Broker,
    conn: Connection,
    publisher: Channel,
    worker: Option<Worker>,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl World {
    async fn new(opts: &Opts, tag: &str, timing: Timing) -> Self {
        Self::new_with(opts, tag, timing, &[]).await
    }

    async fn new_with(
        opts: &Opts,
        tag: &str,
        timing: Timing,
        extra_env: &[(&str, String)],
    ) -> Self {
        let prefix = unique(&format!("kiln-bench-{tag}"));
        let redis_prefix = format!("{prefix}:");
        let kube = FakeKube::start().await;
        kube.kubelet().set_timing(timing);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = dir.join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig)
            .expect("write kubeconfig");
        let broker = Broker::connect(&amqp_url(), &prefix, "kiln bench")
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (or set KILN_AMQP_URL)");
        broker.declare_topology().await.expect("declare topology");
        let conn = connect("kiln bench publisher").await;
        let publisher = confirm_channel(&conn).await;
        let mut worker = Worker::spawn(opts, &kubeconfig, &prefix, &redis_prefix, tag, extra_env);
        wait_consumer(&conn, &Names::new(&prefix).builds(), &mut worker).await;
        Self {
            prefix,
            redis_prefix,
            kube,
            broker,
            conn,
            publisher,
            worker: Some(worker),
            kubeconfig,
            _dir: TempDir(dir),
        }
    }

    fn names(&self) -> Names {
        Names::new(&self.prefix)
    }

    fn worker(&mut self) -> &mut Worker {
        self.worker.as_mut().expect("worker running")
    }

    fn worker_pid(&self) -> u32 {
        self.worker.as_ref().map_or(0, Worker::pid)
    }

    fn api_calls(&self) -> usize {
        self.kube.calls().len()
    }

    async fn subscribe(&self, keys: &[&str], stamp: Option<&str>) -> (Arc<Seen>, Channel) {
        subscribe(&self.conn, &self.names().events(), keys, stamp).await
    }

    async fn cleanup(mut self, grace: Duration) -> String {
        let mut notes = String::new();
        if let Some(w) = self.worker.take() {
            let lines = w.log_lines();
            if !lines.is_empty() {
                let _ = writeln!(
                    notes,
                    "    worker logged {} warning/error lines; first ones:",
                    lines.len()
                );
                for l in lines.iter().take(5) {
                    let _ = writeln!(notes, "      {}", truncate(l, 300));
                }
            }
            let _ = writeln!(notes, "    worker {}", w.stop(grace).await);
        }
        let _ = self.broker.delete_topology().await;
        if let Err(e) = delete_prefix(&self.redis_prefix).await {
            eprintln!(
                "kiln-bench: cannot clean up Redis keys {}*: {e:#}",
                self.redis_prefix
            );
        }
        self.broker.close().await;
        let _ = self.conn.close(200, "bench done".into()).await;
        self.kube.shutdown();
        notes
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn bodies(tag: &str, n: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{run}-{i}")).collect();
    let bodies = ids
        .iter()
        .map(|id| serde_json::to_vec(&one_image(id)).expect("json"))
        .collect();
    (ids, bodies)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MEETS target" } else { "MISSES target" }
}

// ---------------------------------------------------------------- phases

/// Phases 1-3 on one worker. Returns Kiln's builds/s.
async fn run_instant_phases(opts: &Opts, report: &mut String) -> Option<f64> {
    let want = |p: &str| opts.phases.iter().any(|x| x == p);
    if !(want("throughput") || want("latency") || want("idle")) {
        return None;
    }
    let mut w = World::new(opts, "tput", Timing::instant()).await;
    let rabbit_exchange = w.names().requests();
    let _ = writeln!(
        report,
        "\n== worker A (pid {}, prefix {}, prefetch {}) ==",
        w.worker_pid(),
        w.prefix,
        opts.prefetch
    );
    let mut rate = None;

    if want("throughput") {
        let n = opts.builds;
        let (seen, sub) = w.subscribe(&["build.*"], None).await;
        let (_, bodies) = bodies("tput", n);
        let calls0 = w.api_calls();
        let probe = CpuProbe::start(Some(w.worker_pid()));
        eprintln!("throughput: publishing {n} builds ...");
        let start = Instant::now();
        publish_all(&w.publisher, &rabbit_exchange, BUILD_KEY, bodies, 1000).await;
        let published = start.elapsed();
        let done = wait_for(
            "throughput: build.succeeded",
            Duration::from_secs(600),
            w.worker(),
            || {
                (
                    seen.count("build.succeeded")
                        + seen.count("build.failed")
                        + seen.count("build.rejected"),
                    n as u64,
                )
            },
        )
        .await;
        let end = seen.last_event().unwrap_or_else(Instant::now);
        let secs = (end - start).as_secs_f64();
        let succeeded = seen.count("build.succeeded");
        let r = succeeded as f64 / secs;
        let calls = w.api_calls() - calls0;
        let cpu = probe.report();
        let _ = writeln!(
            report,
            "\n-- 1. throughput: {n} one-image builds, pods complete instantly --"
        );
        let _ = writeln!(
            report,
            "    published (all confirmed) in {}  = {:.0} req/s offered",
            ms(published),
            n as f64 / published.as_secs_f64()
        );
        let _ = writeln!(
            report,
            "    build.succeeded {succeeded}/{n} in {secs:.2} s{}",
            if done { "" } else { "  (INCOMPLETE)" }
        );
        let _ = writeln!(
            report,
            "    THROUGHPUT: {r:.0} builds/s   (target >= 500: {})",
            verdict(r >= 500.0)
        );
        let _ = writeln!(
            report,
            "    fake API: {calls} calls = {:.1} per build, {:.0} calls/s",
            calls as f64 / n as f64,
            calls as f64 / secs
        );
        let _ = writeln!(report, "    build events seen: {:?}", seen.counts());
        report.push_str(&cpu);
        if let Some((rss, hwm)) = rss_kb(w.worker_pid()) {
            let _ = writeln!(
                report,
                "    worker memory after the run: VmRSS {:.1} MB, VmHWM {:.1} MB",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
        let _ = sub.close(200, "done".into()).await;
        rate = Some(r);
    }

    if want("latency") {
        let n = (u64::from(opts.rate) * opts.latency_secs) as usize;
        let (seen, sub) = w.subscribe(&["build.*"], Some("build.accepted")).await;
        let (ids, bodies) = bodies("lat", n);
        let calls0 = w.api_calls();
        let probe = CpuProbe::start(Some(w.worker_pid()));
        eprintln!(
            "latency: offering {} builds/s for {} s ...",
            opts.rate, opts.latency_secs
        );
        let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
        let mut sent: HashMap<String, Instant> = HashMap::with_capacity(n);
        let mut confirms = FuturesUnordered::new();
        let start = tokio::time::Instant::now();
        for (i, (id, body)) in ids.iter().zip(&bodies).enumerate() {
            tokio::time::sleep_until(start + period * i as u32).await;
            // Drain confirms that are ready without blocking the pace.
            while let Some(Some(c)) = futures::FutureExt::now_or_never(confirms.next()) {
                check_confirm(Some(c));
            }
            sent.insert(id.clone(), Instant::now());
            confirms.push(publish_one(&w.publisher, &rabbit_exchange, BUILD_KEY, body).await);
        }
        while let Some(c) = confirms.next().await {
            check_confirm(Some(c));
        }
        let offered = start.elapsed();
        wait_for(
            "latency: build.succeeded",
            Duration::from_secs(120),
            w.worker(),
            || {
                (
                    seen.count("build.succeeded")
                        + seen.count("build.failed")
                        + seen.count("build.rejected"),
                    n as u64,
                )
            },
        )
        .await;
        let calls = w.api_calls() - calls0;
        let firsts = seen
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut lat: Vec<Duration> = sent
            .iter()
            .filter_map(|(id, t0)| firsts.get(id).map(|t1| t1.saturating_duration_since(*t0)))
            .collect();
        lat.sort();
        let p99 = pct(&lat, 0.99);
        let _ = writeln!(
            report,
            "\n-- 2. latency: {} builds/s offered for {:.1} s, publish -> build.accepted --",
            opts.rate,
            offered.as_secs_f64()
        );
        let _ = writeln!(report, "    accepted {}/{n}", lat.len());
        let _ = writeln!(
            report,
            "    p50 {}   p90 {}   p99 {}   max {}",
            ms(pct(&lat, 0.50)),
            ms(pct(&lat, 0.90)),
            ms(p99),
            ms(lat.last().copied().unwrap_or_default())
        );
        let _ = writeln!(
            report,
            "    LATENCY p99 {}   (target < 50 ms: {})",
            ms(p99),
            verdict(p99 < Duration::from_millis(50) && lat.len() == n)
        );
        let _ = writeln!(
            report,
            "    fake API: {calls} calls, {:.0} calls/s",
            calls as f64 / offered.as_secs_f64()
        );
        report.push_str(&probe.report());
        let _ = sub.close(200, "done".into()).await;
    }

    if want("idle") {
        eprintln!(
            "idle: sampling the worker's CPU for {} s ...",
            opts.idle_secs
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = w.worker_pid();
        let t0 = cpu_ticks(pid);
        let at = Instant::now();
        let calls0 = w.api_calls();
        tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
        let secs = at.elapsed().as_secs_f64();
        let calls = w.api_calls() - calls0;
        if let (Some(t0), Some(t1)) = (t0, cpu_ticks(pid)) {
            let pct = (t1 - t0) as f64 / CLK_TCK / secs * 100.0;
            let _ = writeln!(report, "\n-- 4. idle CPU: no work, {secs:.1} s --");
            let _ = writeln!(
                report,
                "    IDLE CPU: {pct:.2}% of one core ({} ticks of 10 ms)   (target ~0: {})",
                t1 - t0,
                verdict(pct < 1.0)
            );
            let _ = writeln!(report, "    fake API calls while idle: {calls}");
        }
    }
    let notes = w.cleanup(Duration::from_secs(30)).await;
    report.push_str(&notes);
    rate
}

/// Phase 3: many builds in flight on a fresh worker.
async fn run_memory_phase(opts: &Opts, report: &mut String) {
    let n = opts.in_flight;
    let timing = Timing {
        pending: Duration::ZERO,
        running: Duration::from_secs(3600),
        terminating: Duration::ZERO,
    };
    let mut w = World::new(opts, "mem", timing).await;
    let exchange = w.names().requests();
    let _ = writeln!(
        report,
        "\n== worker B (pid {}, prefix {}) ==",
        w.worker_pid(),
        w.prefix
    );
    let rss0 = rss_kb(w.worker_pid());
    let (seen, sub) = w.subscribe(&["build.*", "image.running"], None).await;
    let (_, bodies) = bodies("mem", n);
    eprintln!("memory: publishing {n} long-running builds ...");
    let calls0 = w.api_calls();
    let start = Instant::now();
    publish_all(&w.publisher, &exchange, BUILD_KEY, bodies, 1000).await;
    let all = wait_for(
        "memory: image.running",
        Duration::from_secs(900),
        w.worker(),
        || (seen.count("image.running"), n as u64),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    let calls = w.api_calls() - calls0;
    // Let the dust settle (acks, lease renewals) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = w.worker_pid();
    let _ = writeln!(
        report,
        "\n-- 3. memory: {n} builds in flight (pods Running for 1 h) --"
    );
    let _ = writeln!(
        report,
        "    image.running {}/{n} after {secs:.1} s ({:.0} builds/s to Running){}",
        seen.count("image.running"),
        seen.count("image.running") as f64 / secs,
        if all { "" } else { "  (INCOMPLETE)" }
    );
    let _ = writeln!(report, "    events seen: {:?}", seen.counts());
    let _ = writeln!(
        report,
        "    fake API: {calls} calls, {:.0} calls/s",
        calls as f64 / secs
    );
    if let Some((rss, _)) = rss0 {
        let _ = writeln!(
            report,
            "    worker VmRSS at start: {:.1} MB",
            rss as f64 / 1024.0
        );
    }
    if let Some((rss, hwm)) = rss_kb(pid) {
        let mb = rss as f64 / 1024.0;
        let _ = writeln!(
            report,
            "    MEMORY: VmRSS {mb:.1} MB, VmHWM {:.1} MB = {:.1} kB per build   (target < 150 MB: {})",
            hwm as f64 / 1024.0,
            rss as f64 / n as f64,
            verdict(hwm < 150 * 1024)
        );
    }
    // CPU of holding them (lease renewals, watch).
    let probe = CpuProbe::start(Some(pid));
    let calls0 = w.api_calls();
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    let _ = writeln!(
        report,
        "    holding {n} builds for {} s (no events): fake API calls {}",
        opts.idle_secs,
        w.api_calls() - calls0
    );
    report.push_str(&probe.report());
    let _ = sub.close(200, "done".into()).await;
    let notes = w.cleanup(Duration::from_secs(60)).await;
    report.push_str(&notes);
}

/// Phase 5: a bare lapin loop doing only the AMQP work of one build.
async fn run_ceiling(opts: &Opts, kiln_rate: Option<f64>, report: &mut String) {
    let n = opts.builds;
    let prefix = unique("kiln-bench-ceiling");
    let names = Names::new(&prefix);
    let conn = connect("kiln bench ceiling").await;
    let setup = conn.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    setup
        .exchange_declare(
            names.requests().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("declare requests");
    setup
        .exchange_declare(
            names.events().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("declare events");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            names.builds().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("declare builds");
    setup
        .queue_bind(
            names.builds().into(),
            names.requests().into(),
            BUILD_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind builds");
    let (seen, sub) = subscribe(&conn, &names.events(), &["build.*"], None).await;

    // The "worker": its own connection, a consumer channel with the prefetch
    // and a confirm channel for events, as Kiln has.
    let wconn = connect("kiln bench ceiling worker").await;
    let cch = wconn.create_channel().await.expect("channel");
    cch.basic_qos(opts.prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = cch
        .basic_consume(
            names.builds().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let pch = confirm_channel(&wconn).await;
    let events = names.events();
    let body = vec![b'x'; 900];
    let worker = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let pch = pch.clone();
            let events = events.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let id = format!("ceil-{}", d.delivery_tag);
                for key in [
                    "build.accepted",
                    "image.scheduled",
                    "image.running",
                    "image.succeeded",
                    "build.succeeded",
                ] {
                    let mut h = FieldTable::default();
                    h.insert(
                        "kiln-build-id".into(),
                        AMQPValue::LongString(id.clone().into()),
                    );
                    h.insert(
                        "kiln-phase".into(),
                        AMQPValue::LongString(key.to_owned().into()),
                    );
                    // Not mandatory: only `build.*` is bound, and every
                    // returned image event would make lapin log a warning
                    // with its body, byte by byte (issue 22). The broker
                    // drops an unroutable message either way; only the
                    // return to the publisher is saved.
                    let c = pch
                        .basic_publish(
                            events.as_str().into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default()
                                .with_content_type("application/cloudevents+json".into())
                                .with_message_id(format!("{id}/{key}").into())
                                .with_delivery_mode(2)
                                .with_headers(h),
                        )
                        .await
                        .expect("publish event");
                    c.await.expect("event confirm");
                    if key == "build.accepted" {
                        // Kiln acks once `accepted` is confirmed.
                        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    }
                }
            });
        }
    });

    let publisher = confirm_channel(&conn).await;
    let (_, bodies) = bodies("ceil", n);
    eprintln!("ceiling: {n} messages through a bare lapin loop ...");
    let probe = CpuProbe::start(None);
    let start = Instant::now();
    publish_all(&publisher, &names.requests(), BUILD_KEY, bodies, 1000).await;
    let start_wait = Instant::now();
    while seen.count("build.succeeded") < n as u64
        && start_wait.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = seen.last_event().unwrap_or_else(Instant::now);
    let secs = (end - start).as_secs_f64();
    let got = seen.count("build.succeeded");
    let r = got as f64 / secs;
    let _ = writeln!(
        report,
        "\n-- 5. ceiling: bare lapin loop, {n} x (consume, 5 confirmed persistent events, ack), prefetch {} --",
        opts.prefetch
    );
    let _ = writeln!(report, "    {got}/{n} in {secs:.2} s = {r:.0} builds/s");
    report.push_str(&probe.report());
    if let Some(k) = kiln_rate {
        let _ = writeln!(
            report,
            "    KILN vs CEILING: {k:.0} / {r:.0} builds/s = {:.0}% of the bare AMQP rate",
            k / r * 100.0
        );
    }
    worker.abort();
    let _ = sub.close(200, "done".into()).await;
    let _ = wconn.close(200, "done".into()).await;
    let _ = setup
        .queue_delete(names.builds().into(), QueueDeleteOptions::default())
        .await;
    for x in [names.requests(), names.events()] {
        let _ = setup
            .exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// How many of the lease keys under `redis_prefix` name `holder` (lease
/// values start with the worker id; a per-claim token may follow it).
async fn leases_held(redis_prefix: &str, holder: &str) -> (usize, usize) {
    let Ok(keys) = keys_with_prefix(&format!("{redis_prefix}lease:")).await else {
        return (0, 0);
    };
    let Ok(client) = redis::Client::open(redis_url()) else {
        return (0, keys.len());
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return (0, keys.len());
    };
    let mut held = 0;
    for chunk in keys.chunks(1000) {
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        held += values
            .iter()
            .filter(|v| {
                v.as_deref()
                    .is_some_and(|v| kiln_worker::store::holder_worker(v) == holder)
            })
            .count();
    }
    (held, keys.len())
}

/// Phase 6: worker A holds K running builds and is SIGKILLed; worker B
/// starts at once. How long until B holds every lease, and which API calls
/// it made to get there (A is dead, so every call after the kill is B's).
async fn run_takeover(opts: &Opts, report: &mut String) {
    let n = opts.takeover_builds;
    let ttl = opts.takeover_ttl;
    let timing = Timing {
        pending: Duration::ZERO,
        running: Duration::from_secs(3600),
        terminating: Duration::ZERO,
    };
    let env = [("KILN_LEASE_TTL", format!("{}ms", ttl.as_millis()))];
    let mut w = World::new_with(opts, "take-a", timing, &env).await;
    let exchange = w.names().requests();
    let (seen, sub) = w.subscribe(&["image.running"], None).await;
    let (_, bodies) = bodies("take", n);
    eprintln!("takeover: worker A takes {n} long-running builds ...");
    publish_all(&w.publisher, &exchange, BUILD_KEY, bodies, 1000).await;
    let all = wait_for(
        "takeover: image.running on A",
        Duration::from_secs(900),
        w.worker(),
        || (seen.count("image.running"), n as u64),
    )
    .await;
    let _ = sub.close(200, "done".into()).await;
    let (held_a, _) = leases_held(&w.redis_prefix, "bench-take-a").await;
    let _ = writeln!(
        report,
        "\n-- 6. takeover: worker A holds {n} running builds (lease TTL {ttl:?}), SIGKILL, worker B starts --"
    );
    let _ = writeln!(
        report,
        "    A: image.running {}/{n}{}, holding {held_a} leases",
        seen.count("image.running"),
        if all { "" } else { "  (INCOMPLETE)" }
    );
    // The kill, and B at once.
    let worker_a = w.worker.take().expect("worker A");
    let calls0 = w.api_calls();
    let killed = Instant::now();
    worker_a.kill();
    let worker_b = Worker::spawn(
        opts,
        &w.kubeconfig,
        &w.prefix,
        &w.redis_prefix,
        "take-b",
        &env,
    );
    w.worker = Some(worker_b);
    eprintln!("takeover: A killed, B started; waiting until B holds every lease ...");
    let mut first: Option<Duration> = None;
    let mut last_print = Instant::now();
    let (owned, took) = loop {
        w.worker().check_alive();
        let (held, total) = leases_held(&w.redis_prefix, "bench-take-b").await;
        if held > 0 && first.is_none() {
            first = Some(killed.elapsed());
        }
        if held >= n {
            break (held, Some(killed.elapsed()));
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  ... takeover: B holds {held}/{n} ({total} lease keys) after {:.0?}",
                killed.elapsed()
            );
            last_print = Instant::now();
        }
        if killed.elapsed() > ttl + Duration::from_secs(300) {
            break (held, None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let calls: Vec<_> = w.kube.calls().into_iter().skip(calls0).collect();
    let mut by_verb: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for c in &calls {
        *by_verb.entry(format!("{:?}", c.verb)).or_default() += 1;
    }
    let lists = by_verb
        .get(&format!("{:?}", Verb::List))
        .copied()
        .unwrap_or(0);
    let target = ttl + Duration::from_secs(5);
    match took {
        Some(elapsed) => {
            let _ = writeln!(
                report,
                "    TAKEOVER: B holds all {owned} leases {:.2} s after the kill (first one after {:.2} s)   (target <= TTL + 5 s = {:.0} s: {})",
                elapsed.as_secs_f64(),
                first.unwrap_or_default().as_secs_f64(),
                target.as_secs_f64(),
                verdict(elapsed <= target)
            );
        }
        None => {
            let _ = writeln!(
                report,
                "    TAKEOVER: B holds only {owned}/{n} leases {:.0} s after the kill   (target <= {:.0} s: {})",
                killed.elapsed().as_secs_f64(),
                target.as_secs_f64(),
                verdict(false)
            );
        }
    }
    let _ = writeln!(
        report,
        "    API calls by B until then: {} ({:.2} per build), by verb {by_verb:?}; LIST calls {lists}   (target: not growing with the builds, here fewer than one per 10 builds: {})",
        calls.len(),
        calls.len() as f64 / n.max(1) as f64,
        verdict(calls.len() < n / 10 + 100)
    );
    let notes = w.cleanup(Duration::from_secs(60)).await;
    report.push_str(&notes);
}

fn main() {
    let opts = parse_opts();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut report = String::new();
        let _ = writeln!(
            report,
            "kiln-bench: {} cores, worker binary {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            opts.kiln.display()
        );
        let rate = run_instant_phases(&opts, &mut report).await;
        if opts.phases.iter().any(|p| p == "memory") {
            run_memory_phase(&opts, &mut report).await;
        }
        if opts.phases.iter().any(|p| p == "ceiling") {
            run_ceiling(&opts, rate, &mut report).await;
        }
        if opts.phases.iter().any(|p| p == "takeover") {
            run_takeover(&opts, &mut report).await;
        }
        println!("{report}");
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}
