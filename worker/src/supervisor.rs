//! Owns the builds of one worker: takes requests off the queue, claims them,
//! runs one task per build that drives its [`Machine`] and executes its
//! actions, renews the leases in batches, routes pod events to builds, and
//! adopts builds whose lease lapsed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kiln_protocol::{BuildEvent, EventData, Phase, Reason};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, Incoming, OutgoingEvent, Routed};
use crate::classify::{PodPhase, PodView};
use crate::error::{Error, Result};
use crate::lease::{Admit, BuildRecord, Claim, ImageRecord, Leases, Notice, RecordState, Renewal};
use crate::machine::{Action, ImageState, Input, Machine, Settings, Stage};
use crate::metrics::Metrics;
use crate::plan::{BuildPlan, MAX_PLAN_BYTES};
use crate::pod::{Created, PodEvent, Pods};
use crate::policy::Policy;
use crate::render::render_dockerfile;

/// The clients and settings every part of the worker shares.
pub struct Context {
    pub broker: Arc<Broker>,
    pub leases: Leases,
    pub pods: Pods,
    pub policy: Arc<Policy>,
    pub settings: Arc<Settings>,
    pub record_ttl: Duration,
    pub prefetch: u16,
    pub metrics: Arc<Metrics>,
    builds: Mutex<HashMap<String, BuildHandle>>,
    /// Builds seen in the cluster that another worker owns (or owned).
    foreign: Mutex<HashMap<String, Foreign>>,
    /// Builds being adopted right now (one adoption per build at a time).
    adopting: Mutex<HashSet<String>>,
    /// Readiness: the build consumer is running.
    consuming: std::sync::atomic::AtomicBool,
    /// Every Kiln build seen in the cluster, for the status page.
    pub cluster: crate::cluster::ClusterView,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

struct BuildHandle {
    tx: mpsc::UnboundedSender<Input>,
    stop: CancellationToken,
    /// Becomes true once every first-attempt pod exists and `accepted` is
    /// confirmed (or the build already ended).
    accepted: watch::Receiver<bool>,
    /// Build namespace, to find the pods again after the build is stopped.
    namespace: Option<String>,
}

struct Foreign {
    namespace: String,
    checked: Option<Instant>,
}

/// A build in flight on this worker, for the status page.
#[derive(Debug, Clone)]
pub struct LocalBuild {
    pub id: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        broker: Arc<Broker>,
        leases: Leases,
        pods: Pods,
        policy: Arc<Policy>,
        settings: Arc<Settings>,
        record_ttl: Duration,
        prefetch: u16,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            leases,
            pods,
            policy,
            settings,
            record_ttl,
            prefetch,
            metrics,
            builds: Mutex::new(HashMap::new()),
            foreign: Mutex::new(HashMap::new()),
            adopting: Mutex::new(HashSet::new()),
            consuming: std::sync::atomic::AtomicBool::new(false),
            cluster: crate::cluster::ClusterView::new(),
        })
    }

    /// Number of builds this worker drives now.
    pub fn builds_in_flight(&self) -> usize {
        lock(&self.builds).len()
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn local_ids(&self) -> Vec<String> {
        lock(&self.builds).keys().cloned().collect()
    }

    fn send(&self, id: &str, input: Input) -> bool {
        lock(&self.builds)
            .get(id)
            .is_some_and(|h| h.tx.send(input).is_ok())
    }

    fn remove(&self, id: &str) {
        lock(&self.builds).remove(id);
        self.metrics
            .builds_in_flight
            .set(i64::try_from(self.builds_in_flight()).unwrap_or(i64::MAX));
    }
}

