//! `portcullis plugin check`: for plugin authors, what a plugin would do
//! before it goes into a chain.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::Format;
use crate::chain::{ClientIdentity, Context, Direction, Exchange, Phase, Transport, Verdict};
use crate::config::{self, PluginConfig};
use crate::interceptors::wasm::{Plugin, Runtime};
use crate::protocol::shown;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Load a plugin, check its interface version, run `configure` and sample
    /// messages through it, and print what it did. Exits with 1 if it
    /// cannot load, refuses its config, or fails on a message.
    Check {
        /// The component (`.wasm`, or `.wat` text).
        path: PathBuf,
        /// The plugin's own config, as JSON (what `config = { … }` holds in
        /// its `[[chain]]` entry).
        #[arg(long, default_value = "{}")]
        config: String,
        /// A JSON-RPC message to run instead of the samples (a request, a
        /// response or a notification, told apart by its fields).
        #[arg(long)]
        message: Option<String>,
        /// The method a response answers (with `--message`).
        #[arg(long, default_value = "tools/call")]
        method: String,
        /// Per-call time budget, as in the chain entry.
        #[arg(long, default_value = "10ms")]
        timeout: String,
        /// Memory cap, as in the chain entry.
        #[arg(long, default_value = "32m")]
        memory: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Check {
            path,
            config,
            message,
            method,
            timeout,
            memory,
            format,
        } => check(path, &config, message, &method, &timeout, &memory, format),
    }
}

/// The sample exchanges: a tool call with arguments that example plugins
/// react to, and its result holding an address and a phone number.
fn samples() -> Vec<(Phase, &'static str, Value)> {
    vec![
        (
            Phase::Request,
            "tools/call",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "run",
                "arguments": {"command": "rm -rf /tmp/cache", "note": "ask ada@example.com"}
            }}),
        ),
        (
            Phase::Response,
            "tools/call",
            json!({"jsonrpc": "2.0", "id": 1, "result": {
                "content": [{"type": "text", "text": "Contact Ada Lovelace at ada@example.com or +44 20 7946 0958."}],
                "isError": false
            }}),
        ),
    ]
}

