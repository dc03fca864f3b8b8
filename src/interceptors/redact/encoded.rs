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
const UPPER: u8 = 16;
const LOWER: u8 = 32;

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'0'..=b'9' => ALNUM,
            b'a'..=b'f' => ALNUM | LOWER,
            b'A'..=b'F' => ALNUM | UPPER,
            b'g'..=b'z' => ALNUM | NOT_HEX | LOWER,
            b'G'..=b'Z' => ALNUM | NOT_HEX | UPPER,
            b'+' | b'/' => STD_ONLY,
            b'-' | b'_' => URL_ONLY,
            _ => 0,
        };
        b += 1;
    }
    table
}

static CLASS: [u8; 256] = classes();

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = ONES * 0x80;
const LOW7: u64 = ONES * 0x7F;

/// The high bit of each byte of `x` strictly between `low` and `high`
/// (both at most 0x80), eight bytes at once.
#[inline(always)]
fn between(x: u64, low: u64, high: u64) -> u64 {
    (ONES * (127 + high)).wrapping_sub(x & LOW7)
        & !x
        & (x & LOW7).wrapping_add(ONES * (127 - low))
        & HIGHS
}

/// The high bit of each byte of `x` equal to `byte`.
#[inline(always)]
fn equal(x: u64, byte: u64) -> u64 {
    let other = x ^ (ONES * byte);
    !((other & LOW7).wrapping_add(LOW7) | other) & HIGHS
}

/// Whether all eight bytes are base64 characters (either alphabet),
/// without a look-up or a branch per byte.
#[inline(always)]
fn in_class(x: u64) -> bool {
    let alnum = between(x, 0x2F, 0x3A) | between(x, 0x40, 0x5B) | between(x, 0x60, 0x7B);
    let marks = equal(x, b'+'.into())
        | equal(x, b'-'.into())
        | equal(x, b'/'.into())
        | equal(x, b'_'.into());
    (alnum | marks) == HIGHS
}

/// Whether a word of text holds a byte outside `+`…`z` (a space, a line
/// break, a quote, a bracket, anything not ASCII): no base64 there. A
/// cheap test that most blocks of prose and code fail.
#[inline(always)]
fn outside_base64_span(word: u64) -> bool {
    let below = word.wrapping_sub(ONES * 0x2B) & !word & HIGHS;
    let above = (word.wrapping_add(ONES * (127 - 0x7A)) | word) & HIGHS;
    (below | above) != 0
}

/// Whether all eight bytes are hex digits or dashes (a hash, a SHA, a
/// UUID). Only for words with every byte within `+`…`z`
/// ([`outside_base64_span`] is false): folding the case then makes
/// nothing else a hex digit or a dash.
#[inline(always)]
fn all_hex(x: u64) -> bool {
    let folded = x | (ONES * 0x20);
    (between(folded, 0x2F, 0x3A) | between(folded, 0x60, 0x67) | equal(folded, b'-'.into()))
        == HIGHS
}

/// A run of base64 characters worth decoding: `start..end` (without any
/// `=` padding) and its decoded bytes.
pub(super) struct Run<'a> {
    pub start: usize,
    pub end: usize,
    pub decoded: &'a [u8],
}

