//! The audit log through the real proxy: one record per exchange with its
//! decision, no secret in the store, `audit verify` naming tampered records,
//! and a proxy that will not run without a log it can write.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{TestProxy, first_text};
use serde_json::{Value, json};

const SECRET: &str = "sk-live-0123456789abcdefPLANTED";

/// `portcullis audit … --config CONFIG`: (success, stdout, stderr).
fn audit(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = vec!["audit".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.push("--config".as_ref());
    all.push(config.as_os_str());
    common::run_portcullis(all)
}

fn records(config: &Path, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["query", "--format", "jsonl"];
    args.extend_from_slice(filters);
    let (ok, stdout, stderr) = audit(config, &args);
    assert!(ok, "{stderr}");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// `count` echo calls, each answered.
async fn echo_calls(client: &mut common::RawClient, count: i64) {
    for id in 1..=count {
        let reply = client
            .call(
                id,
                "tools/call",
                json!({"name": "example__echo", "arguments": {"text": "x"}}),
            )
            .await;
        assert_eq!(first_text(&reply), "example: x");
    }
}

/// A proxy with the example server and a policy that allows `echo` and
/// forbids everything else; a scripted stdio session; the proxy stopped.
async fn scripted_session() -> (TestProxy, PathBuf) {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example");
    proxy.policy_folder(
        r#"@id("echo-only") permit(principal, action, resource == Tool::"example__echo");"#,
    );
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": SECRET}}),
        )
        .await;
    assert_eq!(first_text(&reply), format!("example: {SECRET}"));
    let reply = client
        .call(
            2,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], json!(-32010), "{reply}");
    let reply = client
        .call(
            3,
            "tools/call",
            json!({"name": "example__nosuch", "arguments": {}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], json!(-32602), "{reply}");
    client.finish().await;
    (proxy, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exchange_is_recorded_once_with_its_decision_and_no_secret() {
    let (proxy, config) = scripted_session().await;
    let all = records(&config, &[]);
    let methods: Vec<&str> = all.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["initialize", "tools/call", "tools/call", "tools/call"],
        "{all:#?}"
    );
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    let echo = &all[1];
    assert_eq!(echo["decision"], json!("allow"));
    assert_eq!(echo["client"], json!("tester"));
    assert_eq!(echo["server"], json!("example"));
    assert_eq!(echo["target"], json!("echo"));
    assert_eq!(echo["policy_ids"], json!(["echo-only"]));
    assert_eq!(echo["is_error"], json!(false));
    assert!(echo["result_bytes"].as_u64().unwrap() > SECRET.len() as u64);
    assert!(echo["upstream_us"].as_u64().is_some());
    assert_eq!(
        echo["arguments_sha256"],
        json!(portcullis::audit::sha256_canonical(
            &json!({"text": SECRET})
        ))
    );

    let add = &all[2];
    assert_eq!(add["decision"], json!("deny"));
    assert_eq!(add["decided_by"], json!("authz"));
    assert_eq!(add["decision_id"].as_str().unwrap().len(), 16);
    assert!(
        add["upstream_us"].is_null(),
        "a denied call never reached the server"
    );

    let unknown = &all[3];
    assert_eq!(unknown["decision"], json!("error"));
    assert!(unknown["reason"].as_str().unwrap().contains("unknown tool"));

    // Filters.
    let denied = records(&config, &["--decision", "deny"]);
    assert_eq!(denied.len(), 1);
    assert_eq!(records(&config, &["--tool", "example__echo"]).len(), 1);
    assert_eq!(
        records(&config, &["--tool", "echo", "--client", "other"]).len(),
        0
    );
    assert_eq!(records(&config, &["--since", "1h"]).len(), 4);
    assert_eq!(
        records(&config, &["--until", "2000-01-01T00:00:00Z"]).len(),
        0
    );

    // The secret went through the proxy both ways but is nowhere in the
    // store's files or the export.
    let store = proxy.dir().join(".portcullis/audit");
    assert!(
        !contains(&all_bytes(&store), SECRET),
        "the secret is in the store"
    );
    let (_, export, _) = audit(&config, &["query", "--format", "json"]);
    assert!(!export.contains(SECRET));

    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 4 records"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_changed_record() {
    let (proxy, config) = scripted_session().await;
    let path = proxy.dir().join(".portcullis/audit/stdio-tester");
    {
        let db = sled::open(&path).unwrap();
        let tree = db.open_tree("records").unwrap();
        let key = 3u64.to_be_bytes();
        let mut record: Value = serde_json::from_slice(&tree.get(key).unwrap().unwrap()).unwrap();
        record["decision"] = json!("allow");
        tree.insert(key, serde_json::to_vec(&record).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let (ok, stdout, _) = audit(&config, &["verify"]);
    assert!(!ok);
    assert!(stdout.contains("BROKEN at record 3"), "{stdout}");
    assert!(stdout.contains("changed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn buffered_records_are_all_on_disk_after_a_clean_stop() {
    let proxy = TestProxy::new()
        .with_config("\n[audit]\ndurability = \"buffered\"")
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    echo_calls(&mut client, 20).await;
    client.finish().await;
    let all = records(&config, &["--limit", "1000"]);
    assert_eq!(all.len(), 21, "initialize and 20 calls");
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_reply_a_client_got_survives_a_killed_proxy() {
    let proxy = TestProxy::new().with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    echo_calls(&mut client, 30).await;
    // SIGKILL: no shutdown, no flush. Every reply above was sent after its
    // record was synced to the write-ahead file.
    client.child.kill().await.unwrap();
    let _ = client.child.wait().await;
    let all = records(&config, &["--limit", "1000"]);
    assert_eq!(all.len(), 31, "initialize and 30 calls: {all:#?}");
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 31 records"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_stdio_proxies_of_one_client_keep_two_logs() {
    let proxy = TestProxy::new().with_example_server("example");
    let config = proxy.write_config();
    let mut first = proxy.raw_stdio().await;
    first.initialize().await;
    // The first holds `stdio-tester`; the second gets `stdio-tester-2`.
    let mut second = proxy.raw_stdio().await;
    second.initialize().await;
    for client in [&mut first, &mut second] {
        let reply = client
            .call(
                1,
                "tools/call",
                json!({"name": "example__echo", "arguments": {"text": "x"}}),
            )
            .await;
        assert_eq!(first_text(&reply), "example: x");
    }
    first.finish().await;
    second.finish().await;
    let audit_dir = proxy.dir().join(".portcullis/audit");
    assert!(audit_dir.join("stdio-tester").is_dir());
    assert!(audit_dir.join("stdio-tester-2").is_dir());
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout.matches("intact: 2 records").count(), 2, "{stdout}");
    assert_eq!(records(&config, &[]).len(), 4, "both logs are queried");
}

#[test]
fn bad_filters_are_clear_errors() {
    let proxy = TestProxy::new();
    let config = proxy.write_config();
    for (args, expected) in [
        (
            vec!["query", "--decision", "maybe"],
            "must be allow, deny or error",
        ),
        (vec!["query", "--since", "yesterday"], "neither a time"),
        (
            vec![
                "query",
                "--since",
                "2026-01-02T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
            "must be before",
        ),
        (vec!["verify"], "no audit log yet"),
    ] {
        let (ok, _, stderr) = audit(&config, &args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn the_proxy_does_not_run_without_an_audit_log_it_can_write() {
    let proxy = TestProxy::new().with_example_server("example");
    // The data_dir is a file: no store can be made there.
    std::fs::write(proxy.dir().join("blocked"), "not a folder").unwrap();
    let config = proxy.write_config();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[proxy]\n",
        "[proxy]\ndata_dir = \"blocked\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let stderr = common::serve_refused(&config);
    assert!(stderr.contains("cannot open the audit log"), "{stderr}");
}
