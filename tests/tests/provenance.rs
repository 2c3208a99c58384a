//! Signed provenance checked by verifiers no one here wrote: Python's
//! securesystemslib (tests/provenance/verify.py) and the openssl CLI for the
//! keys, plus `kiln verify` and `kiln provenance` run as processes, and
//! workers with and without a key against real RabbitMQ and Redis and the
//! fake Kubernetes API.
//!
//! The Python verifier needs `pip install -r tests/provenance/requirements.txt`
//! (.ci/run does it into a venv and names its interpreter in `KILN_PYTHON`;
//! without it `python3` is used).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use kiln_protocol::provenance::{
    AttemptFacts, Envelope, SigningKey, VerifyingKey, git_dependency, image_dependency,
    sign_statement, statement_for,
};
use kiln_protocol::{BuildEvent, EventData, Phase};
use kiln_tests::binary::kiln_bin;
use kiln_tests::harness::unique;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kiln_tests::fakekube::Fate;
use kiln_tests::harness::provenance::{test_key_path, test_public_key_path};
use kiln_tests::harness::{
    Env, NAMESPACE, ONE_IMAGE_SUCCEEDS, amqp_url, one_image, pod_labels, redis_url, two_images,
};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const WAIT: Duration = Duration::from_secs(30);

const EXECUTOR: &str = "gcr.io/kaniko-project/executor:v1.23.2";

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("kiln-provenance"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The openssl CLI: the independent reference for key encodings.
fn openssl(args: &[&str], stdin: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI is needed by this test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

fn openssl_text(args: &[&str], stdin: &str) -> String {
    String::from_utf8(openssl(args, stdin)).unwrap()
}

const GENERATE_P256: &[&str] = &[
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
];

/// A fresh P-256 key in `dir`: the key and the path of its public key as
/// openssl writes it.
fn key_pair(dir: &TempDir, name: &str) -> (SigningKey, PathBuf) {
    let private = openssl_text(GENERATE_P256, "");
    let public = openssl_text(&["pkey", "-pubout"], &private);
    (
        SigningKey::from_pem(&private).unwrap(),
        dir.write(&format!("{name}.pub.pem"), &public),
    )
}

/// An `image.succeeded` event with a signed statement, as the worker makes
/// them: subjects are the destinations, the digest the event's.
fn succeeded(key: &SigningKey, build: &str, image: &str, attempt: u32, digest: &str) -> Value {
    let destinations = vec![
        format!("registry.example.com/shop/{image}:1.2.3"),
        format!("registry.example.com/shop/{image}:latest"),
    ];
    let mut data = EventData::for_image(build, image, attempt, Phase::Succeeded);
    data.digest = Some(digest.to_owned());
    data.image_refs = destinations
        .iter()
        .map(|d| format!("{d}@{digest}"))
        .collect();
    let statement = statement_for(AttemptFacts {
        build_id: build,
        image,
        attempt,
        destinations: &destinations,
        digest,
        external_parameters: json!({"id": build, "images": [{"name": image}]}),
        internal_parameters: json!({"namespace": "kiln-builds"}),
        resolved_dependencies: vec![
            git_dependency(
                "https://git.example.com/shop/cart.git",
                Some("main"),
                Some("0123456789abcdef0123456789abcdef01234567"),
            ),
            image_dependency(
                EXECUTOR,
                &format!("gcr.io/kaniko-project/executor@sha256:{}", "cd".repeat(32)),
            )
            .unwrap(),
        ],
        builder_id: "urn:kiln:test",
        started_on: Some("2026-11-25T10:00:00Z".parse().unwrap()),
        finished_on: Some("2026-11-25T10:03:32Z".parse().unwrap()),
    })
    .unwrap();
    let event = BuildEvent::new("urn:kiln:test", "w", jiff::Timestamp::UNIX_EPOCH, data);
    let mut value = serde_json::to_value(event).unwrap();
    value["data"]["provenance"] = serde_json::to_value(sign_statement(key, &statement)).unwrap();
    value
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn jsonl(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

fn python() -> String {
    std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn verify_py(args: &[&str], events: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("provenance/verify.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .arg(events)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the verifier's modules are missing: pip install -r tests/provenance/requirements.txt \
         (or point KILN_PYTHON at an interpreter that has them): {stderr}"
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `event` with one byte of its payload changed.
fn payload_changed(mut event: Value) -> Value {
    let mut envelope: Envelope =
        serde_json::from_value(event["data"]["provenance"].take()).unwrap();
    let mut payload = envelope.payload_bytes().unwrap();
    let last = payload.len() - 2;
    payload[last] ^= 0x01;
    envelope.payload = base64::engine::general_purpose::STANDARD.encode(payload);
    event["data"]["provenance"] = serde_json::to_value(envelope).unwrap();
    event
}

#[test]
fn python_verifier_accepts_kiln_envelopes_and_refuses_altered_ones() {
    let dir = TempDir::new();
    let (key, public) = key_pair(&dir, "worker");
    let (other, _) = key_pair(&dir, "other");
    let running = json!({"type": "dev.kiln.image.running.v1", "data": {"phase": "running"}});
    let good = [
        running.clone(),
        succeeded(&key, "shop-cart-1", "api", 1, &digest(1)),
        succeeded(&key, "shop-cart-1", "web", 2, &digest(2)),
    ];
    let file = dir.write("good.jsonl", &jsonl(&good));
    let out = verify_py(&["--key", public.to_str().unwrap()], &file);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 image.succeeded events, 0 problems"),
        "{}",
        text(&out)
    );

    // Each alteration alone fails the run and is named.
    let mut moved = succeeded(&key, "shop-cart-1", "api", 1, &digest(1));
    moved["data"]["digest"] = json!(digest(3));
    let mut no_provenance = succeeded(&key, "shop-cart-1", "api", 1, &digest(1));
    no_provenance["data"]
        .as_object_mut()
        .unwrap()
        .remove("provenance");
    for (name, bad, why) in [
        (
            "payload",
            payload_changed(good[1].clone()),
            "does not verify",
        ),
        (
            "other key",
            succeeded(&other, "shop-cart-1", "api", 1, &digest(1)),
            "does not verify",
        ),
        ("digest", moved, "!= event digest"),
        ("missing", no_provenance, "no data.provenance"),
    ] {
        let file = dir.write("bad.jsonl", &jsonl(&[good[1].clone(), bad]));
        let out = verify_py(&["--key", public.to_str().unwrap()], &file);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(text(&out).contains(why), "{name}: {}", text(&out));
    }

    // The no-key run's check.
    let file = dir.write("none.jsonl", &jsonl(&[running]));
    assert!(verify_py(&["--expect-none"], &file).status.success());
    let file = dir.write("some.jsonl", &jsonl(&good));
    assert_eq!(verify_py(&["--expect-none"], &file).status.code(), Some(1));
}

#[test]
fn kiln_verify_prints_the_subjects_and_refuses_a_one_byte_change() {
    let dir = TempDir::new();
    let (key, public) = key_pair(&dir, "worker");
    let event = succeeded(&key, "shop-cart-1", "api", 1, &digest(1));
    let kiln = |file: &Path| {
        Command::new(kiln_bin())
            .args(["verify", "--key"])
            .arg(&public)
            .arg(file)
            .output()
            .unwrap()
    };

    let whole = dir.write("event.json", &event.to_string());
    let out = kiln(&whole);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "registry.example.com/shop/api:1.2.3 {d}\nregistry.example.com/shop/api:latest {d}\n",
            d = digest(1)
        )
    );
    // The bare envelope, as `kiln provenance` prints it.
    let envelope = dir.write("envelope.json", &event["data"]["provenance"].to_string());
    assert_eq!(kiln(&envelope).status.code(), Some(0));

    let mut resigned = event.clone();
    let mut envelope: Envelope =
        serde_json::from_value(resigned["data"]["provenance"].take()).unwrap();
    let mut sig = base64::engine::general_purpose::STANDARD
        .decode(&envelope.signatures[0].sig)
        .unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 0x01;
    envelope.signatures[0].sig = base64::engine::general_purpose::STANDARD.encode(sig);
    resigned["data"]["provenance"] = serde_json::to_value(envelope).unwrap();
    for (name, bad) in [("payload", payload_changed(event)), ("signature", resigned)] {
        let file = dir.write("bad.json", &bad.to_string());
        let out = kiln(&file);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(
            text(&out).contains("no signature verifies"),
            "{name}: {}",
            text(&out)
        );
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out));
    }
}

#[test]
fn keyid_is_the_sha256_of_the_der_spki_as_openssl_writes_it() {
    // PKCS#8 from genpkey, and SEC1 with its EC PARAMETERS block from ecparam.
    let pkcs8 = openssl_text(GENERATE_P256, "");
    let sec1 = openssl_text(&["ecparam", "-name", "prime256v1", "-genkey"], "");
    assert!(sec1.contains("BEGIN EC PARAMETERS"), "{sec1}");
    for pem in [pkcs8, sec1] {
        let key = SigningKey::from_pem(&pem).unwrap();
        let der = openssl(&["pkey", "-pubout", "-outform", "DER"], &pem);
        let expected = format!("sha256:{:x}", Sha256::digest(&der));
        assert_eq!(key.keyid(), expected);
        // Our public PEM and openssl's read back to the same key id.
        let ours = VerifyingKey::from_pem(&key.verifying_key().to_pem()).unwrap();
        assert_eq!(ours.keyid(), expected);
        let theirs = openssl_text(&["pkey", "-pubout"], &pem);
        assert_eq!(VerifyingKey::from_pem(&theirs).unwrap().keyid(), expected);
    }
}

#[test]
fn keys_of_another_kind_are_refused_with_the_reason() {
    let rsa = openssl_text(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ],
        "",
    );
    let err = SigningKey::from_pem(&rsa).unwrap_err();
    assert!(
        err.to_string()
            .contains("`PRIVATE KEY` PEM block is not an ECDSA P-256 key"),
        "{err}"
    );
    let p384 = openssl_text(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
        "",
    );
    assert!(SigningKey::from_pem(&p384).is_err());
}

/// Every pod created in the build namespace from now on, as the API served
/// it to a watch.
async fn record_pods(env: &Env) -> Arc<Mutex<Vec<Pod>>> {
    let api: Api<Pod> = Api::namespaced(env.kube.client(), NAMESPACE);
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let pods = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&pods);
    tokio::spawn(async move {
        while let Some(Ok(ev)) = stream.next().await {
            if let WatchEvent::Added(pod) = ev {
                sink.lock().unwrap().push(pod);
            }
        }
    });
    pods
}

