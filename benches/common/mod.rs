//! What the benchmarks share: latency statistics and a minimal line-delimited
//! JSON-RPC client on a child's stdio.
#![allow(dead_code)]

#[path = "../../tests/common/debian.rs"]
pub mod debian;
#[path = "../../tests/common/haproxy.rs"]
pub mod haproxy;
pub mod http;
#[path = "../../tests/common/ports.rs"]
pub mod ports;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Stats {
    pub label: String,
    pub p50: Duration,
    pub p99: Duration,
    pub calls_per_sec: f64,
}

/// `--iterations N` and `--samples N` from the command line, or these
/// defaults (other arguments, such as cargo's `--bench`, are ignored).
pub fn sampling_args(iterations: usize, samples: usize) -> (usize, usize) {
    let (mut iterations, mut samples) = (iterations, samples);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|n| n.parse().ok());
        match arg.as_str() {
            "--iterations" => iterations = value().unwrap_or(iterations),
            "--samples" => samples = value().unwrap_or(samples),
            _ => {}
        }
    }
    (iterations, samples)
}

/// Per-call latency of `work`, in-process: `samples` timings of
/// `iterations` calls each (after a warm-up of ten samples' worth).
pub fn measure_calls(
    label: &str,
    samples: usize,
    iterations: usize,
    mut work: impl FnMut(),
) -> Stats {
    for _ in 0..iterations * 10 {
        work();
    }
    let mut per_call = Vec::with_capacity(samples);
    let start = Instant::now();
    for _ in 0..samples {
        let begin = Instant::now();
        for _ in 0..iterations {
            work();
        }
        per_call.push(begin.elapsed() / iterations as u32);
    }
    let mut stats = stats(label, per_call, start.elapsed());
    stats.calls_per_sec *= iterations as f64;
    stats
}

/// One in-process benchmark case: its label and its work.
pub type Case<'a> = (&'a str, Box<dyn FnMut() + 'a>);

/// Rounds of every case in turn, each case's best round (lowest p50) kept:
/// a slow spell of the machine does not land on one case alone.
pub fn best_of_rounds(
    cases: &mut [Case<'_>],
    rounds: usize,
    samples: usize,
    iterations: usize,
) -> Vec<Stats> {
    let mut best: Vec<Option<Stats>> = cases.iter().map(|_| None).collect();
    for _ in 0..rounds {
        for ((label, work), kept) in cases.iter_mut().zip(best.iter_mut()) {
            let stats = measure_calls(label, samples, iterations, work);
            if kept.as_ref().is_none_or(|kept| stats.p50 < kept.p50) {
                *kept = Some(stats);
            }
        }
    }
    best.into_iter().flatten().collect()
}

pub fn stats(label: &str, mut samples: Vec<Duration>, elapsed: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        label: label.to_owned(),
        p50: at(0.50),
        p99: at(0.99),
        calls_per_sec: samples.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// A Markdown table of latencies and throughput, each row's p50 as a ratio
/// of `baseline`'s.
pub fn print_table(title: &str, ratio: &str, rows: &[&Stats], baseline: &Stats) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\n| {title} | p50 µs | p99 µs | calls/s | {ratio} |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.2}× |",
            row.label,
            us(row.p50),
            us(row.p99),
            row.calls_per_sec,
            us(row.p50) / us(baseline.p50)
        );
    }
}

/// A Markdown table of slow operations in milliseconds, each row's p50 as a
/// ratio of `baseline`'s.
pub fn print_ms_table(title: &str, ratio: &str, rows: &[&Stats], baseline: &Stats) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\n| {title} | p50 ms | p99 ms | {ratio} |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× |",
            row.label,
            ms(row.p50),
            ms(row.p99),
            ms(row.p50) / ms(baseline.p50)
        );
    }
}

/// One small write and `fdatasync` on the disk under `dir`, `count` times:
/// what a durable commit costs at best.
pub fn measure_fsync(dir: &std::path::Path, count: usize) -> Stats {
    let mut probe = FsyncProbe::new(dir);
    let start = Instant::now();
    let samples = probe.append(count);
    stats(
        "one 256-byte write + fdatasync (same disk)",
        samples,
        start.elapsed(),
    )
}

/// Two ways to make a small write durable on the disk under a folder, to
/// compare a durable commit with: `append`, a 256-byte write that grows a
/// file and its `fdatasync` (the `fdatasync` timed); `overwrite`, a
/// 512-byte write in place in a file written whole before and its
/// `fdatasync` (both timed; no size change to journal: the cheapest
/// ordinary fsync, as `pg_test_fsync` measures it).
pub struct FsyncProbe {
    growing: std::fs::File,
    in_place: std::fs::File,
    at: u64,
}

impl FsyncProbe {
    const IN_PLACE_BYTES: u64 = 8 << 20;

