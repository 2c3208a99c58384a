//! The short chaos run of issue 9: a few hundred builds from two tenants on
//! three real `kiln worker` processes, a dozen seeded faults (kills, stops
//! beyond the lease TTL, broker-closed connections, Redis flushes, API
//! errors, watch resets, forged and conflicting requests and cancels), and
//! the checker over the history must find no anomaly.
//!
//! Replay a failing run with the seed it prints: `KILN_CHAOS_SEED=<seed>`;
//! choose fault kinds with `KILN_CHAOS_FAULTS=kill,stop,amqp,redis,api,watch,forge`.

use std::path::PathBuf;

use kiln_tests::chaos::run::{RunOptions, run};

/// The `kiln` binary of this build (`KILN_BIN` overrides it).
fn kiln_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe
        .parent()
        .expect("test executable directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("kiln{}", std::env::consts::EXE_SUFFIX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_chaos_run_breaks_no_promise() {
    let opts = RunOptions::from_env(kiln_bin(), 300, 12, 3).expect("chaos options");
    let out = run(&opts).await.expect("chaos run");
    let report = out.report();
    println!("{report}");
    assert!(out.crashes.is_empty(), "a worker crashed:\n{report}");
    assert!(out.settled, "not every build was answered:\n{report}");
    assert!(out.verdict.ok(), "{report}");
}
