//! `kiln logs ID [IMAGE] [-f]`: the Kaniko logs of a build's pods, read
//! from the cluster with the user's kubeconfig.
//!
//! Without `--follow` it prints what the pods hold now and exits. With it,
//! it follows the running attempt of each image (the log endpoint with
//! `follow=true`, which the API server keeps open until the container
//! stops), and when an attempt fails with a retry coming, waits for the
//! next attempt's pod (a label-selected watch of the build's pods) and goes
//! on with it.
//!
//! When is an image over? The pods say it, as the worker keeps them
//! (DESIGN section 5): a failed attempt's pod stays until the next
//! attempt's pod exists, and pods are deleted only when the build ends or
//! the image is cancelled. So an image is over when its newest attempt
//! succeeded, failed for good (not retryable, its last attempt, or past the
//! build's deadline: [`classify`] and the plan in the pod's annotation), or
//! its pod was deleted with no newer attempt. Redis' record, when it says
//! the build finished, ends every image at once and gives the exit code.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::exit;
use crate::classify::{Observation, PodPhase, PodView, classify};
use crate::config::{Connections, parse_duration};
use crate::lease::{BuildRecord, Leases, RecordState};
use crate::plan::BuildPlan;
use crate::pod::{PodEvent, PodSettings, Pods};

pub const AFTER_HELP: &str = concat!(
    "\
Prints the Kaniko log of the newest attempt of each image of the build (or
of IMAGE only). With more than one image each line starts with
`image#attempt | ` (coloured on a terminal, never with NO_COLOR); notes
about attempts go to standard error.

--follow streams the log while the build runs and, when an attempt fails
and a retry is coming, waits for the next attempt and goes on with it; it
ends when every image is over and exits with the build's outcome (0
succeeded, 1 failed, 3 cancelled), read from Redis' record of the build or,
without Redis, from the pods (0 when every image's last attempt succeeded).

The pods exist until the build's outcome is published. When they are gone
(exit code 6, one line saying so), the end of each failed attempt's log
(8 KiB, secrets masked) is still in its image.retrying / image.failed event
(data.logTail): see it as it happens with `kiln watch --build ID -o json`,
or in your event subscribers' records.
The namespace is read from Redis' record; without one, --namespace is used.
Needs get/list/watch on pods and get on pods/log in the build namespace.

Examples:
  kiln logs shop-cart-1.2.3-7f3a
  kiln logs shop-cart-1.2.3-7f3a api --follow
  kiln logs shop-cart-1.2.3-7f3a --all-attempts

",
    crate::kiln_exit_codes!()
);

/// 128 + SIGPIPE, what a shell reports for a process a closed pipe ended.
/// How long an attempt whose log stream ended may still look running
/// before the stream is opened again (a connection cut by a proxy).
const REOPEN_AFTER: Duration = Duration::from_secs(5);
/// How long to wait for the worker to write the build's final record once
/// the pods say the build is over.
const RECORD_WAIT: Duration = Duration::from_secs(10);
/// How often Redis' record is read while following.
const RECORD_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The build id.
    pub id: String,
    /// Only this image of the build.
    pub image: Option<String>,
    /// Follow the logs until the build ends, across retries.
    #[arg(long, short)]
    pub follow: bool,
    /// Show this attempt instead of the newest (its pod must still exist).
    #[arg(long, conflicts_with_all = ["follow", "all_attempts"])]
    pub attempt: Option<u32>,
    /// Show every attempt whose pod still exists, oldest first.
    #[arg(long)]
    pub all_attempts: bool,
    /// Namespace of the build pods when Redis has no record naming it.
    #[arg(long, env = "KILN_NAMESPACE", default_value = "kiln-builds")]
    pub namespace: String,
    /// How long to wait for the Kubernetes API to list the pods.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kube_timeout: Duration,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<u8> {
    match logs(args).await {
        Err(e) if super::is_broken_pipe_error(&e) => Ok(super::exit::BROKEN_PIPE),
        other => other,
    }
}

