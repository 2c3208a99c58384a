//! ECDSA P-256 keys from PEM, and the DSSE signature over them.
//!
//! RustCrypto's `p256` rather than `ring` (which is in the tree for TLS):
//! `ring` signs ECDSA with a random nonce, so a re-published event would
//! carry a different envelope for the same statement, and it reads PKCS#8
//! keys only. `p256` signs deterministically (RFC 6979: the nonce is derived
//! from the key and the message), reads PKCS#8 and SEC1 (`EC PRIVATE KEY`,
//! what `openssl ecparam -genkey` writes) PEM, and is the maintained
//! RustCrypto line (0.14).
//!
//! Signatures are ASN.1 DER, as securesystemslib's `ecdsa-sha2-nistp256`
//! scheme (pyca/cryptography underneath), cosign and Go's
//! `ecdsa.VerifyASN1` expect.

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding};

use super::dsse::{Envelope, EnvelopeSignature, decode_base64, encode_base64, pae};
use crate::names::sha256_hex;

/// Why a PEM text is not a usable key; the message names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no PEM key block found: expected `-----BEGIN PRIVATE KEY-----` (PKCS#8) or \
         `-----BEGIN EC PRIVATE KEY-----` (SEC1) holding an ECDSA P-256 key{public}"
    )]
    NoKey { public: &'static str },
    #[error("the `{label}` PEM block is not an ECDSA P-256 key: {reason}")]
    Decode { label: String, reason: String },
}

/// The worker's signing key. Debug shows the key id only.
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
    public: VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.public.keyid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the first private key block of `pem`: PKCS#8 `PRIVATE KEY` or
    /// SEC1 `EC PRIVATE KEY` (an `EC PARAMETERS` block before it is skipped).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, block) = pem_blocks(pem)
            .find(|(label, _)| matches!(*label, "PRIVATE KEY" | "EC PRIVATE KEY"))
            .ok_or(KeyError::NoKey { public: "" })?;
        let inner = if label == "PRIVATE KEY" {
            p256::ecdsa::SigningKey::from_pkcs8_pem(block).map_err(|e| decode(label, &e))?
        } else {
            p256::SecretKey::from_sec1_pem(block)
                .map(p256::ecdsa::SigningKey::from)
                .map_err(|e| decode(label, &e))?
        };
        let public = VerifyingKey::new(*inner.verifying_key());
        Ok(Self { inner, public })
    }

    /// `sha256:` + hex SHA-256 of the public key's DER SubjectPublicKeyInfo.
    pub fn keyid(&self) -> &str {
        &self.public.keyid
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// A DSSE envelope of `payload`, signed once with this key. The same
    /// input gives the same envelope (RFC 6979 nonces).
    pub fn sign(&self, payload_type: &str, payload: &[u8]) -> Envelope {
        let signature: p256::ecdsa::Signature = self.inner.sign(&pae(payload_type, payload));
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: encode_base64(payload),
            signatures: vec![EnvelopeSignature {
                keyid: self.public.keyid.clone(),
                sig: encode_base64(signature.to_der().as_bytes()),
            }],
        }
    }
}

/// A public key that envelopes are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: p256::ecdsa::VerifyingKey,
    keyid: String,
}

impl VerifyingKey {
    fn new(inner: p256::ecdsa::VerifyingKey) -> Self {
        // Encoding a valid curve point as SPKI cannot fail.
        let der = inner
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let keyid = format!("sha256:{}", sha256_hex(&der));
        Self { inner, keyid }
    }

    /// Reads a `PUBLIC KEY` (SubjectPublicKeyInfo) block, or the public half
    /// of a private key block, from `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if let Some((label, block)) = pem_blocks(pem).find(|(label, _)| *label == "PUBLIC KEY") {
            return p256::ecdsa::VerifyingKey::from_public_key_pem(block)
                .map(Self::new)
                .map_err(|e| decode(label, &e));
        }
        match SigningKey::from_pem(pem) {
            Ok(key) => Ok(key.public),
            Err(KeyError::NoKey { .. }) => Err(KeyError::NoKey {
                public: ", or `-----BEGIN PUBLIC KEY-----`",
            }),
            Err(e) => Err(e),
        }
    }

    /// `sha256:` + hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The key as a `PUBLIC KEY` PEM block, what `kiln verify --key` reads.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Whether any signature of `envelope` made with this key covers its
    /// payload and type. Signatures under another key id are skipped (DSSE:
    /// the id is a hint); one without an id is tried.
    pub(crate) fn check(&self, envelope: &Envelope, payload: &[u8]) -> bool {
        let message = pae(&envelope.payload_type, payload);
        envelope
            .signatures
            .iter()
            .filter(|s| s.keyid.is_empty() || s.keyid == self.keyid)
            .filter_map(|s| decode_base64(&s.sig))
            .filter_map(|der| p256::ecdsa::Signature::from_der(&der).ok())
            .any(|sig| self.inner.verify(&message, &sig).is_ok())
    }
}

fn decode(label: &str, e: &dyn std::fmt::Display) -> KeyError {
    KeyError::Decode {
        label: label.to_owned(),
        reason: e.to_string(),
    }
}

/// The PEM blocks of `text` as (label, whole block with its BEGIN/END lines).
fn pem_blocks(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find("-----BEGIN ")?;
            let after = &rest[start + "-----BEGIN ".len()..];
            let label_end = after.find("-----")?;
            let label = &after[..label_end];
            let end_marker = format!("-----END {label}-----");
            let Some(end) = rest[start..].find(&end_marker) else {
                rest = &after[label_end..];
                continue;
            };
            let block = &rest[start..start + end + end_marker.len()];
            rest = &rest[start + end + end_marker.len()..];
            return Some((label, block));
        }
    })
}
