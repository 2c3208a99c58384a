//! The machine's behaviour, input by input, with injected time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::provenance::Envelope;
use kiln_protocol::{Phase, Reason};

use super::*;
use crate::classify::{PodPhase, PodView, Terminated};
use crate::plan::{BuildPlan, ImagePlan, Step};

/// The machine takes `std::time::Instant`s as inputs; the tests inject
/// them from a clock of their own (a fixed origin plus what `advance`
/// added; one per test thread), so every instant and delay they assert
/// is exact.
pub(super) struct Instant;
impl Instant {
    pub(super) fn now() -> std::time::Instant {
        CLOCK.with(|(origin, elapsed)| *origin + elapsed.get())
    }
}

thread_local! {
    static CLOCK: (std::time::Instant, std::cell::Cell<Duration>) = (
        // Any origin will do (an `Instant` has no other constructor):
        // the tests compare instants with each other only.
        #[expect(clippy::disallowed_methods, reason = "the test clock's origin")]
        std::time::Instant::now(),
        std::cell::Cell::new(Duration::ZERO),
    );
}

/// Moves the test clock forward.
pub(super) fn advance(by: Duration) {
    CLOCK.with(|(_, elapsed)| elapsed.set(elapsed.get() + by));
}

use kiln_protocol::BuildContext;
use std::collections::BTreeMap;

pub(super) fn plan(images: &[&str], max_attempts: u32, timeout_secs: i64) -> Arc<BuildPlan> {
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    Arc::new(BuildPlan {
        id: "b1".into(),
        tenant: "default".into(),
        fingerprint: String::new(),
        namespace: "ns".into(),
        app: Some("shop".into()),
        component: None,
        labels: BTreeMap::new(),
        max_attempts,
        accepted_at: now,
        deadline: now + jiff::SignedDuration::from_secs(timeout_secs),
        traceparent: None,
        service_account: "kiln-builder".into(),
        registry_secret: None,
        git_secret: None,
        s3_secret: None,
        s3_region: None,
        s3_endpoint: None,
        cache_repo: None,
        runtime_class_name: None,
        images: images
            .iter()
            .map(|n| ImagePlan {
                name: (*n).into(),
                context: BuildContext {
                    git: None,
                    s3: None,
                    url: Some("https://example.com/c.tar.gz".into()),
                },
                dockerfile: "Dockerfile".into(),
                rendered_dockerfile: None,
                build_args: BTreeMap::new(),
                target: None,
                destinations: vec![format!("r.example.com/{n}:1")],
                platform: None,
                platforms: Vec::new(),
                cache: false,
                cpu: "1".into(),
                memory: "1Gi".into(),
                ephemeral_storage: None,
                git_credentials_omitted: false,
                secrets: BTreeMap::new(),
            })
            .collect(),
    })
}

pub(super) fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        pending_timeout: Duration::from_secs(60),
        retry_base_delay: Duration::from_secs(10),
        retry_max_delay: Duration::from_secs(40),
        source: "urn:kiln:test".into(),
        worker: "w1".into(),
        provenance: None,
    })
}

pub(super) fn wall(m: &Machine) -> jiff::Timestamp {
    m.plan.accepted_at
}

pub(super) fn pod(image: &str, attempt: u32, phase: PodPhase) -> PodView {
    PodView {
        namespace: "ns".into(),
        name: format!("kiln-b1-{image}-{attempt}"),
        uid: format!("uid-{image}-{attempt}"),
        build_id: "b1".into(),
        image: image.into(),
        attempt,
        phase: Some(phase),
        ..PodView::default()
    }
}

pub(super) fn succeeded(image: &str, attempt: u32) -> PodView {
    let mut p = pod(image, attempt, PodPhase::Succeeded);
    p.terminated = Some(Terminated {
        message: Some(format!("sha256:{}", "b".repeat(64))),
        ..Terminated::default()
    });
    p
}