async fn logs(args: LogsArgs) -> anyhow::Result<u8> {
    let redis = match super::connect_redis(&args.connections).await {
        Ok(l) => Some(l),
        Err(e) => {
            errln!(
                "kiln: Redis unreachable, going by the pods alone: {}",
                super::one_line(&e)
            );
            None
        }
    };
    let record = read_record(redis.as_ref(), &args.id).await;
    let namespace = record
        .as_ref()
        .map_or_else(|| args.namespace.clone(), |r| r.namespace.clone());
    let pods = connect_kube(args.kube_timeout).await?;
    let listed = tokio::time::timeout(args.kube_timeout, pods.build_pods(&namespace, &args.id))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the Kubernetes API did not answer within {} (namespace {namespace})",
                humantime::format_duration(args.kube_timeout)
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list the pods of build {} in namespace {namespace}: {}",
                args.id,
                super::fold(&e.to_string())
            )
        })?;

    // An image name the build does not have is a typo, not "no pods yet".
    if let Some(image) = &args.image {
        let known = known_images(&listed, record.as_ref());
        if !known.is_empty() && !known.contains(image) {
            errln!(
                "kiln: build {} has no image {image:?}; its images: {}",
                args.id,
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
            return Ok(exit::INVALID);
        }
    }
    let wanted = |v: &PodView| args.image.as_ref().is_none_or(|i| *i == v.image);
    let mut listed: Vec<PodView> = listed.into_iter().filter(|v| wanted(v)).collect();
    listed.sort_by(|a, b| (&a.image, a.attempt).cmp(&(&b.image, b.attempt)));

    let running = record
        .as_ref()
        .is_some_and(|r| r.state != RecordState::Finished);
    if listed.is_empty() && !(args.follow && running) {
        errln!("kiln: {}", gone_message(&args, &namespace, record.as_ref()));
        return Ok(exit::ERROR);
    }
    let ctx = Ctx {
        pods,
        namespace,
        colour: crate::terminal::colour_allowed(std::io::stdout().is_terminal()),
    };
    if args.follow {
        follow(&ctx, &args, redis.as_ref(), &listed).await
    } else {
        show(&ctx, &args, &listed).await
    }
}

/// The one line for a build without pods.
fn gone_message(args: &LogsArgs, namespace: &str, record: Option<&BuildRecord>) -> String {
    let what = args.image.as_ref().map_or_else(
        || format!("build {}", args.id),
        |i| format!("image {i} of build {}", args.id),
    );
    let why = match record {
        Some(r) if r.state == RecordState::Finished => format!(
            "the build {} and its pods were deleted",
            r.phase.map_or("finished", kiln_protocol::Phase::as_str)
        ),
        Some(_) => "its pods are not there yet, or were deleted".to_owned(),
        None => "Redis has no record of it: it finished long ago or never existed".to_owned(),
    };
    format!(
        "no pods of {what} in namespace {namespace} ({why}); the end of each failed attempt's log is in its failure event (data.logTail): `kiln watch --build {id} -o json` shows them as they happen, `kiln status {id}` shows the outcome",
        id = args.id
    )
}

async fn read_record(redis: Option<&Leases>, id: &str) -> Option<BuildRecord> {
    redis?.record(id).await.ok().flatten()
}

async fn connect_kube(timeout: Duration) -> anyhow::Result<Pods> {
    let client = tokio::time::timeout(timeout, Pods::default_client())
        .await
        .map_err(|_| anyhow::anyhow!("the Kubernetes configuration could not be loaded in time"))?
        .map_err(|e| {
            if e.to_string().contains("Failed to infer configuration") {
                anyhow::anyhow!(
                    "no Kubernetes configuration (no kubeconfig at $KUBECONFIG or ~/.kube/config, not in a cluster)"
                )
            } else {
                anyhow::anyhow!("{}", super::fold(&e.to_string()))
            }
        })?;
    Ok(Pods::new(
        client,
        PodSettings {
            kaniko_image: String::new(),
            fetch_image: String::new(),
            s3_region: String::new(),
        },
    ))
}

fn known_images(pods: &[PodView], record: Option<&BuildRecord>) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = pods.iter().map(|v| v.image.clone()).collect();
    if let Some(r) = record {
        known.extend(r.images.keys().cloned());
    }
    if let Some(plan) = pods.iter().find_map(plan_of) {
        known.extend(plan.images.iter().map(|i| i.name.clone()));
    }
    known
}

