//! What the guards cost per call: the interceptor chain on a `tools/call`
//! request without them (the baseline, `limits` alone); with `ratelimit`
//! checking three quotas (client, server and tool level), for one client and
//! for calls spread over 1,000 clients; with `schema` validating the
//! arguments against a typical tool's input schema; with `pinning` checking
//! the tool against its pin (cached judgement, and a fresh definition every
//! call: hash and poisoning scan); and with all three.
//!
//! `cargo bench --bench guards` (options after `--`: `--iterations N` per
//! sample, default 1000; `--samples N`, default 200). Five rounds of every
//! case in turn; each case's best round is reported.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use portcullis::chain::{
    Chain, ClientIdentity, Context, Definition, Direction, Exchange, Interceptor, Phase, Transport,
};
use portcullis::config::LimitsConfig;
use portcullis::interceptors::{Limits, Pinning, Ratelimit, Schema};
use serde_json::json;

/// A typical tool: a few typed properties, required ones, an enum, a
/// bounded array, a pattern.
fn tool_list() -> Arc<Vec<serde_json::Value>> {
    Arc::new(vec![json!({
        "name": "create_issue",
        "description": "Open an issue",
        "inputSchema": {
            "type": "object",
            "properties": {
                "owner": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
                "repo": {"type": "string", "minLength": 1, "maxLength": 100},
                "title": {"type": "string", "minLength": 1},
                "body": {"type": "string"},
                "labels": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
                "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                "assignee_id": {"type": "integer", "minimum": 1}
            },
            "required": ["owner", "repo", "title"],
            "additionalProperties": false
        }
    })])
}

fn call(client: &str, list: &Arc<Vec<serde_json::Value>>) -> Exchange {
    let message = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "gh__create_issue", "arguments": {
            "owner": "acme", "repo": "portcullis", "title": "a bug", "body": "details of the bug",
            "labels": ["bug", "p2"], "priority": "high", "assignee_id": 42}}});
    let mut context = Context::new(
        Arc::from("session-1"),
        ClientIdentity::new(client, &[]),
        Transport::Http,
        "tools/call",
    );
    context.server = Some(Arc::from("gh"));
    context.target = Some("create_issue".to_owned());
    context.request_id = Some(json!(7));
    context.definition = Some(Definition::new(list.clone(), 0));
    Exchange::new(message, Direction::ClientToServer, Phase::Request, context)
}

fn run_chain(chain: &Chain, template: &Exchange) {
    let mut exchange = template.clone();
    let result = chain.run(&mut exchange);
    assert!(result.is_ok(), "the benchmarked call is never refused");
}

fn main() {
    let (iterations, samples) = common::sampling_args(1000, 200);
    let rounds = 5;
    // Quotas no benchmark run can use up, so every check passes and costs
    // what a passing check costs.
    let ratelimit = Ratelimit::new(&common::three_quotas(None)).expect("local budgets");
    let limits: Arc<dyn Interceptor> = Arc::new(Limits::new(LimitsConfig::default()));
    let baseline_chain = Chain::new(vec![limits.clone()]);
    let ratelimit: Arc<dyn Interceptor> = Arc::new(ratelimit);
    let with_ratelimit = Chain::new(vec![limits.clone(), ratelimit.clone()]);
    let schema: Arc<dyn Interceptor> = Arc::new(Schema::new(&Default::default()));
    let with_schema = Chain::new(vec![limits.clone(), schema.clone()]);
    let pins = tempfile::tempdir().unwrap();
    let pinning: Arc<dyn Interceptor> = Arc::new(
        Pinning::new(
            &portcullis::config::PinningConfig::in_data_dir(pins.path()),
            "__",
        )
        .unwrap(),
    );
    let with_pinning = Chain::new(vec![limits.clone(), pinning.clone()]);
    let with_all = Chain::new(vec![limits, ratelimit, pinning, schema]);

    let list = tool_list();
    let one = call("claude-desktop", &list);
    let many: Vec<Exchange> = (0..1000)
        .map(|n| call(&format!("client-{n}"), &list))
        .collect();
    // The same definition in a fresh list every call: nothing cached, so
    // each call hashes the canonical definition and runs the poisoning scan
    // (what the first list after a change costs per tool).
    let fresh: Vec<Exchange> = (0..1000)
        .map(|_| call("claude-desktop", &tool_list()))
        .collect();
    // The first call pins the tool (one file write); every call after is
    // judged against that pin.
    run_chain(&with_pinning, &one);

    let (mut next, mut turn) = (0, 0);
    let mut cases: Vec<common::Case> = vec![
        (
            "chain without guards (limits)",
            Box::new(|| run_chain(&baseline_chain, &one)),
        ),
        (
            "with ratelimit, 3 quotas, one client",
            Box::new(|| run_chain(&with_ratelimit, &one)),
        ),
        (
            "with ratelimit, 3 quotas, 1,000 clients",
            Box::new(|| {
                next = (next + 1) % many.len();
                run_chain(&with_ratelimit, &many[next]);
            }),
        ),
        (
            "with pinning, a pinned tool",
            Box::new(|| run_chain(&with_pinning, &one)),
        ),
        (
            "with pinning, judging a fresh definition",
            Box::new(|| {
                turn = (turn + 1) % fresh.len();
                run_chain(&with_pinning, &fresh[turn]);
            }),
        ),
        (
            "with schema, a 7-property input schema",
            Box::new(|| run_chain(&with_schema, &one)),
        ),
        (
            "with ratelimit, pinning and schema",
            Box::new(|| run_chain(&with_all, &one)),
        ),
    ];
    let best = common::best_of_rounds(&mut cases, rounds, samples, iterations);
    let [
        baseline,
        ratelimited,
        spread,
        pinned,
        judged,
        validated,
        all,
    ] = &best[..]
    else {
        unreachable!("seven cases");
    };
    common::print_table(
        "tools/call through the chain",
        "p50 vs without guards",
        &best.iter().collect::<Vec<_>>(),
        baseline,
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nratelimit adds {:.2} µs per call (one client) and {:.2} µs (1,000 clients) (goal: under 1 µs)",
        us(ratelimited.p50) - us(baseline.p50),
        us(spread.p50) - us(baseline.p50)
    );
    println!(
        "schema adds {:.2} µs per call (goal: under 5 µs)",
        us(validated.p50) - us(baseline.p50)
    );
    println!(
        "pinning adds {:.2} µs per call ({:.2} µs when it judges a fresh definition); all three add {:.2} µs",
        us(pinned.p50) - us(baseline.p50),
        us(judged.p50) - us(baseline.p50),
        us(all.p50) - us(baseline.p50)
    );
}
