//! The keyword pass: every occurrence of every rule keyword in a string,
//! ASCII case-insensitive, overlapping.
//!
//! Most text holds no keyword at all, so the pass is built to say "nothing
//! here" fast. Each keyword is known by one of its 3-byte windows, its
//! anchor: the rarest in ordinary text (`github_pat_` by `b_p`, not `git`).
//! The pass reads eight bytes at a time and tests the six 3-byte windows in
//! them against a 128 Kibit set of hashed anchors (16 KiB, it stays in L1).
//! The windows are independent of each other, so the CPU overlaps them,
//! where an automaton must follow one state after another. A window whose
//! hash is in the set is checked exactly against the few keywords whose
//! anchors hash near it. Keywords of two bytes (allowed, not built in) go
//! through a small Aho-Corasick automaton of their own.
//!
//! The hash folds case by setting bit 5 of every byte (`b | 0x20`). That
//! maps `A` to `a`, and a few punctuation pairs to each other (`_` and DEL,
//! `@` and `` ` ``): a superset, so a keyword is never missed, and the exact
//! check throws the extra candidates away.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Bits in the anchor set (a power of two, at most 1 << 17: see `slot`).
const BITS: usize = 1 << 17;
/// Slots per bucket of candidate keywords: `1 << SPREAD`.
const SPREAD: usize = 5;

/// Every keyword of a scanner, ready to be found.
#[derive(Debug)]
pub struct Keywords {
    /// Keywords, lowercased; a hit is an index into this.
    words: Vec<Box<[u8]>>,
    /// The hashed, case-folded anchor of every keyword of three bytes or
    /// more.
    filter: Box<[u64; BITS / 64]>,
    /// `bucket[slot >> SPREAD]..bucket[(slot >> SPREAD) + 1]` is the range
    /// of `entries` that holds the keywords whose anchor hashes to a slot
    /// in that bucket.
    bucket: Box<[u32]>,
    entries: Box<[Entry]>,
    /// Two-byte keywords, if any: (automaton, its pattern → word index).
    short: Option<(AhoCorasick, Vec<u32>)>,
}

/// A keyword as the exact check first compares it: its first eight bytes
/// (fewer if shorter), case-folded like the filter, against the text's.
#[derive(Debug, Clone, Copy)]
struct Entry {
    head: u64,
    mask: u64,
    word: u32,
    /// Where the anchor is in the keyword.
    anchor: u32,
}

/// The 8192 most common 3-byte windows of ordinary text and code, most
/// common first, lowercased, one per line (printable ASCII only): counted
/// over Python's standard library (11 MB) and Rust crate sources and their
/// READMEs (30 MB). The longer the list, the fewer anchors fall on windows
/// that text is full of (`sum` of `checksum` for `sumo`).
const COMMON: &str = include_str!("common-trigrams.txt");

/// How common a byte is in text and code (English letter frequencies,
/// per mille, roughly; punctuation as code uses it): ranks the windows the
/// list above does not hold.
fn commonness(byte: u8) -> u32 {
    match byte.to_ascii_lowercase() {
        b' ' => 180,
        b'e' => 127,
        b't' => 91,
        b'a' => 82,
        b'o' => 75,
        b'i' => 70,
        b'n' => 67,
        b's' => 63,
        b'h' => 61,
        b'r' => 60,
        b'd' => 43,
        b'l' => 40,
        b'c' | b'u' => 28,
        b'm' | b'w' => 24,
        b'f' => 22,
        b'g' | b'y' => 20,
        b'p' => 19,
        b'b' => 15,
        b'-' | b'.' | b'/' | b'_' | b':' | b'=' | b'"' | b',' => 30,
        b'v' => 10,
        b'0'..=b'9' => 10,
        b'k' => 8,
        b'j' | b'x' => 2,
        b'q' | b'z' => 1,
        _ => 5,
    }
}

/// The offset of a keyword's rarest 3-byte window: the least common one of
/// the list, or, better, one not on it, the rarest by its letters.
fn anchor(word: &[u8], common: &HashMap<&[u8], usize>) -> usize {
    let cost = |window: &[u8]| match common.get(window) {
        Some(rank) => 10_000_000 + (COMMON_WINDOWS - rank) * 10_000,
        None => window.iter().map(|&b| commonness(b) as usize).product(),
    };
    (0..=word.len().saturating_sub(3))
        .min_by_key(|&at| cost(word.get(at..at + 3).unwrap_or_default()))
        .unwrap_or(0)
}

