//! `kiln logs --follow`: the build's pods as a watch shows them, which
//! attempt of each image to stream next, and when an image is over.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::args::LogsArgs;
use super::pods::{known_images, pending_note, plan_of, read_record};
use super::stream::Ctx;
use super::stream::spawn_stream;
use super::stream::{LineSource, Msg, Printer};
use crate::classify::{Observation, PodPhase, PodView, classify};
use crate::cli::exit;
use crate::pod::PodEvent;
use crate::store::BuildRecord;
use crate::store::{RecordState, Store};

/// How long an attempt whose log stream ended may still look running
/// before the stream is opened again (a connection cut by a proxy).
const REOPEN_AFTER: Duration = Duration::from_secs(5);
/// How long to wait for the worker to write the build's final record once
/// the pods say the build is over.
const RECORD_WAIT: Duration = Duration::from_secs(10);
/// How often Redis' record is read while following.
const RECORD_POLL: Duration = Duration::from_secs(1);

/// How the last shown attempt of an image ended, as far as the pods say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptOutcome {
    Succeeded,
    Failed,
}

/// One followed image.
#[derive(Debug, Default)]
pub(super) struct Track {
    /// The lowest attempt not shown yet.
    pub(super) next: u32,
    /// The attempt whose log is being streamed.
    pub(super) streaming: Option<u32>,
    /// The attempt whose stream ended, waiting for its pod's outcome.
    pub(super) ended: Option<(u32, Instant)>,
    /// The last attempt shown, and how it ended.
    pub(super) last: Option<(u32, AttemptOutcome)>,
    /// A "not started yet" note was printed for this attempt.
    pub(super) noted: Option<u32>,
    pub(super) done: bool,
}

/// The pods of the build as the watch shows them: name → (view, gone).
pub(super) type Seen = BTreeMap<String, (PodView, bool)>;

/// The watch of the build's pods, across its re-lists.
#[derive(Default)]
pub(super) struct Watched {
    pub(super) seen: Seen,
    /// During a re-list: the names of the pods listed so far (the others
    /// are gone once it completes).
    pub(super) relist: Option<BTreeSet<String>>,
    /// The first list is complete: until then no image can be judged over.
    pub(super) synced: bool,
}

impl Watched {
    /// Takes in one watch event; returns the log unit of a Kaniko pod that
    /// exists (its image, or `IMAGE/os/arch` for a platform's pod).
    pub(super) fn apply(&mut self, ev: PodEvent) -> Option<String> {
        match ev {
            PodEvent::Applied(v) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(v.name.clone());
                }
                let unit = (!v.publish).then(|| v.log_unit());
                self.seen.insert(v.name.clone(), (v, false));
                return unit;
            }
            PodEvent::Deleted(v) => {
                self.seen.insert(v.name.clone(), (v, true));
            }
            PodEvent::Resync => self.relist = Some(BTreeSet::new()),
            PodEvent::Synced => {
                if let Some(r) = self.relist.take() {
                    for (name, (_, gone)) in &mut self.seen {
                        *gone |= !r.contains(name);
                    }
                }
                self.synced = true;
            }
        }
        None
    }
}

/// The images followed from the start: each from its newest attempt
/// listed (the oldest with --all-attempts), and IMAGE from attempt 1 when
/// it has no pod yet.
pub(super) fn first_tracks(args: &LogsArgs, listed: &[PodView]) -> BTreeMap<String, Track> {
    let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
    for v in listed {
        let t = tracks.entry(v.log_unit()).or_insert_with(|| Track {
            next: v.attempt,
            ..Track::default()
        });
        if !args.all_attempts {
            t.next = t.next.max(v.attempt);
        }
    }
    // IMAGE (or its --platform) with no pod listed yet: followed from its
    // first attempt.
    if let Some(image) = &args.image
        && !listed.iter().any(|v| v.image == *image)
    {
        let unit = args
            .platform
            .as_deref()
            .map_or_else(|| image.clone(), |p| kiln_protocol::platform_unit(image, p));
        tracks.entry(unit).or_insert_with(|| Track {
            next: 1,
            ..Track::default()
        });
    }
    tracks
}

