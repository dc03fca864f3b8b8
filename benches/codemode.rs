//! Code mode (`portcullis__code`), against baselines measured in the same
//! run:
//! - through the proxy over stdio (the example server's `echo`, the
//!   default chain, the audit log durable and buffered): a script making
//!   10 calls, against the same 10 calls sent by the client one after
//!   another on the same connection; and a script making none, against
//!   `ping` answered by the proxy;
//! - in process, the engine alone: a script's start-up (a fresh store and
//!   instance, QuickJS's runtime, `return 1`) and the engine's work per
//!   call (a script of 100 calls answered at once, less the empty one),
//!   against a JSON round trip of the same call in Rust; and the memory a
//!   running script holds (the engine's linear memory at its end).
//!
//! Run: `cargo bench --bench codemode` (options after `--`: `--batches N`,
//! default 300; `--starts N`, default 2000).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{StdioClient, print_table, stats};
use portcullis::codemode::{Call, Dispatch, Engine, Limits, Reply};
use serde_json::{Value, json};
use tokio::process::Command;

/// The script of ten calls, and the same ten calls as the client sends
/// them.
const TEN: &str = "const out = []; for (let i = 0; i < 10; i++) out.push(await tools.example__echo({ text: 'n' + i })); return out.length;";

fn args() -> (usize, usize) {
    let (mut batches, mut starts) = (300, 2000);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|n| n.parse().ok());
        match arg.as_str() {
            "--batches" => batches = value().unwrap_or(batches),
            "--starts" => starts = value().unwrap_or(starts),
            _ => {}
        }
    }
    (batches, starts)
}

fn config(dir: &std::path::Path, durability: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{durability}.toml"));
    std::fs::write(
        &path,
        format!(
            "[proxy]\ndata_dir = {:?}\n\n[audit]\ndurability = \"{durability}\"\n\n[code_mode]\nenabled = true\n\n[[clients]]\nname = \"bench\"\n\n[[servers]]\nname = \"example\"\nprocess = {{ command = {:?} }}\n",
            dir.join(format!("data-{durability}")),
            env!("CARGO_BIN_EXE_portcullis-example-server"),
        ),
    )
    .unwrap();
    path
}

fn code(script: &str) -> Value {
    json!({ "name": "portcullis__code", "arguments": { "script": script } })
}

/// Interleaved on one connection: 10 client calls, the script of 10, a
/// `ping`, the empty script; each `batches` times.
async fn through_proxy(config: &std::path::Path, batches: usize, durability: &str) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["stdio", "--config"])
        .arg(config)
        .args(["--client", "bench"]);
    let mut client = StdioClient::spawn(command).await;
    let echo =
        |i: usize| json!({ "name": "example__echo", "arguments": { "text": format!("n{i}") } });
    let (mut direct, mut scripted, mut pings, mut empty) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let warm = batches / 10;
    let start = Instant::now();
    for round in 0..warm + batches {
        let begin = Instant::now();
        for i in 0..10 {
            client.request("tools/call", echo(i)).await;
        }
        let ten_direct = begin.elapsed();
        let begin = Instant::now();
        let reply = client.request("tools/call", code(TEN)).await;
        let ten_scripted = begin.elapsed();
        assert_eq!(
            reply["result"]["structuredContent"]["result"], 10,
            "{reply}"
        );
        let begin = Instant::now();
        client.request("ping", json!({})).await;
        let ping = begin.elapsed();
        let begin = Instant::now();
        let reply = client.request("tools/call", code("return 1;")).await;
        let nothing = begin.elapsed();
        assert_eq!(reply["result"]["structuredContent"]["result"], 1, "{reply}");
        if round >= warm {
            direct.push(ten_direct);
            scripted.push(ten_scripted);
            pings.push(ping);
            empty.push(nothing);
        }
    }
    let elapsed = start.elapsed();
    client.finish().await;
    let direct = stats("10 `tools/call` sent by the client", direct, elapsed);
    let scripted = stats("1 script making the same 10 calls", scripted, elapsed);
    print_table(
        &format!("10 calls through the proxy, stdio, audit {durability} ({batches} batches)"),
        "vs client's 10 p50",
        &[&direct, &scripted],
        &direct,
    );
    let ping = stats("`ping` (answered by the proxy)", pings, elapsed);
    let empty = stats("a script making no call (`return 1`)", empty, elapsed);
    print_table(
        &format!("a script's own cost through the proxy, audit {durability}"),
        "vs ping p50",
        &[&ping, &empty],
        &ping,
    );
}

/// Answers every call at once with its arguments.
struct Echo;

impl Dispatch for Echo {
    fn start(&self, call: Call, reply: Reply) {
        reply.send(Ok(call.arguments));
    }
}

fn in_process(starts: usize) {
    let engine = Engine::new().unwrap();
    let tools = vec!["demo__echo".to_owned()];
    let limits = Limits::default();
    let run = |script: &str| {
        let outcome = engine.run(script, &tools, &limits, Arc::new(Echo)).unwrap();
        assert_eq!(outcome.envelope["ok"], true, "{}", outcome.envelope);
        outcome
    };
    let hundred =
        "for (let i = 0; i < 100; i++) await tools.demo__echo({ text: 'n' + i }); return 1;";
    let time = |label: &str, script: &str, count: usize| {
        for _ in 0..count / 10 {
            run(script);
        }
        let mut samples = Vec::with_capacity(count);
        let start = Instant::now();
        for _ in 0..count {
            let begin = Instant::now();
            run(script);
            samples.push(begin.elapsed());
        }
        stats(label, samples, start.elapsed())
    };
    let started = time(
        "a script's start-up and end (`return 1`)",
        "return 1;",
        starts,
    );
    let calls = time("a script making 100 calls", hundred, starts / 10);
    // The same call's JSON both ways in Rust: what any relay of it costs.
    let mut rust = Vec::with_capacity(starts);
    let start = Instant::now();
    for i in 0..starts {
        let begin = Instant::now();
        for _ in 0..100 {
            let arguments = json!({ "text": format!("n{i}") });
            let bytes = serde_json::to_vec(&arguments).unwrap();
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            std::hint::black_box(back);
        }
        rust.push(begin.elapsed());
    }
    let rust = stats("100 calls' JSON both ways in Rust", rust, start.elapsed());
    print_table(
        &format!("the engine alone, in process ({starts} starts)"),
        "vs start-up p50",
        &[&started, &calls, &rust],
        &started,
    );
    let per_call = calls.p50.saturating_sub(started.p50) / 100;
    println!(
        "\nper call in the engine: {:.1} µs (100 calls' p50 less the empty script's, over 100)",
        per_call.as_secs_f64() * 1e6
    );
    let empty = run("return 1;").memory;
    let holding =
        run("const s = 'x'.repeat(1 << 20); globalThis.keep = s; return s.length;").memory;
    let after_calls = run(hundred).memory;
    println!(
        "memory per running script (the engine's linear memory at its end): {:.2} MiB empty, {:.2} MiB after 100 calls, {:.2} MiB holding a 1 MiB string",
        empty as f64 / 1048576.0,
        after_calls as f64 / 1048576.0,
        holding as f64 / 1048576.0,
    );
}

fn main() {
    let (batches, starts) = args();
    in_process(starts);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for durability in ["durable", "buffered"] {
        let config = config(dir.path(), durability);
        runtime.block_on(through_proxy(&config, batches, durability));
    }
}
