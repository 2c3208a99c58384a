//! `continue` tokens in the format of `k8s.io/apiserver/pkg/storage`
//! `EncodeContinue`: base64url (no padding) of
//! `{"v":"meta.k8s.io/v1","rv":<list rv>,"start":"<next key>"}`.
//! The key here is `<namespace>/<name>\u0000` (the real one is relative to the
//! list's etcd prefix); clients treat the token as opaque either way.

use serde_json::{Value, json};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A decoded `continue` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The resourceVersion of the first page: every page is served from the
    /// state at this revision, as etcd does.
    pub rv: u64,
    /// First key (namespace, name) of the next page, inclusive.
    pub start: (String, String),
}

impl Continue {
    pub fn encode(&self) -> String {
        let start = format!("{}/{}", self.start.0, self.start.1);
        b64_encode(
            json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": start})
                .to_string()
                .as_bytes(),
        )
    }

    /// Errors carry the message of the real 400 (`continue key is not valid`).
    pub fn decode(token: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("continue key is not valid: {why}");
        let bytes = b64_decode(token).ok_or_else(|| bad("illegal base64 data"))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
        if v["v"] != "meta.k8s.io/v1" {
            return Err(bad("server does not recognize this encoded version"));
        }
        let rv = v["rv"].as_u64().ok_or_else(|| {
            bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        })?;
        let start = v["start"]
            .as_str()
            .ok_or_else(|| bad("encoded start key empty"))?;
        let (ns, name) = start
            .split_once('/')
            .ok_or_else(|| bad("path traversal attempt detected"))?;
        Ok(Self {
            rv,
            start: (ns.to_owned(), name.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["", "a", "ab", "abc", "abcd"] {
            assert_eq!(b64_decode(&b64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        let c = Continue {
            rv: 42,
            start: ("ns".into(), "pod-1\u{0}".into()),
        };
        assert_eq!(Continue::decode(&c.encode()).unwrap(), c);
        assert!(Continue::decode("!!").is_err());
    }
}
