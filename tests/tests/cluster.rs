//! Kiln on the clustered engines production runs (issue 19): a three-node
//! RabbitMQ cluster with quorum queues and Redis with a replica under three
//! Sentinels, started once for this test binary (`kiln_tests::cluster`),
//! with node kills and failovers while workers build.
//!
//! One test function runs the scenarios one after the other on the same
//! engines: starting them costs about 20 s, a scenario a few seconds more.
//! Each scenario has prefixes of its own, like every other test.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kiln_protocol::{BuildEvent, Phase};
use kiln_tests::cluster::{Clustered, MASTER_NAME, RabbitOptions, RedisOptions};
use kiln_tests::harness::{Engines, Env, NAMESPACE, one_image, unique};
use kiln_worker::amqp::Broker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

/// Builds of the first scenario.
const BUILDS: usize = 80;

/// How long a scenario may wait for its builds to end.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// What the figures of docs/benchmarks.md are measured with.
#[derive(Debug, Default)]
struct Figures {
    node_kill_to_accepted: Option<Duration>,
    primary_kill_to_lease_write: Option<Duration>,
    lost: usize,
}

/// An observer of every event of a prefix through a quorum queue of its
/// own on the node `url` (a node the test does not kill), so that it misses
/// nothing while a node is down; events are told apart by id (a republished
/// event whose confirm was lost is the same event).
struct Observer {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
    seen: BTreeSet<String>,
    events: Vec<BuildEvent>,
}