pub(super) fn failed(image: &str, attempt: u32, reason: &str, msg: &str) -> PodView {
    let mut p = pod(image, attempt, PodPhase::Failed);
    p.terminated = Some(Terminated {
        exit_code: if reason == "OOMKilled" { 137 } else { 1 },
        reason: Some(reason.into()),
        message: Some(msg.into()),
        ..Terminated::default()
    });
    p
}

/// Routing keys of published events and the other actions, compactly.
pub(super) fn summary(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Publish(ev) => {
                let key = kiln_protocol::routing_key(ev.level(), ev.data.phase);
                match (&ev.data.image, ev.data.attempt, &ev.data.platform) {
                    (Some(i), Some(n), Some(p)) => format!("{key}:{i}@{p}#{n}"),
                    (Some(i), Some(n), None) => format!("{key}:{i}#{n}"),
                    _ => key,
                }
            }
            Action::CreatePod {
                image,
                step: Step::Build,
                attempt,
            } => format!("create:{image}#{attempt}"),
            Action::CreatePod {
                image,
                step: Step::Platform(k),
                attempt,
            } => format!("create:{image}@{k}#{attempt}"),
            Action::CreatePod {
                image,
                step: Step::Publish,
                attempt,
            } => format!("create:{image}@publish#{attempt}"),
            Action::DeletePod { name, .. } => format!("delete:{name}"),
            Action::Finished(p, _) => format!("finished:{}", p.as_str()),
        })
        .collect()
}

pub(super) fn feed(m: &mut Machine, input: Input) -> Vec<String> {
    let w = wall(m);
    summary(&m.handle(input, Instant::now(), w))
}

pub(super) fn created(m: &mut Machine, i: usize, image: &str, attempt: u32) -> Vec<String> {
    feed(
        m,
        Input::PodCreated {
            image: i,
            step: Step::Build,
            attempt,
            pod: Box::new(pod(image, attempt, PodPhase::Pending)),
        },
    )
}

pub(super) fn observed(m: &mut Machine, p: PodView) -> Vec<String> {
    feed(
        m,
        Input::Observed {
            pod: Box::new(p),
            log_tail: None,
        },
    )
}

#[test]
fn cancelled_while_queued_publishes_only_the_build_event() {
    let p = plan(&["api", "worker"], 3, 3600);
    let (m, out) = Machine::start_cancelled(
        p.clone(),
        settings(),
        "superseded",
        Instant::now(),
        p.accepted_at,
    );
    assert_eq!(summary(&out), ["build.cancelled", "finished:cancelled"]);
    assert_eq!(m.stage(), Stage::Done(Phase::Cancelled));
    let Action::Publish(ev) = &out[0] else {
        panic!("first action is not a publish: {out:?}");
    };
    assert_eq!(ev.data.reason, Some(Reason::Cancelled));
    assert_eq!(ev.data.message.as_deref(), Some("superseded"));
    let images = ev.data.images.as_deref().unwrap_or_default();
    assert_eq!(images.len(), 2);
    assert!(
        images
            .iter()
            .all(|i| i.phase == Phase::Cancelled && i.attempts == 0),
        "{images:?}"
    );
    assert_eq!(
        out[1],
        Action::Finished(Phase::Cancelled, Some(Reason::Cancelled))
    );
}

#[test]
fn cancelled_while_queued_ignores_later_inputs() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) =
        Machine::start_cancelled(p.clone(), settings(), "gone", Instant::now(), p.accepted_at);
    assert!(feed(&mut m, Input::Cancel("again".to_owned())).is_empty());
    assert!(feed(&mut m, Input::Tick).is_empty());
    assert_eq!(m.next_wakeup(), None);
}

/// The actions of a one-attempt build with build arg `arg` whose pod
/// fails with `log` as its termination message and log tail.
fn fails_once_with_secret_arg(arg: (&str, &str), log: &str) -> Vec<Action> {
    let mut p = (*plan(&["api"], 1, 3600)).clone();
    p.images[0].build_args.insert(arg.0.into(), arg.1.into());
    let p = Arc::new(p);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    let w = wall(&m);
    m.handle(
        Input::Observed {
            pod: Box::new(failed("api", 1, "Error", log)),
            log_tail: Some(log.to_owned()),
        },
        Instant::now(),
        w,
    )
}

