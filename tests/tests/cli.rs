//! The `kiln` client commands, run as a separate process.
//!
//! The binary is found beside this test binary (`target/<profile>/kiln`,
//! the test itself being `target/<profile>/deps/cli-…`), or at `$KILN_BIN`.
//! Cargo builds a package's binaries for its own integration tests only, so
//! the test command builds it first: `cargo build -p kiln-worker --bin kiln`
//! (scripts/test does). A missing binary fails with that advice; a binary
//! older than `worker/src` gets a warning.
//!
//! Tests that talk to RabbitMQ and Redis use a fresh prefix each (through
//! the harness, which also cleans up); the end-to-end ones run an
//! in-process worker against the fake Kubernetes API.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use kiln_protocol::{BuildEvent, EventData, ImageSummary, Phase, PodRef, Reason};
use kiln_tests::binary::kiln_bin;
use kiln_tests::fakekube::Fate;
use kiln_tests::harness::{
    Env, ONE_IMAGE_SUCCEEDS, amqp_url, assert_sequence, one_image, redis_url, two_images, unique,
};
use kiln_worker::amqp::OutgoingEvent;
use kiln_worker::store::{BuildRecord, ImageRecord, RecordState, Store};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `kiln` with no connection settings from the environment the tests run in.
fn kiln() -> Command {
    let mut cmd = Command::new(kiln_bin());
    for var in [
        "KILN_AMQP_URL",
        "KILN_AMQP_PREFIX",
        "KILN_REDIS_URL",
        "KILN_REDIS_PREFIX",
        "KILN_NAMESPACE",
        "TRACEPARENT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// `kiln` (async, for tests that run a worker or publish meanwhile) with
/// the prefixes of `env`.
fn kiln_async(env: &Env) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(kiln_bin());
    cmd.env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &env.prefix)
        .env("KILN_REDIS_URL", redis_url())
        .env("KILN_REDIS_PREFIX", &env.redis_prefix)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_BACKTRACE", "1")
        .env_remove("TRACEPARENT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temporary file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(ext: &str, content: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{}.{ext}", unique("kiln-cli")));
        std::fs::write(&p, content).unwrap();
        Self(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn request_examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            matches!(v["kind"].as_str(), Some("BuildRequest" | "CancelRequest"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

fn assert_one_clean_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr:\n{stderr}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "Caused by"] {
        assert!(!stderr.contains(bad), "{stderr}");
    }
}

// ------------------------------------------------- no broker needed

#[test]
fn validate_accepts_every_example_request() {
    let files = request_examples();
    let out = kiln().arg("validate").args(&files).assert().success();
    let stdout = text(&out.get_output().stdout);
    for f in &files {
        let line = format!("{}: ok (", f.display());
        assert!(stdout.contains(&line), "{line} missing in:\n{stdout}");
    }
}

#[test]
fn validate_accepts_yaml() {
    let yaml = TempFile::new(
        "yaml",
        "apiVersion: kiln/v1\nkind: BuildRequest\nid: yaml-1\nimages:\n  - name: api\n    context:\n      git: { url: https://github.com/acme/cart.git, ref: refs/heads/main }\n    destinations: [registry.example.com/shop/api:1.0.0]\n",
    );
    let out = kiln().args(["validate", yaml.path()]).assert().success();
    assert!(text(&out.get_output().stdout).contains("ok (BuildRequest \"yaml-1\", 1 image)"));
}

#[test]
fn validate_lists_every_problem_with_file_and_path() {
    let mut bad = two_images("bad id!");
    bad["images"][0]["name"] = json!("API_");
    bad["images"][1]["destinations"] = json!([]);
    let semantic = TempFile::new("json", &serde_json::to_string_pretty(&bad).unwrap());
    let structural = TempFile::new(
        "yaml",
        "apiVersion: kiln/v1\nkind: BuildRequest\nid: y-1\nimages:\n  - name: api\n    contxt: {}\n",
    );
    let broken = TempFile::new("json", "{\"apiVersion\": \"kiln/v1\",");
    let good = examples_dir().join("git-one-image.json");
    let out = kiln()
        .arg("validate")
        .args([semantic.path(), structural.path(), broken.path()])
        .arg(&good)
        .assert()
        .code(2);
    let stdout = text(&out.get_output().stdout);
    for want in [
        format!("{}: id: ", semantic.path()),
        format!("{}: images[0].name: ", semantic.path()),
        format!("{}: images[1].destinations: ", semantic.path()),
        format!("{}: images[0]", structural.path()),
        format!("{}: $: ", broken.path()),
        format!("{}: ok", good.display()),
    ] {
        assert!(stdout.contains(&want), "{want:?} missing in:\n{stdout}");
    }
    assert!(stdout.contains("contxt"), "{stdout}");
    assert!(text(&out.get_output().stderr).contains("3 of 4 files invalid"));
}

#[test]
fn validate_reads_stdin() {
    let body = std::fs::read_to_string(examples_dir().join("two-images.json")).unwrap();
    kiln()
        .args(["validate", "-"])
        .write_stdin(body)
        .assert()
        .success();
    kiln()
        .args(["validate", "-"])
        .write_stdin("kind: BuildRequest\n")
        .assert()
        .code(2);
}

#[test]
fn schema_prints_json_schemas() {
    for (which, title) in [
        ("request", "Kiln BuildRequest"),
        ("cancel", "Kiln CancelRequest"),
        ("event", "Kiln BuildEvent"),
    ] {
        let out = kiln().args(["schema", which]).assert().success();
        let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(v["title"], title, "{which}");
        assert!(v["$schema"].as_str().unwrap().contains("2020-12"));
    }
    kiln().args(["schema", "nope"]).assert().code(2);
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = kiln().args(["completions", shell]).assert().success();
        let s = text(&out.get_output().stdout);
        assert!(s.len() > 500 && s.contains("submit"), "{shell}: {s}");
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "submit",
        "wait",
        "watch",
        "cancel",
        "status",
        "validate",
        "schema",
        "completions",
        "publish",
    ] {
        let out = kiln().args([cmd, "--help"]).assert().success();
        let s = text(&out.get_output().stdout);
        assert!(s.contains("Examples:"), "{cmd}:\n{s}");
        assert!(s.contains(&format!("kiln {cmd}")), "{cmd}:\n{s}");
    }
    let out = kiln().arg("--help").assert().success();
    assert!(text(&out.get_output().stdout).contains("Exit codes:"));
}