/// Runs the worker until `shutdown` resolves, then hands its builds over.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let stop = CancellationToken::new();
    let names = ctx.broker.names().clone();
    let mut tasks = tokio::task::JoinSet::new();

    for ns in ctx.policy.namespaces() {
        tasks.spawn(watch_namespace(ctx.clone(), ns, stop.clone()));
    }
    tasks.spawn(renew_loop(ctx.clone(), stop.clone()));
    tasks.spawn(notice_loop(ctx.clone(), stop.clone()));
    tasks.spawn(adopt_loop(ctx.clone(), stop.clone()));

    let builds = ctx
        .broker
        .consume(
            &names.builds(),
            ctx.prefetch,
            &format!("kiln-{}", ctx.settings.worker),
        )
        .await?;
    let cancels = ctx
        .broker
        .consume(
            &names.cancels(),
            64,
            &format!("kiln-{}-cancels", ctx.settings.worker),
        )
        .await?;
    ctx.consuming
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(worker = %ctx.settings.worker, "consuming {} and {}", names.builds(), names.cancels());

    tokio::pin!(shutdown);
    let consumer = consume_loop(ctx.clone(), builds, cancels, stop.clone());
    tokio::select! {
        () = &mut shutdown => {}
        () = consumer => {
            tracing::error!("consumers ended unexpectedly");
        }
    }
    ctx.consuming
        .store(false, std::sync::atomic::Ordering::Relaxed);
    hand_over(&ctx, &stop).await;
    tasks.shutdown().await;
    Ok(())
}

/// Stops every build task and releases their leases, telling the other
/// workers so they adopt the builds at once. Pods are left running.
async fn hand_over(ctx: &Arc<Context>, stop: &CancellationToken) {
    stop.cancel();
    let handles: Vec<(String, CancellationToken)> = lock(&ctx.builds)
        .iter()
        .map(|(id, h)| (id.clone(), h.stop.clone()))
        .collect();
    for (_, s) in &handles {
        s.cancel();
    }
    let ids: Vec<String> = handles.into_iter().map(|(id, _)| id).collect();
    if let Err(e) = ctx.leases.release_all(&ids).await {
        tracing::warn!(error = %e, "could not release leases; they lapse after the lease TTL");
    } else {
        tracing::info!(builds = ids.len(), "released leases for takeover");
    }
    ctx.broker.close().await;
}

async fn consume_loop(
    ctx: Arc<Context>,
    mut builds: crate::amqp::Consumer,
    mut cancels: crate::amqp::Consumer,
    stop: CancellationToken,
) {
    let mut builds_open = true;
    let mut cancels_open = true;
    while builds_open || cancels_open {
        tokio::select! {
            () = stop.cancelled() => break,
            d = builds.next(), if builds_open => match d {
                Some(d) => { tokio::spawn(handle_request(ctx.clone(), d)); }
                None => builds_open = false,
            },
            d = cancels.next(), if cancels_open => match d {
                Some(d) => { tokio::spawn(handle_cancel(ctx.clone(), d)); }
                None => cancels_open = false,
            },
        }
    }
    builds.cancel().await;
    cancels.cancel().await;
}

/// Publishes an event, retrying until the broker confirms it.
async fn publish(ctx: &Context, ev: &BuildEvent) -> Result<()> {
    let level = ev.level();
    let body =
        serde_json::to_vec(ev).map_err(|e| Error::amqp_caused("cannot encode the event", e))?;
    let out = OutgoingEvent {
        routing_key: kiln_protocol::routing_key(level, ev.data.phase),
        message_id: ev.id.clone(),
        build_id: ev.data.build_id.clone(),
        phase: ev.data.phase.as_str().to_owned(),
        traceparent: ev.traceparent.clone(),
        body,
    };
    let routed = ctx.broker.publish_event(&out).await?;
    ctx.metrics
        .event_published(&out.routing_key, routed == Routed::NoQueue);
    ctx.metrics.event(ev);
    Ok(())
}

fn rejected_event(
    ctx: &Context,
    id: &str,
    reason: Reason,
    message: String,
    tenant: Option<String>,
    traceparent: Option<String>,
) -> BuildEvent {
    let phase = Phase::Rejected;
    build_level_event(ctx, id, phase, traceparent, |d| {
        d.reason = Some(reason);
        d.message = Some(message);
        d.tenant = tenant;
    })
}

