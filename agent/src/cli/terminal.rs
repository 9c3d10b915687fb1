//! Text a skill controls, made safe for an approver's terminal.
//!
//! Statements, request lines, bodies, paths and command lines come from skills. Printed raw,
//! an escape sequence in a SQL comment can retitle, clear or rewrite the approver's terminal,
//! a newline can fake another line of output, and a bidi override can make text read in an
//! order other than the one that runs. Every text output of the CLI that shows such text goes
//! through [`escape`]; JSON output does not need it (JSON escapes control characters, and its
//! readers are programs).

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character a terminal could act on written as an escape: C0 controls
/// (`\n`, `\r`, `\t`, `\x1b`, ...), DEL, C1 controls, bidi embeddings, overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069), the other invisible format characters that can reorder or
/// hide text (U+061C, U+200B–U+200F, U+2028/U+2029, U+2060–U+2065, U+206A–U+206F, U+FEFF), and
/// the backslash itself, so that an escape a skill wrote reads differently from one added here.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\\' | '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn what_a_terminal_acts_on_is_escaped() {
        for (raw, shown) in [
            ("SELECT 1", "SELECT 1"),
            ("é ünïcode ✓", "é ünïcode ✓"),
            ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
            ("\x1b[2J", "\\x1b[2J"),
            ("a\nb\r\tc", "a\\nb\\r\\tc"),
            ("nul\0del\x7f", "nul\\x00del\\x7f"),
            ("c1 \u{9b}2J", "c1 \\u{009b}2J"),
            ("\u{202e}gnp.exe", "\\u{202e}gnp.exe"),
            ("\u{2066}x\u{2069}", "\\u{2066}x\\u{2069}"),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("C:\\x1b", "C:\\\\x1b"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }
}
