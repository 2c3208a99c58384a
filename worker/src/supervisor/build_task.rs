//! The task of one build: feeds inputs to its [`Machine`] and executes the
//! actions it asks for, until the build ends, its lease is lost or the
//! worker stops. `Action::Finished` is executed here and nowhere else: the
//! one path that finishes a build.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use futures::StreamExt;
use futures::channel::mpsc;
use kiln_protocol::{Phase, Reason};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Supervisor;
use super::context::Context;
use super::fence::{Fence, SharedFence};
use super::registry::BuildHandle;
use crate::classify::PodPhase;
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::machine::{Action, Input, Machine, Stage};
use crate::plan::{BuildPlan, Step};
use crate::pod::{Created, PodUnit};
use crate::retry;
use crate::store::{LeaseToken, RecordState};

/// Registers the build and spawns its task. `None` if the id is already
/// driven here. The receiver turns true once the build is accepted. For a
/// lease claimed just now (intake: no await between the claim's reply and
/// this call; the fence margin covers the reply's latency) under `token`.
pub(super) fn spawn(
    sup: &Supervisor,
    machine: Machine,
    actions: Vec<Action>,
    token: LeaseToken,
) -> Option<watch::Receiver<bool>> {
    spawn_claimed_at(sup, machine, actions, Instant::now(), token)
}

/// [`spawn`] for a lease whose claim was sent at `claimed_at`: the build's
/// fence counts from there.
pub(super) fn spawn_claimed_at(
    sup: &Supervisor,
    machine: Machine,
    actions: Vec<Action>,
    claimed_at: Instant,
    token: LeaseToken,
) -> Option<watch::Receiver<bool>> {
    let id = machine.plan().id.clone();
    let fence = SharedFence::new(Fence::from_send(claimed_at, sup.ctx.store.ttl()));
    // futures' channel, not tokio's: tokio allocates a block of 32 slots
    // per channel up front (about 1.3 kB per build held idle), futures one
    // node per message in flight.
    let (tx, rx) = mpsc::unbounded();
    let (acc_tx, acc_rx) = watch::channel(false);
    let stop = CancellationToken::new();
    let handle = BuildHandle {
        tx,
        stop: stop.clone(),
        accepted: acc_rx.clone(),
        namespace: machine.plan().namespace.clone(),
        fence: fence.clone(),
        token: token.clone(),
        owner: kiln_core::owner::Owner::of_plan(machine.plan()),
    };
    let (n, generation) = sup.registry.insert(&id, handle)?;
    sup.set_in_flight(n);
    let sup = sup.clone();
    tokio::spawn(async move {
        let span = tracing::info_span!("build", build_id = %id);
        crate::telemetry::set_parent(&span, machine.plan().traceparent.as_deref());
        let task = Task {
            sup: sup.clone(),
            machine,
            rx,
            stop,
            accepted: acc_tx,
            fence,
            token,
            holds_delivery: false,
            journal: Journal::default(),
        };
        let lending = Arc::clone(&sup.lending);
        let (ended, held) = tracing::Instrument::instrument(task.run(actions), span).await;
        lending.set_held(held, false);
        if let Err(Error::LeaseLost(_)) = ended {
            // Fenced: the build becomes foreign and goes through adoption
            // (claim, pods, record) like any other.
            sup.ctx.metrics.lease_lost();
            sup.registry.stop_generation(&id, generation);
        }
        let n = sup.registry.remove(&id, generation);
        sup.set_in_flight(n);
    });
    Some(acc_rx)
}

struct Task {
    sup: Supervisor,
    machine: Machine,
    rx: mpsc::UnboundedReceiver<Input>,
    /// Cancelled when the worker must stop acting on the build (lease lost,
    /// shutting down): everything the task does, retries included, ends.
    stop: CancellationToken,
    accepted: watch::Sender<bool>,
    fence: SharedFence,
    /// The claim's token: renewal (via the registry) and FINISH use it.
    token: LeaseToken,
    /// The request's delivery is unacked because an image waits for quota
    /// (counted in the supervisor's [`super::lending::Lending`]).
    holds_delivery: bool,
    /// What the build's events said, for its record: owned by the build,
    /// so it goes with the task however the task ends.
    journal: Journal,
}