/// `kiln` with the connection settings of `env`.
fn kiln(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(kiln_bin())
        .args(args)
        .env("KILN_AMQP_URL", amqp_url())
        .env("KILN_AMQP_PREFIX", &env.prefix)
        .env("KILN_REDIS_URL", redis_url())
        .env("KILN_REDIS_PREFIX", &env.redis_prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        let mut input = input;
        input.write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_worker_attests_every_image_and_never_hands_the_key_to_a_pod() {
    let mut env = Env::new().await;
    // The first attempt of every `api` fails and is retried: the statement
    // is the second attempt's.
    env.kube.kubelet().set_script(|pod| {
        let (image, attempt) = pod_labels(pod);
        if image == "api" && attempt == 1 {
            Fate::fail(1, "error pushing image: 503 Service Unavailable")
        } else {
            Fate::succeed()
        }
    });
    let pods = record_pods(&env).await;
    env.start_worker();
    let two = unique("signed");
    env.publish(&two_images(&two)).await;
    let mut events = env.events_of(&two, WAIT).await;
    let one = unique("signed");
    env.publish(&one_image(&one)).await;
    events.extend(env.events_of(&one, WAIT).await);

    let succeeded: Vec<&kiln_protocol::BuildEvent> = events
        .iter()
        .filter(|e| e.event_type == "dev.kiln.image.succeeded.v1")
        .collect();
    assert_eq!(succeeded.len(), 3, "{events:#?}");
    let api = succeeded
        .iter()
        .find(|e| e.data.build_id == two && e.data.image.as_deref() == Some("api"))
        .unwrap();
    assert_eq!(api.data.attempt, Some(2));
    let key =
        VerifyingKey::from_pem(&std::fs::read_to_string(test_public_key_path()).unwrap()).unwrap();
    let envelope = api.data.provenance.clone().unwrap();
    let statement = kiln_protocol::provenance::verify_envelope(&key, &envelope).unwrap();
    let p = &statement.predicate;
    assert_eq!(p.run_details.builder.id, "urn:kiln:test");
    assert_eq!(
        p.run_details.metadata.invocation_id,
        Some(format!("{two}/api/2"))
    );
    assert!(p.run_details.metadata.started_on.is_some());
    let deps = &p.build_definition.resolved_dependencies;
    assert_eq!(
        deps[0].digest_of("gitCommit"),
        Some("9fceb02d0ae598e95dc970b74767f19372d61af8")
    );
    // The executor by the digest the (fake) kubelet reported it ran.
    let executor = deps
        .iter()
        .find(|d| d.uri.as_deref() == Some("oci://kaniko"))
        .unwrap();
    assert_eq!(
        executor.digest_of("sha256").map(str::len),
        Some(64),
        "{deps:?}"
    );

    // The independent verifier agrees on everything the events carry.
    let dir = TempDir::new();
    let lines: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let file = dir.write("events.jsonl", &jsonl(&lines));
    let public = test_public_key_path();
    let out = verify_py(&["--key", public.to_str().unwrap()], &file);
    assert!(out.status.success(), "{}", text(&out));

    // The record keeps the envelope: `kiln provenance` prints it, and
    // `kiln verify` accepts it from a pipe.
    let out = kiln(&env, &["provenance", &two, "api"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed: Envelope = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, envelope);
    let out = kiln(
        &env,
        &["verify", "--key", public.to_str().unwrap(), "-"],
        Some(&out.stdout),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("registry.example.com/shop/cart-api:1.2.3 sha256:"),
        "{}",
        text(&out)
    );

    // No pod refers to the key: not its path, its file name or its bytes.
    let pem = std::fs::read_to_string(test_key_path()).unwrap();
    let body_line = pem.lines().nth(1).unwrap().to_owned();
    let pods = pods.lock().unwrap().clone();
    assert_eq!(pods.len(), 5, "three images, two retried");
    for pod in &pods {
        let spec = serde_json::to_string(pod).unwrap();
        for needle in [
            test_key_path().to_str().unwrap(),
            "test-key",
            body_line.as_str(),
            "PRIVATE KEY",
            "PROVENANCE",
        ] {
            assert!(
                !spec
                    .to_ascii_uppercase()
                    .contains(&needle.to_ascii_uppercase()),
                "pod {:?} refers to the key ({needle})",
                pod.metadata.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_nothing_is_signed() {
    let mut env = Env::new().await;
    env.start_worker_with(|c| c.provenance_key = None);
    let id = unique("unsigned");
    env.publish(&one_image(&id)).await;
    let events = env.expect_sequence(&id, ONE_IMAGE_SUCCEEDS, WAIT).await;
    assert!(events.iter().all(|e| e.data.provenance.is_none()));
    let dir = TempDir::new();
    let lines: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let raw = jsonl(&lines);
    assert!(!raw.contains("provenance"), "{raw}");
    let file = dir.write("events.jsonl", &raw);
    let out = verify_py(&["--expect-none"], &file);
    assert!(out.status.success(), "{}", text(&out));
    let out = kiln(&env, &["provenance", &id], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no signed provenance"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_one_stops_the_worker_at_start() {
    let env = Env::new().await;
    let dir = TempDir::new();
    let public = test_public_key_path();
    for (path, why) in [
        (dir.0.join("missing.pem"), "cannot read"),
        (public.clone(), "no PEM key block found"),
    ] {
        let mut config = env.config();
        config.provenance_key = Some(path.clone());
        let err = kiln_worker::worker::connect(&config, Some(env.kube.client()))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--provenance-key (KILN_PROVENANCE_KEY)") && err.contains(why),
            "{err}"
        );
    }
}
