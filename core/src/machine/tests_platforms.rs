//! Images with `platforms`: a pod per platform, then the publish step, with
//! injected time (the helpers of `tests.rs`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{Phase, Reason};

use super::tests::{Instant, advance, feed, plan, settings, summary, wall};
use super::*;
use crate::classify::{PodPhase, PodView, Terminated};
use crate::plan::{BuildPlan, Step};

const AMD: &str = "linux/amd64";
const ARM: &str = "linux/arm64";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// Image `api` for amd64 and arm64, pushed to `r.example.com/api:1`.
fn two_platforms(max_attempts: u32) -> Arc<BuildPlan> {
    let mut p = (*plan(&["api"], max_attempts, 3600)).clone();
    p.images[0].platforms = vec![AMD.into(), ARM.into()];
    Arc::new(p)
}

fn unit_pod(step: Step, attempt: u32, phase: PodPhase) -> PodView {
    let (unit, platform, publish) = match step {
        Step::Platform(0) => (kiln_protocol::platform_unit("api", AMD), Some(AMD), false),
        Step::Platform(_) => (kiln_protocol::platform_unit("api", ARM), Some(ARM), false),
        _ => (kiln_protocol::publish_unit("api"), None, true),
    };
    PodView {
        namespace: "ns".into(),
        name: kiln_protocol::pod_name("b1", &unit, attempt),
        uid: format!("uid-{unit}-{attempt}"),
        build_id: "b1".into(),
        image: "api".into(),
        platform: platform.map(kiln_protocol::platform_label),
        publish,
        attempt,
        phase: Some(phase),
        ..PodView::default()
    }
}

fn ended(step: Step, attempt: u32, phase: PodPhase, message: &str) -> PodView {
    let mut p = unit_pod(step, attempt, phase);
    p.terminated = Some(Terminated {
        exit_code: i32::from(phase == PodPhase::Failed),
        message: Some(message.into()),
        ..Terminated::default()
    });
    p
}

fn create(m: &mut Machine, step: Step, attempt: u32) -> Vec<Action> {
    let w = wall(m);
    m.handle(
        Input::PodCreated {
            image: 0,
            step,
            attempt,
            pod: Box::new(unit_pod(step, attempt, PodPhase::Pending)),
        },
        Instant::now(),
        w,
    )
}

fn see(m: &mut Machine, p: PodView) -> Vec<Action> {
    let w = wall(m);
    m.handle(
        Input::Observed {
            pod: Box::new(p),
            log_tail: None,
        },
        Instant::now(),
        w,
    )
}

fn event(actions: &[Action], kind: &str) -> kiln_protocol::BuildEvent {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Publish(ev) if ev.kind() == kind => Some((**ev).clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind} in {:?}", summary(actions)))
}

/// Both platforms built: the machine waits for the publish step.
fn platforms_built(m: &mut Machine) -> Vec<Action> {
    for k in 0..2 {
        create(m, Step::Platform(k), 1);
        see(m, unit_pod(Step::Platform(k), 1, PodPhase::Running));
    }
    let none = see(
        m,
        ended(Step::Platform(0), 1, PodPhase::Succeeded, &digest('a')),
    );
    assert_eq!(
        summary(&none),
        Vec::<String>::new(),
        "a platform alone says nothing"
    );
    see(
        m,
        ended(Step::Platform(1), 1, PodPhase::Succeeded, &digest('b')),
    )
}

