//! Clustered engines on one machine, for the tests: a three-node RabbitMQ
//! cluster and a Redis primary with one replica under three Sentinels, on
//! loopback with private ports and data directories under cargo's target
//! directory (`<target>/services/cluster-…`, beside the private servers of
//! `scripts/lib/services.sh`). `scripts/lib/cluster.sh` does the same for
//! the scripts; keep the two in step (settings, order of the steps).
//!
//! Start them once per test binary (a few seconds for Redis, about 20 s for
//! the RabbitMQ cluster on a busy two-core machine) and give every test its
//! own prefixes, as the single-node tests do.
//!
//! Every process started here is in one process group led by a watchdog
//! shell that kills the group when the test process is gone, so a test
//! killed by a timeout (no unwinding, no `Drop`) leaves no server behind;
//! dropping [`RabbitCluster`] or [`SentinelRedis`] kills their processes and
//! removes their files at once (`KILN_KEEP_SERVICES=1` keeps the files).
//!
//! # What the clients do on a failover (read from the locked sources)
//!
//! **lapin 4.12** (`io_loop.rs`, `channel.rs`, `consumer.rs`):
//! - Auto-recovery (`ConnectionProperties::enable_auto_recover`) reconnects
//!   to the *same* `AMQPUri` the connection was opened with: the IO loop
//!   keeps that one URI and retries it under the connection's backoff (16
//!   attempts by default once recovery is on), then gives up and poisons the
//!   connection. There is no list of hosts. `Connection::connector` takes a
//!   custom connect closure, which is called with that URI on every attempt
//!   and may dial another node instead, but the credentials, vhost and
//!   heartbeat stay those of the first URI.
//! - After reconnecting, lapin reopens each channel and replays, in order:
//!   `confirm.select`, `basic.qos`, the exchanges, queues and bindings the
//!   channel declared, then its consumers (same tags). A consumer's stream
//!   yields one `Err` (the cause) when the connection drops, and deliveries
//!   received before are dead: their `Acker`s are poisoned or invalidated
//!   (prefetched, unread deliveries are dropped), so acking them does
//!   nothing and the broker redelivers them. Publisher confirms pending at
//!   the loss are failed with the cause: the publisher must publish again.
//! - A channel closed by the server (for example the `PRECONDITION_FAILED`
//!   of `consumer_timeout`) is a recoverable protocol error: lapin recovers
//!   the whole connection, not just the channel.
//! - A `basic.cancel` from the server (the queue was deleted, or a quorum
//!   queue's consumer lost its member) deregisters the consumer and answers
//!   `cancel-ok`; the consumer's stream then ends (`None`), exactly as after
//!   a cancel by the client, and the consumer is not part of any later
//!   recovery. Whoever reads the stream must consume again.
//!
//! **redis-rs 1.8** (`sentinel.rs`, feature `sentinel`):
//! - `sentinel::SentinelClient` (or `SentinelClientBuilder`, which takes the
//!   Sentinels' and the data nodes' passwords separately) asks the Sentinels
//!   (`SENTINEL MASTERS`) for the named master, connects to it and checks
//!   `ROLE` says master before handing out a `Client`
//!   (`async_get_client`) or a multiplexed connection
//!   (`get_async_connection`). It resolves once per call: nothing follows a
//!   failover afterwards.
//! - `aio::ConnectionManager` reconnects to the address it was built with,
//!   so after a failover it either fails to connect (primary dead) or
//!   reaches the demoted primary, where every write fails with `READONLY`:
//!   `ErrorKind::Server(ServerErrorKind::ReadOnly)` (redis-rs classifies it
//!   as a failover error). The caller must re-resolve through Sentinel on a
//!   connection error and on `READONLY`, and check `ROLE` of what it reaches.
//! - Nothing in redis-rs listens to the Sentinels' `+switch-master` (issue
//!   redis-rs/redis-rs#1438): subscribe to that channel on a Sentinel
//!   yourself (`async_get_sentinel_client`, then a pub/sub connection); the
//!   message is `<master> <old-ip> <old-port> <new-ip> <new-port>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

/// Where Debian's RabbitMQ keeps its scripts (the /usr/sbin wrappers switch
/// to the rabbitmq user, who could not write our directories).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// The Sentinels' name of the primary.
pub const MASTER_NAME: &str = "kiln";