fn build_level_event(
    ctx: &Context,
    id: &str,
    phase: Phase,
    traceparent: Option<String>,
    fill: impl FnOnce(&mut EventData),
) -> BuildEvent {
    let mut data = EventData::for_build(id, phase);
    fill(&mut data);
    BuildEvent::new(
        ctx.settings.source.clone(),
        ctx.settings.worker.clone(),
        jiff::Timestamp::now(),
        data,
    )
    .with_traceparent(traceparent)
}

/// Bad input: `build.rejected` when the id is readable, then the message
/// goes to the dead-letter queue with `kiln-error`.
async fn reject(ctx: &Context, d: &Incoming, id: Option<String>, reason: Reason, message: String) {
    tracing::warn!(build_id = id.as_deref().unwrap_or("?"), %reason, "request rejected: {message}");
    ctx.metrics.rejected(reason);
    if let Some(id) = &id {
        let ev = rejected_event(
            ctx,
            id,
            reason,
            message.clone(),
            d.user_id.clone(),
            d.traceparent.clone(),
        );
        if let Err(e) = publish(ctx, &ev).await {
            tracing::error!(build_id = %id, error = %e, "could not publish build.rejected; requeueing the request");
            let _ = d.requeue().await;
            return;
        }
    }
    let header = format!("{reason}: {message}");
    if let Err(e) = ctx.broker.dead_letter(d, &header).await {
        tracing::error!(error = %e, "could not dead-letter a rejected request; requeueing it");
        let _ = d.requeue().await;
    }
}

/// One build request, from delivery to ack.
async fn handle_request(ctx: Arc<Context>, d: Incoming) {
    let received = Instant::now();
    let req = match kiln_protocol::parse_build_request(&d.body) {
        Ok(r) => r,
        Err(e) => {
            let id = kiln_protocol::readable_id(&d.body);
            let msg = e
                .errors()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            reject(&ctx, &d, id, Reason::InvalidRequest, msg).await;
            return;
        }
    };
    let admission = match ctx.policy.admit(d.user_id.as_deref(), &req) {
        Ok(a) => a,
        Err(violations) => {
            let msg = violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            reject(&ctx, &d, Some(req.id.clone()), Reason::PolicyViolation, msg).await;
            return;
        }
    };
    let mut rendered = Vec::with_capacity(req.images.len());
    let mut problems = Vec::new();
    for (i, img) in req.images.iter().enumerate() {
        match &img.dockerfile_inline {
            Some(t) => match render_dockerfile(t, &img.template_args) {
                Ok(s) => rendered.push(Some(s)),
                Err(e) => {
                    problems.push(format!("images[{i}].dockerfileInline: {e}"));
                    rendered.push(None);
                }
            },
            None => rendered.push(None),
        }
    }
    if !problems.is_empty() {
        reject(
            &ctx,
            &d,
            Some(req.id.clone()),
            Reason::ConfigError,
            problems.join("; "),
        )
        .await;
        return;
    }
    let plan = BuildPlan::new(
        &req,
        &admission,
        rendered,
        jiff::Timestamp::now(),
        d.traceparent.clone(),
    );
    if plan.to_annotation().len() > MAX_PLAN_BYTES {
        reject(
            &ctx,
            &d,
            Some(req.id.clone()),
            Reason::InvalidRequest,
            format!("the normalised request is larger than the {} KiB a pod annotation can carry; shorten inline Dockerfiles or split the build", MAX_PLAN_BYTES / 1024),
        )
        .await;
        return;
    }
    let id = plan.id.clone();

    // Duplicate of a build this worker already drives: ack once it is safe.
    let existing = lock(&ctx.builds).get(&id).map(|h| h.accepted.clone());
    if let Some(accepted) = existing {
        wait_accepted(accepted).await;
        ack(&d, &id).await;
        return;
    }

    // Redis trouble is waited out while holding the delivery: requeueing
    // would spend the queue's delivery limit and dead-letter a good request.
    let Some(cancelled) = until_ok("claim", &id, || claim_or_wait(&ctx, &id)).await else {
        // Accepted or finished elsewhere: a duplicate.
        tracing::info!(build_id = %id, "duplicate request acked");
        ctx.metrics.duplicate();
        ack(&d, &id).await;
        return;
    };

    // Claimed. A cancel may have come while the request was queued.
    if let Some(reason) = cancelled {
        let ev = build_level_event(
            &ctx,
            &id,
            Phase::Cancelled,
            plan.traceparent.clone(),
            |dt| {
                dt.reason = Some(Reason::Cancelled);
                dt.message = Some(reason.clone());
                dt.tenant = Some(plan.tenant.clone());
                dt.app.clone_from(&plan.app);
                dt.component.clone_from(&plan.component);
                dt.labels.clone_from(&plan.labels);
            },
        );
        if publish(&ctx, &ev).await.is_ok() {
            let rec = record(
                &ctx,
                &plan,
                RecordState::Finished,
                Some(Phase::Cancelled),
                &[],
            );
            let _ = ctx.leases.finish(&id, &rec, ctx.record_ttl).await;
            ack(&d, &id).await;
            ctx.metrics
                .build_finished(Phase::Cancelled, Some(Reason::Cancelled), 0.0);
        } else {
            let _ = ctx.leases.release(&id).await;
            let _ = d.requeue().await;
        }
        return;
    }

    let plan = Arc::new(plan);
    let (machine, actions) = Machine::start(
        plan.clone(),
        ctx.settings.clone(),
        Instant::now().into_std(),
        jiff::Timestamp::now(),
    );
    let accepted = spawn_build(&ctx, machine, actions);
    let Some(accepted) = accepted else {
        // Someone else started it between our checks (adoption): duplicate.
        ack(&d, &id).await;
        return;
    };
    if wait_accepted(accepted).await {
        ack(&d, &id).await;
        ctx.metrics.accepted_latency(received.elapsed());
    }
}

