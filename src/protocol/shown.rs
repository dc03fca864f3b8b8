//! Text that a client, a server or a plugin wrote, made safe to show on a
//! terminal: every character that a terminal acts on or that hides from
//! a reader is written as a visible escape, so that nothing printed can
//! clear a screen, set a window title, plant a link (OSC 8), move the
//! cursor, start a new line that looks like a record, or reorder what a
//! reader sees (bidirectional overrides, "Trojan Source").

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that a terminal acts on or that a reader cannot see: C0
/// controls (tab, line feed and carriage return among them), DEL, C1
/// controls (U+0080–U+009F: U+009B is the CSI introducer), the line and
/// paragraph separators, and [`is_invisible`] ones.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_invisible(c)
}

/// Characters that are invisible or change the direction of text:
/// zero-width ones, direction marks, embeddings, overrides and isolates,
/// tags, variation selectors, fillers.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F
            | 0x1160
            | 0x180B..=0x180F
            | 0x200B
            | 0x200C
            | 0x200E
            | 0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0D
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0xE0000..=0xE007F
            | 0xE0100..=0xE01EF
    )
}

/// `text` as a terminal may print it: each [hidden](is_hidden) character
/// as `\u{XXXX}`, and a backslash as `\\` (so that an escape shown is
/// always one the proxy wrote, never text that looks like one). Always
/// one line. Borrowed when nothing needs escaping.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || is_hidden(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_hidden(c) {
            let _ = write!(out, "\\u{{{:04X}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text (as serde_json writes it) with every [hidden](is_hidden)
/// character but the layout's line feeds escaped as JSON escapes it
/// (`\u0085`, a surrogate pair past U+FFFF): the same JSON value, safe on
/// a terminal. Backslashes are the JSON's own escapes, left as they are.
pub fn shown_json(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| is_hidden(c) && c != '\n';
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Tests: whether printed output holds nothing hidden but the line feeds
/// that end its lines.
#[cfg(test)]
pub(crate) fn nothing_hidden(output: &str) -> bool {
    !output.chars().any(|c| c != '\n' && is_hidden(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an attacker puts in a tool name, a method, a URI or a reason.
    const HOSTILE: &str = "a\u{1b}[2J\u{1b}]0;title\u{7}\u{1b}]8;;http://evil\u{1b}\\x\r\n2026 fake|\u{9b}31m\u{7f}\u{85}\u{202e}gnp.exe\u{2028}\u{e0041}\t";

    #[test]
    fn shown_text_has_no_character_a_terminal_acts_on_and_is_one_line() {
        let text = shown(HOSTILE);
        assert!(!text.chars().any(is_hidden), "{text:?}");
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert!(text.contains("\\u{001B}[2J"), "{text}");
        assert!(text.contains("\\u{009B}31m"), "{text}");
        assert!(text.contains("\\u{202E}gnp.exe"), "{text}");
        assert!(text.contains("\\u{E0041}"), "{text}");
        // The backslash the text held is doubled: `\\` then `x`.
        assert!(text.contains("\\u{001B}\\\\x"), "{text}");
        assert!(matches!(shown("plain tool_name/é"), Cow::Borrowed(_)));
        // Text that looks like an escape is not one.
        assert_eq!(shown("\\u{1B}"), "\\\\u{1B}");
    }

    #[test]
    fn shown_json_is_the_same_value_with_nothing_hidden() {
        let value = serde_json::json!({ "name": HOSTILE, "nested": ["\u{85}", "ok"] });
        for json in [
            value.to_string(),
            serde_json::to_string_pretty(&value).unwrap_or_default(),
        ] {
            let safe = shown_json(&json);
            assert!(
                !safe.chars().any(|c| is_hidden(c) && c != '\n' && c != ' '),
                "{safe:?}"
            );
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap_or_default();
            assert_eq!(back, value);
        }
        assert!(shown_json(&value.to_string()).contains("\\udb40\\udc41"));
    }
}