/// How long a server may take to start listening or to settle.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the Sentinels may take to fail over.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(200);

// --- the process group ---------------------------------------------------------

/// The watchdog that leads the process group of every server started here:
/// it kills the whole group (itself included) once the test process is gone.
pub(crate) struct Group {
    watchdog: Child,
}

impl Group {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -KILL 0",
            std::process::id()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the watchdog shell")?;
        Ok(Self { watchdog })
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.watchdog.id()).unwrap_or(i32::MAX)
    }

    /// Spawns `cmd` into the group, its output appended to `log`.
    pub(crate) fn spawn(&self, cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .process_group(self.pgid())
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.get_program().display()))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The whole group: servers, their helpers (epmd, erl_child_setup) and
        // the watchdog.
        let _ = signal(-self.pgid(), Signal::SIGKILL);
        let _ = self.watchdog.wait();
    }
}

/// Sends `signal` to `pid` (a negative pid: the process group) with
/// kill(2).
fn signal(pid: i32, signal: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("cannot send {signal} to {pid}"))
}

// --- files and ports -----------------------------------------------------------

/// A fresh directory under `<target>/services/`, removed on drop unless
/// `KILN_KEEP_SERVICES=1`.
pub(crate) struct RunDir {
    pub(crate) path: PathBuf,
}

