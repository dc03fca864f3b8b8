//! Finished traces in OTLP's JSON encoding (an `ExportTraceServiceRequest`).

use serde_json::{Value, json};

use crate::protocol::At;

use super::span::{Attr, SpanKind};
use super::tracer::Finished;

/// Span flags: the W3C trace flags (sampled) and whether the parent is known
/// to be remote (OTLP 1.1).
const FLAG_SAMPLED: u64 = 0x01;
const FLAG_HAS_IS_REMOTE: u64 = 0x100;
const FLAG_IS_REMOTE: u64 = 0x200;

/// An `ExportTraceServiceRequest` in OTLP's JSON encoding: ids in hex,
/// 64-bit integers as strings, enums as numbers.
pub fn encode(batch: &[Finished], resource: &Value) -> Value {
    let mut spans = Vec::new();
    for finished in batch {
        let recording = &finished.recording;
        let trace_id = recording.trace_id.to_hex();
        let root_id = recording.span_id.to_hex();
        let mut root = json!({
            "traceId": trace_id,
            "spanId": root_id,
            "name": finished.root.name,
            "kind": SpanKind::Server as u8,
            "startTimeUnixNano": recording.start_unix_ns.to_string(),
            "endTimeUnixNano": recording.unix_ns(finished.end).to_string(),
            "attributes": attributes(&finished.root.attributes),
            "status": status(finished.root.error.as_deref()),
            "flags": FLAG_SAMPLED | FLAG_HAS_IS_REMOTE
                | if recording.parent.is_some() { FLAG_IS_REMOTE } else { 0 },
        });
        if let Some(parent) = recording.parent {
            root.put(&["parentSpanId"], Value::from(parent.to_hex()));
        }
        spans.push(root);
        for span in &recording.spans {
            spans.push(json!({
                "traceId": trace_id,
                "spanId": span.id.to_hex(),
                "parentSpanId": root_id,
                "name": span.name.as_str(),
                "kind": span.kind as u8,
                "startTimeUnixNano": recording.unix_ns(span.start).to_string(),
                "endTimeUnixNano": recording.unix_ns(span.end).to_string(),
                "attributes": attributes(&span.attributes),
                "status": status(span.error.as_deref()),
                "flags": FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
            }));
        }
    }
    json!({
        "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

fn attributes(list: &[(&'static str, Attr)]) -> Vec<Value> {
    list.iter()
        .map(|(key, value)| attribute(key, value))
        .collect()
}

pub(super) fn attribute(key: &str, value: &Attr) -> Value {
    let value = match value {
        Attr::Text(text) => json!({ "stringValue": text.as_str() }),
        Attr::Int(number) => json!({ "intValue": number.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// OTLP status: unset, or an error with its message.
fn status(error: Option<&str>) -> Value {
    match error {
        None => json!({}),
        Some(message) => json!({ "code": 2, "message": message }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::span::{Root, Span};
    use super::super::tests::SAMPLE;
    use super::super::tracer::Tracer;
    use super::*;

    #[tokio::test]
    async fn encoding_follows_otlp_json() {
        let (tracer, queue) = Tracer::new(1.0);
        let message = json!({"params":{"_meta":{"traceparent": SAMPLE}}});
        let Some(mut recording) = tracer.start(&message) else {
            panic!("sampled");
        };
        let start = Instant::now();
        let mut step = Span::new("authz request", SpanKind::Internal, start, start);
        step.error = Some("not permitted".into());
        recording.push(step);
        let mut call = Span::new(
            Arc::<str>::from("upstream fs"),
            SpanKind::Client,
            start,
            Instant::now(),
        );
        call.attributes
            .push(("portcullis.server", Attr::from("fs")));
        recording.push(call);
        tracer.finish(
            recording,
            Root {
                name: "tools/call fs__read".into(),
                attributes: vec![("portcullis.audit.seq", Attr::Int(7))],
                error: None,
            },
        );
        let finished = queue.take();
        assert_eq!(finished.len(), 1);
        let encoded = encode(&finished, &json!({"attributes": []}));
        let spans = &encoded["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans.as_array().map(Vec::len), Some(3));
        let root = &spans[0];
        assert_eq!(root["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(root["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(root["kind"], 2);
        assert_eq!(root["flags"], 0x301);
        assert_eq!(
            root["attributes"][0],
            json!({"key":"portcullis.audit.seq","value":{"intValue":"7"}})
        );
        let start: u64 = root["startTimeUnixNano"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let end: u64 = root["endTimeUnixNano"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert!(start > 1_700_000_000_000_000_000 && end >= start);
        for child in [&spans[1], &spans[2]] {
            assert_eq!(child["parentSpanId"], root["spanId"]);
            assert_eq!(child["traceId"], root["traceId"]);
        }
        assert_eq!(
            spans[1]["status"],
            json!({"code": 2, "message": "not permitted"})
        );
        assert_eq!(spans[2]["kind"], 3);
        assert_eq!(spans[2]["name"], "upstream fs");
    }
}
