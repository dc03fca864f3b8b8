//! `tools/call` round trips through the proxy against the same client talking
//! to the same upstream directly, in one run.
//!
//! Run: `cargo bench --bench roundtrip` (options after `--`: `--calls N`,
//! `--seconds S` for the concurrent phase). Prints a Markdown table with
//! p50/p99 latency, calls/s and the ratios to the direct baseline.
//!
//! The clients are minimal (a JSON-RPC client on pipes, an HTTP/1.1 client
//! on one kept-alive connection; one request in flight, no SDK overhead) so
//! that what is measured is the transport and the proxy. The HTTP `ping` line
//! (answered by the proxy itself) shows what the HTTP transport alone costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::{measure_stdio, print_table, stats};

const TOKEN: &str = "bench-token";

/// A streamable HTTP session over one kept-alive connection, with a minimal
/// HTTP/1.1 client (as the stdio client is a minimal JSON-RPC client): what
/// is measured is the transport and the proxy, not an HTTP library. It sends
/// the headers a real client sends (`Accept: application/json,
/// text/event-stream`, bearer token, session, protocol version).
struct HttpClient {
    stream: BufReader<TcpStream>,
    host: String,
    path: String,
    session: Option<String>,
    next_id: u64,
}

impl HttpClient {
    async fn connect(url: &str) -> Self {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let tcp = TcpStream::connect(host).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut client = Self {
            stream: BufReader::new(tcp),
            host: host.to_owned(),
            path: path.to_owned(),
            session: None,
            next_id: 1,
        };
        let (headers, _) = client
            .post(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}))
            .await;
        let session = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| value.trim().to_owned())
            })
            .expect("an Mcp-Session-Id header");
        client.session = Some(session);
        client
            .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        client
    }

    /// One POST; returns the response's headers and body. Replies must carry
    /// a Content-Length (the proxy answers a lone reply as plain JSON).
    async fn post(&mut self, message: Value) -> (String, String) {
        let body = serde_json::to_vec(&message).unwrap();
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
            self.path,
            self.host,
            body.len()
        );
        if let Some(session) = &self.session {
            request.push_str(&format!(
                "mcp-session-id: {session}\r\nmcp-protocol-version: 2025-06-18\r\n"
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        self.stream.get_mut().write_all(&bytes).await.unwrap();

        let mut headers = String::new();
        let mut length = None;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
            headers.push_str(&line);
        }
        assert!(headers.starts_with("HTTP/1.1 2"), "HTTP error: {headers}");
        let length = length.unwrap_or_else(|| panic!("no content-length in {headers}"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        (headers, String::from_utf8(body).unwrap())
    }

    async fn ping(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (_, body) = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"ping"}))
            .await;
        assert!(body.contains("\"result\""), "ping failed: {body}");
    }

    async fn call(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (_, body) = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"example__echo","arguments":{"text":"hello"}}}))
            .await;
        assert!(body.contains("\"result\""), "call failed: {body}");
    }
}

fn write_config(
    dir: &std::path::Path,
    example: &str,
    listen: bool,
    durability: &str,
) -> std::path::PathBuf {
    let hash = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let listen = if listen {
        "listen = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let text = format!(
        "[proxy]\n{listen}max_sessions = 100\ndata_dir = \"data-{durability}\"\n\n[audit]\ndurability = \"{durability}\"\n\n[[clients]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\n\n[[servers]]\nname = \"example\"\nprocess = {{ command = {example:?}, args = [\"--name\", \"example\"] }}\n"
    );
    let path = dir.join(if listen.is_empty() {
        format!("stdio-{durability}.toml")
    } else {
        format!("http-{durability}.toml")
    });
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_http_proxy(portcullis: &str, config: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(portcullis)
        .args(["serve", "--config"])
        .arg(config)
        .env("PORTCULLIS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("proxy exited");
        if line.contains("listening for MCP")
            && let Some(addr) = line.split("addr=").nth(1)
        {
            break addr.split_whitespace().next().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}/mcp"))
}

fn main() {
    let mut calls = 5000usize;
    let mut seconds = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(calls),
            "--seconds" => seconds = args.next().and_then(|n| n.parse().ok()).unwrap_or(seconds),
            _ => {} // cargo bench passes `--bench`
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(calls, seconds));
}

async fn run(calls: usize, seconds: u64) {
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let example = env!("CARGO_BIN_EXE_portcullis-example-server");
    let dir = tempfile::tempdir().unwrap();

    let mut direct = Command::new(example);
    direct.args(["--name", "example"]);
    let direct = measure_stdio("direct (stdio)", direct, "echo", calls).await;

    let stdio_config = write_config(dir.path(), example, false, "durable");
    let mut proxied = Command::new(portcullis);
    proxied
        .args(["stdio", "--config"])
        .arg(&stdio_config)
        .args(["--client", "bench"]);
    let proxied = measure_stdio(
        "proxied (stdio), audit durable",
        proxied,
        "example__echo",
        calls,
    )
    .await;

    let buffered_config = write_config(dir.path(), example, false, "buffered");
    let mut buffered = Command::new(portcullis);
    buffered
        .args(["stdio", "--config"])
        .arg(&buffered_config)
        .args(["--client", "bench"]);
    let buffered = measure_stdio(
        "proxied (stdio), audit buffered",
        buffered,
        "example__echo",
        calls,
    )
    .await;

    let fsync = common::measure_fsync(dir.path(), calls.min(2000));

    let http_config = write_config(dir.path(), example, true, "durable");
    let (_proxy, url) = start_http_proxy(portcullis, &http_config).await;
    let mut client = HttpClient::connect(&url).await;
    for _ in 0..calls / 10 {
        client.call().await;
    }
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        client.call().await;
        samples.push(t.elapsed());
    }
    let http_one = stats("proxied (HTTP, 1 session)", samples, start.elapsed());
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        client.ping().await;
        samples.push(t.elapsed());
    }
    let http_ping = stats(
        "ping answered by the proxy (HTTP)",
        samples,
        start.elapsed(),
    );

    let sessions = 16;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let mut all_samples = Vec::new();
    let start = Instant::now();
    for _ in 0..sessions {
        let url = url.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(&url).await;
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.call().await;
                samples.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            samples
        }));
    }
    for task in tasks {
        all_samples.extend(task.await.unwrap());
    }
    let http_many = stats("proxied (HTTP, 16 sessions)", all_samples, start.elapsed());

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    print_table(
        "path",
        "p50 vs direct stdio",
        &[
            &direct, &buffered, &proxied, &fsync, &http_one, &http_ping, &http_many,
        ],
        &direct,
    );
    println!(
        "\nproxied/direct stdio p50: {:.2}× with the audit log buffered (goal ≤ 2.2×), {:.2}× durable; durable adds {:.0} µs over buffered, one fsync here takes {:.0} µs; HTTP 1-session p50 / proxied stdio p50 (durable): {:.2}× (goal ≤ 1.5×)",
        us(buffered.p50) / us(direct.p50),
        us(proxied.p50) / us(direct.p50),
        us(proxied.p50) - us(buffered.p50),
        us(fsync.p50),
        us(http_one.p50) / us(proxied.p50)
    );
    println!(
        "calls per measurement: {calls}; concurrent phase: {seconds} s; done {}",
        done.load(Ordering::Relaxed)
    );
}
