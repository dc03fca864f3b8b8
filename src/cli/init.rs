//! `portcullis init [DIR]`: a commented config, a policy folder with the
//! schema, a starter policy set and its tests, ready to `serve` and to
//! `policy test`; and `portcullis client-config`: the JSON each MCP client
//! expects for connecting through the proxy.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::config::Config;

/// The Cedar schema every policy folder starts from (the repository's own).
const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

const STARTER_POLICIES: &str = r#"// The starter policy set written by `portcullis init`.
//
// Cedar denies whatever no policy permits: a client, server or action not
// named below gets nothing, and a tool a client may not call is also left out
// of its `tools/list`. `forbid` wins over `permit`. Check a change with
// `portcullis policy check --config portcullis.toml` and its tests (tests/*.toml)
// with `portcullis policy test --config portcullis.toml`; a running proxy
// reloads this folder when it changes, and keeps the last valid set if a
// change does not validate.

// The `assistant` client may list and use everything the example server offers…
@id("assistant-uses-example")
permit (
    principal == Client::"assistant",
    action,
    resource in Server::"example"
);

// …except its `crash` tool, which stops the server: nobody calls it, and it is
// left out of everyone's `tools/list`.
@id("nobody-crashes-the-example")
forbid (
    principal,
    action,
    resource == Tool::"example__crash"
);
"#;

const STARTER_TESTS: &str = r#"# Tests of the starter policy set: `portcullis policy test --config portcullis.toml`.
# Each case is a request and the decision it must get; `decided_by` names the
# policies that must decide it (an empty list: no policy permits, denied by default).

[[case]]
name = "the assistant calls an example tool"
client = "assistant"
action = "call_tool"
tool = "example__echo"
annotations = { read_only = true }
expect = "allow"
decided_by = ["assistant-uses-example"]

[[case]]
name = "the assistant sees the example tools in tools/list"
client = "assistant"
action = "list_tools"
tool = "example__add"
expect = "allow"

[[case]]
name = "nobody calls the crash tool"
client = "assistant"
action = "call_tool"
tool = "example__crash"
expect = "deny"
decided_by = ["nobody-crashes-the-example"]

[[case]]
name = "the crash tool is left out of tools/list"
client = "assistant"
action = "list_tools"
tool = "example__crash"
expect = "deny"
decided_by = ["nobody-crashes-the-example"]

[[case]]
name = "a client the policies do not name gets nothing"
client = "stranger"
action = "call_tool"
tool = "example__echo"
expect = "deny"
decided_by = []

[[case]]
name = "the assistant may not use another server"
client = "assistant"
action = "call_tool"
tool = "github__create_issue"
expect = "deny"
decided_by = []
"#;

/// The files `init` writes, relative to its folder.
const CONFIG: &str = "portcullis.toml";
const FILES: [&str; 4] = [
    CONFIG,
    "policies/schema.cedarschema",
    "policies/starter.cedar",
    "policies/tests/starter.toml",
];

/// Writes the scaffold into `dir` (created if missing). Refuses, writing
/// nothing, if any of its files exists.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    let existing: Vec<String> = FILES
        .iter()
        .map(|file| dir.join(file))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite {}: init writes only into a folder without them (nothing was written)",
            existing.join(", ")
        );
    }
    let client_token = new_token();
    let auditor_token = new_token();
    let config = config_text(&example_server(), &client_token, &auditor_token);
    let contents = [config.as_str(), SCHEMA, STARTER_POLICIES, STARTER_TESTS];
    std::fs::create_dir_all(dir.join("policies/tests"))
        .with_context(|| format!("cannot create {}", dir.join("policies/tests").display()))?;
    for (file, text) in FILES.iter().zip(contents) {
        let path = dir.join(file);
        // `create_new`: a file that appeared since the check is not replaced.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut out| std::io::Write::write_all(&mut out, text.as_bytes()));
        written.with_context(|| format!("cannot write {}", path.display()))?;
    }
    let config = dir.join(CONFIG);
    let shown = config.display();
    println!("wrote {shown}, policies/ (schema, starter policies, their tests)");
    println!();
    println!("These tokens are shown once; only their SHA-256 is in the config:");
    println!("  client  `assistant` (HTTP): {client_token}");
    println!("  auditor `auditor`         : {auditor_token}");
    println!();
    println!("Next:");
    println!(
        "  portcullis policy test --config {shown}     # the starter policies pass their tests"
    );
    println!("  portcullis serve --config {shown}           # MCP at http://127.0.0.1:8811/mcp");
    println!("  portcullis client-config claude --client assistant --config {shown}");
    Ok(())
}

