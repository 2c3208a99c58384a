//! A lone RabbitMQ node (no cluster: a small installation) restarted under a
//! running worker: killed and started again with its data, and then killed
//! and started again empty (a broker that keeps nothing, e.g. without a
//! persistent volume). Each time the worker must come back by itself — on
//! the empty broker by declaring its topology (exchanges, queues, bindings)
//! again — and consume again: a request published afterwards is built.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kiln_protocol::Phase;
use kiln_tests::chaos::run::delete_prefix;
use kiln_tests::cluster::{RabbitCluster, RabbitOptions};
use kiln_tests::harness::{Engines, Env, one_image, redis_url, unique};

const WAIT: Duration = Duration::from_secs(120);

/// Publishes `id` until the broker confirms and routes it (the test's
/// connection comes back with the broker; on an empty broker the request is
/// unroutable until a worker declared the topology), then waits for its
/// terminal event.
async fn built_after_restart(env: &mut Env, id: &str, gaps: u32) -> Vec<Phase> {
    let body = serde_json::to_vec(&one_image(id)).unwrap();
    let start = Instant::now();
    // The test's own subscription died with the broker: it subscribes again
    // when read (on an empty broker once a worker declared the events
    // exchange again). Events published before that would be missed.
    while env.events.gaps() < gaps {
        assert!(
            start.elapsed() < WAIT,
            "the test's subscription did not come back (on an empty broker: no worker declared the events exchange again)"
        );
        let _ = env.next_event(Duration::from_millis(500)).await;
    }
    while let Err(e) = env
        .broker
        .publish_request(kiln_worker::amqp::BUILD_KEY, &body, None, None)
        .await
    {
        assert!(
            start.elapsed() < WAIT,
            "{id} could not be published after the restart: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{id} published {:.1?} after the restart", start.elapsed());
    env.events_of(id, WAIT)
        .await
        .iter()
        .filter(|e| e.data.image.is_none())
        .map(|e| e.data.phase)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_comes_back_after_its_lone_broker_restarts_with_or_without_its_data() {
    let mut rabbit = RabbitCluster::start(RabbitOptions {
        single: true,
        ..RabbitOptions::default()
    })
    .await
    .expect("start a lone RabbitMQ node");
    let mut env = Env::on(Engines {
        amqp_url: rabbit.url(1),
        redis_url: redis_url(),
        sentinels: None,
        private: true,
    })
    .await;
    env.slow_pods(Duration::from_millis(300));
    env.start_worker();
    let before = unique("lone-before");
    env.publish(&one_image(&before)).await;
    let phases: Vec<Phase> = env
        .events_of(&before, WAIT)
        .await
        .iter()
        .filter(|e| e.data.image.is_none())
        .map(|e| e.data.phase)
        .collect();
    assert_eq!(phases, [Phase::Accepted, Phase::Succeeded]);

    // Restarted with its data (the durable topology is still there), then
    // restarted empty (nothing declared any more).
    for (gaps, wipe) in [(1, false), (2, true)] {
        rabbit.kill(1).unwrap();
        if wipe {
            rabbit.wipe(1).unwrap();
        }
        rabbit.restart(1).await.unwrap();
        let id = unique(if wipe { "lone-empty" } else { "lone-kept" });
        assert_eq!(
            built_after_restart(&mut env, &id, gaps).await,
            [Phase::Accepted, Phase::Succeeded],
            "a request published after a restart (data thrown away: {wipe}) is built"
        );
    }
    let _ = delete_prefix(&env.redis_prefix).await;
    env.cleanup().await;
}
