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
//!
//! The files: `context` (ids and `traceparent`), `span` (what the hot path
//! builds), `tracer` (sampling and the buffer), `export` (the exporter
//! task) and `otlp` (the JSON it posts).

mod context;
mod export;
mod otlp;
mod span;
mod tracer;

pub use context::{SpanId, TraceId, TraceParent};
pub use export::{Export, Exporter};
pub use otlp::encode;
pub use span::{Attr, Recording, Root, Span, SpanKind, Text};
pub use tracer::{Counters, Finished, Queue, Tracer};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("traces: {0}")]
    Exporter(String),
}

#[cfg(test)]
mod tests {
    /// The example `traceparent` of the W3C Trace Context specification.
    pub(crate) const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
}