impl Task {
    /// Drives the build; also says whether its delivery was still held by
    /// a quota wait at the end (the lent slot is then given back).
    async fn run(mut self, actions: Vec<Action>) -> (Result<()>, bool) {
        let id = self.machine.plan().id.clone();
        let stop = self.stop.clone();
        let ended = tokio::select! {
            r = self.drive(actions) => r,
            () = stop.cancelled() => {
                tracing::info!(build_id = %id, "stopped acting on the build (lease lost or shutting down)");
                Ok(())
            }
        };
        (ended, self.holds_delivery)
    }

    /// Executes the machine's actions behind this build's fence.
    async fn execute(&mut self, actions: Vec<Action>) -> Result<()> {
        Box::pin(execute_fenced(
            &self.sup,
            &mut self.machine,
            &mut self.journal,
            actions,
            &self.stop,
            Some(&self.fence),
            &self.token,
        ))
        .await
    }

    async fn drive(&mut self, actions: Vec<Action>) -> Result<()> {
        self.execute(actions).await?;
        let mut waits = 0;
        self.after_actions(&mut waits).await;
        while self.machine.stage() == Stage::Active {
            let wake = self.machine.next_wakeup();
            let input = tokio::select! {
                i = self.rx.next() => match i {
                    Some(i) => i,
                    None => return Ok(()),
                },
                () = retry::sleep_until(wake.map(Instant::from_std)) => Input::Tick,
            };
            // Boxed: the task of an idle build then holds a small future,
            // not the largest state of the API calls it may make.
            let input = Box::pin(enrich(&self.sup.ctx, input)).await;
            let actions =
                self.machine
                    .handle(input, Instant::now().into_std(), jiff::Timestamp::now());
            if actions.is_empty() {
                continue;
            }
            self.execute(actions).await?;
            self.after_actions(&mut waits).await;
        }
        self.accepted.send_replace(true);
        Ok(())
    }

    /// What the record and the request's delivery learn after actions ran:
    /// once every first-attempt pod exists, the record says "accepted" and
    /// the delivery may be acked; a new quota wait goes into the record
    /// (`kiln status` shows it) while the delivery stays unacked.
    async fn after_actions(&mut self, waits: &mut u64) {
        let accepted = *self.accepted.borrow();
        if self.machine.stage() != Stage::Active {
            self.accepted.send_replace(true);
        } else if !accepted && self.machine.pods_exist() {
            // Boxed like `execute`: the Redis write's state is not part of
            // the future every idle build keeps.
            Box::pin(self.put_record(RecordState::Accepted)).await;
            self.accepted.send_replace(true);
        } else if self.machine.waits() != *waits {
            let state = if accepted {
                RecordState::Accepted
            } else {
                RecordState::Claimed
            };
            Box::pin(self.put_record(state)).await;
        }
        *waits = self.machine.waits();
        let holds = !*self.accepted.borrow() && self.machine.quota_waiting();
        self.sup.lending.set_held(self.holds_delivery, holds);
        self.holds_delivery = holds;
    }

