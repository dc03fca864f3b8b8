use super::harness::{Harness, request};
use super::log_levels::lowest_level;
use super::telemetry::scrub_trace;
use super::*;
use crate::chain::{Direction, Outcome, Phase};
use crate::protocol::LogLevel;
use crate::traces::{Attr, Root, Span, SpanKind};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

/// A token the default rules find (built here, so that the source
/// itself holds none).
fn secret() -> String {
    format!("ghp_{}", "Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9")
}

fn scrubber() -> Arc<crate::interceptors::Redact> {
    match crate::interceptors::Redact::new(&crate::config::RedactConfig::default()) {
        Ok(redact) => Arc::new(redact),
        Err(err) => panic!("the default rules load: {err}"),
    }
}

#[test]
fn a_server_is_sent_the_lowest_level_any_session_asked_for() {
    use LogLevel::*;
    assert_eq!(lowest_level([]), None);
    assert_eq!(lowest_level([None, None]), None, "nobody asked");
    assert_eq!(lowest_level([None, Some(Warning)]), Some(Warning));
    assert_eq!(
        lowest_level([Some(Error), None, Some(Info), Some(Emergency)]),
        Some(Info)
    );
    assert!(Debug < Info && Info < Notice && Notice < Warning && Warning < Error);
    assert!(Error < Critical && Critical < Alert && Alert < Emergency);
    for level in LogLevel::ALL {
        assert_eq!(LogLevel::parse(level.as_str()), Some(level));
    }
    assert_eq!(LogLevel::parse("Info"), None, "names are lowercase");
    assert_eq!(LogLevel::parse("warn"), None);
}

#[test]
fn a_session_gets_the_log_messages_at_or_above_its_level() {
    struct Nowhere;
    impl Outlet for Nowhere {
        fn deliver(&self, _: Value, _: Option<&Value>) -> bool {
            false
        }
    }
    let session = Session::new(
        1,
        "s".into(),
        ClientIdentity::new("c", &[]),
        Transport::Http,
        Arc::new(Nowhere),
    );
    let message = |level: &str| {
        protocol::notification(
            "notifications/message",
            json!({ "level": level, "data": "x" }),
        )
    };
    // Never asked: every message, even one without a known level.
    assert!(session.wants_log(&message("debug")));
    assert!(session.wants_log(&message("nonsense")));
    session.state().log_level = Some(LogLevel::Warning);
    assert!(!session.wants_log(&message("debug")));
    assert!(!session.wants_log(&message("info")));
    assert!(session.wants_log(&message("warning")));
    assert!(session.wants_log(&message("emergency")));
    assert!(!session.wants_log(&message("nonsense")));
}

#[test]
fn what_a_record_and_a_trace_keep_is_scrubbed() {
    let path = std::path::Path::new("portcullis.toml");
    let config = match Config::parse("[[clients]]\nname = \"tester\"\n", path) {
        Ok(config) => Arc::new(config),
        Err(err) => panic!("{err}"),
    };
    let wiring = super::Wiring {
        scrubber: Some(scrubber()),
        ..super::Wiring::default()
    };
    let (gateway, _events) = Gateway::new(config, Chain::default(), None, wiring);
    let secret = secret();
    let uri = format!("file:///notes?token={secret}");
    let mut record = crate::audit::AuditRecord::event("exchange", "deny");
    record.target = Some(uri.clone());
    record.reason = Some(format!("read_resource on `{uri}` is not permitted"));
    record.detail = Some(json!({
        "plugins": { "p": { "note": secret } },
        "arguments": { "kept": "already redacted" },
    }));
    gateway.records.scrub_record(&mut record);
    let stored = serde_json::to_string(&record).unwrap_or_default();
    assert!(!stored.contains(&secret), "{stored}");
    assert_eq!(
        record.target.as_deref(),
        Some("file:///notes?token=[REDACTED:github-pat-classic]")
    );
    assert!(
        record
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("[REDACTED:github-pat-classic]")),
        "{record:?}"
    );

    let (tracer, _queue) = crate::traces::Tracer::new(1.0);
    let Some(mut recording) = tracer.start(&json!({})) else {
        panic!("sampled at 1.0");
    };
    let now = std::time::Instant::now();
    let mut refused = Span::new("authz request", SpanKind::Internal, now, now);
    refused.error = Some(format!("read_resource on `{uri}`"));
    recording.push(refused);
    let mut root = Root {
        name: format!("tools/call srv__x-{secret}"),
        attributes: vec![
            ("mcp.resource.uri", Attr::from(uri.clone())),
            ("gen_ai.tool.name", Attr::from(format!("srv__x-{secret}"))),
        ],
        error: Some(uri.clone()),
    };
    scrub_trace(&scrubber(), &mut root, &mut recording);
    let exported = format!("{root:?} {:?}", recording.spans());
    assert!(!exported.contains(&secret), "{exported}");
    assert!(exported.contains("[REDACTED:"), "{exported}");
}

// -- exchanges end one way only (in-process, through the harness) --------

const ONE_CLIENT: &str = "[[clients]]\nname = \"alice\"\n";

