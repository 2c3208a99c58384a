//! `kiln wait ID` (and `kiln submit --wait`): follows one build's events to
//! its terminal `build.*` event, with live progress per image, and ends with
//! the digest-pinned references or the reason and the log tail.
//!
//! The subscription is made before anything else (before the publish, for
//! `submit --wait`), so no event is missed. After a publish, the
//! `request.rejected` event answering that very message (its id is computed
//! from the body published) also ends the wait, with exit code 4; the ones
//! answering other messages under the same id are someone else's. A build that already finished
//! is answered from its Redis record, which is also polled while waiting:
//! a terminal event published before the subscription existed would
//! otherwise never arrive.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_protocol::{BuildEvent, EventData, ImageSummary, Level, Phase, is_valid_build_id};

use super::exit;
use super::output::{Output, Received, attempt, human_line, short_duration};
use crate::amqp::EventSubscription;
use crate::config::{Connections, parse_duration};
use crate::lease::{BuildRecord, Leases, RecordState};

pub const AFTER_HELP: &str = concat!(
    "\
Shows the phase, attempt and elapsed time of each image (a live display on a
terminal, one line per event otherwise), then the digest-pinned references
on success, or the reason and the end of the build log on failure. A build
that already finished is answered at once from its Redis record.

Examples:
  kiln wait shop-cart-1.2.3-7f3a
  kiln wait shop-cart-1.2.3-7f3a --timeout 2h --output json | jq .data.images

",
    crate::kiln_exit_codes!()
);

/// Binding key of the answers to refused requests.
pub const REQUEST_REJECTED_KEY: &str = "request.rejected";

/// How often the Redis record is read while waiting.
const RECORD_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The build id.
    pub id: String,
    /// Give up waiting after this long (exit code 5); the build goes on.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// `text`: progress, then a summary; `json`: only the terminal event.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: WaitArgs) -> anyhow::Result<u8> {
    if !is_valid_build_id(&args.id) {
        errln!(
            "kiln: {:?} is not a build id (1-128 of A-Z a-z 0-9 . _ -)",
            args.id
        );
        return Ok(exit::INVALID);
    }
    let broker = super::connect_broker(&args.connections, "wait").await?;
    let sub = super::subscribe(&broker, &["build.*", "image.*"]).await?;
    let leases = optional_redis(&args.connections).await;
    let code = follow(
        sub,
        Follow {
            build_id: args.id,
            images: Vec::new(),
            timeout: args.timeout,
            output: args.output,
            duplicate: false,
            rejected_id: None,
            tenant: None,
        },
        leases.as_ref(),
    )
    .await;
    broker.close().await;
    code
}

/// Redis for the record, or a one-line warning and none: waiting works on
/// the events alone.
pub async fn optional_redis(c: &Connections) -> Option<Leases> {
    match super::connect_redis(c).await {
        Ok(l) => Some(l),
        Err(e) => {
            errln!(
                "kiln: warning: {}; following the events only",
                super::one_line(&e)
            );
            None
        }
    }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    pub build_id: String,
    /// Image names known in advance (from the request), shown at once.
    pub images: Vec<String>,
    pub timeout: Duration,
    pub output: Output,
    /// Whether this wait follows a publish (a finished record then means the
    /// id was used before).
    pub duplicate: bool,
    /// After a publish: the id of the `request.rejected` event that would
    /// answer the message published (`request_rejected_id`).
    pub rejected_id: Option<String>,
    /// After a publish: the publishing tenant (the AMQP user). A Redis
    /// record of another tenant's build under the same id is not this
    /// request's answer (the workers answer with `request.rejected`).
    pub tenant: Option<String>,
}

