//! The build record Redis keeps under `P build:<id>`: its state, owner,
//! images and the [`History`] the status page shows. The schema only; the
//! worker's store reads and writes it. Records written by older workers must
//! keep parsing, so every field added later has a default.

use std::collections::BTreeMap;

use kiln_protocol::{Phase, Reason};
use serde::{Deserialize, Deserializer, Serialize};

/// Timeline entries kept per record: the first few (accepted, the first
/// attempts) and the latest, so a build retrying for hours stays bounded.
pub const TIMELINE_MAX: usize = 100;

/// Where a build stands, as far as Redis remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordState {
    /// A worker claimed the request and is creating its pods.
    Claimed,
    /// Every first-attempt pod exists and `build.accepted` is confirmed.
    Accepted,
    /// The terminal `build.*` event is confirmed.
    Finished,
}

impl RecordState {
    /// A state as the record spells it (`claimed`, `accepted`, `finished`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "claimed" => Some(Self::Claimed),
            "accepted" => Some(Self::Accepted),
            "finished" => Some(Self::Finished),
            _ => None,
        }
    }
}

/// The short-lived record of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub state: RecordState,
    /// Terminal phase once finished (`succeeded`, `failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    pub tenant: String,
    /// The request's fingerprint (see [`crate::plan::BuildPlan::fingerprint`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    pub namespace: String,
    pub worker: String,
    /// Per image: phase, attempt and pod name.
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
    pub updated_at: jiff::Timestamp,
    /// What the build's events said, for the status page (absent in records
    /// of older workers).
    #[serde(default)]
    pub history: History,
}

/// What the events of a build said (folded in memory by
/// [`crate::journal::Journal`] while the build runs): what a
/// person looks for on the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The W3C trace id of the request's `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Reason and message of the terminal build event.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_reason"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per image: the latest digest, references, failure and log tail.
    #[serde(default)]
    pub images: BTreeMap<String, ImageHistory>,
    /// Every event published, oldest first, at most [`TIMELINE_MAX`].
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    /// Entries dropped from the middle of the timeline to bound it.
    #[serde(default)]
    pub dropped: usize,
}

impl History {
    /// Whether image `image` was built per platform (its timeline has a
    /// platform's events): its pods are not one per attempt, so the build
    /// page sends the reader to `kiln logs --platform` instead of linking
    /// each pod's kept log by its position.
    pub fn has_platforms(&self, image: &str) -> bool {
        self.timeline
            .iter()
            .any(|e| e.image.as_deref() == Some(image) && e.platform.is_some())
    }
}

/// One image's details in a [`History`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageHistory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Destinations pinned to the digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_refs: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_reason"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The masked log tail of the latest failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// Every pod the image ran in, one per attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The signed provenance of `digest` (`kiln provenance` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<kiln_protocol::provenance::Envelope>,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: jiff::Timestamp,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The platform of a multi-platform image's pod event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_reason"
    )]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A stored reason, `None` when this version does not know it (a record of
/// a newer worker): one unknown reason must not make a whole record, and
/// with it the build's owner, unreadable.
fn known_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    Ok(text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok()))
}

/// The largest record Redis keeps, in bytes of JSON: log tails and messages
/// are bounded one by one, this bounds their sum and the timeline's. A page
/// or a `kiln status` reads one record, so this bounds what each costs.
pub const RECORD_MAX_BYTES: usize = 64 * 1024;

/// What a text keeps when a record over [`RECORD_MAX_BYTES`] has no
/// timeline left to drop.
const TEXT_KEPT: usize = 1024;

impl BuildRecord {
    /// Shrinks the record to at most `max` bytes of JSON: first the oldest
    /// timeline entries go (counted in `history.dropped`), then messages
    /// and log tails keep their last [`TEXT_KEPT`] bytes, then log tails go.
    /// Returns the JSON it ends with.
    pub fn capped_json(&mut self, max: usize) -> serde_json::Result<String> {
        let mut json = serde_json::to_string(self)?;
        while json.len() > max && !self.history.timeline.is_empty() {
            // Drop in proportion to the excess (at least one entry), so a
            // record far over the cap takes few rounds.
            let n = self.history.timeline.len();
            let excess = json.len() - max;
            let each = json.len() / n.max(1);
            let k = (excess / each.max(1) + 1).min(n);
            self.history.timeline.drain(..k);
            self.history.dropped = self.history.dropped.saturating_add(k);
            json = serde_json::to_string(self)?;
        }
        if json.len() > max {
            let h = &mut self.history;
            let texts = h.message.iter_mut().chain(
                h.images
                    .values_mut()
                    .flat_map(|i| i.message.iter_mut().chain(i.log_tail.iter_mut())),
            );
            for t in texts {
                keep_tail(t, TEXT_KEPT);
            }
            json = serde_json::to_string(self)?;
        }
        if json.len() > max {
            for i in self.history.images.values_mut() {
                i.log_tail = None;
            }
            json = serde_json::to_string(self)?;
        }
        Ok(json)
    }

