//! The [`Tracer`]: it samples and starts exchanges' recordings, and hands
//! the finished ones to a bounded buffer that the exporter empties.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::Notify;

use super::context::{TraceId, TraceParent};
use super::span::{Recording, Root};
use crate::metrics::{Counter, Exposition};
use crate::protocol::At as _;

/// Finished recordings waiting for the exporter; past this, spans are dropped.
const QUEUE: usize = 4_096;
/// A request's worth of spans: the exporter is told at once when this many
/// wait (and sends at least every second while fewer do).
pub(super) const MOST_SPANS_PER_REQUEST: usize = 512;

/// A recording handed to the exporter.
#[derive(Debug)]
pub struct Finished {
    pub(super) recording: Box<Recording>,
    pub(super) root: Root,
    pub(super) end: Instant,
}

impl Finished {
    pub(super) fn span_count(&self) -> usize {
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

/// The exporter's side of the buffer, for
/// [`Exporter::spawn`](super::Exporter::spawn) (or
/// [`Export::discard`](super::Export::discard)).
#[derive(Debug)]
pub struct Queue(Arc<TracerInner>);

impl Queue {
    /// Everything finished so far.
    pub(super) fn take(&self) -> Vec<Finished> {
        let mut pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.spans = 0;
        std::mem::take(&mut pending.finished)
    }

    /// Until the buffer holds a request's worth of spans.
    pub(super) async fn full_enough(&self) {
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
            .at(&["params", "_meta", "traceparent"])
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
        Some(Box::new(Recording::new(trace_id, parent)))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::context::SpanId;
    use super::super::span::{Span, SpanKind};
    use super::super::tests::SAMPLE;
    use super::*;

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
}
