//! Prometheus metrics (text format on `KILN_METRICS_ADDR`). Names live in the
//! `kiln_` namespace and carry their unit.

use std::time::Duration;

use kiln_protocol::{Phase, Reason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
    pub reason: String,
}

/// The terminal phase alone: a build's duration is split by how it ended
/// (a failure after 2 s and a success after 20 min are different stories),
/// not by reason, to keep the histogram's series few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub outcome: &'static str,
}

/// Bucket edges of the request-to-pods (dispatch) latency, in seconds. 50 ms
/// is the objective, so it must be an edge: a quantile between two
/// exponential edges (32 ms, 64 ms) cannot say whether the objective holds.
/// 1 s and 60 s are the edges the alert rules read.
const DISPATCH_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The first two words of an event's routing key (`build.succeeded` of
/// `build.succeeded.<tenant>`): `/metrics` is open to monitoring and carries
/// no tenant names, and one series per tenant would also grow without bound.
pub fn key_without_tenant(routing_key: &str) -> &str {
    match routing_key.match_indices('.').nth(1) {
        Some((i, _)) => &routing_key[..i],
        None => routing_key,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub routing_key: String,
}

/// Every metric of the worker.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub builds: Family<OutcomeLabels, Counter>,
    pub build_duration: Family<PhaseLabels, Histogram>,
    pub attempt_pod_created: Histogram,
    pub accepted_latency: Histogram,
    pub builds_in_flight: Gauge,
    pub lease_renewal_failures: Counter,
    pub leases_lost: Counter,
    pub adoptions: Counter,
    pub adoptions_refused: Counter,
    pub duplicates: Counter,
    pub events_published: Family<EventLabels, Counter>,
    pub events_unroutable: Counter,
    pub rejected: Family<ReasonLabels, Counter>,
    pub kube_errors: Family<VerbLabels, Counter>,
    pub errors: Family<KindLabels, Counter>,
    pub attempt_duration: Family<OutcomeLabels, Histogram>,
    pub cluster_builds_in_flight: Gauge,
    pub dependency_up: Family<CheckLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Name (after `kiln_`) and help text of every metric, in the order they
/// are registered and so exposed.
mod about {
    type About = (&'static str, &'static str);
    pub const BUILDS: About = (
        "builds",
        "Builds that reached a terminal phase, by outcome and reason",
    );
    pub const BUILD_DURATION: About = (
        "build_duration_seconds",
        "Time from build.accepted to the terminal event",
    );
    pub const POD_CREATE: About = (
        "pod_create_duration_seconds",
        "Time to create (or adopt) one attempt's pod, API retries included",
    );
    pub const ACCEPTED_LATENCY: About = (
        "request_to_pods_created_seconds",
        "Time from receiving a request to all first-attempt pods existing (the ack)",
    );
    pub const BUILDS_IN_FLIGHT: About = (
        "builds_in_flight",
        "Builds this worker drives now (each holds a lease)",
    );
    pub const RENEWAL_FAILURES: About = (
        "lease_renewal_failures",
        "Batch lease renewals that failed (Redis unreachable)",
    );
    pub const LEASES_LOST: About = ("leases_lost", "Builds whose lease another worker took over");
    pub const ADOPTIONS: About = (
        "adoptions",
        "Builds adopted from their pods after their lease lapsed",
    );
    pub const ADOPTIONS_REFUSED: About = (
        "adoptions_refused",
        "Builds not adopted because their pods' plan fails the current policy",
    );
    pub const DUPLICATES: About = (
        "duplicate_requests",
        "Requests acked as duplicates of a known build",
    );
    pub const EVENTS_PUBLISHED: About = (
        "events_published",
        "Events confirmed by the broker, by routing key",
    );
    pub const EVENTS_UNROUTABLE: About = (
        "events_unroutable",
        "Confirmed events that no subscriber queue received",
    );
    pub const REJECTED: About = (
        "rejected_messages",
        "Requests rejected and dead-lettered, by reason",
    );
    pub const KUBE_ERRORS: About = ("kube_api_errors", "Failed Kubernetes API calls, by verb");
    pub const ERRORS: About = (
        "errors",
        "Errors the worker handled (logged, retried later, or gave up on), by kind (Error::metric_label)",
    );
    pub const ATTEMPT_DURATION: About = (
        "attempt_duration_seconds",
        "Duration of one image attempt (its pod), by outcome and reason, as published in events",
    );
    pub const CLUSTER_IN_FLIGHT: About = (
        "cluster_builds_in_flight",
        "Builds with pods in the cluster, whichever worker drives them (same on every worker)",
    );
    pub const DEPENDENCY_UP: About = (
        "dependency_up",
        "1 when the last readiness check of a dependency passed (rabbitmq, redis, kubernetes, consumer)",
    );
}

/// Registers `metric` under `about` and hands it back for the struct.
fn add<M: Metric + Clone>(
    registry: &mut Registry,
    (name, help): (&'static str, &'static str),
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// `registry` with the `kiln_worker_info` metric: the worker's version.
fn with_version(mut registry: Registry) -> Registry {
    registry.register(
        "worker",
        "Version of the kiln worker",
        prometheus_client::metrics::info::Info::new(vec![(
            "version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    );
    registry
}

/// A family of histograms of durations from 1 s to about 9 h.
fn seconds_family<L>() -> Family<L, Histogram>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(
        (|| Histogram::new(exponential_buckets(1.0, 2.0, 16))) as fn() -> Histogram,
    )
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("kiln");
        Self {
            builds: add(&mut r, about::BUILDS, Family::default()),
            build_duration: add(&mut r, about::BUILD_DURATION, seconds_family()),
            attempt_pod_created: add(
                &mut r,
                about::POD_CREATE,
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            accepted_latency: add(
                &mut r,
                about::ACCEPTED_LATENCY,
                Histogram::new(DISPATCH_BUCKETS),
            ),
            builds_in_flight: add(&mut r, about::BUILDS_IN_FLIGHT, Gauge::default()),
            lease_renewal_failures: add(&mut r, about::RENEWAL_FAILURES, Counter::default()),
            leases_lost: add(&mut r, about::LEASES_LOST, Counter::default()),
            adoptions: add(&mut r, about::ADOPTIONS, Counter::default()),
            adoptions_refused: add(&mut r, about::ADOPTIONS_REFUSED, Counter::default()),
            duplicates: add(&mut r, about::DUPLICATES, Counter::default()),
            events_published: add(&mut r, about::EVENTS_PUBLISHED, Family::default()),
            events_unroutable: add(&mut r, about::EVENTS_UNROUTABLE, Counter::default()),
            rejected: add(&mut r, about::REJECTED, Family::default()),
            kube_errors: add(&mut r, about::KUBE_ERRORS, Family::default()),
            errors: add(&mut r, about::ERRORS, Family::default()),
            attempt_duration: add(&mut r, about::ATTEMPT_DURATION, seconds_family()),
            cluster_builds_in_flight: add(&mut r, about::CLUSTER_IN_FLIGHT, Gauge::default()),
            dependency_up: add(&mut r, about::DEPENDENCY_UP, Family::default()),
            // Last: the fields above borrow `r` one after the other.
            registry: with_version(r),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn build_finished(&self, phase: Phase, reason: Option<Reason>, seconds: f64) {
        self.builds
            .get_or_create(&OutcomeLabels {
                outcome: phase.as_str().to_owned(),
                reason: reason.map(|r| r.to_string()).unwrap_or_default(),
            })
            .inc();
        if seconds > 0.0 {
            self.build_duration
                .get_or_create(&PhaseLabels {
                    outcome: phase.as_str(),
                })
                .observe(seconds);
        }
    }

    /// An image reached a terminal or retrying phase after `seconds` of pod
    /// time (the event's `durationSeconds`).
    pub fn attempt_finished(&self, phase: Phase, reason: Option<Reason>, seconds: f64) {
        self.attempt_duration
            .get_or_create(&OutcomeLabels {
                outcome: phase.as_str().to_owned(),
                reason: reason.map(|r| r.to_string()).unwrap_or_default(),
            })
            .observe(seconds.max(0.0));
    }

    /// Records the result of one readiness check.
    pub fn dependency(&self, check: &str, up: bool) {
        self.dependency_up
            .get_or_create(&CheckLabels {
                check: check.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Records what a published event says (attempt durations).
    pub fn event(&self, ev: &kiln_protocol::BuildEvent) {
        if ev.data.image.is_some()
            && let Some(seconds) = ev.data.duration_seconds
        {
            self.attempt_finished(ev.data.phase, ev.data.reason, seconds);
        }
    }

    pub fn event_published(&self, routing_key: &str, unroutable: bool) {
        self.events_published
            .get_or_create(&EventLabels {
                routing_key: key_without_tenant(routing_key).to_owned(),
            })
            .inc();
        if unroutable {
            self.events_unroutable.inc();
        }
    }

    pub fn rejected(&self, reason: Reason) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub fn accepted_latency(&self, d: Duration) {
        self.accepted_latency.observe(d.as_secs_f64());
    }

    pub fn pod_created(&self, d: Duration) {
        self.attempt_pod_created.observe(d.as_secs_f64());
    }

    pub fn kube_error(&self, verb: &str) {
        self.kube_errors
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// Counts an error where it is handled (logged and retried later, or
    /// given up on), once per occurrence.
    pub fn error(&self, e: &crate::Error) {
        self.errors
            .get_or_create(&KindLabels {
                kind: e.metric_label(),
            })
            .inc();
    }

    pub fn lease_lost(&self) {
        self.leases_lost.inc();
    }

    pub fn lease_renewal_failed(&self) {
        self.lease_renewal_failures.inc();
    }

    pub fn adopted(&self) {
        self.adoptions.inc();
    }

    pub fn adoption_refused(&self) {
        self.adoptions_refused.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_prefix_and_their_unit() {
        let m = Metrics::new();
        m.attempt_finished(Phase::Failed, Some(Reason::OOMKilled), 12.5);
        m.dependency("redis", false);
        m.build_finished(Phase::Succeeded, None, 30.0);
        m.error(&crate::Error::LeaseLost("b".into()));
        m.accepted_latency(Duration::from_millis(40));
        let text = m.encode();
        for want in [
            "kiln_attempt_duration_seconds_bucket{",
            r#"outcome="failed",reason="OOMKilled""#,
            r#"kiln_dependency_up{check="redis"} 0"#,
            r#"kiln_build_duration_seconds_count{outcome="succeeded"} 1"#,
            r#"kiln_request_to_pods_created_seconds_bucket{le="0.05"} 1"#,
            r#"kiln_worker_info{version=""#,
            "kiln_builds_in_flight 0",
            r#"kiln_errors_total{kind="lease_lost"} 1"#,
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}

#[cfg(test)]
mod tenant_free_tests {
    use super::key_without_tenant;

    #[test]
    fn event_series_name_no_tenant() {
        assert_eq!(
            key_without_tenant("build.succeeded.shop"),
            "build.succeeded"
        );
        assert_eq!(key_without_tenant("request.rejected._"), "request.rejected");
        assert_eq!(key_without_tenant("build.succeeded"), "build.succeeded");
        assert_eq!(key_without_tenant("dead"), "dead");
    }
}