    /// The record's line in the builds list (`P sum:<id>`).
    pub fn summary(&self, id: &str) -> BuildSummary {
        let finished = self.state == RecordState::Finished;
        BuildSummary {
            id: id.to_owned(),
            tenant: self.tenant.clone(),
            app: self.history.app.clone(),
            phase: match (self.phase, finished) {
                (Some(p), true) => p.as_str().to_owned(),
                _ => "running".to_owned(),
            },
            reason: self
                .history
                .reason
                .or_else(|| self.history.images.values().find_map(|i| i.reason)),
            images: self.images.len(),
            worker: self.worker.clone(),
            started: self.history.timeline.first().map(|e| e.time),
            finished: finished.then_some(self.updated_at),
            updated_at: self.updated_at,
        }
    }
}

/// Keeps the last `max` bytes of `t` (at a character boundary), saying how
/// many went.
fn keep_tail(t: &mut String, max: usize) {
    if t.len() <= max {
        return;
    }
    let mut cut = t.len() - max;
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    *t = format!("[{cut} bytes left out]\n{}", &t[cut..]);
}

/// One build in the list: what the status page's list and `/api/builds`
/// show, no log tails and no messages (a few hundred bytes, whatever the
/// build's record holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildSummary {
    pub id: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// A terminal phase, or `running`.
    pub phase: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_reason"
    )]
    pub reason: Option<Reason>,
    pub images: usize,
    pub worker: String,
    /// The first event's time (`build.accepted`), if the timeline kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<jiff::Timestamp>,
    pub updated_at: jiff::Timestamp,
}

