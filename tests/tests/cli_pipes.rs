//! The `kiln` binary as a shell sees it: closed pipes, Ctrl-C, `--output
//! yaml`, colour, and the `request.rejected` answer to `submit --wait`.
//!
//! Run against `target/debug/kiln` (or `$KILN_BIN`): build it first with
//! `cargo build -p kiln-worker --bin kiln`. Tests that need RabbitMQ use a
//! fresh prefix each (the harness's [`Env`]); events are published by the
//! test itself, as a worker would, so no worker runs here.
#![allow(clippy::unwrap_used)]

use kiln_tests::binary::kiln_bin;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kiln_protocol::{BuildEvent, EventData, Phase, Reason, request_rejected_id};
use kiln_tests::harness::{Env, amqp_url, redis_url};
use kiln_worker::amqp::OutgoingEvent;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

/// `kiln` with the prefixes of `env` and nothing from the caller's
/// environment that changes its output.
fn kiln(env: &Env) -> Command {
    let mut cmd = Command::new(kiln_bin());
    cmd.env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &env.prefix)
        .env("KILN_REDIS_URL", redis_url())
        .env("KILN_REDIS_PREFIX", &env.redis_prefix)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("TRACEPARENT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn outgoing(ev: &BuildEvent) -> OutgoingEvent {
    OutgoingEvent {
        routing_key: ev.routing_key(),
        message_id: ev.id.clone(),
        build_id: ev.data.build_id.clone(),
        phase: ev.data.phase.as_str().to_owned(),
        traceparent: None,
        body: serde_json::to_vec(ev).unwrap(),
    }
}

/// `data` as an event of the tests' tenant, `guest` (the user of the
/// tests' AMQP URL): the client binds only its tenant's routing keys.
fn guest(mut data: EventData) -> EventData {
    data.tenant = Some("guest".into());
    data
}

fn accepted(build: &str) -> BuildEvent {
    BuildEvent::new(
        "urn:kiln:test",
        "w-1",
        jiff::Timestamp::now(),
        guest(EventData::for_build(build, Phase::Accepted)),
    )
}

/// Reads standard error up to the "watching …" line, which `kiln watch`
/// prints once it is subscribed and catches Ctrl-C. The rest of standard
/// error is collected by the returned task.
async fn until_watching(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, stderr.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("watching"), "{line}");
    tokio::spawn(async move {
        let mut rest = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut rest).await;
        line + &rest
    })
}

/// `kiln watch | head -1`: once the reader has gone, the next write ends
/// the process quietly with 141 (128 + SIGPIPE), not with a panic (101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_into_a_closed_pipe_ends_quietly() {
    let env = Env::new().await;
    let mut child = kiln(&env)
        .args(["watch", "--output", "json"])
        .spawn()
        .unwrap();
    let stderr = until_watching(&mut child).await;
    env.broker
        .publish_event(&outgoing(&accepted("pipe-1")))
        .await
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["id"], "pipe-1/accepted");
    drop(stdout); // what `head -1` does after its line
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        env.broker
            .publish_event(&outgoing(&accepted("pipe-2")))
            .await
            .unwrap();
        tokio::select! {
            status = child.wait() => break status.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kiln watch did not end"
        );
    };
    let stderr = stderr.await.unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    env.cleanup().await;
}

/// Ctrl-C ends `kiln watch` with 130, as it ends `kiln wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_interrupted_exits_130() {
    let env = Env::new().await;
    let mut child = kiln(&env).arg("watch").spawn().unwrap();
    let stderr = until_watching(&mut child).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    env.cleanup().await;
}