/// Issue 10: the failure message quotes the last log line, which went
/// out unmasked; the value of a secret-looking build arg is masked too.
#[test]
fn failure_text_is_masked() {
    let log = "curl -H 'Authorization: Bearer eyJsecretsecret' failed\necho n0tAPattern42\nerror building image: exit status 1";
    let out = fails_once_with_secret_arg(("NPM_TOKEN", "n0tAPattern42"), log);
    let mut seen = 0;
    for a in &out {
        if let Action::Publish(ev) = a {
            let text = serde_json::to_string(ev).unwrap();
            assert!(!text.contains("eyJsecretsecret"), "{text}");
            assert!(!text.contains("n0tAPattern42"), "{text}");
            seen += usize::from(ev.data.message.is_some());
        }
    }
    assert!(seen > 0, "{out:?}");
}

/// Issue 10: `build.failed` repeats the failed image's message, and
/// took it unmasked from the failure (the last log line, here with a
/// URL password and a secret build arg's value).
#[test]
fn the_build_failed_message_is_masked_too() {
    let log =
        "fetching https://ci:pw0rdInUrl@git.example.com/x.git with n0tAPattern43: exit status 1";
    let out = fails_once_with_secret_arg(("GIT_TOKEN", "n0tAPattern43"), log);
    let build_failed = out
        .iter()
        .find_map(|a| match a {
            Action::Publish(ev) if ev.event_type.contains(".build.failed.") => Some(ev),
            _ => None,
        })
        .expect("build.failed");
    let message = build_failed.data.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("image api: the build failed"),
        "{message}"
    );
    assert!(!message.contains("pw0rdInUrl"), "{message}");
    assert!(!message.contains("n0tAPattern43"), "{message}");
}

