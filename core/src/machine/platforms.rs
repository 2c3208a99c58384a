//! Images with `platforms`: which unit a pod or an input belongs to, the
//! publish step that waits for every platform, what a publish pod's end
//! means, and the image as a whole (its progress, its end, its
//! `image.succeeded` with the index digest and `platformDigests`).

use std::collections::BTreeMap;

use kiln_protocol::{Phase, Reason};

use super::image::ImgState;
use super::state::{Action, ImageProgress, Machine};
use crate::classify::{Observation, PodPhase, PodView, classify, classify_publish_message};
use crate::plan::Step;

/// What a publish pod says: success as any pod (the index digest is its
/// termination message, `sha256:<hex>`); a failure as its one-line
/// termination message classifies it (`kiln publish failed (<class>):
/// <detail>`), else as any pod's failure (OOM, eviction, no message).
pub(super) fn classify_publish(pod: &PodView) -> Observation {
    let observation = classify(pod);
    if let Observation::Failed(f) = &observation
        && pod.phase == Some(PodPhase::Failed)
        && let Some(message) = pod.terminated.as_ref().and_then(|t| t.message.as_deref())
        && let Some(mut publish) = classify_publish_message(message)
    {
        publish.exit_code = f.exit_code;
        return Observation::Failed(publish);
    }
    observation
}

impl Machine {
    /// The unit of `step` of image `image`.
    pub(super) fn unit_index(&self, image: usize, step: Step) -> Option<usize> {
        self.units
            .iter()
            .position(|u| u.image == image && u.step == step)
    }

    /// The unit a pod's labels name (image, platform, publish step). Only
    /// routing: what the pod says counts only if it is the unit's own pod
    /// (its uid), checked by the caller.
    pub(super) fn unit_of(&self, pod: &PodView) -> Option<usize> {
        let i = self.plan.image_index(&pod.image)?;
        let step = self.plan.images[i].step_of(pod.platform.as_deref(), pod.publish)?;
        self.unit_index(i, step)
    }

    fn units_of(&self, i: usize) -> impl Iterator<Item = &super::image::Img> {
        self.units.iter().filter(move |u| u.image == i)
    }

    /// The unit that speaks for image `i` as a whole: its own pod, or its
    /// publish step.
    fn last_unit(&self, i: usize) -> Option<usize> {
        self.units.iter().rposition(|u| u.image == i)
    }

    /// Whether image `i` has ended (its terminal event is out or asked for).
    pub(super) fn image_over(&self, i: usize) -> bool {
        self.units_of(i)
            .any(|u| matches!(u.state, ImgState::Failed | ImgState::Cancelled))
            || self
                .last_unit(i)
                .is_some_and(|u| self.units[u].state == ImgState::Succeeded)
    }

    /// Starts the publish step of every image whose platforms all
    /// succeeded.
    pub(super) fn unblock_publish(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for u in 0..self.units.len() {
            let img = &self.units[u];
            if img.state != ImgState::Blocked {
                continue;
            }
            let i = img.image;
            let ready = self
                .units_of(i)
                .filter(|x| matches!(x.step, Step::Platform(_)))
                .all(|x| x.state == ImgState::Succeeded);
            if ready {
                let img = &mut self.units[u];
                img.state = ImgState::Creating;
                out.push(Action::CreatePod {
                    image: i,
                    step: Step::Publish,
                    attempt: img.attempt,
                });
            }
        }
        out
    }

    /// Unit `u` succeeded (its state and digest set). An image's own pod
    /// or its publish step ends the image: `image.succeeded`, with the
    /// provenance of the digest. A platform's pod says nothing yet: its
    /// digest goes into the image's `platformDigests`.
    pub(super) fn unit_succeeded(
        &mut self,
        u: usize,
        pod: &PodView,
        wall: jiff::Timestamp,
    ) -> Vec<Action> {
        let img = &self.units[u];
        let i = img.image;
        if matches!(img.step, Step::Platform(_)) {
            return Vec::new();
        }
        let provenance = match (&self.settings.provenance, &img.digest) {
            (Some(a), Some(digest)) => a.attest(&self.plan, i, img.attempt, digest, pod),
            _ => None,
        };
        let platform_digests = self.platform_digests(i);
        vec![self.image_event(u, Phase::Succeeded, wall, |d| {
            d.provenance = provenance;
            d.platform_digests = platform_digests;
        })]
    }

