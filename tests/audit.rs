//! The audit log through the real proxy: one record per exchange with its
//! decision, no secret in the store, `audit verify` naming tampered records,
//! and a proxy that will not run without a log it can write.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::{Path, PathBuf};

use common::{TestProxy, first_text};
use serde_json::{Value, json};

const SECRET: &str = "sk-live-0123456789abcdefPLANTED";

use common::{all_bytes, audit, contains, records};

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

/// A stdio client of a proxy (the example server, `extra` config) that has
/// made `calls` echo calls and is still connected.
async fn echo_session(extra: &str, calls: i64) -> (TestProxy, PathBuf, common::RawClient) {
    let proxy = TestProxy::new()
        .with_config(extra)
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    echo_calls(&mut client, calls).await;
    (proxy, config, client)
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
    let all = records(&config, &["--kind", "exchange"]);
    let methods: Vec<&str> = all.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        ["initialize", "tools/call", "tools/call", "tools/call"],
        "{all:#?}"
    );
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

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
    assert_eq!(
        records(&config, &["--tool", "example__echo", "--kind", "exchange"]).len(),
        1
    );
    assert_eq!(
        records(&config, &["--tool", "echo", "--client", "other"]).len(),
        0
    );
    assert_eq!(
        records(&config, &["--since", "1h", "--kind", "exchange"]).len(),
        4
    );
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

    // Around the exchanges, in the same chain: the proxy's start (its
    // config's digest, the policy set), the unsandboxed process server, the
    // server coming up, the session, and the proxy's stop.
    let every = records(&config, &["--limit", "1000"]);
    let kinds: Vec<&str> = every.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in [
        "proxy_start",
        "sandbox_relaxed",
        "server_ready",
        "session_start",
        "session_end",
        "proxy_stop",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            1,
            "{kind}: {kinds:?}"
        );
    }
    assert_eq!(kinds.first(), Some(&"proxy_start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"proxy_stop"), "{kinds:?}");
    let event = |kind: &str| every.iter().find(|r| r["kind"] == kind).unwrap().clone();
    let start = event("proxy_start");
    let config_text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        start["detail"]["config_sha256"],
        json!(common::sha256_hex(&config_text))
    );
    assert_eq!(start["detail"]["role"], json!("stdio-tester"));
    assert_eq!(start["policy_set"], echo["policy_set"]);
    assert_eq!(event("sandbox_relaxed")["server"], json!("example"));
    assert_eq!(
        event("server_ready")["detail"]["upstream"],
        json!("process")
    );
    let session = event("session_start");
    assert_eq!(session["client"], json!("tester"));
    assert_eq!(session["session"], echo["session"]);
    assert!(session["detail"]["agent"].is_string(), "{session}");
    let end = event("session_end");
    assert_eq!(end["session"], echo["session"]);
    assert!(end["total_us"].as_u64().unwrap() > 0);
    assert_eq!(records(&config, &["--kind", "session_start"]).len(), 1);

    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("intact: {} records", every.len())),
        "{stdout}"
    );
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
        record["reason"] = json!("edited afterwards");
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
    let (_proxy, config, client) = echo_session("\n[audit]\ndurability = \"buffered\"", 20).await;
    client.finish().await;
    let all = records(&config, &["--limit", "1000", "--kind", "exchange"]);
    assert_eq!(all.len(), 21, "initialize and 20 calls");
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_reply_a_client_got_survives_a_killed_proxy() {
    let (_proxy, config, mut client) = echo_session("", 30).await;
    // SIGKILL: no shutdown, no flush. Every reply above was sent after its
    // record was flushed.
    client.child.kill().await.unwrap();
    let _ = client.child.wait().await;
    let all = records(&config, &["--limit", "1000", "--kind", "exchange"]);
    assert_eq!(all.len(), 31, "initialize and 30 calls: {all:#?}");
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("intact"), "{stdout}");
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
    assert_eq!(stdout.matches("intact").count(), 2, "{stdout}");
    assert_eq!(
        records(&config, &["--kind", "exchange"]).len(),
        4,
        "both logs are queried"
    );
}