#[test]
fn two_images_succeed() {
    let p = plan(&["api", "worker"], 3, 3600);
    let (mut m, start) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    assert_eq!(
        summary(&start),
        ["build.accepted", "create:0#1", "create:1#1"]
    );
    assert!(!m.pods_exist());
    assert_eq!(created(&mut m, 0, "api", 1), ["image.scheduled:api#1"]);
    assert_eq!(
        created(&mut m, 1, "worker", 1),
        ["image.scheduled:worker#1"]
    );
    assert!(m.pods_exist());
    assert_eq!(
        observed(&mut m, pod("api", 1, PodPhase::Running)),
        ["image.running:api#1"]
    );
    assert_eq!(
        observed(&mut m, succeeded("api", 1)),
        ["image.succeeded:api#1"]
    );
    assert_eq!(
        observed(&mut m, succeeded("worker", 1)),
        [
            "image.succeeded:worker#1",
            "build.succeeded",
            "delete:kiln-b1-api-1",
            "delete:kiln-b1-worker-1",
            "finished:succeeded"
        ]
    );
    assert_eq!(m.stage(), Stage::Done(Phase::Succeeded));
    // Nothing happens after the end.
    assert!(observed(&mut m, succeeded("api", 1)).is_empty());
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn backoff_doubles_per_attempt_is_capped_and_jittered_by_build_image_and_attempt() {
    let s = settings(); // 10 s base, 40 s cap
    // Golden values: FNV-1a of ("b1", "api", attempt) gives the jitter
    // fraction; they change only if the formula does.
    assert_eq!(
        backoff(&s, "b1", "api", 1),
        secs(10) + secs(10).mul_f64(0.391_484_745_138_288_1)
    );
    assert_eq!(
        backoff(&s, "b1", "api", 2),
        secs(20) + secs(20).mul_f64(0.016_403_446_343_867_034)
    );
    // 40 s + jitter, capped at 40 s.
    assert_eq!(backoff(&s, "b1", "api", 3), secs(40));
    assert_eq!(backoff(&s, "b1", "api", 30), secs(40));
    // The same inputs give the same wait (an adopting worker agrees);
    // other builds spread over [base, 2 * base).
    assert_eq!(backoff(&s, "b1", "api", 1), backoff(&s, "b1", "api", 1));
    let waits: std::collections::BTreeSet<Duration> = (0..200)
        .map(|n| backoff(&s, &format!("build-{n}"), "api", 1))
        .collect();
    assert!(waits.len() > 190, "{} distinct waits", waits.len());
    assert!(waits.iter().all(|w| (secs(10)..secs(20)).contains(w)));
    let early = waits.iter().filter(|w| **w < secs(15)).count();
    assert!(
        (70..=130).contains(&early),
        "{early} of 200 in the first half"
    );
    assert_ne!(backoff(&s, "b1", "api", 1), backoff(&s, "b1", "web", 1));
}

#[test]
fn retryable_failure_waits_out_the_backoff() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    let out = m.handle(
        Input::Observed {
            pod: Box::new(failed(
                "api",
                1,
                "Error",
                "error pushing image: 503 Service Unavailable",
            )),
            log_tail: Some("push failed".into()),
        },
        Instant::now(),
        p.accepted_at,
    );
    assert_eq!(summary(&out), ["image.retrying:api#1"]);
    let Action::Publish(ev) = &out[0] else {
        panic!()
    };
    assert_eq!(ev.data.reason, Some(Reason::PushError));
    // 10 s base for attempt 1, plus this build's jitter (see below).
    let delay = backoff(&settings(), "b1", "api", 1);
    assert_eq!(delay, secs(10) + secs(10).mul_f64(0.391_484_745_138_288_1));
    assert_eq!(ev.data.retry_in_seconds, Some(delay.as_secs_f64()));
    assert_eq!(ev.data.log_tail.as_deref(), Some("push failed"));
    // Exactly after the backoff, not a nanosecond before.
    assert_eq!(m.next_wakeup(), Some(Instant::now() + delay));
    advance(delay.checked_sub(Duration::from_nanos(1)).unwrap());
    assert!(feed(&mut m, Input::Tick).is_empty());
    advance(Duration::from_nanos(1));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
    // The failed attempt's pod goes only once attempt 2 exists.
    assert_eq!(
        created(&mut m, 0, "api", 2),
        ["image.scheduled:api#2", "delete:kiln-b1-api-1"]
    );
    assert_eq!(
        observed(&mut m, succeeded("api", 2)),
        [
            "image.succeeded:api#2",
            "build.succeeded",
            "delete:kiln-b1-api-2",
            "finished:succeeded"
        ]
    );
}