/// A random bearer token: 256 bits in hex, 244 of them random from the OS.
fn new_token() -> String {
    let mut bytes = Vec::with_capacity(32);
    for _ in 0..2 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    // A v4 UUID fixes 6 of its 128 bits; 244 random bits remain.
    format!("pcl_{}", hex::encode(bytes))
}

/// The example server beside this binary (they are built and shipped
/// together), or the name to find on `PATH`.
fn example_server() -> String {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("portcullis-example-server"))
        .filter(|path| path.is_file())
        .and_then(|path| path.canonicalize().ok())
        .map_or_else(
            || "portcullis-example-server".to_owned(),
            |path| path.display().to_string(),
        )
}

fn config_text(example: &str, client_token: &str, auditor_token: &str) -> String {
    let example = toml_string(example);
    let client = super::sha256_hex(client_token.as_bytes());
    let auditor = super::sha256_hex(auditor_token.as_bytes());
    format!(
        r#"# Portcullis: a policy-enforcing security proxy for MCP. Written by `portcullis init`.
#
#   portcullis serve --config portcullis.toml          # HTTP at http://127.0.0.1:8811/mcp
#   portcullis stdio --config portcullis.toml --client assistant   # one client over stdio
#   portcullis doctor --config portcullis.toml         # check the engine, servers, policies
#
# Paths are relative to this file. Unknown keys are refused, with file and line.

[proxy]
listen = "127.0.0.1:8811"        # streamable HTTP on /mcp; delete for stdio only
data_dir = ".portcullis"          # the audit log (hash-chained) and the tool pins
policies = "policies"             # Cedar policies: who may list and call what (reloaded on change)

# Who may connect. Over HTTP a client sends `Authorization: Bearer TOKEN`; only the
# token's SHA-256 is kept here (`printf %s TOKEN | sha256sum` makes one). Over stdio
# (`portcullis stdio --client assistant`) no token is needed.
[[clients]]
name = "assistant"
token_sha256 = "{client}"
groups = ["assistants"]

# Auditors read the audit log (`portcullis audit …`, GET /admin/audit), the metrics
# (GET /metrics) and the web console (/admin/). Their tokens cannot call tools.
[[auditors]]
name = "auditor"
token_sha256 = "{auditor}"

# The MCP servers behind the proxy; a tool `echo` of server `example` is `example__echo`.
# This is Portcullis's example server as a local process: a process runs with the
# proxy's own rights (it is logged as UNSANDBOXED at every start). A server in a
# hardened container (no network, read-only, no capabilities, non-root) instead:
#   container = {{ image = "mcp/time" }}
[[servers]]
name = "example"
process = {{ command = {example}, args = ["--name", "example"] }}

# Every record is on disk before the client gets its reply (fail closed).
[audit]
durability = "durable"           # durable | buffered (flushed every 10 ms)

# Secret scanning of every string, both ways (`portcullis redact rules` lists the rules).
[redact]
requests = "redact"              # toward servers: redact | deny | log | off
responses = "redact"             # toward the client

# Tool definitions are pinned on first use; a changed definition is withheld until
# `portcullis tools approve SERVER__TOOL --config portcullis.toml`.
[pinning]
first_use = "pin"
on_change = "deny"

[observability]
metrics = true                   # GET /metrics, for auditor tokens
# [observability.traces]         # OpenTelemetry traces to a collector (OTLP/HTTP)
# endpoint = "http://127.0.0.1:4318/v1/traces"
"#
    )
}

/// A TOML basic string: JSON's string escapes (`\"`, `\\`, `\n`, `\uXXXX`, …)
/// are all TOML's too.
fn toml_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// The MCP clients whose config `client-config` writes.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum ClientApp {
    /// Claude Desktop (`claude_desktop_config.json`); over HTTP, Claude
    /// Code's `.mcp.json`.
    Claude,
    /// Cursor (`~/.cursor/mcp.json` or `.cursor/mcp.json`).
    Cursor,
    /// VS Code (`.vscode/mcp.json`).
    Vscode,
}

/// How the client reaches the proxy.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Via {
    /// The client starts `portcullis stdio` itself.
    Stdio,
    /// The client connects to a running `portcullis serve` with its token.
    Http,
    /// The client connects to `[oauth] resource` and signs in with the
    /// organisation's identity provider (the MCP authorization flow).
    Oauth,
}

