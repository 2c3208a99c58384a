#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::*;

/// A P-256 key made for these tests with `openssl genpkey` (PKCS#8); it signs
/// nothing outside them.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5CMlbDIx9FCLsLub
rWHk6yRwAr7jYpEGD9D+Kyg6JFehRANCAAR7C29mzKW3/NjisTLvSVO9b+9Z/nxT
4tdO1VB+25dlX7oxKvw0QQJwh9Q8I3wYF4RMra/3PwWMft3PfFnjBjWV
-----END PRIVATE KEY-----
";

/// Another, SEC1 with the EC PARAMETERS block `openssl ecparam -genkey`
/// writes before it.
const OTHER_KEY: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIM9JsSoTORKYPaKSRQiBWDN0y/IWdS2DDjZR0vSTdSEBoAoGCCqGSM49
AwEHoUQDQgAEHJSf0nDIcELf8ok/3RhBU4hw9pSKDduryEPGQYujnuFjeDdauEKD
VcajVNBvtl/geaamGWF+CgqpkLZXPWNeqg==
-----END EC PRIVATE KEY-----
";

const DIGEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn key() -> SigningKey {
    SigningKey::from_pem(TEST_KEY).unwrap()
}

fn statement() -> Statement {
    let subject = [
        "registry.example.com/shop/cart-api:1.2.3",
        "registry.example.com/shop/cart-api:latest",
    ]
    .map(|name| ResourceDescriptor {
        name: Some(name.into()),
        digest: BTreeMap::from([("sha256".into(), DIGEST.into())]),
        ..ResourceDescriptor::default()
    })
    .to_vec();
    Statement::new(
        subject,
        Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: json!({"id": "shop-cart-1.2.3-7f3a", "zeta": 1, "alpha": {"b": 2, "a": 1}}),
                internal_parameters: json!({"namespace": "kiln-builds"}),
                resolved_dependencies: vec![ResourceDescriptor {
                    uri: Some("git+https://git.example.com/shop/cart".into()),
                    digest: BTreeMap::from([(
                        "gitCommit".into(),
                        "0123456789abcdef0123456789abcdef01234567".into(),
                    )]),
                    ..ResourceDescriptor::default()
                }],
            },
            run_details: RunDetails {
                builder: Builder {
                    id: "https://kiln.dev/builders/test".into(),
                    version: BTreeMap::new(),
                    builder_dependencies: Vec::new(),
                },
                metadata: BuildMetadata {
                    invocation_id: Some("shop-cart-1.2.3-7f3a/api/2".into()),
                    started_on: Some("2026-11-25T10:00:00Z".parse().unwrap()),
                    finished_on: Some("2026-11-25T10:03:32Z".parse().unwrap()),
                },
                byproducts: Vec::new(),
            },
        },
    )
}

fn event(envelope: &Envelope, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "type": "dev.kiln.image.succeeded.v1",
        "data": {"phase": "succeeded", "digest": digest, "provenance": envelope},
    }))
    .unwrap()
}