    pub fn new(dir: &std::path::Path) -> Self {
        use std::os::unix::fs::FileExt;
        let growing = std::fs::File::create(dir.join("fsync-probe")).expect("create the probe");
        let in_place =
            std::fs::File::create(dir.join("fsync-probe-in-place")).expect("create the probe");
        in_place
            .write_all_at(&vec![0; Self::IN_PLACE_BYTES as usize], 0)
            .expect("fill the probe");
        in_place.sync_all().expect("fsync");
        Self {
            growing,
            in_place,
            at: 0,
        }
    }

    pub fn append(&mut self, count: usize) -> Vec<Duration> {
        use std::io::Write;
        (0..count)
            .map(|_| {
                self.growing.write_all(&[b'x'; 256]).expect("write");
                let t = Instant::now();
                self.growing.sync_data().expect("fdatasync");
                t.elapsed()
            })
            .collect()
    }

    pub fn overwrite(&mut self, count: usize) -> Vec<Duration> {
        use std::os::unix::fs::FileExt;
        (0..count)
            .map(|_| {
                let t = Instant::now();
                self.in_place
                    .write_all_at(&[b'x'; 512], self.at)
                    .expect("write");
                self.in_place.sync_data().expect("fdatasync");
                self.at = (self.at + 512) % Self::IN_PLACE_BYTES;
                t.elapsed()
            })
            .collect()
    }
}

/// A line-delimited JSON-RPC client over a child's stdio.
pub struct StdioClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl StdioClient {
    pub async fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = Self {
            child,
            stdin,
            lines,
            next_id: 1,
        };
        client
            .request("initialize", json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}))
            .await;
        client.notify("notifications/initialized").await;
        client
    }

    /// Closes stdin, as a client that is done does, and waits for the
    /// proxy to shut down (and remove its containers).
    pub async fn finish(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    pub async fn notify(&mut self, method: &str) {
        let line = format!("{}\n", json!({"jsonrpc":"2.0","method":method}));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            serde_json::to_vec(&json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
                .unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        loop {
            let line = self.lines.next_line().await.unwrap().expect("stream ended");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == json!(id) {
                assert!(message.get("result").is_some(), "call failed: {message}");
                return message;
            }
        }
    }
}

/// p50/p99 of `calls` sequential calls of `tool` (`{"text": "hello"}`),
/// after a warm-up of a tenth as many.
pub async fn measure_stdio(label: &str, command: Command, tool: &str, calls: usize) -> Stats {
    let mut client = StdioClient::spawn(command).await;
    let params = json!({"name": tool, "arguments": {"text": "hello"}});
    for _ in 0..calls / 10 {
        client.request("tools/call", params.clone()).await;
    }
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        client.request("tools/call", params.clone()).await;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    client.finish().await;
    stats(label, samples, elapsed)
}

pub const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
pub const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;

/// Builds the example server's image (`scripts/build-test-image.sh`) and
/// returns its reference.
pub fn build_image() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/build-test-image.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "building the image failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

/// `docker run --rm -i IMAGE`: start, initialize, one call, its reply.
pub async fn bare_engine_start(image: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            image,
            "--name",
            "example",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(format!("{INIT}\n{INITIALIZED}\n{CALL}\n").as_bytes())
        .await
        .unwrap();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the server answers");
        if line.contains("\"id\":1") {
            break;
        }
    }
    let elapsed = started.elapsed();
    drop(stdin);
    let _ = child.wait().await;
    elapsed
}

/// `[ratelimit]` with three quotas no run uses up (every client, server
/// `gh`, tool `gh__create_issue`), so every check passes and costs what a
/// passing check costs; their budgets here or in the Redis `shared` names.
pub fn three_quotas(
    shared: Option<portcullis::config::SharedConfig>,
) -> portcullis::config::RatelimitConfig {
    use portcullis::config::{RateRule, RateScope};
    let rule = |scope: RateScope, key: &str| RateRule {
        client: None,
        scope,
        quota: "1000000000/s".parse().expect("a quota"),
        key: key.into(),
    };
    portcullis::config::RatelimitConfig {
        rules: vec![
            rule(RateScope::Client, "default"),
            rule(RateScope::Server("gh".into()), "server"),
            rule(
                RateScope::Tool {
                    server: "gh".into(),
                    tool: "create_issue".into(),
                },
                "tool",
            ),
        ],
        concurrency: Vec::new(),
        shared,
    }
}

/// The context of a `tools/call` of `gh__create_issue` by `claude-desktop`
/// over HTTP, routed to server `gh`.
pub fn gh_call_context() -> portcullis::chain::Context {
    let mut context = portcullis::chain::Context::new(
        std::sync::Arc::from("session-1"),
        portcullis::chain::ClientIdentity::new("claude-desktop", &[]),
        portcullis::chain::Transport::Http,
        "tools/call",
    );
    context.server = Some(std::sync::Arc::from("gh"));
    context.target = Some("create_issue".to_owned());
    context
}
