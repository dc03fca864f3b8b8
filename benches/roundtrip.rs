//! `tools/call` round trips through the proxy against the same client talking
//! to the same upstream directly, in one run.
//!
//! Run: `cargo bench --bench roundtrip` (options after `--`: `--calls N`,
//! `--seconds S` for the concurrent phase; `--turns durable|buffered` runs
//! only the 2026-07-28 stateless against 2025 session comparison, with the
//! audit log so). Prints a Markdown table with
//! p50/p99 latency, calls/s and the ratios to the direct baseline.
//!
//! The clients are minimal (a JSON-RPC client on pipes, an HTTP/1.1 client
//! on one kept-alive connection; one request in flight, no SDK overhead) so
//! that what is measured is the transport and the proxy. The HTTP `ping` line
//! (answered by the proxy itself) shows what the HTTP transport alone costs.
//! The HTTPS lines are the same client over TLS (rustls, TLS 1.3) to the
//! same proxy configured with `[listener] tls_cert`/`tls_key` (a P-256
//! certificate the bench makes with the `openssl` command).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use common::{measure_stdio, print_table, stats};

use common::http::{HttpClient, TOKEN, many_sessions, start_http_proxy};

/// A CA and a certificate for localhost/127.0.0.1 signed by it, made with
/// `openssl` in `dir`: the connector that trusts the CA, and the
/// `[listener]` keys that serve the certificate.
fn tls_setup(dir: &std::path::Path) -> (tokio_rustls::TlsConnector, String) {
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command (the HTTPS lines need it)");
        assert!(output.status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=bench CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let listener = format!(
        "\n[listener]\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("server.pem"),
        dir.join("server.key")
    );
    (tokio_rustls::TlsConnector::from(Arc::new(config)), listener)
}

/// Calls through one session (after a warm-up of a tenth as many), then
/// pings through it: the two lines' stats.
async fn one_session(
    url: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    label: &str,
    calls: usize,
) -> (common::Stats, common::Stats) {
    let mut client = HttpClient::connect(url, tls).await;
    let one = timed_calls(&mut client, &format!("proxied ({label}, 1 session)"), calls).await;
    let mut samples = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        client.ping().await;
        samples.push(t.elapsed());
    }
    let ping = stats(
        &format!("ping answered by the proxy ({label})"),
        samples,
        start.elapsed(),
    );
    (one, ping)
}

/// A 2026-07-28 client (no session; the envelope and headers on each
/// request) against a 2025 session client, each on its own kept-alive
/// connection to the same proxy, call for call in turn (after a warm-up of
/// a tenth as many each): both see the same moments of the machine and the
/// same audit log, so their ratio is not the hour's noise.
async fn stateless_against_session(url: &str, calls: usize) -> (common::Stats, common::Stats) {
    let mut session = HttpClient::connect(url, None).await;
    let mut stateless = HttpClient::stateless(url).await;
    for _ in 0..calls / 10 {
        session.call().await;
        stateless.call().await;
    }
    let (mut in_session, mut without) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let (mut session_time, mut stateless_time) = (Duration::ZERO, Duration::ZERO);
    for n in 0..calls {
        // Who goes first alternates too.
        for turn in [n % 2 == 0, n % 2 != 0] {
            let t = Instant::now();
            if turn {
                session.call().await;
                let took = t.elapsed();
                session_time += took;
                in_session.push(took);
            } else {
                stateless.call().await;
                let took = t.elapsed();
                stateless_time += took;
                without.push(took);
            }
        }
    }
    (
        stats(
            "proxied (HTTP, 2025-11-25 session, in turn with the next)",
            in_session,
            session_time,
        ),
        stats(
            "proxied (HTTP, 2026-07-28 stateless, in turn with the above)",
            without,
            stateless_time,
        ),
    )
}

/// `calls` calls through `client`, timed one by one, after a warm-up of a
/// tenth as many.
async fn timed_calls(client: &mut HttpClient, label: &str, calls: usize) -> common::Stats {
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
    stats(label, samples, start.elapsed())
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

fn main() {
    let mut calls = 5000usize;
    let mut seconds = 5u64;
    let mut turns = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(calls),
            "--seconds" => seconds = args.next().and_then(|n| n.parse().ok()).unwrap_or(seconds),
            "--turns" => turns = args.next(),
            _ => {} // cargo bench passes `--bench`
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match turns {
        Some(durability) => runtime.block_on(only_turns(calls, &durability)),
        None => runtime.block_on(run(calls, seconds)),
    }
}

/// The stateless against session comparison alone (`--turns`).
async fn only_turns(calls: usize, durability: &str) {
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let example = env!("CARGO_BIN_EXE_portcullis-example-server");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), example, true, durability);
    let (_proxy, url) = start_http_proxy(portcullis, &config).await;
    let (session, stateless) = stateless_against_session(&url, calls).await;
    print_table("path", "vs the session", &[&session, &stateless], &session);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "2026-07-28 stateless / 2025-11-25 session (HTTP, audit {durability}, call for call in turn): p50 {:.3}×, p99 {:.3}×, calls/s {:.3}×",
        us(stateless.p50) / us(session.p50),
        us(stateless.p99) / us(session.p99),
        stateless.calls_per_sec / session.calls_per_sec,
    );
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
    let (http_one, http_ping) = one_session(&url, None, "HTTP", calls).await;
    let (http_turns, http_stateless) = stateless_against_session(&url, calls).await;
    let http_many = many_sessions(&url, None, "HTTP", 16, seconds).await;

    // The same over TLS: another proxy on the same config with TLS keys.
    let (connector, listener) = tls_setup(dir.path());
    let https_config = dir.path().join("https-durable.toml");
    let text = std::fs::read_to_string(&http_config)
        .unwrap()
        .replace("data_dir = \"data-durable\"", "data_dir = \"data-https\"");
    std::fs::write(&https_config, format!("{text}{listener}")).unwrap();
    let (_tls_proxy, tls_url) = start_http_proxy(portcullis, &https_config).await;
    let tls_url = tls_url.replacen("http://", "https://", 1);
    let (https_one, https_ping) = one_session(&tls_url, Some(&connector), "HTTPS", calls).await;
    let https_many = many_sessions(&tls_url, Some(&connector), "HTTPS", 16, seconds).await;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    print_table(
        "path",
        "p50 vs direct stdio",
        &[
            &direct,
            &buffered,
            &proxied,
            &fsync,
            &http_one,
            &http_turns,
            &http_stateless,
            &http_ping,
            &http_many,
            &https_one,
            &https_ping,
            &https_many,
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
        "HTTPS / HTTP, same run: 1 session p50 {:.2}×, ping p50 {:.2}×, 16 sessions calls/s {:.2}× (p50 {:.2}×)",
        us(https_one.p50) / us(http_one.p50),
        us(https_ping.p50) / us(http_ping.p50),
        https_many.calls_per_sec / http_many.calls_per_sec,
        us(https_many.p50) / us(http_many.p50),
    );
    println!(
        "2026-07-28 stateless / 2025-11-25 session (HTTP, same proxy, call for call in turn): p50 {:.2}×, p99 {:.2}×, calls/s {:.2}×",
        us(http_stateless.p50) / us(http_turns.p50),
        us(http_stateless.p99) / us(http_turns.p99),
        http_stateless.calls_per_sec / http_turns.calls_per_sec,
    );
    println!("calls per measurement: {calls}; concurrent phase: {seconds} s each");
}
