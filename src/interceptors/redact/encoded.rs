//! Secrets in encoded form: percent-escapes and base64 runs inside text,
//! and the base64 fields the MCP schema defines (`ImageContent.data`,
//! `AudioContent.data`, `BlobResourceContents.blob`). Each is decoded once
//! and the decoded bytes are scanned like any text.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The shortest base64 run that is decoded: 18 bytes, room for the
/// shortest credential a rule finds with its context (`password=…`).
pub(super) const MIN_BASE64_RUN: usize = 24;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

// Byte classes for the run finder.
const ALNUM: u8 = 1;
const STD_ONLY: u8 = 2; // `+` `/`
const URL_ONLY: u8 = 4; // `-` `_`
const NOT_HEX: u8 = 8; // a letter past `f`/`F`

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => ALNUM,
            b'g'..=b'z' | b'G'..=b'Z' => ALNUM | NOT_HEX,
            b'+' | b'/' => STD_ONLY,
            b'-' | b'_' => URL_ONLY,
            _ => 0,
        };
        b += 1;
    }
    table
}

static CLASS: [u8; 256] = classes();

/// Whether all eight bytes are base64 characters (either alphabet).
#[inline(always)]
fn block_in_class(block: &[u8]) -> bool {
    block
        .iter()
        .fold(1u8, |all, &b| all & (CLASS[usize::from(b)] != 0) as u8)
        == 1
}

/// A run of base64 characters worth decoding: `start..end` (without any
/// `=` padding) and its decoded bytes.
pub(super) struct Run {
    pub start: usize,
    pub end: usize,
    pub decoded: Vec<u8>,
}

/// Calls `each` with every decodable base64 run of at least
/// [`MIN_BASE64_RUN`] characters in `text`. Runs of hex digits and dashes
/// (hashes, git SHAs, UUIDs) are not base64 of text and are skipped.
pub(super) fn base64_runs(text: &[u8], mut each: impl FnMut(Run)) {
    // A run of 24 characters or more holds two whole aligned 8-byte blocks,
    // one of them at an even block index: only even blocks are tested, and
    // the run is measured around the ones that pass.
    let mut at = 0;
    let mut scanned_to = 0;
    while at + 8 <= text.len() {
        if at < scanned_to || !block_in_class(&text[at..at + 8]) {
            at += 16;
            continue;
        }
        let mut start = at;
        while start > scanned_to && CLASS[usize::from(text[start - 1])] != 0 {
            start -= 1;
        }
        let mut end = at + 8;
        while end < text.len() && CLASS[usize::from(text[end])] != 0 {
            end += 1;
        }
        scanned_to = end;
        at += 16;
        if end - start < MIN_BASE64_RUN {
            continue;
        }
        let run = &text[start..end];
        let seen = run
            .iter()
            .fold(0u8, |seen, &b| seen | CLASS[usize::from(b)]);
        if seen & NOT_HEX == 0 {
            continue;
        }
        let engine = match (seen & STD_ONLY != 0, seen & URL_ONLY != 0) {
            (true, true) => continue,
            (false, true) => &URL_SAFE,
            _ => &STANDARD,
        };
        // A run whose length leaves one character over is cut by one: the
        // encoding may start one character in (`x` + base64).
        let decoded = engine.decode(run).or_else(|_| {
            if run.len() % 4 == 1 {
                engine.decode(&run[1..])
            } else {
                Err(base64::DecodeError::InvalidLength(run.len()))
            }
        });
        if let Ok(decoded) = decoded {
            each(Run {
                start,
                end,
                decoded,
            });
        }
    }
}

/// `text` with its percent-escapes decoded, and for each decoded byte the
/// offset in `text` it came from (one more entry: `text.len()`), if it has
/// any escape.
pub(super) fn percent_decoded(text: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let first = memchr::memchr(b'%', text)?;
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut decoded = Vec::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len() + 1);
    decoded.extend_from_slice(&text[..first]);
    origin.extend(0..first);
    let mut escapes = 0;
    let mut at = first;
    while at < text.len() {
        if text[at] == b'%'
            && at + 2 < text.len()
            && let (Some(high), Some(low)) = (hex(text[at + 1]), hex(text[at + 2]))
        {
            decoded.push(high << 4 | low);
            origin.push(at);
            at += 3;
            escapes += 1;
            continue;
        }
        decoded.push(text[at]);
        origin.push(at);
        at += 1;
    }
    origin.push(text.len());
    (escapes > 0).then_some((decoded, origin))
}

/// The bytes of a schema base64 field, or `None` when they do not decode.
/// ASCII whitespace (MIME line breaks) is allowed; padding is optional.
pub(super) fn decode_field(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        return STANDARD.decode(compact).ok();
    }
    STANDARD.decode(bytes).ok()
}

/// Encodes bytes for a schema base64 field (standard, padded).
pub(super) fn encode_field(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(text: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        base64_runs(text.as_bytes(), |run| {
            out.push((text[run.start..run.end].to_owned(), run.decoded))
        });
        out
    }

    #[test]
    fn finds_base64_runs_of_text_and_skips_hashes() {
        let encoded = encode_field(b"token=hunter2-but-longer-than-that");
        let text = format!("config: {encoded} and more");
        let found = runs(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, b"token=hunter2-but-longer-than-that");
        // Hex and UUIDs are left alone; short runs too.
        assert!(runs("sha 0123456789abcdef0123456789abcdef01234567 done").is_empty());
        assert!(runs("id 550e8400-e29b-41d4-a716-446655440000 done").is_empty());
        assert!(runs("aGVsbG8= short").is_empty());
        // URL-safe alphabet, no padding.
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb_u8; 30]);
        assert_eq!(runs(&format!("x {url} y"))[0].1, [0xfb_u8; 30]);
        // At the very start and end of the text, and of odd alignment.
        for pad in 0..9 {
            let text = format!("{}{encoded}", " ".repeat(pad));
            assert_eq!(runs(&text).len(), 1, "pad {pad}");
        }
    }

    #[test]
    fn percent_decoding_maps_back_to_the_text() {
        let text = b"a%5Fb%zz%41";
        let (decoded, origin) = percent_decoded(text).unwrap_or_default();
        assert_eq!(decoded, b"a_b%zzA");
        assert_eq!(origin, [0, 1, 4, 5, 6, 7, 8, 11]);
        assert!(percent_decoded(b"no escapes").is_none());
        assert!(percent_decoded(b"100% sure").is_none());
    }

    #[test]
    fn fields_decode_with_line_breaks_and_refuse_garbage() {
        assert_eq!(decode_field("aGVs\nbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_field("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert!(decode_field("not base64!").is_none());
    }
}
