//! Operators' view of the real proxy: `GET /metrics` after a scripted
//! session (every counter the session should move, moved by exactly that
//! much), who may read it, and metrics switched off.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

/// A scrape: `name{labels}` → value, every sample line checked for the
/// text format's shape.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            value => value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "a series twice: {line:?}"
        );
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in:\n{samples:#?}"))
}

async fn scrape(base: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{base}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn echo(text: &str) -> Value {
    json!({"name": "example__echo", "arguments": {"text": text}})
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_scripted_session_for_auditors_only() {
    let deny = example_plugin("deny-pattern");
    let proxy = TestProxy::new()
        .with_config(&format!(
            r#"policies = "policies"

[ratelimit]
rules = [ {{ tool = "example__echo", quota = "4/h" }} ]

[[chain]]
kind = "wasm"
name = "deny"
path = {deny:?}
# The longest budget a call may have: a loaded machine can miss the
# default 10 ms.
timeout = "1s"
methods = ["tools/call"]
phases = ["request"]
config = {{ patterns = ['rm\s+-rf'] }}
"#,
            deny = deny.display().to_string(),
        ))
        .with_example_server("example");
    proxy.policy_folder(
        r#"@id("echo-only") permit(principal, action, resource == Tool::"example__echo");
permit(principal, action == Action::"list_tools", resource);"#,
    );
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;

    // Three allowed echoes (one carrying a secret, redacted on its way),
    // one refused by the plugin, one by the rate limiter (the fifth call of
    // a 4/h quota); a tool the policy forbids; a tool that does not exist.
    let secret = format!("ghp_{}", "Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9");
    let calls = [
        (echo("hello"), None),
        (echo(&format!("deploy with {secret}")), None),
        (echo("rm -rf /"), Some(4003)),
        (echo("bye"), None),
        (echo("over quota"), Some(-32015)),
        (
            json!({"name": "example__add", "arguments": {"a": 1, "b": 2}}),
            Some(-32010),
        ),
        (
            json!({"name": "made_up_by_a_client", "arguments": {}}),
            Some(-32602),
        ),
    ];
    for (id, (params, refused)) in calls.into_iter().enumerate() {
        let reply = session.call(id as i64 + 1, "tools/call", params).await;
        match refused {
            None => assert!(reply.get("result").is_some(), "{reply}"),
            Some(code) => assert_eq!(reply["error"]["code"], json!(code), "{reply}"),
        }
    }
    session.call(20, "tools/list", json!({})).await;

    // Only an auditor's token reads the metrics.
    for token in [None, Some(TOKEN), Some("not-a-token")] {
        assert_eq!(scrape(&served.base, token).await.status(), 401, "{token:?}");
    }
    let response = scrape(&served.base, Some(AUDITOR_TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let samples = parse(&text);

    let requests = |tool: &str, decision: &str| {
        value(
            &samples,
            &format!(
                "portcullis_requests_total{{method=\"tools/call\",server=\"example\",tool=\"{tool}\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!(requests("echo", "allow"), 3.0);
    // Refused by the plugin and by the rate limiter; `add` by the policy.
    assert_eq!(requests("echo", "deny"), 2.0);
    assert_eq!(requests("add", "deny"), 1.0);
    // A name the client made up is not a label: the call is counted under
    // no server and no tool.
    assert_eq!(
        value(
            &samples,
            "portcullis_requests_total{method=\"tools/call\",server=\"\",tool=\"\",decision=\"error\"}"
        ),
        1.0
    );
    assert!(!text.contains("made_up_by_a_client"));
    assert_eq!(
        value(
            &samples,
            "portcullis_requests_total{method=\"tools/list\",server=\"\",tool=\"\",decision=\"allow\"}"
        ),
        1.0
    );
    for (interceptor, count) in [("wasm:deny", 1.0), ("ratelimit", 1.0), ("authz", 1.0)] {
        assert_eq!(
            value(
                &samples,
                &format!(
                    "portcullis_denials_total{{interceptor=\"{interceptor}\",method=\"tools/call\"}}"
                )
            ),
            count,
            "{interceptor}"
        );
    }
    assert_eq!(
        value(&samples, "portcullis_rate_limited_total{client=\"tester\"}"),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_redactions_total{rule=\"github-pat-classic\",direction=\"request\"}"
        ),
        1.0
    );
    assert!(!text.contains(&secret), "a secret in the metrics");

    // Latencies: every exchange timed, the upstream only for calls that
    // reached the server (the three allowed echoes).
    assert_eq!(
        value(
            &samples,
            "portcullis_request_duration_seconds_count{method=\"tools/call\"}"
        ),
        7.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_request_duration_seconds_bucket{method=\"tools/call\",le=\"+Inf\"}"
        ),
        7.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_upstream_duration_seconds_count{server=\"example\"}"
        ),
        3.0
    );
    // Each interceptor is timed per phase: the chain stops at a refusal, so
    // the policy saw one request fewer than the rate limiter (which refused
    // one), and the plugin one fewer than the policy (which refused `add`).
    let timed = |interceptor: &str| {
        value(
            &samples,
            &format!(
                "portcullis_interceptor_duration_seconds_count{{interceptor=\"{interceptor}\",phase=\"request\"}}"
            ),
        )
    };
    assert_eq!(timed("ratelimit"), timed("limits"));
    assert_eq!(timed("authz"), timed("ratelimit") - 1.0);
    assert_eq!(timed("wasm:deny"), timed("authz") - 1.0);
    assert_eq!(
        value(
            &samples,
            "portcullis_plugin_calls_total{plugin=\"deny\",result=\"deny\"}"
        ),
        1.0
    );
    // Three echoes, and the unknown tool: a request that cannot be routed
    // still goes through the chain (it is refused after).
    assert_eq!(
        value(
            &samples,
            "portcullis_plugin_calls_total{plugin=\"deny\",result=\"continue\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_plugin_counter{plugin=\"deny\",name=\"denied\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "portcullis_plugin_circuit_open{plugin=\"deny\"}"),
        0.0
    );

    // What the gateway knows now: the session, the server, the audit log.
    assert_eq!(
        value(&samples, "portcullis_sessions{transport=\"http\"}"),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_upstream_up{server=\"example\",state=\"ready\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_upstream_restarts_total{server=\"example\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "portcullis_upstream_start_duration_seconds_count{server=\"example\",upstream=\"process\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "portcullis_events_total{kind=\"session_start\"}"),
        1.0
    );
    assert_eq!(
        value(&samples, "portcullis_events_total{kind=\"server_ready\"}"),
        1.0
    );
    // The three refused scrapes (their audit records are aggregated per
    // interval; the counter counts each).
    assert_eq!(
        value(
            &samples,
            "portcullis_auth_failures_total{endpoint=\"/admin\",outcome=\"refused\"}"
        ),
        3.0
    );
    // One audit commit timed per exchange.
    let exchanges: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("portcullis_request_duration_seconds_count{"))
        .map(|(_, count)| count)
        .sum();
    assert!(exchanges >= 9.0, "initialize, seven calls, the list");
    assert_eq!(
        value(&samples, "portcullis_audit_commit_duration_seconds_count"),
        exchanges
    );
    assert_eq!(value(&samples, "portcullis_audit_failures_total"), 0.0);
    assert_eq!(value(&samples, "portcullis_audit_failing"), 0.0);
    assert!(value(&samples, "portcullis_audit_last_seq") >= 10.0);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_switched_off() {
    let proxy = TestProxy::new()
        .with_config("[observability]\nmetrics = false")
        .with_example_server("example");
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    session.call(1, "tools/call", echo("hello")).await;
    let response = scrape(&served.base, Some(AUDITOR_TOKEN)).await;
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("[observability] metrics = false")
    );
    // The switch does not open the endpoint to anyone else either.
    assert_eq!(scrape(&served.base, Some(TOKEN)).await.status(), 401);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_and_carry_no_secret() {
    let proxy = TestProxy::new().with_example_server("example");
    let secret = "ghp_Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9";
    let mut client = proxy
        .raw_stdio_with_env(&[
            ("PORTCULLIS_LOG_FORMAT", "json"),
            ("PORTCULLIS_LOG", "debug"),
        ])
        .await;
    client.initialize().await;
    let reply = client
        .call(1, "tools/call", echo(&format!("deploy with {secret}")))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let refused = client
        .call(2, "tools/call", json!({"name": "nosuch", "arguments": {}}))
        .await;
    assert!(refused.get("error").is_some(), "{refused}");
    client
        .wait_for_log(&["\"level\":\"WARN\"", "UNSANDBOXED"])
        .await;
    let log = client.log();
    client.finish().await;
    assert!(log.len() >= 3, "{log:#?}");
    for line in &log {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(entry.get(key).is_some(), "no `{key}` in {line}");
        }
        assert!(!line.contains(secret), "a secret in the log: {line}");
    }
    // The warning's fields are the object's own keys.
    let unsandboxed = log
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|entry| entry["message"].as_str().unwrap().contains("UNSANDBOXED"))
        .unwrap();
    assert_eq!(unsandboxed["server"], "example");
}

#[test]
fn an_unknown_log_format_is_a_clear_error() {
    let (ok, _, stderr) = run_portcullis(["--log-format", "xml", "doctor", "--config", "x.toml"]);
    assert!(!ok);
    assert!(stderr.contains("invalid value 'xml'"), "{stderr}");
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}

#[test]
fn in_json_mode_the_reason_the_proxy_stopped_is_a_json_line() {
    let (ok, _, stderr) = run_portcullis([
        "--log-format",
        "json",
        "stdio",
        "--config",
        "/nonexistent/portcullis.toml",
        "--client",
        "x",
    ]);
    assert!(!ok);
    let line = stderr.lines().last().unwrap_or_default();
    let entry: Value =
        serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {stderr}"));
    assert_eq!(entry["level"], "ERROR", "{line}");
    assert_eq!(entry["message"], "portcullis stopped", "{line}");
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/portcullis.toml"),
        "{line}"
    );
}
