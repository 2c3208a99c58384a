//! The compact in-memory form of a build's [`History`] while the build is in
//! flight: a worker holds one per build it drives (10,000 and more), so every
//! byte counts. What can be derived is not stored: event ids and types follow
//! from the build id, level, image, attempt and phase (docs/protocol.md, "Events"), so
//! an entry keeps them only when an event does not have the derived ones;
//! phases and reasons are enums, image names are stored once per image.
//! [`Journal::to_history`] expands it into the [`History`] the record and the
//! status page carry. Nothing here does IO.

use kiln_protocol::provenance::Envelope;
use kiln_protocol::{BuildEvent, Level, Phase, Reason, build_event_id, event_type, image_event_id};

use crate::record::{History, ImageHistory, TIMELINE_MAX, TimelineEntry, trace_id};

/// What the events of one build said, folded by [`Journal::apply`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    app: Option<Box<str>>,
    trace_id: Option<Box<str>>,
    /// Reason and message of the terminal build event.
    reason: Option<Reason>,
    message: Option<Box<str>>,
    images: Vec<Image>,
    timeline: Vec<Entry>,
    dropped: u32,
}

// `image_refs` is the record's own name for the pinned references.
#[allow(clippy::struct_field_names)]
#[derive(Debug, Clone, PartialEq)]
struct Image {
    name: Box<str>,
    digest: Option<Box<str>>,
    image_refs: Box<[Box<str>]>,
    reason: Option<Reason>,
    message: Option<Box<str>>,
    log_tail: Option<Box<str>>,
    pods: Vec<Box<str>>,
    /// Boxed: most images of most workers have none.
    provenance: Option<Box<Envelope>>,
}

/// One published event (56 bytes).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    time: jiff::Timestamp,
    message: Option<Box<str>>,
    /// Id and type, only when they are not the derived ones (a platform's
    /// events never have them: the derived id names no platform).
    odd: Option<Box<Odd>>,
    attempt: Option<u32>,
    /// Index into [`Journal::images`].
    image: Option<u16>,
    level: Level,
    phase: Phase,
    reason: Option<Reason>,
}

/// What an [`Entry`] keeps of an event whose id or type is not derived.
#[derive(Debug, Clone, PartialEq)]
struct Odd {
    id: String,
    event_type: String,
    /// The platform of a multi-platform image's pod event.
    platform: Option<Box<str>>,
}

fn boxed(s: Option<&str>) -> Option<Box<str>> {
    s.map(Into::into)
}

