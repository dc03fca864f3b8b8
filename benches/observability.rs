//! What metrics and traces cost per call, against both off, in one run.
//!
//! In-process: the interceptor chain (`limits`, `ratelimit` checking three
//! quotas, `schema`) on one `tools/call` request, untimed (metrics off);
//! with each interceptor timed per phase; timed plus the exchange's own
//! counts and histograms (`gateway::observe`, what the gateway does once per
//! exchange); traced (a span per interceptor, the upstream and audit spans,
//! the exchange's span handed to a queue that an exporter-less task drains);
//! and both. Then the cost of rendering one scrape.
//!
//! End to end: `tools/call` round trips through `portcullis stdio` to the
//! example server with metrics and traces off, metrics on, and metrics plus
//! traces exported over OTLP/HTTP to a receiver in this process (audit
//! buffered, so the disk's noise does not drown the difference), in
//! alternating rounds; each configuration's best round is reported.
//!
//! `cargo bench --bench observability` (options after `--`: `--iterations N`
//! per sample, default 1000; `--samples N`, default 200; `--calls N` per end
//! to end round, default 3000).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::chain::{Chain, Definition, Direction, Exchange, Interceptor, Outcome, Phase};
use portcullis::config::LimitsConfig;
use portcullis::interceptors::{Limits, Ratelimit, Schema};
use portcullis::metrics::{Exposition, Metrics};
use portcullis::traces::{Export, Span, SpanKind, Tracer};
use serde_json::json;
use tokio::process::Command;

fn call(list: &Arc<Vec<serde_json::Value>>) -> Exchange {
    let message = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "gh__create_issue", "arguments": {
            "owner": "acme", "repo": "portcullis", "title": "a bug", "body": "details"}}});
    let mut context = common::gh_call_context();
    context.request_id = Some(json!(7));
    context.definition = Some(Definition::new(list.clone(), 0));
    Exchange::new(message, Direction::ClientToServer, Phase::Request, context)
}

fn chain() -> Chain {
    let ratelimit = Ratelimit::new(&common::three_quotas(None)).expect("local budgets");
    let interceptors: Vec<Arc<dyn Interceptor>> = vec![
        Arc::new(Limits::new(LimitsConfig::default())),
        Arc::new(ratelimit),
        Arc::new(Schema::new(&Default::default())),
    ];
    Chain::new(interceptors)
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
}