/// With `--follow`.
pub(super) async fn follow(
    ctx: &Ctx,
    args: &LogsArgs,
    redis: Option<&Store>,
    listed: &[PodView],
) -> anyhow::Result<u8> {
    let mut ctrl_c = pin!(crate::cli::ctrl_c());
    let mut watch = pin!(ctx.pods.watch_build(&ctx.namespace, &args.id));
    let (tx, mut rx) = mpsc::channel::<(LineSource, Msg)>(1024);
    let mut tracks = first_tracks(args, listed);
    let known = known_images(listed, None);
    let mut printer = Printer::new(
        tracks.len() > 1 || (args.image.is_none() && known.len() > 1),
        ctx.colour,
    );
    let mut watched = Watched::default();
    let mut record = None;
    let mut polled: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut ctrl_c => return Ok(exit::INTERRUPTED),
            ev = watch.next() => {
                if let Some(unit) = ev.and_then(|ev| watched.apply(ev))
                    && super::unit_wanted(args, &unit)
                {
                    tracks.entry(unit).or_insert_with(|| Track { next: 1, ..Track::default() });
                }
            }
            Some((from, msg)) = rx.recv() => {
                let t = tracks.entry(from.image.clone()).or_default();
                if printer.handle(&from, msg)? {
                    t.streaming = None;
                    t.ended = Some((from.attempt, Instant::now()));
                }
            }
            _ = tick.tick() => {}
        }
        if polled.is_none_or(|p| p.elapsed() >= RECORD_POLL) {
            polled = Some(Instant::now());
            record = read_record(redis, &args.id).await;
        }
        if !watched.synced {
            continue;
        }
        let finished = record
            .as_ref()
            .is_some_and(|r: &BuildRecord| r.state == RecordState::Finished);
        let mut io = Io {
            ctx,
            tx: &tx,
            printer: &mut printer,
        };
        for (image, t) in &mut tracks {
            step(&mut io, image, t, &watched.seen, finished)?;
        }
        // No image yet (the build's pods are still to come) is not "all
        // over", unless the record says the build finished.
        if (tracks.is_empty() && finished)
            || (!tracks.is_empty() && tracks.values().all(|t| t.done))
        {
            break;
        }
    }
    Ok(outcome(redis, &args.id, &tracks).await)
}

/// The pod of an attempt among an image's pods.
pub(super) fn pod_of<'a>(of: &[&'a (PodView, bool)], attempt: u32) -> Option<&'a (PodView, bool)> {
    of.iter().find(|(v, _)| v.attempt == attempt).copied()
}

/// Where the steps of followed images go: the streams they open and the
/// printer.
pub(super) struct Io<'a> {
    ctx: &'a Ctx,
    tx: &'a mpsc::Sender<(LineSource, Msg)>,
    printer: &'a mut Printer,
}

/// Moves one followed image on: streams its next attempt, waits for it, or
/// decides that it is over.
pub(super) fn step(
    io: &mut Io<'_>,
    image: &str,
    t: &mut Track,
    seen: &Seen,
    finished: bool,
) -> std::io::Result<()> {
    if t.done || t.streaming.is_some() {
        return Ok(());
    }
    let mut of: Vec<&(PodView, bool)> = seen
        .values()
        .filter(|(v, _)| !v.publish && v.log_unit() == image)
        .collect();
    of.sort_by_key(|(v, _)| v.attempt);
    if !settle_ended(io, image, t, &of)? {
        return Ok(());
    }
    match show_next(io, image, t, &of)? {
        Next::Busy => Ok(()),
        Next::Gone => step(io, image, t, seen, finished),
        Next::Nothing => {
            // Nothing more to show now: is another attempt coming?
            t.done = finished
                || match t.last {
                    Some((_, AttemptOutcome::Succeeded)) => true,
                    Some((a, AttemptOutcome::Failed)) => pod_of(&of, a)
                        .is_none_or(|(v, gone)| *gone || v.deleting || !retry_coming(v)),
                    None => false,
                };
            Ok(())
        }
    }
}

