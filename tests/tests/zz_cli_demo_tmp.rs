#![allow(clippy::unwrap_used)]
use kiln_tests::fakekube::{Fate, Timing};
use kiln_tests::harness::{Env, two_images};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual demo"]
async fn demo() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_timing(Timing {
        pending: Duration::from_secs(2),
        running: Duration::from_secs(6),
        terminating: Duration::from_millis(10),
    });
    env.kube.kubelet().set_script(|pod| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name.contains("worker-1") {
            Fate::OomKilled
        } else {
            Fate::succeed()
        }
    });
    env.start_worker();
    std::fs::write(
        "/tmp/demo-prefix",
        format!("{} {}", env.prefix, env.redis_prefix),
    )
    .unwrap();
    std::fs::write(
        "/tmp/demo-req.json",
        serde_json::to_string(&two_images("demo-1")).unwrap(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    env.cleanup().await;
}