/// Calls `each` with every decodable base64 run of at least
/// [`MIN_BASE64_RUN`] characters in `text`. Runs of hex digits and dashes
/// (hashes, git SHAs, UUIDs) and runs in one letter case (identifiers,
/// `snake_case`, `SHOUTING_CASE`) are not base64 of text and are skipped:
/// base64 of 18 bytes or more of text holds both cases.
pub(super) fn base64_runs(text: &[u8], mut each: impl FnMut(Run<'_>) -> bool) {
    let mut decoded = Vec::new();
    // A run of 24 characters or more holds two whole aligned 8-byte blocks,
    // one of them at an even block index: only even blocks are tested, and
    // the run is measured around the ones that pass.
    // 0: not all base64; 1: base64; 2: base64, all hex digits and dashes.
    // Cheapest test first: most blocks of prose and code hold a space, a
    // line break, a quote or a bracket.
    let block_at = |at: usize| -> u8 {
        let word = match text.get(at..at + 8).map(<[u8; 8]>::try_from) {
            Some(Ok(block)) => u64::from_le_bytes(block),
            _ => return 0,
        };
        if outside_base64_span(word) {
            0
        } else if all_hex(word) {
            2
        } else {
            u8::from(in_class(word))
        }
    };
    let mut at = 0;
    let mut scanned_to = 0;
    // The block before `at`, when the last round looked at it.
    let mut before: Option<u8> = None;
    while at + 8 <= text.len() {
        let left = before.take();
        if at < scanned_to {
            at += 16;
            continue;
        }
        // The run's two whole blocks are this one and a neighbour: a block
        // alone in its run belongs to one shorter than 24. Where they are
        // all hex, the run is looked at from another even block, if it has
        // one that is not (base64 of text has one).
        let here = block_at(at);
        if here == 0 {
            at += 16;
            continue;
        }
        let right = block_at(at + 8);
        before = Some(right);
        let worth = (here == 1 && right != 0) || right == 1 || {
            let left = left.unwrap_or_else(|| if at >= 8 { block_at(at - 8) } else { 0 });
            if here == 1 { left != 0 } else { left == 1 }
        };
        if !worth {
            at += 16;
            continue;
        }
        let mut seen = 0u8;
        let mut start = at;
        while start > scanned_to {
            let class = CLASS[usize::from(text[start - 1])];
            if class == 0 {
                break;
            }
            seen |= class;
            start -= 1;
        }
        let mut end = at;
        while end < text.len() {
            let class = CLASS[usize::from(text[end])];
            if class == 0 {
                break;
            }
            seen |= class;
            end += 1;
        }
        scanned_to = end;
        at += 16;
        if end - start < MIN_BASE64_RUN {
            continue;
        }
        if seen & NOT_HEX == 0 || seen & (UPPER | LOWER) != UPPER | LOWER {
            continue;
        }
        if seen & STD_ONLY != 0 && seen & URL_ONLY != 0 {
            // Both alphabets: standard base64 glued to `-` or `_` (`id_…`)
            // or the other way round. Each side of the other alphabet's
            // characters is tried as its own run.
            for (alphabet, engine) in [(URL_ONLY, &STANDARD), (STD_ONLY, &URL_SAFE)] {
                let mut piece = start;
                for at in start..=end {
                    if at == end || CLASS[usize::from(text[at])] & alphabet != 0 {
                        if at - piece >= MIN_BASE64_RUN {
                            try_alignments(text, piece, at, engine, &mut decoded, &mut each);
                        }
                        piece = at + 1;
                    }
                }
            }
            continue;
        }
        let engine = if seen & URL_ONLY != 0 {
            &URL_SAFE
        } else {
            &STANDARD
        };
        try_alignments(text, start, end, engine, &mut decoded, &mut each);
    }
}

/// The words of `text` (runs without whitespace) that hold a valid
/// percent-escape, each decoded: `(start of the word in text, decoded
/// bytes, for each decoded byte the offset in the word it came from and one
/// more entry: the word's length)`. A percent-encoded secret is one word.
pub(super) fn percent_words(text: &[u8], mut each: impl FnMut(usize, &[u8], &[usize])) {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let escape_at = |at: usize| -> Option<u8> {
        let (high, low) = (hex(*text.get(at + 1)?)?, hex(*text.get(at + 2)?)?);
        Some(high << 4 | low)
    };
    let mut decoded = Vec::new();
    let mut origin = Vec::new();
    let mut from = 0;
    while let Some(found) = memchr::memchr(b'%', &text[from..]) {
        let percent = from + found;
        if escape_at(percent).is_none() {
            from = percent + 1;
            continue;
        }
        let start = text[..percent]
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(0, |at| at + 1)
            .max(from);
        let end = text[percent..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(text.len(), |at| percent + at);
        decoded.clear();
        origin.clear();
        let mut at = start;
        while at < end {
            if text[at] == b'%'
                && at + 2 < end
                && let Some(byte) = escape_at(at)
            {
                decoded.push(byte);
                origin.push(at - start);
                at += 3;
                continue;
            }
            decoded.push(text[at]);
            origin.push(at - start);
            at += 1;
        }
        origin.push(end - start);
        each(start, &decoded, &origin);
        from = end;
    }
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

/// Decodes `text[start..end]` from each of its four alignments (the
/// encoding may start a few characters in: `/callback/` + base64) until
/// `each` says it found something.
fn try_alignments(
    text: &[u8],
    start: usize,
    end: usize,
    engine: &GeneralPurpose,
    decoded: &mut Vec<u8>,
    each: &mut impl FnMut(Run<'_>) -> bool,
) {
    for skip in 0..4 {
        let mut piece = &text[start + skip..end];
        if piece.len() % 4 == 1 {
            piece = &piece[..piece.len() - 1];
        }
        if piece.len() < MIN_BASE64_RUN - 4 {
            return;
        }
        decoded.clear();
        if engine.decode_vec(piece, decoded).is_ok()
            && each(Run {
                start,
                end,
                decoded,
            })
        {
            return;
        }
    }
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
            let found = run.decoded.starts_with(b"which") || run.decoded.starts_with(b"token");
            out.push((text[run.start..run.end].to_owned(), run.decoded.to_vec()));
            found
        });
        out
    }

    #[test]
    fn classes_are_told_eight_bytes_at_once() {
        // Every byte value in every position: the same answer as the table.
        for byte in 0..=255u8 {
            for at in 0..8 {
                let mut block = *b"AAAAAAAA";
                block[at] = byte;
                assert_eq!(
                    in_class(u64::from_le_bytes(block)),
                    CLASS[usize::from(byte)] != 0,
                    "byte {byte:#04x} at {at}"
                );
            }
        }
    }

    #[test]
    fn hex_blocks_are_told_eight_bytes_at_once() {
        for (block, hex) in [
            (b"0123abcd", true),
            (b"ABCDEF09", true),
            (b"e29b-41d", true),
            (b"0123abcg", false),
            (b"0123_bcd", false),
            (b"0123/bcd", false),
            (b"0123+bcd", false),
            (b"GHIJklmn", false),
            (b"9:;<=>?@", false),
            (b"0123@567", false),
            (b"0123`567", false),
        ] {
            let word = u64::from_le_bytes(*block);
            let label = String::from_utf8_lossy(block);
            assert!(!outside_base64_span(word), "{label}");
            assert_eq!(all_hex(word), hex, "{label}");
        }
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
        let text = b"which?>>? token=abcdefgh12345678 ~~~ >>>";
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        assert!(url.contains('-') || url.contains('_'), "{url}");
        assert_eq!(runs(&format!("x {url} y"))[0].1, text);
        // One letter case: an identifier, not base64 of text.
        assert!(runs("a some_long_snake_case_identifier_name here").is_empty());
        assert!(runs("a SOME_LONG_SHOUTING_CASE_IDENTIFIER here").is_empty());
        // Glued to a prefix of any length, or to the other alphabet.
        let holds = |text: &str| {
            let mut hit = false;
            base64_runs(text.as_bytes(), |run| {
                hit |= memchr::memmem::find(run.decoded, b"token=hunter2").is_some();
                hit
            });
            hit
        };
        for prefix in ["/callback/", "/cb/", "x", "ab", "abc", "id_", "key-"] {
            assert!(holds(&format!("see {prefix}{encoded} ok")), "{prefix}");
        }
        let slashed = encode_field(b"??>token=hunter2-and-some-more-text??>");
        assert!(slashed.contains('/') || slashed.contains('+'), "{slashed}");
        assert!(holds(&format!("id_{slashed}")));
        // At the very start and end of the text, and of odd alignment.
        for pad in 0..9 {
            let text = format!("{}{encoded}", " ".repeat(pad));
            assert_eq!(runs(&text).len(), 1, "pad {pad}");
        }
    }

    fn words(text: &str) -> Vec<(usize, Vec<u8>, Vec<usize>)> {
        let mut out = Vec::new();
        percent_words(text.as_bytes(), |start, decoded, origin| {
            out.push((start, decoded.to_vec(), origin.to_vec()))
        });
        out
    }

    #[test]
    fn percent_decoding_maps_back_to_the_text() {
        assert_eq!(
            words("x a%5Fb%zz%41 y%2"),
            [(2, b"a_b%zzA".to_vec(), vec![0, 1, 4, 5, 6, 7, 8, 11])]
        );
        assert_eq!(
            words("%41 and %42"),
            [
                (0, b"A".to_vec(), vec![0, 3]),
                (8, b"B".to_vec(), vec![0, 3])
            ]
        );
        assert!(words("no escapes").is_empty());
        assert!(words("100% sure, 5%").is_empty());
    }

    #[test]
    fn fields_decode_with_line_breaks_and_refuse_garbage() {
        assert_eq!(decode_field("aGVs\nbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_field("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert!(decode_field("not base64!").is_none());
    }
}
