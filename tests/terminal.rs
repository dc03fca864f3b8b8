//! What reaches an auditor's terminal: records and pins whose every field a
//! client or a server wrote with control characters (ANSI and OSC
//! sequences, OSC 8 links, CR/LF, the C1 introducer U+009B, DEL, a
//! bidirectional override), printed by the real binary. The output holds
//! no raw control byte, one line per record; JSON output stays JSON, and
//! the same value.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::TestProxy;
use serde_json::{Value, json};

/// Everything a terminal acts on, or that hides text from a reader.
const HOSTILE: &str = "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{1b}]8;;http://evil.example\u{1b}\\link\u{1b}]8;;\u{1b}\\\r\n     9 2026-01-01T00:00:00Z admin\u{9b}31m\u{7f}\u{85}\u{202e}gpj.exe\u{2028}\u{e0041}\t";

/// The characters that must never reach a terminal raw: C0 (but the line
/// feeds that end lines), DEL, C1, the line and paragraph separators, and
/// invisible or direction-changing ones.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{e0000}'..='\u{e007f}')
        })
        .collect()
}

fn proxy(dir_script: &Value) -> (TestProxy, std::path::PathBuf) {
    let proxy = TestProxy::new();
    let log = proxy.dir().join("received.jsonl");
    let script = proxy.dir().join("script.json");
    std::fs::write(&log, "").unwrap();
    std::fs::write(&script, serde_json::to_vec(dir_script).unwrap()).unwrap();
    let server = common::repo_root().join("tests/fixtures/hostile_server.py");
    let snippet = format!(
        "[[servers]]\nname = \"h\"\nprocess = {{ command = \"python3\", args = [{server:?}, \"--log\", {log:?}, \"--script\", {script:?}] }}\n"
    );
    (proxy.with_server_toml(&snippet), script)
}

#[tokio::test(flavor = "multi_thread")]
async fn what_clients_and_servers_write_reaches_an_auditors_terminal_escaped() {
    let tool = format!("evil{HOSTILE}");
    let script = json!({
        "tools": { &tool: [{"send": r#"{"jsonrpc":"2.0","id":{id},"result":{"content":[{"type":"text","text":"ok"}]}}"#}] },
        "descriptions": { &tool: format!("Line one.\nLine two{HOSTILE}") },
    });
    let (proxy, script_path) = proxy(&script);
    let config = proxy.write_config();

    // A client's calls: the hostile tool, a method, a resource URI and a
    // prompt name of the same text.
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let listed = client.call(1, "tools/list", json!({})).await;
    assert!(listed.to_string().contains("evil"), "{listed}");
    let called = client
        .call(
            2,
            "tools/call",
            json!({"name": format!("h__{tool}"), "arguments": {}}),
        )
        .await;
    assert!(called.get("result").is_some(), "{called}");
    client
        .call(3, &format!("tools/call{HOSTILE}"), json!({}))
        .await;
    client
        .call(
            4,
            "resources/read",
            json!({"uri": format!("file:///x{HOSTILE}")}),
        )
        .await;
    client
        .call(5, "prompts/get", json!({"name": format!("h__p{HOSTILE}")}))
        .await;
    client.finish().await;

    // The server changes the tool's description: the pin shows a diff.
    let mut changed = script.clone();
    changed["descriptions"][&tool] = json!(format!(
        "Line one.\r\nLine two{HOSTILE}\r\n+ /forged: \"line\"{HOSTILE}"
    ));
    std::fs::write(&script_path, serde_json::to_vec(&changed).unwrap()).unwrap();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client.call(6, "tools/list", json!({})).await;
    client.finish().await;

    // The table: one line per record, nothing raw.
    let (ok, table, stderr) = common::audit(&config, &["query"]);
    assert!(ok, "{stderr}");
    assert_eq!(raw_controls(&table), Vec::<char>::new(), "{table}");
    let records = common::records(&config, &[]);
    assert_eq!(table.lines().count(), records.len() + 1, "{table}");
    assert!(table.contains("\\u{001B}[2J"), "{table}");
    assert!(table.contains("\\u{202E}gpj.exe"), "{table}");
    // What each field held is kept exactly in the log, and JSON output
    // gives it back as JSON.
    assert!(
        records
            .iter()
            .any(|r| r["method"] == format!("tools/call{HOSTILE}")),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["target"] == tool.as_str()),
        "{records:?}"
    );
    for format in ["jsonl", "json"] {
        let (ok, out, stderr) = common::audit(&config, &["query", "--format", format]);
        assert!(ok, "{stderr}");
        assert_eq!(raw_controls(&out), Vec::<char>::new(), "{format}: {out}");
        if format == "json" {
            let parsed: Vec<Value> = serde_json::from_str(&out).unwrap();
            assert_eq!(parsed, records);
        }
    }

    // The pins: names, diff lines and findings escaped; no line the
    // description made.
    let (ok, pins, stderr) =
        common::run_portcullis(["tools", "pins", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(raw_controls(&pins), Vec::<char>::new(), "{pins}");
    assert!(pins.contains("h__evil\\u{001B}[2J"), "{pins}");
    assert!(
        pins.contains("Line one.\\r\\n"),
        "the changed line end shows: {pins}"
    );
    assert!(
        !pins
            .lines()
            .any(|line| line.starts_with("+ /forged") || line.starts_with("  + /forged")),
        "the description made a line of its own: {pins}"
    );
    let (ok, listed, stderr) =
        common::run_portcullis(["tools", "list", "--config", config.to_str().unwrap()]);
    assert!(ok || !stderr.is_empty(), "{stderr}");
    assert_eq!(raw_controls(&listed), Vec::<char>::new(), "{listed}");
    assert_eq!(raw_controls(&stderr), Vec::<char>::new(), "{stderr}");
}