impl Observer {
    async fn start(url: &str, prefix: &str) -> Self {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let queue = format!("{prefix}.observer");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.clone().into(),
            format!("{prefix}.events").into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.basic_qos(1000, BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = ch
            .basic_consume(
                queue.into(),
                "observer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            consumer,
            seen: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    /// The next event not seen before, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<BuildEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .ok()??
                .unwrap();
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            let ev: BuildEvent = serde_json::from_slice(&d.data).unwrap();
            if self.seen.insert(ev.id.clone()) {
                self.events.push(ev.clone());
                return Some(ev);
            }
        }
    }

    /// Terminal build events by build id.
    fn terminals(&self) -> BTreeMap<String, Vec<Phase>> {
        let mut out: BTreeMap<String, Vec<Phase>> = BTreeMap::new();
        for ev in &self.events {
            if ev.data.image.is_none()
                && matches!(
                    ev.data.phase,
                    Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::Rejected
                )
            {
                out.entry(ev.data.build_id.clone())
                    .or_default()
                    .push(ev.data.phase);
            }
        }
        out
    }
}

/// The engines for [`Env::on`], and the worker settings that point at them.
fn engines(c: &Clustered, redis_url: String) -> Engines {
    Engines {
        amqp_url: c.rabbit.url_list(),
        redis_url,
        sentinels: Some((c.redis.sentinel_list(), MASTER_NAME.to_owned())),
        private: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiln_on_clustered_engines() {
    let t0 = Instant::now();
    let mut c = Clustered::start(RabbitOptions::default(), RedisOptions::default())
        .await
        .expect("start the clustered engines");
    eprintln!("clustered engines up in {:.1?}", t0.elapsed());
    let mut figures = Figures::default();
    // First, on a cluster that has never lost a node: a quorum queue
    // declared just after a node came back can stay without a leader for
    // minutes on a loaded two-core machine when its leader is killed.
    node_and_primary_kills(&mut c, &mut figures).await;
    a_cancel_whose_flag_redis_lost_still_cancels(&mut c).await;
    a_subscription_survives_the_kill_of_its_node(&mut c).await;
    // Last: it lowers the broker's consumer_timeout for good.
    a_quota_wait_longer_than_consumer_timeout_loses_nothing(&mut c).await;
    eprintln!(
        "figures: {figures:?} (all scenarios in {:.1?})",
        t0.elapsed()
    );
}

/// Two workers configured with the three node URLs and the Sentinels build
/// 80 one-image builds while the builds queue's leader node is killed and
/// then the Redis primary is killed: every build ends exactly once, in
/// `build.succeeded`.
async fn node_and_primary_kills(c: &mut Clustered, figures: &mut Figures) {
    let primary = c.redis.primary_port().await.unwrap();
    let mut env = Env::on(engines(c, c.redis.server_url(primary))).await;
    env.slow_pods(Duration::from_secs(3));
    let builds = format!("{}.builds", env.prefix);
    let leader = c.rabbit.leader_of(&builds).await.unwrap();
    let watch_from = if leader == 1 { 2 } else { 1 };
    let mut observer = Observer::start(&c.rabbit.url(watch_from), &env.prefix).await;
    for _ in 0..2 {
        env.start_worker();
    }
    let ids: Vec<String> = (0..BUILDS).map(|i| unique(&format!("c{i}"))).collect();
    let (first, second) = ids.split_at(BUILDS / 2);
    for id in first {
        env.publish(&one_image(id)).await;
    }
    // The first half accepted, then the leader of the builds queue dies.
    let mut accepted = BTreeSet::new();
    while accepted.len() < first.len() {
        let ev = observer
            .next(SCENARIO_TIMEOUT)
            .await
            .expect("first half accepted");
        if ev.data.phase == Phase::Accepted {
            accepted.insert(ev.data.build_id.clone());
        }
    }
    // The second half goes through a client connected to the node about
    // to die (the leader's): its connection moves to another node while
    // the queue elects a new leader, and its publishes must get through.
    let publisher = publisher_on(c, &env.prefix, leader).await;
    c.rabbit.kill(leader).unwrap();
    let killed = Instant::now();
    for id in second {
        // The test's own connection may have been on the dead node: it
        // moves like the workers' do; a publish lost with it is retried.
        let body = serde_json::to_vec(&one_image(id)).unwrap();
        // Nacked until the queue has a leader again (a Raft election
        // among the two nodes left).
        // Each try bounded: a publish waiting on a connection that never
        // recovers must fail the test, not hang it.
        while let Err(e) = tokio::time::timeout(
            Duration::from_secs(10),
            publisher.publish_request(kiln_worker::amqp::BUILD_KEY, &body, None, None),
        )
        .await
        .map_err(|_| "no answer within 10 s".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        {
            if killed.elapsed() >= SCENARIO_TIMEOUT {
                let said = c.rabbit.diagnose(&builds).await;
                panic!("cannot publish {id}: {e}\n{said}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        let ev = observer
            .next(SCENARIO_TIMEOUT)
            .await
            .expect("second half accepted");
        if ev.data.phase == Phase::Accepted && second.contains(&ev.data.build_id) {
            figures.node_kill_to_accepted = Some(killed.elapsed());
            break;
        }
    }
    eprintln!(
        "rabbitmq node {leader} (leader of {builds}) killed: next build.accepted after {:.2?}",
        figures.node_kill_to_accepted.unwrap()
    );
    // Then the Redis primary, while builds run.
    let old = c.redis.kill_primary().await.unwrap();
    let killed = Instant::now();
    let lease_ttl = env.config().lease_ttl;
    let now = c.redis.wait_failover(old).await.unwrap();
    figures.primary_kill_to_lease_write =
        Some(next_lease_write(c, now, &env.redis_prefix, lease_ttl, killed).await);
    eprintln!(
        "redis primary {old} killed: next lease write on {now} after {:.2?}",
        figures.primary_kill_to_lease_write.unwrap()
    );
    c.rabbit.restart(leader).await.unwrap();
    // Every build ends, exactly once, in build.succeeded.
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    while observer.terminals().len() < BUILDS && Instant::now() < deadline {
        // Quiet spells are fine: the deadline bounds the wait.
        let _ = observer.next(Duration::from_secs(5)).await;
    }
    let terminals = observer.terminals();
    let lost: Vec<&String> = ids
        .iter()
        .filter(|id| !terminals.contains_key(*id))
        .collect();
    figures.lost = lost.len();
    assert!(lost.is_empty(), "builds without an outcome: {lost:?}");
    for id in &ids {
        assert_eq!(
            terminals[id],
            [Phase::Succeeded],
            "{id} must end once, in build.succeeded"
        );
    }
    c.redis.restart(old).await.unwrap();
    env.cleanup().await;
}

/// A recovering connection to the whole cluster (every node's URL, as a
/// worker is given them: it moves to another node when its node dies)
/// that happens to be on node `node`: connections dial the nodes in a
/// shuffled order, so a few tries find one.
async fn publisher_on(c: &mut Clustered, prefix: &str, node: usize) -> kiln_worker::amqp::Broker {
    for i in 0..40 {
        let name = format!("kiln tests publisher {}", unique(&i.to_string()));
        let broker = kiln_worker::amqp::Broker::connect(&c.rabbit.url_list(), prefix, &name)
            .await
            .unwrap();
        if c.rabbit.node_of_connection(&name).await.unwrap() == Some(node) {
            return broker;
        }
        broker.close().await;
    }
    panic!("no client connection landed on node {node} in 40 tries");
}

/// Polls the primary on `port` for a lease of `prefix` written after
/// `since` (its remaining time close to the whole `ttl`): how long writes
/// stopped.
async fn next_lease_write(
    c: &Clustered,
    port: u16,
    prefix: &str,
    ttl: Duration,
    since: Instant,
) -> Duration {
    let fresh = ttl.as_millis() as i64 - 150;
    loop {
        let keys: Vec<String> = c
            .redis
            .server_query(port, redis::cmd("KEYS").arg(format!("{prefix}lease:*")))
            .await
            .unwrap_or_default();
        for key in keys {
            let pttl: i64 = c
                .redis
                .server_query(port, redis::cmd("PTTL").arg(&key))
                .await
                .unwrap_or(-1);
            if pttl >= fresh {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < SCENARIO_TIMEOUT,
            "no lease written on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cancel whose flag Redis lost in a failover still cancels its build:
/// the build's worker is killed, the other worker handles the cancel while
/// the replica is cut off (its flag reaches the primary alone), the
/// primary dies and the replica takes over without the flag; the worker
/// that adopts the build must still cancel it.
async fn a_cancel_whose_flag_redis_lost_still_cancels(c: &mut Clustered) {
    let primary = c.redis.primary_port().await.unwrap();
    let mut env = Env::on(engines(c, c.redis.server_url(primary))).await;
    env.slow_pods(Duration::from_secs(40));
    let mut observer = Observer::start(&c.rabbit.url(1), &env.prefix).await;
    let holder = env.start_worker();
    let id = unique("lost-cancel");
    env.publish(&one_image(&id)).await;
    loop {
        let ev = observer.next(SCENARIO_TIMEOUT).await.expect("running");
        if ev.data.build_id == id && ev.data.phase == Phase::Running {
            break;
        }
    }
    env.kill_worker(holder).await;
    let _other = env.start_worker();
    let isolated = c.redis.isolate_primary().await.unwrap();
    env.cancel(&id, "superseded").await;
    // The cancel is handled (its flag is on the primary) before the
    // failover loses it.
    let flag = format!("{}cancel:{id}", env.redis_prefix);
    let start = Instant::now();
    loop {
        let exists: bool = c
            .redis
            .server_query(isolated.primary, redis::cmd("EXISTS").arg(&flag))
            .await
            .unwrap();
        if exists {
            break;
        }
        assert!(
            start.elapsed() < SCENARIO_TIMEOUT,
            "the cancel was not handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Acked: the cancel is gone from its queue (ready or unacked).
    let cancels = format!("{}.cancels", env.prefix);
    loop {
        let out = c
            .rabbit
            .ctl(
                1,
                &["list_queues", "--no-table-headers", "name", "messages"],
            )
            .await
            .unwrap();
        let left = out.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(cancels.as_str())).then(|| w.next().map(str::to_owned))?
        });
        if left.as_deref() == Some("0") {
            break;
        }
        assert!(
            start.elapsed() < SCENARIO_TIMEOUT,
            "the cancel was not acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = isolated.primary;
    let now = c.redis.fail_over_isolated(isolated).await.unwrap();
    let gone: bool = c
        .redis
        .server_query(now, redis::cmd("EXISTS").arg(&flag))
        .await
        .unwrap();
    assert!(!gone, "the failover must have lost the cancel flag");
    let outcome = loop {
        let ev = observer
            .next(SCENARIO_TIMEOUT)
            .await
            .expect("an outcome for the build");
        if ev.data.build_id == id && ev.data.image.is_none() && ev.data.phase != Phase::Accepted {
            break ev;
        }
    };
    assert_eq!(
        outcome.data.phase,
        Phase::Cancelled,
        "the cancel must survive the loss of its flag: {outcome:?}"
    );
    c.redis.restart(old).await.unwrap();
    env.cleanup().await;
}

/// A client's event subscription (`kiln wait`, `kiln watch`) whose node is
/// killed subscribes again on another node of its list and receives the
/// events published from then on; it counts the gap (before: its
/// connection died with the node, and the subscription ended).
async fn a_subscription_survives_the_kill_of_its_node(c: &mut Clustered) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prefix = unique("kiln-sub");
    let name = unique("kiln subscriber");
    let client = Broker::connect_client(&c.rabbit.url_list(), &prefix, &name)
        .await
        .unwrap();
    client.declare_topology().await.unwrap();
    let mut sub = client.subscribe_events(&["#"]).await.unwrap();
    let connections = c
        .rabbit
        .ctl(
            1,
            &[
                "list_connections",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
        )
        .await
        .unwrap();
    // A connection's pid names its node: <kiln-…-2@localhost.1733.4567.0>.
    // The subscription's own connection, `<name> (events)`: the client's
    // (`<name>`, which declared the topology) may be on another node, and
    // killing that one leaves the subscription untouched (CI failed on it
    // twice: an event 2 ms after the kill, no gap).
    let own = format!("{name} (events)");
    let pid = connections
        .lines()
        .filter(|l| l.contains(&own))
        .find_map(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {own}: {connections}"))
        .to_owned();
    let node = (1..=3)
        .find(|&i| pid.contains(&format!("<{}.", c.rabbit.node_name(i))))
        .unwrap_or_else(|| panic!("no node of ours in the pid {pid}"));
    let other = if node == 1 { 2 } else { 1 };
    let publisher = Broker::connect_client(&c.rabbit.url(other), &prefix, "kiln publisher")
        .await
        .unwrap();
    c.rabbit.kill(node).unwrap();
    let killed = Instant::now();
    let received = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "the subscription received nothing after the kill of node {node}"
        );
        let id = unique("after-kill");
        let event = kiln_worker::amqp::OutgoingEvent {
            routing_key: "build.accepted.default".to_owned(),
            message_id: id.clone(),
            build_id: id.clone(),
            phase: "accepted".to_owned(),
            traceparent: None,
            body: id.clone().into_bytes(),
        };
        publisher.publish_event(&event).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Some(m)) => break m,
            Ok(None) => panic!("the subscription ended with node {node}"),
            Err(_) => {}
        }
    };
    eprintln!(
        "subscription on node {node}: an event again {:.2?} after the kill ({} bytes)",
        killed.elapsed(),
        received.body.len()
    );
    assert_eq!(sub.gaps(), 1, "the gap is counted");
    sub.close().await;
    client.close().await;
    publisher.close().await;
    c.rabbit.restart(node).await.unwrap();
}

/// The broker's consumer_timeout lowered to 2 s: a request whose build
/// waits 30 s for a ResourceQuota is parked (after 1 s) instead of held, so
/// the broker never closes the channel under it and it never reaches the
/// dead-letter queue (held, it would be redelivered at every timeout and
/// dead-lettered after 10 deliveries); both builds succeed once.
async fn a_quota_wait_longer_than_consumer_timeout_loses_nothing(c: &mut Clustered) {
    for i in 1..=3 {
        for expr in [
            "application:set_env(rabbit, consumer_timeout, 2000).",
            "application:set_env(rabbit, channel_tick_interval, 1000).",
        ] {
            c.rabbit.ctl(i, &["eval", expr]).await.unwrap();
        }
    }
    let primary = c.redis.primary_port().await.unwrap();
    let mut env = Env::on(engines(c, c.redis.server_url(primary))).await;
    env.slow_pods(Duration::from_secs(30));
    env.kube.set_pod_quota(NAMESPACE, "compute", 1);
    let mut observer = Observer::start(&c.rabbit.url(1), &env.prefix).await;
    env.start_worker_with(|w| w.park_after = Duration::from_secs(1));
    let first = unique("quota-first");
    let waiting = unique("quota-waiting");
    env.publish(&one_image(&first)).await;
    loop {
        let ev = observer
            .next(SCENARIO_TIMEOUT)
            .await
            .expect("first accepted");
        if ev.data.build_id == first && ev.data.phase == Phase::Accepted {
            break;
        }
    }
    env.publish(&one_image(&waiting)).await;
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    while Instant::now() < deadline {
        let terminals = observer.terminals();
        if terminals.contains_key(&first) && terminals.contains_key(&waiting) {
            break;
        }
        let _ = observer.next(Duration::from_secs(5)).await;
    }
    let terminals = observer.terminals();
    for id in [&first, &waiting] {
        assert_eq!(
            terminals.get(id).map(Vec::as_slice),
            Some([Phase::Succeeded].as_slice()),
            "{id} must end once, in build.succeeded"
        );
    }
    let dead = env.dead_letters().await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    // And the worker still consumes: a request published now is built.
    // (Held instead of parked, the request's channel was closed by the
    // broker, and the consumer on it with it.)
    env.slow_pods(Duration::from_millis(200));
    let after = unique("quota-after");
    env.publish(&one_image(&after)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !observer.terminals().contains_key(&after) {
        assert!(
            Instant::now() < deadline,
            "a request published after the wait was not built: the worker stopped consuming"
        );
        let _ = observer.next(Duration::from_secs(5)).await;
    }
    assert_eq!(observer.terminals()[&after], [Phase::Succeeded]);
    env.cleanup().await;
}