/// Retries a Redis operation with capped exponential backoff until it
/// succeeds: a Redis outage delays builds, it never drops them.
async fn until_ok<T, F, Fut>(what: &str, id: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delays = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times(),
    );
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(build_id = %id, error = %e, retry_in = ?wait, "cannot {what}; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Claims the lease, waiting while another worker holds it without having
/// accepted the build yet. `None`: a duplicate. `Some(cancel)`: ours to
/// start, with the cancel reason if one came while it was queued.
async fn claim_or_wait(ctx: &Context, id: &str) -> Result<Option<Option<String>>> {
    loop {
        match ctx.leases.claim_request(id).await? {
            Admit::Duplicate => return Ok(None),
            Admit::Acquired { cancel } => {
                if lock(&ctx.builds).contains_key(id) {
                    return Ok(None);
                }
                return Ok(Some(cancel));
            }
            Admit::HeldBy(_) => {
                // The other worker is creating its pods; the request is safe
                // only once they exist. Keep this copy until then.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn wait_accepted(mut rx: watch::Receiver<bool>) -> bool {
    loop {
        if *rx.borrow_and_update() {
            return true;
        }
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}

async fn ack(d: &Incoming, id: &str) {
    if let Err(e) = d.ack().await {
        // The channel was recovered meanwhile: the broker redelivers the
        // request, which is then acked as a duplicate.
        tracing::warn!(build_id = %id, error = %e, "ack failed; the request will be redelivered");
    }
}

fn record(
    ctx: &Context,
    plan: &BuildPlan,
    state: RecordState,
    phase: Option<Phase>,
    images: &[ImageState],
) -> BuildRecord {
    BuildRecord {
        state,
        phase: phase.map(|p| p.as_str().to_owned()),
        tenant: plan.tenant.clone(),
        namespace: plan.namespace.clone(),
        worker: ctx.settings.worker.clone(),
        images: images
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    ImageRecord {
                        phase: s.phase.as_str().to_owned(),
                        attempt: s.attempt,
                        pod: s.pod.clone(),
                        digest: s.digest.clone(),
                    },
                )
            })
            .collect(),
        updated_at: jiff::Timestamp::now(),
    }
}

/// Registers the build and spawns its task. `None` if the id is already
/// driven here.
fn spawn_build(
    ctx: &Arc<Context>,
    machine: Machine,
    actions: Vec<Action>,
) -> Option<watch::Receiver<bool>> {
    let id = machine.plan().id.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let (acc_tx, acc_rx) = watch::channel(false);
    let stop = CancellationToken::new();
    {
        let mut builds = lock(&ctx.builds);
        if builds.contains_key(&id) {
            return None;
        }
        builds.insert(
            id.clone(),
            BuildHandle {
                tx,
                stop: stop.clone(),
                accepted: acc_rx.clone(),
                namespace: Some(machine.plan().namespace.clone()),
            },
        );
        ctx.metrics
            .builds_in_flight
            .set(i64::try_from(builds.len()).unwrap_or(i64::MAX));
    }
    lock(&ctx.foreign).remove(&id);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let span = tracing::info_span!("build", build_id = %id);
        crate::telemetry::set_parent(&span, machine.plan().traceparent.as_deref());
        let _ = tracing::Instrument::instrument(
            drive(ctx.clone(), machine, actions, rx, stop, acc_tx),
            span,
        )
        .await;
        ctx.remove(&id);
    });
    Some(acc_rx)
}

