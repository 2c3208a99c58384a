//! A worker started while Redis fails over (the primary just killed, the
//! Sentinels not naming a new one yet) waits for the new primary instead of
//! exiting. Found by the clustered chaos run (seed 2): a worker restarted
//! after a kill fault during a `redis-failover` exited twice with "cannot
//! resolve the master".
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kiln_protocol::Phase;
use kiln_tests::cluster::{MASTER_NAME, RedisOptions, SentinelRedis};
use kiln_tests::harness::{Engines, Env, amqp_url, one_image, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_started_during_a_redis_failover_waits_for_the_new_primary() {
    let mut redis = SentinelRedis::start(RedisOptions::default())
        .await
        .expect("start Redis under Sentinel");
    let primary = redis.primary_port().await.unwrap();
    let mut env = Env::on(Engines {
        amqp_url: amqp_url(),
        redis_url: redis.server_url(primary),
        sentinels: Some((redis.sentinel_list(), MASTER_NAME.to_owned())),
        private: true,
    })
    .await;
    env.slow_pods(Duration::from_millis(300));
    let old = redis.kill_primary().await.unwrap();
    // Before the Sentinels notice (down after 1 s) and elect.
    env.start_worker();
    let id = unique("failover-start");
    env.publish(&one_image(&id)).await;
    let now = redis.wait_failover(old).await.unwrap();
    let phases: Vec<Phase> = env
        .events_of(&id, Duration::from_secs(90))
        .await
        .iter()
        .filter(|e| e.data.image.is_none())
        .map(|e| e.data.phase)
        .collect();
    assert_eq!(
        phases,
        [Phase::Accepted, Phase::Succeeded],
        "the worker started during the failover (primary {old} -> {now}) builds"
    );
    env.cleanup().await;
}