#[test]
fn a_pod_per_platform_then_the_publish_step_then_one_image_succeeded() {
    let p = two_platforms(3);
    let (mut m, out) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    assert_eq!(
        summary(&out),
        ["build.accepted", "create:0@0#1", "create:0@1#1"],
        "no publish pod before the platforms"
    );
    assert!(!m.pods_exist());
    let out = create(&mut m, Step::Platform(0), 1);
    let ev = event(&out, "image.scheduled");
    assert_eq!(ev.id, "b1/api/linux/amd64/1/scheduled");
    assert_eq!(ev.data.platform.as_deref(), Some(AMD));
    create(&mut m, Step::Platform(1), 1);
    assert!(m.pods_exist(), "the blocked publish step needs no pod yet");
    assert_eq!(
        summary(&see(
            &mut m,
            unit_pod(Step::Platform(1), 1, PodPhase::Running)
        )),
        ["image.running:api@linux/arm64#1"]
    );
    see(&mut m, unit_pod(Step::Platform(0), 1, PodPhase::Running));
    assert_eq!(m.image_states()[0].phase, Phase::Running);
    see(
        &mut m,
        ended(Step::Platform(0), 1, PodPhase::Succeeded, &digest('a')),
    );
    let out = see(
        &mut m,
        ended(Step::Platform(1), 1, PodPhase::Succeeded, &digest('b')),
    );
    assert_eq!(summary(&out), ["create:0@publish#1"]);
    assert_eq!(
        summary(&create(&mut m, Step::Publish, 1)),
        ["image.scheduled:api#1"]
    );
    let out = see(
        &mut m,
        ended(Step::Publish, 1, PodPhase::Succeeded, &digest('c')),
    );
    let ev = event(&out, "image.succeeded");
    assert_eq!(ev.id, "b1/api/1/succeeded");
    assert_eq!(ev.data.platform, None);
    assert_eq!(ev.data.digest, Some(digest('c')), "the index digest");
    assert_eq!(
        ev.data.image_refs,
        [format!("r.example.com/api:1@{}", digest('c'))]
    );
    assert_eq!(
        ev.data.platform_digests,
        [(AMD.to_owned(), digest('a')), (ARM.to_owned(), digest('b'))].into()
    );
    let done = event(&out, "build.succeeded");
    let images = done.data.images.unwrap();
    assert_eq!(images[0].digest, Some(digest('c')));
    assert_eq!(images[0].platform_digests.len(), 2);
    let s = summary(&out);
    assert_eq!(
        s.iter().filter(|a| a.starts_with("delete:")).count(),
        3,
        "{s:?}"
    );
    assert_eq!(s.last().map(String::as_str), Some("finished:succeeded"));
}

#[test]
fn a_platform_failing_for_good_fails_the_image_without_publishing() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    create(&mut m, Step::Platform(0), 1);
    create(&mut m, Step::Platform(1), 1);
    see(&mut m, unit_pod(Step::Platform(0), 1, PodPhase::Running));
    let out = see(
        &mut m,
        ended(
            Step::Platform(1),
            1,
            PodPhase::Failed,
            "error building image: RUN make: exit 2",
        ),
    );
    let s = summary(&out);
    assert_eq!(s[0], "image.failed:api@linux/arm64#1");
    assert!(!s.iter().any(|a| a.contains("publish")), "{s:?}");
    assert!(!s.iter().any(|a| a.starts_with("image.cancelled")), "{s:?}");
    assert!(s.contains(&"build.failed".to_owned()), "{s:?}");
    assert_eq!(
        s.iter().filter(|a| a.starts_with("delete:")).count(),
        2,
        "{s:?}"
    );
    let states = m.image_states();
    assert_eq!(states[0].phase, Phase::Failed);
    assert_eq!(states[0].digest, None);
}

#[test]
fn a_platform_is_retried_like_an_attempt() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    create(&mut m, Step::Platform(0), 1);
    create(&mut m, Step::Platform(1), 1);
    let out = see(
        &mut m,
        ended(
            Step::Platform(0),
            1,
            PodPhase::Failed,
            "error pushing image: 503 Service Unavailable",
        ),
    );
    assert_eq!(summary(&out), ["image.retrying:api@linux/amd64#1"]);
    let unit = kiln_protocol::platform_unit("api", AMD);
    let delay = backoff(&settings(), "b1", &unit, 1);
    advance(delay);
    assert_eq!(feed(&mut m, Input::Tick), ["create:0@0#2"]);
    let out = create(&mut m, Step::Platform(0), 2);
    let s = summary(&out);
    assert_eq!(s[0], "image.scheduled:api@linux/amd64#2");
    assert!(
        s[1].starts_with("delete:kiln-b1-api-linux-amd64-1-"),
        "{s:?}"
    );
}

#[test]
fn the_publish_steps_failure_line_decides_retry_or_fail() {
    let p = two_platforms(2);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    platforms_built(&mut m);
    create(&mut m, Step::Publish, 1);
    let missing = "kiln publish failed (retryable): child sha256:aaaa (linux/amd64) is missing: MANIFEST_BLOB_UNKNOWN";
    let out = see(&mut m, ended(Step::Publish, 1, PodPhase::Failed, missing));
    let ev = event(&out, "image.retrying");
    assert_eq!(ev.data.reason, Some(Reason::PushError));
    assert!(ev.data.message.unwrap().contains("linux/amd64"));
    advance(Duration::from_secs(60));
    assert_eq!(feed(&mut m, Input::Tick), ["create:0@publish#2"]);
    create(&mut m, Step::Publish, 2);
    let mismatch =
        "kiln publish failed (platform-mismatch): linux/arm64 asked, the child is linux/amd64";
    let out = see(&mut m, ended(Step::Publish, 2, PodPhase::Failed, mismatch));
    let ev = event(&out, "image.failed");
    assert_eq!(ev.id, "b1/api/2/failed");
    assert_eq!(ev.data.reason, Some(Reason::BuildError));
    assert_eq!(
        event(&out, "build.failed").data.reason,
        Some(Reason::BuildError)
    );
}