fn plan_of(v: &PodView) -> Option<BuildPlan> {
    serde_json::from_str(v.plan.as_deref()?).ok()
}

struct Ctx {
    pods: Pods,
    namespace: String,
    colour: bool,
}

/// What a log task tells the printer, in order.
enum Msg {
    Line(Vec<u8>),
    /// A note for standard error.
    Note(String),
    End,
}

/// Who a line belongs to.
#[derive(Clone)]
struct Source {
    image: String,
    attempt: u32,
}

/// Writes lines to standard output, prefixed when several images are shown.
struct Printer {
    prefix: bool,
    colour: bool,
    colours: BTreeMap<String, usize>,
}

impl Printer {
    fn new(prefix: bool, colour: bool) -> Self {
        Self {
            prefix,
            colour,
            colours: BTreeMap::new(),
        }
    }

    fn line(&mut self, from: &Source, line: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.prefix {
            let p = format!("{}#{} | ", from.image, from.attempt);
            if self.colour {
                // Cyan, yellow, magenta, green, blue, red: one per image.
                const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];
                let n = self.colours.len();
                let i = *self.colours.entry(from.image.clone()).or_insert(n);
                write!(out, "\x1b[{}m{p}\x1b[0m", COLOURS[i % COLOURS.len()])?;
            } else {
                out.write_all(p.as_bytes())?;
            }
        }
        out.write_all(line)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    fn handle(&mut self, from: &Source, msg: Msg) -> std::io::Result<bool> {
        match msg {
            Msg::Line(l) => self.line(from, &l)?,
            Msg::Note(n) => {
                writeln!(
                    std::io::stderr(),
                    "kiln: {}#{}: {n}",
                    from.image,
                    from.attempt
                )?;
            }
            Msg::End => return Ok(true),
        }
        Ok(false)
    }
}

/// Without `--follow`: the chosen attempts, one after the other.
async fn show(ctx: &Ctx, args: &LogsArgs, listed: &[PodView]) -> anyhow::Result<u8> {
    let mut chosen: Vec<&PodView> = Vec::new();
    let images: BTreeSet<&str> = listed.iter().map(|v| v.image.as_str()).collect();
    for image in &images {
        let of: Vec<&PodView> = listed.iter().filter(|v| v.image == *image).collect();
        match args.attempt {
            Some(n) => chosen.extend(of.iter().filter(|v| v.attempt == n)),
            None if args.all_attempts => chosen.extend(&of),
            None => chosen.extend(of.last()),
        }
    }
    if chosen.is_empty() {
        errln!(
            "kiln: build {} has no pod of attempt {} in namespace {} (pods are deleted once the next attempt exists)",
            args.id,
            args.attempt.unwrap_or_default(),
            ctx.namespace
        );
        return Ok(exit::ERROR);
    }
    let mut printer = Printer::new(images.len() > 1, ctx.colour);
    for v in chosen {
        let from = Source {
            image: v.image.clone(),
            attempt: v.attempt,
        };
        if v.phase == Some(PodPhase::Pending) {
            printer.handle(&from, Msg::Note(pending_note(v)))?;
            continue;
        }
        let (tx, mut rx) = mpsc::channel(256);
        tokio::spawn(stream_pod(
            ctx.pods.clone(),
            ctx.namespace.clone(),
            v.name.clone(),
            false,
            tx,
        ));
        while let Some(msg) = rx.recv().await {
            if printer.handle(&from, msg)? {
                break;
            }
        }
    }
    Ok(exit::OK)
}

fn pending_note(v: &PodView) -> String {
    let why = v
        .waiting
        .as_ref()
        .map(|(r, _)| r.clone())
        .or_else(|| v.unschedulable.as_ref().map(|(r, _)| r.clone()))
        .unwrap_or_else(|| "Pending".to_owned());
    format!("pod {} has not started yet ({why}): no log yet", v.name)
}

