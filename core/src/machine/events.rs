//! The events the machine publishes: their envelopes, the image
//! summaries of terminal build events, and failures masked for them.

use kiln_protocol::{BuildEvent, EventData, ImageSummary, Level, Phase, PodRef, Reason};

use super::image::PodId;
use super::state::{Action, Machine, Stage};
use crate::classify::Failure;
use crate::plan::ImagePlan;

/// The failure's text goes through the masker: the message often quotes the
/// last log line (a `RUN` step that printed `Authorization: Bearer …` or a
/// secret build arg), and the values of secret-looking build args are known.
pub(super) fn fill_failure(
    d: &mut EventData,
    f: &Failure,
    log_tail: Option<String>,
    image: &ImagePlan,
) {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    d.reason = Some(f.reason);
    d.message = Some(masked_message(f, image));
    d.exit_code = f.exit_code;
    d.log_tail = log_tail.map(|l| kiln_protocol::mask_secrets(&l, &known));
}

/// The failure's message as every event that quotes it shows it: the
/// image's and the build's (`build.failed` repeats it).
pub(super) fn masked_message(f: &Failure, image: &ImagePlan) -> String {
    let known = kiln_protocol::secret_build_arg_values(&image.build_args);
    kiln_protocol::mask_text(&f.message, &known)
}

pub(super) fn image_refs(destinations: &[String], digest: Option<&str>) -> Vec<String> {
    digest.map_or_else(Vec::new, |d| {
        destinations
            .iter()
            .map(|dst| format!("{dst}@{d}"))
            .collect()
    })
}

pub(super) fn seconds_between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    let secs = b.duration_since(a).as_secs_f64();
    (secs * 1000.0).round() / 1000.0
}

/// The action that deletes pod `p` (its uid a precondition).
pub(super) fn delete(p: PodId) -> Action {
    Action::DeletePod {
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
    }
}

impl Machine {
    pub(super) fn finish(
        &mut self,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: impl FnOnce(&mut EventData),
    ) -> Vec<Action> {
        if self.stage != Stage::Active {
            return Vec::new();
        }
        self.stage = Stage::Done(phase);
        let summary = self.summary();
        let event = self.build_event(
            phase,
            wall,
            Some(Box::new(|d: &mut EventData| {
                d.images = Some(summary);
                fill(d);
            })),
        );
        let reason = event.data.reason;
        let mut out = vec![Action::Publish(Box::new(event))];
        for img in &mut self.units {
            let pods: Vec<PodId> = img
                .pod
                .take()
                .into_iter()
                .chain(img.stale.drain(..))
                .collect();
            out.extend(pods.into_iter().map(delete));
        }
        out.push(Action::Finished(phase, reason));
        out
    }

    pub(super) fn summary(&self) -> Vec<ImageSummary> {
        (0..self.plan.images.len())
            .map(|i| {
                let spec = &self.plan.images[i];
                let p = self.image_progress(i);
                ImageSummary {
                    name: spec.name.clone(),
                    phase: p.phase,
                    image_refs: image_refs(&spec.destinations, p.digest.as_deref()),
                    platform_digests: if p.phase == Phase::Succeeded {
                        self.platform_digests(i)
                    } else {
                        std::collections::BTreeMap::new()
                    },
                    digest: p.digest,
                    attempts: p.attempt,
                    reason: match p.phase {
                        Phase::Cancelled => Some(Reason::Cancelled),
                        Phase::Failed => p.reason.or(Some(Reason::Cancelled)),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    /// Event data with what every event of this build carries.
    pub(super) fn base_data(&self, phase: Phase) -> EventData {
        let mut d = EventData::for_build(self.plan.id.clone(), phase);
        d.max_attempts = Some(self.plan.max_attempts);
        d.app.clone_from(&self.plan.app);
        d.component.clone_from(&self.plan.component);
        d.labels.clone_from(&self.plan.labels);
        d.tenant = Some(self.plan.tenant.clone());
        d
    }

    /// The CloudEvent around `data`: id, type and subject follow from it.
    pub(super) fn envelope(&self, wall: jiff::Timestamp, data: EventData) -> BuildEvent {
        BuildEvent::new(
            self.settings.source.clone(),
            self.settings.worker.clone(),
            wall,
            data,
        )
        .with_traceparent(self.plan.traceparent.clone())
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn build_event(
        &self,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: Option<Box<dyn FnOnce(&mut EventData) + '_>>,
    ) -> BuildEvent {
        let mut data = self.base_data(phase);
        if phase.is_terminal(Level::Build) {
            data.started_at = Some(self.plan.accepted_at);
            data.finished_at = Some(wall);
            data.duration_seconds = Some(seconds_between(self.plan.accepted_at, wall));
        }
        if let Some(fill) = fill {
            fill(&mut data);
        }
        self.envelope(wall, data)
    }

    /// An event of unit `u`: of its image, and of its platform for a
    /// platform's pod.
    pub(super) fn image_event(
        &self,
        u: usize,
        phase: Phase,
        wall: jiff::Timestamp,
        fill: impl FnOnce(&mut EventData),
    ) -> Action {
        let img = &self.units[u];
        let spec = &self.plan.images[img.image];
        let mut data = self.base_data(phase);
        data.image = Some(spec.name.clone());
        data.platform = spec.platform_of(img.step).map(str::to_owned);
        data.attempt = Some(img.attempt);
        data.pod = img.pod.as_ref().or(img.stale.last()).map(|p| PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        });
        data.started_at = img.started_at;
        if phase.is_terminal(Level::Image) || phase == Phase::Retrying {
            data.finished_at = img.finished_at;
            if let (Some(s), Some(f)) = (img.started_at, img.finished_at) {
                data.duration_seconds = Some(seconds_between(s, f));
            }
        }
        if phase == Phase::Succeeded {
            data.digest.clone_from(&img.digest);
            data.image_refs = image_refs(&spec.destinations, img.digest.as_deref());
        }
        fill(&mut data);
        Action::Publish(Box::new(self.envelope(wall, data)))
    }
}
