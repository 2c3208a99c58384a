//! `kiln-chaos`: the long chaos run of issue 9. Real `kiln worker`
//! processes, two tenants, a seeded schedule of faults; prints the schedule,
//! the faults as injected and the checker's table, and exits 1 when the
//! checker found an anomaly.
//!
//! ```sh
//! cargo build --release -p kiln-worker --bin kiln -p kiln-tests --bin kiln-chaos
//! target/release/kiln-chaos --builds 3000 --faults 100 --workers 3 [--seed N] [--kinds kill,stop,...]
//! ```

use std::path::PathBuf;

use kiln_tests::chaos::history::FaultKind;
use kiln_tests::chaos::run::{RunOptions, run};

// `amqp-node` and `redis-failover` are not in the default mix: naming one
// starts private clustered engines for the run (tests/src/chaos/engines.rs).
const USAGE: &str = "usage: kiln-chaos [--seed N] [--builds N] [--faults N] [--workers N] [--kinds kill,stop,amqp,redis,api,watch,forge,amqp-node,redis-failover] [--kiln PATH]\n(KILN_CHAOS_SEED and KILN_CHAOS_FAULTS are the defaults of --seed and --kinds)";

fn die(msg: &str) -> ! {
    eprintln!("kiln-chaos: {msg}\n{USAGE}");
    std::process::exit(2)
}

/// `kiln` next to this binary (target/release when built by cargo).
fn default_kiln() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("kiln")))
        .unwrap_or_else(|| PathBuf::from("target/release/kiln"))
}

fn main() {
    let mut builds = 3000usize;
    let mut faults = 100usize;
    let mut workers = 3usize;
    let mut seed: Option<u64> = None;
    let mut kinds: Option<Vec<FaultKind>> = None;
    let mut kiln = default_kiln();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        let num = |s: String, name: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{name}: {s:?} is not a whole number")))
        };
        match a.as_str() {
            "--seed" => seed = Some(num(val(), "--seed")),
            "--builds" => builds = num(val(), "--builds") as usize,
            "--faults" => faults = num(val(), "--faults") as usize,
            "--workers" => workers = num(val(), "--workers") as usize,
            "--kinds" => {
                kinds = Some(
                    FaultKind::parse_list(&val()).unwrap_or_else(|e| die(&format!("--kinds: {e}"))),
                );
            }
            "--kiln" => kiln = PathBuf::from(val()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    if builds == 0 || workers == 0 {
        die("--builds and --workers must be at least 1");
    }
    let mut opts = RunOptions::from_env(kiln, builds, faults, workers)
        .unwrap_or_else(|e| die(&format!("{e:#}")));
    if let Some(s) = seed {
        opts.params.seed = s;
    }
    if let Some(k) = kinds {
        opts.params.kinds = k;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(run(&opts)).unwrap_or_else(|e| {
        eprintln!("kiln-chaos: the run failed: {e:#}");
        std::process::exit(3)
    });
    println!("{}", out.report());
    if !out.verdict.ok() || !out.settled || !out.crashes.is_empty() {
        std::process::exit(1);
    }
}
