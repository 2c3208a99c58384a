//! What the client and the worker's logs share about the terminal they
//! write to. A module of its own so that telemetry need not import the CLI.

/// Whether colour may be written to a stream: only to a terminal, and never
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn colour_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` without the control sequences a terminal would act on: ESC
/// sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ST`, DCS/SOS/PM/APC
/// strings, two-character escapes), their 8-bit C1 forms, every other C0
/// control except `\n` and `\t` (so no `\r` overwriting a line, no BEL), DEL
/// and every C1 control. For untrusted text (pod logs, event messages, log
/// tails) on its way to a terminal: a build log could otherwise set the
/// window title, rewrite what the operator sees, or plant hyperlinks.
/// JSON and YAML output keep the raw text, escaped by the serializer.
pub fn strip_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                // A two-character escape (`ESC c`, `ESC 7`, ...): both go.
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if is_control(c) => {}
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn is_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || c == '\u{7f}'
}

/// Skips a CSI sequence's parameters and intermediates up to its final byte
/// (`@` to `~`).
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            return;
        }
        if !('\u{20}'..='\u{3f}').contains(&c) {
            // Not a CSI byte: the sequence was malformed; drop what came.
            return;
        }
    }
}

/// Skips an OSC/DCS/SOS/PM/APC string up to BEL, `ESC \` or ST (U+009C).
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_controls;

    #[test]
    fn control_sequences_are_stripped() {
        let cases = [
            ("plain text\tand tab\n", "plain text\tand tab\n"),
            ("\x1b[31mred\x1b[0m", "red"),
            ("\x1b[2J\x1b[1;1Hclear", "clear"),
            ("\x1b]0;owned title\x07after", "after"),
            (
                "\x1b]8;;https://evil.example/\x1b\\link\x1b]8;;\x1b\\",
                "link",
            ),
            ("\x1bPq#0;2;0;0;0\x1b\\dcs", "dcs"),
            ("a\rb\x08c\x07d\x00e\x7f", "abcde"),
            ("\u{9b}31mc1 csi", "c1 csi"),
            ("\u{9d}0;t\u{9c}c1 osc", "c1 osc"),
            ("x\u{85}y", "xy"),
            ("\x1bcreset", "reset"),
            ("unterminated \x1b]0;title", "unterminated "),
            ("ümlaut ✓", "ümlaut ✓"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_controls(input), want, "{input:?}");
        }
    }
}
