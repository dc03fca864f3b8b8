//! The exporter task: it takes the finished traces from the buffer every
//! second, or when a request's worth waits, and posts them to an OTLP/HTTP
//! collector as JSON (tried again on a connection error, 429 or 5xx).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::TraceError;
use super::otlp::{attribute, encode};
use super::span::Attr;
use super::tracer::{Counters, Finished, MOST_SPANS_PER_REQUEST, Queue};
use crate::config::{TracesConfig, resolve_headers};
use crate::egress::{self, EgressError, HttpClient, Timeouts, Trust};

/// How often an exporter-less [`Export::discard`] empties the buffer.
const DISCARD_EVERY: Duration = Duration::from_millis(100);
/// The exporter sends at least this often while spans wait (and at once
/// when [`MOST_SPANS_PER_REQUEST`] do).
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Tries per batch when the collector is unreachable or asks to retry.
const TRIES: u32 = 3;
/// How long the last export may take when the proxy stops.
const FINAL_EXPORT: Duration = Duration::from_secs(5);

/// Sends batches of finished traces to an OTLP/HTTP collector as JSON.
#[derive(Debug)]
pub struct Exporter {
    client: HttpClient,
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
        let endpoint = reqwest::Url::parse(&config.endpoint)
            .map_err(|err| TraceError::Exporter(format!("`{}`: {err}", config.endpoint)))?;
        let mut secrets = Vec::new();
        for (name, reference) in &config.secrets {
            let value = reference.resolve().map_err(TraceError::Exporter)?;
            secrets.push((name.clone(), value));
        }
        let headers = resolve_headers(&config.headers, &secrets).map_err(TraceError::Exporter)?;
        // The operator wrote the collector's URL.
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            total: Some(Duration::from_secs(10)),
        };
        let client = HttpClient::new(&config.egress, Trust::Written, &[], timeouts)
            .map_err(|err| TraceError::Exporter(err.to_string()))?;
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
            let sent = match self
                .client
                .request(reqwest::Method::POST, self.endpoint.clone())
            {
                Ok(request) => {
                    let request = request
                        .headers(self.headers.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    egress::send(request).await
                }
                Err(err) => Err(err),
            };
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
                // Neither a redirect nor a refused address is tried again.
                Err(err @ (EgressError::Redirect { .. } | EgressError::Refused { .. })) => {
                    problem = err.to_string();
                    false
                }
                Err(err) => {
                    problem = format!("cannot reach the collector: {err}");
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::super::span::{Root, Span, SpanKind};
    use super::super::tracer::Tracer;
    use super::*;

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
}
