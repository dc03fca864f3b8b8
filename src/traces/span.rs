//! What the hot path builds: an exchange's [`Recording`] and the child
//! [`Span`]s pushed onto it, with their names and attributes (shared or
//! static text where it can be, no copy per call).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::context::{SpanId, TraceId, TraceParent};

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
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    /// The caller's span, from its `traceparent`.
    pub(super) parent: Option<SpanId>,
    started: Instant,
    pub(super) start_unix_ns: u64,
    pub(super) spans: Vec<Span>,
}

impl Recording {
    /// The recording of an exchange that starts now, in `trace_id`, a child
    /// of the caller's span `parent` if it has one.
    pub(super) fn new(trace_id: TraceId, parent: Option<SpanId>) -> Self {
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Self {
            trace_id,
            span_id: SpanId::random(),
            parent,
            started: Instant::now(),
            start_unix_ns,
            spans: Vec::with_capacity(16),
        }
    }

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

    pub(super) fn unix_ns(&self, at: Instant) -> u64 {
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
