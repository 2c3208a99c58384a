//! The seeded schedule of a chaos run: which builds are published when, by
//! which tenant, which of them fail once or are cancelled by their owner,
//! and which faults hit when. A pure function of [`Params`], so a failing
//! run replays with the same seed (`KILN_CHAOS_SEED`).

use std::fmt::Write as _;

use super::history::{FaultKind, Millis};

/// SplitMix64: small, fast, and its output for a seed never changes (unlike
/// a library generator across versions), which is what a replayable seed
/// needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from the clock, for runs that were not given one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Rng::new(nanos as u64 ^ u64::from(std::process::id())).next_u64()
}

/// What shapes a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub seed: u64,
    pub builds: usize,
    pub faults: usize,
    pub workers: usize,
    /// The fault kinds to draw from (none: a run without faults).
    pub kinds: Vec<FaultKind>,
    /// Builds are published evenly over this window.
    pub window: Millis,
    /// The workers' lease TTL: a stop lasts longer than this.
    pub lease_ttl: Millis,
}

/// Which tenant: 0 or 1 (the run maps them to two RabbitMQ users).
pub type Tenant = usize;

/// One honest build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBuild {
    pub id: String,
    pub owner: Tenant,
    pub at: Millis,
    pub images: usize,
    /// Its first attempt pods are evicted (a retryable failure).
    pub fail_first: bool,
    /// The owner cancels it at this time.
    pub cancel_at: Option<Millis>,
}

/// What a forge fault sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// The other tenant publishes a valid request under a live id.
    OtherTenantRequest,
    /// The owner publishes a different request under its live id.
    OwnerOtherBody,
    /// Someone publishes an invalid body naming a live id.
    InvalidBody { by_owner: bool },
    /// The other tenant cancels a live build.
    OtherTenantCancel,
    /// The other tenant cancels an id before its owner publishes it.
    PreCancel,
    /// A forging tenant, who may create pods and ConfigMaps, imitates the
    /// live build: pods with its build id, labels and tenant that exit 0
    /// with [`FORGED_DIGEST`], in its own namespace and in the victim's
    /// (under another name), and ConfigMaps under the build's predictable
    /// inline-Dockerfile names.
    ForgedObjects,
}

/// The digest every forged pod reports: no `*.succeeded` may carry it.
pub const FORGED_DIGEST: &str =
    "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// The label the run puts on forged objects, so that its own bookkeeping
/// (pod history, leftovers) can tell them apart; Kiln never reads it.
pub const FORGED_LABEL: &str = "chaos.kiln.dev/forged";

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFault {
    pub at: Millis,
    pub kind: FaultKind,
    /// The worker slot it hits (kill, stop, amqp).
    pub worker: usize,
    /// How long it lasts (stop, api) or how long until the restart (kill).
    pub duration: Millis,
    /// For forge faults: what, and the index of the build it names.
    pub forge: Option<(Forge, usize)>,
    /// For api faults: the HTTP status of the burst.
    pub status: u16,
    /// For redis-failover faults: the lost-write variant (the replica
    /// stopped and cut off for `duration` before the primary is killed).
    pub lose_writes: bool,
}

/// A whole run's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub params: Params,
    pub builds: Vec<PlannedBuild>,
    pub faults: Vec<PlannedFault>,
}