const COMMON_WINDOWS: usize = 8192;

/// Eight bytes of `text` from `at` (zeros past its end), case-folded.
fn head(text: &[u8], at: usize) -> u64 {
    if let Some(Ok(bytes)) = text.get(at..at + 8).map(<[u8; 8]>::try_from) {
        return u64::from_le_bytes(bytes) | 0x2020_2020_2020_2020;
    }
    let mut bytes = [0u8; 8];
    let available = text.len().saturating_sub(at).min(8);
    for (to, from) in bytes.iter_mut().zip(text.iter().skip(at)) {
        *to = *from;
    }
    let mask = if available == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * available)) - 1
    };
    (u64::from_le_bytes(bytes) | 0x2020_2020_2020_2020) & mask
}

/// `b | 0x20` on every byte of a 3-byte window packed in a `u32`: the
/// filter's case folding.
const FOLD: u32 = 0x0020_2020;

/// The filter's hash of a 3-byte window (bytes in the low 24 bits, case
/// folded): the low 17 bits of `w ^ (w >> 3) ^ (w >> 6)`, which for ASCII
/// bytes (bit 7 clear) mix in all three and nothing past them. Linear, so it
/// is taken for all the windows of a word at once: window `k` of `x` is
/// `hash_all(x) >> 8k`. (Of the hashes tried on text and code, this one let
/// the fewest windows through that hold no anchor.)
fn slot(window: u32) -> usize {
    (hash_all(u64::from(window)) & SLOT_MASK) as usize
}

const SLOT_MASK: u64 = BITS as u64 - 1;

fn hash_all(word: u64) -> u64 {
    word ^ (word >> 3) ^ (word >> 6)
}

/// The eight bytes of `text` at `at`, case-folded and hashed ([`hash_all`]),
/// when there are eight.
#[inline(always)]
fn hashed_word(text: &[u8], at: usize) -> Option<u64> {
    let bytes = <[u8; 8]>::try_from(text.get(at..at + 8)?).ok()?;
    Some(hash_all(u64::from_le_bytes(bytes) | 0x2020_2020_2020_2020))
}

/// The first three bytes of `bytes` (zeros past its end) packed, folded.
fn window(bytes: &[u8]) -> u32 {
    let [a, b, c] = bytes.first_chunk::<3>().copied().unwrap_or_default();
    (u32::from(a) | u32::from(b) << 8 | u32::from(c) << 16) | FOLD
}

