//! OpenTelemetry traces (`[observability.traces]`, off by default).
//!
//! Each client request, and each server→client request, is one span of kind
//! server, with a child span per interceptor and phase, one of kind client
//! for the call to the upstream server, and one for the audit commit. A
//! W3C `traceparent` in the request's `params._meta` makes the exchange a
//! child of the caller's span; the proxy writes its own `traceparent` (the
//! upstream span) into `params._meta` of what it forwards, so a traced MCP
//! server continues the same trace.
//!
//! The hot path only reads clocks and pushes spans onto the exchange's
//! [`Recording`]. A finished recording is pushed onto a bounded buffer under
//! an uncontended lock (when it is full the spans are dropped and counted:
//! tracing never blocks or slows a call); the background [`Exporter`] takes
//! the whole buffer every second, or when it holds a request's worth of
//! spans, and posts it as OTLP/HTTP JSON. Nothing wakes another thread per
//! call.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{TracesConfig, resolve_headers};
use crate::metrics::{Counter, Exposition};

/// Finished recordings waiting for the exporter; past this, spans are dropped.
const QUEUE: usize = 4_096;
/// How often an exporter-less [`Export::discard`] empties the buffer.
const DISCARD_EVERY: Duration = Duration::from_millis(100);
/// The exporter sends at least this often while spans wait…
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// …and at once when this many spans wait.
const MOST_SPANS_PER_REQUEST: usize = 512;
/// Tries per batch when the collector is unreachable or asks to retry.
const TRIES: u32 = 3;
/// How long the last export may take when the proxy stops.
const FINAL_EXPORT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("traces: {0}")]
    Exporter(String),
}

/// A trace's id (16 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span's id (8 bytes, never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    fn random() -> Self {
        let high = random_u64();
        let low = nonzero_random();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&high.to_be_bytes());
        id[8..].copy_from_slice(&low.to_be_bytes());
        Self(id)
    }
}

impl SpanId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn random() -> Self {
        Self(nonzero_random().to_be_bytes())
    }
}

/// A W3C Trace Context `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` value (version `00`; a later version by its
    /// first four fields, as the spec asks). Anything malformed is `None`:
    /// the exchange then starts a trace of its own.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let version = lower_hex::<1>(bytes.get(0..2)?)?[0];
        let valid_length = match version {
            0xff => false,
            0x00 => bytes.len() == 55,
            _ => bytes.len() == 55 || bytes.get(55) == Some(&b'-'),
        };
        if !valid_length || [2, 35, 52].iter().any(|&at| bytes.get(at) != Some(&b'-')) {
            return None;
        }
        let trace_id = lower_hex::<16>(bytes.get(3..35)?)?;
        let parent_id = lower_hex::<8>(bytes.get(36..52)?)?;
        let flags = lower_hex::<1>(bytes.get(53..55)?)?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            sampled: flags & 1 == 1,
        })
    }

    /// The header value for a sampled span of `trace`.
    pub fn format(trace: TraceId, span: SpanId) -> String {
        format!("00-{}-{}-01", trace.to_hex(), span.to_hex())
    }
}

/// Lowercase hex (the only form `traceparent` allows) into `N` bytes.
fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

thread_local! {
    /// Per thread, a SplitMix64 state seeded from the OS: ids must be
    /// unique and unguessable enough for tracing, and cheap (a span per
    /// interceptor per call).
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(seed)
}

fn random_u64() -> u64 {
    RANDOM.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero_random() -> u64 {
    loop {
        let value = random_u64();
        if value != 0 {
            return value;
        }
    }
}

/// Text for span names and attribute values, shared or static where it can
/// be (no copy on the hot path).
#[derive(Debug, Clone)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(text) => text,
            Self::Shared(text) => text,
            Self::Owned(text) => text,
        }
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self::Static(text)
    }
}

impl From<Arc<str>> for Text {
    fn from(text: Arc<str>) -> Self {
        Self::Shared(text)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self::Owned(text)
    }
}

/// An attribute's value.
#[derive(Debug, Clone)]
pub enum Attr {
    Text(Text),
    Int(i64),
}