impl RunDir {
    pub(crate) fn new(kind: &str) -> anyhow::Result<Self> {
        // The test executable is <target>/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().context("the test executable has no path")?;
        let target = exe
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "deps"))
            .and_then(|deps| deps.parent()?.parent())
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = target.join("services").join(format!(
            "{kind}-{}-{}",
            std::process::id(),
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var("KILN_KEEP_SERVICES").as_deref() == Ok("1") {
            eprintln!("kept {} (KILN_KEEP_SERVICES=1)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback port nothing listens on, in 20000-44999 (the RabbitMQ CLI
/// takes ports at a node's distribution port + 10000), not among `taken`.
pub(crate) fn free_port(taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    use rand::Rng as _;
    let mut rng = rand::rng();
    for _ in 0..500 {
        let port = rng.random_range(20000..45000);
        if taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return Ok(port);
        }
    }
    bail!("no free port found on 127.0.0.1")
}

async fn port_open(port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Waits until something listens on `port`, failing early when `child`
/// ends; the error quotes the end of `log`.
pub(crate) async fn wait_port(
    port: u16,
    what: &str,
    child: &mut Child,
    log: &Path,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < START_TIMEOUT {
        if port_open(port).await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} ended ({status}) before listening on {port}: {}",
                tail(log)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    bail!(
        "{what} did not listen on {port} within {START_TIMEOUT:?}: {}",
        tail(log)
    )
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{} says:\n{}",
        log.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

// --- RabbitMQ ------------------------------------------------------------------

/// Settings of the RabbitMQ cluster.
#[derive(Debug, Clone, Default)]
pub struct RabbitOptions {
    /// The nodes' `consumer_timeout`; when set, channels also check it every
    /// second instead of every minute (`channel_tick_interval`), so that a
    /// lowered timeout is enforced within a second of passing.
    pub consumer_timeout: Option<Duration>,
    /// One node alone instead of three (a lone broker, as a small
    /// installation runs it): node 1, no `join_cluster`.
    pub single: bool,
}

struct RabbitNode {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script; the Erlang VM is its child.
    child: Option<Child>,
}

/// A three-node RabbitMQ cluster: the same Erlang cookie (the user's
/// `~/.erlang.cookie`), distinct node names, one private epmd; nodes 2 and
/// 3 `join_cluster` node 1. Quorum queues declared once it is formed have a
/// member on each node. Nodes are numbered 1 to 3 (just 1 with
/// [`RabbitOptions::single`]).
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
    epmd_port: u16,
    dir: RunDir,
    group: Group,
}

impl std::fmt::Debug for RabbitCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitCluster")
            .field("urls", &self.urls())
            .field("dir", &self.dir.path)
            .finish_non_exhaustive()
    }
}

impl RabbitCluster {
    /// Starts the three nodes and forms the cluster.
    pub async fn start(options: RabbitOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let dir = RunDir::new("rabbitmq-cluster")?;
        let group = Group::start()?;
        let mut taken = Vec::new();
        let epmd_port = free_port(&mut taken)?;
        std::fs::write(dir.path.join("enabled_plugins"), "[].\n")?;
        // An env file of our own, so that /etc/rabbitmq/rabbitmq-env.conf
        // (a node name, an epmd address) does not apply.
        std::fs::write(dir.path.join("rabbitmq-env.conf"), "")?;
        // One epmd of ours, in the foreground and in the group: a node would
        // otherwise start a daemonised one that outlives the test.
        let epmd_log = dir.path.join("epmd.log");
        let mut epmd = group.spawn(
            Command::new("epmd").args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"]),
            &epmd_log,
        )?;
        wait_port(epmd_port, "epmd", &mut epmd, &epmd_log).await?;
        let suffix = ulid::Ulid::new().to_string().to_lowercase();
        let mut nodes = Vec::new();
        let size = if options.single { 1 } else { 3 };
        for i in 1..=size {
            let node_dir = dir.path.join(format!("node{i}"));
            std::fs::create_dir_all(node_dir.join("mnesia"))?;
            std::fs::create_dir_all(node_dir.join("log"))?;
            let amqp_port = free_port(&mut taken)?;
            let dist_port = free_port(&mut taken)?;
            let mut conf = format!(
                "listeners.tcp.1 = 127.0.0.1:{amqp_port}\nloopback_users.guest = true\n\
                 log.file.level = info\n"
            );
            let mut advanced = "[].\n";
            if let Some(timeout) = options.consumer_timeout {
                writeln!(conf, "consumer_timeout = {}", timeout.as_millis())?;
                advanced = "[{rabbit, [{channel_tick_interval, 1000}]}].\n";
            }
            std::fs::write(node_dir.join("rabbitmq.conf"), conf)?;
            std::fs::write(node_dir.join("advanced.config"), advanced)?;
            nodes.push(RabbitNode {
                name: format!("kiln-{}-{i}@localhost", &suffix[suffix.len() - 8..]),
                amqp_port,
                dist_port,
                dir: node_dir,
                child: None,
            });
        }
        let mut cluster = Self {
            nodes,
            epmd_port,
            dir,
            group,
        };
        // The three boot at once; nodes 2 and 3 then join node 1
        // (join_cluster resets a node, so it needs nothing done first).
        for i in 1..=size {
            cluster.spawn_node(i)?;
        }
        for i in 1..=size {
            cluster.await_node(i).await?;
        }
        let booted = t0.elapsed();
        let first = cluster.nodes[0].name.clone();
        for i in 2..=size {
            cluster.ctl(i, &["stop_app"]).await?;
            cluster
                .ctl(i, &["join_cluster", &first])
                .await
                .with_context(|| format!("rabbitmq node {i} could not join node 1"))?;
            cluster.ctl(i, &["start_app"]).await?;
        }
        tracing::info!(
            urls = %cluster.url_list(),
            boot = ?booted,
            total = ?t0.elapsed(),
            "rabbitmq cluster started"
        );
        Ok(cluster)
    }

    fn node(&self, i: usize) -> &RabbitNode {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "rabbitmq nodes are numbered 1 to {}, not {i}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    /// The AMQP URL of node `i` (guest, vhost `/`).
    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.node(i).amqp_port
        )
    }

    /// The node URLs.
    pub fn urls(&self) -> Vec<String> {
        (1..=self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The node URLs, comma-separated: what `KILN_AMQP_URL` takes.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The Erlang node name of node `i`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.node(i);
        let dir = &node.dir;
        let mut cmd = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"));
        cmd.env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.path.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.dir.path.join("rabbitmq-env.conf"),
            )
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // One scheduler per node: three nodes share a small machine
            // with the tests, whose load needs no more.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1} +S 1:1",
            );
        let child = self.group.spawn(&mut cmd, &dir.join("log/startup.log"))?;
        self.nodes[i - 1].child = Some(child);
        Ok(())
    }

    async fn await_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i - 1];
        let log = node.dir.join("log/startup.log");
        let child = node
            .child
            .as_mut()
            .with_context(|| format!("rabbitmq node {i} is not running"))?;
        wait_port(node.amqp_port, &format!("rabbitmq node {i}"), child, &log).await?;
        // The port opens before the broker accepts AMQP sessions.
        self.ctl(i, &["await_startup", "--timeout", "120"]).await?;
        Ok(())
    }

    /// Runs `rabbitmqctl` against node `i`; its standard output.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        self.cli("rabbitmqctl", i, args).await
    }

    /// Runs a RabbitMQ CLI tool (`rabbitmqctl`, `rabbitmq-queues`, …)
    /// against node `i`; its standard output.
    pub async fn cli(&self, tool: &str, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(format!("{RABBITMQ_BIN}/{tool}"))
            .arg("-n")
            .arg(&self.node(i).name)
            .arg("-q")
            .args(args)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.dir.path.join("rabbitmq-env.conf"),
            )
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} on node {i} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether node `i` runs (it may not be the case after [`Self::kill`]).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes
            .get_mut(i - 1)
            .and_then(|n| n.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Node (1-3) leading the quorum queue `queue` (vhost `/`), asked of the
    /// first running node that answers.
    pub async fn leader_of(&mut self, queue: &str) -> anyhow::Result<usize> {
        let mut last = None;
        for i in 1..=self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            match self
                .ctl(i, &["list_queues", "--no-table-headers", "name", "leader"])
                .await
            {
                Ok(out) => {
                    let leader = out.lines().find_map(|l| {
                        let mut words = l.split_whitespace();
                        (words.next() == Some(queue)).then(|| words.next().map(str::to_owned))?
                    });
                    let nodes = 1..=self.nodes.len();
                    match leader.and_then(|l| nodes.clone().find(|&n| self.node_name(n) == l)) {
                        Some(n) => return Ok(n),
                        None => last = Some(anyhow::anyhow!("node {i} names no leader of {queue}")),
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no rabbitmq node runs")))
    }

    /// The node (1-3) holding the AMQP connection whose client-provided
    /// name is `name`, asked of the first running node that answers.
    pub async fn node_of_connection(&mut self, name: &str) -> anyhow::Result<Option<usize>> {
        for i in 1..=self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            // `port`: the server port the connection came in on, which
            // names its node (each node listens on its own).
            let out = self
                .ctl(
                    i,
                    &[
                        "list_connections",
                        "--no-table-headers",
                        "port",
                        "client_properties",
                    ],
                )
                .await?;
            let Some(line) = out.lines().find(|l| l.contains(name)) else {
                return Ok(None);
            };
            let node = line
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .and_then(|port| (1..=self.nodes.len()).find(|&k| self.node(k).amqp_port == port));
            anyhow::ensure!(node.is_some(), "no node's port in {line:?}");
            return Ok(node);
        }
        anyhow::bail!("no rabbitmq node runs")
    }

    /// What the running nodes say of quorum queue `queue` (its leader,
    /// members and online members) and the last lines of each node's log
    /// that name it: for a test's failure message.
    pub async fn diagnose(&mut self, queue: &str) -> String {
        let mut out: Vec<String> = Vec::new();
        for i in 1..=self.nodes.len() {
            if !self.is_running(i) {
                out.push(format!("node {i}: not running"));
                continue;
            }
            let listed = match self
                .ctl(
                    i,
                    &[
                        "list_queues",
                        "--no-table-headers",
                        "name",
                        "leader",
                        "members",
                        "online",
                    ],
                )
                .await
            {
                Ok(o) => o
                    .lines()
                    .filter(|l| l.starts_with(queue))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(e) => format!("list_queues failed: {e:#}"),
            };
            out.push(format!("node {i} ({}): {listed}", self.node_name(i)));
            let log = self
                .node(i)
                .dir
                .join("log")
                .join(format!("{}.log", self.node_name(i)));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(queue)).collect();
            out.extend(
                lines[lines.len().saturating_sub(15)..]
                    .iter()
                    .map(|l| (*l).to_owned()),
            );
        }
        out.join("\n")
    }

    /// kill -9 node `i` (the Erlang VM and its start script).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i - 1];
        let pid_file = node.dir.join("pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let pid: i32 = pid
                .trim()
                .parse()
                .with_context(|| format!("bad pid file {}", pid_file.display()))?;
            // It may be gone already; the script below is what we wait for.
            let _ = signal(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&pid_file);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Dead means its AMQP port refuses connections: a test that acts
        // right after the kill (publishes, expects a lost consumer) must
        // not race a VM still tearing down (seen once: a subscription on
        // the killed node received an event 5 ms after the kill).
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.amqp_port));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "rabbitmq node {i} still accepts connections 10 s after kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(node = i, "rabbitmq node killed");
        Ok(())
    }

    /// Throws away the data of node `i`, which must be down (killed): it
    /// starts again empty, as a broker that kept nothing (no persistent
    /// volume) does — no users but guest, no exchanges, no queues.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_running(i) {
            bail!("rabbitmq node {i} is running");
        }
        let mnesia = self.node(i).dir.join("mnesia");
        std::fs::remove_dir_all(&mnesia)?;
        std::fs::create_dir_all(&mnesia)?;
        Ok(())
    }

    /// Starts node `i` again with its data; it rejoins the cluster by itself.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let t0 = Instant::now();
        if self.is_running(i) {
            bail!("rabbitmq node {i} is running");
        }
        // A killed VM may still hold its port for a moment: a new node
        // started then would find it taken and stop.
        let port = self.node(i).amqp_port;
        while port_open(port).await {
            if t0.elapsed() > START_TIMEOUT {
                bail!("port {port} of killed rabbitmq node {i} stays open");
            }
            tokio::time::sleep(POLL).await;
        }
        self.spawn_node(i)?;
        self.await_node(i).await?;
        tracing::info!(node = i, took = ?t0.elapsed(), "rabbitmq node restarted");
        Ok(())
    }

    /// Sets `consumer_timeout` (ms) on every running node, for channels
    /// opened from now on (3.10 reads it when a channel starts).
    pub async fn set_consumer_timeout(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let expr = format!(
            "application:set_env(rabbit, consumer_timeout, {}).",
            timeout.as_millis()
        );
        for i in 1..=self.nodes.len() {
            if self.is_running(i) {
                self.ctl(i, &["eval", &expr]).await?;
            }
        }
        Ok(())
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        // The data is thrown away: kill rather than stop (a graceful stop of
        // a member waits for the others). The group's drop kills the rest.
        for i in 1..=self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}

