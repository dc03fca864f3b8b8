//! What secret scanning costs: the scanner's throughput on 1 MiB of clean
//! text and on 1 MiB dense with secrets, against a baseline that runs every
//! rule's regex over all of it (same rules, same filters, no keyword
//! prefilter); this engine's whole string path (the text, its
//! percent-escapes and base64 runs decoded) against the previous engine's
//! (the text alone); and the `redact` interceptor's cost per call on a
//! typical 2 KiB tool result, against the previous engine's walk.
//!
//! `cargo bench --bench redact` (options after `--`: `--rounds N`, default 20;
//! `--string-path-only` times this engine's string path alone, for a profiler).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;
#[path = "../tests/redact/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use portcullis::chain::{
    ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport,
};
use portcullis::config::RedactConfig;
use portcullis::interceptors::redact::{self, Redact, Scanner};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

/// Clean text as tools return it: source code, a lock file full of
/// checksums, prose, git SHAs, UUIDs and JSON, cut to `size` bytes.
fn clean_text(size: usize) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut parts = Vec::new();
    for file in [
        "src/gateway/mod.rs",
        "src/audit/sled_store.rs",
        "src/config/mod.rs",
        "Cargo.lock",
        "README.md",
    ] {
        parts.push(std::fs::read_to_string(root.join(file)).unwrap());
    }
    let mut rng = corpus::Rng(3);
    let hex = corpus::alphabet("hex");
    let mut ids = String::new();
    for _ in 0..2000 {
        ids.push_str(&format!(
            "commit {} {}-{}-{}\n",
            rng.pick(hex, 40),
            rng.pick(hex, 8),
            rng.pick(hex, 4),
            rng.pick(hex, 12)
        ));
    }
    parts.push(ids);
    let mut text = String::with_capacity(size + 4096);
    while text.len() < size {
        for part in &parts {
            text.push_str(part);
        }
    }
    let mut end = size;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Prose with a secret from the corpus every ~`every` bytes.
fn dense_text(size: usize, every: usize) -> (String, usize) {
    let corpus = corpus::corpus();
    let templates: Vec<&String> = corpus.case.iter().flat_map(|c| &c.positives).collect();
    let mut rng = corpus::Rng(11);
    let filler = "The deployment finished; logs follow for the operator to read. ";
    let mut text = String::with_capacity(size + 1024);
    let mut planted = 0;
    while text.len() < size {
        while text.len() % every < every - filler.len() && text.len() < size {
            text.push_str(filler);
        }
        text.push('\n');
        let (secret, _) = corpus::expand(templates[rng.below(templates.len())], &mut rng);
        text.push_str(&secret);
        text.push('\n');
        planted += 1;
    }
    (text, planted)
}

