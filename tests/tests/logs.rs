//! `kiln logs`: the real binary (`target/<profile>/kiln`, or `$KILN_BIN`;
//! build it with `cargo build -p kiln-worker --bin kiln`) against an
//! in-process worker, real RabbitMQ and Redis, and the fake cluster; and
//! the fake API server's `follow=true` log stream against kube-rs.
#![allow(clippy::unwrap_used)]

use kiln_tests::binary::kiln_bin;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::{AsyncBufReadExt, AsyncReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kiln_protocol::Phase;
use kiln_tests::fakekube::{FakeKube, Fate, FaultResponse, FaultRule, Resource, Timing, Verb};
use kiln_tests::harness::{
    Env, NAMESPACE, amqp_url, one_image, pod_labels, redis_url, two_images, unique,
};
use kiln_worker::store::{LogMeta, Store};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use tokio::io::AsyncBufReadExt as _;

const WAIT: Duration = Duration::from_secs(30);

/// `kiln logs ARGS` with `env`'s prefixes and a kubeconfig for its fake
/// cluster.
struct Logs {
    cmd: tokio::process::Command,
    _kubeconfig: TempPath,
}

struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn kiln_logs(env: &Env, args: &[&str]) -> Logs {
    let kubeconfig = TempPath(std::env::temp_dir().join(format!("{}.yaml", unique("kubeconfig"))));
    env.kube.write_kubeconfig(&kubeconfig.0).unwrap();
    let mut cmd = tokio::process::Command::new(kiln_bin());
    cmd.arg("logs")
        .args(args)
        .env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &env.prefix)
        .env("KILN_REDIS_URL", redis_url())
        .env("KILN_REDIS_PREFIX", &env.redis_prefix)
        .env("KUBECONFIG", &kubeconfig.0)
        .env_remove("KILN_NAMESPACE")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Logs {
        cmd,
        _kubeconfig: kubeconfig,
    }
}

async fn output(mut logs: Logs) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(WAIT, logs.cmd.output())
        .await
        .expect("kiln logs ended")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Attempt 1 of every image is OOM-killed (retryable), attempt 2 succeeds.
fn oom_then_success(env: &Env) {
    env.kube
        .kubelet()
        .set_script(|pod: &Pod| match pod_labels(pod).1 {
            1 => Fate::OomKilled,
            _ => Fate::succeed(),
        });
}

