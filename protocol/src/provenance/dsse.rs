//! The DSSE envelope (Dead Simple Signing Envelope, the envelope in-toto
//! attestations travel in) and its pre-authentication encoding.
//!
//! Written here rather than taken from a crate: the one DSSE crate on
//! crates.io (`dsse` 0.1) is months old, has one maintainer and signs with
//! Ed25519 only, while the envelope is three fields and the encoding one
//! function, both fixed by the DSSE protocol and checked below against
//! securesystemslib's verifier (tests/provenance/verify.py).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A DSSE envelope as JSON: `payload` and each `sig` are standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// `application/vnd.in-toto+json`.
    pub payload_type: String,
    /// Base64 of the in-toto Statement v1.
    #[schemars(length(min = 1))]
    pub payload: String,
    #[schemars(length(min = 1))]
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvelopeSignature {
    /// `sha256:` + hex SHA-256 of the signer's DER SubjectPublicKeyInfo. DSSE
    /// makes it an unauthenticated hint; verifiers match keys by it.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the ASN.1 DER ECDSA P-256 SHA-256 signature over the DSSE
    /// pre-authentication encoding of the payload type and payload.
    pub sig: String,
}

impl Envelope {
    /// The payload's bytes. DSSE asks verifiers to accept both base64
    /// alphabets; Kiln writes the standard one.
    pub fn payload_bytes(&self) -> Option<Vec<u8>> {
        decode_base64(&self.payload)
    }
}

/// The DSSE v1 pre-authentication encoding, what a signature covers:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, LEN the decimal
/// byte length. Binding the type stops a signature made for one payload type
/// from verifying as another.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    );
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_protocol_example() {
        // The worked example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        // LEN counts bytes, not characters.
        assert_eq!(pae("é", b""), "DSSEv1 2 é 0 ".as_bytes().to_vec());
    }
}