#[test]
fn round_trip_and_deterministic() {
    let key = key();
    let envelope = sign_statement(&key, &statement());
    assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
    assert_eq!(envelope.signatures.len(), 1);
    assert_eq!(envelope.signatures[0].keyid, key.keyid());
    assert_eq!(
        verify_envelope(key.verifying_key(), &envelope).unwrap(),
        statement()
    );
    // Same attempt, same envelope: RFC 6979 nonces and sorted keys.
    assert_eq!(sign_statement(&key, &statement()), envelope);
    // The payload's keys are sorted at every depth, whatever order the
    // values were built in.
    let payload = String::from_utf8(envelope.payload_bytes().unwrap()).unwrap();
    assert!(
        payload.starts_with(r#"{"_type":"https://in-toto.io/Statement/v1","predicate":{"#),
        "{payload}"
    );
    assert!(
        payload.contains(r#"{"alpha":{"a":1,"b":2},"id":"#),
        "{payload}"
    );
    assert!(
        payload.contains(r#""startedOn":"2026-11-25T10:00:00Z""#),
        "{payload}"
    );
}

#[test]
fn one_byte_changed_in_payload_or_signature_is_rejected() {
    let key = key();
    let envelope = sign_statement(&key, &statement());
    let payload = envelope.payload_bytes().unwrap();
    let sig = STANDARD.decode(&envelope.signatures[0].sig).unwrap();
    // Every byte position of a short prefix and the last byte, of both.
    for i in (0..8).chain([payload.len() - 1]) {
        let mut changed = payload.clone();
        changed[i] ^= 0x01;
        let mut tampered = envelope.clone();
        tampered.payload = STANDARD.encode(&changed);
        assert!(
            matches!(
                verify_envelope(key.verifying_key(), &tampered),
                Err(VerifyError::Signature { .. })
            ),
            "payload byte {i}"
        );
    }
    for i in (0..sig.len()).step_by(7).chain([sig.len() - 1]) {
        let mut changed = sig.clone();
        changed[i] ^= 0x01;
        let mut tampered = envelope.clone();
        tampered.signatures[0].sig = STANDARD.encode(&changed);
        assert!(
            verify_envelope(key.verifying_key(), &tampered).is_err(),
            "signature byte {i}"
        );
    }
    // The type is signed too.
    let mut retyped = envelope.clone();
    retyped.payload_type = "application/json".into();
    assert!(matches!(
        verify_envelope(key.verifying_key(), &retyped),
        Err(VerifyError::PayloadType(_))
    ));
}

#[test]
fn another_key_does_not_verify() {
    let other = SigningKey::from_pem(OTHER_KEY).unwrap();
    let envelope = sign_statement(&key(), &statement());
    let err = verify_envelope(other.verifying_key(), &envelope).unwrap_err();
    assert!(err.to_string().contains(other.keyid()), "{err}");
    // Nor does the right signature under a blank key id from another key.
    let mut forged = sign_statement(&other, &statement());
    forged.signatures[0].keyid.clear();
    assert!(verify_envelope(key().verifying_key(), &forged).is_err());
    // The public half of a private key file verifies, as its PEM does.
    let public = VerifyingKey::from_pem(&other.verifying_key().to_pem()).unwrap();
    assert_eq!(&public, other.verifying_key());
    verify_envelope(
        &VerifyingKey::from_pem(OTHER_KEY).unwrap(),
        &sign_statement(&other, &statement()),
    )
    .unwrap();
}

#[test]
fn events_are_verified_and_their_digest_compared() {
    let key = key();
    let envelope = sign_statement(&key, &statement());
    let ok = verify_document(
        key.verifying_key(),
        &event(&envelope, &format!("sha256:{DIGEST}")),
    )
    .unwrap();
    assert_eq!(ok.subject.len(), 2);
    // A bare envelope verifies too.
    verify_document(key.verifying_key(), &serde_json::to_vec(&envelope).unwrap()).unwrap();
    // A valid envelope on an event of another digest does not.
    let other = format!("sha256:{}", "ab".repeat(32));
    let err = verify_document(key.verifying_key(), &event(&envelope, &other)).unwrap_err();
    assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");
    // An event without provenance says so.
    let bare = serde_json::to_vec(&json!({"data": {"digest": other}})).unwrap();
    let err = verify_document(key.verifying_key(), &bare).unwrap_err();
    assert!(err.to_string().contains("no `provenance`"), "{err}");
}

#[test]
fn bad_keys_are_refused_with_the_reason() {
    let err = SigningKey::from_pem("not a key").unwrap_err();
    assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");
    let err = SigningKey::from_pem(&TEST_KEY.replace("MIGHAgEA", "MIGHAgEB")).unwrap_err();
    assert!(
        err.to_string()
            .contains("`PRIVATE KEY` PEM block is not an ECDSA P-256 key"),
        "{err}"
    );
    let err = VerifyingKey::from_pem("").unwrap_err();
    assert!(err.to_string().contains("BEGIN PUBLIC KEY"), "{err}");
}
