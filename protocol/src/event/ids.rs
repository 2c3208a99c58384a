//! The deterministic names of an event: id, type, subject and source are
//! pure functions of the build, the image, the attempt and the phase, so a
//! duplicate delivered after a fault (or published twice across a worker
//! takeover) carries the same id and a subscriber can drop it.

use super::phase::{Level, Phase};
use crate::names::sha256_hex;

/// Hex digits of the message hash in a `request.rejected` event id
/// (64 bits: ids need only tell apart the bodies sent under one build id).
pub const REQUEST_HASH_HEX: usize = 16;

/// `dev.kiln.<level>.<phase>.v1`.
pub fn event_type(level: Level, phase: Phase) -> String {
    format!("dev.kiln.{level}.{phase}.v1")
}

/// `<build>/<phase>`.
pub fn build_event_id(build_id: &str, phase: Phase) -> String {
    format!("{build_id}/{phase}")
}

/// `<build>/<image>/<attempt>/<phase>`.
pub fn image_event_id(build_id: &str, image: &str, attempt: u32, phase: Phase) -> String {
    format!("{build_id}/{image}/{attempt}/{phase}")
}

/// `<build>/<image>/<platform>/<attempt>/<phase>`: an event about the pod
/// of one platform of an image with `platforms` (`data.platform`).
pub fn platform_event_id(
    build_id: &str,
    image: &str,
    platform: &str,
    attempt: u32,
    phase: Phase,
) -> String {
    format!("{build_id}/{image}/{platform}/{attempt}/{phase}")
}

/// `<build>/request/<hash>`: the id of the `request.rejected` event that
/// answers the message `body` naming `build_id`. The hash is the first
/// [`REQUEST_HASH_HEX`] hex digits of the SHA-256 of the raw body, so the
/// publisher can compute the id of the answer to its own message (and tell
/// it from the answer to someone else's message under the same id), and a
/// redelivered message is answered under the same id.
pub fn request_rejected_id(build_id: &str, body: &[u8]) -> String {
    let hash = sha256_hex(body);
    format!("{build_id}/request/{}", &hash[..REQUEST_HASH_HEX])
}

/// Whether `id` has the shape of a `request.rejected` id for `build_id`.
pub(super) fn is_request_rejected_id(build_id: &str, id: &str) -> bool {
    id.strip_prefix(build_id)
        .and_then(|rest| rest.strip_prefix("/request/"))
        .is_some_and(|h| {
            h.len() == REQUEST_HASH_HEX && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// `<build>` or `<build>/<image>`.
pub fn subject(build_id: &str, image: Option<&str>) -> String {
    match image {
        Some(i) => format!("{build_id}/{i}"),
        None => build_id.to_owned(),
    }
}

/// `urn:kiln:<cluster>`, the event `source`.
pub fn event_source(cluster: &str) -> String {
    format!("urn:kiln:{cluster}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            event_type(Level::Image, Phase::Succeeded),
            "dev.kiln.image.succeeded.v1"
        );
        assert_eq!(build_event_id("b", Phase::Accepted), "b/accepted");
        assert_eq!(
            image_event_id("b", "api", 2, Phase::Succeeded),
            "b/api/2/succeeded"
        );
        assert_eq!(subject("b", None), "b");
        assert_eq!(subject("b", Some("api")), "b/api");
        assert_eq!(event_source("prod-eu"), "urn:kiln:prod-eu");
    }

    #[test]
    fn request_rejected_ids_hash_the_raw_body() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(
            request_rejected_id("b-1", b"abc"),
            "b-1/request/ba7816bf8f01cfea"
        );
        assert_eq!(
            request_rejected_id("b-1", b""),
            "b-1/request/e3b0c44298fc1c14"
        );
        // Another body (even the same JSON re-spaced) is another request.
        assert_ne!(
            request_rejected_id("b", br#"{"id":"b"}"#),
            request_rejected_id("b", br#"{"id": "b"}"#)
        );
        assert_eq!(
            event_type(Level::Request, Phase::Rejected),
            "dev.kiln.request.rejected.v1"
        );
    }
}
