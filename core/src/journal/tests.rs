use kiln_protocol::{BuildEvent, EventData, Phase, PodRef, Reason};

use super::{Entry, Journal};
use crate::record::TIMELINE_MAX;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// An event as the worker publishes it: id and type derived.
fn published(data: EventData) -> BuildEvent {
    BuildEvent::new("urn:kiln:test", "w", jiff::Timestamp::UNIX_EPOCH, data)
        .with_traceparent(Some(TRACEPARENT.into()))
}

fn failed_image() -> BuildEvent {
    let mut d = EventData::for_image("b", "api", 1, Phase::Failed);
    d.reason = Some(Reason::BuildError);
    d.message = Some("exit 1".into());
    d.log_tail = Some("error: no rule".into());
    d.pod = Some(PodRef {
        namespace: "n".into(),
        name: "kiln-b-api-1".into(),
    });
    published(d)
}

#[test]
fn a_journal_folds_events_once_into_the_history() {
    let mut j = Journal::default();
    let failed = failed_image();
    let mut d = EventData::for_build("b", Phase::Failed);
    d.reason = Some(Reason::BuildError);
    d.message = Some("api failed".into());
    d.app = Some("shop".into());
    let done = published(d);
    for ev in [&failed, &failed, &done] {
        j.apply(ev);
    }
    let h = j.to_history("b");
    assert_eq!(h.timeline.len(), 2, "a republished event is one entry");
    assert_eq!(
        h.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(h.app.as_deref(), Some("shop"));
    assert_eq!(h.reason, Some(Reason::BuildError));
    assert_eq!(h.message.as_deref(), Some("api failed"));
    let api = &h.images["api"];
    assert_eq!(api.log_tail.as_deref(), Some("error: no rule"));
    assert_eq!(api.reason, Some(Reason::BuildError));
    assert_eq!(api.message.as_deref(), Some("exit 1"));
    assert_eq!(api.pods, ["kiln-b-api-1"]);
    for (entry, ev) in h.timeline.iter().zip([&failed, &done]) {
        assert_eq!(entry.id, ev.id, "the derived id comes back");
        assert_eq!(
            entry.event_type, ev.event_type,
            "the derived type comes back"
        );
        assert_eq!(entry.phase, ev.data.phase);
        assert_eq!(entry.image, ev.data.image);
        assert_eq!(entry.attempt, ev.data.attempt);
        assert_eq!(entry.reason, Some(Reason::BuildError));
        assert_eq!(entry.message, ev.data.message);
    }
}

#[test]
fn digests_and_pinned_references_are_kept_per_image() {
    let mut j = Journal::default();
    let mut d = EventData::for_image("b", "web", 2, Phase::Succeeded);
    d.digest = Some("sha256:abc".into());
    d.image_refs = vec!["r/web@sha256:abc".into()];
    j.apply(&published(d));
    let h = j.to_history("b");
    let web = &h.images["web"];
    assert_eq!(web.digest.as_deref(), Some("sha256:abc"));
    assert_eq!(web.image_refs, ["r/web@sha256:abc"]);
    assert_eq!(h.timeline[0].id, "b/web/2/succeeded");
    assert_eq!(h.reason, None, "an image event is not the build's outcome");
}

#[test]
fn ids_and_types_that_are_not_derived_are_kept_as_they_were() {
    let mut j = Journal::default();
    let mut odd = published(EventData::for_build("b", Phase::Rejected));
    odd.id = "b/request/0123456789abcdef".into();
    odd.event_type = "dev.kiln.request.rejected.v1".into();
    j.apply(&odd);
    j.apply(&odd);
    let rejected = published(EventData::for_build("b", Phase::Rejected));
    j.apply(&rejected);
    let h = j.to_history("b");
    let ids: Vec<_> = h
        .timeline
        .iter()
        .map(|e| (e.id.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("b/request/0123456789abcdef", "dev.kiln.request.rejected.v1"),
            ("b/rejected", "dev.kiln.build.rejected.v1"),
        ],
        "same level and phase, different ids: two entries"
    );
}

#[test]
fn the_timeline_stays_bounded_and_keeps_its_beginning() {
    let mut j = Journal::default();
    j.apply(&failed_image());
    for i in 0..3 * TIMELINE_MAX {
        let attempt = u32::try_from(i).unwrap_or(u32::MAX) + 2;
        j.apply(&published(EventData::for_image(
            "b",
            "api",
            attempt,
            Phase::Retrying,
        )));
    }
    let h = j.to_history("b");
    assert_eq!(h.timeline.len(), TIMELINE_MAX);
    assert_eq!(h.timeline[0].id, "b/api/1/failed", "the beginning is kept");
    assert_eq!(
        h.timeline.last().map(|e| e.id.as_str()),
        Some(format!("b/api/{}/retrying", 3 * TIMELINE_MAX + 1).as_str())
    );
    assert_eq!(h.dropped, 3 * TIMELINE_MAX + 1 - TIMELINE_MAX);
    assert_eq!(h.images.len(), 1, "one image, stored once");
}

#[test]
fn an_entry_is_small() {
    // 10,000 builds in flight, a few entries each: the per-build budget.
    assert!(
        std::mem::size_of::<Entry>() <= 56,
        "{}",
        std::mem::size_of::<Entry>()
    );
    assert!(
        std::mem::size_of::<Journal>() <= 104,
        "{}",
        std::mem::size_of::<Journal>()
    );
}

/// A multi-platform image's events: each platform's keeps its platform
/// (and its own id), so two platforms' attempt 1 stay two entries.
#[test]
fn platform_events_keep_their_platform() {
    let mut j = Journal::default();
    let mut evs = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let mut d = EventData::for_image("b", "api", 1, Phase::Running);
        d.platform = Some(p.to_owned());
        evs.push(published(d));
    }
    let publish = published(EventData::for_image("b", "api", 1, Phase::Running));
    for ev in evs.iter().chain([&publish, &evs[0]]) {
        j.apply(ev);
    }
    let h = j.to_history("b");
    let got: Vec<(Option<&str>, &str)> = h
        .timeline
        .iter()
        .map(|e| (e.platform.as_deref(), e.id.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("linux/amd64"), evs[0].id.as_str()),
            (Some("linux/arm64"), evs[1].id.as_str()),
            (None, publish.id.as_str()),
        ]
    );
    assert_ne!(evs[0].id, evs[1].id);
}
