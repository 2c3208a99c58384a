//! The immutable part every task of the worker shares: clients, policy and
//! settings, plus the small helpers built only on them (publishing an
//! event, the build record to write).

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{BuildEvent, Phase};

use crate::amqp::{Broker, OutgoingEvent, Routed};
use crate::error::{Error, Result};
use crate::machine::{ImageProgress, Settings};
use crate::metrics::Metrics;
use crate::plan::BuildPlan;
use crate::pod::Pods;
use crate::policy::Policy;
use crate::store::{BuildRecord, CancelKeeping, ImageRecord, RecordState, Store};

/// Clients and settings: built once at start-up, never changed, shared
/// through an `Arc` (as controller-rs's `Context`). What changes while the
/// worker runs lives in [`super::Registry`].
pub struct Context {
    pub broker: Arc<Broker>,
    pub store: Store,
    pub pods: Pods,
    pub policy: Arc<Policy>,
    /// The machine's knobs and the worker's CloudEvents identity.
    pub settings: Arc<Settings>,
    /// How long finished build records stay in Redis.
    pub record_ttl: Duration,
    /// How long an attempt's log is kept after its pod is deleted (the
    /// tenant's cap may shorten it; zero keeps none).
    pub log_retention: Duration,
    /// Unacknowledged build requests the worker takes at once.
    pub prefetch: u16,
    /// How cancels for ids nobody holds are kept (TTL, per-tenant cap).
    pub kept_cancels: CancelKeeping,
    /// Renderings running at once, each on a blocking thread: a request's
    /// templates never run on the async runtime, and a burst of heavy
    /// requests cannot take every blocking thread either.
    pub render_slots: Arc<tokio::sync::Semaphore>,
    /// A request held longer than this is parked (`amqp::park`).
    pub park_after: Duration,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("worker", &self.settings.worker)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Publishes an event with `<level>.<phase>.<tenant>` (the broker
    /// client retries until it is confirmed) and counts it by its kind
    /// (`<level>.<phase>`: `/metrics` names no tenant).
    pub(super) async fn publish(&self, ev: &BuildEvent) -> Result<()> {
        let body =
            serde_json::to_vec(ev).map_err(|e| Error::amqp_caused("cannot encode the event", e))?;
        let out = OutgoingEvent {
            routing_key: ev.routing_key(),
            message_id: ev.id.clone(),
            build_id: ev.data.build_id.clone(),
            phase: ev.data.phase.as_str().to_owned(),
            traceparent: ev.traceparent.clone(),
            body,
        };
        let routed = self.broker.publish_event(&out).await?;
        self.metrics
            .event_published(&ev.kind(), routed == Routed::NoQueue);
        self.metrics.event(ev);
        Ok(())
    }

    /// The Redis record of a build as this worker sees it now.
    pub(super) fn record(
        &self,
        plan: &BuildPlan,
        state: RecordState,
        phase: Option<Phase>,
        images: &[ImageProgress],
    ) -> BuildRecord {
        BuildRecord {
            state,
            phase,
            tenant: plan.tenant.clone(),
            fingerprint: plan.fingerprint.clone(),
            namespace: plan.namespace.clone(),
            worker: self.settings.worker.clone(),
            images: images
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        ImageRecord {
                            phase: s.phase,
                            attempt: s.attempt,
                            pod: s.pod.clone(),
                            digest: s.digest.clone(),
                            reason: s.reason,
                        },
                    )
                })
                .collect(),
            updated_at: jiff::Timestamp::now(),
            history: crate::store::History::default(),
        }
    }
}