/// The task of one build: feeds inputs to the machine and executes its
/// actions until the build ends, the lease is lost or the worker stops.
async fn drive(
    ctx: Arc<Context>,
    mut machine: Machine,
    actions: Vec<Action>,
    mut rx: mpsc::UnboundedReceiver<Input>,
    stop: CancellationToken,
    accepted: watch::Sender<bool>,
) -> Result<()> {
    let id = machine.plan().id.clone();
    let outcome = async {
        Box::pin(execute(&ctx, &mut machine, actions)).await?;
        if machine.pods_exist() || machine.stage() != Stage::Active {
            if machine.stage() == Stage::Active {
                let states = machine.image_states();
                let _ = ctx
                    .leases
                    .put_record(
                        &id,
                        &record(&ctx, machine.plan(), RecordState::Accepted, None, &states),
                        ctx.record_ttl.max(Duration::from_secs(86_400)),
                    )
                    .await;
            }
            let _ = accepted.send(true);
        }
        while machine.stage() == Stage::Active {
            let wake = machine.next_wakeup();
            let input = tokio::select! {
                i = rx.recv() => match i {
                    Some(i) => i,
                    None => return Ok(()),
                },
                () = sleep_until(wake) => Input::Tick,
            };
            // Boxed: the task of an idle build then holds a small future,
            // not the largest state of the API calls it may make.
            let input = Box::pin(enrich(&ctx, input)).await;
            let actions = machine.handle(input, Instant::now().into_std(), jiff::Timestamp::now());
            if actions.is_empty() {
                continue;
            }
            Box::pin(execute(&ctx, &mut machine, actions)).await?;
            if !*accepted.borrow() && machine.pods_exist() {
                let _ = accepted.send(true);
            }
        }
        let _ = accepted.send(true);
        Ok::<(), Error>(())
    };
    tokio::select! {
        r = outcome => r,
        () = stop.cancelled() => {
            tracing::info!(build_id = %id, "stopped acting on the build (lease lost or shutting down)");
            Err(Error::LeaseLost(id))
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => futures::future::pending().await,
    }
}

/// Adds the log tail to observations of failed pods (IO stays out of the
/// machine).
async fn enrich(ctx: &Context, input: Input) -> Input {
    match input {
        Input::Observed {
            pod,
            log_tail: None,
        } if pod.phase == Some(PodPhase::Failed) && !pod.deleting => {
            let log_tail = ctx.pods.log_tail(&pod.namespace, &pod.name).await;
            Input::Observed { pod, log_tail }
        }
        other => other,
    }
}

/// Executes actions front to back; results of pod creation feed back into
/// the machine and their actions run next.
async fn execute(ctx: &Arc<Context>, machine: &mut Machine, actions: Vec<Action>) -> Result<()> {
    let mut queue: VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Publish(ev) => publish(ctx, &ev).await?,
            Action::CreatePod { image, attempt } => {
                let plan = machine.plan().clone();
                let started = Instant::now();
                let input = loop {
                    match ctx
                        .pods
                        .create(&plan, image, attempt, jiff::Timestamp::now())
                        .await
                    {
                        Ok(Created::New(pod) | Created::Existing(pod)) => {
                            ctx.metrics.pod_created(started.elapsed());
                            break Input::PodCreated {
                                image,
                                attempt,
                                pod: Box::new(pod),
                            };
                        }
                        Err(e) if e.is_transient() => {
                            ctx.metrics.kube_error("create");
                            tracing::warn!(build_id = %plan.id, error = %e, "pod create keeps failing; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => {
                            ctx.metrics.kube_error("create");
                            break Input::PodCreateFailed {
                                image,
                                attempt,
                                message: e.to_string(),
                            };
                        }
                    }
                };
                let more = machine.handle(input, Instant::now().into_std(), jiff::Timestamp::now());
                // Results of this action come before what was queued after it.
                for a in more.into_iter().rev() {
                    queue.push_front(a);
                }
            }
            Action::DeletePod {
                namespace,
                name,
                uid,
            } => {
                if let Err(e) = ctx.pods.delete(&namespace, &name, &uid).await {
                    ctx.metrics.kube_error("delete");
                    tracing::warn!(pod = %name, error = %e, "could not delete pod");
                }
            }
            Action::Finished(phase, reason) => {
                let plan = machine.plan().clone();
                let states = machine.image_states();
                let rec = record(ctx, &plan, RecordState::Finished, Some(phase), &states);
                let _ = ctx.leases.finish(&plan.id, &rec, ctx.record_ttl).await;
                let secs = jiff::Timestamp::now()
                    .duration_since(plan.accepted_at)
                    .as_secs_f64();
                ctx.metrics.build_finished(phase, reason, secs);
                ctx.cluster.finished(&plan.id, phase);
                tracing::info!(build_id = %plan.id, phase = phase.as_str(), "build finished");
            }
        }
    }
    Ok(())
}

