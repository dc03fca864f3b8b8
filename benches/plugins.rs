//! What WASM plugins cost per call: a `tools/call` result of 2 KiB through
//! the chain without plugins (the baseline, `limits` alone), and with the
//! no-op plugin and the e-mail/phone masking plugin, each with a warm
//! instance from the pool and with a fresh instance per call.
//!
//! `cargo bench --bench plugins` (options after `--`: `--iterations N` per
//! sample, default 1000; `--samples N`, default 200). Uses the checked-in
//! example builds. Five rounds of every case in turn; each case's best round
//! is reported.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis::chain::{
    Chain, ClientIdentity, Context, Direction, Exchange, Interceptor, Phase, Transport,
};
use portcullis::config::{InstanceMode, LimitsConfig, PluginConfig};
use portcullis::interceptors::Limits;
use portcullis::interceptors::wasm::{Plugin, Runtime};
use serde_json::json;

fn plugin_config(name: &str, instance: InstanceMode) -> PluginConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = format!("{}.wasm", name.replace('-', "_"));
    PluginConfig {
        methods: vec!["tools/call".into()],
        instance,
        ..PluginConfig::new(
            &format!("{name}-{instance:?}").to_lowercase(),
            &root.join("plugins/examples").join(name).join(file),
        )
    }
}

/// A 2 KiB tool result: prose with two addresses and a phone number.
fn result() -> Exchange {
    let mut text = String::from(
        "Quarterly report. Contact ada.lovelace@example.org or +44 20 7946 0958 for details; \
         billing questions go to billing@example.com. ",
    );
    while text.len() < 2000 {
        text.push_str("The figures below are unaudited and subject to change without notice. ");
    }
    text.truncate(2000);
    let message = json!({"jsonrpc": "2.0", "id": 7, "result": {
        "content": [{"type": "text", "text": text}], "isError": false}});
    assert!(serde_json::to_vec(&message).unwrap().len() >= 2048);
    let mut context = Context::new(
        Arc::from("session-1"),
        ClientIdentity::new("claude-desktop", &[]),
        Transport::Http,
        "tools/call",
    );
    context.server = Some(Arc::from("docs"));
    context.target = Some("report".to_owned());
    context.request_id = Some(json!(7));
    Exchange::new(message, Direction::ClientToServer, Phase::Response, context)
}

fn run_chain(chain: &Chain, template: &Exchange) {
    let mut exchange = template.clone();
    let outcome = chain.run(&mut exchange);
    assert!(outcome.is_ok(), "the benchmarked result is never refused");
}

fn main() {
    let (iterations, samples) = common::sampling_args(1000, 200);
    let rounds = 5;
    let configs = [
        plugin_config("noop", InstanceMode::Pooled),
        plugin_config("noop", InstanceMode::PerCall),
        plugin_config("mask-pii", InstanceMode::Pooled),
        plugin_config("mask-pii", InstanceMode::PerCall),
    ];
    let runtime = Runtime::new(&configs.iter().collect::<Vec<_>>()).unwrap();
    let limits: Arc<dyn Interceptor> = Arc::new(Limits::new(LimitsConfig::default()));
    let chains: Vec<Chain> = configs
        .iter()
        .map(|config| {
            let plugin: Arc<dyn Interceptor> = Arc::new(
                Plugin::load(
                    runtime.clone(),
                    config,
                    LimitsConfig::default().max_message_bytes,
                    "__",
                )
                .unwrap(),
            );
            Chain::new(vec![limits.clone(), plugin])
        })
        .collect();
    let baseline_chain = Chain::new(vec![limits]);
    let one = result();
    // The masking plugin does mask: the result it returns differs.
    let mut masked = one.clone();
    assert!(chains[2].run(&mut masked).is_ok());
    assert!(
        masked.message["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|text| text.contains("Contact [email] or [phone]")),
        "{}",
        masked.message
    );

    let mut cases: Vec<common::Case> = vec![
        (
            "chain without plugins (limits)",
            Box::new(|| run_chain(&baseline_chain, &one)),
        ),
        (
            "with no-op plugin, warm instance",
            Box::new(|| run_chain(&chains[0], &one)),
        ),
        (
            "with no-op plugin, instance per call",
            Box::new(|| run_chain(&chains[1], &one)),
        ),
        (
            "with mask-pii, warm instance",
            Box::new(|| run_chain(&chains[2], &one)),
        ),
        (
            "with mask-pii, instance per call",
            Box::new(|| run_chain(&chains[3], &one)),
        ),
    ];
    let best = common::best_of_rounds(&mut cases, rounds, samples, iterations);
    let [baseline, noop_warm, noop_fresh, mask_warm, mask_fresh] = &best[..] else {
        unreachable!("five cases");
    };
    common::print_table(
        "a 2 KiB tools/call result through the chain",
        "p50 vs without plugins",
        &best.iter().collect::<Vec<_>>(),
        baseline,
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let added = |stats: &common::Stats| us(stats.p50) - us(baseline.p50);
    println!(
        "\nno-op plugin adds {:.2} µs per call warm (goal: under 10 µs), {:.2} µs with an instance per call",
        added(noop_warm),
        added(noop_fresh)
    );
    println!(
        "mask-pii adds {:.2} µs per call warm, {:.2} µs with an instance per call",
        added(mask_warm),
        added(mask_fresh)
    );
}