/// The trace id (second field) of a W3C `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// One image in a [`BuildRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub phase: Phase,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why the image waits (`QuotaExceeded`) or why its last attempt failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_reason"
    )]
    pub reason: Option<Reason>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_state_parses_as_the_record_spells_it() {
        for state in [
            RecordState::Claimed,
            RecordState::Accepted,
            RecordState::Finished,
        ] {
            let spelled = serde_json::to_value(state).unwrap();
            assert_eq!(RecordState::parse(spelled.as_str().unwrap()), Some(state));
        }
        assert_eq!(RecordState::parse("pods"), None);
    }

    /// A record as workers before `Phase` and `Reason` were typed wrote it
    /// (phases and reasons as their `as_str` strings).
    const OLD_RECORD: &str = r#"{"state":"finished","phase":"failed","tenant":"shop","fingerprint":"f1","namespace":"builds","worker":"w1","images":{"api":{"phase":"failed","attempt":2,"pod":"kiln-b-api-2","reason":"OOMKilled"},"web":{"phase":"waiting","attempt":1,"reason":"QuotaExceeded"}},"updatedAt":"2026-12-01T10:00:00Z","history":{"traceId":"0af7651916cd43dd8448eb211c80319c","reason":"BuildError","message":"image api failed","images":{"api":{"reason":"OOMKilled","logTail":"killed","pods":["kiln-b-api-1","kiln-b-api-2"]}},"timeline":[{"id":"b/accepted","type":"dev.kiln.build.accepted","time":"2026-12-01T09:59:00Z","phase":"accepted"},{"id":"b/api/2/failed","type":"dev.kiln.image.failed","time":"2026-12-01T10:00:00Z","phase":"failed","image":"api","attempt":2,"reason":"OOMKilled","message":"out of memory"}],"dropped":0}}"#;

    #[test]
    fn records_of_older_workers_parse_into_phases_and_reasons_and_write_back_the_same() {
        let r: BuildRecord = serde_json::from_str(OLD_RECORD).unwrap();
        assert_eq!(r.phase, Some(Phase::Failed));
        assert_eq!(r.images["api"].phase, Phase::Failed);
        assert_eq!(r.images["api"].reason, Some(Reason::OOMKilled));
        assert_eq!(r.images["web"].phase, Phase::Waiting);
        assert_eq!(r.images["web"].reason, Some(Reason::QuotaExceeded));
        assert_eq!(r.history.reason, Some(Reason::BuildError));
        assert_eq!(r.history.images["api"].reason, Some(Reason::OOMKilled));
        assert_eq!(r.history.timeline[1].phase, Phase::Failed);
        assert_eq!(r.history.timeline[1].reason, Some(Reason::OOMKilled));
        let written: serde_json::Value = serde_json::to_value(&r).unwrap();
        let old: serde_json::Value = serde_json::from_str(OLD_RECORD).unwrap();
        assert_eq!(
            written, old,
            "a record reads back as the older workers wrote it"
        );
    }

    #[test]
    fn every_reason_is_stored_as_the_string_older_workers_wrote() {
        for reason in Reason::ALL {
            let stored = serde_json::to_value(reason).unwrap();
            assert_eq!(stored.as_str(), Some(reason.as_str()));
        }
        for phase in Phase::ALL {
            let stored = serde_json::to_value(phase).unwrap();
            assert_eq!(stored.as_str(), Some(phase.as_str()));
        }
    }

    #[test]
    fn a_reason_this_version_does_not_know_leaves_the_record_readable() {
        let newer = OLD_RECORD.replace(r#""reason":"BuildError""#, r#""reason":"SomethingNew""#);
        let r: BuildRecord = serde_json::from_str(&newer).unwrap();
        assert_eq!(r.history.reason, None);
        assert_eq!(r.tenant, "shop");
    }

    #[test]
    fn a_record_is_capped_oldest_timeline_first_then_texts() {
        let mut r: BuildRecord = serde_json::from_str(OLD_RECORD).unwrap();
        let entry = r.history.timeline[1].clone();
        for i in 0..2000 {
            let mut e = entry.clone();
            e.id = format!("e{i}");
            e.message = Some("m".repeat(200));
            r.history.timeline.push(e);
        }
        let last = r.history.timeline.last().unwrap().id.clone();
        let json = r.clone().capped_json(RECORD_MAX_BYTES).unwrap();
        let capped: BuildRecord = serde_json::from_str(&json).unwrap();
        assert!(json.len() <= RECORD_MAX_BYTES, "{}", json.len());
        assert_eq!(
            capped.history.timeline.last().unwrap().id,
            last,
            "newest kept"
        );
        assert_eq!(
            capped.history.dropped + capped.history.timeline.len(),
            2002,
            "every dropped entry counted"
        );
        assert_eq!(
            capped.history.images["api"].log_tail.as_deref(),
            Some("killed")
        );

        // 32 images with 8 KiB log tails: the texts give way.
        let mut big: BuildRecord = serde_json::from_str(OLD_RECORD).unwrap();
        for i in 0..32 {
            big.history.images.insert(
                format!("img{i}"),
                ImageHistory {
                    log_tail: Some(format!("{}END", "é".repeat(4096))),
                    ..ImageHistory::default()
                },
            );
        }
        let json = big.capped_json(RECORD_MAX_BYTES).unwrap();
        assert!(json.len() <= RECORD_MAX_BYTES, "{}", json.len());
        let capped: BuildRecord = serde_json::from_str(&json).unwrap();
        let tail = capped.history.images["img7"].log_tail.clone().unwrap();
        assert!(tail.ends_with("END") && tail.starts_with('['), "{tail}");
        // Under the cap: unchanged.
        let small: BuildRecord = serde_json::from_str(OLD_RECORD).unwrap();
        let json = small.clone().capped_json(RECORD_MAX_BYTES).unwrap();
        assert_eq!(serde_json::from_str::<BuildRecord>(&json).unwrap(), small);
    }

    #[test]
    fn a_summary_holds_no_texts() {
        let r: BuildRecord = serde_json::from_str(OLD_RECORD).unwrap();
        let s = r.summary("b");
        assert_eq!(s.phase, "failed");
        assert_eq!(s.reason, Some(Reason::BuildError));
        assert_eq!(s.started, Some(r.history.timeline[0].time));
        assert_eq!(s.finished, Some(r.updated_at));
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            !json.contains("killed") && !json.contains("image api failed"),
            "{json}"
        );
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(trace_id("00-zz-b7ad6b7169203331-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }
}