#[tokio::test]
async fn an_exchange_dropped_before_its_end_is_still_finished_and_recorded() {
    let harness = Harness::new(ONE_CLIENT);
    let (session, _inbox) = harness.session("alice");
    let message = request(1, "tools/call", json!({ "name": "t__x" }));
    let run = harness.gateway.begin(
        &session,
        message,
        Direction::ClientToServer,
        Phase::Request,
        &crate::protocol::Method::ToolsCall,
    );
    // The task running it was cancelled: the run is dropped unended.
    drop(run);
    let ends = harness.ends();
    assert!(
        matches!(&ends[..], [(method, Phase::Request, Outcome::Failed { reason })]
            if method == "tools/call" && reason.starts_with("abandoned")),
        "{ends:?}"
    );
    let records = harness.exchanges().await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].decision, "error");
    assert_eq!(records[0].method, "tools/call");
    assert_eq!(records[0].request_id, Some(json!(1)));
}

#[tokio::test]
async fn a_notification_ends_in_the_chain_without_a_record_of_its_own() {
    let harness = Harness::new(ONE_CLIENT);
    let (session, _inbox) = harness.session("alice");
    let notice = protocol::notification("notifications/initialized", json!({}));
    assert_eq!(harness.handle(&session, notice).await, None);
    let ends = harness.ends();
    assert!(
        matches!(&ends[..], [(method, Phase::Notification, Outcome::Delivered)]
            if method == "notifications/initialized"),
        "{ends:?}"
    );
    assert!(harness.exchanges().await.is_empty());
}

#[tokio::test]
async fn a_call_refused_while_the_audit_log_fails_still_ends_in_the_chain() {
    let harness = Harness::new(ONE_CLIENT);
    let (session, _inbox) = harness.session("alice");
    harness.audit_broken.store(true, Ordering::Relaxed);
    let Some(audit) = harness.gateway.records().audit() else {
        panic!("the harness keeps an audit log");
    };
    assert!(
        audit
            .commit(crate::audit::AuditRecord::event("probe", "allow"))
            .await
            .is_err()
    );
    assert!(audit.is_failing());
    let reply = harness
        .handle(&session, request(5, "ping", json!({})))
        .await;
    let reply = reply.unwrap_or_default();
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["error"]["code"], protocol::code::AUDIT_UNAVAILABLE);
    let ends = harness.ends();
    assert!(
        matches!(&ends[..], [(method, Phase::Request, Outcome::Failed { reason })]
            if method == "ping" && reason.contains("audit log")),
        "the refused call still ends in the chain: {ends:?}"
    );
}

#[tokio::test]
async fn each_failure_a_client_meets_is_answered_ended_and_recorded_once() {
    let harness = Harness::new(ONE_CLIENT);
    let (session, _inbox) = harness.session("alice");
    let cases = [
        (
            request(1, "tools/list", json!({})),
            protocol::code::INVALID_REQUEST,
            "the session is not initialized: send `initialize` first",
        ),
        (
            request(2, "initialize", json!({})),
            protocol::code::INVALID_PARAMS,
            "`params.protocolVersion` must be a string",
        ),
        (
            request(
                3,
                "initialize",
                json!({ "protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": { "name": "t", "version": "0" } }),
            ),
            0,
            "",
        ),
        (
            request(4, "initialize", json!({ "protocolVersion": "2025-11-25" })),
            protocol::code::INVALID_REQUEST,
            "the session is already initialized",
        ),
        (
            request(5, "tools/call", json!({ "name": "nope__x" })),
            protocol::code::INVALID_PARAMS,
            "unknown tool `nope__x`",
        ),
        (
            request(6, "resources/read", json!({ "uri": "file:///x" })),
            -32002,
            "resource not found: `file:///x`",
        ),
        (
            request(7, "made/up", json!({})),
            protocol::code::METHOD_NOT_FOUND,
            "method not found: `made/up`",
        ),
        (
            request(8, "tools/list", json!({ "cursor": "bogus" })),
            protocol::code::INVALID_PARAMS,
            "invalid `cursor`",
        ),
        (
            json!({ "jsonrpc": "2.0", "id": 9 }),
            protocol::code::INVALID_REQUEST,
            "not a JSON-RPC message",
        ),
    ];
    for (message, code, text) in &cases {
        let reply = harness
            .handle(&session, message.clone())
            .await
            .unwrap_or_default();
        assert_eq!(reply["id"], message["id"], "{reply}");
        if *code == 0 {
            assert!(reply.get("result").is_some(), "{reply}");
            continue;
        }
        assert_eq!(reply["error"]["code"], *code, "{reply}");
        assert_eq!(reply["error"]["message"], *text, "{reply}");
    }
    let ends = harness.ends();
    assert_eq!(ends.len(), cases.len(), "one end each: {ends:?}");
    let records = harness.exchanges().await;
    assert_eq!(records.len(), cases.len(), "one record each: {records:?}");
    for (record, (message, code, text)) in records.iter().zip(&cases) {
        assert_eq!(record.request_id.as_ref(), message.get("id"));
        let expected = if *code == 0 { "allow" } else { "error" };
        assert_eq!(record.decision, expected, "{record:?}");
        if *code != 0 {
            assert_eq!(record.reason.as_deref(), Some(*text));
        }
    }
}