impl Follow {
    /// Whether a record may be of this publisher's build. A build run under
    /// the policy's `default` tenant may be anyone's: the record cannot
    /// tell, so it counts as ours, as before tenants were compared.
    pub fn ours(&self, rec: &BuildRecord) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| *t == rec.tenant || rec.tenant == crate::policy::DEFAULT_TENANT)
    }

    /// Whether a `build.*`/`image.*` event carrying `tenant` may be of this
    /// publisher's build (same rule as [`Follow::ours`]); `request.rejected`
    /// events are matched by their id instead.
    fn tenant_may_be(&self, tenant: Option<&str>) -> bool {
        match (&self.tenant, tenant) {
            (Some(ours), Some(t)) => t == ours || t == crate::policy::DEFAULT_TENANT,
            _ => true,
        }
    }
}

/// Follows the build to its end; returns the exit code.
pub async fn follow(
    mut sub: EventSubscription,
    f: Follow,
    leases: Option<&Leases>,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let interrupted = super::ctrl_c();
    tokio::pin!(interrupted);
    let mut tracker = Tracker::new(&f);
    if let Some(rec) = first_record(&f, leases, &mut tracker).await {
        tracker.view.clear();
        sub.close().await;
        return Ok(report_record(&f, &rec));
    }
    let deadline = tokio::time::Instant::now() + f.timeout;
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + RECORD_POLL, RECORD_POLL);
    let mut finished_record: Option<BuildRecord> = None;
    let mut seen = HashSet::new();
    let code = loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else {
                    tracker.view.abandon();
                    anyhow::bail!(
                        "lost the connection to RabbitMQ while waiting for build {} (it goes on; kiln wait {0})",
                        f.build_id
                    );
                };
                if let Some(code) = on_event(&f, &msg.body, &mut tracker, &mut seen, started) {
                    break code;
                }
            }
            _ = poll.tick(), if leases.is_some() => {
                // A terminal event published before the subscription existed
                // never comes; the record says so. Give the event a moment
                // to arrive first, as it says more (log tail, references).
                if let Some(rec) = finished_record.take() {
                    tracker.view.clear();
                    break report_record(&f, &rec);
                }
                if let Some(leases) = leases
                    && let Ok(Some(rec)) = leases.record(&f.build_id).await
                    && rec.state == RecordState::Finished
                    && f.ours(&rec)
                {
                    finished_record = Some(rec);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracker.view.abandon();
                break timed_out(&f);
            }
            () = &mut interrupted => {
                tracker.view.abandon();
                errln!(
                    "kiln: stopped waiting; build {} goes on (kiln wait {0}, kiln cancel {0})",
                    f.build_id
                );
                break exit::INTERRUPTED;
            }
        }
    };
    sub.close().await;
    Ok(code)
}

/// Reads the Redis record before waiting: returns it when this build has
/// already finished (the answer), else shows what it knows of the build.
async fn first_record(
    f: &Follow,
    leases: Option<&Leases>,
    tracker: &mut Tracker,
) -> Option<BuildRecord> {
    match leases?.record(&f.build_id).await {
        Ok(Some(rec)) if !f.ours(&rec) => {}
        Ok(Some(rec)) if rec.state == RecordState::Finished => return Some(rec),
        Ok(Some(rec)) => tracker.seed(&rec),
        Ok(None) => {}
        Err(e) => errln!("kiln: warning: cannot read the Redis record: {e}"),
    }
    None
}

/// Shows one event delivered if it is of this build; returns the exit code
/// when it ends the wait (the terminal build event, or the
/// `request.rejected` answering the message published).
fn on_event(
    f: &Follow,
    body: &[u8],
    tracker: &mut Tracker,
    seen: &mut HashSet<String>,
    started: Instant,
) -> Option<u8> {
    let r = Received::decode(body)?;
    if r.event.data.build_id != f.build_id || !seen.insert(r.event.id.clone()) {
        return None;
    }
    if r.event.level() == Level::Request {
        if f.rejected_id.as_deref() != Some(r.event.id.as_str()) {
            return None;
        }
        tracker.view.clear();
        return Some(report_rejected_request(f, &r));
    }
    if !f.tenant_may_be(r.event.data.tenant.as_deref()) {
        // Another tenant's build under this id: not ours to show.
        return None;
    }
    tracker.apply(&r.event);
    if r.event.level() == Level::Build && r.event.is_terminal() {
        tracker.view.clear();
        return Some(report_event(f, &r, tracker, started));
    }
    None
}

