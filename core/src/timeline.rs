//! The build page's timeline: each image's attempts as segments on one time
//! axis (queued, waiting for quota, running, backing off), computed from
//! the events a build's [`History`] recorded, with the durations in words.
//! Pure; the status page draws the segments as SVG.

use kiln_protocol::{Level, Phase};

use crate::record::{History, TimelineEntry};

/// What an image was doing during a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Accepted or pod created, not running yet.
    Queued,
    /// A ResourceQuota refused the pod; waiting to create it.
    Waiting,
    Running,
    /// An attempt failed; the next one starts after the backoff.
    BackingOff,
}

impl Kind {
    /// The CSS class and the word the page uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Queued => "queued",
            Kind::Waiting => "waiting",
            Kind::Running => "running",
            Kind::BackingOff => "backing-off",
        }
    }
}

/// One segment, in seconds since the axis' start.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub kind: Kind,
    pub attempt: u32,
    pub from: f64,
    pub to: f64,
}

/// One image's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub image: String,
    pub segments: Vec<Segment>,
    /// The image's ending phase, if it ended.
    pub outcome: Option<Phase>,
    /// "ran 3 m 12 s, retried after 20 s, ran 41 s, succeeded".
    pub words: String,
}

/// The whole timeline: rows on an axis of `span` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub rows: Vec<Row>,
    pub span: f64,
}

/// A duration in words: `3 m 12 s`, `41 s`, `2 h 05 m`, `0.4 s`.
pub fn words(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 && secs.fract() != 0.0 {
        return format!("{secs:.1} s");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {} s", s / 60, s % 60),
        _ => format!("{} h {:02} m", s / 3600, (s % 3600) / 60),
    }
}

fn since(t0: jiff::Timestamp, t: jiff::Timestamp) -> f64 {
    t.duration_since(t0).as_secs_f64().max(0.0)
}

/// The timeline of a build whose history is `h`, drawn until `end` (the
/// record's last update: the build's end once finished, or now).
pub fn timeline(h: &History, end: jiff::Timestamp) -> Option<Timeline> {
    let t0 = h
        .timeline
        .iter()
        .find(|e| e.image.is_none() && e.phase == Phase::Accepted)
        .or_else(|| h.timeline.first())?
        .time;
    let last = h.timeline.iter().map(|e| e.time).max().unwrap_or(t0);
    let span = since(t0, end.max(last)).max(0.001);
    // One row per image, and per platform of a multi-platform image
    // (`<image>/<platform>`, its attempts numbered apart); the publish
    // step's events are the image's own row.
    let mut names: Vec<String> = Vec::new();
    for e in &h.timeline {
        if let Some(unit) = unit_of(e)
            && !names.contains(&unit)
        {
            names.push(unit);
        }
    }
    let rows = names.iter().map(|name| row(h, name, t0, span)).collect();
    Some(Timeline { rows, span })
}

/// The row an entry belongs to: its image, or `<image>/<platform>`.
fn unit_of(e: &TimelineEntry) -> Option<String> {
    let image = e.image.as_deref()?;
    Some(match e.platform.as_deref() {
        Some(p) => kiln_protocol::platform_unit(image, p),
        None => image.to_owned(),
    })
}

