//! What a server can make the proxy hold, and what the egress guard costs,
//! against baselines measured in the same run:
//! - memory per listed tool: the proxy's resident memory once a server's
//!   lists are read (`tests/fixtures/list_flood_server.py`, N small tools),
//!   less the same proxy's with a server that lists none, divided by N;
//!   with `PORTCULLIS_BASELINE_BIN=PATH` (a build of an earlier commit) the
//!   same is measured for that binary, and the ratio printed;
//! - the proxy at the list caps: a server listing 100 000 tools, then empty
//!   pages for ever, under the default caps, against the proxy with an
//!   empty server;
//! - the egress check per connection: a request on a new connection each
//!   time to a loopback server, through `egress::HttpClient` (the guard
//!   resolves the name and checks each address), against reqwest's own
//!   client with its default resolver, no redirect either.
//!
//! Run: `cargo bench --bench budgets` (options after `--`: `--tools N`,
//! `--connections N`).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{print_table, stats};
use portcullis::config::EgressConfig;
use portcullis::egress::{self, HttpClient, Timeouts, Trust};

fn arg(name: &str, default: usize) -> usize {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next().and_then(|n| n.parse().ok()).unwrap_or(default);
        }
    }
    default
}

/// A proxy over stdio (`binary`) with the flood server listing `tools`
/// (and `extra` arguments): its resident memory, in KiB, once its first
/// `initialize` is answered (the lists are read by then) and settled.
fn resident_kib(binary: &str, tools: usize, extra: &[&str]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let server = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/list_flood_server.py"
    );
    let mut args = vec![server.to_owned(), "--tools".into(), tools.to_string()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\ndata_dir = {:?}\n[[clients]]\nname = \"bench\"\n[[servers]]\nname = \"f\"\ntimeout = \"300s\"\nprocess = {{ command = \"python3\", args = {args:?} }}\n[audit]\ndurability = \"buffered\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(binary)
        .args(["stdio", "--client", "bench", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the proxy");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "{}", common::INIT).unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("\"result\""), "initialize: {line}");
    // Settled: what was freed after the read is freed.
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    drop(stdin);
    let _ = child.wait();
    kib
}

/// KiB per listed tool of `binary` (the median of three runs of each).
fn per_tool(binary: &str, tools: usize) -> (u64, u64, f64) {
    let median = |mut runs: Vec<u64>| {
        runs.sort_unstable();
        runs[runs.len() / 2]
    };
    let empty = median((0..3).map(|_| resident_kib(binary, 0, &[])).collect());
    let full = median((0..3).map(|_| resident_kib(binary, tools, &[])).collect());
    (
        empty,
        full,
        full.saturating_sub(empty) as f64 / tools as f64,
    )
}

fn memory(tools: usize) {
    let binary = env!("CARGO_BIN_EXE_portcullis");
    println!(
        "\n| proxy | RSS, no tools (KiB) | RSS, {tools} tools (KiB) | KiB per tool | vs this build |"
    );
    println!("|---|---:|---:|---:|---:|");
    let (empty, full, this) = per_tool(binary, tools);
    println!("| this build | {empty} | {full} | {this:.2} | 1.00× |");
    if let Ok(baseline) = std::env::var("PORTCULLIS_BASELINE_BIN") {
        let (empty, full, before) = per_tool(&baseline, tools);
        println!(
            "| baseline ({baseline}) | {empty} | {full} | {before:.2} | {:.2}× |",
            before / this
        );
    }
    // The caps: 100 000 tools and endless pages, the default limits.
    let at_caps = resident_kib(binary, 100_000, &["--endless"]);
    let empty = resident_kib(binary, 0, &[]);
    println!("\n| proxy with one server | RSS (KiB) | vs an empty server |");
    println!("|---|---:|---:|");
    println!("| an empty server | {empty} | 1.00× |");
    println!(
        "| 100 000 tools and endless pages, cut at the default caps | {at_caps} | {:.2}× |",
        at_caps as f64 / empty as f64
    );
}

/// A loopback server answering every request on a connection of its own.
fn http_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

fn egress_cost(connections: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = http_server();
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        total: Some(Duration::from_secs(30)),
    };
    let guarded = HttpClient::new(&EgressConfig::default(), Trust::Written, &[], timeouts).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("http://{host}:{port}/");
        let time = |guard: bool| {
            runtime.block_on(async {
                let mut samples = Vec::with_capacity(connections);
                let start = Instant::now();
                for _ in 0..connections {
                    let begin = Instant::now();
                    let request = match guard {
                        true => guarded.request_to(reqwest::Method::GET, &url).unwrap(),
                        false => plain.get(&url),
                    };
                    let response = egress::send(request.header("connection", "close"))
                        .await
                        .unwrap();
                    let _ = response.bytes().await;
                    samples.push(begin.elapsed());
                }
                (samples, start.elapsed())
            })
        };
        // Each in turn, twice: the second round is measured.
        let _ = (time(false), time(true));
        let (samples, elapsed) = time(false);
        let baseline = stats(&format!("reqwest, `{host}`"), samples, elapsed);
        let (samples, elapsed) = time(true);
        let checked = stats(&format!("egress::HttpClient, `{host}`"), samples, elapsed);
        rows.push((baseline, checked));
    }
    for (baseline, checked) in &rows {
        print_table(
            "a request on a new connection",
            "vs reqwest",
            &[baseline, checked],
            baseline,
        );
    }
}

fn main() {
    let tools = arg("--tools", 10_000);
    let connections = arg("--connections", 2_000);
    memory(tools);
    egress_cost(connections);
}