fn unboxed(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

/// The id and type an event of this shape gets from [`BuildEvent::new`].
fn derived(
    build: &str,
    level: Level,
    image: Option<&str>,
    attempt: Option<u32>,
    phase: Phase,
) -> (String, String) {
    let id = match (level, image) {
        (Level::Image, Some(image)) => image_event_id(build, image, attempt.unwrap_or(1), phase),
        _ => build_event_id(build, phase),
    };
    (id, event_type(level, phase))
}

impl Journal {
    /// Folds one published event in. The same event twice (a republish
    /// after a broker blip) is one timeline entry.
    pub fn apply(&mut self, ev: &BuildEvent) {
        let d = &ev.data;
        let level = ev.level();
        if self.contains(&d.build_id, level, d.phase, &ev.id) {
            return;
        }
        if let Some(app) = &d.app {
            self.app = Some(app.as_str().into());
        }
        if self.trace_id.is_none() {
            self.trace_id = ev.traceparent.as_deref().and_then(trace_id).map(Into::into);
        }
        let image = d.image.as_deref().map(|name| self.image_index(name));
        if let Some(i) = image {
            self.images[usize::from(i)].apply(ev);
        } else if d.phase.is_terminal(level) {
            self.reason = d.reason;
            self.message = boxed(d.message.as_deref());
        }
        if self.timeline.len() >= TIMELINE_MAX {
            // Keep the beginning; drop the oldest of the rest.
            self.timeline.remove(TIMELINE_MAX / 4);
            self.dropped += 1;
        }
        let want = derived(&d.build_id, level, d.image.as_deref(), d.attempt, d.phase);
        let odd = (want.0 != ev.id || want.1 != ev.event_type || d.platform.is_some()).then(|| {
            Box::new(Odd {
                id: ev.id.clone(),
                event_type: ev.event_type.clone(),
                platform: boxed(d.platform.as_deref()),
            })
        });
        // Exact growth: a Vec's first push reserves four entries, most of
        // them never used by a build's handful of events.
        self.timeline.reserve_exact(1);
        self.timeline.push(Entry {
            time: ev.time,
            message: boxed(d.message.as_deref()),
            odd,
            attempt: d.attempt,
            image,
            level,
            phase: d.phase,
            reason: d.reason,
        });
    }

    /// Whether an entry with id `id` is in the timeline; only entries of the
    /// same level and phase can have it.
    fn contains(&self, build: &str, level: Level, phase: Phase, id: &str) -> bool {
        self.timeline
            .iter()
            .filter(|e| e.level == level && e.phase == phase)
            .any(|e| self.id_and_type(build, e).0 == id)
    }

    fn image_index(&mut self, name: &str) -> u16 {
        let i = if let Some(i) = self.images.iter().position(|i| &*i.name == name) {
            i
        } else {
            self.images.reserve_exact(1);
            self.images.push(Image::new(name));
            self.images.len() - 1
        };
        // A plan has at most a few dozen images (validated at intake).
        u16::try_from(i).unwrap_or(u16::MAX)
    }

    fn id_and_type(&self, build: &str, e: &Entry) -> (String, String) {
        if let Some(odd) = &e.odd {
            return (odd.id.clone(), odd.event_type.clone());
        }
        let image = e
            .image
            .and_then(|i| self.images.get(usize::from(i)))
            .map(|i| &*i.name);
        derived(build, e.level, image, e.attempt, e.phase)
    }

    /// The full history of build `build`, as the record stores it.
    pub fn to_history(&self, build: &str) -> History {
        History {
            app: unboxed(self.app.as_deref()),
            trace_id: unboxed(self.trace_id.as_deref()),
            reason: self.reason,
            message: unboxed(self.message.as_deref()),
            images: self
                .images
                .iter()
                .map(|i| (i.name.to_string(), i.to_history()))
                .collect(),
            timeline: self.timeline.iter().map(|e| self.entry(build, e)).collect(),
            dropped: usize::try_from(self.dropped).unwrap_or(usize::MAX),
        }
    }

    fn entry(&self, build: &str, e: &Entry) -> TimelineEntry {
        let (id, event_type) = self.id_and_type(build, e);
        TimelineEntry {
            id,
            event_type,
            time: e.time,
            phase: e.phase,
            image: e
                .image
                .and_then(|i| self.images.get(usize::from(i)))
                .map(|i| i.name.to_string()),
            platform: e.odd.as_ref().and_then(|o| unboxed(o.platform.as_deref())),
            attempt: e.attempt,
            reason: e.reason,
            message: unboxed(e.message.as_deref()),
        }
    }
}

impl Image {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            digest: None,
            image_refs: Box::default(),
            reason: None,
            message: None,
            log_tail: None,
            pods: Vec::new(),
            provenance: None,
        }
    }

    fn apply(&mut self, ev: &BuildEvent) {
        let d = &ev.data;
        if let Some(pod) = &d.pod
            && !self.pods.iter().any(|p| **p == *pod.name)
        {
            self.pods.reserve_exact(1);
            self.pods.push(pod.name.as_str().into());
        }
        if d.digest.is_some() {
            self.digest = boxed(d.digest.as_deref());
            self.image_refs = d.image_refs.iter().map(|r| r.as_str().into()).collect();
            self.provenance = d.provenance.clone().map(Box::new);
        }
        if d.reason.is_some() {
            self.reason = d.reason;
            self.message = boxed(d.message.as_deref());
        }
        if d.log_tail.is_some() {
            self.log_tail = boxed(d.log_tail.as_deref());
        }
    }

    fn to_history(&self) -> ImageHistory {
        ImageHistory {
            digest: unboxed(self.digest.as_deref()),
            image_refs: self.image_refs.iter().map(ToString::to_string).collect(),
            reason: self.reason,
            message: unboxed(self.message.as_deref()),
            log_tail: unboxed(self.log_tail.as_deref()),
            pods: self.pods.iter().map(ToString::to_string).collect(),
            provenance: self.provenance.as_deref().cloned(),
        }
    }
}

#[cfg(test)]
mod tests;
