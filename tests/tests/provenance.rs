//! Signed provenance checked by verifiers no one here wrote: Python's
//! securesystemslib (tests/provenance/verify.py) and the openssl CLI for the
//! keys, plus `kiln verify` run as a process.
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
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

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
