//! OpenTelemetry traces from the real proxy to a real OTLP/HTTP receiver:
//! what it sends parses as the official `ExportTraceServiceRequest`, the
//! spans of an exchange form one tree (a span per interceptor and phase, the
//! upstream call, the audit commit), the caller's W3C context is continued
//! and handed on to the server in `_meta`, records and spans name each
//! other, nothing of the arguments leaves, and a collector that is down
//! costs calls nothing.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::{Value, json};

/// What the receiver was sent: each request's headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// An OTLP/HTTP traces receiver on a free port: answers every export with
/// an empty success, as a collector does.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let kept = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push((headers, body.to_vec()));
                (StatusCode::OK, [("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), received)
}

/// Every span received so far, flattened with its resource's attributes.
/// Each body must parse as the official OTLP message first.
fn spans(received: &Received) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for (_, body) in received.lock().unwrap().iter() {
        let parsed: ExportTraceServiceRequest =
            serde_json::from_slice(body).unwrap_or_else(|err| {
                panic!(
                    "not an OTLP ExportTraceServiceRequest: {err}\n{}",
                    String::from_utf8_lossy(body)
                )
            });
        // Every field was read under its OTLP name (an unknown name would
        // be skipped, leaving the field empty).
        for span in parsed
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            assert_eq!(span.trace_id.len(), 16);
            assert_eq!(span.span_id.len(), 8);
            assert!(!span.name.is_empty() && span.kind != 0);
            assert!(
                span.start_time_unix_nano > 0
                    && span.end_time_unix_nano >= span.start_time_unix_nano
            );
            assert!(span.flags & 0x101 == 0x101, "sampled, remote-ness known");
            assert!(span.attributes.iter().all(|a| a.value.is_some()));
        }
        let body: Value = serde_json::from_slice(body).unwrap();
        for resource in body["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                assert_eq!(scope["scope"]["name"], "portcullis");
                for span in scope["spans"].as_array().unwrap() {
                    out.push((resource["resource"].clone(), span.clone()));
                }
            }
        }
    }
    out
}