/// Settles an attempt whose log ended: its pod tells how it went. Returns
/// false while the image must wait: the pod still runs, so the stream was
/// cut, and is opened again after [`REOPEN_AFTER`].
pub(super) fn settle_ended(
    io: &mut Io<'_>,
    image: &str,
    t: &mut Track,
    of: &[&(PodView, bool)],
) -> std::io::Result<bool> {
    let Some((a, since)) = t.ended else {
        return Ok(true);
    };
    match pod_of(of, a) {
        Some((v, gone)) if !gone && !v.deleting && !over(v) => {
            if since.elapsed() < REOPEN_AFTER {
                return Ok(false);
            }
            // Still running: the stream was cut. Open it again from now
            // on (lines written meanwhile may be missed, never doubled).
            let from = LineSource {
                image: image.to_owned(),
                attempt: a,
            };
            io.printer.handle(
                &from,
                Msg::Note("log stream ended early; following again".into()),
            )?;
            spawn_stream(io.ctx, v, io.tx, Some(0));
            t.streaming = Some(a);
            t.ended = None;
            Ok(false)
        }
        found => {
            let ok = found.is_some_and(|(v, _)| v.phase == Some(PodPhase::Succeeded));
            t.last = Some((
                a,
                if ok {
                    AttemptOutcome::Succeeded
                } else {
                    AttemptOutcome::Failed
                },
            ));
            t.next = a + 1;
            t.ended = None;
            Ok(true)
        }
    }
}

/// What [`show_next`] did.
pub(super) enum Next {
    /// Streaming the next attempt, or waiting for its pod to start.
    Busy,
    /// The next attempt's pod is gone: it ended unseen, to be settled.
    Gone,
    /// No attempt to show now.
    Nothing,
}

/// Shows the next attempt of an image: a note while its pod has not
/// started, else its log.
pub(super) fn show_next(
    io: &mut Io<'_>,
    image: &str,
    t: &mut Track,
    of: &[&(PodView, bool)],
) -> std::io::Result<Next> {
    let Some((v, gone)) = of.iter().find(|(v, _)| v.attempt >= t.next).copied() else {
        return Ok(Next::Nothing);
    };
    let from = LineSource {
        image: image.to_owned(),
        attempt: v.attempt,
    };
    if v.phase == Some(PodPhase::Pending) && !gone && !v.deleting {
        if t.noted != Some(v.attempt) {
            t.noted = Some(v.attempt);
            io.printer.handle(&from, Msg::Note(pending_note(v)))?;
        }
        return Ok(Next::Busy);
    }
    if t.last.is_some() || t.next > 1 {
        io.printer.handle(
            &from,
            Msg::Note(format!("attempt {} (pod {})", v.attempt, v.name)),
        )?;
    }
    t.next = v.attempt;
    if *gone {
        t.ended = Some((v.attempt, Instant::now()));
        return Ok(Next::Gone);
    }
    spawn_stream(io.ctx, v, io.tx, None);
    t.streaming = Some(v.attempt);
    Ok(Next::Busy)
}

/// Whether the pod's attempt is over (its container will write no more).
pub(super) fn over(v: &PodView) -> bool {
    matches!(v.phase, Some(PodPhase::Succeeded | PodPhase::Failed))
}

/// Whether the worker will start another attempt after this failed one:
/// the failure is retryable, attempts are left and the deadline has not
/// passed (the machine's rule; the plan is in the pod's annotation).
pub(super) fn retry_coming(v: &PodView) -> bool {
    let Observation::Failed(f) = classify(v) else {
        return false;
    };
    let Some(plan) = plan_of(v) else {
        return f.retryable;
    };
    f.retryable && v.attempt < plan.max_attempts && jiff::Timestamp::now() < plan.deadline
}

/// The exit code once every image is over: 0 when each followed image's
/// last attempt succeeded; otherwise the build's outcome from Redis' record
/// (waiting a little for the worker to write it), else 1.
pub(super) async fn outcome(
    redis: Option<&Store>,
    id: &str,
    tracks: &BTreeMap<String, Track>,
) -> u8 {
    // Every platform succeeding is not the image succeeding (its publish
    // step follows): with platforms, the record says.
    if !tracks.is_empty()
        && !tracks.keys().any(|unit| unit.contains('/'))
        && tracks
            .values()
            .all(|t| matches!(t.last, Some((_, AttemptOutcome::Succeeded))))
    {
        return exit::OK;
    }
    let until = Instant::now() + RECORD_WAIT;
    while redis.is_some() && Instant::now() < until {
        if let Some(r) = read_record(redis, id).await
            && r.state == RecordState::Finished
        {
            return match r.phase {
                Some(kiln_protocol::Phase::Succeeded) => exit::OK,
                Some(kiln_protocol::Phase::Cancelled) => exit::CANCELLED,
                _ => exit::FAILED,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    exit::FAILED
}
