//! `portcullis tools call` and `tools inspect`: one tool called (or shown)
//! as a client would call it, through the whole chain, the call recorded in
//! the audit log as the CLI's (`transport` `cli`), in a store of its own
//! (`cli-tools`), so that it works beside a running proxy.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::launch::{Traced, build_gateway, start};
use super::tools::{Discard, list_tools, viewer};
use crate::chain::Transport;
use crate::config::Config;
use crate::protocol::{shown, shown_json};

/// The audit store of the CLI's calls.
const ROLE: &str = "cli-tools";

pub(super) async fn tools_call(
    mut config: Config,
    tool: &str,
    arguments: &str,
    client: Option<&str>,
) -> anyhow::Result<()> {
    // `-`: from stdin, which keeps the values off the command line (and
    // out of `ps` and the shell's history).
    let arguments = if arguments == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the arguments from stdin")?;
        text
    } else {
        arguments.to_owned()
    };
    let arguments: Value = serde_json::from_str(&arguments)
        .context("`--args` must be a JSON object, e.g. '{\"text\": \"hi\"}'")?;
    if !arguments.is_object() {
        bail!("`--args` must be a JSON object, e.g. '{{\"text\": \"hi\"}}'");
    }
    let identity = viewer(&mut config, client)?;
    let config_sha256 = super::config_sha256(&config.file);
    let audit = super::serve::open_audit(&config, ROLE)?
        .with_profile(config.profile.as_ref().map(|profile| profile.name.as_str()));
    let (gateway, events, policies, pinning, plugins) =
        build_gateway(config, Some(audit), Traced::No)?;
    // Recorded as a proxy's run is: its start, and what pinning and the
    // plugins report while it runs (a first-use pin, a flagged tool).
    super::records::record_start(&gateway, ROLE, config_sha256, policies.as_deref(), &plugins);
    super::serve::record_events(&gateway, policies.as_ref(), pinning.as_ref(), &plugins);
    let signal = super::serve::shutdown_signal();
    tokio::pin!(signal);
    let reply = tokio::select! {
        reply = call(&gateway, identity, tool, arguments, events) => reply,
        () = &mut signal => None,
    };
    // Stopped in every case: the record is committed, no container
    // outlives the command.
    gateway.stop().await;
    let Some(reply) = reply else {
        bail!("interrupted, or no answer: `{tool}` may not have been called");
    };
    if let Some(error) = reply.get("error") {
        bail!(
            "`{tool}` was not called: {} ({})",
            shown(error["message"].as_str().unwrap_or("unknown error")),
            shown(&error["code"].to_string())
        );
    }
    let result = reply.get("result").unwrap_or(&Value::Null);
    println!(
        "{}",
        shown_json(&serde_json::to_string_pretty(result).unwrap_or_default())
    );
    if result["isError"] == true {
        bail!("`{tool}` answered with an error (its result above)");
    }
    Ok(())
}

/// Starts the servers, and makes the call in a session of the CLI's.
async fn call(
    gateway: &Arc<crate::gateway::Gateway>,
    identity: crate::chain::ClientIdentity,
    tool: &str,
    arguments: Value,
    events: tokio::sync::mpsc::Receiver<crate::upstream::UpstreamEvent>,
) -> Option<Value> {
    start(gateway, events).await;
    let session = gateway.open_session(
        Arc::from(uuid::Uuid::new_v4().to_string()),
        identity,
        Transport::Cli,
        Arc::new(Discard),
    );
    let init = crate::protocol::request(
        json!(0),
        crate::protocol::Method::Initialize.as_str(),
        json!({ "protocolVersion": crate::protocol::LATEST_VERSION, "capabilities": {},
            "clientInfo": { "name": "portcullis-cli", "version": env!("CARGO_PKG_VERSION") } }),
    );
    let _ = gateway.handle(&session, init).await;
    let call = crate::protocol::request(
        json!(1),
        crate::protocol::Method::ToolsCall.as_str(),
        json!({ "name": tool, "arguments": arguments }),
    );
    let reply = gateway.handle(&session, call).await;
    gateway.close_session(&session);
    reply
}

/// The tool's definition as the client (or the operator) sees it listed.
pub(super) async fn tools_inspect(
    mut config: Config,
    tool: &str,
    client: Option<&str>,
) -> anyhow::Result<()> {
    let identity = viewer(&mut config, client)?;
    let gateway = super::launch::start_gateway(config).await?;
    let session = gateway.open_session(
        Arc::from("tools-inspect"),
        identity,
        Transport::Cli,
        Arc::new(Discard),
    );
    let listed = list_tools(&gateway, &session).await;
    gateway.close_session(&session);
    gateway.stop().await;
    let listed =
        listed.map_err(|message| anyhow::anyhow!("tools/list failed: {}", shown(&message)))?;
    let Some(found) = listed.iter().find(|t| t["name"] == tool) else {
        bail!(
            "`{tool}` is not listed{}: `portcullis tools list` shows what is, and why a tool is missing",
            client
                .map(|c| format!(" to client `{c}`"))
                .unwrap_or_default()
        );
    };
    println!(
        "{}",
        shown_json(&serde_json::to_string_pretty(found).unwrap_or_default())
    );
    Ok(())
}
