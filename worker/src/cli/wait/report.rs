//! The answer `kiln wait` prints at the end: from the terminal build event,
//! from a finished build's Redis record, or for a refused request.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kiln_protocol::{BuildEvent, EventData, ImageSummary, Phase};

use super::followed::{Follow, exit_code};
use super::progress::Tracker;
use crate::cli::exit;
use crate::cli::output::{Output, Received, attempt, short_duration};
use crate::store::BuildRecord;

/// The summary after the terminal build event.
pub(super) fn report_event(f: &Follow, r: &Received, tracker: &Tracker, started: Instant) -> u8 {
    let ev = &r.event;
    let phase = ev.phase();
    if f.output.is_data() {
        return emit(f.output, &r.raw, exit_code(phase));
    }
    let took = ev.data.duration_seconds.map_or_else(
        || started.elapsed(),
        |s| Duration::from_secs_f64(s.max(0.0)),
    );
    let d = &ev.data;
    match phase {
        Phase::Succeeded => {
            errln!(
                "✔ build {} succeeded ({})",
                f.build_id,
                short_duration(took)
            );
            for line in pinned_references(d, tracker) {
                outln!("{line}");
            }
        }
        Phase::Rejected => {
            errln!(
                "✘ build {} rejected: {}",
                f.build_id,
                d.reason.map_or("InvalidRequest", |r| r.as_str())
            );
            for line in d.message.as_deref().unwrap_or_default().lines() {
                errln!("  {line}");
            }
        }
        _ => {
            let mut head = format!("✘ build {} {phase}", f.build_id);
            if let Some(reason) = d.reason {
                // Writing to a String cannot fail.
                let _ = write!(head, ": {reason}");
            }
            if let Some(m) = d.message.as_deref().filter(|m| !m.is_empty()) {
                // Writing to a String cannot fail.
                let _ = write!(head, ": {}", crate::cli::fold(m));
            }
            errln!("{head} ({})", short_duration(took));
            // The failures in detail, then how the other images ended.
            let mut explained = HashSet::new();
            for (name, state) in &tracker.images {
                if state.phase == Some(Phase::Failed)
                    && let Some(fail) = &state.failure
                {
                    print_failure(name, fail);
                    explained.insert(name.as_str());
                }
            }
            for img in d.images.iter().flatten() {
                if img.phase == Phase::Succeeded || explained.contains(img.name.as_str()) {
                    continue;
                }
                let mut line = format!("  {} {}", img.name, img.phase);
                if let Some(r) = img.reason {
                    // Writing to a String cannot fail.
                    let _ = write!(line, ": {r}");
                }
                // Writing to a String cannot fail.
                let _ = write!(line, " (attempts: {})", img.attempts);
                errln!("{line}");
            }
            if let Some(tail) = d.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
                errln!("  --- end of the build log ---");
                for line in tail.lines() {
                    errln!("  | {line}");
                }
            }
        }
    }
    exit_code(phase)
}

pub(super) fn print_failure(name: &str, ev: &BuildEvent) {
    let d = &ev.data;
    let mut line = format!("  {name} failed");
    if let Some(a) = attempt(ev) {
        // Writing to a String cannot fail.
        let _ = write!(line, " on {a}");
    }
    if let Some(r) = d.reason {
        // Writing to a String cannot fail.
        let _ = write!(line, ": {r}");
    }
    if let Some(m) = d.message.as_deref().filter(|m| !m.is_empty()) {
        // Writing to a String cannot fail.
        let _ = write!(line, ": {}", crate::cli::fold(m));
    }
    if let Some(c) = d.exit_code {
        // Writing to a String cannot fail.
        let _ = write!(line, " (exit code {c})");
    }
    errln!("{line}");
    if let Some(tail) = d.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
        errln!("  --- end of the build log of {name} ---");
        for l in tail.lines() {
            errln!("  | {l}");
        }
    }
}

