//! Guards through the real proxy and the example server: rate limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::TestProxy;
use serde_json::{Value, json};

fn is_rate_limited(reply: &Value) -> bool {
    reply["error"]["code"] == json!(portcullis::protocol::code::RATE_LIMITED)
}

#[tokio::test]
async fn a_tool_quota_trips_at_exactly_its_count_and_recovers_after_its_period() {
    let proxy = TestProxy::new()
        .with_config(
            "[ratelimit]\nrules = [\n  { tool = \"example__add\", quota = \"3/s\" },\n  { client = \"tester\", quota = \"1000/min\" },\n]\n",
        )
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    let add = |n: i64| json!({"name": "example__add", "arguments": {"a": n, "b": 1}});
    let mut id = 1;
    for n in 0..3 {
        let reply = client.call(id, "tools/call", add(n)).await;
        id += 1;
        assert_eq!(
            reply["result"]["structuredContent"]["sum"],
            json!(n + 1),
            "call {n} is within the quota: {reply}"
        );
    }
    let refused = client.call(id, "tools/call", add(9)).await;
    id += 1;
    assert!(is_rate_limited(&refused), "the fourth call: {refused}");
    let data = &refused["error"]["data"];
    assert_eq!(data["interceptor"], json!("ratelimit"));
    assert_eq!(data["limit"], json!("3/s"));
    assert_eq!(data["scope"], json!("tool"));
    let retry_after = data["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&retry_after), "{retry_after}");

    // Another tool is not under that quota.
    let echo = client
        .call(
            id,
            "tools/call",
            json!({"name": "example__echo", "arguments": {"text": "hi"}}),
        )
        .await;
    id += 1;
    assert!(echo["result"].is_object(), "{echo}");

    // After the whole period the full quota is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for n in 0..3 {
        let reply = client.call(id, "tools/call", add(n)).await;
        id += 1;
        assert!(
            reply["result"].is_object(),
            "after the period, call {n}: {reply}"
        );
    }
    assert!(is_rate_limited(
        &client.call(id, "tools/call", add(0)).await
    ));
    client.finish().await;

    let denied = common::records(&config, &["--decision", "deny"]);
    assert_eq!(denied.len(), 2, "{denied:?}");
    for record in &denied {
        assert_eq!(record["decided_by"], json!("ratelimit"));
        assert_eq!(record["target"], json!("add"));
        assert!(
            record["upstream_us"].is_null(),
            "a refused call never reached the server"
        );
    }
}

#[tokio::test]
async fn a_client_quota_counts_every_request_but_initialize_and_ping() {
    let proxy = TestProxy::new()
        .with_config("[ratelimit]\ndefault = \"2/h\"\n")
        .with_example_server("example");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    for id in 1..=3 {
        let reply = client.call(id, "ping", json!({})).await;
        assert!(
            reply["result"].is_object(),
            "ping is never limited: {reply}"
        );
    }
    assert!(client.call(4, "tools/list", json!({})).await["result"].is_object());
    assert!(client.call(5, "prompts/list", json!({})).await["result"].is_object());
    let refused = client.call(6, "resources/list", json!({})).await;
    assert!(is_rate_limited(&refused), "{refused}");
    assert_eq!(refused["error"]["data"]["scope"], json!("client"));
    let wait = refused["error"]["data"]["retry_after_ms"].as_u64().unwrap();
    assert!(
        wait > 1_700_000 && wait <= 1_800_000,
        "half an hour: {wait}"
    );
    client.finish().await;
}