#[test]
fn bad_filters_are_clear_errors() {
    let proxy = TestProxy::new();
    let config = proxy.write_config();
    for (args, expected) in [
        (
            vec!["query", "--decision", "maybe"],
            "--decision `maybe`: must be one of allow, deny, error",
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
        (
            vec!["query", "--kind", "exchanges"],
            "--kind `exchanges`: must be one of",
        ),
        (vec!["query", "--client", ""], "--client ``: is empty"),
        (vec!["verify"], "no readable audit log"),
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
    // Refused as the data folder is checked, before the store is opened.
    assert!(
        stderr.contains("`proxy.data_dir`") && stderr.contains("blocked` is not a folder"),
        "{stderr}"
    );
}

/// `portcullis audit ARGS` with an auditor token in the environment.
fn audit_with_token(config: &Path, args: &[&str], token: &str) -> (bool, String, String) {
    let output = std::process::Command::new(common::portcullis_bin())
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("PORTCULLIS_AUDITOR_TOKEN", token)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// JSON lines read from a streamed body until `count` records came.
async fn next_records(
    response: &mut reqwest::Response,
    pending: &mut Vec<u8>,
    count: usize,
) -> Vec<Value> {
    let mut found = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !line.iter().all(u8::is_ascii_whitespace) {
                    found.push(serde_json::from_slice::<Value>(&line).unwrap());
                }
                if found.len() == count {
                    return;
                }
            }
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            pending.extend_from_slice(&chunk);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} records came", found.len()));
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_read_a_running_proxys_log_over_the_admin_api_and_clients_cannot() {
    // Failures are recorded once a second (aggregated per interval).
    let proxy = TestProxy::new()
        .with_example_server("example")
        .with_config("[listener]\nfailure_record_interval = \"1s\"");
    let config = proxy.write_config();
    let served = proxy.serve_http().await;
    let base = served.base.clone();
    let http = reqwest::Client::new();
    let admin = |path: &str| http.get(format!("{base}{path}"));
    // GET as the auditor; the JSON answer.
    let as_auditor = |path: &str| {
        let request = admin(path).bearer_auth(common::AUDITOR_TOKEN);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    // A follower that starts before the calls sees each echo as it commits.
    let mut tail = admin("/admin/audit/tail?tool=example__echo&kind=exchange&after=0")
        .bearer_auth(common::AUDITOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let session = common::HttpSession::connect(&served.url).await;
    for id in 1..=3 {
        let reply = session
            .call(
                id,
                "tools/call",
                json!({"name": "example__echo", "arguments": {"text": SECRET}}),
            )
            .await;
        assert_eq!(first_text(&reply), format!("example: {SECRET}"));
    }
    session.call(4, "tools/list", json!({})).await;
    let mut pending = Vec::new();
    let followed = next_records(&mut tail, &mut pending, 3).await;
    assert!(
        followed
            .iter()
            .all(|r| r["target"] == "echo" && r["decision"] == "allow"),
        "{followed:?}"
    );
    let seqs: Vec<u64> = followed
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The same filters as the CLI.
    let answer =
        as_auditor("/admin/audit?client=tester&tool=example__echo&decision=allow&kind=exchange")
            .await;
    let found = answer["records"].as_array().unwrap();
    assert_eq!(found.len(), 3, "{answer}");
    assert_eq!(found, &followed);
    assert!(
        answer["last_seq"].as_u64().unwrap() >= 5,
        "initialize, 3 calls, list"
    );

    // A client's token cannot read the log, and an auditor's cannot call tools.
    for token in [Some(common::TOKEN), Some("not-a-token"), None] {
        let mut request = admin("/admin/audit");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{token:?}");
    }
    let refused = http
        .post(&served.url)
        .bearer_auth(common::AUDITOR_TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Each refusal is in the log: where, why, and whose token it was when
    // it is somebody's (never the token itself).
    let failures = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let answer = as_auditor("/admin/audit?kind=auth_failure").await;
            let found = answer["records"].as_array().unwrap().clone();
            if found.len() >= 4 {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("four auth_failure records");
    let summary: Vec<(String, String, String)> = failures
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["client"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        (
            "/admin",
            "tester",
            "a client's token (clients cannot read the log)",
        ),
        ("/admin", "", "unknown token"),
        ("/admin", "", "no bearer token"),
        (
            "/mcp",
            "auditors",
            "an auditor's token (auditors cannot call tools)",
        ),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(summary.contains(&expected), "{expected:?} in {summary:?}");
    }
    assert!(failures.iter().all(|r| r["decision"] == "deny"));
    assert!(
        !serde_json::to_string(&failures)
            .unwrap()
            .contains(common::TOKEN)
    );

    // Bad filters: 400 naming the field.
    for (query, expected) in [
        ("decision=maybe", "decision `maybe`"),
        ("since=yesterday", "since `yesterday`"),
        ("limit=many", "limit `many`"),
        ("after=-1", "after `-1`"),
        ("colour=red", "colour"),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "must be before",
        ),
    ] {
        let response = admin(&format!("/admin/audit?{query}"))
            .bearer_auth(common::AUDITOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{query}: {text}");
    }

    // The CLI reads the running proxy's store over the same API.
    let url = base.as_str();
    let (ok, stdout, stderr) = audit_with_token(
        &config,
        &[
            "query",
            "--url",
            url,
            "--tool",
            "example__echo",
            "--kind",
            "exchange",
            "--format",
            "jsonl",
        ],
        common::AUDITOR_TOKEN,
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let (ok, stdout, stderr) =
        audit_with_token(&config, &["verify", "--url", url], common::AUDITOR_TOKEN);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("serve: intact"), "{stdout}");
    let export = proxy.dir().join("export.jsonl");
    let (ok, _, stderr) = audit_with_token(
        &config,
        &["export", "--url", url, "--output", export.to_str().unwrap()],
        common::AUDITOR_TOKEN,
    );
    assert!(ok, "{stderr}");
    let exported = std::fs::read_to_string(&export).unwrap();
    let exported: Vec<Value> = exported
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seqs: Vec<u64> = exported
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "the whole log, in order"
    );
    assert!(seqs.len() as u64 > answer["last_seq"].as_u64().unwrap());
    assert!(!contains(&std::fs::read(&export).unwrap(), SECRET));
    // Without the token, or with a client's, the CLI says what is missing.
    let (ok, _, stderr) = audit(&config, &["query", "--url", url]);
    assert!(!ok);
    assert!(stderr.contains("auditor's token"), "{stderr}");
    let (ok, _, stderr) = audit_with_token(&config, &["query", "--url", url], common::TOKEN);
    assert!(!ok);
    assert!(stderr.contains("refused the token"), "{stderr}");
    // Without --url, a store held by a proxy whose port is not in the config.
    let (ok, _, stderr) = audit_with_token(&config, &["query"], common::AUDITOR_TOKEN);
    assert!(!ok);
    assert!(stderr.contains("--url"), "{stderr}");

    drop(tail);
    served.terminate().await;
    // Stopped: the CLI opens the store itself and finds the same records.
    let offline = records(&config, &["--tool", "example__echo", "--kind", "exchange"]);
    assert_eq!(offline, followed);
    let exported_offline: Vec<Value> = {
        let (ok, stdout, stderr) = audit(&config, &["export"]);
        assert!(ok, "{stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // The same records, and those since (refusals, the session's end, the
    // proxy's stop).
    assert_eq!(exported_offline[..exported.len()], exported[..]);
    assert_eq!(
        exported_offline.last().map(|r| r["kind"].clone()),
        Some(json!("proxy_stop"))
    );
}

/// The records of one kind, oldest first (read offline: the proxy stopped).
fn of_kind(config: &Path, kind: &str) -> Vec<Value> {
    records(config, &["--kind", kind, "--limit", "1000"])
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_reloads_and_server_restarts_are_recorded() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\npolicy_poll = \"100ms\"")
        .with_example_server("example");
    let folder = proxy.policy_folder(r#"@id("all") permit(principal, action, resource);"#);
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    echo_calls(&mut client, 1).await;

    // A new set is applied; a broken one is refused (once) and the set in
    // force stays.
    std::fs::write(
        folder.join("extra.cedar"),
        r#"@id("no-crash") forbid(principal, action, resource == Tool::"example__add");"#,
    )
    .unwrap();
    client.wait_for_log(&["policies reloaded"]).await;
    std::fs::write(folder.join("broken.cedar"), "permit(principal, action,").unwrap();
    client.wait_for_log(&["policy reload rejected"]).await;

    // The server crashes on request and is started again.
    let _ = client
        .call(
            2,
            "tools/call",
            json!({"name": "example__crash", "arguments": {"code": 3}}),
        )
        .await;
    client.wait_for_log(&["restarting"]).await;
    let reply = client
        .call_until_served(
            10,
            json!({"name": "example__echo", "arguments": {"text": "x"}}),
            std::time::Duration::from_secs(20),
        )
        .await;
    assert_eq!(first_text(&reply), "example: x");
    client.finish().await;

    let reloads = of_kind(&config, "policy_reload");
    assert_eq!(reloads.len(), 2, "{reloads:#?}");
    let start = &of_kind(&config, "proxy_start")[0];
    assert_eq!(reloads[0]["decision"], json!("allow"));
    assert_eq!(reloads[0]["detail"]["previous"], start["policy_set"]);
    assert_eq!(reloads[0]["detail"]["policies"], json!(2));
    assert_ne!(reloads[0]["policy_set"], start["policy_set"]);
    assert_eq!(reloads[1]["decision"], json!("error"));
    assert_eq!(
        reloads[1]["policy_set"], reloads[0]["policy_set"],
        "the set in force stays"
    );
    let reason = reloads[1]["reason"].as_str().unwrap();
    assert!(reason.contains("broken.cedar:1:"), "{reason}");

    let downs = of_kind(&config, "server_down");
    assert_eq!(downs.len(), 1, "{downs:#?}");
    assert_eq!(downs[0]["server"], json!("example"));
    assert_eq!(downs[0]["decision"], json!("error"));
    assert!(
        downs[0]["reason"].as_str().unwrap().contains("exited"),
        "{downs:#?}"
    );
    let readies = of_kind(&config, "server_ready");
    assert_eq!(readies.len(), 2, "{readies:#?}");
    assert_eq!(readies[1]["detail"]["restarts"], json!(1));
    assert!(readies[1]["seq"].as_u64() > downs[0]["seq"].as_u64());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_concurrent_load_every_reply_survives_a_killed_proxy() {
    let proxy = TestProxy::new().with_example_server("example");
    let config = proxy.write_config();
    let mut served = proxy.serve_http().await;
    let received = common::calls_then_kill(&mut served, 8).await;
    eprintln!("{} replies received before the kill", received.len());

    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    let calls = records(
        &config,
        &[
            "--kind",
            "exchange",
            "--tool",
            "example__echo",
            "--limit",
            "1000000",
        ],
    );
    let recorded: std::collections::HashSet<(String, u64)> = calls
        .iter()
        .map(|r| {
            (
                r["session"].as_str().unwrap().to_owned(),
                r["request_id"].as_u64().unwrap(),
            )
        })
        .collect();
    let missing: Vec<_> = received.iter().filter(|r| !recorded.contains(*r)).collect();
    assert!(missing.is_empty(), "replies without a record: {missing:?}");
    assert_eq!(recorded.len(), calls.len(), "each call recorded once");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_records_and_the_chain_verifiable() {
    let (_proxy, config, client) =
        echo_session("\n[audit]\nmax_records = 100\nmax_age = \"90d\"", 150).await;
    client.finish().await;
    let (ok, stdout, stderr) = audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("older ones removed by retention"),
        "{stdout}"
    );
    let kept = records(&config, &["--limit", "100000"]);
    assert!((100..=125).contains(&kept.len()), "{} kept", kept.len());
    assert!(kept.iter().any(|r| r["kind"] == "checkpoint"));
    assert_eq!(
        kept.last().map(|r| r["kind"].clone()),
        Some(json!("proxy_stop"))
    );

    // Bad retention settings are refused with their line.
    for (setting, expected) in [
        ("max_records = 5", "keep at least 100 records"),
        ("max_age = \"forever\"", "not a duration"),
    ] {
        let bad = TestProxy::new().with_config(&format!("\n[audit]\n{setting}"));
        let stderr = common::serve_refused(&bad.write_config());
        assert!(stderr.contains(expected), "{setting}: {stderr}");
        assert!(stderr.contains("portcullis.toml:"), "{stderr}");
    }
}

/// A sled store whose writes fail while `broken` is set: a disk that fills
/// up, then has room again (fault injection; everything else is real).
struct FailingDisk {
    store: portcullis::audit::SledStorage,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl portcullis::audit::Storage for FailingDisk {
    fn last(&self) -> Result<Option<portcullis::audit::ChainEnd>, portcullis::audit::AuditError> {
        self.store.last()
    }
    fn append(
        &mut self,
        records: &[portcullis::audit::AuditRecord],
    ) -> Result<(), portcullis::audit::AuditError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(portcullis::audit::AuditError::Write(
                "No space left on device (os error 28)".into(),
            ));
        }
        self.store.append(records)
    }
    fn flush(&mut self) -> Result<(), portcullis::audit::AuditError> {
        self.store.flush()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_refused_while_the_store_cannot_be_written_and_served_again_after() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let config =
        portcullis::config::Config::parse("[[clients]]\nname = \"tester\"\n", &path).unwrap();
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = portcullis::audit::SledStorage::open(&dir.path().join("audit")).unwrap();
    let reader = store.reader();
    let disk = FailingDisk {
        store,
        broken: broken.clone(),
    };
    let audit = portcullis::audit::Audit::start(disk, true).unwrap();
    let config = std::sync::Arc::new(config);
    let built = portcullis::interceptors::build_chain(&config).unwrap();
    let (gateway, _events) =
        portcullis::gateway::Gateway::new(config, built.chain, Some(audit), Default::default());

    let (client_side, proxy_side) = tokio::io::duplex(1 << 16);
    let (proxy_read, proxy_write) = tokio::io::split(proxy_side);
    let (client_read, mut client_write) = tokio::io::split(client_side);
    let identity = portcullis::chain::ClientIdentity::new("tester", &[]);
    tokio::spawn(portcullis::downstream::stdio::serve_on(
        gateway,
        identity,
        tokio::io::BufReader::new(proxy_read),
        proxy_write,
    ));
    let mut replies = tokio::io::BufReader::new(client_read).lines();
    let mut ask = async |id: u64, method: &str| -> Value {
        let line = json!({"jsonrpc":"2.0","id":id,"method":method,"params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
        client_write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), replies.next_line())
            .await
            .expect("a reply")
            .unwrap()
            .expect("a line");
        serde_json::from_str(&reply).unwrap()
    };
    assert!(ask(1, "initialize").await.get("result").is_some());
    assert!(ask(2, "ping").await.get("result").is_some());

    // The disk is full: every request is refused, none served unrecorded.
    broken.store(true, Ordering::SeqCst);
    for id in 3..6 {
        let reply = ask(id, "ping").await;
        assert_eq!(reply["error"]["code"], json!(-32014), "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("audit log"), "{message}");
    }
    // Room again: served, and the refusals' records the store could not
    // take are not in it; the chain has no gap.
    broken.store(false, Ordering::SeqCst);
    let mut id = 10;
    let served = loop {
        id += 1;
        let reply = ask(id, "ping").await;
        if reply.get("result").is_some() {
            break id;
        }
        assert!(id < 20, "never served again: {reply}");
    };
    assert!(matches!(
        reader.verify(),
        Ok(portcullis::audit::Verification::Intact { .. })
    ));
    let recorded: Vec<Option<Value>> = reader
        .query(&portcullis::audit::Filter::default(), "__")
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "exchange")
        .map(|r| r.request_id)
        .collect();
    assert_eq!(recorded.first(), Some(&Some(json!(1))));
    assert!(recorded.contains(&Some(json!(2))));
    assert!(recorded.contains(&Some(json!(served))));
    for refused in 3..6 {
        assert!(!recorded.contains(&Some(json!(refused))), "{recorded:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_by_limits_is_recorded_with_the_interceptor_that_decided() {
    let proxy = TestProxy::new()
        .with_config("[limits]\nmax_message_bytes = 65536")
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    // The server's reply is too large: refused on its way back.
    let reply = client
        .call(
            7,
            "tools/call",
            json!({"name": "example__large", "arguments": {"bytes": 200000}}),
        )
        .await;
    assert_eq!(reply["error"]["data"]["interceptor"], "limits", "{reply}");
    client.finish().await;
    let all = records(&config, &["--kind", "exchange"]);
    let denied = records(&config, &["--decision", "deny"]);
    assert_eq!(denied.len(), 1, "{all:#?}");
    assert_eq!(denied[0]["decided_by"], json!("limits"));
    assert_eq!(denied[0]["request_id"], json!(7));
    assert_eq!(denied[0]["target"], json!("large"));
    assert!(denied[0]["upstream_us"].is_u64(), "it reached the server");
}

/// `[audit] arguments = "redacted"`: the record keeps the arguments, with
/// every secret redacted even when `[redact]` only logs them on the way to
/// the server; the secret never reaches the store or the export.
#[tokio::test]
async fn kept_arguments_are_redacted_whatever_the_redact_actions() {
    // Built at run time so that no scanner flags this file.
    let token = format!(
        "ghp_{}",
        "Z3r0Tw0Fou7Six8Nine1Ten2ElevenTw3lve".get(..36).unwrap()
    );
    let proxy = TestProxy::new()
        .with_config("[audit]\narguments = \"redacted\"\n[redact]\nrequests = \"log\"\n")
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let text = format!("deploy with {token}");
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": text, "n": [1, 2]}}),
        )
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    let big = "x".repeat(70 * 1024);
    client
        .call(
            2,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": big}}),
        )
        .await;
    client.finish().await;

    let calls = records(&config, &["--kind", "exchange", "--tool", "example__echo"]);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let kept = &calls[0]["detail"]["arguments"];
    assert_eq!(kept["n"], json!([1, 2]), "{kept}");
    let kept_text = kept["text"].as_str().unwrap();
    assert!(
        kept_text.starts_with("deploy with [REDACTED:") && !kept_text.contains(&token),
        "{kept_text}"
    );
    // `log` forwarded the secret: the hash is of what the server received.
    assert_eq!(
        calls[0]["arguments_sha256"],
        json!(portcullis::audit::sha256_canonical(
            &json!({"text": format!("deploy with {token}"), "n": [1, 2]})
        ))
    );
    let omitted = calls[1]["detail"]["arguments"]["omitted"]
        .as_str()
        .unwrap_or_default();
    assert!(omitted.contains("over the 65536 kept"), "{}", calls[1]);
    let store = proxy.dir().join(".portcullis/audit");
    assert!(
        !contains(&all_bytes(&store), &token),
        "the secret reached the store"
    );
    let (ok, export, stderr) = audit(&config, &["export"]);
    assert!(ok, "{stderr}");
    assert!(export.contains("[REDACTED:") && !export.contains(&token));
}
