//! `portcullis tools list`: the servers started, the tools a client (or the
//! operator) would see listed, and what is missing from the list and why.

use std::sync::Arc;

use anyhow::bail;
use serde_json::{Value, json};

use super::launch::start_gateway;
use super::{Format, client_identity};
use crate::chain::{ClientIdentity, Transport};
use crate::config::{ChainEntry, Config};
use crate::gateway::{Gateway, Outlet, Session};
use crate::protocol::{shown, shown_json};
use crate::upstream::Status;

pub(super) struct Discard;

impl Outlet for Discard {
    fn deliver(&self, _message: Value, _related: Option<&Value>) -> bool {
        false
    }
}

pub(super) async fn tools_list(
    mut config: Config,
    client: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let identity = viewer(&mut config, client)?;
    let schema_checked = config.chain.contains(&ChainEntry::Schema);
    let gateway = start_gateway(config).await?;
    let session = gateway.open_session(
        Arc::from("tools-list"),
        identity,
        Transport::Stdio,
        Arc::new(Discard),
    );
    let tools = match list_tools(&gateway, &session).await {
        Ok(tools) => tools,
        Err(message) => {
            // Stopped first: no container may outlive the command.
            gateway.close_session(&session);
            gateway.stop().await;
            bail!("tools/list failed: {}", shown(&message));
        }
    };
    let missing = Missing::of(&gateway, &tools, schema_checked, client.is_none());
    gateway.close_session(&session);
    gateway.stop().await;
    missing.print_withheld();
    print_flagged(&tools);
    print_tools(&tools, format);
    missing.print_down();
    Ok(())
}

/// Whose view is listed: the client named, or without one the operator's
/// (the config then loses its policies).
pub(super) fn viewer(config: &mut Config, client: Option<&str>) -> anyhow::Result<ClientIdentity> {
    match client {
        Some(name) => client_identity(config, name),
        None => {
            // The operator's view: every tool the servers offer, whatever
            // the policies let any one client see.
            config.chain.retain(|entry| *entry != ChainEntry::Authz);
            config.proxy.policies = None;
            Ok(ClientIdentity::new("(operator)", &[]))
        }
    }
}

/// Every page of `tools/list` after `initialize`, as the session sees it;
/// the error's message if the gateway answers with one.
pub(super) async fn list_tools(
    gateway: &Arc<Gateway>,
    session: &Arc<Session>,
) -> Result<Vec<Value>, String> {
    let init = crate::protocol::request(
        json!(0),
        crate::protocol::Method::Initialize.as_str(),
        json!({ "protocolVersion": crate::protocol::LATEST_VERSION, "capabilities": {}, "clientInfo": { "name": "portcullis-cli", "version": env!("CARGO_PKG_VERSION") } }),
    );
    let _ = gateway.handle(session, init).await;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = cursor
            .as_ref()
            .map_or(json!({}), |c| json!({ "cursor": c }));
        let reply = gateway
            .handle(
                session,
                crate::protocol::request(
                    json!(1),
                    crate::protocol::Method::ToolsList.as_str(),
                    params,
                ),
            )
            .await
            .unwrap_or(Value::Null);
        if let Some(error) = reply.get("error") {
            return Err(error["message"]
                .as_str()
                .unwrap_or("unknown error")
                .to_owned());
        }
        if let Some(page) = reply.pointer("/result/tools").and_then(Value::as_array) {
            tools.extend(page.iter().cloned());
        }
        match reply.pointer("/result/nextCursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(tools),
        }
    }
}

/// What the list lacks, read off the gateway before it stops.
struct Missing {
    /// Servers not running, with their status.
    down: Vec<String>,
    /// Tools the `schema` interceptor withholds, with the reason.
    withheld: Vec<(String, String)>,
    /// Tools pinning withholds (operator's view only).
    pin_withheld: Vec<String>,
}

impl Missing {
    fn of(gateway: &Gateway, tools: &[Value], schema_checked: bool, operator: bool) -> Self {
        let down: Vec<String> = gateway
            .servers()
            .upstreams()
            .iter()
            .filter_map(|u| match u.status() {
                Status::Ready(_) => None,
                other => Some(format!("{} ({other:?})", u.name())),
            })
            .collect();
        // Tools the `schema` interceptor withholds: their schemas do not
        // compile (the log says so too).
        let withheld: Vec<(String, String)> = if schema_checked {
            gateway
                .catalog()
                .tools
                .iter()
                .filter_map(|tool| {
                    let problem = crate::interceptors::schema::problem_of(tool)?;
                    Some((
                        tool["name"].as_str().unwrap_or_default().to_owned(),
                        problem,
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        // Tools pinning withholds (changed or unpinned definitions, poisoning
        // under `deny`); in the operator's view, whatever else is missing.
        let pin_withheld: Vec<String> = if operator {
            gateway
                .catalog()
                .tools
                .iter()
                .filter_map(|tool| tool["name"].as_str())
                .filter(|name| {
                    !tools.iter().any(|t| t["name"] == *name)
                        && !withheld.iter().any(|(w, _)| w == name)
                })
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        Self {
            down,
            withheld,
            pin_withheld,
        }
    }

    fn print_withheld(&self) {
        for (name, problem) in &self.withheld {
            eprintln!("withheld: `{}`: {}", shown(name), shown(problem));
        }
        for name in &self.pin_withheld {
            eprintln!(
                "withheld: `{}`: its definition awaits approval (`portcullis tools pins`)",
                shown(name)
            );
        }
    }

    fn print_down(&self) {
        for server in &self.down {
            eprintln!("warning: server {server} is not running; its tools are missing");
        }
    }
}

/// Tools listed with poisoning flags in their `_meta`, and the rules that
/// matched.
fn print_flagged(tools: &[Value]) {
    for tool in tools {
        if let Some(flags) = tool
            .pointer("/_meta/dev.portcullis~1poisoning")
            .and_then(Value::as_array)
        {
            let rules: Vec<&str> = flags.iter().filter_map(|f| f["rule"].as_str()).collect();
            eprintln!(
                "flagged: `{}`: poisoning rules {}",
                shown(tool["name"].as_str().unwrap_or_default()),
                shown(&rules.join(", "))
            );
        }
    }
}

fn print_tools(tools: &[Value], format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            shown_json(&serde_json::to_string_pretty(tools).unwrap_or_default())
        ),
        Format::Table => {
            println!("{:<40} DESCRIPTION", "TOOL");
            for tool in tools {
                // Its first line, cut, then escaped: a server wrote both.
                let description: String = tool["description"]
                    .as_str()
                    .unwrap_or_default()
                    .split('\n')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect();
                println!(
                    "{:<40} {}",
                    shown(tool["name"].as_str().unwrap_or_default()),
                    shown(&description)
                );
            }
        }
    }
}