/// A cancel request: flag it in Redis and tell the owner, whoever it is.
async fn handle_cancel(ctx: Arc<Context>, d: Incoming) {
    let cancel = match kiln_protocol::parse_cancel_request(&d.body) {
        Ok(c) => c,
        Err(e) => {
            let msg = e
                .errors()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            reject(&ctx, &d, None, Reason::InvalidRequest, msg).await;
            return;
        }
    };
    // Only the tenant that owns a build may cancel it (a user without a
    // policy entry of its own acts as `default`, as for requests).
    let tenant = d
        .user_id
        .as_deref()
        .filter(|u| ctx.policy.tenant(u).is_some())
        .unwrap_or(crate::policy::DEFAULT_TENANT)
        .to_owned();
    match ctx.leases.record(&cancel.id).await {
        Ok(Some(r)) if r.tenant != tenant => {
            reject(
                &ctx,
                &d,
                None,
                Reason::PolicyViolation,
                format!("build {} belongs to another tenant", cancel.id),
            )
            .await;
            return;
        }
        Ok(Some(r)) if r.state == RecordState::Finished => {
            tracing::info!(build_id = %cancel.id, "cancel of a finished build ignored");
            ack(&d, &cancel.id).await;
            return;
        }
        _ => {}
    }
    let reason = cancel
        .reason
        .clone()
        .unwrap_or_else(|| "cancelled".to_owned());
    let keep = ctx.record_ttl.max(Duration::from_secs(3600));
    match ctx.leases.request_cancel(&cancel.id, &reason, keep).await {
        Ok(()) => {
            // The owner hears it through the notice; if it is us, act now.
            ctx.send(&cancel.id, Input::Cancel(reason));
            ack(&d, &cancel.id).await;
        }
        Err(e) => {
            tracing::warn!(build_id = %cancel.id, error = %e, "cannot record cancel; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = d.requeue().await;
        }
    }
}

/// Follows the Kiln pods of one namespace and routes what it sees.
async fn watch_namespace(ctx: Arc<Context>, namespace: String, stop: CancellationToken) {
    let stream = ctx.pods.watch(&namespace);
    tokio::pin!(stream);
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        match ev {
            PodEvent::Applied(v) => route(&ctx, v, false),
            PodEvent::Deleted(v) => route(&ctx, v, true),
            PodEvent::Resync => ctx.cluster.resync(&namespace),
            PodEvent::Synced => ctx.cluster.synced(&namespace),
        }
    }
}