#[test]
fn build_error_fails_at_once_and_cancels_siblings() {
    let p = plan(&["api", "worker"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    created(&mut m, 1, "worker", 1);
    let out = observed(
        &mut m,
        failed(
            "api",
            1,
            "Error",
            "error building image: failed to execute command: exit status 1",
        ),
    );
    assert_eq!(
        out,
        [
            "image.failed:api#1",
            "image.cancelled:worker#1",
            "build.failed",
            "delete:kiln-b1-api-1",
            "delete:kiln-b1-worker-1",
            "finished:failed"
        ]
    );
}

#[test]
fn oom_retries_until_attempts_run_out() {
    let p = plan(&["api"], 2, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    assert_eq!(
        observed(&mut m, failed("api", 1, "OOMKilled", "")),
        ["image.retrying:api#1"]
    );
    advance(Duration::from_secs(40));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
    created(&mut m, 0, "api", 2);
    let out = m.handle(
        Input::Observed {
            pod: Box::new(failed("api", 2, "OOMKilled", "")),
            log_tail: None,
        },
        Instant::now(),
        p.accepted_at,
    );
    assert_eq!(summary(&out)[0], "image.failed:api#2");
    let Action::Publish(ev) = &out[1] else {
        panic!()
    };
    assert_eq!(ev.data.reason, Some(Reason::OOMKilled));
    assert_eq!(ev.data.images.as_ref().unwrap()[0].attempts, 2);
}

#[test]
fn pending_timeout_fails_with_the_stuck_reason() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    let mut stuck = pod("api", 1, PodPhase::Pending);
    stuck.unschedulable = Some(("Unschedulable".into(), "0/3 nodes are available".into()));
    assert!(observed(&mut m, stuck).is_empty());
    advance(Duration::from_secs(59));
    assert!(feed(&mut m, Input::Tick).is_empty());
    advance(Duration::from_secs(1));
    let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
    assert_eq!(summary(&out)[0], "image.failed:api#1");
    let Action::Publish(ev) = &out[0] else {
        panic!()
    };
    assert_eq!(ev.data.reason, Some(Reason::Unschedulable));
}

#[test]
fn deadline_fails_every_unfinished_image() {
    let p = plan(&["api", "worker"], 3, 30);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    created(&mut m, 1, "worker", 1);
    observed(&mut m, succeeded("worker", 1));
    advance(Duration::from_secs(30));
    let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
    assert_eq!(
        summary(&out),
        [
            "image.failed:api#1",
            "build.failed",
            "delete:kiln-b1-api-1",
            "delete:kiln-b1-worker-1",
            "finished:failed"
        ]
    );
    let Action::Publish(ev) = &out[1] else {
        panic!()
    };
    assert_eq!(ev.data.reason, Some(Reason::DeadlineExceeded));
}

#[test]
fn cancel_publishes_before_deleting() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    assert_eq!(
        feed(&mut m, Input::Cancel("superseded".into())),
        [
            "image.cancelled:api#1",
            "build.cancelled",
            "delete:kiln-b1-api-1",
            "finished:cancelled"
        ]
    );
}

#[test]
fn adoption_resumes_without_rebuilding() {
    let p = plan(&["api", "worker"], 3, 3600);
    let pods = vec![pod("api", 1, PodPhase::Running), succeeded("worker", 1)];
    let (mut m, out) = Machine::adopt(p.clone(), settings(), &pods, Instant::now(), p.accepted_at);
    // No pod is created again; the finished image's outcome is repeated.
    assert_eq!(summary(&out), ["image.succeeded:worker#1"]);
    assert!(m.pods_exist());
    assert_eq!(
        observed(&mut m, succeeded("api", 1)),
        [
            "image.succeeded:api#1",
            "build.succeeded",
            "delete:kiln-b1-api-1",
            "delete:kiln-b1-worker-1",
            "finished:succeeded"
        ]
    );
}

#[test]
fn deleted_pod_counts_as_a_retryable_failure() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    assert_eq!(
        feed(
            &mut m,
            Input::Deleted(Box::new(pod("api", 1, PodPhase::Running)))
        ),
        ["image.retrying:api#1"]
    );
}

fn refused(m: &mut Machine, i: usize, attempt: u32) -> Vec<Action> {
    let w = wall(m);
    m.handle(
        Input::QuotaExceeded {
            image: i,
            step: Step::Build,
            attempt,
            message: QUOTA_MESSAGE.to_owned(),
        },
        Instant::now(),
        w,
    )
}

const QUOTA_MESSAGE: &str = r#"pods "kiln-b1-api-1" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1"#;

#[test]
fn quota_wait_doubles_from_one_second_and_is_capped_at_thirty() {
    let waits: Vec<u64> = (1..=8).map(|n| quota_wait(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(quota_wait(u32::MAX), QUOTA_WAIT_MAX);
}

#[test]
fn quota_refusal_waits_publishes_once_and_creates_again() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    let out = refused(&mut m, 0, 1);
    assert_eq!(summary(&out), ["image.waiting:api#1"]);
    let Action::Publish(ev) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(ev.id, "b1/api/1/waiting");
    assert_eq!(ev.event_type, "dev.kiln.image.waiting.v1");
    assert_eq!(ev.data.reason, Some(Reason::QuotaExceeded));
    assert_eq!(ev.data.retry_in_seconds, Some(1.0));
    assert!(
        ev.data
            .message
            .as_deref()
            .unwrap()
            .contains("exceeded quota: compute"),
        "{ev:?}"
    );
    // No pod: the request must stay unacked.
    assert!(!m.pods_exist());
    assert_eq!(m.waits(), 1);
    let st = &m.image_states()[0];
    assert_eq!(
        (st.phase, st.reason),
        (Phase::Waiting, Some(Reason::QuotaExceeded))
    );
    assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(1)));
    advance(secs(1).checked_sub(Duration::from_nanos(1)).unwrap());
    assert!(feed(&mut m, Input::Tick).is_empty());
    advance(Duration::from_nanos(1));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
    // Refused again: a longer wait, no second event.
    assert!(refused(&mut m, 0, 1).is_empty());
    assert_eq!(m.waits(), 1);
    assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(2)));
    advance(secs(2));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
    assert_eq!(created(&mut m, 0, "api", 1), ["image.scheduled:api#1"]);
    assert!(m.pods_exist());
    assert_eq!(m.image_states()[0].reason, None);
}

