//! An exchange from its start to its end. Ending one is the only path to
//! the chain's `finish`, the audit record, the metrics and the trace: no
//! path of the gateway completes any of them by hand, so none can skip
//! one, and an exchange dropped before it ended (its task was cancelled)
//! still gets every one of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::chain::{Context, Direction, Exchange, Outcome, Phase};
use crate::protocol::Method;

use super::record::{Arguments, record_of};
use super::telemetry::observe;
use super::{Gateway, Session};

/// What an exchange dropped before its end is recorded as.
const ABANDONED: &str = "abandoned: the proxy stopped handling it before it ended";

#[must_use = "an exchange must be ended: `end` or `end_notification`"]
pub(super) struct ExchangeRun<'g> {
    gateway: &'g Gateway,
    pub(super) exchange: Exchange,
    started: Instant,
    /// Requests (of either direction) have a record of their own;
    /// notifications are accounted for where they are relayed.
    recorded: bool,
    /// The arguments as the request chain left them, as the record keeps
    /// them (set once that chain has run; never of a secret).
    pub(super) arguments: Arguments,
    /// Time spent waiting on the other side, if the exchange reached it.
    pub(super) upstream: Option<Duration>,
    ended: bool,
}

impl Gateway {
    /// Starts the exchange of a request of server `server`'s (sampling,
    /// elicitation, roots) to `session`'s client.
    pub(super) fn begin_asking(
        &self,
        session: &Session,
        message: Value,
        method: &Method,
        server: Option<Arc<str>>,
    ) -> ExchangeRun<'_> {
        let mut run = self.begin(
            session,
            message,
            Direction::ServerToClient,
            Phase::Request,
            method,
        );
        run.exchange.context.server = server;
        run
    }

    /// Starts an exchange of `session`'s: a request of either direction is
    /// traced and recorded when it ends.
    pub(super) fn begin(
        &self,
        session: &Session,
        message: Value,
        direction: Direction,
        phase: Phase,
        method: &Method,
    ) -> ExchangeRun<'_> {
        let request_id = message.get("id").cloned();
        let trace = match (phase, self.records.tracer()) {
            (Phase::Request, Some(tracer)) => tracer.start(&message),
            _ => None,
        };
        let context = Context {
            request_id,
            protocol: session.protocol_version().map(Arc::from),
            ..Context::of(
                session.id.clone(),
                session.client.clone(),
                session.transport,
                method.clone(),
            )
        };
        let mut exchange = Exchange::new(message, direction, phase, context);
        exchange.trace = trace;
        ExchangeRun {
            gateway: self,
            exchange,
            started: Instant::now(),
            recorded: phase == Phase::Request,
            arguments: Arguments::default(),
            upstream: None,
            ended: false,
        }
    }
}

impl ExchangeRun<'_> {
    /// Ends the exchange: the chain's `finish`, then (for a request) its
    /// record is committed, then its metrics and trace. `false` when the
    /// audit log cannot take the record: the caller refuses the exchange.
    pub(super) async fn end(mut self, outcome: &Outcome, reply: Option<&Value>) -> bool {
        self.ended = true;
        let gateway = self.gateway;
        gateway.chain.finish(&self.exchange, outcome);
        if !self.recorded {
            gateway
                .records
                .finish_trace(&mut self.exchange, outcome, None);
            return true;
        }
        gateway
            .records
            .exchange(
                &mut self.exchange,
                outcome,
                reply,
                self.upstream,
                &self.arguments,
                self.started,
            )
            .await
    }

    /// Ends a notification (nothing waits for its record: it has none of
    /// its own).
    pub(super) fn end_notification(mut self, outcome: &Outcome) {
        self.close(outcome);
    }

    /// Ends the exchange without waiting: `finish`, and a request's record
    /// committed in the background.
    fn close(&mut self, outcome: &Outcome) {
        self.ended = true;
        let gateway = self.gateway;
        gateway.chain.finish(&self.exchange, outcome);
        if self.recorded {
            let total = self.started.elapsed();
            if let Some(metrics) = gateway.records.metrics() {
                observe(metrics, &self.exchange, outcome, self.upstream, total);
            }
            let record = record_of(
                &self.exchange,
                outcome,
                None,
                self.upstream,
                &self.arguments,
                total,
            );
            gateway.records.commit_in_background(vec![record]);
        }
        gateway
            .records
            .finish_trace(&mut self.exchange, outcome, None);
    }
}

impl Drop for ExchangeRun<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.close(&Outcome::Failed {
                reason: ABANDONED.into(),
            });
        }
    }
}