fn route(ctx: &Context, v: PodView, deleted: bool) {
    if v.build_id.is_empty() {
        return;
    }
    ctx.cluster.apply(&v, deleted);
    let id = v.build_id.clone();
    let ns = v.namespace.clone();
    // A pod being deleted mostly belongs to a build that just ended (its
    // owner deletes pods after the terminal event): it does not make a build
    // an adoption candidate, though it keeps one that already is.
    let deleting = v.deleting;
    let input = if deleted {
        Input::Deleted(Box::new(v))
    } else {
        Input::Observed {
            pod: Box::new(v),
            log_tail: None,
        }
    };
    if ctx.send(&id, input) {
        return;
    }
    if deleted {
        // A pod of a build owned elsewhere went away: most likely the build
        // ended. Forget it; a remaining pod's next event brings it back.
        lock(&ctx.foreign).remove(&id);
    } else if !deleting {
        lock(&ctx.foreign).entry(id).or_insert(Foreign {
            namespace: ns,
            checked: None,
        });
    }
}

/// Renews every lease this worker holds, in batches, every third of the TTL.
///
/// When renewals keep failing for a whole TTL, the leases may have lapsed
/// and another worker may have adopted the builds: this worker then stops
/// acting on all of them (fencing) and re-adopts them from their pods once
/// Redis answers again.
async fn renew_loop(ctx: Arc<Context>, stop: CancellationToken) {
    let ttl = ctx.leases.ttl();
    let every = ttl / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = ctx.local_ids();
        if ids.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        match ctx.leases.renew_many(&ids).await {
            Ok(results) => {
                last_ok = Instant::now();
                for (id, r) in ids.iter().zip(results) {
                    match r {
                        Renewal::Renewed => {}
                        Renewal::CancelPending => {
                            if let Ok(Some(reason)) = ctx.leases.cancel_reason(id).await {
                                ctx.send(id, Input::Cancel(reason));
                            }
                        }
                        Renewal::Lost => {
                            tracing::warn!(build_id = %id, "lease taken by another worker; stopping");
                            ctx.metrics.lease_lost();
                            stop_build(&ctx, id);
                        }
                    }
                }
            }
            Err(e) => {
                ctx.metrics.lease_renewal_failed();
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= ttl {
                    tracing::error!(
                        builds = ids.len(),
                        "leases could not be renewed for a whole TTL; stopping every build until Redis answers"
                    );
                    for id in &ids {
                        ctx.metrics.lease_lost();
                        stop_build(&ctx, id);
                    }
                }
            }
        }
    }
}

/// Stops acting on a build; its pods stay, so it can be adopted again.
fn stop_build(ctx: &Context, id: &str) {
    let handle = lock(&ctx.builds).remove(id);
    if let Some(h) = handle {
        h.stop.cancel();
        if let Some(ns) = h.namespace {
            lock(&ctx.foreign).insert(
                id.to_owned(),
                Foreign {
                    namespace: ns,
                    checked: None,
                },
            );
        }
    }
}

