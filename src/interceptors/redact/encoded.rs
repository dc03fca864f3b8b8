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

// Byte classes for the run finder's slow path.
const STD_ONLY: u8 = 1; // `+` `/`
const URL_ONLY: u8 = 2; // `-` `_`

#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of range fails the build"
)]
const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => 4,
            b'+' | b'/' => STD_ONLY,
            b'-' | b'_' => URL_ONLY,
            _ => 0,
        };
        b += 1;
    }
    table
}

static CLASS: [u8; 256] = classes();

/// A byte's class ([`STD_ONLY`], [`URL_ONLY`], 4 for alphanumerics).
fn class(b: u8) -> u8 {
    CLASS.get(usize::from(b)).copied().unwrap_or(0)
}

/// Sixteen bytes at once. On x86-64, SSE2 (every x86-64 CPU has it)
/// through `safe_arch`'s safe wrappers; elsewhere a byte at a time.
mod lanes {
    /// Sixteen bytes of text.
    #[cfg(target_arch = "x86_64")]
    pub(super) struct Block(safe_arch::m128i);

    /// One flag per byte of a [`Block`].
    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy)]
    pub(super) struct Mask(safe_arch::m128i);

    #[cfg(target_arch = "x86_64")]
    impl Block {
        #[inline(always)]
        pub fn load(bytes: &[u8; 16]) -> Self {
            Self(safe_arch::load_unaligned_m128i(bytes))
        }

        /// Bytes that, with the bits of `or` set, are in `low..low + count`
        /// (`count` at most 128).
        #[inline(always)]
        pub fn range(&self, or: u8, low: u8, count: u8) -> Mask {
            use safe_arch::*;
            let folded = if or == 0 {
                self.0
            } else {
                bitor_m128i(self.0, set_splat_i8_m128i(or as i8))
            };
            // Shift the range to start at -128, then one signed compare.
            let shifted = add_i8_m128i(folded, set_splat_i8_m128i(0x80u8.wrapping_sub(low) as i8));
            let limit = set_splat_i8_m128i(count.wrapping_sub(0x80) as i8);
            Mask(cmp_lt_mask_i8_m128i(shifted, limit))
        }

        /// Bytes that, with the bits of `or` set, equal `byte`.
        #[inline(always)]
        pub fn equal(&self, or: u8, byte: u8) -> Mask {
            use safe_arch::*;
            let folded = if or == 0 {
                self.0
            } else {
                bitor_m128i(self.0, set_splat_i8_m128i(or as i8))
            };
            Mask(cmp_eq_mask_i8_m128i(folded, set_splat_i8_m128i(byte as i8)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Mask {
        #[inline(always)]
        pub fn or(self, other: Self) -> Self {
            Self(safe_arch::bitor_m128i(self.0, other.0))
        }

        /// The flags of `self` without those of `other`.
        #[inline(always)]
        pub fn and_not(self, other: Self) -> Self {
            Self(safe_arch::bitandnot_m128i(other.0, self.0))
        }

        /// Bit `i` set where byte `i` is flagged.
        #[inline(always)]
        pub fn bits(self) -> u16 {
            safe_arch::move_mask_i8_m128i(self.0) as u16
        }
    }

    /// Sixteen bytes of text.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) struct Block([u8; 16]);

    /// One flag per byte of a [`Block`].
    #[cfg(not(target_arch = "x86_64"))]
    #[derive(Clone, Copy)]
    pub(super) struct Mask(u16);

    #[cfg(not(target_arch = "x86_64"))]
    impl Block {
        pub fn load(bytes: &[u8; 16]) -> Self {
            Self(*bytes)
        }

        pub fn range(&self, or: u8, low: u8, count: u8) -> Mask {
            self.flags(|b| (b | or).wrapping_sub(low) < count)
        }

        pub fn equal(&self, or: u8, byte: u8) -> Mask {
            self.flags(|b| b | or == byte)
        }

        fn flags(&self, test: impl Fn(u8) -> bool) -> Mask {
            Mask((0..16).fold(0, |bits, i| bits | u16::from(test(self.0[i])) << i))
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    impl Mask {
        pub fn or(self, other: Self) -> Self {
            Self(self.0 | other.0)
        }

        pub fn and_not(self, other: Self) -> Self {
            Self(self.0 & !other.0)
        }

        pub fn bits(self) -> u16 {
            self.0
        }
    }
}

use lanes::Block;

/// Bit `i` set where byte `i` of `block` is a base64 character of either
/// alphabet: a letter, a digit, `+`, `-`, `/` or `_`.
#[inline(always)]
fn base64_bits(block: &Block) -> u16 {
    let letters = block.range(0x20, b'a', 26);
    // `+` … `9` but `,` and `.` (the two that become `.` with bit 1 set).
    let digits_and_marks = block.range(0, b'+', 15).and_not(block.equal(0x02, b'.'));
    letters.or(digits_and_marks).or(block.equal(0, b'_')).bits()
}

/// What a run holds, for telling base64 of text from hashes and names.
const NOT_HEX: u8 = 1; // a letter past `f`/`F`
const UPPER: u8 = 2;
const LOWER: u8 = 4;

fn letter_classes(block: &Block, keep: u16) -> u8 {
    let mut seen = 0;
    if block.range(0x20, b'g', 20).bits() & keep != 0 {
        seen |= NOT_HEX;
    }
    if block.range(0, b'A', 26).bits() & keep != 0 {
        seen |= UPPER;
    }
    if block.range(0, b'a', 26).bits() & keep != 0 {
        seen |= LOWER;
    }
    seen
}

/// Sixteen bytes of `text` from `at`, zeros past its end.
fn sixteen(text: &[u8], at: usize) -> [u8; 16] {
    match text.get(at..at + 16).map(<[u8; 16]>::try_from) {
        Some(Ok(block)) => block,
        _ => {
            let mut block = [0u8; 16];
            let rest = text.get(at..).unwrap_or_default();
            for (to, from) in block.iter_mut().zip(rest) {
                *to = *from;
            }
            block
        }
    }
}

/// Sixty-four bytes of `text` from `at` as a bit set of base64 characters
/// (nothing past the end).
fn chunk_bits(text: &[u8], at: usize) -> u64 {
    (0..4).fold(0, |bits, part| {
        let block = Block::load(&sixteen(text, at + 16 * part));
        bits | u64::from(base64_bits(&block)) << (16 * part)
    })
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
///
/// The text is read 64 bytes at a time as a bit set of base64 characters;
/// runs long enough are found with shifts and masks (most chunks of prose
/// and code hold none), and only those are looked at byte by byte.
pub(super) fn base64_runs(text: &[u8], mut each: impl FnMut(Run<'_>) -> bool) {
    if text.len() < MIN_BASE64_RUN {
        return;
    }
    let mut decoded = Vec::new();
    // Where the run reaching the end of the last chunk started (the next
    // chunk's start when none does). No branch on what the text holds but
    // for a run long enough: prose starts and ends chunks mid-word as often
    // as not.
    let mut carry = 0;
    let mut base = 0;
    while base < text.len() {
        let bits = chunk_bits(text, base);
        if bits == u64::MAX {
            base += 64;
            continue;
        }
        // The run at the chunk's start, continuing the carried one.
        let first = bits.trailing_ones() as usize;
        if base + first - carry >= MIN_BASE64_RUN {
            consider(text, carry, base + first, &mut decoded, &mut each);
        }
        // The run at its end is carried to the next chunk.
        let last = bits.leading_ones() as usize;
        carry = base + 64 - last;
        let inner = bits & u64::MAX << first & u64::MAX >> last;
        // Bit `i` of `long`: bits `i..i + 24` of `inner` all set.
        let mut long = inner & inner >> 1;
        long &= long >> 2;
        long &= long >> 4;
        long &= long >> 8;
        long &= long >> 8;
        while long != 0 {
            let start = long.trailing_zeros() as usize;
            let end = start + (inner >> start).trailing_ones() as usize;
            consider(text, base + start, base + end, &mut decoded, &mut each);
            long &= u64::MAX << end;
        }
        base += 64;
    }
    if carry + MIN_BASE64_RUN <= text.len() {
        consider(text, carry, text.len(), &mut decoded, &mut each);
    }
}

/// The low `count` bits (`count` at most 64).
#[inline(always)]
fn low_bits(count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// One run of base64 characters, `text[start..end]`, of the minimum
/// length: decoded unless it is hex or in one letter case.
fn consider(
    text: &[u8],
    start: usize,
    end: usize,
    decoded: &mut Vec<u8>,
    each: &mut impl FnMut(Run<'_>) -> bool,
) {
    let blocks = || {
        (start..end)
            .step_by(16)
            .map(move |at| (Block::load(&sixteen(text, at)), low_bits(end - at) as u16))
    };
    // A hash or a UUID has no letter past `f`: looked for first.
    if !blocks().any(|(block, keep)| letter_classes(&block, keep) & NOT_HEX != 0) {
        return;
    }
    let seen = blocks().fold(0, |seen, (block, keep)| seen | letter_classes(&block, keep));
    if seen & NOT_HEX == 0 || seen & (UPPER | LOWER) != UPPER | LOWER {
        return;
    }
    let marks = (text.get(start..end).unwrap_or_default())
        .iter()
        .fold(0, |marks, &b| marks | class(b));
    if marks & STD_ONLY != 0 && marks & URL_ONLY != 0 {
        // Both alphabets: standard base64 glued to `-` or `_` (`id_…`)
        // or the other way round. Each side of the other alphabet's
        // characters is tried as its own run.
        for (alphabet, engine) in [(URL_ONLY, &STANDARD), (STD_ONLY, &URL_SAFE)] {
            let mut piece = start;
            for at in start..=end {
                if at == end || text.get(at).is_some_and(|&b| class(b) & alphabet != 0) {
                    if at - piece >= MIN_BASE64_RUN {
                        try_alignments(text, piece, at, engine, decoded, each);
                    }
                    piece = at + 1;
                }
            }
        }
        return;
    }
    let engine = if marks & URL_ONLY != 0 {
        &URL_SAFE
    } else {
        &STANDARD
    };
    try_alignments(text, start, end, engine, decoded, each);
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
    while let Some(found) = memchr::memchr(b'%', text.get(from..).unwrap_or_default()) {
        let percent = from + found;
        if escape_at(percent).is_none() {
            from = percent + 1;
            continue;
        }
        let start = (text.get(..percent).unwrap_or_default())
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(0, |at| at + 1)
            .max(from);
        let end = (text.get(percent..).unwrap_or_default())
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(text.len(), |at| percent + at);
        decoded.clear();
        origin.clear();
        let mut at = start;
        while let Some(&byte) = text.get(at).filter(|_| at < end) {
            if byte == b'%'
                && at + 2 < end
                && let Some(byte) = escape_at(at)
            {
                decoded.push(byte);
                origin.push(at - start);
                at += 3;
                continue;
            }
            decoded.push(byte);
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
        let mut piece = text.get(start + skip..end).unwrap_or_default();
        if piece.len() % 4 == 1 {
            piece = piece.split_last().map_or(piece, |(_, rest)| rest);
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
    fn classes_are_told_sixteen_bytes_at_once() {
        // Every byte value in every lane: the same answer as a byte test.
        let base64 = |b: u8| b.is_ascii_alphanumeric() || b"+-/_".contains(&b);
        for byte in 0..=255u8 {
            for lane in 0..16 {
                let mut bytes = *b"AAAAAAAAAAAAAAAA";
                bytes[lane] = byte;
                let block = Block::load(&bytes);
                let bit = 1u16 << lane;
                let label = format!("byte {byte:#04x} in lane {lane}");
                assert_eq!(base64_bits(&block) & bit != 0, base64(byte), "{label}");
                let mut zeros = [0u8; 16];
                zeros[lane] = byte;
                let seen = letter_classes(&Block::load(&zeros), bit);
                let lower = byte.to_ascii_lowercase();
                assert_eq!(
                    seen & NOT_HEX != 0,
                    (b'g'..=b'z').contains(&lower),
                    "{label}"
                );
                assert_eq!(seen & UPPER != 0, byte.is_ascii_uppercase(), "{label}");
                assert_eq!(seen & LOWER != 0, byte.is_ascii_lowercase(), "{label}");
            }
        }
    }

    /// Every maximal run of base64 characters of at least the minimum
    /// length, byte by byte: what the bit sets must find.
    fn naive_runs(text: &[u8]) -> Vec<(usize, usize)> {
        let base64 = |b: &u8| b.is_ascii_alphanumeric() || b"+-/_".contains(b);
        let mut out = Vec::new();
        let mut at = 0;
        while at < text.len() {
            if !base64(&text[at]) {
                at += 1;
                continue;
            }
            let start = at;
            while at < text.len() && base64(&text[at]) {
                at += 1;
            }
            if at - start >= MIN_BASE64_RUN {
                out.push((start, at));
            }
        }
        out
    }

    #[test]
    fn every_long_run_is_found_wherever_it_falls_in_the_chunks() {
        // Mixed case with a letter past `f`, so every run is decoded: the
        // run finder reports each one (from some alignment) exactly once.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |below: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % below as u64) as usize
        };
        let mut total = 0;
        for round in 0..3000 {
            let len = next(300);
            let text: Vec<u8> = (0..len)
                .map(|_| match next(20) {
                    0 => b' ',
                    1 if round % 2 == 0 => b'.',
                    _ => b"QmFzZTY0IHRleHQgaGVyZQ"[next(22)],
                })
                .collect();
            let expected = naive_runs(&text);
            let mut got = Vec::new();
            base64_runs(&text, |run| {
                got.push((run.start, run.end));
                true
            });
            let decodable: Vec<_> = expected
                .iter()
                .copied()
                .filter(|&(start, end)| {
                    let run = &text[start..end];
                    run.iter()
                        .any(|b| (b'g'..=b'z').contains(&b.to_ascii_lowercase()))
                        && run.iter().any(u8::is_ascii_uppercase)
                        && run.iter().any(u8::is_ascii_lowercase)
                        && (0..4).any(|skip| {
                            let mut piece = &text[start + skip..end];
                            if piece.len() % 4 == 1 {
                                piece = &piece[..piece.len() - 1];
                            }
                            STANDARD.decode(piece).is_ok()
                        })
                })
                .collect();
            assert_eq!(got, decodable, "{:?}", String::from_utf8_lossy(&text));
            total += got.len();
        }
        // The texts held runs of every length, across chunk edges.
        assert!(total > 1000, "{total}");
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
        // Both cases in the first sixteen bytes, a letter past `f` only
        // after them: still base64.
        assert!(!runs(" ABCDEF0123abcdefghijklmnop ").is_empty());
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
