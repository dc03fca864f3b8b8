//! What sharing quotas across replicas costs per call: a `tools/call`
//! request through the chain and its admission with three quotas (client,
//! server and tool level) kept by this process (the baseline), and the
//! same quotas kept in Redis (`[ratelimit.shared]`: one script per check,
//! a round trip to a Redis on loopback).
//!
//! `cargo bench --bench fleet` (options after `--`: `--iterations N` per
//! sample, default 100; `--samples N`, default 100). Needs `redis-server`
//! (Debian's `redis-server` package) on `PATH`: it is started on a free
//! loopback port for the run. Five rounds of each case in turn; each
//! case's best round is reported.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use portcullis::chain::{Chain, Direction, Exchange, Interceptor, Phase};
use portcullis::config::{LimitsConfig, SharedConfig, Unavailable};
use portcullis::interceptors::{Limits, Ratelimit};
use serde_json::json;

fn call() -> Exchange {
    let message = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "gh__create_issue", "arguments": {"title": "a bug"}}});
    let context = common::gh_call_context();
    Exchange::new(message, Direction::ClientToServer, Phase::Request, context)
}

/// A chain of `limits` and `ratelimit` with three quotas no run uses up,
/// their budgets here or in the Redis `shared` names.
fn chain(shared: Option<SharedConfig>) -> Chain {
    let limit = Arc::new(Ratelimit::new(&common::three_quotas(shared)).expect("the limiter"));
    let interceptors: Vec<Arc<dyn Interceptor>> =
        vec![Arc::new(Limits::new(LimitsConfig::default())), limit];
    Chain::new(interceptors)
}

async fn run_chain(chain: &Chain, template: &Exchange) {
    let mut exchange = template.clone();
    assert!(
        chain.decide(&mut exchange, true).await.is_ok(),
        "the benchmarked call is never refused"
    );
}

fn main() {
    let (iterations, samples) = common::sampling_args(100, 100);
    let redis = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let mut server = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(redis.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("this benchmark needs `redis-server` (apt-get install redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen");
    });
    let local = chain(None);
    let shared = chain(Some(SharedConfig {
        redis: format!("redis://127.0.0.1:{port}"),
        password: None,
        on_unavailable: Unavailable::Refuse,
        timeout: std::time::Duration::from_secs(1),
        prefix: "bench".into(),
        lease: std::time::Duration::from_secs(15),
    }));
    let one = call();
    // The connection is made by the first check, before any is timed.
    runtime.block_on(run_chain(&shared, &one));
    let mut cases: Vec<common::Case> = vec![
        (
            "3 quotas, budgets in this process",
            Box::new(|| runtime.block_on(run_chain(&local, &one))),
        ),
        (
            "3 quotas, budgets in Redis (shared)",
            Box::new(|| runtime.block_on(run_chain(&shared, &one))),
        ),
    ];
    let best = common::best_of_rounds(&mut cases, 5, samples, iterations);
    let [here, in_redis] = &best[..] else {
        unreachable!("two cases");
    };
    common::print_table(
        "tools/call through the chain and its admission",
        "p50 vs budgets here",
        &best.iter().collect::<Vec<_>>(),
        here,
    );
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    println!(
        "\na shared quota check adds {:.1} µs per call at the median ({:.1} µs at p99)",
        us(in_redis.p50) - us(here.p50),
        us(in_redis.p99) - us(here.p99)
    );
    sessions_compared(&runtime, port, samples, iterations);
    let (seconds, counts) = replica_args();
    runtime.block_on(replicas_behind_haproxy(seconds, &counts));
    let _ = server.kill();
    let _ = server.wait();
}

