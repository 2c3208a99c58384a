//! Capping one attempt's whole log before it is kept: the first
//! [`HEAD_BYTES`] and the last [`TAIL_BYTES`] of what the container wrote,
//! with one line in between saying how much was left out. The beginning
//! says what was built (the Dockerfile's first steps, the base image), the
//! end why it failed; a runaway `RUN` step in the middle is what a cap
//! should cost. Pure: the pod module feeds the bytes as they arrive, so
//! memory stays bounded however long the log is.

use std::collections::VecDeque;
use std::fmt::Write as _;

/// The cap on one kept log: 1 MiB of text, uncompressed (Redis stores it
/// as written, so `MEMORY USAGE` and the cap agree).
pub const LOG_MAX_BYTES: usize = 1 << 20;
/// Kept from the beginning of a log over the cap.
pub const HEAD_BYTES: usize = LOG_MAX_BYTES / 4;
/// Kept from the end of a log over the cap.
pub const TAIL_BYTES: usize = LOG_MAX_BYTES - HEAD_BYTES;

/// A log being read, capped as it goes.
#[derive(Debug, Clone)]
pub struct LogCap {
    head_max: usize,
    tail_max: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Default for LogCap {
    fn default() -> Self {
        Self::new(HEAD_BYTES, TAIL_BYTES)
    }
}

/// A capped log: its text (lossy UTF-8, the note about the cut included)
/// and the byte counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    pub text: String,
    /// Bytes the container wrote.
    pub bytes: u64,
    /// Bytes left out.
    pub cut: u64,
}

impl LogCap {
    pub fn new(head_max: usize, tail_max: usize) -> Self {
        Self {
            head_max,
            tail_max,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    /// The next bytes of the log.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_max.saturating_sub(self.head.len());
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        if bytes.len() >= self.tail_max {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_max..]);
            return;
        }
        let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_max);
        self.tail.drain(..over);
        self.tail.extend(bytes);
    }

    /// The log as kept.
    pub fn finish(self) -> Capped {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let cut = self.total - kept;
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if cut > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = writeln!(
                text,
                "[kiln: {cut} bytes of this log left out here: a kept log holds its first {} KiB and its last {} KiB]",
                self.head_max / 1024,
                self.tail_max / 1024
            );
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = a.to_vec();
        tail.extend_from_slice(b);
        text.push_str(&String::from_utf8_lossy(&tail));
        Capped {
            text,
            bytes: self.total,
            cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(cap: &mut LogCap, chunks: &[&str]) -> Capped {
        for c in chunks {
            cap.push(c.as_bytes());
        }
        cap.clone().finish()
    }

    #[test]
    fn a_log_under_the_cap_is_kept_whole() {
        let c = capped(&mut LogCap::new(4, 6), &["ab", "cdef", "ghij"]);
        assert_eq!(c.text, "abcdefghij");
        assert_eq!((c.bytes, c.cut), (10, 0));
    }

    #[test]
    fn a_log_over_the_cap_keeps_its_head_and_tail_and_says_how_much_was_cut() {
        let c = capped(
            &mut LogCap::new(4, 6),
            &["abcd\n", "xxxxxxxxxx", "12345", "\nend\n"],
        );
        assert_eq!(c.bytes, 25);
        assert_eq!(c.cut, 15);
        assert_eq!(
            c.text,
            "abcd\n[kiln: 15 bytes of this log left out here: a kept log holds its first 0 KiB and its last 0 KiB]\n5\nend\n"
        );
    }

    #[test]
    fn a_chunk_longer_than_the_tail_keeps_its_end() {
        let c = capped(&mut LogCap::new(0, 3), &["abcdefgh"]);
        assert_eq!(c.text.lines().last(), Some("fgh"));
        assert_eq!(c.cut, 5);
    }

    #[test]
    fn the_default_cap_is_one_mebibyte() {
        let mut cap = LogCap::default();
        let mib = vec![b'a'; LOG_MAX_BYTES];
        for _ in 0..3 {
            cap.push(&mib);
        }
        let c = cap.finish();
        assert_eq!(c.cut, 2 * LOG_MAX_BYTES as u64);
        assert!(c.text.len() < LOG_MAX_BYTES + 200, "{}", c.text.len());
    }
}
