//! The pipeline: a client's request through its steps in order
//! ([`Gateway::handle_request`]), and an exchange from its start to its
//! end. Ending one is the only path to the chain's `finish`, the audit
//! record, the metrics and the trace: no path of the gateway completes any
//! of them by hand, so none can skip one, and an exchange dropped before it
//! ended (its task was cancelled) still gets every one of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::chain::{Context, Direction, Exchange, Outcome, Phase};
use crate::protocol::{self, IdKey, Kind, Method};

use super::failure::Failure;
use super::record::{Arguments, Committed, record_of};
use super::relay::Relayed;
use super::route::{Ended, Route, failed, reply_id};
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
    /// Handles one message from a client. Returns the reply for requests
    /// (`None` when the client cancelled the request, which gets no reply).
    pub async fn handle(self: &Arc<Self>, session: &Arc<Session>, message: Value) -> Option<Value> {
        match protocol::classify(&message) {
            Some(Kind::Request) if session.revision.in_rounds() => {
                self.rounds.request(self, session, message).await
            }
            Some(Kind::Request) => self.handle_request(session, message).await,
            Some(Kind::Notification) => {
                self.handle_notification(session, message).await;
                None
            }
            Some(Kind::Response | Kind::ErrorResponse) => {
                if !session.client_answered(message) {
                    tracing::debug!(session = %session.id, "answer to a request that is no longer pending");
                }
                None
            }
            None => {
                // Not a JSON-RPC message at all: the chain's `limits` refuses
                // it with the precise reason.
                let id = reply_id(&message);
                let mut run = self.begin(
                    session,
                    message,
                    Direction::ClientToServer,
                    Phase::Request,
                    &protocol::Method::parse(""),
                );
                let failure = match self.chain.run(&mut run.exchange) {
                    Err(refusal) => Failure::from(refusal),
                    Ok(()) => Failure::NotJsonRpc,
                };
                let reply = failure.to_response(id);
                run.end(&failure.outcome(), Some(&reply)).await;
                Some(reply)
            }
        }
    }

    /// A client's request through the pipeline, in the order of its steps.
    /// The reply (`None`: the client cancelled the request, or ended its
    /// listen stream) goes to the client only once the exchange's record is
    /// committed. Each step says why it stands where it stands.
    pub(super) async fn handle_request(
        self: &Arc<Self>,
        session: &Arc<Session>,
        message: Value,
    ) -> Option<Value> {
        self.handle_request_in(session, message, None).await
    }

    /// [`Gateway::handle_request`], for a call a code-mode script made
    /// (`script`: its id): the same pipeline, as the same client, its
    /// record naming the script's; a refusal is always its JSON-RPC error
    /// (the script gets it as an exception).
    pub(super) async fn handle_request_in(
        self: &Arc<Self>,
        session: &Arc<Session>,
        message: Value,
        script: Option<Arc<str>>,
    ) -> Option<Value> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        // 1. Begin. The method is parsed once (everything past here matches
        //    on the `Method`), and the exchange starts: its context, its
        //    trace, its clock. From here, only `end` (step 10) finishes it.
        let method = Method::named_in(&message);
        let mut run = self.begin(
            session,
            message,
            Direction::ClientToServer,
            Phase::Request,
            &method,
        );
        run.exchange.context.script = script;
        let (reply, outcome): Ended = async {
            // 2. The audit log, before anything looks at the request: while
            //    it cannot be written, every call is refused (fail closed),
            //    and the chain never sees the arguments.
            if self.records.audit().is_some_and(|audit| audit.is_failing()) {
                return failed(&id, Failure::AuditUnavailable);
            }
            // 3. Routing, before the chain: interceptors decide on the
            //    target server, the name and the listed definition.
            let routed = self.route_exchange(session, &method, &mut run.exchange);
            // 4. The request chain, in config order (authz, limits, pinning,
            //    schema, redact, plugins...). Its refusal outranks routing's:
            //    `limits` names a broken envelope more precisely.
            // 5. Then, for a routed request the chain passed, admission to
            //    what is shared (the fleet's quotas, places): after the
            //    chain, so that a refused request spends none.
            let ran = match self.chain.decide(&mut run.exchange, routed.is_ok()).await {
                // A refusal a policy lets the person override: asked.
                Err(refusal) if routed.is_ok() => {
                    self.ask_instead(session, &mut run.exchange, refusal).await
                }
                ran => ran,
            };
            // 6. The arguments' hash, of the arguments as they go out (after
            //    redaction), never of a secret.
            run.arguments = self.records.arguments_of(&run.exchange.message);
            let route = match (routed, ran) {
                (_, Err(refusal)) => {
                    let context = &run.exchange.context;
                    let (reply, outcome) = self.refused(session, &id, context, refusal.into());
                    return (Some(reply), outcome);
                }
                (Err(failure), Ok(())) => return failed(&id, failure),
                (Ok(route), Ok(())) => route,
            };
            // The catalog a list was answered from (interceptors judge its
            // items against that one, not a newer one).
            let mut listed_from = None;
            // 7. Relay to the server (the answer shaped for this client: a
            //    task taken on under the proxy's id, the revision's framing),
            //    or answer here: the only step that waits on the other side.
            let answered = match self
                .answer(session, &mut run, route, &id, &mut listed_from)
                .await
            {
                Ok(answered) => answered,
                Err(ended) => return ended,
            };
            let (reply, outcome) = match answered {
                Ok(reply) => (reply, Outcome::Delivered),
                Err(failure) => {
                    // A user who would be asked to sign in: if Cedar lets them.
                    let failure = self.may_sign_in(session, &mut run.exchange, failure);
                    self.refused(session, &id, &run.exchange.context, failure)
                }
            };
            // 8. What the answer changes in the proxy's state: a subscription
            //    kept or given up, with what is held at its server.
            if matches!(
                method,
                Method::ResourcesSubscribe | Method::ResourcesUnsubscribe
            ) {
                let target = &run.exchange.context.target;
                self.subscriptions
                    .answered(self, session, &method, target, &reply);
            }
            // 9. The response chain, in reverse order: it sees the reply as
            //    the client would get it. A task the client does not get is
            //    not left running.
            let exchange = &mut run.exchange;
            exchange.message = reply;
            exchange.phase = Phase::Response;
            if let Some(catalog) = listed_from {
                exchange.context.directory = Some(catalog);
            }
            if let Err(refusal) = self.chain.run(exchange) {
                self.client_tasks
                    .task_not_given(self, session, &exchange.message);
                let (reply, outcome) =
                    self.refused(session, &id, &exchange.context, refusal.into());
                return (Some(reply), outcome);
            }
            (Some(exchange.message.clone()), outcome)
        }
        .await;
        // 10. The record, committed before the reply leaves: a reply whose
        //     record the audit log refused is not given (fail closed).
        //     What a delivered answer brings joins the client's flow before
        //     the client has it, so its next call is decided knowing it.
        //     (Answered by its server: the proxy's own answers carry none.)
        let brought = (run.upstream.is_some() && outcome == Outcome::Delivered && reply.is_some())
            .then(|| self.flows.brought(&run.exchange))
            .flatten();
        let Some(committed) = run.end_committed(&outcome, reply.as_ref()).await else {
            return reply.map(|_| Failure::NotRecorded.to_response(id));
        };
        if let Some(brought) = brought {
            self.flows.delivered(session, &brought, committed.seq);
        }
        reply
    }

    /// A client's request of `method` that failed: refused by an
    /// interceptor, a `tools/call`'s as a tool result with `isError` when
    /// the config says so (`[proxy] tool_refusals`, what agent frameworks
    /// hand their model); anything else, any other method's, and the CLI's
    /// (`tools call` says what was refused itself), as its JSON-RPC error.
    /// Recorded as refused either way. A script's call (`context.script`)
    /// gets its JSON-RPC error: the script is told as an exception.
    fn refused(
        &self,
        session: &Session,
        id: &Value,
        context: &Context,
        failure: Failure,
    ) -> (Value, Outcome) {
        let call = context.method == Method::ToolsCall
            && session.transport != crate::chain::Transport::Cli
            && context.script.is_none();
        // A user who must sign in first: asked to open the link the way
        // the client can act on (URL elicitation where it declares it,
        // else a tool result its model reads), whatever `tool_refusals`.
        if call && failure.is_sign_in() {
            let url_mode = session.client_capabilities(|declared| {
                declared
                    .get("elicitation")
                    .and_then(|elicitation| elicitation.get("url"))
                    .is_some_and(|url| !url.is_null())
            });
            let reply = if url_mode {
                // Told when the person has signed in at the link.
                if let (Some(elicitation), Some(sign_ins)) =
                    (failure.elicitation_id(), self.servers.sign_ins())
                {
                    self.elicitations
                        .told(elicitation, session.key, sign_ins.link_life());
                }
                failure.to_url_elicitation(id.clone())
            } else {
                failure.to_sign_in_result(id.clone())
            };
            return (reply, failure.outcome());
        }
        let as_result =
            call && self.config.proxy.tool_refusals == crate::config::ToolRefusals::Result;
        let reply = as_result
            .then(|| failure.to_tool_result(id.clone()))
            .flatten()
            .unwrap_or_else(|| failure.to_response(id.clone()));
        (reply, failure.outcome())
    }

    /// Step 7 of [`Gateway::handle_request`]: the request relayed to its
    /// server, or answered here. `Err`: the exchange ends now, as it says
    /// (the client cancelled it, or ended its listen stream; the server's
    /// limit refused it).
    async fn answer(
        self: &Arc<Self>,
        session: &Arc<Session>,
        run: &mut ExchangeRun<'_>,
        route: Route,
        id: &Value,
        listed_from: &mut Option<Arc<super::Catalog>>,
    ) -> Result<Result<Value, Failure>, Ended> {
        Ok(match route {
            Route::Local => {
                let exchange = &run.exchange;
                let method = &exchange.context.method;
                self.answer_locally(session, method, &exchange.message, listed_from)
                    .await
            }
            Route::Code => match self.run_script(session, &mut run.exchange).await {
                // Cancelled by the client: no reply, as for any call.
                Err(Failure::Cancelled) => return Err((None, Failure::Cancelled.outcome())),
                answered => answered,
            },
            Route::Discovery(tool) => match &self.discovery {
                Some(discovery) => discovery.call(self, session, tool, &mut run.exchange).await,
                None => Err(Failure::MethodNotFound(
                    run.exchange.context.method.to_string(),
                )),
            },
            Route::Listen => {
                let message = &run.exchange.message;
                match self.listens.listen(self, session, message, id).await {
                    Ok(Some(reply)) => Ok(reply),
                    // The client ended it, as a listen stream is ended:
                    // nothing to answer, and nothing went wrong.
                    Ok(None) => return Err((None, Outcome::Delivered)),
                    Err(failure) => Err(failure),
                }
            }
            Route::Server { server, rename } => {
                let exchange = &mut run.exchange;
                match self.relay(session, server, rename, id, exchange).await {
                    Relayed::Answered(answered, waited) => {
                        run.upstream = Some(waited);
                        // Answered by the server: its connection sent the token.
                        let sent = answered.is_ok();
                        if let Some(credential) = self.servers().credential(server).filter(|_| sent)
                        {
                            run.exchange.annotations.push(crate::chain::Annotation {
                                interceptor: Arc::from("upstream"),
                                key: "credential".into(),
                                value: credential.into(),
                            });
                        }
                        answered
                    }
                    Relayed::Refused(refusal) => {
                        let context = &run.exchange.context;
                        let (reply, outcome) = self.refused(session, id, context, refusal.into());
                        return Err((Some(reply), outcome));
                    }
                    Relayed::Cancelled(waited) => {
                        run.upstream = Some(waited);
                        return Err((None, Failure::Cancelled.outcome()));
                    }
                }
            }
        })
    }

    /// A server's request to a client through the pipeline, in the order of
    /// its steps (`message`, with the server's id),
    /// put to `session`, the session of the call it came during
    /// (`related`): decided (the capability the client declared, the
    /// chain: Cedar, redaction), asked (on the session; for a 2026-07-28
    /// client, as a round of its call), its answer through the chain and
    /// recorded. The answer message for the server, under its id.
    pub(super) async fn put_to_client(
        self: &Arc<Self>,
        (index, instance): (usize, Option<Arc<str>>),
        upstream: &crate::upstream::Upstream,
        session: &Arc<Session>,
        message: Value,
        related: Option<&Value>,
    ) -> Value {
        let server_id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = Method::named_in(&message);
        let answer = |failure: Failure| failure.to_response(server_id.clone());
        let capability = method.client_capability();
        // 1. Whether the client can be asked at all, before anything is
        //    recorded: a 2026-07-28 client is asked in its call's rounds, if
        //    the call can take them, and only what a round can carry (the
        //    requests that need a capability; a server's `ping` never gets
        //    here: the upstream answers it); any client, only what it
        //    declared the capability for.
        if session.revision.in_rounds() {
            let refusal = if !session.in_rounds.load(std::sync::atomic::Ordering::Relaxed) {
                Some(Failure::NoBackChannel)
            } else if capability.is_none() {
                Some(Failure::MethodNotFound(
                    protocol::cut(method.as_str(), 64).to_owned(),
                ))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                return answer(refusal);
            }
        }
        if let Some(capability) = capability
            && !session.has_client_capability(capability)
        {
            return answer(Failure::ClientLacks(capability));
        }
        // 2. Begin: the exchange, recorded as the server's request.
        let mut run = self.begin_asking(session, message, &method, Some(upstream.name().clone()));
        // The client's request it was asked during, if it is one of this
        // server's still in flight (an id ended and used again for another
        // server's call is not).
        run.exchange.context.asked_during = related
            .and_then(IdKey::from_value)
            .and_then(|key| session.call_of(&key))
            .filter(|call| *call.server == **upstream.name());
        let started = Instant::now();
        // 3. The chain on the server's request (authz: may this server ask
        //    this client; redaction of what it asks).
        if let Err(refusal) = self.chain.run(&mut run.exchange) {
            let refusal = Failure::from(refusal);
            let answer = answer(refusal.clone());
            // Recorded before the server gets the refusal; if the record
            // cannot be written, the refusal stands.
            run.end(&refusal.outcome(), Some(&answer)).await;
            return answer;
        }
        // 4. Ask: on the session, or in the call's next round; the only
        //    step that waits on the client. A sampling request's words reach
        //    the client's model: they join its flow first.
        self.flows.asked(session, &method, upstream.name());
        let timeout = upstream.config().call_timeout;
        let answer_message = if session.revision.in_rounds() {
            self.rounds
                .ask_in_round(session, &server_id, &run.exchange.message, timeout)
                .await
        } else {
            self.ask_client(
                session,
                (index, instance),
                &server_id,
                &run.exchange.message,
                related,
                timeout,
            )
            .await
        };
        // 5. The chain on the client's answer (authz: the answer goes to the
        //    tool of the call it was asked during, decided with the flow as
        //    it stands now; redaction of what the client gives the server).
        let exchange = &mut run.exchange;
        exchange.context.flow = self.flows.of(session);
        exchange.message = answer_message;
        exchange.phase = Phase::Response;
        let outcome = match self.chain.run(exchange) {
            Ok(()) => Outcome::Delivered,
            Err(refusal) => {
                let refusal = Failure::from(refusal);
                exchange.message = answer(refusal.clone());
                refusal.outcome()
            }
        };
        // 6. The record, before the server gets the answer: if it cannot be
        //    written, the server gets a refusal instead (fail closed).
        run.upstream = Some(started.elapsed());
        let answer_message = std::mem::take(&mut run.exchange.message);
        let recorded = run.end(&outcome, Some(&answer_message)).await;
        if recorded {
            answer_message
        } else {
            answer(Failure::RequestNotRecorded)
        }
    }

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
            flow: self.flows.of(session),
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
    pub(super) async fn end(self, outcome: &Outcome, reply: Option<&Value>) -> bool {
        self.end_committed(outcome, reply).await.is_some()
    }

    /// [`ExchangeRun::end`], with the record's number; `None` when the
    /// audit log cannot take the record.
    async fn end_committed(
        mut self,
        outcome: &Outcome,
        reply: Option<&Value>,
    ) -> Option<Committed> {
        self.ended = true;
        let gateway = self.gateway;
        gateway.chain.finish(&self.exchange, outcome);
        if !self.recorded {
            gateway
                .records
                .finish_trace(&mut self.exchange, outcome, None);
            return Some(Committed { seq: None });
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
