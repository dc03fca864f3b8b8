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
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
    let admissions: Vec<Arc<dyn portcullis::chain::Admission>> = if limit.is_shared() {
        vec![limit.clone()]
    } else {
        Vec::new()
    };
    let interceptors: Vec<Arc<dyn Interceptor>> =
        vec![Arc::new(Limits::new(LimitsConfig::default())), limit];
    Chain::new(interceptors).with_admissions(admissions)
}

async fn run_chain(chain: &Chain, template: &Exchange) {
    let mut exchange = template.clone();
    assert!(chain.run(&mut exchange).is_ok());
    assert!(
        chain.admit(&exchange).await.is_ok(),
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
    let _ = server.kill();
    let _ = server.wait();
}
