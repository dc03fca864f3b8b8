//! Isolation between the sessions of a shared server, through the real
//! binary: what a server sends on its own reaches only the clients that may
//! use it, `logging/setLevel` is per session, and a secret in a resource
//! URI is neither stored nor shown.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::Duration;

use common::{HttpSession, OTHER_TOKEN, TOKEN, TestProxy, all_bytes, contains, records};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// Every client may do everything, except `other` on server `shared`.
const POLICIES: &str = r#"
@id("everyone")
permit (principal, action, resource);

@id("other-not-on-shared")
forbid (principal == Client::"other", action, resource in Server::"shared");
"#;

const SECRET: &str = "ghp_Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9";

/// Two raw servers with logging and resources: `shared` (which `other`
/// may not use) first, so it owns `raw://items/…`, and `open`.
fn proxy() -> TestProxy {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_raw_server_extras("shared")
        .with_raw_server_extras("open");
    proxy.policy_folder(POLICIES);
    proxy
}

/// The text of a log message event (`params.data`), if it is one.
fn log_text(message: &Value) -> Option<&str> {
    (message["method"] == "notifications/message")
        .then(|| message["params"]["data"].as_str())
        .flatten()
}

/// The log texts a GET stream carries up to and including `last`.
async fn logs_until(events: &mut UnboundedReceiver<Value>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{last}` within 10 s; saw {seen:?}"))
            .expect("the stream is open");
        if let Some(text) = log_text(&message) {
            seen.push(text.to_owned());
            if text == last {
                return seen;
            }
        }
    }
}

/// Calls `server__reply_then_log`: a reply, then a log message sent while
/// no call is in flight.
async fn log_after_reply(session: &HttpSession, id: i64, server: &str, level: &str, text: &str) {
    let reply = session
        .call(
            id,
            "tools/call",
            json!({"name": format!("{server}__reply_then_log"), "arguments": {"level": level, "text": text}}),
        )
        .await;
    assert_eq!(reply["result"]["content"][0]["text"], "replied", "{reply}");
}

/// The log levels `server` was sent (its `mirror` tool reports them).
async fn levels_received(session: &HttpSession, id: i64, server: &str) -> Vec<String> {
    let reply = session
        .call(
            id,
            "tools/call",
            json!({"name": format!("{server}__mirror")}),
        )
        .await;
    reply["result"]["structuredContent"]["levels"]
        .as_array()
        .unwrap_or_else(|| panic!("no levels in {reply}"))
        .iter()
        .map(|level| level.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn server_log_messages_and_levels_stay_with_the_clients_that_may_use_the_server() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let a = HttpSession::connect_as(&served.url, TOKEN).await;
    let a2 = HttpSession::connect_as(&served.url, TOKEN).await;
    let b = HttpSession::connect_as(&served.url, OTHER_TOKEN).await;
    let mut a_events = a.events().await;
    let mut a2_events = a2.events().await;
    let mut b_events = b.events().await;

    // (a) A log message `shared` sends after answering A (no call in
    // flight) reaches A, never B. B's marker from `open` comes after it on
    // B's stream, so had B been sent the message, B would have read it
    // first.
    log_after_reply(&a, 1, "shared", "info", "after-reply").await;
    assert_eq!(
        logs_until(&mut a_events, "after-reply").await,
        ["after-reply"]
    );
    log_after_reply(&b, 1, "open", "info", "marker-b").await;
    assert_eq!(logs_until(&mut b_events, "marker-b").await, ["marker-b"]);

    // (b) B's `logging/setLevel` is answered, and reaches only the server
    // B may use.
    let set = b
        .call(2, "logging/setLevel", json!({"level": "debug"}))
        .await;
    assert_eq!(set["result"], json!({}), "{set}");
    assert_eq!(levels_received(&a, 2, "shared").await, Vec::<String>::new());
    assert_eq!(levels_received(&a, 3, "open").await, ["debug"]);

    // A level MCP does not name is refused.
    let bad = a
        .call(4, "logging/setLevel", json!({"level": "loud"}))
        .await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("`loud`"),
        "{bad}"
    );

    // (c) A's level reaches `shared`; messages below it are no longer
    // delivered to A, while A2 (which set none) still gets every one.
    let set = a
        .call(5, "logging/setLevel", json!({"level": "warning"}))
        .await;
    assert_eq!(set["result"], json!({}), "{set}");
    assert_eq!(levels_received(&a, 6, "shared").await, ["warning"]);
    log_after_reply(&a, 7, "shared", "info", "low").await;
    log_after_reply(&a, 8, "shared", "error", "high").await;
    // (B's marker came from `open`, which A and A2 may use.)
    assert_eq!(
        logs_until(&mut a_events, "high").await,
        ["marker-b", "high"]
    );
    assert_eq!(
        logs_until(&mut a2_events, "high").await,
        ["after-reply", "marker-b", "low", "high"]
    );
    // A level that is not lower changes nothing at the server.
    let set = a2
        .call(9, "logging/setLevel", json!({"level": "error"}))
        .await;
    assert_eq!(set["result"], json!({}), "{set}");
    assert_eq!(levels_received(&a, 10, "shared").await, ["warning"]);

    // B still heard nothing from `shared`.
    log_after_reply(&b, 3, "open", "info", "marker-b2").await;
    assert_eq!(logs_until(&mut b_events, "marker-b2").await, ["marker-b2"]);

    served.terminate().await;
    // Each message `shared` sent on its own is recorded with who got it.
    let notes = shared_records(&proxy, |r| r["kind"] == "server_notification");
    assert_eq!(notes.len(), 3, "{notes:?}");
    let first = &notes[0]["detail"];
    assert_eq!(first["method"], "notifications/message", "{first}");
    // A and A2 got it; B did not.
    assert_eq!(first["delivered"], 2, "{first}");
    assert_eq!(first["withheld"], 1, "{first}");
    // `low` was below A's level.
    assert_eq!(notes[1]["detail"]["below_level"], 1, "{:?}", notes[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_a_resource_uri_is_neither_stored_nor_shown_in_a_denial() {
    let proxy = proxy();
    let served = proxy.serve_http().await;
    let a = HttpSession::connect_as(&served.url, TOKEN).await;
    let b = HttpSession::connect_as(&served.url, OTHER_TOKEN).await;
    let uri = format!("raw://items/report?token={SECRET}");

    // B may not read from `shared`: the denial does not quote the secret.
    let denied = b.call(1, "resources/read", json!({ "uri": uri })).await;
    assert_eq!(denied["error"]["data"]["interceptor"], "authz", "{denied}");
    let message = denied["error"]["message"].as_str().unwrap();
    assert!(!message.contains(SECRET), "{message}");
    assert!(message.contains("[REDACTED:"), "{message}");
    // A may: its record is scrubbed too.
    let read = a.call(1, "resources/read", json!({ "uri": uri })).await;
    assert!(read.get("result").is_some(), "{read}");

    served.terminate().await;
    let reads = shared_records(&proxy, |r| r["method"] == "resources/read");
    assert_eq!(reads.len(), 2, "{reads:?}");
    for record in &reads {
        let target = record["target"].as_str().unwrap();
        assert!(target.starts_with("raw://items/report?token="), "{record}");
        assert!(target.contains("[REDACTED:"), "{record}");
    }
    let denial = reads.iter().find(|r| r["decision"] == "deny").unwrap();
    assert!(
        denial["reason"].as_str().unwrap().contains("[REDACTED:"),
        "{denial}"
    );
    // Nothing the proxy wrote to disk holds it.
    let bytes = all_bytes(&proxy.dir().join(".portcullis"));
    assert!(
        !contains(&bytes, SECRET),
        "the secret reached the data folder"
    );
}

/// The audit records of server `shared` that `keep` keeps, read once the
/// proxy has stopped.
fn shared_records(proxy: &TestProxy, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let config = proxy.dir().join("portcullis.toml");
    records(&config, &["--server", "shared"])
        .into_iter()
        .filter(|record| keep(record))
        .collect()
}
