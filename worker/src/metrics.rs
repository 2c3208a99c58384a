//! Prometheus metrics (text format on `KILN_METRICS_ADDR`). Names live in the
//! `kiln_` namespace and carry their unit.

use std::time::Duration;

use kiln_protocol::{Phase, Reason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let builds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "builds",
            "Builds that reached a terminal phase, by outcome and reason",
            builds.clone(),
        );
        let build_duration = Family::<PhaseLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1.0, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "build_duration_seconds",
            "Time from build.accepted to the terminal event",
            build_duration.clone(),
        );
        let attempt_pod_created = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "pod_create_duration_seconds",
            "Time to create (or adopt) one attempt's pod, API retries included",
            attempt_pod_created.clone(),
        );
        let accepted_latency = Histogram::new(DISPATCH_BUCKETS);
        registry.register(
            "request_to_pods_created_seconds",
            "Time from receiving a request to all first-attempt pods existing (the ack)",
            accepted_latency.clone(),
        );
        let builds_in_flight = Gauge::default();
        registry.register(
            "builds_in_flight",
            "Builds this worker drives now (each holds a lease)",
            builds_in_flight.clone(),
        );
        let lease_renewal_failures = Counter::default();
        registry.register(
            "lease_renewal_failures",
            "Batch lease renewals that failed (Redis unreachable)",
            lease_renewal_failures.clone(),
        );
        let leases_lost = Counter::default();
        registry.register(
            "leases_lost",
            "Builds whose lease another worker took over",
            leases_lost.clone(),
        );
        let adoptions = Counter::default();
        registry.register(
            "adoptions",
            "Builds adopted from their pods after their lease lapsed",
            adoptions.clone(),
        );
        let adoptions_refused = Counter::default();
        registry.register(
            "adoptions_refused",
            "Builds not adopted because their pods' plan fails the current policy",
            adoptions_refused.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "duplicate_requests",
            "Requests acked as duplicates of a known build",
            duplicates.clone(),
        );
        let events_published = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_published",
            "Events confirmed by the broker, by routing key",
            events_published.clone(),
        );
        let events_unroutable = Counter::default();
        registry.register(
            "events_unroutable",
            "Confirmed events that no subscriber queue received",
            events_unroutable.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_messages",
            "Requests rejected and dead-lettered, by reason",
            rejected.clone(),
        );
        let kube_errors = Family::<VerbLabels, Counter>::default();
        registry.register(
            "kube_api_errors",
            "Failed Kubernetes API calls, by verb",
            kube_errors.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors the worker handled (logged, retried later, or gave up on), by kind (Error::metric_label)",
            errors.clone(),
        );
        let attempt_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1.0, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "attempt_duration_seconds",
            "Duration of one image attempt (its pod), by outcome and reason, as published in events",
            attempt_duration.clone(),
        );
        let cluster_builds_in_flight = Gauge::default();
        registry.register(
            "cluster_builds_in_flight",
            "Builds with pods in the cluster, whichever worker drives them (same on every worker)",
            cluster_builds_in_flight.clone(),
        );
        let dependency_up = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the last readiness check of a dependency passed (rabbitmq, redis, kubernetes, consumer)",
            dependency_up.clone(),
        );
        registry.register(
            "worker",
            "Version of the kiln worker",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        Self {
            registry,
            builds,
            build_duration,
            attempt_pod_created,
            accepted_latency,
            builds_in_flight,
            lease_renewal_failures,
            leases_lost,
            adoptions,
            adoptions_refused,
            duplicates,
            events_published,
            events_unroutable,
            rejected,
            kube_errors,
            errors,
            attempt_duration,
            cluster_builds_in_flight,
            dependency_up,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
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
                routing_key: routing_key.to_owned(),
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
