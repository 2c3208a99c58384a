//! Event sequences as specifications: a build's events written one a line
//! (`routing key[:image#attempt]`), matched against a short pattern, with a
//! readable diff when they differ.
//!
//! A pattern is a list of entries, each one of:
//! - an event as [`sequence`] writes it: `build.accepted`,
//!   `image.running:api#1`;
//! - the same with `*` for any text: `image.cancelled:*` (any image,
//!   attempt);
//! - [`ANY`] (`...`): any number of events, also none.
//!
//! So `["...", "build.succeeded"]` reads "ends with `build.succeeded`", and
//! `["build.accepted", "...", "build.succeeded"]` "starts with the one and
//! ends with the other".

use std::borrow::Borrow;
use std::fmt::Write as _;

use kiln_protocol::{BuildEvent, Level};

/// The pattern entry for any number of events, also none.
pub const ANY: &str = "...";

/// The whole life of a [`one_image`](super::one_image) build whose pod
/// succeeds at the first attempt.
pub const ONE_IMAGE_SUCCEEDS: &[&str] = &[
    "build.accepted",
    "image.scheduled:api#1",
    "image.running:api#1",
    "image.succeeded:api#1",
    "build.succeeded",
];

/// The whole life of a [`one_image`](super::one_image) build whose pod runs
/// and then fails for good at the first attempt.
pub const ONE_IMAGE_FAILS: &[&str] = &[
    "build.accepted",
    "image.scheduled:api#1",
    "image.running:api#1",
    "image.failed:api#1",
    "build.failed",
];

/// `routing key[:image#attempt]` per event, for exact sequence assertions.
pub fn sequence<E: Borrow<BuildEvent>>(events: &[E]) -> Vec<String> {
    events
        .iter()
        .map(|ev| {
            let ev = ev.borrow();
            let key = kiln_protocol::routing_key(ev.level(), ev.data.phase);
            match (&ev.data.image, ev.data.attempt) {
                (Some(i), Some(n)) => format!("{key}:{i}#{n}"),
                _ => key,
            }
        })
        .collect()
}

/// Events of one image, in order.
pub fn of_image<'a>(events: &'a [BuildEvent], image: &str) -> Vec<&'a BuildEvent> {
    events
        .iter()
        .filter(|e| e.data.image.as_deref() == Some(image))
        .collect()
}

/// The build's own events and those of `image`, in order: what one image's
/// life looks like inside its build, whatever its siblings do meanwhile.
pub fn with_image<'a>(events: &'a [BuildEvent], image: &str) -> Vec<&'a BuildEvent> {
    events
        .iter()
        .filter(|e| e.level() == Level::Build || e.data.image.as_deref() == Some(image))
        .collect()
}

/// The build's only terminal `build.*` event (its outcome); panics, showing
/// the sequence, when there is none or more than one.
#[track_caller]
pub fn only_outcome<E: Borrow<BuildEvent>>(events: &[E]) -> &BuildEvent {
    let mut outcomes = events
        .iter()
        .map(Borrow::borrow)
        .filter(|e| is_build_terminal(e));
    match (outcomes.next(), outcomes.next()) {
        (Some(one), None) => one,
        _ => panic!(
            "expected exactly one terminal build event: {:?}",
            sequence(events)
        ),
    }
}

/// Whether `ev` is a terminal `build.*` event.
pub fn is_build_terminal(ev: &BuildEvent) -> bool {
    ev.level() == Level::Build && ev.data.phase.is_terminal(Level::Build)
}

/// Asserts that `events` match `pattern` (see the module documentation);
/// the panic shows the events against the pattern, line by line.
#[track_caller]
pub fn assert_sequence<E: Borrow<BuildEvent>>(events: &[E], pattern: &[&str]) {
    if let Err(diff) = check_sequence(events, pattern) {
        panic!("{diff}");
    }
}

/// `Ok` when `events` match `pattern`, else the diff that
/// [`assert_sequence`] prints.
pub fn check_sequence<E: Borrow<BuildEvent>>(events: &[E], pattern: &[&str]) -> Result<(), String> {
    let got = sequence(events);
    let lines = align(&got, pattern);
    if lines
        .iter()
        .all(|l| matches!(l, Line::Same(_) | Line::Any(_)))
    {
        return Ok(());
    }
    let mut builds: Vec<&str> = events
        .iter()
        .map(|e| e.borrow().data.build_id.as_str())
        .collect();
    builds.dedup();
    let mut out = format!(
        "the events of {} do not match the specification\n\
         (`-` specified but missing, `+` not specified, `.` taken by `{ANY}`):\n",
        if builds.is_empty() {
            "the build (none arrived)".to_owned()
        } else {
            format!("build {}", builds.join(", "))
        }
    );
    for line in &lines {
        let _ = match line {
            Line::Same(e) => writeln!(out, "    {e}"),
            Line::Any(e) => writeln!(out, "  . {e}"),
            Line::Missing(p) => writeln!(out, "  - {p}"),
            Line::Unexpected(e) => writeln!(out, "  + {e}"),
        };
    }
    let _ = write!(out, "got:  {got:?}\nspec: {pattern:?}");
    Err(out)
}