impl<T: Into<Text>> From<T> for Attr {
    fn from(text: T) -> Self {
        Self::Text(text.into())
    }
}

/// OTLP's span kinds (the numbers are the protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished child span of an exchange.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: SpanId,
    pub name: Text,
    pub kind: SpanKind,
    pub start: Instant,
    pub end: Instant,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when the step failed or refused: the span's status is then an
    /// error with this (client-safe) message.
    pub error: Option<String>,
}

impl Span {
    pub fn new(name: impl Into<Text>, kind: SpanKind, start: Instant, end: Instant) -> Self {
        Self::with_id(SpanId::random(), name, kind, start, end)
    }

    pub fn with_id(
        id: SpanId,
        name: impl Into<Text>,
        kind: SpanKind,
        start: Instant,
        end: Instant,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            kind,
            start,
            end,
            attributes: Vec::new(),
            error: None,
        }
    }
}

/// One exchange's trace while it runs: its own span's ids and times, and the
/// child spans finished so far.
#[derive(Debug, Clone)]
pub struct Recording {
    trace_id: TraceId,
    span_id: SpanId,
    /// The caller's span, from its `traceparent`.
    parent: Option<SpanId>,
    started: Instant,
    start_unix_ns: u64,
    spans: Vec<Span>,
}

impl Recording {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The `traceparent` that makes `span` (a child of this exchange) the
    /// parent of what a server does for it.
    pub fn traceparent(&self, span: SpanId) -> String {
        TraceParent::format(self.trace_id, span)
    }

    pub fn push(&mut self, span: Span) {
        self.spans.push(span);
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The spans so far, to edit before export (scrubbing).
    pub fn spans_mut(&mut self) -> &mut [Span] {
        &mut self.spans
    }

    fn unix_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.started);
        self.start_unix_ns
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The exchange's own span, described once it is over.
#[derive(Debug, Clone)]
pub struct Root {
    pub name: String,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: Option<String>,
}

/// A recording handed to the exporter.
#[derive(Debug)]
pub struct Finished {
    recording: Box<Recording>,
    root: Root,
    end: Instant,
}

impl Finished {
    fn span_count(&self) -> usize {
        self.recording.spans.len() + 1
    }
}

/// What became of spans, for `GET /metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: Counter,
    /// Dropped because the queue was full.
    pub dropped: Counter,
    /// Refused by the collector, or not delivered after every try.
    pub failed: Counter,
}

/// Starts and finishes exchanges' traces. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

#[derive(Debug)]
struct TracerInner {
    /// A new trace is sampled when the low 64 bits of its id are below this
    /// (`None`: every trace).
    sample_below: Option<u64>,
    pending: Mutex<Pending>,
    /// Told once the buffer holds a request's worth of spans.
    full_enough: Notify,
    counters: Arc<Counters>,
}

/// Finished recordings not yet taken by the exporter.
#[derive(Debug, Default)]
struct Pending {
    finished: Vec<Finished>,
    spans: usize,
}

/// The exporter's side of the buffer, for [`Exporter::spawn`] (or
/// [`Export::discard`]).
#[derive(Debug)]
pub struct Queue(Arc<TracerInner>);

impl Queue {
    /// Everything finished so far.
    fn take(&self) -> Vec<Finished> {
        let mut pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.spans = 0;
        std::mem::take(&mut pending.finished)
    }

    /// Until the buffer holds a request's worth of spans.
    async fn full_enough(&self) {
        self.0.full_enough.notified().await;
    }
}

impl Tracer {
    /// A tracer that samples this share of new traces (a caller's
    /// `traceparent` decides for its own: sampled or not).
    pub fn new(sample_ratio: f64) -> (Self, Queue) {
        let sample_below = (sample_ratio < 1.0).then(|| {
            // Saturates: 0.0 samples nothing; just under 1.0, nearly all.
            (sample_ratio.max(0.0) * 18_446_744_073_709_551_616.0) as u64
        });
        let inner = Arc::new(TracerInner {
            sample_below,
            pending: Mutex::default(),
            full_enough: Notify::new(),
            counters: Arc::default(),
        });
        (
            Self {
                inner: inner.clone(),
            },
            Queue(inner),
        )
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.inner.counters.clone()
    }

