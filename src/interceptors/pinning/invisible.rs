//! Characters a reader cannot see (zero-width, direction marks, tags,
//! variation selectors), and text with them made visible: what diffs and
//! reviews show of a definition.

/// Characters that are invisible or change the direction of text.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F
            | 0x1160
            | 0x180E
            | 0x200B
            | 0x200C
            | 0x200E
            | 0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x2069
            | 0x3164
            | 0xFE00..=0xFE0D
            | 0xFEFF
            | 0xFFA0
            | 0xE0000..=0xE007F
            | 0xE0100..=0xE01EF
    )
}

/// `text` with every invisible character written as its escape
/// (`\u{200B}`), so that nothing in it hides from a reviewer.
pub fn escaped(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if is_invisible(c) {
            shown.push_str(&format!("\\u{{{:04X}}}", c as u32));
        } else {
            shown.push(c);
        }
    }
    shown
}
