//! Config reload through the real binary: the config file watched (and
//! read again on SIGHUP) while a session keeps calling. A server added is
//! started and announced to the open session, one removed leaves its lists
//! and is refused, one changed restarts; a file that does not load keeps
//! the last good config; sections that only apply at start are named; a
//! profile's tools change under `serve --profile`. Every reload is
//! recorded (`config_reload`).
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    AUDITOR_TOKEN, HttpProxy, HttpSession, TestProxy, admin_records, first_text, tool_names,
};
use serde_json::{Value, json};

async fn echo(session: &HttpSession, id: i64, tool: &str, text: &str) -> Value {
    session
        .call(
            id,
            "tools/call",
            json!({ "name": tool, "arguments": { "text": text } }),
        )
        .await
}

async fn listed(session: &HttpSession, id: i64) -> Vec<String> {
    let mut names = tool_names(&session.call(id, "tools/list", json!({})).await);
    names.sort();
    names
}

/// The servers whose tools `session` is listed.
async fn servers_listed(session: &HttpSession, id: i64) -> Vec<String> {
    let mut servers: Vec<String> = listed(session, id)
        .await
        .iter()
        .filter_map(|name| name.split_once("__").map(|(server, _)| server.to_owned()))
        .collect();
    servers.dedup();
    servers
}

/// The `config_reload` records so far, oldest first.
async fn reloads(proxy: &HttpProxy) -> Vec<Value> {
    admin_records(&proxy.base, "kind=config_reload", AUDITOR_TOKEN).await
}

