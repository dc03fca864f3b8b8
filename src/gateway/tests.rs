use super::local::lowest_level;
use super::telemetry::scrub_trace;
use super::*;
use crate::protocol::LogLevel;
use crate::traces::{Attr, Root, Span, SpanKind};

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
    let (gateway, _events) = Gateway::new(config, Chain::default(), None);
    let secret = secret();
    gateway.scrub_with(scrubber());
    let uri = format!("file:///notes?token={secret}");
    let mut record = crate::audit::AuditRecord::event("exchange", "deny");
    record.target = Some(uri.clone());
    record.reason = Some(format!("read_resource on `{uri}` is not permitted"));
    record.detail = Some(json!({
        "plugins": { "p": { "note": secret } },
        "arguments": { "kept": "already redacted" },
    }));
    gateway.scrub_record(&mut record);
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