/// One line of the diff.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// An event the pattern names.
    Same(&'a str),
    /// An event taken by an `...` entry.
    Any(&'a str),
    /// A pattern entry no event matches.
    Missing(&'a str),
    /// An event the pattern has no place for.
    Unexpected(&'a str),
}

/// The alignment of `got` with `pattern` that needs the fewest missing and
/// unexpected lines (an edit distance; the sequences are short).
fn align<'a>(got: &'a [String], pattern: &[&'a str]) -> Vec<Line<'a>> {
    let (n, m) = (got.len(), pattern.len());
    // cost[i][j]: the fewest edits that align got[i..] with pattern[j..].
    let mut cost = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            cost[i][j] = if j == m {
                n - i
            } else if pattern[j] == ANY {
                let skip = cost[i][j + 1];
                if i < n {
                    skip.min(cost[i + 1][j])
                } else {
                    skip
                }
            } else {
                let mut best = cost[i][j + 1] + 1;
                if i < n {
                    best = best.min(cost[i + 1][j] + 1);
                    if glob(pattern[j], &got[i]) {
                        best = best.min(cost[i + 1][j + 1]);
                    }
                }
                best
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        let here = cost[i][j];
        if j < m && pattern[j] == ANY {
            if i < n && cost[i + 1][j] == here {
                lines.push(Line::Any(&got[i]));
                i += 1;
            } else {
                j += 1;
            }
        } else if i < n && j < m && glob(pattern[j], &got[i]) && cost[i + 1][j + 1] == here {
            lines.push(Line::Same(&got[i]));
            (i, j) = (i + 1, j + 1);
        } else if j < m && cost[i][j + 1] + 1 == here {
            lines.push(Line::Missing(pattern[j]));
            j += 1;
        } else {
            lines.push(Line::Unexpected(&got[i]));
            i += 1;
        }
    }
    lines
}

/// Whether `text` matches `pattern`, where `*` stands for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob("image.cancelled:*", "image.cancelled:api#1"));
        assert!(glob("image.*:api#*", "image.running:api#2"));
        assert!(glob("build.accepted", "build.accepted"));
        assert!(!glob("build.accepted", "build.accepted.x"));
        assert!(!glob("image.cancelled:*", "image.running:api#1"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("a*b*c", "abbc"));
        assert!(!glob("ab*ba", "aba"), "the two ends must not overlap");
    }

    #[test]
    fn exact_patterns_align_with_missing_and_unexpected_lines() {
        let got = strings(&["build.accepted", "image.retrying:api#1", "build.failed"]);
        let pattern = ["build.accepted", "image.succeeded:api#1", "build.failed"];
        assert_eq!(
            align(&got, &pattern),
            [
                Line::Same("build.accepted"),
                Line::Missing("image.succeeded:api#1"),
                Line::Unexpected("image.retrying:api#1"),
                Line::Same("build.failed"),
            ]
        );
    }

    #[test]
    fn any_takes_a_run_of_events_or_none() {
        let got = strings(&["build.accepted", "image.running:api#1", "build.succeeded"]);
        assert_eq!(
            align(&got, &[ANY, "build.succeeded"]),
            [
                Line::Any("build.accepted"),
                Line::Any("image.running:api#1"),
                Line::Same("build.succeeded"),
            ]
        );
        assert_eq!(
            align(
                &got,
                &[
                    "build.accepted",
                    ANY,
                    "image.running:*",
                    ANY,
                    "build.succeeded"
                ]
            ),
            [
                Line::Same("build.accepted"),
                Line::Same("image.running:api#1"),
                Line::Same("build.succeeded"),
            ]
        );
        // Ends with something else: the last event is unexpected, the
        // specified one missing.
        let lines = align(&got[..2], &[ANY, "build.succeeded"]);
        assert!(
            lines.contains(&Line::Missing("build.succeeded")),
            "{lines:?}"
        );
    }

    #[test]
    fn empty_sequences() {
        assert_eq!(align(&[], &[ANY]), []);
        assert_eq!(
            align(&[], &["build.cancelled"]),
            [Line::Missing("build.cancelled")]
        );
        assert_eq!(
            align(&strings(&["build.cancelled"]), &[]),
            [Line::Unexpected("build.cancelled")]
        );
    }

    #[test]
    fn the_diff_names_the_build_and_both_sequences() {
        let ev = BuildEvent::new(
            "urn:kiln:test",
            "w-1",
            jiff::Timestamp::now(),
            kiln_protocol::EventData::for_build("b-1", kiln_protocol::Phase::Failed),
        );
        assert_eq!(
            check_sequence(std::slice::from_ref(&ev), &[ANY, "build.failed"]),
            Ok(())
        );
        let diff = check_sequence(&[ev], &[ANY, "build.succeeded"]).expect_err("differs");
        assert!(diff.contains("build b-1"), "{diff}");
        assert!(diff.contains("\n  - build.succeeded\n"), "{diff}");
        assert!(diff.contains("\n  . build.failed\n"), "{diff}");
        assert!(diff.contains(r#"got:  ["build.failed"]"#), "{diff}");
        let none: &[BuildEvent] = &[];
        let diff = check_sequence(none, &["build.accepted"]).expect_err("differs");
        assert!(diff.contains("none arrived"), "{diff}");
    }
}