/// `--timeout` reached: the build goes on without us.
fn timed_out(f: &Follow) -> u8 {
    if f.output == Output::Text {
        errln!(
            "kiln: gave up waiting for build {} after {}; it goes on (kiln wait {0}, kiln status {0})",
            f.build_id,
            humantime::format_duration(f.timeout)
        );
    }
    exit::TIMED_OUT
}

/// The exit code of a terminal build phase.
pub fn exit_code(phase: Phase) -> u8 {
    match phase {
        Phase::Succeeded => exit::OK,
        Phase::Failed => exit::FAILED,
        Phase::Cancelled => exit::CANCELLED,
        Phase::Rejected => exit::REJECTED,
        _ => exit::ERROR,
    }
}

/// Where each image stands, from the events seen.
#[derive(Debug, Clone, Default)]
struct ImageState {
    phase: Option<Phase>,
    attempt: u32,
    /// The last `failed` (or `retrying`) event, for the report.
    failure: Option<BuildEvent>,
    succeeded: Option<BuildEvent>,
}

struct Tracker {
    images: BTreeMap<String, ImageState>,
    view: View,
}

impl Tracker {
    fn new(f: &Follow) -> Self {
        let mut view = View::new(f);
        let mut images = BTreeMap::new();
        for name in &f.images {
            images.insert(name.clone(), ImageState::default());
            view.image(name, "waiting", false, false);
        }
        Self { images, view }
    }

    /// Shows what the Redis record knows of a build still running.
    fn seed(&mut self, rec: &BuildRecord) {
        let state = format!("{:?}", rec.state).to_lowercase();
        self.view.build(&format!("{state} by {}", rec.worker));
        for (name, img) in &rec.images {
            let state = self.images.entry(name.clone()).or_default();
            state.attempt = img.attempt;
            let ended = img.phase.is_terminal(Level::Image);
            if ended {
                state.phase = Some(img.phase);
            }
            let msg = format!("{:<9}  attempt {}", img.phase.as_str(), img.attempt);
            self.view
                .image(name, &msg, ended, img.phase == Phase::Succeeded);
        }
    }

    fn apply(&mut self, ev: &BuildEvent) {
        self.view.event(ev);
        let d = &ev.data;
        match &d.image {
            None => {
                if !ev.is_terminal() {
                    self.view.build(d.phase.as_str());
                }
            }
            Some(name) => {
                let state = self.images.entry(name.clone()).or_default();
                let attempt = d.attempt.unwrap_or(1);
                // Stale: an older attempt, or news after the image ended
                // (events may reorder across a worker takeover).
                let ended = state.phase.is_some_and(|p| p.is_terminal(Level::Image));
                if attempt < state.attempt || (attempt == state.attempt && ended) {
                    return;
                }
                state.attempt = attempt;
                state.phase = Some(d.phase);
                match d.phase {
                    Phase::Failed | Phase::Retrying => state.failure = Some(ev.clone()),
                    Phase::Succeeded => state.succeeded = Some(ev.clone()),
                    _ => {}
                }
                let details = super::output::compact_details(ev);
                let msg = format!("{:<9}  {details}", d.phase.as_str());
                let terminal = d.phase.is_terminal(Level::Image);
                self.view
                    .image(name, &msg, terminal, d.phase == Phase::Succeeded);
            }
        }
    }
}

/// Progress on standard error: live bars on a terminal, lines otherwise,
/// nothing for `--output json`.
enum View {
    Bars(Bars),
    Lines,
    Silent,
}

struct Bars {
    multi: MultiProgress,
    build: ProgressBar,
    images: BTreeMap<String, ProgressBar>,
    width: usize,
}

