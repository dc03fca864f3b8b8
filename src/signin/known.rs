//! The users' tokens the proxy has read from its vault, known to
//! redaction by their digests: a server that sends one back (to the
//! client, in a log line, in an error) has it replaced by
//! `[REDACTED:user-token]`, wherever it stands in a message, whatever the
//! rules' actions. Process-wide: one proxy, one vault.
//!
//! Only digests are kept (SHA-256), at most [`MAX_KNOWN`], the oldest
//! forgotten first. A token is found as a whole run of token characters
//! (letters, digits, `-._~+/`, and trailing `=`) that is exactly it: a
//! token glued to other such characters is not found.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{LazyLock, RwLock};

use sha2::{Digest, Sha256};

/// Shorter values are not remembered (they could be anything).
pub const MIN_KNOWN: usize = 20;
/// The most digests kept.
pub const MAX_KNOWN: usize = 100_000;

/// The tokens known, by digest.
#[derive(Default)]
pub struct Known {
    any: AtomicBool,
    /// The longest token remembered: a longer run is none of them.
    longest: AtomicUsize,
    held: RwLock<Held>,
}

#[derive(Default)]
struct Held {
    digests: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    /// The lengths of the tokens remembered (a bit each, up to
    /// [`MAX_LENGTH`]): only a run of one of them is hashed.
    lengths: Vec<u64>,
}

/// The longest token a length is kept for; a longer one is remembered by
/// [`Known::longest`] alone (every run up to it is then hashed).
const MAX_LENGTH: usize = 16 * 1024;

impl Held {
    fn note_length(&mut self, length: usize) {
        if length > MAX_LENGTH {
            return;
        }
        let (word, bit) = (length / 64, length % 64);
        if self.lengths.len() <= word {
            self.lengths.resize(word + 1, 0);
        }
        if let Some(slot) = self.lengths.get_mut(word) {
            *slot |= 1 << bit;
        }
    }

    /// Whether a token of `length` bytes may be known.
    fn may_be(&self, length: usize, longest: usize) -> bool {
        if longest > MAX_LENGTH && length > MAX_LENGTH {
            return length <= longest;
        }
        self.lengths
            .get(length / 64)
            .is_some_and(|word| word & (1 << (length % 64)) != 0)
    }
}

static KNOWN: LazyLock<Known> = LazyLock::new(Known::default);

/// The proxy's known tokens.
pub fn known() -> &'static Known {
    &KNOWN
}

/// The bytes a token is made of, by value.
// `byte` stays below 256, the table's length: `get_mut` is not `const`.
#[allow(clippy::indexing_slicing)]
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        byte += 1;
    }
    table
};

fn is_token_byte(byte: u8) -> bool {
    TOKEN_BYTES
        .get(usize::from(byte))
        .copied()
        .unwrap_or_default()
}

impl Known {
    /// Remembers `value` (a token read from the vault).
    pub fn remember(&self, value: &str) {
        if value.len() < MIN_KNOWN {
            return;
        }
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        // Read every 30 s by each connection: most are known already.
        if self
            .held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .digests
            .contains(&digest)
        {
            return;
        }
        self.longest.fetch_max(value.len(), Ordering::AcqRel);
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if !held.digests.insert(digest) {
            return;
        }
        held.order.push_back(digest);
        held.note_length(value.len());
        while held.order.len() > MAX_KNOWN {
            if let Some(oldest) = held.order.pop_front() {
                held.digests.remove(&oldest);
            }
        }
        self.any.store(true, Ordering::Release);
    }

