//! Audit records: of exchanges, of sessions and servers' events, with every
//! secret scrubbed out of what is stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::audit::{Audit, AuditRecord};
use crate::chain::{Exchange, Outcome};
use crate::config::UpstreamSpec;
use crate::interceptors::Redact;
use crate::metrics::Metrics;
use crate::protocol::At as _;
use crate::traces::{Export, Span, SpanKind, Tracer};

use super::telemetry::{authz_note, observe, root_of, scrub_trace};
use super::{Gateway, Session, lock};

/// What is written about what passes the gateway: each exchange's and
/// event's record (its secrets scrubbed out, committed to the audit log),
/// its counts in the metrics, its trace. One job, one part of the gateway,
/// built whole with it.
pub struct Records {
    /// The audit log (`None` only for the CLI's one-shot commands).
    audit: Option<Audit>,
    /// Takes every secret out of what is stored and traced (the record's
    /// target, reason and detail, span attributes and errors, arguments
    /// when kept). `None` only in the CLI's one-shot commands and tests.
    scrubber: Option<Arc<Redact>>,
    /// Whether calls' arguments are kept, redacted, in their records.
    arguments_kept: bool,
    /// Counts and times for `GET /metrics` (`[observability] metrics`).
    metrics: Option<Arc<Metrics>>,
    /// Traces of exchanges (`[observability.traces]`).
    tracer: Option<Tracer>,
    /// The task that exports the tracer's spans; [`Records::close`] lets
    /// it send what is left.
    trace_export: Mutex<Option<Export>>,
    /// Event records being committed in the background: the proxy's stop
    /// waits for them, so `proxy_stop` is the last record of the chain.
    background: tokio_util::task::TaskTracker,
    /// Run as the proxy stops, before `proxy_stop`: see [`Records::on_stop`].
    stop_flushes: Mutex<Vec<StopFlush>>,
    /// Names a server's tool in a trace's root span.
    separator: String,
}

type StopFlush = Box<dyn Fn() -> Vec<AuditRecord> + Send + Sync>;

impl Records {
    /// `arguments_kept`: `[audit] arguments = "redacted"`; `separator`
    /// names a server's tool in a trace.
    pub(super) fn new(
        audit: Option<Audit>,
        scrubber: Option<Arc<Redact>>,
        arguments_kept: bool,
        traces: Option<(Tracer, Export)>,
        metrics: Option<Arc<Metrics>>,
        separator: &str,
    ) -> Self {
        let (tracer, trace_export) = match traces {
            Some((tracer, export)) => (Some(tracer), Some(export)),
            None => (None, None),
        };
        Self {
            audit,
            scrubber,
            arguments_kept,
            metrics,
            tracer,
            trace_export: Mutex::new(trace_export),
            background: tokio_util::task::TaskTracker::new(),
            stop_flushes: Mutex::new(Vec::new()),
            separator: separator.to_owned(),
        }
    }

    /// The audit log, if this gateway keeps one.
    pub fn audit(&self) -> Option<&Audit> {
        self.audit.as_ref()
    }