/// Waits (up to 60 s) until the `count`th `config_reload` record is there.
async fn nth_reload(proxy: &HttpProxy, count: usize) -> Value {
    for _ in 0..600 {
        let records = reloads(proxy).await;
        if records.len() >= count {
            let mut sorted = records;
            sorted.sort_by_key(|record| record["seq"].as_u64());
            return sorted[count - 1].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no config_reload record number {count}");
}

/// Waits until `events` carries a tools `list_changed`.
async fn tools_changed(events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = events.recv().await {
            if message["method"] == "notifications/tools/list_changed" {
                return;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a tools list_changed on the session's stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_adds_removes_and_restarts_servers_while_a_session_calls() {
    let mut proxy = TestProxy::new()
        .with_config("policy_poll = \"200ms\"")
        .with_example_server("example");
    let served = proxy.serve_http().await;
    let session = Arc::new(HttpSession::connect(&served.url).await);
    let mut events = session.events().await;
    assert_eq!(servers_listed(&session, 1).await, ["example"]);

    // A session calls the configured server throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (session, stop) = (session.clone(), stop.clone());
        tokio::spawn(async move {
            let mut calls = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = 1000 + calls;
                let reply = echo(&session, id, "example__echo", "steady").await;
                assert_eq!(first_text(&reply), "example: steady", "call {id}: {reply}");
                calls += 1;
            }
            calls
        })
    };

    // Added: started, announced to the open session, listed and callable.
    proxy = proxy.with_example_server("spare");
    proxy.write_config();
    tools_changed(&mut events).await;
    let added = nth_reload(&served, 1).await;
    assert_eq!(added["decision"], "allow", "{added}");
    assert_eq!(added["detail"]["added"], json!(["spare"]), "{added}");
    assert_eq!(added["detail"]["restart_required"], json!([]), "{added}");
    assert_eq!(servers_listed(&session, 2).await, ["example", "spare"]);
    let reply = echo(&session, 3, "spare__echo", "new").await;
    assert_eq!(first_text(&reply), "spare: new", "{reply}");
    // The process server runs unsandboxed, which is recorded as at start.
    let relaxed = admin_records(&served.base, "kind=sandbox_relaxed", AUDITOR_TOKEN).await;
    assert!(
        relaxed.iter().any(|record| record["server"] == "spare"),
        "{relaxed:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let calls = caller.await.expect("every call of the session succeeded");
    assert!(calls > 0, "the session called during the reload");

    // A file that does not load: the last good config stays, the reason
    // is logged and recorded.
    let config = proxy.dir().join("portcullis.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[[servers]]\nname = \"spare\"\n")).unwrap();
    let broken = nth_reload(&served, 2).await;
    assert_eq!(broken["decision"], "error", "{broken}");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("portcullis.toml"),
        "{broken}"
    );
    served
        .log
        .wait_for(&["the config was not reloaded", "last good one"])
        .await;
    let reply = echo(&session, 4, "spare__echo", "still").await;
    assert_eq!(first_text(&reply), "spare: still", "{reply}");

    // Removed, changed, and a section that applies only at start.
    let text = good
        .replace("policy_poll = \"200ms\"", "policy_poll = \"300ms\"")
        .replace(
            "args = [\"--name\", \"example\"] }\n",
            "args = [\"--name\", \"example\"] }\ntimeout = \"9s\"\n",
        );
    let text = text
        .split("[[servers]]")
        .filter(|part| !part.contains("\"spare\""))
        .collect::<Vec<_>>()
        .join("[[servers]]");
    std::fs::write(&config, text).unwrap();
    tools_changed(&mut events).await;
    let changed = nth_reload(&served, 3).await;
    assert_eq!(changed["decision"], "allow", "{changed}");
    assert_eq!(changed["detail"]["removed"], json!(["spare"]), "{changed}");
    assert_eq!(
        changed["detail"]["restarted"],
        json!(["example"]),
        "{changed}"
    );
    assert_eq!(
        changed["detail"]["restart_required"],
        json!(["proxy"]),
        "{changed}"
    );
    served
        .log
        .wait_for(&["apply only at the next start", "proxy"])
        .await;
    assert_eq!(servers_listed(&session, 5).await, ["example"]);
    let refused = echo(&session, 6, "spare__echo", "gone").await;
    assert!(refused["error"].is_object(), "{refused}");
    let reply = echo(&session, 7, "example__echo", "restarted").await;
    assert_eq!(first_text(&reply), "example: restarted", "{reply}");
    served.terminate().await;
}

/// A lazy server (a container, started at its first use) that a reload
/// adds is announced to the open sessions at once, before anything started
/// it: the session's next list starts it and lists its tools.
#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_server_a_reload_adds_is_announced_at_once() {
    let mut proxy = TestProxy::new()
        .with_config("policy_poll = \"200ms\"")
        .with_example_server("example");
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let mut events = session.events().await;
    assert_eq!(servers_listed(&session, 1).await, ["example"]);

    proxy = proxy.with_container_server("boxed", "", "");
    proxy.write_config();
    tools_changed(&mut events).await;
    let added = nth_reload(&served, 1).await;
    assert_eq!(added["detail"]["added"], json!(["boxed"]), "{added}");
    assert_eq!(servers_listed(&session, 2).await, ["boxed", "example"]);
    let reply = echo(&session, 3, "boxed__echo", "lazy").await;
    assert_eq!(first_text(&reply), "boxed: lazy", "{reply}");
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_profile_and_a_broken_one_keeps_the_last_good() {
    // Checked once an hour: only SIGHUP reads the files again here.
    let proxy = TestProxy::new()
        .with_config("policy_poll = \"1h\"")
        .with_example_server("example")
        .with_example_server("spare");
    let config = proxy.write_config();
    let profiles = proxy.dir().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let profile = profiles.join("narrow.toml");
    std::fs::write(
        &profile,
        "servers = [\"example\"]\n[tools]\nexample = [\"echo\"]\n",
    )
    .unwrap();
    let served = common::serve_config_with(&config, &["--profile", "narrow"]).await;
    let session = HttpSession::connect(&served.url).await;
    assert_eq!(listed(&session, 1).await, ["example__echo"]);

    // The profile now runs both servers and another tool.
    std::fs::write(
        &profile,
        "servers = [\"example\", \"spare\"]\n[tools]\nexample = [\"echo\", \"add\"]\n",
    )
    .unwrap();
    served.signal("HUP");
    let widened = nth_reload(&served, 1).await;
    assert_eq!(widened["decision"], "allow", "{widened}");
    assert_eq!(widened["detail"]["profile_changed"], true, "{widened}");
    assert_eq!(widened["detail"]["added"], json!(["spare"]), "{widened}");
    assert_eq!(widened["profile"], "narrow", "{widened}");
    let widened_tools = listed(&session, 2).await;
    for tool in [
        "example__add",
        "example__echo",
        "spare__echo",
        "spare__sleep",
    ] {
        assert!(widened_tools.iter().any(|t| t == tool), "{widened_tools:?}");
    }
    assert!(
        !widened_tools.iter().any(|t| t == "example__sleep"),
        "{widened_tools:?}"
    );
    let added = session
        .call(
            3,
            "tools/call",
            json!({ "name": "example__add", "arguments": { "a": 2, "b": 3 } }),
        )
        .await;
    assert_eq!(first_text(&added), "5", "{added}");

    // A profile naming a server the config lacks does not load: the last
    // good one stays.
    std::fs::write(&profile, "servers = [\"ghost\"]\n").unwrap();
    served.signal("HUP");
    let refused = nth_reload(&served, 2).await;
    assert_eq!(refused["decision"], "error", "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().contains("`ghost`"),
        "{refused}"
    );
    assert_eq!(listed(&session, 4).await, widened_tools);

    // Narrowed again: a tool left out is neither listed nor callable.
    std::fs::write(
        &profile,
        "servers = [\"example\"]\n[tools]\nexample = [\"echo\"]\n",
    )
    .unwrap();
    served.signal("HUP");
    let narrowed = nth_reload(&served, 3).await;
    assert_eq!(
        narrowed["detail"]["removed"],
        json!(["spare"]),
        "{narrowed}"
    );
    assert_eq!(listed(&session, 5).await, ["example__echo"]);
    let hidden = session
        .call(
            6,
            "tools/call",
            json!({ "name": "example__add", "arguments": { "a": 2, "b": 3 } }),
        )
        .await;
    assert!(hidden["error"].is_object(), "{hidden}");

    // A profile others may write to is not read: whoever may change it
    // would choose what the proxy runs.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(&profile, "servers = [\"example\", \"spare\"]\n").unwrap();
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o666)).unwrap();
    served.signal("HUP");
    let open = nth_reload(&served, 4).await;
    assert_eq!(open["decision"], "error", "{open}");
    assert!(
        open["reason"]
            .as_str()
            .unwrap()
            .contains("may be written by other users"),
        "{open}"
    );
    assert_eq!(listed(&session, 7).await, ["example__echo"]);

    // A link to a file in a folder others may write to: refused, though
    // the link and the file themselves are closed.
    let open = proxy.dir().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = open.join("narrow.toml");
    std::fs::write(&target, "servers = [\"example\", \"spare\"]\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&profile).unwrap();
    std::os::unix::fs::symlink(&target, &profile).unwrap();
    served.signal("HUP");
    let linked = nth_reload(&served, 5).await;
    assert_eq!(linked["decision"], "error", "{linked}");
    let reason = linked["reason"].as_str().unwrap();
    assert!(
        reason.contains("may be written by other users") && reason.contains("/open`"),
        "{linked}"
    );
    assert_eq!(listed(&session, 8).await, ["example__echo"]);
    served.terminate().await;
}

