//! Audit records: of exchanges, of sessions and servers' events, with every
//! secret scrubbed out of what is stored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::chain::{Exchange, Outcome};
use crate::config::UpstreamSpec;
use crate::protocol::At as _;
use crate::traces::{Span, SpanKind};

use super::telemetry::{authz_note, observe};
use super::{Gateway, Session};

/// A call's arguments as its audit record keeps them.
#[derive(Debug, Default)]
pub(super) struct Arguments {
    /// SHA-256 of the arguments as the chain left them (redacted).
    sha256: Option<String>,
    /// The arguments themselves, every secret redacted
    /// (`[audit] arguments = "redacted"`).
    pub(super) stored: Option<Value>,
}

/// Stored arguments larger than this (as JSON) are replaced by a note.
pub(super) const MOST_STORED_ARGUMENT_BYTES: usize = 64 * 1024;

/// The audit record of an exchange. Arguments are kept as a hash only, and
/// the result by its size.
pub(super) fn record_of(
    exchange: &Exchange,
    outcome: &Outcome,
    reply: Option<&Value>,
    upstream: Option<Duration>,
    arguments: &Arguments,
    total: Duration,
) -> crate::audit::AuditRecord {
    let context = &exchange.context;
    let annotation = |key: &str| authz_note(exchange, key).map(str::to_owned);
    let (decision, decided_by, reason) = match outcome {
        // A result that broke its output schema and was passed on
        // (`[schema] output = "log"`) says so.
        Outcome::Delivered => (
            "allow",
            None,
            exchange
                .annotations
                .iter()
                .find(|a| &*a.interceptor == "schema" && a.key == "output_violation")
                .map(|a| {
                    format!(
                        "the result does not match the tool's output schema (passed on): {}",
                        a.value
                    )
                }),
        ),
        Outcome::Denied {
            interceptor,
            reason,
        } => ("deny", Some(interceptor.to_string()), Some(reason.clone())),
        Outcome::Failed { reason } => ("error", None, Some(reason.clone())),
    };
    let is_error = reply.is_some_and(|r| {
        r.get("error").is_some()
            || r.at(&["result", "isError"]).and_then(Value::as_bool) == Some(true)
    });
    crate::audit::AuditRecord {
        seq: 0,
        time: crate::audit::timestamp(std::time::SystemTime::now()),
        kind: "exchange".into(),
        session: context.session.to_string(),
        client: context.client.name.to_string(),
        transport: context.transport.as_str().into(),
        server: context.server.as_deref().map(str::to_owned),
        method: context.method.to_string(),
        target: context.target.clone(),
        request_id: context.request_id.clone(),
        decision: decision.into(),
        decided_by,
        policy_ids: annotation("policy_ids")
            .filter(|ids| !ids.is_empty())
            .map(|ids| ids.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        decision_id: annotation("decision_id"),
        policy_set: annotation("policy_set"),
        reason,
        redactions: crate::interceptors::redact::counts(&exchange.annotations)
            .into_iter()
            .map(|(rule, direction, count)| crate::audit::Redaction {
                rule,
                direction,
                count,
            })
            .collect(),
        arguments_sha256: arguments.sha256.clone(),
        result_bytes: reply.map_or(0, |r| serde_json::to_vec(r).map_or(0, |b| b.len() as u64)),
        is_error,
        upstream_us: upstream.map(|d| d.as_micros() as u64),
        total_us: total.as_micros() as u64,
        detail: detail_of(exchange, arguments),
        prev_hash: String::new(),
        protocol: context.protocol.as_deref().map(str::to_owned),
        identity: context
            .client
            .token
            .as_ref()
            .map(|token| crate::audit::TokenIdentity {
                provider: token.provider.to_string(),
                subject: token.subject.clone(),
                client_id: token.client_id.clone(),
            }),
        hash: String::new(),
        mac: None,
        profile: None,
    }
}

/// The record's `detail`: the stored arguments, and what each WASM plugin
/// noted (`plugins.NAME.KEY`, its annotations and failures).
pub(super) fn detail_of(exchange: &Exchange, arguments: &Arguments) -> Option<Value> {
    let mut detail = serde_json::Map::new();
    if let Some(stored) = &arguments.stored {
        detail.insert("arguments".into(), stored.clone());
    }
    let mut plugins = serde_json::Map::new();
    for annotation in &exchange.annotations {
        if let Some(plugin) = annotation.interceptor.strip_prefix("wasm:")
            && let Value::Object(notes) = plugins
                .entry(plugin)
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
        {
            notes.insert(
                annotation.key.clone(),
                Value::from(annotation.value.as_str()),
            );
        }
    }
    if !plugins.is_empty() {
        detail.insert("plugins".into(), Value::Object(plugins));
    }
    // A `[discovery]` call: which tool, and the server it added or removed.
    let discovery: serde_json::Map<String, Value> = exchange
        .annotations
        .iter()
        .filter(|a| &*a.interceptor == "discovery")
        .map(|a| (a.key.clone(), Value::from(a.value.as_str())))
        .collect();
    if !discovery.is_empty() {
        detail.insert("discovery".into(), Value::Object(discovery));
    }
    // The trace the exchange is part of: from the record to its spans.
    if let Some(trace) = &exchange.trace {
        detail.insert("trace_id".into(), Value::from(trace.trace_id().to_hex()));
        detail.insert("span_id".into(), Value::from(trace.span_id().to_hex()));
    }
    (!detail.is_empty()).then_some(Value::Object(detail))
}

impl Gateway {
    /// Scrubs what a record carries from a peer's words: its method and
    /// request id (a client chooses both, and an unknown method is recorded
    /// as sent), its target, its reason, and its detail (the kept
    /// arguments are already redacted).
    pub(super) fn scrub_record(&self, record: &mut crate::audit::AuditRecord) {
        let Some(scrubber) = self.scrubber.as_ref() else {
            return;
        };
        for text in [&mut record.target, &mut record.reason]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&mut record.method))
        {
            *text = scrubber.scrubbed(text);
        }
        if let Some(id) = &mut record.request_id {
            scrubber.redact_all(id);
        }
        match &mut record.detail {
            Some(Value::Object(detail)) => {
                for (key, value) in detail.iter_mut() {
                    if key != "arguments" {
                        scrubber.redact_all(value);
                    }
                }
            }
            Some(other) => scrubber.redact_all(other),
            None => {}
        }
    }

    /// A call's arguments as the audit keeps them: the hash of what the
    /// chain left, and (if kept) a copy with every secret redacted.
    pub(super) fn arguments_of(&self, message: &Value) -> Arguments {
        let Some(arguments) = message.at(&["params", "arguments"]) else {
            return Arguments::default();
        };
        let kept = self.arguments_kept;
        let stored = self.scrubber.as_ref().filter(|_| kept).map(|scrubber| {
            let mut copy = arguments.clone();
            scrubber.redact_all(&mut copy);
            let bytes = serde_json::to_vec(&copy).map_or(usize::MAX, |b| b.len());
            if bytes > MOST_STORED_ARGUMENT_BYTES {
                json!({ "omitted": format!("{bytes} bytes, over the {MOST_STORED_ARGUMENT_BYTES} kept") })
            } else {
                copy
            }
        });
        Arguments {
            sha256: Some(crate::audit::sha256_canonical(arguments)),
            stored,
        }
    }

    /// Commits an event record in the background (events are not replies:
    /// nothing waits for them; a failure is logged loudly, and the calls
    /// that follow are refused while the store cannot be written).
    pub fn record_event(&self, record: crate::audit::AuditRecord) {
        self.record_events(vec![record]);
    }

    /// Commits event records in the background, in this order (records
    /// committed from separate tasks may land in either order).
    pub fn record_events(&self, records: Vec<crate::audit::AuditRecord>) {
        if let Some(metrics) = &self.metrics {
            for record in &records {
                metrics.events.get([&record.kind]).add(1);
            }
        }
        self.commit_in_background(records);
    }

    /// Scrubs records and commits them in a task of their own, in this
    /// order: nothing waits for them; a failure is logged loudly, and the
    /// calls that follow are refused while the store cannot be written.
    pub(super) fn commit_in_background(&self, mut records: Vec<crate::audit::AuditRecord>) {
        for record in &mut records {
            self.scrub_record(record);
        }
        let Some(audit) = self.audit.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.event_records.spawn_on(
            async move {
                for record in records {
                    if let Err(err) = audit.commit(record).await {
                        tracing::error!(error = %err, "AUDIT: an event cannot be recorded");
                    }
                }
            },
            &runtime,
        );
    }

    /// A session's event record.
    pub(super) fn session_event(session: &Session, kind: &str) -> crate::audit::AuditRecord {
        let mut record = crate::audit::AuditRecord::event(kind, "allow");
        record.session = session.id.to_string();
        record.client = session.client.name.to_string();
        record.transport = session.transport.as_str().into();
        record
    }

    /// The `session_end` record of a session.
    pub(super) fn session_end(session: &Session) -> crate::audit::AuditRecord {
        let mut record = Self::session_event(session, "session_end");
        record.total_us = session.opened.elapsed().as_micros() as u64;
        record
    }

    /// A server's event record.
    pub(super) fn server_event(
        &self,
        kind: &str,
        source: &crate::upstream::Source,
    ) -> crate::audit::AuditRecord {
        let decision = if kind == "server_down" {
            "error"
        } else {
            "allow"
        };
        let mut record = crate::audit::AuditRecord::event(kind, decision);
        record.server = Some(source.server.to_string());
        // Configured or a catalog's (`[discovery]`): every upstream's.
        let index = self.sender_of(source);
        let upstream = index
            .and_then(|index| self.upstream_at(index))
            .map(|upstream| match &upstream.config().kind {
                UpstreamSpec::Container(_) => "container",
                UpstreamSpec::Process(_) => "process",
                UpstreamSpec::Remote(_) => "remote",
            });
        let restarts = index
            .and_then(|index| self.upstream_at(index))
            .map(|upstream| upstream.restarts());
        record.detail = Some(json!({
            "upstream": upstream,
            "instance": source.instance.as_deref(),
            "restarts": restarts,
        }));
        record
    }

    /// Commits an exchange's record, then counts and traces it; `false`
    /// when the log cannot take it (the caller refuses the exchange). Only
    /// an exchange's end calls it (`ExchangeRun::end`).
    pub(super) async fn record(
        &self,
        exchange: &mut Exchange,
        outcome: &Outcome,
        reply: Option<&Value>,
        upstream: Option<Duration>,
        arguments: &Arguments,
        started: std::time::Instant,
    ) -> bool {
        let Some(audit) = &self.audit else {
            if let Some(metrics) = &self.metrics {
                observe(metrics, exchange, outcome, upstream, started.elapsed());
            }
            self.finish_trace(exchange, outcome, None);
            return true;
        };
        let mut record = record_of(
            exchange,
            outcome,
            reply,
            upstream,
            arguments,
            started.elapsed(),
        );
        self.scrub_record(&mut record);
        let committing = std::time::Instant::now();
        let committed = audit.commit(record).await;
        let commit_ended = std::time::Instant::now();
        if let Some(metrics) = &self.metrics {
            metrics
                .audit_commit_seconds
                .observe(commit_ended - committing);
            if committed.is_err() {
                metrics.audit_failures.add(1);
            }
            observe(metrics, exchange, outcome, upstream, started.elapsed());
        }
        if let Some(trace) = exchange.trace.as_deref_mut() {
            let mut span = Span::new("audit commit", SpanKind::Internal, committing, commit_ended);
            if let Err(err) = &committed {
                span.error = Some(err.to_string());
            }
            trace.push(span);
        }
        let seq = committed.as_ref().ok().copied().flatten();
        self.finish_trace(exchange, outcome, seq);
        match committed {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(error = %err, "AUDIT: an exchange cannot be recorded");
                false
            }
        }
    }
}