#[test]
fn denied_publish_is_a_config_error_at_once() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    platforms_built(&mut m);
    create(&mut m, Step::Publish, 1);
    let denied = "kiln publish failed (denied): 401 Unauthorized from r.example.com";
    let out = see(&mut m, ended(Step::Publish, 1, PodPhase::Failed, denied));
    assert_eq!(
        event(&out, "image.failed").data.reason,
        Some(Reason::ConfigError)
    );
}

/// A worker killed during the publish step: the next one adopts the
/// publish pod (no second one) and publishes `image.succeeded` under the
/// same id with the same digest.
#[test]
fn adoption_during_the_publish_step_adopts_the_publish_pod() {
    let p = two_platforms(3);
    let pods = [
        ended(Step::Platform(0), 1, PodPhase::Succeeded, &digest('a')),
        ended(Step::Platform(1), 1, PodPhase::Succeeded, &digest('b')),
        unit_pod(Step::Publish, 1, PodPhase::Running),
    ];
    let (mut m, out) = Machine::adopt(p.clone(), settings(), &pods, Instant::now(), p.accepted_at);
    assert_eq!(
        summary(&out),
        Vec::<String>::new(),
        "nothing to create or say"
    );
    let out = see(
        &mut m,
        ended(Step::Publish, 1, PodPhase::Succeeded, &digest('c')),
    );
    let ev = event(&out, "image.succeeded");
    assert_eq!(ev.id, "b1/api/1/succeeded");
    assert_eq!(ev.data.digest, Some(digest('c')));
    assert_eq!(ev.data.platform_digests.len(), 2);
    // The publish pod had ended before the takeover: the same event at once.
    let pods = [
        pods[0].clone(),
        pods[1].clone(),
        ended(Step::Publish, 1, PodPhase::Succeeded, &digest('c')),
    ];
    let (_, again) = Machine::adopt(p.clone(), settings(), &pods, Instant::now(), p.accepted_at);
    assert_eq!(event(&again, "image.succeeded"), ev);
    // Killed after the platforms, before the publish pod existed.
    let (_, out) = Machine::adopt(
        p.clone(),
        settings(),
        &pods[..2],
        Instant::now(),
        p.accepted_at,
    );
    assert_eq!(summary(&out), ["create:0@publish#1"]);
    // Killed while a platform still ran: no publish step yet.
    let early = [
        pods[0].clone(),
        unit_pod(Step::Platform(1), 1, PodPhase::Running),
    ];
    let (m, out) = Machine::adopt(p.clone(), settings(), &early, Instant::now(), p.accepted_at);
    assert_eq!(summary(&out), Vec::<String>::new());
    assert_eq!(m.image_states()[0].phase, Phase::Running);
}

#[test]
fn cancel_says_image_cancelled_once_per_image() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    create(&mut m, Step::Platform(0), 1);
    create(&mut m, Step::Platform(1), 1);
    let s = feed(&mut m, Input::Cancel("stop".into()));
    assert_eq!(
        s.iter()
            .filter(|a| a.starts_with("image.cancelled"))
            .count(),
        1,
        "{s:?}"
    );
    assert!(s.contains(&"build.cancelled".to_owned()), "{s:?}");
}

#[test]
fn the_deadline_fails_the_image_once() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    create(&mut m, Step::Platform(0), 1);
    create(&mut m, Step::Platform(1), 1);
    advance(Duration::from_secs(3600));
    let s = feed(&mut m, Input::Tick);
    assert_eq!(
        s.iter().filter(|a| a.starts_with("image.failed")).count(),
        1,
        "{s:?}"
    );
}

/// A pod labelled as a platform the image does not have, or as the
/// publish step of an image without platforms, is nobody's.
#[test]
fn pods_of_unknown_steps_are_ignored() {
    let p = two_platforms(3);
    let (mut m, _) = Machine::start(p.clone(), settings(), Instant::now(), p.accepted_at);
    create(&mut m, Step::Platform(0), 1);
    let mut stranger = unit_pod(Step::Platform(0), 1, PodPhase::Failed);
    stranger.platform = Some("linux-s390x".into());
    assert!(see(&mut m, stranger).is_empty());
    let mut own_uid_wrong_label = ended(Step::Platform(0), 1, PodPhase::Failed, "boom");
    own_uid_wrong_label.platform = Some(kiln_protocol::platform_label(ARM));
    assert!(
        see(&mut m, own_uid_wrong_label).is_empty(),
        "arm64's unit has no pod yet; amd64's pod is not arm64's"
    );
}
