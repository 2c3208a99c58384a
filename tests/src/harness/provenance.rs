//! Signed provenance in every scenario: the test workers sign with a key
//! made for the tests (`tests/provenance/test-key.pem`), and every
//! `image.succeeded` an [`super::Env`] receives is checked here: its
//! envelope verifies against the public key and vouches for the event's
//! digest, and it is there at all when every in-process worker of the test
//! signs. With `KILN_PROVENANCE_EVENTS` naming a file, each such event is
//! also appended to it as a JSON line, for the independent Python verifier
//! (`tests/provenance/verify.py`, run by .ci/run after the suite).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_protocol::provenance::{VerifyingKey, verify_document};
use kiln_protocol::{BuildEvent, Level, Phase};

/// The private key the test workers sign with (made for the tests, signs
/// nothing else).
pub fn test_key_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/provenance/test-key.pem"
    ))
}

/// Its public half, as `openssl pkey -pubout` wrote it.
pub fn test_public_key_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/provenance/test-key.pub.pem"
    ))
}

/// The key the test workers' envelopes verify with.
pub fn public_key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = std::fs::read_to_string(test_public_key_path()).expect("test public key");
        VerifyingKey::from_pem(&pem).expect("test public key parses")
    })
}

/// Checks one received event (`body` as it came off the queue); `signing`
/// says whether every in-process worker of the test has the key.
pub(super) fn check(ev: &BuildEvent, body: &[u8], signing: Option<bool>) {
    if (ev.level(), ev.data.phase) != (Level::Image, Phase::Succeeded) {
        assert!(
            ev.data.provenance.is_none(),
            "{}: provenance on an event other than image.succeeded",
            ev.id
        );
        return;
    }
    if ev.data.provenance.is_none() {
        assert_ne!(
            signing,
            Some(true),
            "{}: image.succeeded without provenance, though every worker signs",
            ev.id
        );
        return;
    }
    if let Err(e) = verify_document(public_key(), body) {
        panic!("{}: provenance does not verify: {e}", ev.id);
    }
    if let Some(path) = std::env::var_os("KILN_PROVENANCE_EVENTS") {
        let mut line = body.to_vec();
        line.push(b'\n');
        // One write of the whole line to a file opened for appending: the
        // parallel test processes' lines do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            panic!("cannot append to KILN_PROVENANCE_EVENTS: {e}");
        }
    }
}
