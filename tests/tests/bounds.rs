//! Issue 18 items 3, 4 and 6: no single message, or one tenant's flood of
//! them, can exhaust a worker or the broker. Real RabbitMQ and Redis, the
//! fake Kubernetes API, in-process workers.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::{Phase, Reason};
use kiln_tests::fakekube::{Resource, Verb};
use kiln_tests::harness::{ANY, Env, NAMESPACE, amqp_url, one_image, redis_keys, unique};
use kiln_worker::amqp::{Broker, DeadLimits};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WAIT: Duration = Duration::from_secs(60);

/// Issue 18 item 3: a request just under the size limit with 80,000 bad
/// label keys. On 468a72e it made a 28.5 MB `build.rejected` and a
/// `kiln-error` header no frame could carry; now the event is at most
/// 64 KiB, the dead letter's header at most 4 KiB, and the worker builds
/// the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_of_80000_bad_labels_is_bounded_and_the_worker_goes_on() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("labels");
    let mut request = one_image(&id);
    let labels: serde_json::Map<String, serde_json::Value> = (0..80_000)
        .map(|i| (format!("!{i:05}"), serde_json::Value::String(String::new())))
        .collect();
    request["labels"] = serde_json::Value::Object(labels);
    let body = serde_json::to_vec(&request).unwrap();
    assert!(
        body.len() > 900_000 && body.len() <= kiln_protocol::MAX_REQUEST_BYTES,
        "{}",
        body.len()
    );
    env.publish_raw(&body, None).await;
    let rejected = env.expect_sequence(&id, &["build.rejected"], WAIT).await;
    let event = serde_json::to_vec(&rejected[0]).unwrap();
    assert!(
        event.len() <= 64 * 1024,
        "build.rejected is {} bytes",
        event.len()
    );
    assert_eq!(rejected[0].data.reason, Some(Reason::InvalidRequest));
    let message = rejected[0].data.message.as_deref().unwrap();
    assert!(message.contains("labels"), "{message}");

    let dead = env.wait_dead_letters(WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].0.len(),
        body.len(),
        "the body is dead-lettered whole"
    );
    let header = &dead[0].1;
    assert!(header.starts_with("InvalidRequest: "), "{header:.200}");
    assert!(
        header.len() <= 4 * 1024,
        "kiln-error is {} bytes",
        header.len()
    );
    assert!(header.ends_with(" bytes cut)"), "{header:.200}");

    let ok = unique("ok");
    env.publish(&one_image(&ok)).await;
    env.expect_sequence(&ok, &[ANY, "build.succeeded"], WAIT)
        .await;
    env.cleanup().await;
}