#[test]
fn unreachable_broker_is_one_line() {
    let url = "amqp://guest:s3cret@127.0.0.1:1/%2f";
    let example = examples_dir().join("two-images.json");
    let example = example.to_str().unwrap();
    for args in [
        vec!["submit", example],
        vec!["submit", example, "--wait"],
        vec!["cancel", "b-1"],
        vec!["watch"],
        vec!["wait", "b-1"],
    ] {
        let out = kiln()
            .env("KILN_AMQP_URL", url)
            .args(&args)
            .timeout(Duration::from_secs(30))
            .assert()
            .code(6);
        let stderr = text(&out.get_output().stderr);
        assert_one_clean_line(&stderr);
        assert!(
            stderr.contains("RabbitMQ") && stderr.contains("127.0.0.1:1"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert!(out.get_output().stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn status_with_nothing_reachable_says_so() {
    let out = kiln()
        .env("KILN_REDIS_URL", "redis://:s3cret@127.0.0.1:1")
        .args(["status", "b-1"])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(6);
    let stderr = text(&out.get_output().stderr);
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("Redis unreachable"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("cluster unreachable"), "{stderr}");
}

#[test]
fn invalid_submit_exits_2_before_connecting() {
    // The broker URL is unreachable: an invalid file must not even try.
    let mut bad = one_image("b-1");
    bad["images"][0]["destinations"] = json!(["not a reference"]);
    let f = TempFile::new("json", &bad.to_string());
    let out = kiln()
        .env("KILN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .args(["submit", f.path()])
        .assert()
        .code(2);
    let stderr = text(&out.get_output().stderr);
    assert!(
        stderr.contains(&format!("{}: images[0].destinations[0]: ", f.path())),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was published"), "{stderr}");
    assert!(!stderr.contains("RabbitMQ"), "{stderr}");
}

// ------------------------------------------ RabbitMQ and Redis, no worker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_submit_publishes_nothing() {
    let env = Env::new().await;
    let mut bad = one_image("b-1");
    bad["images"][0]["name"] = json!("Not_A_Label");
    bad["surprise"] = json!(true);
    let f = TempFile::new("json", &bad.to_string());
    let out = kiln_async(&env)
        .args(["submit", f.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("surprise"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let builds = env.broker.names().builds();
    assert!(env.broker.get_one(&builds).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_publishes_with_tenant_and_id() {
    let env = Env::new().await;
    let builds = env.broker.names().builds();

    // --id overrides the file's id; the tenant is the URL's user.
    let example = examples_dir().join("two-images.json");
    let out = kiln_async(&env)
        .arg("submit")
        .arg(&example)
        .args(["--id", "cli-override-1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "cli-override-1");
    let msg = env.broker.get_one(&builds).await.unwrap().unwrap();
    assert_eq!(msg.user_id.as_deref(), Some("guest"));
    assert_eq!(msg.content_type.as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(body["id"], "cli-override-1");
    assert_eq!(body["images"].as_array().unwrap().len(), 2);

    // The file's id is kept when --id is not given.
    let out = kiln_async(&env)
        .arg("submit")
        .arg(&example)
        .args(["--output", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["id"], "shop-cart-1.2.3-7f3a");
    let msg = env.broker.get_one(&builds).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(body["id"], "shop-cart-1.2.3-7f3a");

    // No id anywhere: a new ULID. YAML from standard input.
    let yaml = "apiVersion: kiln/v1\nkind: BuildRequest\nimages:\n  - name: api\n    context:\n      git: { url: https://github.com/acme/cart.git, ref: refs/heads/main }\n    destinations: [registry.example.com/shop/api:1.0.0]\n";
    let mut child = kiln_async(&env)
        .args(["submit", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(yaml.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert!(id.parse::<ulid::Ulid>().is_ok(), "{id}");
    let msg = env.broker.get_one(&builds).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert!(env.broker.get_one(&builds).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_publishes_a_cancel_request() {
    let env = Env::new().await;
    let out = kiln_async(&env)
        .args(["cancel", "b-7", "--reason", "superseded"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let msg = env
        .broker
        .get_one(&env.broker.names().cancels())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.user_id.as_deref(), Some("guest"));
    let body: Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(
        body,
        json!({"apiVersion": "kiln/v1", "kind": "CancelRequest", "id": "b-7", "reason": "superseded"})
    );
    // An invalid id is refused locally.
    let out = kiln_async(&env)
        .args(["cancel", "a b"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_submit_is_an_error() {
    // The requests exchange exists, but no queue is bound to it.
    let prefix = unique("kiln-test");
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = format!("{prefix}.requests");
    ch.exchange_declare(
        exchange.clone().into(),
        lapin::ExchangeKind::Direct,
        lapin::options::ExchangeDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let out = tokio::process::Command::new(kiln_bin())
        .env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &prefix)
        .arg("submit")
        .arg(examples_dir().join("git-one-image.json"))
        .output()
        .await
        .unwrap();
    let _ = ch
        .exchange_delete(
            exchange.into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert_one_clean_line(&stderr);
    assert!(stderr.contains("could not route"), "{stderr}");
    assert!(out.stdout.is_empty());
}

fn record(phase: Phase, digest: Option<&str>) -> BuildRecord {
    BuildRecord {
        state: RecordState::Finished,
        phase: Some(phase),
        tenant: "guest".into(),
        fingerprint: String::new(),
        namespace: "kiln-builds".into(),
        worker: "w-1".into(),
        images: [(
            "api".to_owned(),
            ImageRecord {
                phase,
                attempt: 2,
                pod: Some("kiln-b-api-2".into()),
                digest: digest.map(str::to_owned),
                reason: None,
            },
        )]
        .into(),
        updated_at: jiff::Timestamp::now(),
        history: kiln_worker::store::History::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_a_finished_build_from_redis() {
    let env = Env::new().await;
    let leases = Store::connect(
        &redis_url(),
        &env.redis_prefix,
        "test",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    leases
        .put_record("done-ok", &record(Phase::Succeeded, Some(&digest)), WAIT)
        .await
        .unwrap();
    leases
        .put_record("done-bad", &record(Phase::Failed, None), WAIT)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let out = kiln_async(&env)
        .args(["wait", "done-ok"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("api {digest}"));
    assert!(started.elapsed() < Duration::from_secs(10));

    let out = kiln_async(&env)
        .args(["wait", "done-bad", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let ev: BuildEvent = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev.data.phase, Phase::Failed);
    assert_eq!(ev.data.images.unwrap()[0].attempts, 2);

    // Status reads the same record (the cluster is unreachable: one line).
    let out = kiln_async(&env)
        .args(["status", "done-ok"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("build done-ok: succeeded"), "{stdout}");
    assert!(
        stdout.contains("kiln-b-api-2") && stdout.contains(&digest),
        "{stdout}"
    );
    assert_one_clean_line(&text(&out.stderr));
    assert!(text(&out.stderr).contains("cluster unreachable"));
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

/// An event of the tests' tenant, `guest` (the user of the tests' AMQP
/// URL): `kiln wait`/`watch` bind only their tenant's routing keys.
fn event(mut data: EventData) -> BuildEvent {
    data.tenant.get_or_insert_with(|| "guest".into());
    BuildEvent::new("urn:kiln:test", "w-1", jiff::Timestamp::now(), data)
}

/// The events of a build whose only image fails for good.
fn failed_build(id: &str) -> Vec<BuildEvent> {
    let mut fail = EventData::for_image(id, "api", 1, Phase::Failed);
    fail.max_attempts = Some(1);
    fail.reason = Some(Reason::BuildError);
    fail.message = Some("RUN make failed".into());
    fail.exit_code = Some(2);
    fail.log_tail = Some("step 3/7 : RUN make\nmake: *** [all] Error 2\n".into());
    let mut done = EventData::for_build(id, Phase::Failed);
    done.reason = Some(Reason::BuildError);
    done.message = Some("image api failed".into());
    vec![
        event(EventData::for_build(id, Phase::Accepted)),
        event(EventData::for_image(id, "api", 1, Phase::Running)),
        event(fail),
        event(done),
    ]
}

/// `kiln wait` follows the events of its build only, to the terminal one.
/// The events are re-published until the process ends (it drops
/// duplicates), so the test need not know when it has subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_events_to_the_end() {
    let env = Env::new().await;
    let child = kiln_async(&env)
        .args(["wait", "ev-1", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut others = failed_build("someone-else");
    others.pop();
    let mut events = others;
    events.extend(failed_build("ev-1"));
    let out = publish_until_exit(&env, child, &events).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BuildError"), "{stderr}");
    assert!(stderr.contains("make: *** [all] Error 2"), "{stderr}");
    assert!(stderr.contains("exit code 2"), "{stderr}");
    assert!(!stderr.contains("someone-else"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // Cancelled → 3, rejected → 4, as JSON: the terminal event only.
    for (phase, code) in [(Phase::Cancelled, 3), (Phase::Rejected, 4)] {
        let id = format!("ev-{phase}");
        let child = kiln_async(&env)
            .args(["wait", &id, "--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut data = EventData::for_build(&id, phase);
        data.reason = Some(if phase == Phase::Cancelled {
            Reason::Cancelled
        } else {
            Reason::InvalidRequest
        });
        let out = publish_until_exit(&env, child, &[event(data)]).await;
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let ev: BuildEvent = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ev.data.phase, phase);
        assert_eq!(ev.data.build_id, id);
    }

    // Nothing comes: exit 5 after the timeout.
    let out = kiln_async(&env)
        .args(["wait", "never", "--timeout", "1s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("gave up waiting"));
}

async fn publish_until_exit(
    env: &Env,
    mut child: tokio::process::Child,
    events: &[BuildEvent],
) -> Output {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for ev in events {
            env.broker.publish_event(&outgoing(ev)).await.unwrap();
        }
        tokio::select! {
            status = child.wait() => {
                status.unwrap();
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "kiln did not exit");
    }
    child.wait_with_output().await.unwrap()
}

/// `submit --wait` subscribes before it publishes: events published once,
/// right after the request arrives, are all seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_subscribes_before_publishing() {
    let env = Env::new().await;
    let mut child = kiln_async(&env)
        .arg("submit")
        .arg(examples_dir().join("git-one-image.json"))
        .args(["--id", "sw-1", "--wait", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = env.wait_published(WAIT).await;
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["id"], "sw-1");
    let digest = format!("sha256:{}", "cd".repeat(32));
    let reference = format!("registry.example.com/hello/hello:2026.11.25@{digest}");
    let mut ok = EventData::for_image("sw-1", "hello", 1, Phase::Succeeded);
    ok.digest = Some(digest.clone());
    ok.image_refs = vec![reference.clone()];
    ok.pod = Some(PodRef {
        namespace: "kiln-builds".into(),
        name: "kiln-sw-1-hello-1".into(),
    });
    let mut done = EventData::for_build("sw-1", Phase::Succeeded);
    done.images = Some(vec![ImageSummary {
        name: "hello".into(),
        phase: Phase::Succeeded,
        digest: Some(digest),
        attempts: 1,
        image_refs: vec![reference.clone()],
        platform_digests: std::collections::BTreeMap::new(),
        reason: None,
    }]);
    for ev in [
        event(EventData::for_build("sw-1", Phase::Accepted)),
        event(EventData::for_image("sw-1", "hello", 1, Phase::Scheduled)),
        event(ok),
        event(done),
    ] {
        env.broker.publish_event(&outgoing(&ev)).await.unwrap();
    }
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(status.unwrap().code(), Some(0), "{stderr}");
    assert_eq!(
        text(&out.stdout),
        format!("sw-1\n{reference}\n"),
        "{stderr}"
    );
    // Not a terminal: one plain line per event.
    assert!(stderr.contains("sw-1/hello  image.succeeded"), "{stderr}");
}

// ------------------------------------------------ with a worker (fake kube)

/// `kiln submit <request> --wait`: its output, and its standard error as
/// text.
async fn submit_wait(env: &Env, request: &Value) -> (Output, String) {
    let f = TempFile::new("json", &serde_json::to_string_pretty(request).unwrap());
    let out = kiln_async(env)
        .args(["submit", f.path(), "--wait", "--timeout", "60s"])
        .output()
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    (out, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_to_success_prints_pinned_references() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("cli-ok");
    let (out, stderr) = submit_wait(&env, &two_images(&id)).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], id);
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, repo) in lines[1..].iter().zip(["cart-api", "cart-worker"]) {
        assert!(
            line.starts_with(&format!("registry.example.com/shop/{repo}:1.2.3@sha256:")),
            "{stdout}"
        );
    }
    assert!(stderr.contains("succeeded"), "{stderr}");

    // Waiting again answers at once (from Redis, or the event): same exit.
    let out = kiln_async(&env)
        .args(["wait", &id, "--timeout", "10s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_to_failure_shows_reason_and_log() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| {
        Fate::fail(
            1,
            "INFO[0002] RUN make\nerror: no rule to make target 'all'\n",
        )
    });
    env.start_worker();
    let id = unique("cli-fail");
    let (out, stderr) = submit_wait(&env, &one_image(&id)).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BuildError"), "{stderr}");
    assert!(stderr.contains("no rule to make target"), "{stderr}");
    assert_eq!(text(&out.stdout).trim(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_cloudevent_per_line() {
    let mut env = Env::new().await;
    env.start_worker();
    let id = unique("cli-watch");
    let mut child = kiln_async(&env)
        .args(["watch", "--output", "json", "--build", &id, "--until-done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The "watching" line on stderr says the subscription exists.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt as _;
        tokio::time::timeout(WAIT, stderr.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(line.starts_with("watching"), "{line}");
    env.publish(&one_image("someone-else")).await;
    env.publish(&one_image(&id)).await;
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap();
    assert_eq!(status.unwrap().code(), Some(0));
    let out = child.wait_with_output().await.unwrap();
    let events: Vec<BuildEvent> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_sequence(&events, ONE_IMAGE_SUCCEEDS);
    assert!(events.iter().all(|e| e.data.build_id == id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_status_of_a_running_build() {
    let mut env = Env::new().await;
    env.kube.kubelet().set_script(|_| Fate::RunForever);
    env.start_worker();
    let id = unique("cli-cancel");
    env.publish(&one_image(&id)).await;
    env.wait_running(&id, 1, WAIT).await;

    // Status: Redis' record and the pods of the fake cluster.
    let kubeconfig = TempFile::new("yaml", "");
    env.kube.write_kubeconfig(&kubeconfig.0).unwrap();
    let out = kiln_async(&env)
        .env("KUBECONFIG", kubeconfig.path())
        .args(["status", &id])
        .output()
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains(&format!("build {id}:")), "{stdout}");
    assert!(
        stdout.contains("cluster: namespace kiln-builds"),
        "{stdout}"
    );
    assert!(stdout.contains("Running"), "{stdout}");
    let out = kiln_async(&env)
        .env("KUBECONFIG", kubeconfig.path())
        .args(["status", &id, "--output", "json"])
        .output()
        .await
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["pods"][0]["image"], "api");
    assert_eq!(st["record"]["images"]["api"]["attempt"], 1);

    // Cancel, then wait: exit code 3.
    let out = kiln_async(&env)
        .args(["cancel", &id, "--reason", "superseded"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kiln_async(&env)
        .args(["wait", &id, "--timeout", "30s"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}