/// Reads one pod's Kaniko log into `tx` (following it if asked), or the
/// log of the init container that stopped the pod, then sends
/// [`Msg::End`].
async fn stream_pod(pods: Pods, ns: String, name: String, follow: bool, tx: mpsc::Sender<Msg>) {
    let send = |m: Msg| {
        let tx = tx.clone();
        async move { tx.send(m).await.is_ok() }
    };
    let opened = pods.log_lines(&ns, &name, None, follow, None).await;
    let lines = match opened {
        Ok(s) => Some(s.boxed()),
        Err(crate::Error::Kube {
            status: Some(400),
            context: message,
            ..
        }) => {
            if let Ok(Some(init)) = pods.failed_init_container(&ns, &name).await {
                send(Msg::Note(format!(
                    "the Kaniko container never ran: init container {init} failed; its log follows"
                )))
                .await;
                match pods.log_lines(&ns, &name, Some(&init), false, None).await {
                    Ok(s) => Some(s.boxed()),
                    Err(e) => {
                        send(Msg::Note(format!("cannot read the log of {init}: {e}"))).await;
                        None
                    }
                }
            } else {
                // The API server's reason, e.g. "... is waiting to start:
                // PodInitializing".
                send(Msg::Note(format!(
                    "no log: {}",
                    message.rsplit(": ").next().unwrap_or(&message)
                )))
                .await;
                None
            }
        }
        Err(crate::Error::Kube {
            status: Some(404), ..
        }) => {
            send(Msg::Note(format!(
                "pod {name} was deleted before its log could be read"
            )))
            .await;
            None
        }
        Err(e) => {
            send(Msg::Note(format!("cannot read the log of pod {name}: {e}"))).await;
            None
        }
    };
    if let Some(mut lines) = lines {
        while let Some(line) = lines.next().await {
            let ok = match line {
                Ok(l) => send(Msg::Line(l)).await,
                Err(e) => {
                    send(Msg::Note(e.to_string())).await;
                    false
                }
            };
            if !ok {
                break;
            }
        }
    }
    let _ = tx.send(Msg::End).await;
}

/// How the last shown attempt of an image ended, as far as the pods say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
}

/// One followed image.
#[derive(Debug, Default)]
struct Track {
    /// The lowest attempt not shown yet.
    next: u32,
    /// The attempt whose log is being streamed.
    streaming: Option<u32>,
    /// The attempt whose stream ended, waiting for its pod's outcome.
    ended: Option<(u32, Instant)>,
    /// The last attempt shown, and how it ended.
    last: Option<(u32, Outcome)>,
    /// A "not started yet" note was printed for this attempt.
    noted: Option<u32>,
    done: bool,
}

/// The pods of the build as the watch shows them: name → (view, gone).
type Seen = BTreeMap<String, (PodView, bool)>;

/// The watch of the build's pods, across its re-lists.
#[derive(Default)]
struct Watched {
    seen: Seen,
    /// During a re-list: the names of the pods listed so far (the others
    /// are gone once it completes).
    relist: Option<BTreeSet<String>>,
    /// The first list is complete: until then no image can be judged over.
    synced: bool,
}