    /// Counts and times for `GET /metrics`, when they are on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Traces of exchanges, when they are on.
    pub(super) fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_ref()
    }

    /// `text` with every secret replaced by its placeholder (for what is
    /// logged, recorded or answered from a peer's or an error's words).
    pub fn scrubbed(&self, text: &str) -> String {
        match self.scrubber.as_ref() {
            Some(scrubber) => scrubber.scrubbed(text),
            None => text.to_owned(),
        }
    }

    /// Runs `flush` as the proxy stops, before `proxy_stop` is recorded,
    /// and records what it returns (events held back to be aggregated).
    pub fn on_stop(&self, flush: impl Fn() -> Vec<AuditRecord> + Send + Sync + 'static) {
        lock(&self.stop_flushes).push(Box::new(flush));
    }

    /// Runs `task` (one that hands events to [`Records::events`], and ends
    /// once the proxy is told to stop) among the records' background work:
    /// the proxy's stop waits for it, so that what it was handed before the
    /// stop is recorded before `proxy_stop`.
    pub fn keep_until_stop(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.background.spawn(task);
    }
}

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
/// What the proxy's own part `interceptor` noted on the exchange, by key;
/// the `counts` as numbers.
fn notes_of(
    exchange: &Exchange,
    interceptor: &str,
    counts: &[&str],
) -> serde_json::Map<String, Value> {
    exchange
        .annotations
        .iter()
        .filter(|a| &*a.interceptor == interceptor)
        .map(|a| {
            let number = counts
                .contains(&a.key.as_str())
                .then(|| a.value.parse::<u64>().ok())
                .flatten();
            let value = number.map_or_else(|| Value::from(a.value.as_str()), Value::from);
            (a.key.clone(), value)
        })
        .collect()
}

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
    let discovery = notes_of(exchange, "discovery", &[]);
    if !discovery.is_empty() {
        detail.insert("discovery".into(), Value::Object(discovery));
    }
    // Code mode: a script's own record (its id, source, calls, how it
    // ended), or a call a script made (the script's id: its parent).
    let mut code = notes_of(exchange, "code", &["calls", "fuel"]);
    if let Some(script) = &exchange.context.script {
        code.insert("parent".into(), Value::from(&**script));
    }
    if !code.is_empty() {
        detail.insert("code".into(), Value::Object(code));
    }
    // A refusal the flow could decide (the target's labels, and for each
    // label of the flow the exchanges, name and record, that brought it);
    // the shadow policy set's decision beside the enforced one.
    // And the case authz decided (`policy replay` decides it again); for
    // a client's answer to a server's question, its own decision.
    for key in ["flow", "shadow", "decided", "answer"] {
        if let Some(noted) = exchange
            .annotations
            .iter()
            .find(|a| &*a.interceptor == "authz" && a.key == key)
            .and_then(|a| serde_json::from_str::<Value>(&a.value).ok())
        {
            detail.insert(key.into(), noted);
        }
    }
    // A refusal a policy let the person override (`@ask`): what they
    // answered, and the policies that asked.
    if let Some(answer) = exchange
        .annotations
        .iter()
        .find(|a| &*a.interceptor == "ask" && a.key == "answer")
    {
        // [the policy set, the policies…]
        let policies: Vec<String> = exchange
            .annotations
            .iter()
            .find(|a| &*a.interceptor == "authz" && a.key == "ask_policies")
            .and_then(|a| serde_json::from_str::<Vec<String>>(&a.value).ok())
            .map(|listed| listed.into_iter().skip(1).collect())
            .unwrap_or_default();
        detail.insert(
            "ask".into(),
            serde_json::json!({"answer": answer.value, "policies": policies}),
        );
    }
    // Whose token the server was sent (never which).
    if let Some(credential) = exchange
        .annotations
        .iter()
        .find(|a| &*a.interceptor == "upstream" && a.key == "credential")
    {
        detail.insert("credential".into(), Value::from(credential.value.as_str()));
    }
    // The trace the exchange is part of: from the record to its spans.
    if let Some(trace) = &exchange.trace {
        detail.insert("trace_id".into(), Value::from(trace.trace_id().to_hex()));
        detail.insert("span_id".into(), Value::from(trace.span_id().to_hex()));
    }
    (!detail.is_empty()).then_some(Value::Object(detail))
}

/// An exchange's record, committed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Committed {
    /// Its number in the log (`None`: no log, or one that numbers later).
    pub(super) seq: Option<u64>,
}

