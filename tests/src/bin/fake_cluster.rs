//! `kiln-fake-cluster`: the tests' simulated Kubernetes API server as a
//! standalone process, for trying Kiln without a cluster (`scripts/demo`).
//! Pods go Pending, Running and Succeeded in about two seconds and report a
//! digest, as Kaniko would; nothing is really built or pushed.

use std::path::PathBuf;
use std::time::Duration;

use kiln_tests::fakekube::{FakeKube, FakeKubeOptions, Timing};

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/demo/kubeconfig"), PathBuf::from);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let fake = FakeKube::start_with(FakeKubeOptions {
        timing: Timing {
            pending: Duration::from_millis(500),
            running: Duration::from_millis(1500),
            terminating: Duration::from_millis(100),
        },
        ..FakeKubeOptions::default()
    })
    .await;
    if let Err(e) = fake.write_kubeconfig(&path) {
        eprintln!("kiln-fake-cluster: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!(
        "kiln-fake-cluster: simulated Kubernetes API on {} (kubeconfig: {})",
        fake.url(),
        path.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    fake.shutdown();
}
