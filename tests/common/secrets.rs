//! Well-formed secrets for the redaction tests, made at run time so that no
//! token is ever committed: a GitHub classic personal access token, a Stripe
//! live secret key and a Slack bot token, each with the rule that finds it.
//!
//! Included by path (`#[path = "common/secrets.rs"] mod secrets;`) by the
//! tests that need it, not by `common` itself: it includes the corpus's
//! generator, which `tests/redact.rs` includes on its own.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// The corpus's splitmix64 generator: every draw has the entropy a real
/// token has, so each secret is well-formed. `Rng(seed)`: the same seed (a
/// shrunk property case too), the same secrets.
#[path = "../redact/corpus.rs"]
mod corpus;

pub use corpus::Rng;

/// A generator seeded from the clock, the process and a counter: every
/// secret drawn from it is new, and no two tests share one.
pub fn fresh_rng() -> Rng {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    Rng(nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9))
}

/// Which secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A GitHub classic personal access token.
    GitHub,
    /// A Stripe live secret key.
    Stripe,
    /// A Slack bot token.
    Slack,
}

impl Kind {
    /// The kind numbered `n` modulo 3 (for a generator that draws a number).
    pub fn nth(n: u8) -> Self {
        match n % 3 {
            0 => Self::GitHub,
            1 => Self::Stripe,
            _ => Self::Slack,
        }
    }
}

/// A well-formed secret: its text, its random part, the rule that finds it.
#[derive(Debug, Clone)]
pub struct Secret {
    pub text: String,
    pub random: String,
    pub rule: &'static str,
}

impl Secret {
    /// A secret of `kind` drawn from `rng`.
    pub fn drawn(kind: Kind, rng: &mut Rng) -> Self {
        let (alnum, digits) = (corpus::alphabet("alnum"), corpus::alphabet("digits"));
        let (text, random, rule) = match kind {
            Kind::GitHub => {
                let random = rng.pick(alnum, 36);
                (format!("ghp_{random}"), random, "github-pat-classic")
            }
            Kind::Stripe => {
                let random = rng.pick(alnum, 24);
                (
                    format!("sk_live_{random}"),
                    random,
                    "stripe-live-secret-key",
                )
            }
            Kind::Slack => {
                let (a, b) = (rng.pick(digits, 12), rng.pick(digits, 12));
                let random = rng.pick(alnum, 24);
                (format!("xoxb-{a}-{b}-{random}"), random, "slack-bot-token")
            }
        };
        Self { text, random, rule }
    }

    /// A new GitHub classic personal access token.
    pub fn github() -> Self {
        Self::drawn(Kind::GitHub, &mut fresh_rng())
    }

    /// A new Stripe live secret key.
    pub fn stripe() -> Self {
        Self::drawn(Kind::Stripe, &mut fresh_rng())
    }

    /// A new Slack bot token.
    pub fn slack() -> Self {
        Self::drawn(Kind::Slack, &mut fresh_rng())
    }

    /// What the proxy puts in its place.
    pub fn placeholder(&self) -> String {
        format!("[REDACTED:{}]", self.rule)
    }

    /// The first and second half of the random part.
    pub fn halves(&self) -> (&str, &str) {
        self.random.split_at(self.random.len() / 2)
    }

    /// The secret and each half of its random part.
    pub fn plain_forms(&self) -> [&str; 3] {
        let (first, second) = self.halves();
        [&self.text, first, second]
    }

    /// Every form of the secret that must not reach the other side: the
    /// plain ones, its base64 (standard and URL-safe) at each of the three
    /// alignments it can have inside a longer encoded run, and every byte
    /// percent-encoded.
    pub fn forms(&self) -> Vec<String> {
        let mut forms: Vec<String> = self.plain_forms().map(str::to_owned).into();
        let bytes = self.text.as_bytes();
        for skip in 0..3 {
            let usable = (bytes.len() - skip) / 3 * 3;
            let chunk = &bytes[skip..skip + usable];
            forms.push(STANDARD_NO_PAD.encode(chunk));
            forms.push(URL_SAFE_NO_PAD.encode(chunk));
        }
        forms.push(bytes.iter().map(|b| format!("%{b:02X}")).collect());
        forms.push(bytes.iter().map(|b| format!("%{b:02x}")).collect());
        forms
    }
}