/// Best time of `rounds` runs of `work`.
fn best(rounds: usize, mut work: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn throughput(
    label: &str,
    text: &str,
    scanner: &Scanner,
    rounds: usize,
    every_rule: bool,
) -> (f64, usize) {
    let mut found = Vec::new();
    let time = best(rounds, || {
        if every_rule {
            scanner.scan_every_rule(text.as_bytes(), &mut found);
        } else {
            scanner.scan(text.as_bytes(), &mut found);
        }
    });
    let mb_per_s = text.len() as f64 / time.as_secs_f64() / 1e6;
    println!(
        "| {label} | {:.2} | {mb_per_s:.0} | {} |",
        time.as_secs_f64() * 1e3,
        found.len()
    );
    (mb_per_s, found.len())
}

/// This engine's string path over `text`: best time, MB/s, findings.
fn string_path(interceptor: &Redact, text: &str, rounds: usize) -> (Duration, f64, usize) {
    let mut found = Vec::new();
    let time = best(rounds, || {
        interceptor.scan_text(text.as_bytes(), &mut found)
    });
    (
        time,
        text.len() as f64 / time.as_secs_f64() / 1e6,
        found.len(),
    )
}

/// The previous engine's walk (the baseline): the strings under `params`,
/// `result` and `error`, with their keys as context; `blob` and image or
/// audio `data` skipped by name; keys, the envelope, encoded text and joins
/// not looked at.
fn previous_engine(scanner: &Scanner, message: &mut Value) -> usize {
    fn string(
        scanner: &Scanner,
        text: &mut String,
        key: Option<&str>,
        found: &mut Vec<redact::Finding>,
    ) -> usize {
        scanner.scan(text.as_bytes(), found);
        if let Some(key) = key
            && scanner.may_match(key.as_bytes())
        {
            let keyed = format!("{key}: {text}");
            let mut more = Vec::new();
            scanner.scan(keyed.as_bytes(), &mut more);
            let offset = key.len() + 2;
            for f in more.into_iter().filter(|f| f.start >= offset) {
                let shifted = redact::Finding {
                    start: f.start - offset,
                    end: f.end - offset,
                    match_start: f.match_start.saturating_sub(offset),
                    match_end: f.match_end - offset,
                    ..f
                };
                if !found
                    .iter()
                    .any(|g| shifted.start < g.end && g.start < shifted.end)
                {
                    found.push(shifted);
                }
            }
            found.sort_unstable_by_key(|f| f.start);
        }
        if !found.is_empty() {
            *text = scanner.redact(text, found);
        }
        found.len()
    }
    fn walk(scanner: &Scanner, value: &mut Value, found: &mut Vec<redact::Finding>) -> usize {
        match value {
            Value::String(text) => string(scanner, text, None, found),
            Value::Array(items) => items.iter_mut().map(|v| walk(scanner, v, found)).sum(),
            Value::Object(members) => {
                let binary = matches!(
                    members.get("type").and_then(Value::as_str),
                    Some("image" | "audio")
                );
                let mut count = 0;
                for (key, member) in members.iter_mut() {
                    if key == "blob" || (binary && key == "data") {
                        continue;
                    }
                    count += match member {
                        Value::String(text) => string(scanner, text, Some(key), found),
                        other => walk(scanner, other, found),
                    };
                }
                count
            }
            _ => 0,
        }
    }
    let mut found = Vec::new();
    let mut count = 0;
    if let Value::Object(message) = message {
        for part in ["params", "result", "error"] {
            if let Some(value) = message.get_mut(part) {
                count += walk(scanner, value, &mut found);
            }
        }
    }
    count
}

fn response(result: Value) -> Exchange {
    Exchange::new(
        json!({"jsonrpc": "2.0", "id": 1, "result": result}),
        Direction::ClientToServer,
        Phase::Response,
        Context::new(
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Http,
            "tools/call",
        ),
    )
}

/// A typical tool result: text content and the same data structured,
/// about 2 KiB of JSON.
fn tool_result(secret: Option<&str>) -> Value {
    let text = clean_text(4096);
    let mut body = text[..1200].to_owned();
    if let Some(secret) = secret {
        body.push_str(secret);
    }
    json!({
        "content": [{"type": "text", "text": body}],
        "structuredContent": {
            "files": [
                {"path": "src/main.rs", "size": 1234, "sha": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"},
                {"path": "README.md", "size": 8812, "sha": "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334"}
            ],
            "summary": text[1200..1500].to_owned(),
            "truncated": false
        },
        "isError": false
    })
}

fn per_call(label: &str, iterations: usize, mut work: impl FnMut()) -> f64 {
    let time = best(15, || {
        for _ in 0..iterations {
            work();
        }
    });
    let us = time.as_secs_f64() * 1e6 / iterations as f64;
    println!("| {label} | {us:.2} |");
    us
}

fn main() {
    let mut rounds = 20usize;
    let mut string_path_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(rounds);
        } else if arg == "--string-path-only" {
            string_path_only = true;
        }
    }
    let _ = common::stats; // the shared helpers are not all used here
    let scanner = redact::scanner(&RedactConfig::default()).unwrap();
    println!(
        "secret scanning: {} rules, best of {rounds} rounds, one core",
        scanner.rules().len()
    );

    let clean = clean_text(MIB);
    let interceptor = Redact::new(&RedactConfig::default()).unwrap();
    if string_path_only {
        // For a profiler: the string path alone, `rounds` times.
        let (_, mb_per_s, _) = string_path(&interceptor, &clean, rounds);
        println!("string path: {mb_per_s:.0} MB/s");
        return;
    }
    let (dense, planted) = dense_text(MIB, 512);
    println!("\n| 1 MiB scanned as one string | ms | MB/s | findings |");
    println!("|---|---:|---:|---:|");
    let (clean_fast, clean_found) = throughput(
        "clean text, keyword prefilter",
        &clean,
        &scanner,
        rounds,
        false,
    );
    let (time, string_path_mb, findings) = string_path(&interceptor, &clean, rounds);
    println!(
        "| clean text, this engine's string path (+ percent-escapes, base64 runs) | {:.2} | {string_path_mb:.0} | {findings} |",
        time.as_secs_f64() * 1e3,
    );
    let keyword_pass = best(rounds, || {
        std::hint::black_box(scanner.keyword_hits(clean.as_bytes()));
    });
    println!(
        "| clean text, the keyword pass alone | {:.2} | {:.0} | |",
        keyword_pass.as_secs_f64() * 1e3,
        clean.len() as f64 / keyword_pass.as_secs_f64() / 1e6
    );
    let (clean_slow, _) = throughput(
        "clean text, every regex (baseline)",
        &clean,
        &scanner,
        rounds.min(5),
        true,
    );
    let (dense_fast, dense_found) = throughput(
        &format!("dense text ({planted} secrets), keyword prefilter"),
        &dense,
        &scanner,
        rounds,
        false,
    );
    let (dense_slow, _) = throughput(
        "dense text, every regex (baseline)",
        &dense,
        &scanner,
        rounds.min(5),
        true,
    );
    println!(
        "\nprefilter speed-up: clean {:.1}×, dense {:.1}×; clean findings {clean_found}, dense findings {dense_found} of {planted} planted",
        clean_fast / clean_slow,
        dense_fast / dense_slow
    );

    // The same megabyte as the ~2 KiB strings messages carry.
    let chunks: Vec<&str> = {
        let mut chunks = Vec::new();
        let mut rest = clean.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(2048);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            chunks.push(head);
            rest = tail;
        }
        chunks
    };
    let mut found = Vec::new();
    let time = best(rounds, || {
        for chunk in &chunks {
            scanner.scan(chunk.as_bytes(), &mut found);
        }
    });
    println!(
        "clean text as {} strings of 2 KiB: {:.0} MB/s (previous engine's string path)",
        chunks.len(),
        clean.len() as f64 / time.as_secs_f64() / 1e6
    );
    let time = best(rounds, || {
        for chunk in &chunks {
            interceptor.scan_text(chunk.as_bytes(), &mut found);
        }
    });
    println!(
        "clean text as {} strings of 2 KiB: {:.0} MB/s (this engine's string path)",
        chunks.len(),
        clean.len() as f64 / time.as_secs_f64() / 1e6
    );
    println!(
        "\nthis engine's string path: {string_path_mb:.0} MB/s, {:.2}× the previous engine's",
        string_path_mb / clean_fast
    );

    println!("\n| `redact` interceptor, one 2 KiB tool result | µs per call |");
    println!("|---|---:|");
    let mut exchange = response(tool_result(None));
    let size = serde_json::to_vec(&exchange.message).unwrap().len();
    let iterations = 20_000;
    let previous_scanner = interceptor.scanner();
    let previous_clean = per_call(
        &format!("no secret ({size} bytes of JSON), previous engine's walk"),
        iterations,
        || {
            let findings = previous_engine(previous_scanner, &mut exchange.message);
            assert_eq!(findings, 0);
        },
    );
    let clean_call = per_call(
        &format!("no secret ({size} bytes of JSON), this engine"),
        iterations,
        || {
            let verdict = interceptor.see(&mut exchange);
            assert!(exchange.annotations.is_empty());
            std::hint::black_box(verdict);
        },
    );
    let token = format!("ghp_{}", corpus::Rng(5).pick(corpus::alphabet("alnum"), 36));
    let template = response(tool_result(Some(&token)));
    let copy = per_call(
        "copying the message (baseline for the next row)",
        iterations,
        || {
            std::hint::black_box(template.clone());
        },
    );
    let with_secret = per_call(
        "one secret, redacted (includes the copy)",
        iterations,
        || {
            let mut exchange = template.clone();
            std::hint::black_box(interceptor.see(&mut exchange));
        },
    );
    println!(
        "\nper call: {clean_call:.2} µs clean ({:.2}× the previous engine's {previous_clean:.2} µs), {:.2} µs to find and redact one secret",
        clean_call / previous_clean,
        with_secret - copy
    );
    known_tokens(&interceptor, &mut exchange, (clean_call, copy));
}