#[test]
fn quota_wait_ends_at_the_deadline_with_one_terminal_event() {
    let p = plan(&["api", "worker"], 3, 5);
    let start = Instant::now();
    let (mut m, _) = Machine::start(p.clone(), settings(), start, p.accepted_at);
    created(&mut m, 1, "worker", 1);
    assert_eq!(summary(&refused(&mut m, 0, 1)), ["image.waiting:api#1"]);
    advance(secs(1));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
    assert!(refused(&mut m, 0, 1).is_empty());
    advance(secs(2));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#1"]);
    assert!(refused(&mut m, 0, 1).is_empty());
    // The next try would be at 3 s + 4 s; the deadline (5 s) comes first.
    assert_eq!(m.next_wakeup(), Some(start + secs(5)));
    advance(secs(2));
    let out = m.handle(Input::Tick, Instant::now(), p.accepted_at);
    assert_eq!(
        summary(&out),
        [
            "image.failed:api#1",
            "image.failed:worker#1",
            "build.failed",
            "delete:kiln-b1-worker-1",
            "finished:failed"
        ]
    );
    let Action::Publish(ev) = &out[2] else {
        panic!("{out:?}")
    };
    assert_eq!(ev.data.reason, Some(Reason::DeadlineExceeded));
    let message = ev.data.message.as_deref().unwrap();
    assert!(
        message.contains("refused the build pod 3 times") && message.contains("exceeded quota"),
        "{message}"
    );
    assert!(feed(&mut m, Input::Tick).is_empty());
    assert_eq!(m.next_wakeup(), None);
}

#[test]
fn cancel_ends_a_quota_wait() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    refused(&mut m, 0, 1);
    assert_eq!(
        feed(&mut m, Input::Cancel("superseded".into())),
        [
            "image.cancelled:api#1",
            "build.cancelled",
            "finished:cancelled"
        ]
    );
    assert_eq!(m.next_wakeup(), None);
}

#[test]
fn a_retry_attempt_refused_by_the_quota_waits_the_same_way() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    assert_eq!(
        observed(&mut m, failed("api", 1, "OOMKilled", "")),
        ["image.retrying:api#1"]
    );
    advance(backoff(&settings(), "b1", "api", 1));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
    // A refusal of attempt 1 is stale; attempt 2's waits.
    assert!(refused(&mut m, 0, 1).is_empty());
    assert_eq!(summary(&refused(&mut m, 0, 2)), ["image.waiting:api#2"]);
    assert_eq!(m.next_wakeup(), Some(Instant::now() + secs(1)));
    advance(secs(1));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0#2"]);
    // The failed attempt's pod stays until attempt 2's exists.
    assert_eq!(
        created(&mut m, 0, "api", 2),
        ["image.scheduled:api#2", "delete:kiln-b1-api-1"]
    );
}