/// One image's row: its events in order, each closing the segment the
/// previous one opened.
fn row(h: &History, name: &str, t0: jiff::Timestamp, span: f64) -> Row {
    let mut segments = Vec::new();
    let mut open: Option<(Kind, u32, f64)> = Some((Kind::Queued, 1, 0.0));
    let mut outcome = None;
    let mut said: Vec<String> = Vec::new();
    for e in h
        .timeline
        .iter()
        .filter(|e| unit_of(e).as_deref() == Some(name))
    {
        let at = since(t0, e.time);
        let attempt = e.attempt.unwrap_or(1);
        if let Some((kind, a, from)) = open.take() {
            match kind {
                Kind::Running => said.push(format!("ran {}", words(at - from))),
                Kind::BackingOff => said.push(format!("retried after {}", words(at - from))),
                Kind::Waiting => said.push(format!("waited for quota {}", words(at - from))),
                Kind::Queued if at - from >= 1.0 => {
                    said.push(format!("queued {}", words(at - from)));
                }
                Kind::Queued => {}
            }
            segments.push(Segment {
                kind,
                attempt: a,
                from,
                to: at,
            });
        }
        let next = match e.phase {
            Phase::Scheduled | Phase::Accepted => Some(Kind::Queued),
            Phase::Waiting => Some(Kind::Waiting),
            Phase::Running => Some(Kind::Running),
            Phase::Retrying => {
                said.push(format!(
                    "failed{}",
                    e.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
                Some(Kind::BackingOff)
            }
            p if p.is_terminal(Level::Image) => {
                outcome = Some(p);
                said.push(p.as_str().to_owned());
                None
            }
            _ => None,
        };
        open = next.map(|k| (k, attempt, at));
    }
    if let Some((kind, a, from)) = open {
        segments.push(Segment {
            kind,
            attempt: a,
            from,
            to: span,
        });
        said.push(format!(
            "{} for {} so far",
            kind.as_str(),
            words(span - from)
        ));
    }
    Row {
        image: name.to_owned(),
        segments: segments.into_iter().filter(|s| s.to > s.from).collect(),
        outcome,
        words: said.join(", "),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_protocol::Reason;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn ev(s: i64, phase: Phase, image: Option<&str>, attempt: Option<u32>) -> TimelineEntry {
        TimelineEntry {
            id: String::new(),
            event_type: String::new(),
            time: at(s),
            phase,
            image: image.map(str::to_owned),
            platform: None,
            attempt,
            reason: (phase == Phase::Retrying).then_some(Reason::OOMKilled),
            message: None,
        }
    }

    #[test]
    fn a_retried_image_is_queued_running_backing_off_running() {
        let h = History {
            timeline: vec![
                ev(0, Phase::Accepted, None, None),
                ev(2, Phase::Running, Some("api"), Some(1)),
                ev(42, Phase::Retrying, Some("api"), Some(1)),
                ev(62, Phase::Running, Some("api"), Some(2)),
                ev(254, Phase::Succeeded, Some("api"), Some(2)),
                ev(255, Phase::Succeeded, None, None),
            ],
            ..History::default()
        };
        let t = timeline(&h, at(255)).unwrap();
        assert!((t.span - 255.0).abs() < 1e-9);
        let row = &t.rows[0];
        let kinds: Vec<(Kind, u32, f64, f64)> = row
            .segments
            .iter()
            .map(|s| (s.kind, s.attempt, s.from, s.to))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Queued, 1, 0.0, 2.0),
                (Kind::Running, 1, 2.0, 42.0),
                (Kind::BackingOff, 1, 42.0, 62.0),
                (Kind::Running, 2, 62.0, 254.0),
            ]
        );
        assert_eq!(row.outcome, Some(Phase::Succeeded));
        assert_eq!(
            row.words,
            "queued 2 s, ran 40 s, failed (OOMKilled), retried after 20 s, ran 3 m 12 s, succeeded"
        );
    }

    #[test]
    fn an_image_still_going_is_drawn_until_the_end_of_the_axis() {
        let h = History {
            timeline: vec![
                ev(0, Phase::Accepted, None, None),
                ev(0, Phase::Waiting, Some("web"), Some(1)),
                ev(30, Phase::Running, Some("web"), Some(1)),
            ],
            ..History::default()
        };
        let t = timeline(&h, at(90)).unwrap();
        let row = &t.rows[0];
        assert_eq!(
            row.segments.last().map(|s| (s.kind, s.to)),
            Some((Kind::Running, 90.0))
        );
        assert_eq!(row.outcome, None);
        assert_eq!(
            row.words,
            "waited for quota 30 s, running for 1 m 0 s so far"
        );
    }

    /// Each platform of a multi-platform image is a row of its own (its
    /// attempts numbered apart); the publish step's events are the image's
    /// row.
    #[test]
    fn each_platform_is_a_row_and_the_publish_step_the_images() {
        let on = |s, phase, platform: &str| TimelineEntry {
            platform: Some(platform.to_owned()),
            ..ev(s, phase, Some("api"), Some(1))
        };
        let h = History {
            timeline: vec![
                ev(0, Phase::Accepted, None, None),
                on(1, Phase::Running, "linux/amd64"),
                on(2, Phase::Running, "linux/arm64"),
                on(10, Phase::Retrying, "linux/arm64"),
                TimelineEntry {
                    attempt: Some(2),
                    ..on(12, Phase::Running, "linux/arm64")
                },
                ev(30, Phase::Running, Some("api"), Some(1)),
                ev(33, Phase::Succeeded, Some("api"), Some(1)),
            ],
            ..History::default()
        };
        let t = timeline(&h, at(33)).unwrap();
        let rows: Vec<(&str, Vec<(Kind, u32)>)> = t
            .rows
            .iter()
            .map(|r| {
                (
                    r.image.as_str(),
                    r.segments.iter().map(|s| (s.kind, s.attempt)).collect(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "api/linux/amd64",
                    vec![(Kind::Queued, 1), (Kind::Running, 1)]
                ),
                (
                    "api/linux/arm64",
                    vec![
                        (Kind::Queued, 1),
                        (Kind::Running, 1),
                        (Kind::BackingOff, 1),
                        (Kind::Running, 2)
                    ]
                ),
                ("api", vec![(Kind::Queued, 1), (Kind::Running, 1)]),
            ]
        );
        assert_eq!(t.rows[2].outcome, Some(Phase::Succeeded));
    }

    #[test]
    fn no_events_no_timeline() {
        assert_eq!(timeline(&History::default(), at(0)), None);
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(words(0.4), "0.4 s");
        assert_eq!(words(41.0), "41 s");
        assert_eq!(words(192.0), "3 m 12 s");
        assert_eq!(words(7500.0), "2 h 05 m");
    }
}