#[test]
fn a_bad_quota_stops_the_proxy_with_its_place() {
    let proxy = TestProxy::new()
        .with_config("[ratelimit]\nrules = [{ tool = \"example__add\", quota = \"3 a second\" }]\n")
        .with_example_server("example");
    let config = proxy.write_config();
    let stderr = common::serve_refused(&config);
    assert!(
        stderr.contains("portcullis.toml:5:43: `ratelimit.rules[0].quota`: `3 a second` is not a quota like `60/min`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn past_its_concurrency_limit_a_server_queues_then_refuses() {
    let proxy = TestProxy::new()
        .with_config(
            "[ratelimit]\nconcurrency = [{ server = \"example\", max_in_flight = 1, queue = 1 }]\n",
        )
        .with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    let sleep = |id: i64, ms: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "example__sleep", "arguments": {"ms": ms}}})
    };
    // One in flight, one waiting, and a third with no room: refused at once.
    client.send(sleep(1, 1500)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(sleep(2, 10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(sleep(3, 10)).await;
    let first = client
        .recv_matching("the first response", |m| m.get("id").is_some())
        .await;
    assert_eq!(first["id"], json!(3), "the refusal comes first: {first}");
    assert!(is_rate_limited(&first), "{first}");
    let data = &first["error"]["data"];
    assert_eq!(data["scope"], json!("concurrency"));
    assert_eq!(
        (data["max_in_flight"].clone(), data["queue"].clone()),
        (json!(1), json!(1))
    );
    // The queued call runs once the first is done.
    let next = client
        .recv_matching("the next response", |m| m.get("id").is_some())
        .await;
    assert_eq!(next["id"], json!(1), "{next}");
    assert_eq!(next["result"]["content"][0]["text"], json!("slept 1500 ms"));
    let last = client.response(json!(2)).await;
    assert_eq!(last["result"]["content"][0]["text"], json!("slept 10 ms"));
    client.finish().await;

    let denied = common::records(&config, &["--decision", "deny"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["decided_by"], json!("ratelimit"));
}

#[tokio::test]
async fn arguments_that_break_the_input_schema_never_reach_the_server() {
    let proxy = TestProxy::new().with_example_server("example");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    let fine = client
        .call(
            1,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": 2, "b": 3}}),
        )
        .await;
    assert_eq!(
        fine["result"]["structuredContent"]["sum"],
        json!(5),
        "{fine}"
    );

    let bad = client
        .call(
            2,
            "tools/call",
            json!({"name": "example__add", "arguments": {"a": "two"}}),
        )
        .await;
    assert_eq!(bad["error"]["code"], json!(-32602), "{bad}");
    let data = &bad["error"]["data"];
    assert_eq!(data["interceptor"], json!("schema"));
    let mut violations: Vec<(String, String)> = data["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_owned(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    violations.sort();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert_eq!(violations[0].0, "", "the missing `b` is at the root");
    assert!(violations[0].1.contains("\"b\""), "{violations:?}");
    assert_eq!(violations[1].0, "/a");
    assert!(violations[1].1.contains("integer"), "{violations:?}");
    assert!(
        !bad.to_string().contains("two"),
        "the value itself is not echoed: {bad}"
    );
    client.finish().await;

    let denied = common::records(&config, &["--decision", "deny"]);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["decided_by"], json!("schema"));
    assert!(
        denied[0]["upstream_us"].is_null(),
        "the server never saw the call"
    );
}

#[tokio::test]
async fn results_that_break_the_output_schema_and_tools_with_broken_schemas_are_stopped() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;

    let list = client.call(1, "tools/list", json!({})).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"raw__shaped"), "{names:?}");
    assert!(
        !names.contains(&"raw__broken"),
        "a tool whose schema does not compile is withheld: {names:?}"
    );
    let broken = client
        .call(
            2,
            "tools/call",
            json!({"name": "raw__broken", "arguments": {}}),
        )
        .await;
    assert_eq!(broken["error"]["code"], json!(-32010), "{broken}");
    assert!(
        broken["error"]["data"]["schema_error"].is_string(),
        "{broken}"
    );

    let fine = client
        .call(
            3,
            "tools/call",
            json!({"name": "raw__shaped", "arguments": {"count": 3}}),
        )
        .await;
    assert_eq!(
        fine["result"]["structuredContent"],
        json!({"count": 3}),
        "{fine}"
    );
    let wrong = client
        .call(
            4,
            "tools/call",
            json!({"name": "raw__shaped", "arguments": {"count": "three"}}),
        )
        .await;
    assert_eq!(wrong["error"]["code"], json!(-32010), "{wrong}");
    assert_eq!(wrong["error"]["data"]["interceptor"], json!("schema"));
    assert_eq!(
        wrong["error"]["data"]["violations"][0]["path"],
        json!("/count"),
        "{wrong}"
    );
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the result does not match the tool's output schema"),
        "{wrong}"
    );
    assert!(
        wrong.get("result").is_none(),
        "the bad result never reaches the client"
    );
    client.finish().await;
}

#[tokio::test]
async fn with_output_log_a_bad_result_is_passed_on_and_its_record_says_why() {
    let proxy = TestProxy::new()
        .with_config("[schema]\noutput = \"log\"\n")
        .with_raw_server("raw");
    let config = proxy.write_config();
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let passed = client
        .call(
            1,
            "tools/call",
            json!({"name": "raw__shaped", "arguments": {"count": "three"}}),
        )
        .await;
    assert_eq!(
        passed["result"]["structuredContent"],
        json!({"count": "three"}),
        "{passed}"
    );
    client.finish().await;
    let records = common::records(&config, &["--tool", "raw__shaped"]);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["decision"], json!("allow"));
    let reason = records[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason
            .starts_with("the result does not match the tool's output schema (passed on): /count"),
        "{reason}"
    );
    assert!(!reason.contains("three"), "values are masked: {reason}");
}

#[tokio::test]
async fn prompt_arguments_are_checked_against_the_declared_ones() {
    let proxy = TestProxy::new().with_example_server("example");
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let fine = client
        .call(
            1,
            "prompts/get",
            json!({"name": "example__greet", "arguments": {"name": "Bob"}}),
        )
        .await;
    assert!(fine["result"]["messages"].is_array(), "{fine}");
    let missing = client
        .call(
            2,
            "prompts/get",
            json!({"name": "example__greet", "arguments": {"nmae": "Bob"}}),
        )
        .await;
    assert_eq!(missing["error"]["code"], json!(-32602), "{missing}");
    assert_eq!(missing["error"]["data"]["interceptor"], json!("schema"));
    let messages: Vec<&str> = missing["error"]["data"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "the required argument `name` is missing",
            "the prompt declares no such argument"
        ]
    );
    client.finish().await;
}
