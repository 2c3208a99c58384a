//! The clustered chaos run of issue 19: the short chaos run's builds, tenants
//! and checker on private clustered engines — a three-node RabbitMQ cluster
//! and Redis with a replica under three Sentinels — with the workers
//! configured with the three node URLs and the Sentinels, and the two
//! clustered faults in the mix: `amqp-node` (kill -9 the node leading the
//! builds quorum queue, start it again later) and `redis-failover` (kill -9
//! the primary, or the lost-write variant). The checker's rules are those of
//! the short run: no anomaly.
//!
//! Replay with the seed it prints: `KILN_CHAOS_SEED=<seed>`; the kinds of
//! `KILN_CHAOS_FAULTS` are used as they are when they name a clustered kind,
//! else with the two clustered kinds added. `RUST_LOG` shows the run's own
//! log (its connections, the engines).

use kiln_tests::binary::kiln_bin;
use kiln_tests::chaos::history::FaultKind;
use kiln_tests::chaos::run::{RunOptions, run};
use kiln_tests::harness::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_chaos_run_on_clustered_engines_breaks_no_promise() {
    init_tracing("warn,lapin=error");
    let mut opts = RunOptions::from_env(kiln_bin(), 120, 8, 3).expect("chaos options");
    if !opts.params.kinds.iter().any(|k| k.is_clustered()) {
        opts.params.kinds.extend(FaultKind::CLUSTERED);
    }
    run(&opts).await.expect("chaos run").assert_clean();
}