/// The two ways a replica could serve a session another began, each on its
/// own path when it does not hold the session: the sealed id opened (what
/// `[proxy] session_keys` does), and the state kept in Redis read back
/// (the alternative), with what each costs when a session begins.
fn sessions_compared(
    runtime: &tokio::runtime::Runtime,
    port: u16,
    samples: usize,
    iterations: usize,
) {
    use portcullis::chain::ClientIdentity;
    use portcullis::downstream::sealed::Sealer;
    let key = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned();
    let sealer = Sealer::from_hex(&[key], std::time::Duration::from_secs(3600)).unwrap();
    let client = ClientIdentity::new("bench", &["dev".to_owned()]);
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {}, "roots": {"listChanged": true}},
        "clientInfo": {"name": "bench-agent", "version": "1"}}});
    let id = sealer.seal(&client, &initialize).unwrap();
    // The same state, as the Redis design would keep it under the id.
    let state = serde_json::to_string(&sealer.open(&id, &client).unwrap()).unwrap();
    let redis = runtime.block_on(async {
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    });
    let key = format!(
        "bench:session:{}",
        portcullis::downstream::sealed::record_id(&id)
    );
    let set = |redis: &redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        let (key, state) = (key.clone(), state.clone());
        async move {
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(&state)
                .arg("EX")
                .arg(86_400)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    };
    runtime.block_on(set(&redis));
    let read = |redis: &redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let text: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let state: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(state.get("v").is_some());
        }
    };
    let mut cases: Vec<common::Case> = vec![
        (
            "resume: sealed id opened and checked",
            Box::new(|| assert!(sealer.open(&id, &client).is_some())),
        ),
        (
            "resume: state read from Redis (GET, parse)",
            Box::new(|| runtime.block_on(read(&redis))),
        ),
        (
            "begin: id sealed",
            Box::new(|| assert!(sealer.seal(&client, &initialize).is_ok())),
        ),
        (
            "begin: state written to Redis (SET EX)",
            Box::new(|| runtime.block_on(set(&redis))),
        ),
    ];
    let best = common::best_of_rounds(&mut cases, 5, samples, iterations);
    common::print_table(
        "a session another replica began",
        "p50 vs the sealed id",
        &best.iter().collect::<Vec<_>>(),
        &best[0],
    );
    println!(
        "sealed id length for this session: {} characters (a UUID: 36)",
        id.len()
    );
}

/// `--seconds S` per phase (default 5) and `--sessions N,M` (default
/// 16,128) from the command line.
fn replica_args() -> (u64, Vec<usize>) {
    let (mut seconds, mut counts) = (5, vec![16, 128]);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|n| n.parse().ok()).unwrap_or(seconds),
            "--sessions" => {
                if let Some(list) = args.next() {
                    counts = list.split(',').filter_map(|n| n.parse().ok()).collect();
                }
            }
            _ => {}
        }
    }
    (seconds, counts)
}

/// `portcullis serve` replicas of one config (sealed sessions, the example
/// server, the audit log durable in each replica's store) behind HAProxy
/// with the example's configuration: one replica, then three, each with
/// 16 and 128 sessions calling for `seconds`.
async fn replicas_behind_haproxy(seconds: u64, counts: &[usize]) {
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let example = env!("CARGO_BIN_EXE_portcullis-example-server");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(
        &key,
        "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    )
    .unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        common::http::TOKEN.as_bytes(),
    ));
    let mut rows = Vec::new();
    for replicas in [1usize, 3] {
        let mut running = Vec::new();
        let mut backends = Vec::new();
        for n in 0..replicas {
            let port = common::ports::free_port();
            let config = dir.path().join(format!("replica-{replicas}-{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data-{replicas}-{n}\"\nmax_sessions = 1000\nmax_sessions_per_client = 1000\nsession_keys = [\"file:{}\"]\n\n[listener]\nmax_connections_per_ip = 1024\n\n[[clients]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\n\n[[servers]]\nname = \"example\"\nprocess = {{ command = {example:?}, args = [\"--name\", \"example\"] }}\n",
                    key.display()
                ),
            )
            .unwrap();
            running.push(common::http::start_http_proxy(portcullis, &config).await);
            backends.push((format!("replica-{n}"), port));
        }
        let named: Vec<(&str, u16)> = backends.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        let haproxy = common::haproxy::Haproxy::start(&named).await;
        for &sessions in counts {
            let label = format!(
                "HAProxy, {replicas} replica{}",
                if replicas == 1 { "" } else { "s" }
            );
            rows.push(
                common::http::many_sessions(&haproxy.url(), None, &label, sessions, seconds).await,
            );
        }
        drop(haproxy);
        drop(running);
    }
    let baseline = &rows[0];
    common::print_table(
        "replicas behind HAProxy (tools/call, each session on its own connection)",
        "p50 vs the first row",
        &rows.iter().collect::<Vec<_>>(),
        baseline,
    );
    for (n, sessions) in counts.iter().enumerate() {
        let (one, three) = (&rows[n], &rows[counts.len() + n]);
        println!(
            "{sessions} sessions: 3 replicas / 1 replica calls/s {:.2}×, p50 {:.2}×, p99 {:.2}×",
            three.calls_per_sec / one.calls_per_sec,
            three.p50.as_secs_f64() / one.p50.as_secs_f64(),
            three.p99.as_secs_f64() / one.p99.as_secs_f64(),
        );
    }
}