/// Waits for the terminal `build.*` event of `id`.
async fn wait_finished(env: &mut Env, id: &str) -> Phase {
    let events = env.events_of(id, WAIT).await;
    events
        .iter()
        .rev()
        .find(|e| kiln_tests::harness::is_build_terminal(e))
        .map(|e| e.data.phase)
        .expect("a terminal build event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_finished_build_whose_pods_are_still_there() {
    let mut env = Env::new().await;
    // The pods stay: the worker's deletes are refused.
    env.kube
        .faults()
        .add(FaultRule::new(Verb::Delete, Resource::Pods).respond(FaultResponse::Code(403)));
    env.start_worker();
    let one = unique("logs-one");
    env.publish(&one_image(&one)).await;
    assert_eq!(wait_finished(&mut env, &one).await, Phase::Succeeded);
    let pod = env.kube.pods(NAMESPACE).into_iter().find(|p| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kiln.dev/build-id"))
            == Some(&one)
    });
    let pod = pod.expect("the pod is still there");
    let log = env
        .kube
        .kubelet()
        .log(NAMESPACE, pod.metadata.name.as_deref().unwrap())
        .unwrap();
    assert!(log.contains("Pushed image"), "{log}");

    // One image: the log as it is, no prefix.
    let (code, stdout, stderr) = output(kiln_logs(&env, &[&one])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, log);

    // Two images: every line says whose it is; IMAGE picks one.
    let two = unique("logs-two");
    env.publish(&two_images(&two)).await;
    assert_eq!(wait_finished(&mut env, &two).await, Phase::Succeeded);
    let (code, stdout, stderr) = output(kiln_logs(&env, &[&two])).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2 * log.lines().count(), "{stdout}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("api#1 | ") || l.starts_with("worker#1 | ")),
        "{stdout}"
    );
    assert!(
        lines.contains(&"worker#1 | INFO[0004] Pushed image"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colour into a pipe: {stdout:?}"
    );
    let (code, stdout, stderr) = output(kiln_logs(&env, &[&two, "worker"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, log);

    // An image the build does not have is a usage error naming its images.
    let (code, _, stderr) = output(kiln_logs(&env, &[&two, "web"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no image \"web\"; its images: api, worker"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_running_build_to_its_end() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_timing(Timing {
        running: Duration::from_secs(3),
        ..Timing::default()
    });
    env.start_worker();
    let id = unique("logs-follow");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;

    let mut logs = kiln_logs(&env, &[&id, "--follow"]);
    let mut child = logs
        .cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The log so far arrives while the pod still runs...
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.as_deref(),
        Some("INFO[0000] Retrieving image manifest alpine:3.20")
    );
    let pods = env.kube.pods(NAMESPACE);
    let pod = pods.first().unwrap();
    let name = pod.metadata.name.clone().unwrap();
    assert!(env.kube.kubelet().log(NAMESPACE, &name).is_some());
    for _ in 0..4 {
        stdout.next_line().await.unwrap();
    }
    // ... and so does what the build writes next.
    env.kube
        .kubelet()
        .append_log(NAMESPACE, &name, "INFO[0005] written while followed\n");
    let next = tokio::time::timeout(Duration::from_secs(2), stdout.next_line())
        .await
        .expect("the appended line is streamed before the pod ends")
        .unwrap();
    assert_eq!(next.as_deref(), Some("INFO[0005] written while followed"));
    let phase = env
        .kube
        .pod(NAMESPACE, &name)
        .and_then(|p| p.status)
        .and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Running"), "streamed while running");
    // It ends when the build does, with its outcome.
    assert_eq!(
        tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .unwrap()
            .unwrap(),
        None
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_moves_on_to_the_next_attempt_after_a_retry() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_timing(Timing {
        running: Duration::from_millis(1500),
        ..Timing::default()
    });
    oom_then_success(&env);
    env.start_worker();
    let id = unique("logs-retry");
    let mut request = one_image(&id);
    request["retry"] = json!({"maxAttempts": 2});
    env.publish(&request).await;
    env.wait_running(&id, 1, WAIT).await;

    let (code, stdout, stderr) = output(kiln_logs(&env, &[&id, "-f"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    let oom = stdout.find("INFO[0003] RUN make -j64").expect(&stdout);
    let pushed = stdout.find("INFO[0004] Pushed image").expect(&stdout);
    assert!(oom < pushed, "attempt 1, then attempt 2: {stdout}");
    assert!(stderr.contains("api#2: attempt 2"), "{stderr}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_of_a_failed_build_exits_1() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_timing(Timing {
        running: Duration::from_millis(800),
        ..Timing::default()
    });
    env.kube.kubelet().set_script(|_: &Pod| {
        Fate::fail(1, "INFO[0001] RUN false\nerror building image: error building stage: failed to execute command: exit status 1\n")
    });
    env.start_worker();
    let id = unique("logs-fail");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;
    let (code, stdout, stderr) = output(kiln_logs(&env, &[&id, "--follow"])).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("error building image"), "{stdout}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_without_pods_say_where_the_log_tail_is() {
    let mut env = Env::new().await;
    // Keeping no logs: what `kiln logs` says once the pods are gone.
    env.start_worker_with(|c| c.log_retention = Duration::ZERO);
    // Finished: the worker deleted the pods.
    let id = unique("logs-gone");
    env.publish(&one_image(&id)).await;
    assert_eq!(wait_finished(&mut env, &id).await, Phase::Succeeded);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "the pods are deleted"
    );
    for args in [vec![id.as_str()], vec![id.as_str(), "-f"]] {
        let (code, stdout, stderr) = output(kiln_logs(&env, &args)).await;
        assert_eq!(code, Some(6), "{stderr}");
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("no pods of build {id} in namespace {NAMESPACE}")),
            "{stderr}"
        );
        assert!(
            stderr.contains("succeeded and its pods were deleted"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("kiln watch --build {id}")),
            "{stderr}"
        );
    }
    // Never existed.
    let (code, _, stderr) = output(kiln_logs(&env, &["no-such-build"])).await;
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("Redis has no record of it"), "{stderr}");
    env.cleanup().await;
}

/// A store on `env`'s Redis prefix.
async fn store(env: &Env) -> Store {
    Store::connect(
        &redis_url(),
        &env.redis_prefix,
        "test",
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

/// The kept logs of `id` as Redis has them.
async fn kept_logs(env: &Env, id: &str) -> BTreeMap<(String, u32), LogMeta> {
    store(env).await.kept_logs(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_a_succeeded_build_is_kept_after_its_pods_are_gone_then_expires() {
    let mut env = Env::new().await;
    let retention = Duration::from_secs(3);
    env.start_worker_with(|c| c.log_retention = retention);
    let id = unique("logs-kept");
    env.publish(&one_image(&id)).await;
    let events = env.events_of(&id, WAIT).await;
    let succeeded = events
        .iter()
        .find(|e| kiln_tests::harness::is_build_terminal(e))
        .expect("a terminal build event");
    assert_eq!(succeeded.data.phase, Phase::Succeeded);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "the pods are deleted"
    );

    // The whole log of the attempt, from Redis, as the pod had it.
    let whole = Fate::succeed_log();
    for args in [
        vec![id.as_str()],
        vec![id.as_str(), "api"],
        vec![id.as_str(), "api", "--attempt", "1"],
    ] {
        let (code, stdout, stderr) = output(kiln_logs(&env, &args)).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(stdout, whole, "{args:?}");
    }
    // Kept off the event's path: the log was read after the terminal event
    // was made and published, never before it.
    let kept = kept_logs(&env, &id).await;
    let meta = &kept[&("api".to_owned(), 1)];
    assert!(
        meta.kept_at > succeeded.time,
        "{meta:?} vs {}",
        succeeded.time
    );
    assert_eq!((meta.bytes, meta.cut), (whole.len() as u64, 0));
    assert_eq!(meta.retention_seconds, 3);

    // After the retention: one line saying when it expired.
    let left = meta.expires_at.duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(200))
        .await;
    let (code, stdout, stderr) = output(kiln_logs(&env, &[&id, "api"])).await;
    assert_eq!(code, Some(6), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("the log of {id}/api attempt 1 expired at ")),
        "{stderr}"
    );
    assert!(stderr.contains("(kept for 3s)"), "{stderr}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_build_is_kept() {
    let mut env = Env::new().await;
    oom_then_success(&env);
    env.start_worker();
    let id = unique("logs-kept-retry");
    let mut request = one_image(&id);
    request["retry"] = json!({"maxAttempts": 2});
    env.publish(&request).await;
    assert_eq!(wait_finished(&mut env, &id).await, Phase::Succeeded);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "the pods are deleted"
    );
    let (code, first, stderr) = output(kiln_logs(&env, &[&id, "api", "--attempt", "1"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(first.contains("INFO[0003] RUN make -j64"), "{first}");
    let (code, newest, stderr) = output(kiln_logs(&env, &[&id, "api"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(newest, Fate::succeed_log());
    let (code, all, stderr) = output(kiln_logs(&env, &[&id, "--all-attempts"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(all, format!("{first}{newest}"));
    env.cleanup().await;
}

/// A multi-platform image (issue 21): each platform's log is kept under
/// `IMAGE/os/arch` when its pod is deleted (the platforms' attempts share
/// numbers), and `kiln logs` shows every platform, or one with
/// `--platform`. The publish step's log is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_platforms_log_is_kept_and_shown_under_its_own_name() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|pod: &Pod| {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        match labels.get("kiln.dev/platform") {
            Some(p) => Fate::Succeed {
                digest: None,
                log: format!("INFO[0000] built on {p}\n"),
            },
            None => Fate::succeed(),
        }
    });
    env.start_worker();
    let id = unique("logs-platforms");
    let mut request = one_image(&id);
    request["images"][0]["platforms"] = json!(["linux/amd64", "linux/arm64"]);
    env.publish(&request).await;
    assert_eq!(wait_finished(&mut env, &id).await, Phase::Succeeded);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "the pods are deleted"
    );
    let kept = kept_logs(&env, &id).await;
    assert_eq!(
        kept.keys().cloned().collect::<Vec<_>>(),
        [
            ("api/linux/amd64".to_owned(), 1),
            ("api/linux/arm64".to_owned(), 1)
        ],
        "{kept:?}"
    );
    for args in [vec![id.as_str()], vec![id.as_str(), "api"]] {
        let (code, stdout, stderr) = output(kiln_logs(&env, &args)).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "api/linux/amd64#1 | INFO[0000] built on linux-amd64",
                "api/linux/arm64#1 | INFO[0000] built on linux-arm64"
            ],
            "{args:?}: {stdout}"
        );
    }
    let (code, stdout, stderr) =
        output(kiln_logs(&env, &[&id, "api", "--platform", "linux/arm64"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "INFO[0000] built on linux-arm64\n");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_read_does_not_keep_the_pods() {
    let mut env = Env::new().await;
    env.kube
        .faults()
        .add(FaultRule::new(Verb::Logs, Resource::Pods).respond(FaultResponse::InternalError));
    env.start_worker();
    let id = unique("logs-unread");
    env.publish(&one_image(&id)).await;
    assert_eq!(wait_finished(&mut env, &id).await, Phase::Succeeded);
    assert!(
        env.eventually(WAIT, |e| e.pod_names().is_empty()).await,
        "the pods are deleted without their log"
    );
    assert!(kept_logs(&env, &id).await.is_empty());
    env.cleanup().await;
}

/// The fake API server streams `follow=true` until the container stops, as
/// the kubelet does, and without `follow` answers the log as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_log_follow_stays_open_until_the_container_terminates() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = FakeKube::start().await;
    kube.kubelet().set_timing(Timing {
        running: Duration::from_millis(1500),
        ..Timing::default()
    });
    kube.kubelet()
        .set_script(|_: &Pod| Fate::fail(1, "first\n"));
    let pods: Api<Pod> = Api::namespaced(kube.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "kaniko", "image": "kaniko:test"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = || {
        kube.pod("default", "p")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    };
    let until = tokio::time::Instant::now() + WAIT;
    while !running() {
        assert!(tokio::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Without follow: the log as it is, at once.
    let mut now = String::new();
    pods.log_stream("p", &LogParams::default())
        .await
        .unwrap()
        .read_to_string(&mut now)
        .await
        .unwrap();
    assert_eq!(now, "first\n");

    let follow = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = Box::pin(pods.log_stream("p", &follow).await.unwrap().lines());
    assert_eq!(lines.next().await.unwrap().unwrap(), "first");
    // Open while the container runs: no end of stream.
    let idle = tokio::time::timeout(Duration::from_millis(300), lines.next()).await;
    assert!(idle.is_err(), "the stream stays open: {idle:?}");
    kube.kubelet().append_log("default", "p", "second\n");
    let second = tokio::time::timeout(Duration::from_secs(1), lines.next()).await;
    assert_eq!(second.unwrap().unwrap().unwrap(), "second");
    assert!(running());
    // The container terminates: the stream ends.
    let end = tokio::time::timeout(WAIT, lines.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    assert_eq!(
        kube.pod("default", "p")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Failed")
    );
    // Following a terminated container: its whole log, then the end.
    let mut all = String::new();
    pods.log_stream("p", &follow)
        .await
        .unwrap()
        .read_to_string(&mut all)
        .await
        .unwrap();
    assert_eq!(all, "first\nsecond\n");
}

/// `-f` on a build that is accepted but has no pods yet waits for them,
/// rather than declaring the build over; the record saying it finished
/// ends the wait with its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_waits_for_the_pods_of_an_accepted_build() {
    use kiln_worker::store::{BuildRecord, RecordState};
    let env = Env::new().await;
    let leases = store(&env).await;
    let record = |state, phase: Option<kiln_protocol::Phase>| BuildRecord {
        state,
        phase,
        tenant: "guest".into(),
        fingerprint: String::new(),
        history: kiln_worker::store::History::default(),
        namespace: NAMESPACE.into(),
        worker: "w-1".into(),
        images: std::collections::BTreeMap::new(),
        updated_at: jiff::Timestamp::now(),
    };
    let id = unique("logs-early");
    leases
        .put_record(&id, &record(RecordState::Accepted, None), WAIT)
        .await
        .unwrap();
    let mut child = kiln_logs(&env, &[&id, "-f"]);
    let mut child = child.cmd.stdout(Stdio::piped()).spawn().unwrap();
    let early = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    assert!(early.is_err(), "still waiting for the pods: {early:?}");
    leases
        .put_record(
            &id,
            &record(RecordState::Finished, Some(kiln_protocol::Phase::Cancelled)),
            WAIT,
        )
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    env.cleanup().await;
}