/// The same calls once the proxy knows 1,000 users' tokens (issue 47:
/// each token read from the vault is replaced wherever a message carries
/// it, `[REDACTED:user-token]`): a clean result, and one that carries a
/// user's token (one no rule finds).
fn known_tokens(interceptor: &Redact, exchange: &mut Exchange, (clean_call, copy): (f64, f64)) {
    let known = portcullis::signin::known::known();
    let mut rng = corpus::Rng(47);
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            // Opaque tokens of the lengths providers give (40 to 900).
            let length = [40, 43, 64, 120, 900][i % 5];
            rng.pick(corpus::alphabet("alnum"), length)
        })
        .collect();
    for token in &tokens {
        known.remember(token);
    }
    let iterations = 20_000;
    let clean_known = per_call("no secret, 1,000 users' tokens known", iterations, || {
        let verdict = interceptor.see(exchange);
        assert!(exchange.annotations.is_empty());
        std::hint::black_box(verdict);
    });
    let template = response(tool_result(Some(&format!(" {} ", tokens[3]))));
    let with_known = per_call(
        "a user's token, redacted (1,000 known; includes the copy)",
        iterations,
        || {
            let mut exchange = template.clone();
            std::hint::black_box(interceptor.see(&mut exchange));
        },
    );
    println!(
        "\nknown tokens: {clean_known:.2} µs clean ({:.2}× the {clean_call:.2} µs with none known), {:.2} µs to find and redact a user's token",
        clean_known / clean_call,
        with_known - copy
    );
}