    /// Starts the trace of an exchange opened by `message` (a request), or
    /// `None` when it is not sampled.
    pub fn start(&self, message: &Value) -> Option<Box<Recording>> {
        let caller = message
            .pointer("/params/_meta/traceparent")
            .and_then(Value::as_str)
            .and_then(TraceParent::parse);
        let (trace_id, parent) = match caller {
            Some(caller) if !caller.sampled => return None,
            Some(caller) => (caller.trace_id, Some(caller.parent_id)),
            None => {
                let id = TraceId::random();
                if let Some(below) = self.inner.sample_below {
                    let mut low = [0u8; 8];
                    low.copy_from_slice(&id.0[8..]);
                    if u64::from_be_bytes(low) >= below {
                        return None;
                    }
                }
                (id, None)
            }
        };
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Some(Box::new(Recording {
            trace_id,
            span_id: SpanId::random(),
            parent,
            started: Instant::now(),
            start_unix_ns,
            spans: Vec::with_capacity(16),
        }))
    }

    /// Ends the exchange's span now and hands the trace to the exporter.
    pub fn finish(&self, recording: Box<Recording>, root: Root) {
        let finished = Finished {
            recording,
            root,
            end: Instant::now(),
        };
        let spans = finished.span_count();
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.finished.len() >= QUEUE {
            drop(pending);
            self.inner.counters.dropped.add(spans as u64);
            return;
        }
        pending.finished.push(finished);
        let before = pending.spans;
        pending.spans += spans;
        drop(pending);
        if before < MOST_SPANS_PER_REQUEST && before + spans >= MOST_SPANS_PER_REQUEST {
            self.inner.full_enough.notify_one();
        }
    }

    /// `portcullis_trace_spans_total` by outcome.
    pub fn render_metrics(&self, out: &mut Exposition) {
        let name = "portcullis_trace_spans_total";
        out.declare(
            name,
            "Trace spans by outcome: exported to the collector, dropped (queue full), or failed (refused or undeliverable).",
            "counter",
        );
        let counters = &self.inner.counters;
        for (outcome, counter) in [
            ("exported", &counters.exported),
            ("dropped", &counters.dropped),
            ("failed", &counters.failed),
        ] {
            out.sample(name, &[("outcome", outcome)], counter.get() as f64);
        }
    }
}

/// Sends batches of finished traces to an OTLP/HTTP collector as JSON.
#[derive(Debug)]
pub struct Exporter {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    /// The `resource` object every request carries.
    resource: Value,
    counters: Arc<Counters>,
}

/// A running export task; [`Export::finish`] sends what is left and ends it.
#[derive(Debug)]
pub struct Export {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Export {
    /// Takes every finished trace and drops it: tracing without an exporter
    /// (for measuring what tracing itself costs).
    pub fn discard(queue: Queue) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(DISCARD_EVERY) => {}
                    () = queue.full_enough() => {}
                    () = stopped.cancelled() => return,
                }
                drop(queue.take());
            }
        });
        Self { task, stop }
    }

    /// Exports what is queued (for at most a few seconds) and stops.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(FINAL_EXPORT + Duration::from_secs(1), self.task).await;
    }
}