    /// Whether no token is known (redaction then looks for none).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// The byte spans of `text` that are known tokens, in order.
    /// `text` with every token found in it replaced by
    /// `[REDACTED:user-token]`: a line a container given its user's token
    /// wrote to its stderr, before the log has it.
    pub fn scrub(&self, text: &str) -> String {
        let spans = self.find(text.as_bytes());
        if spans.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            if start < at {
                continue;
            }
            out.push_str(text.get(at..start).unwrap_or_default());
            out.push_str("[REDACTED:user-token]");
            at = end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    pub fn find(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        if self.is_empty() || text.len() < MIN_KNOWN {
            return spans;
        }
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        let mut at = 0;
        while at < text.len() {
            let rest = text.get(at..).unwrap_or_default();
            let Some(skip) = rest.iter().position(|&byte| is_token_byte(byte)) else {
                break;
            };
            let start = at + skip;
            let rest = text.get(start..).unwrap_or_default();
            at = start
                + rest
                    .iter()
                    .position(|&byte| !is_token_byte(byte))
                    .unwrap_or(rest.len());
            // Too short to be a token even with its padding.
            if at - start + 2 < MIN_KNOWN {
                continue;
            }
            let mut end = at;
            // Base64 padding belongs to the token, if it is there.
            while text.get(end) == Some(&b'=') && end - at < 2 {
                end += 1;
            }
            // The run with its padding, else without, else without one, two,
            // three or four of the punctuation marks that may end a sentence
            // or a path after it (a token may end in `-` or `~` itself).
            let mut stops = [end, at, at, at, at, at];
            let mut trimmed = at;
            for slot in stops.iter_mut().skip(2) {
                if trimmed > start
                    && matches!(text.get(trimmed - 1), Some(b'.' | b'/' | b'~' | b'-'))
                {
                    trimmed -= 1;
                }
                *slot = trimmed;
            }
            let longest = self.longest.load(Ordering::Acquire);
            let found = stops.iter().enumerate().find(|&(n, &stop)| {
                // Each length once; none shorter or longer than a token.
                let fresh = !stops.iter().take(n).any(|&seen| seen == stop);
                let length = stop - start;
                fresh
                    && (MIN_KNOWN..=longest).contains(&length)
                    && held.may_be(length, longest)
                    && text.get(start..stop).is_some_and(|run| {
                        held.digests
                            .contains(&<[u8; 32]>::from(Sha256::digest(run)))
                    })
            });
            let found = found.map(|(_, &stop)| stop);
            if let Some(stop) = found {
                spans.push((start, stop));
            }
            at = end.max(at);
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_line_is_scrubbed_of_every_known_token_in_it() {
        let known = Known::default();
        let kept = "opaque-head-part.middle-part-two.tail-part-three";
        assert_eq!(known.scrub("nothing known yet"), "nothing known yet");
        known.remember(kept);
        let line = format!("env: USER={kept} and again \u{e9}{kept}. done");
        assert_eq!(
            known.scrub(&line),
            "env: USER=[REDACTED:user-token] and again \u{e9}[REDACTED:user-token]. done"
        );
        assert_eq!(
            known.scrub("kept apart: opaque-head-part"),
            "kept apart: opaque-head-part"
        );
    }

    #[test]
    fn a_known_token_is_found_where_it_stands_whole() {
        let known = Known::default();
        assert!(known.is_empty());
        let kept = "opaque-head-part.middle-part-two.tail-part-three";
        known.remember(kept);
        known.remember("short");
        assert!(!known.is_empty());
        let text = format!("Bearer {kept}, again:\"{kept}\" and {kept}x, at last {kept}.");
        let spans = known.find(text.as_bytes());
        assert_eq!(spans.len(), 3, "{spans:?}");
        for (start, end) in &spans {
            assert_eq!(&text[*start..*end], kept);
        }
        let padded = "b3BhcXVlLXJlZnJlc2gtdG9rZW4tdmFsdWU==";
        known.remember(padded);
        let text = format!("refresh={padded};");
        let spans = known.find(text.as_bytes());
        assert_eq!(spans.len(), 1);
        assert_eq!(&text[spans[0].0..spans[0].1], padded);
        assert!(
            known
                .find(b"nothing known here at all, not a token")
                .is_empty()
        );
    }

    #[test]
    fn a_token_ending_in_punctuation_is_found_before_more_of_it() {
        let known = Known::default();
        let dashed = "base64url-token-that-ends-in-a-dash-";
        let tilded = "another-base64url-token-ending-in~";
        known.remember(dashed);
        known.remember(tilded);
        for text in [
            format!("see {dashed}. And"),
            format!("at {dashed}/"),
            format!("({dashed}--)"),
            format!("{tilded}."),
            format!("{tilded}~/."),
        ] {
            let spans = known.find(text.as_bytes());
            assert_eq!(spans.len(), 1, "{text}");
            let found = &text[spans[0].0..spans[0].1];
            assert!(found == dashed || found == tilded, "{text}: {found}");
        }
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_cap() {
        let known = Known::default();
        let first = format!("{:0>40}", 0);
        known.remember(&first);
        for n in 1..=MAX_KNOWN {
            known.remember(&format!("{n:0>40}"));
        }
        assert!(known.find(first.as_bytes()).is_empty());
        let last = format!("{MAX_KNOWN:0>40}");
        assert_eq!(known.find(last.as_bytes()), vec![(0, 40)]);
    }
}