impl Watched {
    /// Takes in one watch event; returns the image of a pod that exists.
    fn apply(&mut self, ev: PodEvent) -> Option<String> {
        match ev {
            PodEvent::Applied(v) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(v.name.clone());
                }
                let image = v.image.clone();
                self.seen.insert(v.name.clone(), (v, false));
                return Some(image);
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
fn first_tracks(args: &LogsArgs, listed: &[PodView]) -> BTreeMap<String, Track> {
    let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
    for v in listed {
        let t = tracks.entry(v.image.clone()).or_insert_with(|| Track {
            next: v.attempt,
            ..Track::default()
        });
        if !args.all_attempts {
            t.next = t.next.max(v.attempt);
        }
    }
    if let Some(image) = &args.image {
        tracks.entry(image.clone()).or_insert_with(|| Track {
            next: 1,
            ..Track::default()
        });
    }
    tracks
}

/// With `--follow`.
async fn follow(
    ctx: &Ctx,
    args: &LogsArgs,
    redis: Option<&Leases>,
    listed: &[PodView],
) -> anyhow::Result<u8> {
    let mut ctrl_c = pin!(super::ctrl_c());
    let mut watch = pin!(ctx.pods.watch_build(&ctx.namespace, &args.id));
    let (tx, mut rx) = mpsc::channel::<(Source, Msg)>(1024);
    let mut tracks = first_tracks(args, listed);
    let known = known_images(listed, None);
    let mut printer = Printer::new(
        args.image.is_none() && known.len().max(tracks.len()) > 1,
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
                if let Some(image) = ev.and_then(|ev| watched.apply(ev))
                    && args.image.is_none()
                {
                    tracks.entry(image).or_insert_with(|| Track { next: 1, ..Track::default() });
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
fn pod_of<'a>(of: &[&'a (PodView, bool)], attempt: u32) -> Option<&'a (PodView, bool)> {
    of.iter().find(|(v, _)| v.attempt == attempt).copied()
}

/// Where the steps of followed images go: the streams they open and the
/// printer.
struct Io<'a> {
    ctx: &'a Ctx,
    tx: &'a mpsc::Sender<(Source, Msg)>,
    printer: &'a mut Printer,
}

/// Moves one followed image on: streams its next attempt, waits for it, or
/// decides that it is over.
fn step(
    io: &mut Io<'_>,
    image: &str,
    t: &mut Track,
    seen: &Seen,
    finished: bool,
) -> std::io::Result<()> {
    if t.done || t.streaming.is_some() {
        return Ok(());
    }
    let mut of: Vec<&(PodView, bool)> = seen.values().filter(|(v, _)| v.image == image).collect();
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
                    Some((_, Outcome::Succeeded)) => true,
                    Some((a, Outcome::Failed)) => pod_of(&of, a)
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
fn settle_ended(
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
            let from = Source {
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
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                },
            ));
            t.next = a + 1;
            t.ended = None;
            Ok(true)
        }
    }
}

/// What [`show_next`] did.
enum Next {
    /// Streaming the next attempt, or waiting for its pod to start.
    Busy,
    /// The next attempt's pod is gone: it ended unseen, to be settled.
    Gone,
    /// No attempt to show now.
    Nothing,
}

/// Shows the next attempt of an image: a note while its pod has not
/// started, else its log.
fn show_next(
    io: &mut Io<'_>,
    image: &str,
    t: &mut Track,
    of: &[&(PodView, bool)],
) -> std::io::Result<Next> {
    let Some((v, gone)) = of.iter().find(|(v, _)| v.attempt >= t.next).copied() else {
        return Ok(Next::Nothing);
    };
    let from = Source {
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

fn spawn_stream(ctx: &Ctx, v: &PodView, tx: &mpsc::Sender<(Source, Msg)>, tail: Option<i64>) {
    let (pods, ns, name) = (ctx.pods.clone(), ctx.namespace.clone(), v.name.clone());
    let from = Source {
        image: v.image.clone(),
        attempt: v.attempt,
    };
    let out = tx.clone();
    tokio::spawn(async move {
        let (inner_tx, mut inner_rx) = mpsc::channel(256);
        let reader = async {
            if tail.is_some() {
                follow_from_now(pods, ns, name, inner_tx).await;
            } else {
                stream_pod(pods, ns, name, true, inner_tx).await;
            }
        };
        let forward = async {
            while let Some(m) = inner_rx.recv().await {
                if out.send((from.clone(), m)).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(reader, forward);
    });
}

/// Follows a pod's log from now on (after a cut stream).
async fn follow_from_now(pods: Pods, ns: String, name: String, tx: mpsc::Sender<Msg>) {
    if let Ok(lines) = pods.log_lines(&ns, &name, None, true, Some(0)).await {
        let mut lines = pin!(lines);
        while let Some(Ok(l)) = lines.next().await {
            if tx.send(Msg::Line(l)).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Msg::End).await;
}

/// Whether the pod's attempt is over (its container will write no more).
fn over(v: &PodView) -> bool {
    matches!(v.phase, Some(PodPhase::Succeeded | PodPhase::Failed))
}

/// Whether the worker will start another attempt after this failed one:
/// the failure is retryable, attempts are left and the deadline has not
/// passed (the machine's rule; the plan is in the pod's annotation).
fn retry_coming(v: &PodView) -> bool {
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
async fn outcome(redis: Option<&Leases>, id: &str, tracks: &BTreeMap<String, Track>) -> u8 {
    if !tracks.is_empty()
        && tracks
            .values()
            .all(|t| matches!(t.last, Some((_, Outcome::Succeeded))))
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