#[test]
fn a_pod_seen_while_waiting_is_created_again_for_the_client_to_check() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    refused(&mut m, 0, 1);
    // Quota admission refuses before the name is checked: the pod may
    // exist (created by a previous owner), or be anyone's with our labels.
    // The create that follows finds it, and the pod client decides.
    assert_eq!(
        observed(&mut m, pod("api", 1, PodPhase::Running)),
        ["create:0#1"]
    );
    assert!(!m.pods_exist());
    assert_eq!(created(&mut m, 0, "api", 1), ["image.scheduled:api#1"]);
    assert!(m.pods_exist());
    // A pod of another attempt changes nothing.
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    refused(&mut m, 0, 1);
    assert!(observed(&mut m, pod("api", 2, PodPhase::Running)).is_empty());
    assert!(!m.pods_exist());
}

/// Issue 18: a pod with this build's annotations and labels that is not
/// the pod it created (another namespace, or another uid under any name)
/// changes nothing, not even with a terminated exit-0 status.
#[test]
fn only_the_pod_the_build_created_speaks_for_it() {
    let p = plan(&["api"], 3, 3600);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    created(&mut m, 0, "api", 1);
    let forged = |edit: &dyn Fn(&mut PodView)| {
        let mut f = succeeded("api", 1);
        if let Some(t) = f.terminated.as_mut() {
            t.message = Some(format!("sha256:{}", "e".repeat(64)));
        }
        edit(&mut f);
        f
    };
    let elsewhere = forged(&|f| f.namespace = "bob-builds".into());
    assert!(observed(&mut m, elsewhere.clone()).is_empty());
    assert!(feed(&mut m, Input::Deleted(Box::new(elsewhere))).is_empty());
    let other_uid = forged(&|f| f.uid = "forged".into());
    assert!(observed(&mut m, other_uid.clone()).is_empty());
    assert!(feed(&mut m, Input::Deleted(Box::new(other_uid))).is_empty());
    assert_eq!(m.stage(), Stage::Active);
    // The real pod still ends the build.
    let out = observed(&mut m, succeeded("api", 1));
    assert!(out.contains(&"build.succeeded".to_owned()), "{out:?}");
}

/// Stands for the worker's key: "signs" what it was given, in clear.
#[derive(Debug)]
struct Echo;
impl Attest for Echo {
    fn attest(
        &self,
        plan: &BuildPlan,
        image: usize,
        attempt: u32,
        digest: &str,
        pod: &PodView,
    ) -> Option<Envelope> {
        Some(Envelope {
            payload_type: "test".into(),
            payload: format!("{}/{image}/{attempt} {digest} {}", plan.id, pod.name),
            signatures: Vec::new(),
        })
    }
}

#[test]
fn only_image_succeeded_carries_provenance_of_the_pod_that_pushed() {
    let p = plan(&["api", "worker"], 3, 3600);
    let mut s = (*settings()).clone();
    s.provenance = Some(Arc::new(Echo));
    let (mut m, mut out) = Machine::start(p.clone(), Arc::new(s), Instant::now(), p.accepted_at);
    for (i, image) in [(0, "api"), (1, "worker")] {
        out.extend(m.handle(
            Input::PodCreated {
                image: i,
                step: Step::Build,
                attempt: 1,
                pod: Box::new(pod(image, 1, PodPhase::Pending)),
            },
            Instant::now(),
            wall(&m),
        ));
    }
    for image in ["api", "worker"] {
        for p in [pod(image, 1, PodPhase::Running), succeeded(image, 1)] {
            out.extend(m.handle(
                Input::Observed {
                    pod: Box::new(p),
                    log_tail: None,
                },
                Instant::now(),
                wall(&m),
            ));
        }
    }
    let signed: Vec<(String, String)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Publish(ev) => Some(ev),
            _ => None,
        })
        .filter_map(|ev| {
            let key = kiln_protocol::routing_key(ev.level(), ev.data.phase);
            ev.data
                .provenance
                .as_ref()
                .map(|e| (key, e.payload.clone()))
        })
        .collect();
    let digest = format!("sha256:{}", "b".repeat(64));
    assert_eq!(
        signed,
        [
            (
                "image.succeeded".into(),
                format!("b1/0/1 {digest} kiln-b1-api-1")
            ),
            (
                "image.succeeded".into(),
                format!("b1/1/1 {digest} kiln-b1-worker-1")
            ),
        ]
    );
}
