//! The short chaos run of issue 9: a few hundred builds from two tenants on
//! three real `kiln worker` processes, a dozen seeded faults (kills, stops
//! beyond the lease TTL, broker-closed connections, Redis flushes, API
//! errors, watch resets, forged and conflicting requests and cancels), and
//! the checker over the history must find no anomaly.
//!
//! Replay a failing run with the seed it prints: `KILN_CHAOS_SEED=<seed>`;
//! choose fault kinds with `KILN_CHAOS_FAULTS=kill,stop,amqp,redis,api,watch,forge`.

use kiln_tests::binary::kiln_bin;

use kiln_tests::chaos::run::{RunOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_chaos_run_breaks_no_promise() {
    let opts = RunOptions::from_env(kiln_bin(), 300, 12, 3).expect("chaos options");
    run(&opts).await.expect("chaos run").assert_clean();
}