impl Exporter {
    /// Reads the header secrets and builds the HTTP client: a missing secret
    /// stops the proxy at start, not at the first export.
    pub fn new(config: &TracesConfig, counters: Arc<Counters>) -> Result<Self, TraceError> {
        // reqwest is built without a bundled crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = reqwest::Url::parse(&config.endpoint)
            .map_err(|err| TraceError::Exporter(format!("`{}`: {err}", config.endpoint)))?;
        let mut secrets = Vec::new();
        for (name, reference) in &config.secrets {
            let value = reference.resolve().map_err(TraceError::Exporter)?;
            secrets.push((name.clone(), value));
        }
        let headers = resolve_headers(&config.headers, &secrets).map_err(TraceError::Exporter)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| TraceError::Exporter(format!("cannot build an HTTP client: {err}")))?;
        let resource = json!({
            "attributes": [
                attribute("service.name", &Attr::from(config.service_name.clone())),
                attribute("service.version", &Attr::from(env!("CARGO_PKG_VERSION"))),
                attribute("telemetry.sdk.name", &Attr::from("portcullis")),
                attribute("telemetry.sdk.language", &Attr::from("rust")),
            ]
        });
        Ok(Self {
            client,
            endpoint,
            headers,
            resource,
            counters,
        })
    }

    /// Exports in the background until [`Export::finish`].
    pub fn spawn(self, queue: Queue) -> Export {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.run(queue, stop.clone()));
        Export { task, stop }
    }

    async fn run(self, queue: Queue, stop: CancellationToken) {
        let mut tick = tokio::time::interval(EXPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = queue.full_enough() => {}
                () = stop.cancelled() => break,
            }
            failing = self.export_all(queue.take(), failing).await;
        }
        // What finished before the stop, in bounded time.
        let last = self.export_all(queue.take(), failing);
        if tokio::time::timeout(FINAL_EXPORT, last).await.is_err() {
            tracing::warn!("traces: the last spans could not be exported before the proxy stopped");
        }
    }

    /// Exports `finished` a request's worth of spans at a time; returns
    /// whether exports are failing.
    async fn export_all(&self, mut finished: Vec<Finished>, mut failing: bool) -> bool {
        while !finished.is_empty() {
            let rest = split_batch(&mut finished);
            failing = self.export(finished, failing).await;
            finished = rest;
        }
        failing
    }

    /// Sends one batch (tried again on a connection error, 429 or 5xx);
    /// returns whether exports are failing now. A change of state is logged
    /// once, not every batch.
    async fn export(&self, batch: Vec<Finished>, was_failing: bool) -> bool {
        let count: u64 = batch.iter().map(|f| f.span_count() as u64).sum();
        let body = match serde_json::to_vec(&encode(&batch, &self.resource)) {
            Ok(body) => body,
            Err(err) => {
                self.counters.failed.add(count);
                tracing::warn!(error = %err, "traces: cannot encode spans");
                return true;
            }
        };
        let mut wait = Duration::from_millis(200);
        let mut problem = String::new();
        for attempt in 1..=TRIES {
            let sent = self
                .client
                .post(self.endpoint.clone())
                .headers(self.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(response) if response.status().is_success() => {
                    let rejected = rejected_spans(response).await.min(count);
                    self.counters.exported.add(count - rejected);
                    self.counters.failed.add(rejected);
                    if rejected > 0 {
                        tracing::warn!(rejected, "traces: the collector rejected spans");
                    }
                    if was_failing {
                        tracing::info!("traces: exporting again");
                    }
                    return false;
                }
                Ok(response) => {
                    let status = response.status();
                    problem = format!("the collector answered {status}");
                    status.as_u16() == 429 || status.is_server_error()
                }
                Err(err) => {
                    problem = format!("cannot reach the collector: {}", err.without_url());
                    true
                }
            };
            if !retry || attempt == TRIES {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
        self.counters.failed.add(count);
        if !was_failing {
            tracing::warn!(endpoint = %self.endpoint, problem, spans = count, "traces: spans not exported");
        }
        true
    }
}

/// Splits off what follows the first request's worth of spans (at least one
/// recording stays).
fn split_batch(finished: &mut Vec<Finished>) -> Vec<Finished> {
    let mut spans = 0;
    let keep = finished
        .iter()
        .position(|f| {
            spans += f.span_count();
            spans > MOST_SPANS_PER_REQUEST
        })
        .map_or(finished.len(), |at| at.max(1));
    finished.split_off(keep)
}

/// The collector's count of rejected spans (OTLP partial success), 0 when it
/// says none or nothing readable.
async fn rejected_spans(response: reqwest::Response) -> u64 {
    let Ok(body) = response.bytes().await else {
        return 0;
    };
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|answer| {
            let rejected = answer.pointer("/partialSuccess/rejectedSpans")?;
            rejected
                .as_u64()
                .or_else(|| rejected.as_str()?.parse().ok())
        })
        .unwrap_or(0)
}

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
            root["parentSpanId"] = Value::from(parent.to_hex());
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