// --- Redis under Sentinel --------------------------------------------------------

/// Settings of the Redis set-up.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass` (and `masterauth`) of the data servers.
    pub password: Option<String>,
    /// `requirepass` of the Sentinels.
    pub sentinel_password: Option<String>,
}

/// A Redis primary with one replica under three Sentinels (master name
/// [`MASTER_NAME`], quorum 2, down after 1 s, failover timeout 3 s).
pub struct SentinelRedis {
    options: RedisOptions,
    /// The data servers by port.
    servers: BTreeMap<u16, Child>,
    sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    dir: RunDir,
    group: Group,
}

impl std::fmt::Debug for SentinelRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelRedis")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .field("sentinels", &self.sentinel_ports)
            .field("dir", &self.dir.path)
            .finish_non_exhaustive()
    }
}

impl SentinelRedis {
    /// Starts the primary, the replica and the Sentinels, and waits until
    /// the replica is in sync and every Sentinel knows the replica and the
    /// two other Sentinels (a failover needs a majority of them).
    pub async fn start(options: RedisOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let dir = RunDir::new("redis-sentinel")?;
        let group = Group::start()?;
        let mut taken = Vec::new();
        let primary = free_port(&mut taken)?;
        let replica = free_port(&mut taken)?;
        let mut redis = Self {
            options,
            servers: BTreeMap::new(),
            sentinel_ports: Vec::new(),
            sentinels: Vec::new(),
            dir,
            group,
        };
        redis.spawn_server(primary, None).await?;
        redis.spawn_server(replica, Some(primary)).await?;
        for i in 1..=3 {
            let port = free_port(&mut taken)?;
            let sdir = redis.dir.path.join(format!("sentinel{i}"));
            std::fs::create_dir_all(&sdir)?;
            let mut conf = format!(
                "bind 127.0.0.1\nport {port}\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = sdir.display()
            );
            if let Some(pw) = &redis.options.password {
                writeln!(conf, "sentinel auth-pass {MASTER_NAME} {pw}")?;
            }
            if let Some(pw) = &redis.options.sentinel_password {
                writeln!(conf, "requirepass {pw}\nsentinel sentinel-pass {pw}")?;
            }
            // Sentinel rewrites its file: each has its own, writable.
            let conf_path = sdir.join("sentinel.conf");
            std::fs::write(&conf_path, conf)?;
            let log = sdir.join("sentinel.log");
            let mut child = redis.group.spawn(
                Command::new("redis-server")
                    .arg(&conf_path)
                    .arg("--sentinel"),
                &log,
            )?;
            wait_port(port, &format!("sentinel {i}"), &mut child, &log).await?;
            redis.sentinel_ports.push(port);
            redis.sentinels.push(child);
        }
        redis.wait_settled().await?;
        tracing::info!(
            primary,
            replica,
            sentinels = %redis.sentinel_list(),
            took = ?t0.elapsed(),
            "redis under sentinel started"
        );
        Ok(redis)
    }