/// `registry/repo:tag@sha256:…` lines: from the build event's summary, else
/// from the images' `succeeded` events; `name digest` when an image has a
/// digest but no references.
pub(super) fn pinned_references(d: &EventData, tracker: &Tracker) -> Vec<String> {
    let mut out = Vec::new();
    let mut covered = HashSet::new();
    for img in d.images.iter().flatten() {
        if !img.image_refs.is_empty() {
            out.extend(img.image_refs.iter().cloned());
            covered.insert(img.name.clone());
        }
    }
    for (name, state) in &tracker.images {
        if covered.contains(name) {
            continue;
        }
        if let Some(ev) = &state.succeeded {
            if ev.data.image_refs.is_empty() {
                if let Some(digest) = &ev.data.digest {
                    out.push(format!("{name} {digest}"));
                }
            } else {
                out.extend(ev.data.image_refs.iter().cloned());
            }
            covered.insert(name.clone());
        }
    }
    for img in d.images.iter().flatten() {
        if !covered.contains(&img.name)
            && let Some(digest) = &img.digest
        {
            out.push(format!("{} {digest}", img.name));
        }
    }
    out
}

/// The answer for a build Redis says has finished.
pub(super) fn report_record(f: &Follow, rec: &BuildRecord) -> u8 {
    let Some(phase) = rec.phase else {
        errln!(
            "kiln: build {} has finished, but its Redis record does not say how ({:?})",
            f.build_id,
            rec.phase
        );
        return exit::ERROR;
    };
    if f.output.is_data() {
        return emit(
            f.output,
            &record_event(&f.build_id, phase, rec),
            exit_code(phase),
        );
    }
    let when = rec.updated_at.strftime("%Y-%m-%d %H:%M:%SZ");
    if f.duplicate {
        errln!(
            "kiln: build {} had already finished ({when}): the id was used before, so nothing new was built",
            f.build_id
        );
    }
    let mark = if phase == Phase::Succeeded {
        "✔"
    } else {
        "✘"
    };
    errln!(
        "{mark} build {} {phase} (Redis record of {when}, worker {})",
        f.build_id,
        rec.worker
    );
    for (name, img) in &rec.images {
        let mut line = format!("  {name}: {} (attempt {})", img.phase, img.attempt);
        if let Some(pod) = &img.pod {
            // Writing to a String cannot fail.
            let _ = write!(line, " pod {pod}");
        }
        errln!("{line}");
    }
    if phase == Phase::Succeeded {
        for (name, img) in &rec.images {
            if let Some(digest) = &img.digest {
                outln!("{name} {digest}");
            }
        }
    } else {
        errln!("  (the record keeps no reason or log; they were in the build's events)");
    }
    exit_code(phase)
}

/// A terminal build event made from a Redis record, for `--output json`:
/// `source` is `urn:kiln:record` so that it cannot pass for a real event.
pub(super) fn record_event(id: &str, phase: Phase, rec: &BuildRecord) -> BuildEvent {
    let mut data = EventData::for_build(id, phase);
    data.tenant = Some(rec.tenant.clone());
    data.images = Some(
        rec.images
            .iter()
            .map(|(name, img)| ImageSummary {
                name: name.clone(),
                phase: img.phase,
                digest: img.digest.clone(),
                attempts: img.attempt,
                image_refs: Vec::new(),
                platform_digests: std::collections::BTreeMap::new(),
                reason: None,
            })
            .collect(),
    );
    BuildEvent::new("urn:kiln:record", rec.worker.clone(), rec.updated_at, data)
}

/// Writes a `--output json|yaml` document; `code` unless that fails.
pub(super) fn emit(output: Output, value: &impl serde::Serialize, code: u8) -> u8 {
    match output.print(value) {
        Ok(()) => code,
        Err(e) => {
            errln!(
                "kiln: error: cannot write the result: {}",
                crate::cli::one_line(&e)
            );
            exit::ERROR
        }
    }
}

/// The answer when the workers refused the message this command published
/// (`request.rejected`): the build its id names, if any, is not this one.
pub(super) fn report_rejected_request(f: &Follow, r: &Received) -> u8 {
    if f.output.is_data() {
        return emit(f.output, &r.raw, exit::REJECTED);
    }
    let d = &r.event.data;
    let reason = d.reason.map_or("InvalidRequest", |r| r.as_str());
    errln!(
        "✘ request for build {} rejected: {reason} (the id was not built for this request)",
        f.build_id
    );
    for line in d.message.as_deref().unwrap_or_default().lines() {
        errln!("  {line}");
    }
    if d.reason == Some(kiln_protocol::Reason::IdConflict) {
        errln!("  (submit it under another id: kiln submit FILE --id NEW-ID)");
    }
    exit::REJECTED
}