    /// The record says "accepted" so that a redelivered request is a
    /// duplicate even after the lease changes hands; "claimed" with the
    /// images' phases while a first-attempt pod waits for quota (the owner
    /// stays in it, and a redelivery starts the build again).
    async fn put_record(&self, state: RecordState) {
        let ctx = &self.sup.ctx;
        if !self.fence.holds(Instant::now()) {
            return;
        }
        let states = self.machine.image_states();
        let mut record = ctx.record(self.machine.plan(), state, None, &states);
        record.history = self.journal.to_history(&self.machine.plan().id);
        let keep = ctx.record_ttl.max(Duration::from_secs(86_400));
        let id = &self.machine.plan().id;
        if let Err(e) = ctx.store.put_indexed_record(id, &record, keep).await {
            // The build goes on: the pods are the truth, and a redelivery
            // finds the lease held. Only `kiln status` and a duplicate's
            // answer lag until the next write.
            ctx.metrics.error(&e);
            tracing::warn!(build_id = %id, state = ?state, error = %e, "could not write the build record");
        }
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

/// [`execute_fenced`] without a fence, for a build not registered here (a
/// request cancelled while queued, finished right after its claim).
pub(super) async fn execute(
    sup: &Supervisor,
    machine: &mut Machine,
    actions: Vec<Action>,
    stop: &CancellationToken,
    token: &LeaseToken,
) -> Result<()> {
    // A build run to its end in this one call: its journal lives as long.
    let mut journal = Journal::default();
    execute_fenced(sup, machine, &mut journal, actions, stop, None, token).await
}

/// Executes actions front to back; results of pod creation feed back into
/// the machine and their actions run next. Ends early when a publish fails
/// (what follows an event must not run before the event is out), and with
/// [`Error::LeaseLost`] as soon as the fence no longer holds: no action
/// starts after this worker may have lost the lease.
async fn execute_fenced(
    sup: &Supervisor,
    machine: &mut Machine,
    journal: &mut Journal,
    actions: Vec<Action>,
    stop: &CancellationToken,
    fence: Option<&SharedFence>,
    token: &LeaseToken,
) -> Result<()> {
    let mut queue: VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        if fence.is_some_and(|f| !f.holds(Instant::now())) {
            let id = machine.plan().id.clone();
            tracing::warn!(build_id = %id, "lease not confirmed in time; stopped acting on the build");
            return Err(Error::LeaseLost(id));
        }
        match action {
            Action::Publish(ev) => {
                sup.ctx.publish(&ev).await?;
                journal.apply(&ev);
            }
            Action::CreatePod {
                image,
                step,
                attempt,
            } => {
                let unit = PodUnit {
                    image,
                    step,
                    attempt,
                    platform_digests: if step == Step::Publish {
                        machine.platform_digests(image)
                    } else {
                        BTreeMap::new()
                    },
                    attachment: if step == Step::Publish {
                        machine
                            .publish_attachment(image, attempt)
                            .and_then(|e| serde_json::to_string(&e).ok())
                    } else {
                        None
                    },
                };
                let created = create_pod(&sup.ctx, machine.plan(), unit, stop, fence).await;
                let Some(input) = created? else {
                    continue;
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
                // The deletes asked for together (a build's end deletes all
                // its pods) go together: each keeps its log first, so the
                // record waits for one bounded copy, not one per pod.
                let mut batch = vec![(namespace, name, uid)];
                while let Some(Action::DeletePod { .. }) = queue.front() {
                    if let Some(Action::DeletePod {
                        namespace,
                        name,
                        uid,
                    }) = queue.pop_front()
                    {
                        batch.push((namespace, name, uid));
                    }
                }
                let plan = machine.plan();
                futures::future::join_all(batch.iter().map(|(namespace, name, uid)| {
                    keep_and_delete(sup, plan, namespace, name, uid)
                }))
                .await;
            }
            Action::Finished(phase, reason) => {
                finished(sup, machine, journal, token, phase, reason).await;
            }
        }
    }
    Ok(())
}

/// Keeps the log of an ended attempt's pod (bounded, see
/// [`super::log_keep`]), then deletes the pod.
async fn keep_and_delete(
    sup: &Supervisor,
    plan: &BuildPlan,
    namespace: &str,
    name: &str,
    uid: &str,
) {
    super::log_keep::keep_log(&sup.ctx, plan, namespace, name).await;
    if let Err(e) = sup.ctx.pods.delete(namespace, name, uid).await {
        sup.ctx.metrics.kube_error("delete");
        sup.ctx.metrics.error(&e);
        tracing::warn!(pod = %name, error = %e, "could not delete pod");
    }
}

/// Creates the pod of one attempt, retrying transient errors until the
/// build's deadline: the waits between tries end at the deadline, and no
/// try starts after it. `None`: stopped, or still failing at the deadline
/// (the machine's deadline tick then ends the build). No try starts once
/// the fence stops holding: [`Error::LeaseLost`].
async fn create_pod(
    ctx: &Context,
    plan: &Arc<BuildPlan>,
    unit: PodUnit,
    stop: &CancellationToken,
    fence: Option<&SharedFence>,
) -> Result<Option<Input>> {
    let started = Instant::now();
    let deadline = started + plan.remaining(jiff::Timestamp::now());
    let create = (|| async {
        if fence.is_some_and(|f| !f.holds(Instant::now())) {
            return Err(Error::LeaseLost(plan.id.clone()));
        }
        ctx.pods.create(plan, &unit, jiff::Timestamp::now()).await
    })
    .retry(retry::kube_write())
        // The server's `Retry-After` (429, some 5xx) is a floor on the wait.
        .adjust(|e, wait| wait.map(|w| e.retry_after().map_or(w, |r| r.max(w))))
        .sleep(move |wait| retry::sleep_at_most_until(wait, deadline))
        .when(|e| e.is_transient() && Instant::now() < deadline)
        .notify(|e, wait| {
            ctx.metrics.kube_error("create");
            ctx.metrics.error(e);
            tracing::warn!(build_id = %plan.id, error = %e, retry_in = ?wait, "pod create keeps failing; retrying");
        });
    let Some(created) = retry::bounded(create, stop).await else {
        return Ok(None);
    };
    let created = match created {
        Err(Error::LeaseLost(id)) => return Err(Error::LeaseLost(id)),
        other => other,
    };
    match &created {
        Err(e) if e.is_transient() => {
            ctx.metrics.kube_error("create");
            ctx.metrics.error(e);
            tracing::warn!(build_id = %plan.id, error = %e, "pod create still failing at the build's deadline");
            return Ok(None);
        }
        _ => {}
    }
    Ok(Some(match created {
        Ok(Created::New(pod) | Created::Existing(pod)) => {
            ctx.metrics.pod_created(started.elapsed());
            Input::PodCreated {
                image: unit.image,
                step: unit.step,
                attempt: unit.attempt,
                pod: Box::new(pod),
            }
        }
        // Only a quota refusal waits (the machine's timer); every other
        // permanent error fails the image.
        Err(e) if e.is_quota_refusal() => {
            ctx.metrics.kube_error("create_quota");
            tracing::info!(build_id = %plan.id, error = %e, "a ResourceQuota refuses the pod for now; waiting");
            Input::QuotaExceeded {
                image: unit.image,
                step: unit.step,
                attempt: unit.attempt,
                message: quota_message(&e),
            }
        }
        Err(e) => {
            ctx.metrics.kube_error("create");
            Input::PodCreateFailed {
                image: unit.image,
                step: unit.step,
                attempt: unit.attempt,
                message: e.to_string(),
            }
        }
    }))
}

/// The API server's own sentence (`pods "…" is forbidden: exceeded quota:
/// …`) without the client's decoration around it.
fn quota_message(e: &Error) -> String {
    let text = e.to_string();
    match text.find("pods \"") {
        Some(at) => text[at..]
            .split(": Forbidden")
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => text,
    }
}

/// The terminal event is out: remember the outcome, release the lease (only
/// while held under `token`), count it, and tell the status page.
async fn finished(
    sup: &Supervisor,
    machine: &Machine,
    journal: &Journal,
    token: &LeaseToken,
    phase: Phase,
    reason: Option<Reason>,
) {
    let ctx = &sup.ctx;
    let plan = machine.plan();
    let mut record = ctx.record(
        plan,
        RecordState::Finished,
        Some(phase),
        &machine.image_states(),
    );
    record.history = journal.to_history(&plan.id);
    match ctx
        .store
        .finish(&plan.id, token, &record, ctx.record_ttl)
        .await
    {
        Ok(()) => {}
        Err(Error::LeaseLost(_)) => {
            ctx.metrics.lease_lost();
            tracing::warn!(build_id = %plan.id, "lease lost before the record was written; left to its holder");
        }
        Err(e) => {
            ctx.metrics.error(&e);
            tracing::warn!(build_id = %plan.id, error = %e, "could not write the final record");
        }
    }
    let secs = jiff::Timestamp::now()
        .duration_since(plan.accepted_at)
        .as_secs_f64();
    ctx.metrics.build_finished(phase, reason, secs);
    sup.cluster.finished(&plan.id, phase);
    tracing::info!(build_id = %plan.id, phase = phase.as_str(), "build finished");
}
