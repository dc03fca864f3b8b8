//! `portcullis servers list` and `portcullis servers status`: the servers
//! as configured, and the containers that run them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Format;
use crate::config::{Config, UpstreamSpec};
use crate::protocol::{shown, shown_json};
use crate::upstream::container::{
    self, LABEL_CLIENT, LABEL_OWNER, LABEL_RESTARTS, LABEL_SERVER, engine,
};

/// The configured servers, how they run, and their sandboxing.
pub fn servers_list(config: &Config, format: Format) {
    let rows: Vec<Value> = config
        .servers
        .iter()
        .map(|server| {
            let (target, sandbox) = match &server.kind {
                UpstreamSpec::Process(spec) => (spec.command.clone(), "UNSANDBOXED".to_owned()),
                UpstreamSpec::Remote(spec) => (redact_url(&spec.url), "remote".to_owned()),
                UpstreamSpec::Container(spec) => (spec.image.clone(), spec.sandbox.summary()),
            };
            // What a container runs (a described server's, from its
            // description): arguments, and the names of its environment.
            let command = match &server.kind {
                UpstreamSpec::Container(spec) => json!({
                    "args": spec.args,
                    "env": spec.env.keys().collect::<Vec<_>>(),
                    "from_image_label": spec.label.is_some(),
                }),
                _ => Value::Null,
            };
            json!({
                "name": server.name,
                "kind": server.kind.kind_name(),
                "target": target,
                "command": command,
                "sandbox": sandbox,
                "timeout_ms": server.call_timeout.as_millis() as u64,
                // Names of the secrets only; never their values or sources.
                "secrets": server.secrets.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Format::Table => {
            println!("{:<20} {:<8} {:<12} TARGET", "NAME", "KIND", "SANDBOX");
            for row in &rows {
                println!(
                    "{:<20} {:<8} {:<12} {}",
                    row["name"].as_str().unwrap_or_default(),
                    row["kind"].as_str().unwrap_or_default(),
                    row["sandbox"].as_str().unwrap_or_default(),
                    row["target"].as_str().unwrap_or_default()
                );
            }
        }
    }
}

/// A URL without user info or query, which may carry credentials.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// Every server, and for container servers each of their containers: id,
/// state, uptime, restarts, and the proxy that owns it.
pub async fn servers_status(config: &Config, format: Format) -> anyhow::Result<()> {
    let any_container = config
        .servers
        .iter()
        .any(|s| matches!(s.kind, UpstreamSpec::Container(_)));
    let docker = if any_container {
        Some(engine().await.map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut rows = Vec::new();
    for server in &config.servers {
        let (UpstreamSpec::Container(_), Some(docker)) = (&server.kind, docker) else {
            rows.push(json!({
                "name": server.name,
                "kind": server.kind.kind_name(),
                "state": "n/a",
                "note": "runs inside a proxy process; ask that proxy",
            }));
            continue;
        };
        let found = container::labelled(docker, &format!("{LABEL_SERVER}={}", server.name))
            .await
            .map_err(anyhow::Error::msg)?;
        if found.is_empty() {
            rows.push(json!({
                "name": server.name,
                "kind": "container",
                "state": "stopped",
                "note": "no container: not started yet (lazy), stopped when idle, or no proxy runs",
            }));
        }
        for summary in found {
            let labels = summary.labels.unwrap_or_default();
            let state = as_text(&summary.state);
            rows.push(json!({
                "name": server.name,
                "kind": "container",
                "state": state,
                "container": summary.id.as_deref().map(container::short),
                "uptime_s": summary.created.map(|created| (now - created).max(0)),
                "restarts": labels.get(LABEL_RESTARTS).and_then(|r| r.parse::<u64>().ok()),
                "owner": labels.get(LABEL_OWNER),
                "client": labels.get(LABEL_CLIENT),
            }));
        }
    }
    match format {
        Format::Json => println!("{}", shown_json(&serde_json::to_string_pretty(&rows)?)),
        Format::Table => {
            println!(
                "{:<20} {:<10} {:<10} {:<13} {:>9} {:>8}  {:<12} OWNER",
                "NAME", "KIND", "STATE", "CONTAINER", "UPTIME", "RESTARTS", "CLIENT"
            );
            for row in &rows {
                // Labels and states come from the engine, and an image
                // may set labels of its own.
                let text = |key: &str| match &row[key] {
                    Value::String(s) => shown(s).into_owned(),
                    Value::Number(n) => n.to_string(),
                    _ => "-".into(),
                };
                let uptime = row["uptime_s"]
                    .as_i64()
                    .map_or_else(|| "-".into(), humanize_seconds);
                let client = match &row["client"] {
                    Value::String(client) => shown(client).into_owned(),
                    _ if row["kind"] == "container" && row.get("note").is_none() => "(all)".into(),
                    _ => "-".into(),
                };
                println!(
                    "{:<20} {:<10} {:<10} {:<13} {:>9} {:>8}  {:<12} {}",
                    text("name"),
                    text("kind"),
                    text("state"),
                    text("container"),
                    uptime,
                    text("restarts"),
                    client,
                    if row.get("note").is_some() {
                        text("note")
                    } else {
                        text("owner")
                    }
                );
            }
        }
    }
    Ok(())
}

fn humanize_seconds(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// An engine enum as the engine spells it.
pub(super) fn as_text<T: serde::Serialize>(value: &Option<T>) -> String {
    value
        .as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}
