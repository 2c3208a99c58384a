//! Signed SLSA provenance: the in-toto Statement v1 Kiln makes for each
//! succeeded image, the DSSE envelope it travels in (`image.succeeded`
//! `data.provenance`), signing with the worker's ECDSA P-256 key and
//! verification against its public key.
//!
//! Pure like the rest of the crate: the caller reads the key file and
//! gathers the facts; here they become bytes and back. The statement is
//! encoded with every object's keys sorted, and signatures are RFC 6979
//! deterministic, so one attempt always yields the same envelope and a
//! re-published event carries what the first one did.

mod attempt;
mod dsse;
mod key;
mod statement;

pub use attempt::{
    AttemptFacts, git_dependency, image_dependency, invocation_id, statement_about, statement_for,
    subject_of,
};
pub use dsse::{Envelope, EnvelopeSignature, PAYLOAD_TYPE, pae};
pub use key::{KeyError, SigningKey, VerifyingKey};
pub use statement::{
    BUILD_TYPE, BuildDefinition, BuildMetadata, Builder, Provenance, ResourceDescriptor,
    RunDetails, SLSA_PROVENANCE_V1, STATEMENT_TYPE, Statement,
};

use serde_json::Value;

/// Why an envelope or event did not verify; each message names the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error(
        "neither a DSSE envelope (`payloadType`, `payload`, `signatures`) nor a CloudEvent \
         with `data.provenance`{0}"
    )]
    NotAnEnvelope(String),
    #[error("`payloadType` is `{0}`, expected `{PAYLOAD_TYPE}`")]
    PayloadType(String),
    #[error("`payload` is not base64")]
    PayloadEncoding,
    #[error(
        "no signature verifies with key {keyid} ({count} signature(s) in the envelope): \
         the payload or the signature was altered, or another key signed it"
    )]
    Signature { keyid: String, count: usize },
    #[error("the signed payload is not an in-toto Statement v1 with SLSA Provenance v1: {0}")]
    Statement(String),
    #[error("subject `{name}` has digest {subject}, but the event's `data.digest` is {event}")]
    DigestMismatch {
        name: String,
        subject: String,
        event: String,
    },
}

/// The bytes Kiln signs for `statement`: compact JSON, keys sorted.
pub fn statement_payload(statement: &Statement) -> Vec<u8> {
    let value = serde_json::to_value(statement).unwrap_or(Value::Null);
    let mut text = String::new();
    crate::names::canonical_json(&value, &mut text);
    text.into_bytes()
}

/// `statement` signed with `key`, ready for `data.provenance`.
pub fn sign_statement(key: &SigningKey, statement: &Statement) -> Envelope {
    key.sign(PAYLOAD_TYPE, &statement_payload(statement))
}

/// The statement of `envelope` if a signature by `key` covers it. The
/// statement returned is decoded from the very bytes that were verified.
pub fn verify_envelope(key: &VerifyingKey, envelope: &Envelope) -> Result<Statement, VerifyError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::PayloadType(envelope.payload_type.clone()));
    }
    let payload = envelope
        .payload_bytes()
        .ok_or(VerifyError::PayloadEncoding)?;
    if !key.check(envelope, &payload) {
        return Err(VerifyError::Signature {
            keyid: key.keyid().to_owned(),
            count: envelope.signatures.len(),
        });
    }
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| VerifyError::Statement(e.to_string()))?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(VerifyError::Statement(format!(
            "`_type` is `{}`, expected `{STATEMENT_TYPE}`",
            statement.type_
        )));
    }
    if statement.predicate_type != SLSA_PROVENANCE_V1 {
        return Err(VerifyError::Statement(format!(
            "`predicateType` is `{}`, expected `{SLSA_PROVENANCE_V1}`",
            statement.predicate_type
        )));
    }
    if statement.subject.is_empty() {
        return Err(VerifyError::Statement("`subject` is empty".into()));
    }
    Ok(statement)
}

/// Verifies `json`: a DSSE envelope, or a CloudEvent whose
/// `data.provenance` is one. For an event, every subject must also carry the
/// event's `data.digest`, so a valid envelope lifted from another image's
/// event does not vouch for this one.
pub fn verify_document(key: &VerifyingKey, json: &[u8]) -> Result<Statement, VerifyError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| VerifyError::Json(e.to_string()))?;
    let (envelope, event_digest) = if value.get("payloadType").is_some() {
        (value, None)
    } else if let Some(data) = value.get("data") {
        let envelope = data.get("provenance").cloned().ok_or_else(|| {
            VerifyError::NotAnEnvelope(": this event's `data` has no `provenance`".into())
        })?;
        let digest = data
            .get("digest")
            .and_then(Value::as_str)
            .map(str::to_owned);
        (envelope, digest)
    } else {
        return Err(VerifyError::NotAnEnvelope(String::new()));
    };
    let envelope: Envelope = serde_json::from_value(envelope)
        .map_err(|e| VerifyError::NotAnEnvelope(format!(": {e}")))?;
    let statement = verify_envelope(key, &envelope)?;
    if let Some(event) = event_digest {
        for subject in &statement.subject {
            let hex = subject.digest_of("sha256").unwrap_or_default();
            if event.strip_prefix("sha256:") != Some(hex) {
                return Err(VerifyError::DigestMismatch {
                    name: subject.name.clone().unwrap_or_default(),
                    subject: format!("sha256:{hex}"),
                    event,
                });
            }
        }
    }
    Ok(statement)
}

#[cfg(test)]
mod tests;