/// The spans of one trace, once its root (the exchange's span) arrived.
async fn trace_of(received: &Received, trace_id: &str) -> Vec<Value> {
    for _ in 0..100 {
        let spans: Vec<Value> = spans(received)
            .into_iter()
            .map(|(_, span)| span)
            .filter(|span| span["traceId"] == trace_id)
            .collect();
        if spans.iter().any(|span| span["kind"] == 2) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no trace {trace_id} in {:#?}", spans(received));
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn text_attr(span: &Value, key: &str) -> String {
    attr(span, key)
        .and_then(|v| v["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no string attribute {key} in {span:#}"))
        .to_owned()
}

fn nanos(span: &Value, key: &str) -> u64 {
    span[key].as_str().unwrap().parse().unwrap()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn exchanges_are_traced_end_to_end_and_the_context_reaches_the_server() {
    let (endpoint, received) = receiver().await;
    let proxy = TestProxy::new()
        .with_config(&format!(
            r#"policies = "policies"

[observability.traces]
endpoint = "{endpoint}"
service_name = "portcullis-under-test"
headers = {{ authorization = "Bearer secret:otlp" }}
secrets = {{ otlp = "file:otlp-token" }}
"#
        ))
        .with_raw_server("raw");
    std::fs::write(proxy.dir().join("otlp-token"), "collector-token\n").unwrap();
    proxy.policy_folder(
        r#"@id("mirror-only") permit(principal, action == Action::"call_tool", resource == Tool::"raw__mirror");
permit(principal, action == Action::"list_tools", resource);"#,
    );
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let secret = format!("ghp_{}", "Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9");

    // A call that carries the client's own trace context (and another
    // `_meta` key, which must survive).
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = session
        .call(
            1,
            "tools/call",
            json!({"name": "raw__mirror", "arguments": {"note": "private words", "key": secret},
                   "_meta": {"traceparent": traceparent, "progressToken": "p-1"}}),
        )
        .await;
    let received_meta = &reply["result"]["structuredContent"]["received"]["params"]["_meta"];
    let seen = received_meta["traceparent"].as_str().unwrap_or_else(|| {
        panic!("the server got no traceparent: {reply:#}");
    });
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], CLIENT_TRACE, "the client's trace goes on");
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the server's parent is the proxy's span"
    );
    assert_eq!(parts[3], "01");
    assert!(
        received_meta.get("progressToken").is_some(),
        "{received_meta}"
    );

    // A call the policy refuses, with no context of its own.
    let refused = session
        .call(
            2,
            "tools/call",
            json!({"name": "raw__shaped", "arguments": {"count": 1}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32010, "{refused}");

    // The allowed call's trace.
    let trace = trace_of(&received, CLIENT_TRACE).await;
    let root = trace.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(root["parentSpanId"], CLIENT_SPAN);
    assert_eq!(root["name"], "tools/call raw__mirror");
    assert_eq!(text_attr(root, "mcp.method.name"), "tools/call");
    assert_eq!(text_attr(root, "gen_ai.tool.name"), "raw__mirror");
    assert_eq!(text_attr(root, "portcullis.client"), "tester");
    assert_eq!(text_attr(root, "portcullis.server"), "raw");
    assert_eq!(text_attr(root, "portcullis.decision"), "allow");
    assert_eq!(text_attr(root, "portcullis.policy_ids"), "mirror-only");
    assert_eq!(text_attr(root, "jsonrpc.request.id"), "1");
    let (start, end) = (
        nanos(root, "startTimeUnixNano"),
        nanos(root, "endTimeUnixNano"),
    );
    let names: Vec<&str> = trace.iter().filter_map(|s| s["name"].as_str()).collect();
    for (name, kind) in [
        ("limits request", 1),
        ("authz request", 1),
        ("pinning request", 1),
        ("schema request", 1),
        ("redact request", 1),
        ("redact response", 1),
        ("limits response", 1),
        ("upstream raw", 3),
        ("audit commit", 1),
    ] {
        let span = trace
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {names:?}"));
        assert_eq!(span["kind"], kind, "{name}");
        assert_eq!(span["parentSpanId"], root["spanId"], "{name}");
        assert!(nanos(span, "startTimeUnixNano") >= start, "{name}");
        assert!(nanos(span, "endTimeUnixNano") <= end, "{name}");
    }
    let upstream = trace.iter().find(|s| s["name"] == "upstream raw").unwrap();
    assert_eq!(
        upstream["spanId"], parts[2],
        "the server's parent is the upstream span"
    );

    // The record names the trace, and the trace the record.
    let records = audit_records(&served.base, "mirror").await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["detail"]["trace_id"], CLIENT_TRACE);
    assert_eq!(record["detail"]["span_id"], root["spanId"]);
    assert_eq!(
        attr(root, "portcullis.audit.seq").unwrap()["intValue"],
        record["seq"].to_string()
    );

    // The refused call: its own new trace, an error naming the interceptor.
    let refused_record = &audit_records(&served.base, "shaped").await[0];
    let refused_trace = refused_record["detail"]["trace_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(refused_trace, CLIENT_TRACE);
    let trace = trace_of(&received, &refused_trace).await;
    let root = trace.iter().find(|s| s["kind"] == 2).unwrap();
    assert!(root.get("parentSpanId").is_none_or(|p| p == ""), "{root:#}");
    assert_eq!(text_attr(root, "portcullis.decision"), "deny");
    assert_eq!(text_attr(root, "portcullis.decided_by"), "authz");
    assert_eq!(root["status"]["code"], 2);
    let authz = trace.iter().find(|s| s["name"] == "authz request").unwrap();
    assert_eq!(authz["status"]["code"], 2);
    assert!(
        !trace.iter().any(|s| s["name"] == "upstream raw"),
        "a refused call never reaches the server"
    );

    // Resource, authentication, and nothing of the arguments.
    let all = spans(&received);
    let (resource, _) = &all[0];
    let service = resource["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .unwrap();
    assert_eq!(service["value"]["stringValue"], "portcullis-under-test");
    for (headers, body) in received.lock().unwrap().iter() {
        assert_eq!(headers["authorization"], "Bearer collector-token");
        assert_eq!(headers["content-type"], "application/json");
        let body = String::from_utf8_lossy(body);
        assert!(!body.contains(&secret) && !body.contains("private words"));
    }

    // Every span the receiver got is counted as exported.
    let exported = loop_until_counted(&served.base, all.len()).await;
    assert_eq!(exported, all.len() as f64);
    served.terminate().await;
}

/// The exchange records of a tool, from the running proxy's admin API.
async fn audit_records(base: &str, tool: &str) -> Vec<Value> {
    let records = admin_records(base, &format!("tool={tool}&kind=exchange"), AUDITOR_TOKEN).await;
    assert!(!records.is_empty(), "no record for {tool}");
    records
}

/// `portcullis_trace_spans_total{outcome="exported"}` once it reaches at
/// least `spans` (it moves once the collector has answered).
async fn loop_until_counted(base: &str, spans: usize) -> f64 {
    let mut last = 0.0;
    for _ in 0..50 {
        last = trace_counter(base, "exported").await;
        if last >= spans as f64 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn trace_counter(base: &str, outcome: &str) -> f64 {
    let text = common::metrics_text(base).await;
    let series = format!("portcullis_trace_spans_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_follows_the_caller_and_a_dead_collector_costs_calls_nothing() {
    // Nothing listens on the endpoint; new traces are never sampled.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", unused.local_addr().unwrap());
    drop(unused);
    let proxy = TestProxy::new()
        .with_config(&format!(
            "\n[observability.traces]\nendpoint = \"{endpoint}\"\nsample_ratio = 0.0\n"
        ))
        .with_raw_server("raw");
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;

    let plain = session
        .call(
            1,
            "tools/call",
            json!({"name": "raw__mirror", "arguments": {}}),
        )
        .await;
    let meta = &plain["result"]["structuredContent"]["received"]["params"];
    assert!(
        meta.pointer("/_meta/traceparent").is_none(),
        "an unsampled call carries no context of the proxy's: {meta}"
    );
    // A caller that samples its trace is traced whatever the ratio.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let traced = session
        .call(
            2,
            "tools/call",
            json!({"name": "raw__mirror", "arguments": {}, "_meta": {"traceparent": traceparent}}),
        )
        .await;
    assert!(traced.get("result").is_some(), "{traced}");
    // One that does not is passed on as it came.
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let passed = session
        .call(
            3,
            "tools/call",
            json!({"name": "raw__mirror", "arguments": {}, "_meta": {"traceparent": unsampled}}),
        )
        .await;
    assert_eq!(
        passed["result"]["structuredContent"]["received"]["params"]["_meta"]["traceparent"],
        unsampled
    );

    let records = audit_records(&served.base, "mirror").await;
    let traced: Vec<&Value> = records
        .iter()
        .filter(|r| r["detail"]["trace_id"].is_string())
        .collect();
    assert_eq!(traced.len(), 1, "{records:#?}");
    assert_eq!(traced[0]["request_id"], 2);

    // The collector is down: the spans fail (after the exporter's tries)
    // and are counted; the calls above were answered all the same.
    let mut failed = 0.0;
    for _ in 0..100 {
        failed = trace_counter(&served.base, "failed").await;
        if failed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed >= 1.0, "no failed spans counted");
    assert_eq!(trace_counter(&served.base, "exported").await, 0.0);
    served.terminate().await;
}

#[test]
fn trace_settings_are_checked_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (table, expected) in [
        (
            "endpoint = \"ftp://collector/v1/traces\"",
            "is not an http:// or https:// URL",
        ),
        ("sample_ratio = 1.5", "must be between 0 and 1"),
        (
            "headers = { authorization = \"Bearer secret:nope\" }",
            "refers to `secret:nope`",
        ),
        (
            "secrets = { t = \"plain-text\" }",
            "literal values do not belong in the config",
        ),
        ("endpiont = \"http://x\"", "unknown field `endpiont`"),
    ] {
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!("[proxy]\nlisten = \"127.0.0.1:0\"\n\n[observability.traces]\n{table}\n"),
        )
        .unwrap();
        let stderr = serve_refused(&config);
        assert!(stderr.contains(expected), "{table}: {stderr}");
        assert!(
            stderr.contains("portcullis.toml:"),
            "{table}: no place in {stderr}"
        );
    }
    // A secret file that is missing stops the proxy at start.
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[observability.traces]\nheaders = { authorization = \"Bearer secret:t\" }\nsecrets = { t = \"file:missing-token\" }\n",
    )
    .unwrap();
    let stderr = serve_refused(&config);
    assert!(stderr.contains("cannot export traces"), "{stderr}");
    assert!(stderr.contains("missing-token"), "{stderr}");
}