/// Draws the schedule of `p`; `run` makes the build ids unique per run.
pub fn schedule(p: &Params, run: &str) -> Schedule {
    let mut rng = Rng::new(p.seed);
    let n = p.builds.max(1) as u64;
    let builds: Vec<PlannedBuild> = (0..p.builds)
        .map(|i| {
            let at = p.window * i as u64 / n;
            PlannedBuild {
                id: format!("{run}-{i}"),
                owner: rng.below(2) as usize,
                at,
                images: if rng.percent(10) { 2 } else { 1 },
                fail_first: rng.percent(5),
                cancel_at: rng.percent(5).then(|| at + 200 + rng.below(2500)),
            }
        })
        .collect();
    // Every clustered kind in the mix is drawn at least once (the first
    // faults); a mix without them draws exactly as it always did, so old
    // seeds replay.
    let clustered: Vec<FaultKind> = p
        .kinds
        .iter()
        .copied()
        .filter(|k| k.is_clustered())
        .collect();
    let mut faults: Vec<PlannedFault> = (0..p.faults)
        .filter(|_| !p.kinds.is_empty())
        .map(|n| {
            let (kind, at) = match clustered.get(n) {
                // In the first half of the publishing, so that requests
                // published after the kill measure the recovery.
                Some(&k) => (k, 500 + rng.below(p.window / 2)),
                None => (rng.pick(&p.kinds), 500 + rng.below(p.window + 1500)),
            };
            let worker = rng.below(p.workers.max(1) as u64) as usize;
            let mut lose_writes = false;
            let (duration, forge) = match kind {
                FaultKind::Stop => (p.lease_ttl + 1000 + rng.below(1000), None),
                FaultKind::Kill => (300 + rng.below(700), None),
                FaultKind::Api => (500 + rng.below(1500), None),
                FaultKind::Forge => (0, Some(forge_for(&mut rng, &builds, at))),
                // How long the node stays down before it is started again.
                FaultKind::AmqpNode => (2000 + rng.below(3000), None),
                // How long the workers write to the isolated primary alone.
                FaultKind::RedisFailover => {
                    lose_writes = rng.percent(50);
                    (
                        if lose_writes {
                            300 + rng.below(1200)
                        } else {
                            0
                        },
                        None,
                    )
                }
                _ => (0, None),
            };
            PlannedFault {
                at,
                kind,
                worker,
                duration,
                forge,
                status: rng.pick(&[500, 503, 429, 504]),
                lose_writes,
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    Schedule {
        params: p.clone(),
        builds,
        faults,
    }
}

/// A forgery and its target: the latest build published at least 300 ms
/// before (likely running), or for a pre-cancel the first published at least
/// 300 ms after.
fn forge_for(rng: &mut Rng, builds: &[PlannedBuild], at: Millis) -> (Forge, usize) {
    let forge = rng.pick(&[
        Forge::OtherTenantRequest,
        Forge::OwnerOtherBody,
        Forge::InvalidBody { by_owner: false },
        Forge::InvalidBody { by_owner: true },
        Forge::OtherTenantCancel,
        Forge::PreCancel,
        Forge::ForgedObjects,
    ]);
    let target = if forge == Forge::PreCancel {
        builds.iter().position(|b| b.at >= at + 300)
    } else {
        builds.iter().rposition(|b| b.at + 300 <= at)
    };
    match target {
        Some(i) => (forge, i),
        // Nothing published that early (or late): aim at the first build
        // with a plain forged request.
        None => (Forge::OtherTenantRequest, 0),
    }
}

impl Schedule {
    /// A summary for the run's output.
    pub fn describe(&self) -> String {
        let p = &self.params;
        let mut s = format!(
            "chaos schedule: seed {} (replay: KILN_CHAOS_SEED={}), {} builds over {} ms ({} two-image, {} evicted once, {} cancelled by their owner), {} workers, {} faults of {:?}\n",
            p.seed,
            p.seed,
            self.builds.len(),
            p.window,
            self.builds.iter().filter(|b| b.images == 2).count(),
            self.builds.iter().filter(|b| b.fail_first).count(),
            self.builds.iter().filter(|b| b.cancel_at.is_some()).count(),
            p.workers,
            self.faults.len(),
            p.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        );
        for f in &self.faults {
            let _ = write!(s, "  {:>6} ms {:<5}", f.at, f.kind.as_str());
            match (f.kind, f.forge) {
                (FaultKind::Forge, Some((forge, i))) => {
                    let _ = write!(s, " {forge:?} on {}", self.builds[i].id);
                }
                (FaultKind::Kill | FaultKind::Stop | FaultKind::Amqp, _) => {
                    let _ = write!(s, " worker {} for {} ms", f.worker, f.duration);
                }
                (FaultKind::Api, _) => {
                    let _ = write!(s, " {} for {} ms", f.status, f.duration);
                }
                (FaultKind::AmqpNode, _) => {
                    let _ = write!(s, " builds queue leader down for {} ms", f.duration);
                }
                (FaultKind::RedisFailover, _) if f.lose_writes => {
                    let _ = write!(s, " primary alone for {} ms, then killed", f.duration);
                }
                (FaultKind::RedisFailover, _) => s.push_str(" primary killed"),
                _ => {}
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, kinds: &[FaultKind]) -> Params {
        Params {
            seed,
            builds: 200,
            faults: 30,
            workers: 3,
            kinds: kinds.to_vec(),
            window: 20_000,
            lease_ttl: 2000,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(&params(7, &FaultKind::ALL), "r");
        let b = schedule(&params(7, &FaultKind::ALL), "r");
        let c = schedule(&params(8, &FaultKind::ALL), "r");
        assert_eq!(a, b);
        assert_ne!(a, c);
        // The generator itself is fixed: this value may never change, or
        // old seeds stop replaying.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn only_the_chosen_kinds_are_drawn() {
        let s = schedule(&params(1, &[FaultKind::Stop, FaultKind::Forge]), "r");
        assert_eq!(s.faults.len(), 30);
        assert!(
            s.faults
                .iter()
                .all(|f| matches!(f.kind, FaultKind::Stop | FaultKind::Forge))
        );
        for f in &s.faults {
            if f.kind == FaultKind::Stop {
                assert!(f.duration > 2000, "a stop outlasts the lease TTL");
            }
            if let Some((forge, i)) = f.forge {
                let b = &s.builds[i];
                if forge == Forge::PreCancel {
                    assert!(b.at >= f.at + 300, "a pre-cancel precedes its build");
                } else if f.at >= 300 {
                    assert!(b.at + 300 <= f.at, "a forgery follows its build");
                }
            }
        }
        assert!(schedule(&params(1, &[]), "r").faults.is_empty());
    }

    #[test]
    fn clustered_kinds_are_each_drawn_and_leave_old_seeds_alone() {
        let mut kinds = FaultKind::ALL.to_vec();
        kinds.extend(FaultKind::CLUSTERED);
        for seed in 0..20 {
            let s = schedule(&params(seed, &kinds), "r");
            for k in FaultKind::CLUSTERED {
                assert!(
                    s.faults
                        .iter()
                        .any(|f| f.kind == k && f.at <= 500 + s.params.window / 2),
                    "seed {seed}: no {k} in the first half of the publishing"
                );
            }
        }
        let s = schedule(&params(5, &[FaultKind::RedisFailover]), "r");
        assert!(s.faults.iter().any(|f| f.lose_writes));
        assert!(s.faults.iter().any(|f| !f.lose_writes));
        // A mix without them draws none.
        let plain = schedule(&params(7, &FaultKind::ALL), "r");
        assert!(plain.faults.iter().all(|f| !f.kind.is_clustered()));
    }

    #[test]
    fn faults_are_in_time_order_and_within_the_run() {
        let s = schedule(&params(3, &FaultKind::ALL), "r");
        assert!(s.faults.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(s.faults.iter().all(|f| f.at <= 500 + 20_000 + 1500));
        assert!(s.describe().contains("KILN_CHAOS_SEED=3"));
    }
}