/// Acts on cancel and release notices from other workers.
async fn notice_loop(ctx: Arc<Context>, stop: CancellationToken) {
    let mut rx = ctx.leases.notices();
    loop {
        let notice = tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        match notice {
            Notice::Cancel(id) => {
                if lock(&ctx.builds).contains_key(&id)
                    && let Ok(Some(reason)) = ctx.leases.cancel_reason(&id).await
                {
                    ctx.send(&id, Input::Cancel(reason));
                }
            }
            Notice::Released(ids) => {
                let candidates: Vec<(String, String)> = {
                    let foreign = lock(&ctx.foreign);
                    ids.iter()
                        .filter_map(|id| foreign.get(id).map(|f| (id.clone(), f.namespace.clone())))
                        .collect()
                };
                for (id, ns) in candidates {
                    tokio::spawn(try_adopt(ctx.clone(), id, ns));
                }
            }
        }
    }
}

/// Periodically adopts foreign builds whose lease lapsed.
async fn adopt_loop(ctx: Arc<Context>, stop: CancellationToken) {
    // A build seen for the first time is checked at the next tick; after
    // that, every half lease TTL (a lapsed lease is found within one TTL).
    let every = (ctx.leases.ttl() / 2).max(Duration::from_millis(200));
    let tick = every.min(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = {
            let mut foreign = lock(&ctx.foreign);
            foreign
                .iter_mut()
                .filter(|(_, f)| f.checked.is_none_or(|c| now.duration_since(c) >= every))
                .map(|(id, f)| {
                    f.checked = Some(now);
                    (id.clone(), f.namespace.clone())
                })
                .collect()
        };
        for chunk in due.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let Ok(holders) = ctx.leases.holders(&ids).await else {
                continue;
            };
            for ((id, ns), holder) in chunk.iter().zip(holders) {
                if holder.is_none() {
                    tokio::spawn(try_adopt(ctx.clone(), id.clone(), ns.clone()));
                }
            }
        }
    }
}

/// Takes over a build whose lease lapsed, from its pods alone.
async fn try_adopt(ctx: Arc<Context>, id: String, namespace: String) {
    if lock(&ctx.builds).contains_key(&id) || !lock(&ctx.adopting).insert(id.clone()) {
        return;
    }
    adopt(&ctx, &id, &namespace).await;
    lock(&ctx.adopting).remove(&id);
}

async fn adopt(ctx: &Arc<Context>, id: &str, namespace: &str) {
    let (id, namespace) = (id.to_owned(), namespace.to_owned());
    match ctx.leases.claim(&id).await {
        Ok(Claim::Acquired) => {}
        _ => return,
    }
    if lock(&ctx.builds).contains_key(&id) {
        return;
    }
    let result = async {
        let pods = ctx.pods.build_pods(&namespace, &id).await?;
        let record = ctx.leases.record(&id).await?;
        if pods.is_empty() {
            lock(&ctx.foreign).remove(&id);
            ctx.leases.release(&id).await?;
            return Ok::<(), Error>(());
        }
        if record
            .as_ref()
            .is_some_and(|r| r.state == RecordState::Finished)
        {
            // The terminal event is out; only the clean-up was missing.
            for p in &pods {
                ctx.pods.delete(&p.namespace, &p.name, &p.uid).await?;
            }
            lock(&ctx.foreign).remove(&id);
            ctx.leases.release(&id).await?;
            return Ok(());
        }
        let Some(plan) = pods
            .iter()
            .filter_map(|p| p.plan.as_deref())
            .find_map(BuildPlan::from_annotation)
        else {
            tracing::error!(build_id = %id, "pods carry no readable plan; cannot adopt");
            ctx.leases.release(&id).await?;
            return Ok(());
        };
        tracing::info!(build_id = %id, pods = pods.len(), "adopting build whose lease lapsed");
        ctx.metrics.adopted();
        let (machine, actions) = Machine::adopt(
            Arc::new(plan),
            ctx.settings.clone(),
            &pods,
            Instant::now().into_std(),
            jiff::Timestamp::now(),
        );
        if spawn_build(ctx, machine, actions).is_some()
            && let Ok(Some(reason)) = ctx.leases.cancel_reason(&id).await
        {
            ctx.send(&id, Input::Cancel(reason));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(build_id = %id, error = %e, "adoption failed; releasing the lease");
        let _ = ctx.leases.release(&id).await;
    }
}
