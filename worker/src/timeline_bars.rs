//! The build page's timeline as SVG bars: each image's attempts (queued,
//! waiting for quota, running, backing off) scaled to one axis, from the
//! segments `kiln_core::timeline` computes out of the build's history.

use crate::store::{BuildRecord, RecordState};

/// One image's bar on the build page's timeline (SVG, 1000 units wide).
#[derive(Debug)]
pub struct BarRow {
    pub image: String,
    pub outcome: &'static str,
    pub words: String,
    pub bars: Vec<Bar>,
}

#[derive(Debug)]
pub struct Bar {
    pub class: &'static str,
    pub x: String,
    pub width: String,
    pub title: String,
}

/// The build's timeline as bars: segments scaled to a 1000-unit axis.
pub fn bars(r: &BuildRecord) -> (Vec<BarRow>, String) {
    let end = if r.state == RecordState::Finished {
        r.updated_at
    } else {
        jiff::Timestamp::now()
    };
    let Some(t) = kiln_core::timeline::timeline(&r.history, end) else {
        return (Vec::new(), String::new());
    };
    let scale = 1000.0 / t.span;
    let rows = t
        .rows
        .into_iter()
        .map(|row| BarRow {
            outcome: row.outcome.map_or("running", kiln_protocol::Phase::as_str),
            bars: row
                .segments
                .iter()
                .map(|s| Bar {
                    class: s.kind.as_str(),
                    x: format!("{:.1}", s.from * scale),
                    // At least a hairline, so a short step stays visible.
                    width: format!("{:.1}", ((s.to - s.from) * scale).max(2.0)),
                    title: format!(
                        "attempt {}: {} {}",
                        s.attempt,
                        s.kind.as_str(),
                        kiln_core::timeline::words(s.to - s.from)
                    ),
                })
                .collect(),
            image: row.image,
            words: row.words,
        })
        .collect();
    (rows, kiln_core::timeline::words(t.span))
}