/// `--output yaml` is YAML: `watch` writes one document per event,
/// `validate` and `schema` one document each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_output_parses_as_yaml() {
    let env = Env::new().await;
    let mut child = kiln(&env)
        .args(["watch", "-o", "yaml", "--build", "y-1", "--until-done"])
        .spawn()
        .unwrap();
    let stderr = until_watching(&mut child).await;
    let mut failed = EventData::for_build("y-1", Phase::Failed);
    failed.reason = Some(Reason::BuildError);
    failed.message = Some("RUN make: exit 2\nsecond line: \"quoted\"".into());
    for data in [EventData::for_build("y-1", Phase::Accepted), failed] {
        let ev = BuildEvent::new("urn:kiln:test", "w-1", jiff::Timestamp::now(), guest(data));
        env.broker.publish_event(&outgoing(&ev)).await.unwrap();
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<BuildEvent> = serde_saphyr::from_multiple(&text).unwrap();
    let ids: Vec<&str> = docs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["y-1/accepted", "y-1/failed"], "{text}");
    assert_eq!(
        docs[1].data.message.as_deref(),
        Some("RUN make: exit 2\nsecond line: \"quoted\"")
    );

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = kiln(&env)
        .arg("validate")
        .arg(examples.join("two-images.json"))
        .args(["--output", "yaml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let verdict: Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["id"], "shop-cart-1.2.3-7f3a");

    let out = kiln(&env)
        .args(["schema", "event", "-o", "yaml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    assert_eq!(schema, kiln_protocol::build_event_schema());
    env.cleanup().await;
}

/// The first log line of `kiln worker` (its warning about running without
/// a policy), with stderr a pipe or, through `script`, a terminal.
async fn first_log_line(terminal: bool, no_colour: bool) -> String {
    let bin = kiln_bin();
    let mut cmd = if terminal {
        let mut c = Command::new("script");
        c.args(["-qec", &format!("{} worker", bin.display()), "/dev/null"]);
        c
    } else {
        let mut c = Command::new(&bin);
        c.arg("worker");
        c
    };
    // Nothing listens on port 1: the worker logs, then keeps retrying.
    cmd.env("KILN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("KILN_REDIS_URL", "redis://127.0.0.1:1")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KILN_POLICY")
        .env_remove("KILN_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if no_colour {
        cmd.env("NO_COLOR", "1");
    }
    let mut child = cmd.spawn().unwrap();
    // `script` copies the terminal to its stdout; the worker logs to stderr.
    let pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if terminal {
        Box::new(child.stdout.take().unwrap())
    } else {
        Box::new(child.stderr.take().unwrap())
    };
    let mut reader = BufReader::new(pipe);
    let mut line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let _ = child.start_kill();
    assert!(line.contains("no policy file"), "{line:?}");
    line
}

/// Colour in logs only on a terminal, and never with NO_COLOR set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let piped = first_log_line(false, false).await;
    assert!(!piped.contains('\x1b'), "colour into a pipe: {piped:?}");
    let piped = first_log_line(false, true).await;
    assert!(!piped.contains('\x1b'), "{piped:?}");
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        let tty = first_log_line(true, true).await;
        assert!(!tty.contains('\x1b'), "colour despite NO_COLOR: {tty:?}");
        let tty = first_log_line(true, false).await;
        assert!(tty.contains('\x1b'), "no colour on a terminal: {tty:?}");
    }
}

/// Publishes `request.rejected` answering `body` under `build`.
async fn publish_rejection(env: &Env, build: &str, body: &[u8], reason: Reason, message: &str) {
    let ev = BuildEvent::request_rejected(
        "urn:kiln:test",
        "w-1",
        jiff::Timestamp::now(),
        body,
        EventData::request_rejected(build, "guest", reason, message),
    );
    env.broker.publish_event(&outgoing(&ev)).await.unwrap();
}

/// `submit --wait` ends with 4 on the `request.rejected` answering the
/// message it published, and ignores one answering another message under
/// the same build id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_shows_the_rejection_of_its_own_request() {
    let env = Env::new().await;
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for output in ["text", "json"] {
        let id = format!("rr-{output}");
        let mut child = kiln(&env)
            .arg("submit")
            .arg(examples.join("git-one-image.json"))
            .args(["--id", &id, "--wait", "--timeout", "20s", "-o", output])
            .spawn()
            .unwrap();
        let request = env.wait_published(WAIT).await;
        // Someone else's message under the same id: not this request's answer.
        let mut other = request.body.clone();
        other.extend_from_slice(b" ");
        assert_ne!(
            request_rejected_id(&id, &other),
            request_rejected_id(&id, &request.body)
        );
        publish_rejection(&env, &id, &other, Reason::PolicyViolation, "not yours").await;
        let ended = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        assert!(
            ended.is_err(),
            "ended on another message's rejection: {ended:?}"
        );

        publish_rejection(
            &env,
            &id,
            &request.body,
            Reason::IdConflict,
            "build id is held by another tenant",
        )
        .await;
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
        if output == "text" {
            assert_eq!(stdout.trim(), id);
            assert!(stderr.contains("IdConflict"), "{stderr}");
            assert!(stderr.contains("held by another tenant"), "{stderr}");
            assert!(!stderr.contains("not yours"), "{stderr}");
        } else {
            let ev: BuildEvent = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(ev.id, request_rejected_id(&id, &request.body));
            assert_eq!(ev.event_type, "dev.kiln.request.rejected.v1");
            assert_eq!(ev.data.reason, Some(Reason::IdConflict));
        }
    }
    env.cleanup().await;
}