/// The snippet for `app`, for `client` of `config`.
pub fn client_config(
    config: &Config,
    app: ClientApp,
    client: Option<&str>,
    via: Via,
) -> anyhow::Result<Value> {
    let file = config.file.display();
    if via == Via::Oauth {
        let Some(oauth) = &config.oauth else {
            bail!("{file}: `[oauth]` is not set: clients cannot sign in with an identity provider");
        };
        // No token: the client finds the identity provider from the
        // proxy's 401 and signs its user in.
        let server = json!({ "type": "http", "url": oauth.resource });
        return Ok(match app {
            ClientApp::Vscode => json!({ "servers": { "portcullis": server } }),
            ClientApp::Claude | ClientApp::Cursor => {
                json!({ "mcpServers": { "portcullis": server } })
            }
        });
    }
    let Some(client) = client else {
        bail!("name the client (`--client NAME`, from `[[clients]]`)");
    };
    let Some(entry) = config.client(client) else {
        bail!("{file}: client `{client}` is not defined; add a `[[clients]]` entry with that name");
    };
    let server = match via {
        Via::Stdio => {
            let exe = std::env::current_exe()
                .and_then(|exe| exe.canonicalize())
                .context("cannot tell where this portcullis binary is")?;
            let config_path = absolute(&config.file)?;
            let args = json!([
                "stdio",
                "--config",
                config_path.display().to_string(),
                "--client",
                client
            ]);
            let command = exe.display().to_string();
            match app {
                ClientApp::Vscode => json!({"type": "stdio", "command": command, "args": args}),
                ClientApp::Claude | ClientApp::Cursor => {
                    json!({"command": command, "args": args})
                }
            }
        }
        Via::Http => {
            if entry.token_sha256.is_none() {
                bail!(
                    "{file}: client `{client}` has no `token_sha256`: it can connect over stdio only"
                );
            }
            let Some(listen) = config.proxy.listen else {
                bail!("{file}: `[proxy] listen` is not set: the proxy serves no HTTP");
            };
            // A proxy listening on every address is reached on loopback here.
            let host = match listen.ip() {
                ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
                ip if ip.is_unspecified() => "[::1]".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                std::net::IpAddr::V4(ip) => ip.to_string(),
            };
            let scheme = if config.listener.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{host}:{}/mcp", listen.port());
            // The token stays out of the file: each client's own way of
            // filling it in at start.
            let token = match app {
                ClientApp::Vscode => "${input:portcullis-token}",
                ClientApp::Cursor => "${env:PORTCULLIS_TOKEN}",
                ClientApp::Claude => "${PORTCULLIS_TOKEN}",
            };
            json!({
                "type": "http",
                "url": url,
                "headers": { "Authorization": format!("Bearer {token}") }
            })
        }
        // Answered above.
        Via::Oauth => bail!("an identity provider's client needs no `--client`"),
    };
    Ok(match app {
        ClientApp::Vscode if via == Via::Http => json!({
            "inputs": [{
                "type": "promptString",
                "id": "portcullis-token",
                "description": format!("Portcullis token of client `{client}`"),
                "password": true
            }],
            "servers": { "portcullis": server }
        }),
        ClientApp::Vscode => json!({ "servers": { "portcullis": server } }),
        ClientApp::Claude | ClientApp::Cursor => json!({ "mcpServers": { "portcullis": server } }),
    })
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_loads_and_keeps_only_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            "/opt/portcullis/example \"server\"",
            "pcl_client",
            "pcl_auditor",
        );
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, &text).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        let config = Config::load(&path).unwrap();
        assert!(!text.contains("pcl_client") && !text.contains("pcl_auditor"));
        let client = config.client("assistant").unwrap();
        assert_eq!(
            client.token_sha256.as_deref(),
            Some(super::super::sha256_hex(b"pcl_client").as_str())
        );
        // Quotes and backslashes survive the TOML string.
        assert_eq!(
            toml::from_str::<toml::Value>(&format!("x = {}", toml_string("a\"b\\c\nd")))
                .ok()
                .and_then(|v| v.get("x").and_then(|x| x.as_str().map(str::to_owned))),
            Some("a\"b\\c\nd".to_owned())
        );
        assert_eq!(
            config.auditors[0].token_sha256,
            super::super::sha256_hex(b"pcl_auditor")
        );
        let crate::config::UpstreamSpec::Process(process) = &config.servers[0].kind else {
            panic!("the example server runs as a process");
        };
        assert_eq!(process.command, "/opt/portcullis/example \"server\"");
    }

    #[test]
    fn tokens_are_new_each_time() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
    }
}