    /// Each platform's manifest digest of image `i` so far (empty without
    /// platforms): what the publish step assembles.
    pub fn platform_digests(&self, i: usize) -> BTreeMap<String, String> {
        let spec = &self.plan.images[i];
        self.units_of(i)
            .filter_map(|u| Some((spec.platform_of(u.step)?.to_owned(), u.digest.clone()?)))
            .collect()
    }

    /// The signed statement of image `i`'s platform manifests that its
    /// publish step (attempt `attempt`) attaches as a referrer; `None`
    /// without a signing key or before every platform has its digest.
    pub fn publish_attachment(
        &self,
        i: usize,
        attempt: u32,
    ) -> Option<kiln_protocol::provenance::Envelope> {
        let attestor = self.settings.provenance.as_ref()?;
        let digests = self.platform_digests(i);
        if digests.len() != self.plan.images.get(i)?.platforms.len() {
            return None;
        }
        attestor.attest_platforms(&self.plan, i, attempt, &digests)
    }

    /// Where image `i` stands: its own pod's state; for an image with
    /// `platforms`, the publish step's once it started, before that what
    /// its platforms do (the least advanced wins: waiting, retrying, then
    /// running), and the image's end from whichever unit ended it.
    pub(super) fn image_progress(&self, i: usize) -> ImageProgress {
        let name = self.plan.images[i].name.clone();
        let last = self.last_unit(i).map(|u| &self.units[u]);
        // A failed platform ended the image, the siblings it stopped did not.
        let ended = self
            .units_of(i)
            .find(|u| u.state == ImgState::Failed)
            .or_else(|| self.units_of(i).find(|u| u.state == ImgState::Cancelled));
        let platforms: Vec<_> = self
            .units_of(i)
            .filter(|u| matches!(u.step, Step::Platform(_)))
            .collect();
        let attempt = platforms
            .iter()
            .map(|u| u.attempt)
            .max()
            .or(last.map(|u| u.attempt))
            .unwrap_or(0);
        let speaker = match (ended, last) {
            (Some(u), _) => Some(u),
            (None, Some(u)) if u.state != ImgState::Blocked => Some(u),
            _ => None,
        };
        if let Some(u) = speaker {
            return ImageProgress {
                name,
                phase: u.state.phase(),
                attempt: if u.step == Step::Publish {
                    attempt
                } else {
                    u.attempt
                },
                pod: u.pod.as_ref().map(|p| p.name.clone()),
                digest: u.digest.clone().filter(|_| u.state == ImgState::Succeeded),
                reason: match u.state {
                    ImgState::Waiting => Some(Reason::QuotaExceeded),
                    ImgState::Retrying | ImgState::Failed => u.failure.as_ref().map(|f| f.reason),
                    _ => None,
                },
            };
        }
        let has = |s: ImgState| platforms.iter().copied().find(|u| u.state == s);
        let lead = has(ImgState::Waiting)
            .or_else(|| has(ImgState::Retrying))
            .or_else(|| has(ImgState::Running))
            .or_else(|| has(ImgState::Succeeded))
            .or(platforms.first().copied());
        let phase = match lead.map(|u| u.state) {
            Some(ImgState::Succeeded) => Phase::Running,
            Some(s) => s.phase(),
            None => Phase::Scheduled,
        };
        ImageProgress {
            name,
            phase,
            attempt,
            pod: lead.and_then(|u| u.pod.as_ref()).map(|p| p.name.clone()),
            digest: None,
            reason: lead.and_then(|u| match u.state {
                ImgState::Waiting => Some(Reason::QuotaExceeded),
                ImgState::Retrying => u.failure.as_ref().map(|f| f.reason),
                _ => None,
            }),
        }
    }
}
