//! Size bounds on text Kiln derives from a message.
//!
//! Everything Kiln says about a message (event `message`, the `kiln-error`
//! dead-letter header, log lines) is built from that message, so without a
//! bound one large message makes answers of any size. Cutting says how much
//! was cut, so a reader knows the text is incomplete.

use std::borrow::Cow;

/// `text` when it is at most `max` bytes; otherwise its longest prefix that
/// ends on a char boundary and leaves room for a note of how many bytes were
/// cut (`… (1234 bytes cut)`), so the result is never longer than `max`.
/// Below the length of the note itself, the text is just cut.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The note for the largest possible cut is the longest note.
    let room = note(text.len()).len();
    if room > max {
        return Cow::Owned(text[..floor_char_boundary(text, max)].to_owned());
    }
    let end = floor_char_boundary(text, max - room);
    Cow::Owned(format!("{}{}", &text[..end], note(text.len() - end)))
}

fn note(cut: usize) -> String {
    format!("… ({cut} bytes cut)")
}

/// The largest char boundary of `s` at or below `i` (`str::floor_char_boundary`
/// is newer than the crate's minimum Rust).
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_borrowed_unchanged() {
        assert!(matches!(bounded("abc", 3), Cow::Borrowed("abc")));
        assert_eq!(bounded("", 0), "");
    }

    #[test]
    fn long_text_is_cut_with_a_count() {
        let text = "x".repeat(10_000);
        let b = bounded(&text, 100);
        assert!(b.len() <= 100, "{}", b.len());
        let (head, tail) = b.split_once('…').unwrap_or_default();
        assert!(head.chars().all(|c| c == 'x'));
        assert_eq!(tail, format!(" ({} bytes cut)", 10_000 - head.len()));
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        // 'é' is two bytes, '€' three: every max must still give valid UTF-8
        // (a panic would be the failure) no longer than max.
        let text = "é€".repeat(500);
        for max in 0..80 {
            let b = bounded(&text, max);
            assert!(b.len() <= max, "max {max}: {}", b.len());
        }
        assert_eq!(bounded("€€", 4), "€");
    }
}