impl Records {
    /// Scrubs what a record carries from a peer's words: its method and
    /// request id (a client chooses both, and an unknown method is recorded
    /// as sent), its target, its reason, and its detail (the kept
    /// arguments are already redacted).
    pub(super) fn scrub_record(&self, record: &mut AuditRecord) {
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
    pub fn event(&self, record: AuditRecord) {
        self.events(vec![record]);
    }

    /// Commits event records in the background, in this order (records
    /// committed from separate tasks may land in either order).
    pub fn events(&self, records: Vec<AuditRecord>) {
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
    pub(super) fn commit_in_background(&self, mut records: Vec<AuditRecord>) {
        for record in &mut records {
            self.scrub_record(record);
        }
        let Some(audit) = self.audit.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.background.spawn_on(
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

    /// Commits an exchange's record, then counts and traces it; `None`
    /// when the log cannot take it (the caller refuses the exchange), else
    /// the record's number if the log gave it one. Only an exchange's end
    /// calls it (`ExchangeRun::end`).
    pub(super) async fn exchange(
        &self,
        exchange: &mut Exchange,
        outcome: &Outcome,
        reply: Option<&Value>,
        upstream: Option<Duration>,
        arguments: &Arguments,
        started: std::time::Instant,
    ) -> Option<Committed> {
        let Some(audit) = &self.audit else {
            if let Some(metrics) = &self.metrics {
                observe(metrics, exchange, outcome, upstream, started.elapsed());
            }
            self.finish_trace(exchange, outcome, None);
            return Some(Committed { seq: None });
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
            Ok(seq) => Some(Committed { seq }),
            Err(err) => {
                tracing::error!(error = %err, "AUDIT: an exchange cannot be recorded");
                None
            }
        }
    }

    /// Ends the exchange's span (if it is traced) and hands its trace to
    /// the exporter.
    pub(super) fn finish_trace(
        &self,
        exchange: &mut Exchange,
        outcome: &Outcome,
        seq: Option<u64>,
    ) {
        let (Some(tracer), Some(recording)) = (self.tracer.as_ref(), exchange.trace.take()) else {
            return;
        };
        let mut root = root_of(exchange, outcome, seq, &self.separator);
        let mut recording = recording;
        if let Some(scrubber) = self.scrubber.as_ref() {
            scrub_trace(scrubber, &mut root, &mut recording);
        }
        tracer.finish(recording, root);
    }

    /// The proxy stops: what [`Records::on_stop`] holds back is recorded,
    /// the events under way are committed, then `ended` (the sessions'
    /// ends) and `proxy_stop`, in that order.
    pub(super) async fn stopping(&self, mut ended: Vec<AuditRecord>) {
        let flushes: Vec<_> = lock(&self.stop_flushes).drain(..).collect();
        for flush in flushes {
            self.events(flush());
        }
        // Events recorded just before (a session that ended as the proxy
        // was told to stop) go before `proxy_stop`.
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.background.wait()).await;
        if let Some(audit) = &self.audit {
            let mut stop = AuditRecord::event("proxy_stop", "allow");
            stop.detail = Some(json!({ "sessions_ended": ended.len() }));
            ended.push(stop);
            for record in ended {
                if let Err(err) = audit.commit(record).await {
                    tracing::error!(error = %err, "AUDIT: an event cannot be recorded");
                }
            }
        }
    }

    /// Waits until the records committed in the background are on disk
    /// (the tests' harness reads them).
    #[cfg(test)]
    pub(super) async fn settled(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
        if let Some(audit) = &self.audit {
            let _ = audit.flush().await;
        }
    }

    /// Last of all: the records are on disk and the last spans sent.
    pub(super) async fn close(&self) {
        if let Some(audit) = &self.audit
            && let Err(err) = audit.flush().await
        {
            tracing::error!(error = %err, "AUDIT: the last records could not be flushed");
        }
        let export = lock(&self.trace_export).take();
        if let Some(export) = export {
            export.finish().await;
        }
    }
}

impl Gateway {
    /// A server's event record.
    pub(super) fn server_event(&self, kind: &str, source: &crate::upstream::Source) -> AuditRecord {
        let decision = if matches!(kind, "server_down" | "server_circuit_open") {
            "error"
        } else {
            "allow"
        };
        let mut record = AuditRecord::event(kind, decision);
        record.server = Some(source.server.to_string());
        // Configured or a catalog's (`[discovery]`): every upstream's.
        let index = self.servers.sender_of(source);
        let upstream = index
            .and_then(|index| self.servers.upstream_at(index))
            .map(|upstream| match &upstream.config().kind {
                UpstreamSpec::Container(_) => "container",
                UpstreamSpec::Process(_) => "process",
                UpstreamSpec::Remote(_) => "remote",
            });
        let restarts = index
            .and_then(|index| self.servers.upstream_at(index))
            .map(|upstream| upstream.restarts());
        record.detail = Some(json!({
            "upstream": upstream,
            "instance": source.instance.as_deref(),
            "restarts": restarts,
        }));
        record
    }
}

/// A session's event record.
pub(super) fn session_event(session: &Session, kind: &str) -> AuditRecord {
    let mut record = AuditRecord::event(kind, "allow");
    record.session = session.id.to_string();
    record.client = session.client.name.to_string();
    record.transport = session.transport.as_str().into();
    record
}

/// The `session_end` record of a session.
pub(super) fn session_end(session: &Session) -> AuditRecord {
    let mut record = session_event(session, "session_end");
    record.total_us = session.opened.elapsed().as_micros() as u64;
    record
}