fn running_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner:.cyan}} {{prefix:<{width}.bold}}  {{msg}}  {{elapsed:.dim}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
    .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", " "])
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl View {
    fn new(f: &Follow) -> Self {
        if f.output.is_data() {
            return View::Silent;
        }
        if !std::io::stderr().is_terminal() {
            errln!(
                "waiting for build {} (up to {})",
                f.build_id,
                humantime::format_duration(f.timeout)
            );
            return View::Lines;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let width = f
            .images
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max("build".len());
        let build = multi.add(ProgressBar::new_spinner());
        build.set_style(running_style(width));
        build.set_prefix("build");
        build.set_message(format!("{}  waiting for a worker", f.build_id));
        build.enable_steady_tick(Duration::from_millis(120));
        View::Bars(Bars {
            multi,
            build,
            images: BTreeMap::new(),
            width,
        })
    }

    fn event(&self, ev: &BuildEvent) {
        if let View::Lines = self {
            errln!("{}", human_line(ev));
        }
    }

    fn build(&self, msg: &str) {
        if let View::Bars(b) = self {
            b.build.set_message(msg.to_owned());
        }
    }

    fn image(&mut self, name: &str, msg: &str, terminal: bool, ok: bool) {
        let View::Bars(b) = self else { return };
        if name.len() > b.width {
            b.width = name.len();
            for bar in std::iter::once(&b.build).chain(b.images.values()) {
                if !bar.is_finished() {
                    bar.set_style(running_style(b.width));
                }
            }
        }
        let bar = b.images.entry(name.to_owned()).or_insert_with(|| {
            let bar = b.multi.add(ProgressBar::new_spinner());
            bar.set_style(running_style(b.width));
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_finished() {
            return;
        }
        if terminal {
            let took = short_duration(bar.elapsed());
            bar.set_style(done_style());
            let mark = if ok { "✔" } else { "✘" };
            let width = b.width;
            bar.finish_with_message(format!("{mark} {name:<width$}  {msg}  {took}"));
        } else {
            bar.set_message(msg.to_owned());
        }
    }

    /// Ends the live display, keeping the images' last lines (the report
    /// follows).
    fn clear(&mut self) {
        if let View::Bars(b) = self {
            b.build.finish_and_clear();
            for bar in b.images.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }

    /// Leaves the display as it is.
    fn abandon(&mut self) {
        if let View::Bars(b) = self {
            for bar in std::iter::once(&b.build).chain(b.images.values()) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

/// The summary after the terminal build event.
fn report_event(f: &Follow, r: &Received, tracker: &Tracker, started: Instant) -> u8 {
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
                let _ = write!(head, ": {reason}");
            }
            if let Some(m) = d.message.as_deref().filter(|m| !m.is_empty()) {
                let _ = write!(head, ": {}", super::fold(m));
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
                    let _ = write!(line, ": {r}");
                }
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

fn print_failure(name: &str, ev: &BuildEvent) {
    let d = &ev.data;
    let mut line = format!("  {name} failed");
    if let Some(a) = attempt(ev) {
        let _ = write!(line, " on {a}");
    }
    if let Some(r) = d.reason {
        let _ = write!(line, ": {r}");
    }
    if let Some(m) = d.message.as_deref().filter(|m| !m.is_empty()) {
        let _ = write!(line, ": {}", super::fold(m));
    }
    if let Some(c) = d.exit_code {
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
fn pinned_references(d: &EventData, tracker: &Tracker) -> Vec<String> {
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
fn report_record(f: &Follow, rec: &BuildRecord) -> u8 {
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
fn record_event(id: &str, phase: Phase, rec: &BuildRecord) -> BuildEvent {
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
                reason: None,
            })
            .collect(),
    );
    BuildEvent::new("urn:kiln:record", rec.worker.clone(), rec.updated_at, data)
}

/// Writes a `--output json|yaml` document; `code` unless that fails.
fn emit(output: Output, value: &impl serde::Serialize, code: u8) -> u8 {
    match output.print(value) {
        Ok(()) => code,
        Err(e) => {
            errln!(
                "kiln: error: cannot write the result: {}",
                super::one_line(&e)
            );
            exit::ERROR
        }
    }
}

/// The answer when the workers refused the message this command published
/// (`request.rejected`): the build its id names, if any, is not this one.
fn report_rejected_request(f: &Follow, r: &Received) -> u8 {
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