impl Keywords {
    /// `words` must be distinct, at least two bytes and ASCII (rule files
    /// are validated so).
    pub fn new(words: &[String]) -> Result<Self, aho_corasick::BuildError> {
        let mut filter = Box::new([0u64; BITS / 64]);
        let mut buckets: Vec<Vec<Entry>> = vec![Vec::new(); BITS >> SPREAD];
        let mut short_words = Vec::new();
        let mut short_index = Vec::new();
        let mut lowered = Vec::with_capacity(words.len());
        let common: HashMap<&[u8], usize> = COMMON
            .split('\n')
            .filter(|line| line.len() == 3)
            .enumerate()
            .map(|(rank, line)| (line.as_bytes(), rank))
            .collect();
        for (index, word) in words.iter().enumerate() {
            let word = word.to_ascii_lowercase().into_bytes();
            if word.len() >= 3 {
                let anchor = anchor(&word, &common);
                let bit = slot(window(word.get(anchor..).unwrap_or_default()));
                if let Some(bits) = filter.get_mut(bit / 64) {
                    *bits |= 1 << (bit % 64);
                }
                let known = word.len().min(8);
                let mask = if known == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * known)) - 1
                };
                if let Some(bucket) = buckets.get_mut(bit >> SPREAD) {
                    bucket.push(Entry {
                        head: head(&word, 0) & mask,
                        mask,
                        word: index as u32,
                        anchor: anchor as u32,
                    });
                }
            } else {
                short_words.push(word.clone());
                short_index.push(index as u32);
            }
            lowered.push(word.into_boxed_slice());
        }
        let short = if short_words.is_empty() {
            None
        } else {
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&short_words)?;
            Some((automaton, short_index))
        };
        let mut bucket = Vec::with_capacity(buckets.len() + 1);
        let mut entries = Vec::new();
        for words in buckets {
            bucket.push(entries.len() as u32);
            entries.extend(words);
        }
        bucket.push(entries.len() as u32);
        Ok(Self {
            words: lowered,
            filter,
            bucket: bucket.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
            short,
        })
    }

    /// Calls `hit(word, start)` for every occurrence of every keyword, in
    /// no particular order. Inlined into the scan, its one caller per
    /// string (out of line it paid a call per string scanned).
    #[inline]
    pub fn each(&self, text: &[u8], mut hit: impl FnMut(u32, usize)) {
        let mut at = 0;
        // Two words a round: twelve windows.
        while let (Some(one), Some(two)) = (hashed_word(text, at), hashed_word(text, at + 6)) {
            self.windows(text, one, at, &mut hit);
            self.windows(text, two, at + 6, &mut hit);
            at += 12;
        }
        while let Some(word) = hashed_word(text, at) {
            self.windows(text, word, at, &mut hit);
            at += 6;
        }
        while at + 3 <= text.len() {
            let bit = slot(window(text.get(at..).unwrap_or_default()));
            if self.is_set(bit) {
                self.check(text, at, bit, &mut hit);
            }
            at += 1;
        }
        if let Some((automaton, index)) = &self.short {
            for found in automaton.find_overlapping_iter(text) {
                if let Some(&word) = index.get(found.pattern().as_usize()) {
                    hit(word, found.start());
                }
            }
        }
    }

    /// Whether `bit` of the anchor set is set.
    #[inline(always)]
    fn is_set(&self, bit: usize) -> bool {
        (self.filter.get(bit / 64)).is_some_and(|bits| bits >> (bit % 64) & 1 == 1)
    }

    /// The six windows of a word hashed by [`hashed_word`], from `at`.
    #[inline(always)]
    fn windows(&self, text: &[u8], hashed: u64, at: usize, hit: &mut impl FnMut(u32, usize)) {
        for offset in 0..6 {
            let bit = (hashed >> (8 * offset) & SLOT_MASK) as usize;
            if self.is_set(bit) {
                self.check(text, at + offset, bit, hit);
            }
        }
    }

    /// The exact check of a candidate anchor at `at`, whose window hashed
    /// to `bit`.
    fn check(&self, text: &[u8], at: usize, bit: usize, hit: &mut impl FnMut(u32, usize)) {
        let bucket = bit >> SPREAD;
        let (Some(&from), Some(&to)) = (self.bucket.get(bucket), self.bucket.get(bucket + 1))
        else {
            return;
        };
        let entries = (self.entries.get(from as usize..to as usize)).unwrap_or_default();
        for entry in entries {
            let Some(start) = at.checked_sub(entry.anchor as usize) else {
                continue;
            };
            if head(text, start) & entry.mask != entry.head {
                continue;
            }
            let Some(word) = self.words.get(entry.word as usize) else {
                continue;
            };
            if (text.get(start..start + word.len()))
                .is_some_and(|found| found.eq_ignore_ascii_case(word))
            {
                hit(entry.word, start);
            }
        }
    }

    /// The length of keyword `index`.
    pub fn len_of(&self, index: u32) -> usize {
        self.words.get(index as usize).map_or(0, |word| word.len())
    }

    /// Whether any keyword occurs in `text`.
    #[inline]
    pub fn any(&self, text: &[u8]) -> bool {
        let mut found = false;
        self.each(text, |_, _| found = true);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(words: &[&str], text: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        for start in 0..text.len() {
            for (index, word) in words.iter().enumerate() {
                let word = word.as_bytes();
                if text.len() - start >= word.len()
                    && text[start..start + word.len()].eq_ignore_ascii_case(word)
                {
                    out.push((index as u32, start));
                }
            }
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_what_a_naive_search_finds() {
        let words = [
            "ghp_",
            "gho_",
            "key",
            "KEY_",
            "://",
            "sk-",
            "sk-ant-",
            "ab",
            "_x",
            "@`a",
            "private key",
        ];
        let owned: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let keywords = Keywords::new(&owned).unwrap();
        let mut rng = 0x1234_5678_9abc_def0u64;
        let alphabet = b"ghpoGHPO_key:/sK-antABx@`a`\x7f privatez";
        for round in 0..2000 {
            let len = round % 97;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    alphabet[(rng % alphabet.len() as u64) as usize]
                })
                .collect();
            let mut got = Vec::new();
            keywords.each(&text, |word, start| got.push((word, start)));
            got.sort_unstable();
            assert_eq!(
                got,
                naive(&words, &text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}
