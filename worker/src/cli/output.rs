//! How the client shows things: output formats and one-line renderings of
//! events, shared by `watch` and `wait`.

use std::fmt::Write as _;
use std::time::Duration;

use kiln_protocol::{BuildEvent, Level, Phase};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// JSON for scripts (one document per line).
    Json,
    /// YAML for people and scripts (each document starts with `---`, so a
    /// stream of them is one multi-document YAML file).
    Yaml,
}

impl Output {
    /// JSON or YAML: documents on standard output, no progress display.
    pub fn is_data(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }

    /// `value` as one document: JSON on one line, YAML after `---`;
    /// `None` for text, which each command writes its own way.
    pub fn document(self, value: &impl serde::Serialize) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Output::Text => None,
            Output::Json => Some(serde_json::to_string(value)?),
            Output::Yaml => {
                let yaml = serde_saphyr::to_string(value)?;
                Some(format!("---\n{}", yaml.trim_end()))
            }
        })
    }

    /// Writes `value` as a document (nothing for text).
    pub fn print(self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(doc) = self.document(value)? {
            crate::outln!("{doc}");
        }
        Ok(())
    }
}

/// An event as received: the decoded event and the raw JSON (printed as
/// is by `--output json`, so fields this version does not know survive).
#[derive(Debug, Clone)]
pub struct Received {
    pub event: BuildEvent,
    pub raw: serde_json::Value,
}

impl Received {
    /// Decodes a message body; `None` when it is not a Kiln event.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let raw: serde_json::Value = serde_json::from_slice(body).ok()?;
        let event = serde_json::from_value(raw.clone()).ok()?;
        Some(Self { event, raw })
    }

    /// The raw event on one line.
    pub fn json_line(&self) -> String {
        self.raw.to_string()
    }

    /// Writes the raw event as a `--output json|yaml` document.
    pub fn print(&self, output: Output) -> anyhow::Result<()> {
        output.print(&self.raw)
    }
}

/// `42s`, `3m07s`, `1h02m`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// `12.4` seconds → `12s`.
fn seconds(s: f64) -> String {
    short_duration(Duration::from_secs_f64(s.max(0.0)))
}

/// `attempt 2/3` (or `attempt 2` when the maximum is not known).
pub fn attempt(ev: &BuildEvent) -> Option<String> {
    let a = ev.data.attempt?;
    Some(match ev.data.max_attempts {
        Some(m) => format!("attempt {a}/{m}"),
        None => format!("attempt {a}"),
    })
}

/// What an event says beyond its subject and phase: attempt, reason and
/// message, retry delay, digest, pod, duration, image summary.
pub fn details(ev: &BuildEvent) -> String {
    details_with(ev, false)
}

/// [`details`] for a progress line: a short digest, no duration (the
/// line shows the elapsed time).
pub fn compact_details(ev: &BuildEvent) -> String {
    details_with(ev, true)
}

fn details_with(ev: &BuildEvent, compact: bool) -> String {
    let d = &ev.data;
    let mut parts: Vec<String> = Vec::new();
    if let Some(a) = attempt(ev) {
        parts.push(a);
    }
    if let Some(r) = d.reason {
        match &d.message {
            Some(m) if !m.is_empty() => parts.push(format!("{r}: {}", one_line_message(m))),
            _ => parts.push(r.to_string()),
        }
    } else if let Some(m) = d.message.as_deref().filter(|m| !m.is_empty()) {
        parts.push(one_line_message(m));
    }
    if let Some(code) = d.exit_code {
        parts.push(format!("exit code {code}"));
    }
    if let Some(s) = d.retry_in_seconds {
        // `waiting` tries the same attempt's pod again; `retrying` starts
        // the next attempt.
        let next = if d.phase == Phase::Waiting {
            "next try"
        } else {
            "next attempt"
        };
        parts.push(format!("{next} in {}", seconds(s)));
    }
    if let Some(digest) = &d.digest {
        match digest.char_indices().nth(19) {
            Some((cut, _)) if compact => parts.push(format!("{}…", &digest[..cut])),
            _ => parts.push(digest.clone()),
        }
    }
    if ev.level() == Level::Image
        && matches!(d.phase, Phase::Scheduled | Phase::Running)
        && let Some(pod) = &d.pod
    {
        parts.push(format!("pod {}/{}", pod.namespace, pod.name));
    }
    if let Some(s) = d.duration_seconds.filter(|_| !compact) {
        parts.push(format!("took {}", seconds(s)));
    }
    if let Some(images) = &d.images {
        let mut s = String::new();
        for (i, img) in images.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            // Writing to a String cannot fail.
            let _ = write!(s, "{}={}", img.name, img.phase);
        }
        if !s.is_empty() {
            parts.push(s);
        }
    }
    parts.join("  ")
}

/// Problems are one per line in `rejected` messages; fold them.
fn one_line_message(m: &str) -> String {
    m.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `10:00:00Z  shop-1/api  image.succeeded  attempt 2/3  sha256:…`.
pub fn human_line(ev: &BuildEvent) -> String {
    let time = ev.time.strftime("%H:%M:%SZ");
    let details = details(ev);
    let mut line = format!("{time}  {}  {}", ev.subject, ev.routing_key());
    if !details.is_empty() {
        line.push_str("  ");
        line.push_str(&details);
    }
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_protocol::{EventData, Reason};

    #[test]
    fn lines() {
        let mut d = EventData::for_image("b-1", "api", 2, Phase::Retrying);
        d.max_attempts = Some(3);
        d.reason = Some(Reason::PushError);
        d.message = Some("push refused".into());
        d.retry_in_seconds = Some(20.0);
        let ev = BuildEvent::new("s", "w", "2026-01-01T10:00:00Z".parse().unwrap(), d);
        assert_eq!(
            human_line(&ev),
            "10:00:00Z  b-1/api  image.retrying  attempt 2/3  PushError: push refused  next attempt in 20s"
        );
        let mut d = EventData::for_image("b-1", "api", 1, Phase::Waiting);
        d.max_attempts = Some(3);
        d.reason = Some(Reason::QuotaExceeded);
        d.message = Some("exceeded quota: compute".into());
        d.retry_in_seconds = Some(2.0);
        let ev = BuildEvent::new("s", "w", "2026-01-01T10:00:00Z".parse().unwrap(), d);
        assert_eq!(
            human_line(&ev),
            "10:00:00Z  b-1/api  image.waiting  attempt 1/3  QuotaExceeded: exceeded quota: compute  next try in 2s"
        );
        let mut d = EventData::for_build("b-1", Phase::Rejected);
        d.reason = Some(Reason::InvalidRequest);
        d.message = Some("id: bad\nimages: empty".into());
        let ev = BuildEvent::new("s", "w", "2026-01-01T10:00:00Z".parse().unwrap(), d);
        assert_eq!(
            human_line(&ev),
            "10:00:00Z  b-1  build.rejected  InvalidRequest: id: bad; images: empty"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1h02m");
    }
}
