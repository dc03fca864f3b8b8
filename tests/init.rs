//! The newcomer's path through the real binary: `portcullis init` in an
//! empty folder, its policies passing their tests, a real call through
//! `serve` on the generated config with the token `init` printed, `init`
//! refusing to overwrite, and `client-config` snippets that are valid JSON
//! and start a proxy that answers.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The token `init` printed for `who` (`client  \`assistant\``, …).
fn token(stdout: &str, who: &str) -> String {
    stdout
        .lines()
        .find(|line| line.contains(who))
        .and_then(|line| line.rsplit(' ').next())
        .filter(|token| token.starts_with("pcl_"))
        .unwrap_or_else(|| panic!("no token for {who} in {stdout}"))
        .to_owned()
}

fn init(dir: &Path) -> (bool, String, String) {
    run_portcullis([std::ffi::OsStr::new("init"), dir.as_os_str()])
}

#[tokio::test(flavor = "multi_thread")]
async fn init_serves_at_once_and_its_policies_pass_their_tests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proxy");
    let (ok, stdout, stderr) = init(&root);
    assert!(ok, "{stderr}");
    let config = root.join("portcullis.toml");
    for file in [
        "portcullis.toml",
        "policies/schema.cedarschema",
        "policies/starter.cedar",
        "policies/tests/starter.toml",
    ] {
        assert!(root.join(file).is_file(), "{file} not written");
    }
    let client_token = token(&stdout, "client  `assistant`");
    let auditor_token = token(&stdout, "auditor `auditor`");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains(&client_token), "a token in the config");
    assert!(text.contains(&sha256_hex(&client_token)));

    let config_arg = config.to_str().unwrap();
    for command in ["check", "test"] {
        let (ok, stdout, stderr) = run_portcullis(["policy", command, "--config", config_arg]);
        assert!(ok, "policy {command}: {stdout}{stderr}");
    }
    let (ok, stdout, stderr) = run_portcullis(["policy", "test", "--config", config_arg]);
    assert!(ok && stdout.contains("6 passed"), "{stdout}{stderr}");

    // A real call through `serve` (on a free port rather than 8811, the
    // only change to the generated file).
    std::fs::write(
        &config,
        text.replace("listen = \"127.0.0.1:8811\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let served = serve_config(&config).await;
    let session = HttpSession::connect_as(&served.url, &client_token).await;
    let echo = session
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "hello"}}),
        )
        .await;
    assert_eq!(first_text(&echo), "example: hello", "{echo}");
    let crash = session
        .call(
            2,
            "tools/call",
            json!({"name": "example__crash", "arguments": {"code": 1}}),
        )
        .await;
    // Refused as a tool result the agent's model reads (the default).
    assert_eq!(crash["result"]["isError"], true, "{crash}");
    assert_eq!(
        crash["result"]["_meta"]["dev.portcullis/refusal"]["interceptor"], "authz",
        "{crash}"
    );
    let listed = session.call(3, "tools/list", json!({})).await;
    let names = tool_names(&listed);
    assert!(names.iter().any(|n| n == "example__echo"), "{names:?}");
    assert!(!names.iter().any(|n| n == "example__crash"), "{names:?}");
    // The auditor's token reads the log; it cannot call tools.
    let records = admin_records(&served.base, "tool=crash", &auditor_token).await;
    assert_eq!(records[0]["decision"], "deny", "{records:?}");
    let refused = reqwest::Client::new()
        .post(&served.url)
        .bearer_auth(&auditor_token)
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    served.terminate().await;

    // A second init over the same folder writes nothing.
    let before = std::fs::read(&config).unwrap();
    let (ok, _, stderr) = init(&root);
    assert!(!ok);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("portcullis.toml"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), before);
    // One existing file is enough to refuse; the others are not written.
    let partial = dir.path().join("partial");
    std::fs::create_dir_all(partial.join("policies")).unwrap();
    std::fs::write(partial.join("policies/starter.cedar"), "// mine\n").unwrap();
    let (ok, _, stderr) = init(&partial);
    assert!(!ok && stderr.contains("starter.cedar"), "{stderr}");
    assert!(!partial.join("portcullis.toml").exists());
    assert_eq!(
        std::fs::read_to_string(partial.join("policies/starter.cedar")).unwrap(),
        "// mine\n"
    );
}

fn client_config(config: &Path, app: &str, transport: &str) -> Value {
    let (ok, stdout, stderr) = run_portcullis([
        "client-config",
        app,
        "--client",
        "assistant",
        "--config",
        config.to_str().unwrap(),
        "--transport",
        transport,
    ]);
    assert!(ok, "{app} {transport}: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("{app} {transport}: not JSON ({err}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn client_config_snippets_are_json_and_name_a_proxy_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = init(dir.path());
    assert!(ok, "{stderr}");
    let config = dir.path().join("portcullis.toml").canonicalize().unwrap();
    let portcullis = Path::new(portcullis_bin()).canonicalize().unwrap();
    let expected_args = json!([
        "stdio",
        "--config",
        config.to_str().unwrap(),
        "--client",
        "assistant"
    ]);

    for (app, key) in [
        ("claude", "mcpServers"),
        ("cursor", "mcpServers"),
        ("vscode", "servers"),
    ] {
        let snippet = client_config(&config, app, "stdio");
        let server = &snippet[key]["portcullis"];
        assert_eq!(server["command"], portcullis.to_str().unwrap(), "{app}");
        assert_eq!(server["args"], expected_args, "{app}");
        if app == "vscode" {
            assert_eq!(server["type"], "stdio");
        }
        let http = client_config(&config, app, "http");
        let server = &http[key]["portcullis"];
        assert_eq!(server["type"], "http", "{app}");
        assert_eq!(server["url"], "http://127.0.0.1:8811/mcp", "{app}");
        let auth = server["headers"]["Authorization"].as_str().unwrap();
        assert!(auth.starts_with("Bearer ${"), "{app}: {auth}");
    }
    let vscode = client_config(&config, "vscode", "http");
    assert_eq!(vscode["inputs"][0]["id"], "portcullis-token");
    assert_eq!(vscode["inputs"][0]["password"], true);

    // The command the Claude snippet names, started as Claude would: it
    // speaks MCP and serves the example server's tools.
    let snippet = client_config(&config, "claude", "stdio");
    let server = &snippet["mcpServers"]["portcullis"];
    let args: Vec<&str> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut child = tokio::process::Command::new(server["command"].as_str().unwrap())
        .args(&args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for message in [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"claude-like","version":"0"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"example__echo","arguments":{"text":"via the snippet"}}}),
    ] {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }
    let mut answered = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line()).await
    {
        let reply: Value = serde_json::from_str(&line).unwrap();
        if reply["id"] == 2 {
            answered = Some(reply);
            break;
        }
    }
    let answered = answered.expect("the proxy the snippet names answered");
    assert_eq!(
        first_text(&answered),
        "example: via the snippet",
        "{answered}"
    );
    drop(stdin);
    let _ = child.wait().await;

    // Mistakes are named.
    let config = config.to_str().unwrap();
    let (ok, _, stderr) = run_portcullis([
        "client-config",
        "cursor",
        "--client",
        "nobody",
        "--config",
        config,
    ]);
    assert!(
        !ok && stderr.contains("client `nobody` is not defined"),
        "{stderr}"
    );
    let (ok, _, stderr) = run_portcullis(["client-config", "zed", "--client", "assistant"]);
    assert!(!ok && stderr.contains("invalid value 'zed'"), "{stderr}");
}
