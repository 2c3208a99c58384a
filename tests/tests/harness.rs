//! The test harness itself: dropping an `Env` leaves nothing behind, also
//! when the test panics halfway, on a multi-thread runtime (a task that
//! panics) and on a current-thread one (`catch_unwind` around `block_on`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_tests::fakekube::Fate;
use kiln_tests::harness::{
    Env, amqp_connections, amqp_url, one_image, redis_keys, redis_url, unique,
    worker_connection_name,
};
use kiln_worker::amqp::Names;

const WAIT: Duration = Duration::from_secs(30);

/// What a test's `Env` owned, to look for after it is gone.
#[derive(Debug, Clone)]
struct Traces {
    names: Names,
    redis_prefix: String,
    worker: String,
}

/// An `Env` in the middle of a build: a worker holding its lease, the
/// build's pod running. Checks that its traces exist, so the checks after
/// the drop can fail.
async fn busy_env() -> (Env, Traces) {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    let w = env.start_worker();
    let id = unique("busy");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    let traces = Traces {
        names: env.broker.names().clone(),
        redis_prefix: env.redis_prefix.clone(),
        worker: env.worker_id(w),
    };
    let topology = queues_left(&traces.names).await;
    assert_eq!(
        topology.len(),
        6,
        "three queues, three exchanges: {topology:?}"
    );
    assert!(!keys_left(&traces.redis_prefix).await.is_empty());
    assert!(
        !amqp_connections(&worker_connection_name(&traces.worker))
            .await
            .is_empty()
    );
    (env, traces)
}

/// The queues and exchanges of `names` that a passive declare finds.
async fn queues_left(names: &Names) -> Vec<String> {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let queue = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exchange = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let none = lapin::types::FieldTable::default;
    let mut left = Vec::new();
    // A failed passive declare closes its channel: one channel per check.
    for q in [names.builds(), names.cancels(), names.dead()] {
        let ch = conn.create_channel().await.unwrap();
        if ch
            .queue_declare(q.as_str().into(), queue, none())
            .await
            .is_ok()
        {
            left.push(q);
        }
    }
    for x in [names.requests(), names.events(), names.dead()] {
        let ch = conn.create_channel().await.unwrap();
        let kind = lapin::ExchangeKind::Direct; // a passive declare ignores the kind
        if ch
            .exchange_declare(x.as_str().into(), kind, exchange, none())
            .await
            .is_ok()
        {
            left.push(format!("exchange {x}"));
        }
    }
    let _ = conn.close(200, "checked".into()).await;
    left
}

async fn keys_left(redis_prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis_keys(&mut conn, redis_prefix).await.unwrap()
}

/// Nothing of `traces` remains: no queue, no exchange, no Redis key, no
/// worker connection (the broker may take a moment to drop a closed one).
async fn assert_nothing_left(traces: &Traces) {
    assert_eq!(queues_left(&traces.names).await, Vec::<String>::new());
    assert_eq!(keys_left(&traces.redis_prefix).await, Vec::<String>::new());
    let name = worker_connection_name(&traces.worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !amqp_connections(&name).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker's AMQP connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_env_cleans_up() {
    let (env, traces) = busy_env().await;
    drop(env);
    assert_nothing_left(&traces).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_cleanup_then_drop_cleans_up_once() {
    let (env, traces) = busy_env().await;
    env.cleanup().await;
    assert_nothing_left(&traces).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_task_cleans_up() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let (_env, traces) = busy_env().await;
        tx.send(traces).unwrap();
        panic!("an assertion fails halfway");
    });
    let err = test.await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_nothing_left(&rx.await.unwrap()).await;
}

#[test]
fn a_panic_on_a_current_thread_runtime_cleans_up() {
    let traces = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_env, t) = busy_env().await;
            *traces.lock().unwrap() = Some(t);
            panic!("an assertion fails halfway");
        });
    });
    assert!(outcome.is_err(), "the test body must have panicked");
    let traces = traces.into_inner().unwrap().expect("the env was set up");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(assert_nothing_left(&traces));
}