fn phase_of(message: &Value) -> Phase {
    if message.get("method").is_none() {
        Phase::Response
    } else if message.get("id").is_some() {
        Phase::Request
    } else {
        Phase::Notification
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    path: PathBuf,
    plugin_config: &str,
    message: Option<String>,
    method: &str,
    timeout: &str,
    memory: &str,
    format: Format,
) -> anyhow::Result<()> {
    let plugin_config: Value =
        serde_json::from_str(plugin_config).context("--config is not JSON")?;
    let timeout =
        config::plugin_timeout(timeout).map_err(|err| anyhow::anyhow!("--timeout: {err}"))?;
    let memory = config::plugin_memory(memory).map_err(|err| anyhow::anyhow!("--memory: {err}"))?;
    let name = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("plugin")
        .to_owned();
    let plugin_config = PluginConfig {
        timeout,
        memory,
        pool: 1,
        breaker_failures: u32::MAX,
        config: plugin_config,
        ..PluginConfig::new(&name, &path)
    };
    let runtime = Runtime::new(&[&plugin_config])?;
    let started = Instant::now();
    let plugin = Arc::new(Plugin::load(
        runtime,
        &plugin_config,
        config::LimitsConfig::default().max_message_bytes,
        "__",
    )?);
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let samples = match message {
        None => samples()
            .into_iter()
            .map(|(phase, method, message)| (phase, method.to_owned(), message))
            .collect::<Vec<_>>(),
        Some(text) => {
            let message: Value = serde_json::from_str(&text).context("--message is not JSON")?;
            let phase = phase_of(&message);
            let method = match message.get("method").and_then(Value::as_str) {
                Some(own) => own.to_owned(),
                None => method.to_owned(),
            };
            vec![(phase, method, message)]
        }
    };
    let mut results = Vec::new();
    let mut failed = false;
    for (phase, method, message) in samples {
        let target = message
            .pointer("/params/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some("run".to_owned()));
        let context = Context {
            server: Some(Arc::from("example")),
            target,
            request_id: message.get("id").cloned(),
            ..Context::new(
                Arc::from("plugin-check"),
                ClientIdentity::new("plugin-check", &["checkers".to_owned()]),
                Transport::Stdio,
                &method,
            )
        };
        let exchange = Exchange::new(message, Direction::ClientToServer, phase, context);
        let started = Instant::now();
        let evaluation = plugin.call(&exchange);
        let micros = started.elapsed().as_secs_f64() * 1e6;
        let phase_name = phase.as_str();
        let shown = match evaluation {
            Ok((verdict, annotations)) => {
                let verdict = match verdict {
                    Verdict::Continue => json!({"verdict": "continue"}),
                    Verdict::Modify(message) => json!({"verdict": "modify", "message": message}),
                    Verdict::Deny(denial) => {
                        json!({"verdict": "deny", "code": denial.code, "message": denial.reason})
                    }
                };
                json!({"phase": phase_name, "method": method, "outcome": verdict,
                       "annotations": annotations.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<_, _>>(),
                       "micros": micros.round()})
            }
            Err(failure) => {
                failed = true;
                json!({"phase": phase_name, "method": method,
                       "outcome": {"verdict": "failed", "kind": failure.kind, "reason": failure.reason},
                       "micros": micros.round()})
            }
        };
        results.push(shown);
    }
    let report = json!({
        "path": path.display().to_string(),
        "interface": crate::interceptors::wasm::INTERFACE,
        "sha256": plugin.sha256(),
        "load_ms": (load_ms * 10.0).round() / 10.0,
        "configure": "ok",
        "messages": results,
        "counters": plugin.counters(),
    });
    match format {
        Format::Json => println!(
            "{}",
            crate::protocol::shown_json(&serde_json::to_string_pretty(&report)?)
        ),
        Format::Table => print_report(&report),
    }
    if failed {
        bail!("the plugin failed on a sample message");
    }
    Ok(())
}

fn print_report(report: &Value) {
    let text = |pointer: &str| {
        report
            .pointer(pointer)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    println!("plugin     {}", text("/path"));
    println!("sha256     {}", text("/sha256"));
    println!("interface  {} (ok)", text("/interface"));
    println!(
        "configure  ok (loaded and configured in {} ms)",
        text("/load_ms")
    );
    for message in report["messages"].as_array().into_iter().flatten() {
        let outcome = &message["outcome"];
        let verdict = outcome["verdict"].as_str().unwrap_or("?");
        let detail = match verdict {
            "modify" => format!("→ {}", outcome["message"]),
            "deny" => format!(
                "code {}: {}",
                outcome["code"],
                outcome["message"].as_str().unwrap_or("")
            ),
            "failed" => format!(
                "{}: {}",
                outcome["kind"].as_str().unwrap_or(""),
                outcome["reason"].as_str().unwrap_or("")
            ),
            _ => String::new(),
        };
        // A plugin wrote the verdict's text, annotations and counters.
        println!(
            "{:<12} {:<12} {:<9} {} µs  {}",
            message["phase"].as_str().unwrap_or(""),
            message["method"].as_str().unwrap_or(""),
            shown(verdict),
            message["micros"],
            shown(&detail)
        );
        if let Some(annotations) = message["annotations"].as_object()
            && !annotations.is_empty()
        {
            let notes: Vec<String> = annotations
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
                .collect();
            println!("{:<12} annotations: {}", "", shown(&notes.join(", ")));
        }
    }
    if let Some(counters) = report["counters"].as_object()
        && !counters.is_empty()
    {
        let counted: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters   {}", shown(&counted.join(", ")));
    }
}