/// `GET /healthz` (public, for a load balancer's check), as JSON.
async fn health(proxy: &HttpProxy) -> Value {
    common::healthz(&proxy.base).await
}

/// The SHA-256 of a file, in hex.
fn file_sha256(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Waits (up to 60 s) until `/healthz` says `key` is `want`.
async fn health_says(proxy: &HttpProxy, key: &str, want: &Value) -> Value {
    for _ in 0..600 {
        let health = health(proxy).await;
        if &health[key] == want {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/healthz never said {key} = {want}: {}",
        health(proxy).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_metrics_name_the_policy_set_and_config_a_replica_enforces() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\npolicy_poll = \"100ms\"")
        .with_example_server("example");
    let folder = proxy.policy_folder(r#"@id("all") permit(principal, action, resource);"#);
    let served = proxy.serve_http().await;
    let config = proxy.dir().join("portcullis.toml");

    // At start: the set and the file the start record names.
    let start = admin_records(&served.base, "kind=proxy_start", AUDITOR_TOKEN).await;
    let start = &start[0];
    let health = health(&served).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["policy_set"], start["policy_set"], "{health}");
    assert_eq!(
        health["config_sha256"],
        json!(file_sha256(&config)),
        "{health}"
    );
    assert_eq!(
        health["config_sha256"], start["detail"]["config_sha256"],
        "{health}"
    );
    assert!(
        health.get("restart_required").is_none(),
        "only on /metrics: {health}"
    );
    let metrics = common::metrics_text(&served.base).await;
    let policy_line = format!(
        "portcullis_policy_set_info{{policy_set=\"{}\"}} 1",
        start["policy_set"].as_str().unwrap()
    );
    assert!(metrics.contains(&policy_line), "{metrics}");

    // A new policy set: the one its reload record names.
    std::fs::write(
        folder.join("extra.cedar"),
        r#"@id("no-add") forbid(principal, action, resource == Tool::"example__add");"#,
    )
    .unwrap();
    served.log.wait_for(&["policies reloaded"]).await;
    let reloaded = admin_records(&served.base, "kind=policy_reload", AUDITOR_TOKEN).await;
    let new_set = reloaded.last().unwrap()["policy_set"].clone();
    assert_ne!(new_set, start["policy_set"]);
    health_says(&served, "policy_set", &new_set).await;
    let metrics = common::metrics_text(&served.base).await;
    let policy_line = format!(
        "portcullis_policy_set_info{{policy_set=\"{}\"}} 1",
        new_set.as_str().unwrap()
    );
    assert!(metrics.contains(&policy_line), "{metrics}");

    // A config whose `[proxy]` changed: its digest, and the section that
    // waits for a restart.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("policy_poll = \"100ms\"", "policy_poll = \"150ms\""),
    )
    .unwrap();
    let digest = json!(file_sha256(&config));
    let health = health_says(&served, "config_sha256", &digest).await;
    assert_eq!(health["policy_set"], new_set, "{health}");
    let reload = nth_reload(&served, 1).await;
    assert_eq!(reload["detail"]["config_sha256"], digest, "{reload}");
    let metrics = common::metrics_text(&served.base).await;
    for line in [
        format!(
            "portcullis_config_info{{config_sha256=\"{}\"}} 1",
            digest.as_str().unwrap()
        ),
        "portcullis_config_restart_required{section=\"proxy\"} 1".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    served.terminate().await;
}