/// Publishes `bodies` to `exchange` with confirms, in order.
async fn publish_confirmed(conn: &Connection, exchange: &str, bodies: &[&[u8]]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for body in bodies {
        ch.basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = ch.close(200, "done".into()).await;
}

/// Issue 18 item 4: `kiln.dead` carries a length and a byte limit, and past
/// them the OLDEST dead letters are dropped (the newest, the ones an
/// operator looks for, stay; dead-lettering never blocks). A `kiln.dead`
/// an older Kiln declared without limits does not stop the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_queue_is_bounded_and_drops_the_oldest() {
    let prefix = unique("kiln-dead");
    let broker = Broker::connect(&amqp_url(), &prefix, "kiln tests")
        .await
        .unwrap();
    let limits = DeadLimits {
        max_length: 3,
        max_bytes: 1024 * 1024,
    };
    broker.declare_topology_with(limits).await.unwrap();
    let dead = broker.names().dead();
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();

    // The arguments are set: declaring with other limits is refused, with
    // the same ones it is not.
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let ch = conn.create_channel().await.unwrap();
    let other = DeadLimits {
        max_length: 4,
        ..limits
    };
    let refused = ch
        .queue_declare(dead.as_str().into(), opts, other.arguments())
        .await;
    assert!(
        refused.is_err(),
        "kiln.dead was declared without x-max-length 3"
    );
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(dead.as_str().into(), opts, limits.arguments())
        .await
        .unwrap();
    let mut without_overflow = limits.arguments();
    without_overflow.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let refused = ch
        .queue_declare(dead.as_str().into(), opts, without_overflow)
        .await;
    assert!(
        refused.is_err(),
        "kiln.dead was declared without x-overflow drop-head"
    );

    // Five dead letters into a queue of three: the first two are dropped.
    let bodies: [&[u8]; 5] = [b"1", b"2", b"3", b"4", b"5"];
    publish_confirmed(&conn, &dead, &bodies).await;
    let mut kept = Vec::new();
    while let Some(m) = broker.get_one(&dead).await.unwrap() {
        kept.push(String::from_utf8(m.body.clone()).unwrap());
    }
    assert_eq!(kept, ["3", "4", "5"]);
    broker.delete_topology().await.unwrap();

    // An existing kiln.dead without limits (as Kiln before this change
    // declared it): the declare goes on with a warning instead of failing.
    let old = unique("kiln-dead-old");
    let old_broker = Broker::connect(&amqp_url(), &old, "kiln tests")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(old_broker.names().dead().as_str().into(), opts, args)
        .await
        .unwrap();
    old_broker.declare_topology_with(limits).await.unwrap();
    old_broker.delete_topology().await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// Issue 18 item 6: 2,000 cancels from one tenant for ids nobody holds.
/// On 468a72e each wrote a 24 h key and LISTed pods in every namespace of
/// the policy outside the API-call limit. Now at most the tenant's cap of
/// cancels is kept (the rest are refused `PolicyViolation` with
/// `request.rejected`), each cancel LISTs only the sender's namespace, and
/// the worker goes on building.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancels_for_unheld_ids_keeps_at_most_the_cap() {
    const CAP: u32 = 50;
    const FLOOD: usize = 2_000;
    let mut env = Env::new().await;
    let path = env.write_policy(&format!(
        "[tenants.default]\nnamespace = \"{NAMESPACE}\"\nallowedDestinations = [\"*\"]\n\n\
         [tenants.guest]\nnamespace = \"guest-builds\"\nallowedDestinations = [\"*\"]\n\n\
         [tenants.other]\nnamespace = \"other-builds\"\nallowedDestinations = [\"*\"]\n"
    ));
    env.start_worker_with(|c| {
        c.build.policy = Some(path.clone());
        c.bounds.kept_cancels_per_tenant = CAP;
    });
    // The worker is up (its watches listed every namespace) before the
    // calls are counted.
    let first = unique("first");
    env.publish(&one_image(&first)).await;
    env.expect_sequence(&first, &[ANY, "build.succeeded"], WAIT)
        .await;
    env.kube.clear_calls();

    let flood = unique("flood");
    for i in 0..FLOOD {
        env.cancel_as(&format!("{flood}-{i}"), &"r".repeat(1024), Some("guest"))
            .await;
    }
    // Every cancel past the cap is dead-lettered; wait until all are.
    let want = FLOOD - CAP as usize;
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while dead.len() < want && tokio::time::Instant::now() < deadline {
        dead.extend(env.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead.len(), want, "refused cancels");
    assert!(
        dead.iter().all(|(_, e)| e
            .starts_with("PolicyViolation: id: too many pending cancels for tenant guest")),
        "{:?}",
        dead.first()
    );

    let mut redis = redis::Client::open(kiln_tests::harness::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let kept: Vec<String> = redis_keys(&mut redis, &env.redis_prefix)
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with("@guest"))
        .collect();
    assert_eq!(kept.len(), CAP as usize, "kept cancel keys");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&kept[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "kept for {ttl} ms");

    // One LIST per cancel at most, in the sender's namespace; the other
    // namespaces see only what the worker's own watches relist (a handful
    // at most; the old code listed each of them once per cancel).
    let lists: Vec<_> = env
        .kube
        .calls()
        .into_iter()
        .filter(|c| c.verb == Verb::List && c.resource == Resource::Pods)
        .collect();
    let in_ns = |ns: &str| {
        lists
            .iter()
            .filter(|c| c.namespace.as_deref() == Some(ns))
            .count()
    };
    assert!(
        in_ns("guest-builds") <= FLOOD + 4,
        "{} LISTs",
        in_ns("guest-builds")
    );
    for ns in [NAMESPACE, "other-builds"] {
        assert!(in_ns(ns) <= 4, "{} LISTs in {ns}", in_ns(ns));
    }

    let ok = unique("ok");
    env.publish(&one_image(&ok)).await;
    let events = env
        .expect_sequence(&ok, &[ANY, "build.succeeded"], WAIT)
        .await;
    assert_eq!(events.last().unwrap().data.phase, Phase::Succeeded);
    env.cleanup().await;
}
