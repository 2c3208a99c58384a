//! `kiln-demo-clean <amqp-prefix> <redis-prefix>`: removes what `scripts/demo`
//! left on the broker and in Redis (its exchanges and queues, its leases,
//! records and builds index), so that a demo run against a shared RabbitMQ
//! and Redis leaves nothing behind. The addresses are the tests' own
//! (`KILN_AMQP_URL`, `KILN_REDIS_URL`); the removal is the tests' clean-up.

use kiln_tests::harness::remove_test_state;

/// The prefixes a real deployment uses by default: never removed from here,
/// whatever the caller asks.
const DEPLOYMENT_PREFIXES: [&str; 2] = ["kiln", "kiln:"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [amqp_prefix, redis_prefix] = args.as_slice() else {
        fail("usage: kiln-demo-clean <amqp-prefix> <redis-prefix>");
    };
    for p in [amqp_prefix, redis_prefix] {
        if p.is_empty() || DEPLOYMENT_PREFIXES.contains(&p.as_str()) {
            fail(&format!(
                "refusing prefix {p:?}: empty or a deployment's default, not a demo's"
            ));
        }
    }
    if let Err(e) = remove_test_state(amqp_prefix, redis_prefix) {
        fail(&format!(
            "{amqp_prefix}.* and {redis_prefix}* not removed: {e}"
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("kiln-demo-clean: {message}");
    std::process::exit(1);
}
