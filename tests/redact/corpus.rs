//! The redaction test corpus (`corpus.toml`) and its template expander,
//! shared by the tests (`tests/redact.rs`) and the benchmark
//! (`benches/redact.rs`).
//!
//! Templates: `{CLASS:N}` is N random characters of CLASS (`alnum`, `hex`,
//! `HEX`, `digits`, `upper`, `lower`, `upper_alnum`, `lower_alnum`,
//! `base64`, `b64url`); `{{` and `}}` are literal braces.
#![allow(dead_code, clippy::panic, clippy::unwrap_used)]

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    pub case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub rule: String,
    pub positives: Vec<String>,
    pub negatives: Vec<String>,
}

pub fn corpus() -> Corpus {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redact/corpus.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// splitmix64: small, seedable, good enough to draw characters.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

pub fn seed() -> u64 {
    std::env::var("PORTCULLIS_CORPUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05EC_2E75)
}

pub fn alphabet(class: &str) -> &'static [u8] {
    match class {
        "alnum" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "hex" => b"0123456789abcdef",
        "HEX" => b"0123456789ABCDEF",
        "digits" => b"0123456789",
        "upper" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "lower" => b"abcdefghijklmnopqrstuvwxyz",
        "upper_alnum" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "lower_alnum" => b"abcdefghijklmnopqrstuvwxyz0123456789",
        "base64" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        "b64url" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        other => panic!("unknown template class `{other}`"),
    }
}

/// A template's text and its random segments (the secret material).
pub fn expand(template: &str, rng: &mut Rng) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut random = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let close = tail
            .find('}')
            .unwrap_or_else(|| panic!("unclosed `{{` in `{template}`"));
        let (class, n) = tail[1..close]
            .split_once(':')
            .unwrap_or_else(|| panic!("`{}` is not CLASS:N in `{template}`", &tail[..=close]));
        let segment = rng.pick(alphabet(class), n.parse().unwrap());
        out.push_str(&segment);
        random.push(segment);
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    (out, random)
}