fn main() {
    let (iterations, samples) = common::sampling_args(1000, 200);
    let list = Arc::new(vec![json!({
        "name": "create_issue",
        "inputSchema": {"type": "object", "properties": {
            "owner": {"type": "string"}, "repo": {"type": "string"},
            "title": {"type": "string"}, "body": {"type": "string"}},
            "required": ["owner", "repo", "title"]}
    })]);
    let template = call(&list);
    let untimed = chain();
    let metrics = Metrics::default();
    let timed = chain().timed(&metrics);
    let run = |chain: &Chain| {
        let mut exchange = template.clone();
        assert!(chain.run(&mut exchange).is_ok());
        exchange
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Traces with the exporter off: finished traces are queued and a task
    // drops them.
    let (tracer, queue) = Tracer::new(1.0);
    let export = {
        let _entered = runtime.enter();
        Export::discard(queue)
    };
    // What a traced exchange costs besides the chain's spans: its upstream
    // and audit spans, its own span described and queued.
    let traced = |chain: &Chain| {
        let mut exchange = template.clone();
        exchange.trace = tracer.start(&exchange.message);
        assert!(chain.run(&mut exchange).is_ok());
        let now = Instant::now();
        if let Some(trace) = exchange.trace.as_deref_mut() {
            let mut upstream = Span::new("upstream gh", SpanKind::Client, now, now);
            upstream
                .attributes
                .push(("portcullis.server", Arc::<str>::from("gh").into()));
            trace.push(upstream);
            trace.push(Span::new("audit commit", SpanKind::Internal, now, now));
        }
        if let Some(recording) = exchange.trace.take() {
            let root = portcullis::gateway::root_of(&exchange, &Outcome::Delivered, Some(42), "__");
            tracer.finish(recording, root);
        }
        exchange
    };
    // What the gateway does once per exchange with metrics on.
    let count = |started: Instant, exchange: &portcullis::chain::Exchange| {
        portcullis::gateway::observe(
            &metrics,
            exchange,
            &Outcome::Delivered,
            Some(Duration::from_micros(40)),
            started.elapsed(),
        );
    };
    let mut cases: Vec<common::Case> = vec![
        (
            "chain, metrics off",
            Box::new(|| {
                std::hint::black_box(run(&untimed));
            }),
        ),
        (
            "chain, each interceptor timed",
            Box::new(|| {
                std::hint::black_box(run(&timed));
            }),
        ),
        (
            "chain timed + the exchange's counts and histograms",
            Box::new(|| {
                let started = Instant::now();
                count(started, &run(&timed));
            }),
        ),
        (
            "chain traced (exporter off)",
            Box::new(|| {
                std::hint::black_box(traced(&untimed));
            }),
        ),
        (
            "chain timed + counts + traced (exporter off)",
            Box::new(|| {
                let started = Instant::now();
                count(started, &traced(&timed));
            }),
        ),
    ];
    let rows = common::best_of_rounds(&mut cases, 5, samples, iterations);
    drop(cases);
    runtime.block_on(export.finish());
    let dropped = tracer.counters().dropped.get();
    common::print_table(
        "in-process (best of 5 rounds)",
        "p50 vs off",
        &rows.iter().collect::<Vec<_>>(),
        &rows[0],
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nadded per call: timing the chain {:.2} µs, timing + counting the exchange {:.2} µs, tracing {:.2} µs, both {:.2} µs ({dropped} spans dropped on a full queue)",
        us(rows[1].p50) - us(rows[0].p50),
        us(rows[2].p50) - us(rows[0].p50),
        us(rows[3].p50) - us(rows[0].p50),
        us(rows[4].p50) - us(rows[0].p50)
    );
    let scrape = common::measure_calls("render", 50, 20, || {
        let mut out = Exposition::default();
        metrics.render(&mut out);
        std::hint::black_box(out.finish());
    });
    println!(
        "one scrape of these series renders in {:.1} µs",
        us(scrape.p50)
    );

    let calls = arg("--calls").unwrap_or(3000);
    runtime.block_on(end_to_end(calls));
}

async fn end_to_end(calls: usize) {
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let example = env!("CARGO_BIN_EXE_portcullis-example-server");
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, spans) = receiver().await;
    let config = |name: &str, metrics: bool, traces: bool| {
        let path = dir.path().join(format!("{name}.toml"));
        let traces = if traces {
            format!("\n[observability.traces]\nendpoint = \"{endpoint}\"\n")
        } else {
            String::new()
        };
        std::fs::write(
            &path,
            format!(
                "[proxy]\ndata_dir = \"data-{name}\"\n\n[audit]\ndurability = \"buffered\"\n\n[observability]\nmetrics = {metrics}\n{traces}\n[[clients]]\nname = \"bench\"\n\n[[servers]]\nname = \"example\"\nprocess = {{ command = {example:?}, args = [\"--name\", \"example\"] }}\n"
            ),
        )
        .unwrap();
        path
    };
    let configs = [
        ("metrics and traces off", config("off", false, false)),
        ("metrics on", config("metrics", true, false)),
        (
            "metrics + traces (OTLP to a local receiver)",
            config("traces", true, true),
        ),
    ];
    let mut best: Vec<Option<common::Stats>> = vec![None, None, None];
    for _ in 0..5 {
        for ((label, path), kept) in configs.iter().zip(best.iter_mut()) {
            let mut command = Command::new(portcullis);
            command
                .args(["stdio", "--config"])
                .arg(path)
                .args(["--client", "bench"]);
            let stats = common::measure_stdio(label, command, "example__echo", calls).await;
            if kept.as_ref().is_none_or(|kept| stats.p50 < kept.p50) {
                *kept = Some(stats);
            }
        }
    }
    let rows: Vec<common::Stats> = best.into_iter().flatten().collect();
    common::print_table(
        "tools/call through the proxy (stdio, best of 5 rounds)",
        "p50 vs off",
        &rows.iter().collect::<Vec<_>>(),
        &rows[0],
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nadded per call end to end at the median: metrics {:.2} µs, metrics + traces {:.2} µs ({} spans received)",
        us(rows[1].p50) - us(rows[0].p50),
        us(rows[2].p50) - us(rows[0].p50),
        spans.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// An OTLP/HTTP receiver that counts the spans it is sent.
async fn receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let spans = Arc::new(AtomicUsize::new(0));
    let counted = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let count = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .map_or(0, Vec::len);
                counted.fetch_add(count, Ordering::Relaxed);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), spans)
}