fn attribute(key: &str, value: &Attr) -> Value {
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
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let parsed = TraceParent::parse(SAMPLE);
        let Some(parent) = parsed else {
            panic!("the spec's example must parse");
        };
        assert!(parent.sampled);
        assert_eq!(parent.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id.to_hex(), "00f067aa0ba902b7");
        assert_eq!(
            TraceParent::format(parent.trace_id, parent.parent_id),
            SAMPLE
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceParent::parse(unsampled).map(|p| p.sampled),
            Some(false)
        );
        // A later version may append fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceParent::parse(later).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_callers_context_is_continued_and_an_unsampled_one_respected() {
        let (tracer, _queue) = Tracer::new(1.0);
        let message = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"x","_meta":{"traceparent": SAMPLE}}});
        let Some(recording) = tracer.start(&message) else {
            panic!("a sampled caller is traced");
        };
        assert_eq!(
            recording.trace_id().to_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            recording.parent.map(SpanId::to_hex).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let child = SpanId::random();
        assert_eq!(
            recording.traceparent(child),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", child.to_hex())
        );

        let unsampled = json!({"params":{"_meta":{"traceparent":
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}}});
        assert!(tracer.start(&unsampled).is_none());
        // A malformed one is ignored: a trace of the proxy's own.
        let malformed = json!({"params":{"_meta":{"traceparent":"nonsense"}}});
        let own = tracer.start(&malformed).map(|r| (r.parent, r.trace_id()));
        assert!(
            matches!(own, Some((None, id)) if id.to_hex() != "4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[tokio::test]
    async fn sampling_ratio_bounds_new_traces() {
        let (never, _q1) = Tracer::new(0.0);
        let (always, _q2) = Tracer::new(1.0);
        let (half, _q3) = Tracer::new(0.5);
        let message = json!({"params":{}});
        let mut sampled = 0;
        for _ in 0..4_000 {
            assert!(never.start(&message).is_none());
            assert!(always.start(&message).is_some());
            sampled += usize::from(half.start(&message).is_some());
        }
        assert!((1_600..=2_400).contains(&sampled), "{sampled} of 4000");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tracer, _queue) = Tracer::new(1.0);
        let root = || Root {
            name: "ping".into(),
            attributes: Vec::new(),
            error: None,
        };
        for _ in 0..QUEUE + 3 {
            let Some(mut recording) = tracer.start(&json!({})) else {
                panic!("sampled");
            };
            let now = Instant::now();
            recording.push(Span::new("step", SpanKind::Internal, now, now));
            tracer.finish(recording, root());
        }
        // Three recordings of two spans each found the queue full.
        assert_eq!(tracer.counters().dropped.get(), 6);
    }

    #[tokio::test]
    async fn batches_hold_a_requests_worth_of_spans() {
        let (tracer, queue) = Tracer::new(1.0);
        // 300 recordings of 3 spans: 900 spans, two requests.
        for _ in 0..300 {
            let Some(mut recording) = tracer.start(&json!({})) else {
                panic!("sampled");
            };
            let now = Instant::now();
            recording.push(Span::new("a", SpanKind::Internal, now, now));
            recording.push(Span::new("b", SpanKind::Internal, now, now));
            tracer.finish(
                recording,
                Root {
                    name: "ping".into(),
                    attributes: Vec::new(),
                    error: None,
                },
            );
        }
        // Past 512 spans the exporter was told.
        tokio::time::timeout(Duration::from_secs(1), queue.full_enough())
            .await
            .expect("told once the buffer held a request's worth");
        let mut first = queue.take();
        assert_eq!(first.len(), 300);
        let rest = split_batch(&mut first);
        assert_eq!((first.len(), rest.len()), (170, 130));
        assert!(queue.take().is_empty());
    }

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