    /// The Sentinels, `127.0.0.1:port` comma-separated: what
    /// `KILN_REDIS_SENTINELS` takes.
    pub fn sentinel_list(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> &[u16] {
        &self.sentinel_ports
    }

    /// A URL of the data server on `port` (with the password, if any).
    pub fn server_url(&self, port: u16) -> String {
        url(port, self.options.password.as_deref())
    }

    fn sentinel_url(&self, port: u16) -> String {
        url(port, self.options.sentinel_password.as_deref())
    }

    async fn spawn_server(&mut self, port: u16, primary: Option<u16>) -> anyhow::Result<()> {
        let sdir = self.dir.path.join(format!("redis-{port}"));
        std::fs::create_dir_all(&sdir)?;
        let log = sdir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&sdir)
            // A replica syncs at once, not after the default 5 s wait.
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]);
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw, "--masterauth", pw]);
        }
        if let Some(primary) = primary {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let mut child = self.group.spawn(&mut cmd, &log)?;
        wait_port(port, &format!("redis-server on {port}"), &mut child, &log).await?;
        self.servers.insert(port, child);
        Ok(())
    }

    async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let client = redis::Client::open(url)?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connect timed out")??;
        let value = tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
            .await
            .context("command timed out")??;
        Ok(value)
    }

    /// Runs `cmd` on the data server on `port`.
    pub async fn server_query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> anyhow::Result<T> {
        Self::query(&self.server_url(port), cmd).await
    }

    /// The role (`master`, `slave`) the server on `port` reports.
    pub async fn role(&self, port: u16) -> anyhow::Result<String> {
        let role: Vec<redis::Value> = self.server_query(port, &redis::cmd("ROLE")).await?;
        match role.first() {
            Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(redis::Value::SimpleString(s)) => Ok(s.clone()),
            other => bail!("unexpected ROLE answer {other:?}"),
        }
    }

    async fn replica_in_sync(&self, port: u16) -> bool {
        self.server_query::<String>(port, redis::cmd("INFO").arg("replication"))
            .await
            .is_ok_and(|info| info.contains("master_link_status:up"))
    }

    async fn wait_settled(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            let mut ready = true;
            let primary = self.primary_port().await.ok();
            for &port in self.servers.keys() {
                if Some(port) != primary && !self.replica_in_sync(port).await {
                    ready = false;
                }
            }
            for &port in &self.sentinel_ports {
                let master: BTreeMap<String, String> = Self::query(
                    &self.sentinel_url(port),
                    redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME),
                )
                .await
                .unwrap_or_default();
                let wanted_replicas = (self.servers.len() - 1).to_string();
                if master.get("num-slaves") != Some(&wanted_replicas)
                    || master.get("num-other-sentinels").map(String::as_str) != Some("2")
                {
                    ready = false;
                }
            }
            if ready {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "the sentinels did not settle within {START_TIMEOUT:?} (logs: {})",
            self.dir.path.display()
        )
    }

    /// The primary's port, as the first Sentinel that answers names it.
    pub async fn primary_port(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for &port in &self.sentinel_ports {
            let addr: anyhow::Result<Option<(String, String)>> = Self::query(
                &self.sentinel_url(port),
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .await;
            match addr {
                Ok(Some((_, p))) => return Ok(p.parse()?),
                Ok(None) => last = Some(anyhow::anyhow!("sentinel {port} knows no {MASTER_NAME}")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    fn kill_server(&mut self, port: u16) {
        if let Some(mut child) = self.servers.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9 the primary; its port. The Sentinels fail over to the
    /// replica (see [`Self::wait_failover`]).
    pub async fn kill_primary(&mut self) -> anyhow::Result<u16> {
        let primary = self.primary_port().await?;
        self.kill_server(primary);
        tracing::info!(port = primary, "redis primary killed");
        Ok(primary)
    }

    /// Waits until the Sentinels name a primary other than `old` and it
    /// answers `ROLE` as master; its port.
    pub async fn wait_failover(&self, old: u16) -> anyhow::Result<u16> {
        let start = Instant::now();
        while start.elapsed() < FAILOVER_TIMEOUT {
            if let Ok(now) = self.primary_port().await
                && now != old
                && self.role(now).await.is_ok_and(|r| r == "master")
            {
                tracing::info!(from = old, to = now, took = ?start.elapsed(), "redis failed over");
                return Ok(now);
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "no failover from {old} within {FAILOVER_TIMEOUT:?} (logs: {})",
            self.dir.path.display()
        )
    }

    /// Starts the killed server on `port` again, as a primary of nothing
    /// (as a restarted old primary comes back); the Sentinels make it a
    /// replica of the current primary, which this waits for, so that the
    /// next fault finds the set-up whole.
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let start = Instant::now();
        self.spawn_server(port, None).await?;
        while start.elapsed() < FAILOVER_TIMEOUT {
            if self.replica_in_sync(port).await {
                tracing::info!(port, took = ?start.elapsed(), "redis server back as a replica");
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("the server on {port} did not become a replica in sync within {FAILOVER_TIMEOUT:?}")
    }

    /// The first half of a failover that loses writes: stop the replica
    /// (SIGSTOP) and cut it off from the primary, so that what is written
    /// from now on reaches the primary alone (acknowledged all the same).
    /// [`Self::fail_over_isolated`] is the second half.
    pub async fn isolate_primary(&mut self) -> anyhow::Result<Isolated> {
        let primary = self.primary_port().await?;
        let replica = *self
            .servers
            .keys()
            .find(|&&p| p != primary)
            .context("no replica runs")?;
        let start = Instant::now();
        while !self.replica_in_sync(replica).await {
            if start.elapsed() > FAILOVER_TIMEOUT {
                bail!("the replica on {replica} is not in sync");
            }
            tokio::time::sleep(POLL).await;
        }
        let pid = i32::try_from(self.servers[&replica].id())?;
        signal(pid, Signal::SIGSTOP)?;
        // A stopped process still receives into its socket buffer: cut the
        // link, so that later writes reach the primary alone.
        let cut = self
            .server_query::<redis::Value>(
                primary,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"),
            )
            .await;
        if let Err(e) = cut {
            signal(pid, Signal::SIGCONT)?;
            return Err(e.context("cannot cut the replica off"));
        }
        tracing::info!(
            primary,
            replica,
            "redis: the replica is stopped and cut off"
        );
        Ok(Isolated {
            primary,
            replica,
            pid,
        })
    }

    /// The second half: kill -9 the primary, resume the replica (SIGCONT)
    /// and wait for the Sentinels to promote it. Everything written since
    /// [`Self::isolate_primary`] is lost. Returns the new primary's port.
    pub async fn fail_over_isolated(&mut self, isolated: Isolated) -> anyhow::Result<u16> {
        self.kill_server(isolated.primary);
        signal(isolated.pid, Signal::SIGCONT)?;
        tracing::info!(
            primary = isolated.primary,
            replica = isolated.replica,
            "redis: primary killed, replica resumed"
        );
        self.wait_failover(isolated.primary).await
    }

    /// The write a failover loses: [`Self::isolate_primary`], SET `key`
    /// `value` on the primary (acknowledged), [`Self::fail_over_isolated`].
    /// `key` is then missing. Returns the killed port and the new primary's.
    pub async fn lost_write(&mut self, key: &str, value: &str) -> anyhow::Result<(u16, u16)> {
        let isolated = self.isolate_primary().await?;
        let primary = isolated.primary;
        let written = self
            .server_query::<()>(primary, redis::cmd("SET").arg(key).arg(value))
            .await;
        let now = self.fail_over_isolated(isolated).await?;
        written?;
        Ok((primary, now))
    }
}

/// A primary whose replica is stopped and cut off (see
/// [`SentinelRedis::isolate_primary`]).
#[derive(Debug)]
#[must_use = "fail over (SentinelRedis::fail_over_isolated), or the replica stays stopped"]
pub struct Isolated {
    /// The primary's port: writes there now are lost by the failover.
    pub primary: u16,
    replica: u16,
    pid: i32,
}

fn url(port: u16, password: Option<&str>) -> String {
    match password {
        Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        for child in self.servers.values_mut().chain(self.sentinels.iter_mut()) {
            let _ = signal(
                i32::try_from(child.id()).unwrap_or(i32::MAX),
                Signal::SIGCONT,
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// --- both ------------------------------------------------------------------------

/// Both clustered engines.
#[derive(Debug)]
pub struct Clustered {
    pub rabbit: RabbitCluster,
    pub redis: SentinelRedis,
}

impl Clustered {
    /// Starts both, at the same time. A start that fails (a port taken
    /// between its choice and its use, Sentinels that do not settle on a
    /// loaded machine: seen once in about ten runs) is tried once more
    /// from scratch, on fresh ports; what the first try started is stopped
    /// when it is dropped.
    pub async fn start(rabbit: RabbitOptions, redis: RedisOptions) -> anyhow::Result<Self> {
        let mut tries = 0;
        loop {
            tries += 1;
            match tokio::try_join!(
                RabbitCluster::start(rabbit.clone()),
                SentinelRedis::start(redis.clone())
            ) {
                Ok((rabbit, redis)) => return Ok(Self { rabbit, redis }),
                Err(e) if tries < 2 => {
                    eprintln!("the clustered engines did not start ({e:#}); once more");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The worker settings that point at both: `KILN_AMQP_URL` (the three
    /// node URLs), `KILN_REDIS_SENTINELS`, `KILN_REDIS_MASTER` and the
    /// passwords, if any.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("KILN_AMQP_URL".to_owned(), self.rabbit.url_list()),
            (
                "KILN_REDIS_SENTINELS".to_owned(),
                self.redis.sentinel_list(),
            ),
            ("KILN_REDIS_MASTER".to_owned(), MASTER_NAME.to_owned()),
        ];
        if let Some(pw) = &self.redis.options.password {
            env.push(("KILN_REDIS_PASSWORD".to_owned(), pw.clone()));
        }
        if let Some(pw) = &self.redis.options.sentinel_password {
            env.push(("KILN_REDIS_SENTINEL_PASSWORD".to_owned(), pw.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set-up itself: the cluster forms with quorum queues on all three
    /// nodes, a killed leader hands over, a killed primary fails over and
    /// the lost-write variant loses its write. Slow (a RabbitMQ cluster):
    /// run with `--ignored`, or through the cluster tests that use it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "starts a RabbitMQ cluster (about 20 s); the cluster tests exercise it"]
    async fn the_clustered_engines_fail_over() {
        let mut c = Clustered::start(RabbitOptions::default(), RedisOptions::default())
            .await
            .expect("start");
        let expr = "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"q\">>), true, \
                    false, [{<<\"x-queue-type\">>, longstr, <<\"quorum\">>}], none, <<\"guest\">>).";
        c.rabbit.ctl(1, &["eval", expr]).await.expect("declare");
        let members = c
            .rabbit
            .ctl(1, &["list_queues", "--no-table-headers", "name", "members"])
            .await
            .expect("members");
        for i in 1..=3 {
            assert!(members.contains(c.rabbit.node_name(i)), "{members}");
        }
        let leader = c.rabbit.leader_of("q").await.expect("leader");
        c.rabbit.kill(leader).expect("kill");
        let start = Instant::now();
        let next = loop {
            if let Ok(n) = c.rabbit.leader_of("q").await
                && n != leader
            {
                break n;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no new leader");
            tokio::time::sleep(POLL).await;
        };
        assert_ne!(next, leader);
        c.rabbit.restart(leader).await.expect("restart");

        let old = c.redis.kill_primary().await.expect("kill primary");
        let now = c.redis.wait_failover(old).await.expect("failover");
        assert_ne!(old, now);
        c.redis.restart(old).await.expect("restart");
        let (killed, promoted) = c.redis.lost_write("lost", "1").await.expect("lost write");
        assert_eq!((killed, promoted), (now, old));
        let value: Option<String> = c
            .redis
            .server_query(promoted, redis::cmd("GET").arg("lost"))
            .await
            .expect("get");
        assert_eq!(value, None, "the write must be lost");
    }
}
