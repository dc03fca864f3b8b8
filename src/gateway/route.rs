//! A client's request, end to end: routed, decided by the chain, relayed to its
//! server or answered here, and recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::chain::{Direction, Exchange, Outcome, Phase};
use crate::protocol::{self, IdKey, code};
use crate::traces::{Span, SpanId, SpanKind};
use crate::upstream::Origin;

use super::record::Arguments;
use super::session::{MAX_SUBSCRIBED_URI_BYTES, MAX_SUBSCRIPTIONS};
use super::{Catalog, Gateway, Session, lock};

/// Where a client request goes.
pub(super) enum Route {
    /// Answered by the proxy itself.
    Local,
    /// Sent to a server, with the request's name rewritten to the server's own.
    Server {
        server: usize,
        rename: Option<Rename>,
    },
}

#[derive(Clone, Copy)]
pub(super) enum RouteKind {
    Local,
    Server,
}

pub(super) enum Rename {
    /// `params.name` (tools/call, prompts/get).
    Name(String),
    /// `params.ref.name` (completion/complete for a prompt).
    RefName(String),
}

/// How a request ended, for its audit record.
pub(super) struct Handled {
    /// The reply to send (`None`: the client cancelled the request).
    pub(super) reply: Option<Value>,
    pub(super) exchange: Exchange,
    pub(super) outcome: Outcome,
    /// Time spent waiting on the server, if the request reached one.
    pub(super) upstream: Option<Duration>,
    /// The arguments as the chain left them, as the audit keeps them.
    pub(super) arguments: Arguments,
}

/// What became of a request sent on to its server.
enum Relayed {
    /// The server's answer (an error response included) and how long it
    /// took.
    Answered((Value, Outcome), Duration),
    /// Refused before it was sent (the server's limit on requests in
    /// flight).
    Refused(crate::chain::Refusal),
    /// The client cancelled it while it was at the server.
    Cancelled(Duration),
}

/// Puts the W3C `traceparent` of the proxy's upstream span into a request's
/// `params._meta`, replacing the caller's (which is its parent). A request
/// whose `params` is not an object is left as it is.
pub(super) fn propagate(outgoing: &mut Value, traceparent: String) {
    let Some(params) = outgoing.get_mut("params").and_then(Value::as_object_mut) else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("traceparent".into(), Value::from(traceparent));
    }
}

/// The id to answer a message with: its own if it has a usable one.
pub(super) fn reply_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

impl Gateway {
    /// A client request, end to end: decided, relayed, and recorded in the
    /// audit log before the reply is returned. While the log cannot be
    /// written, calls are refused (fail closed).
    pub(super) async fn handle_request(
        self: &Arc<Self>,
        session: &Arc<Session>,
        message: Value,
    ) -> Option<Value> {
        let started = std::time::Instant::now();
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let mut handled = match &self.audit {
            Some(audit) if audit.is_failing() => {
                let method = protocol::method(&message).unwrap_or_default().to_owned();
                let exchange = self.exchange(
                    session,
                    message,
                    Direction::ClientToServer,
                    Phase::Request,
                    &method,
                );
                let reason = "the audit log cannot be written: calls are refused until it can";
                Handled {
                    reply: Some(protocol::error(
                        id.clone(),
                        code::AUDIT_UNAVAILABLE,
                        reason,
                        None,
                    )),
                    exchange,
                    outcome: Outcome::Failed {
                        reason: reason.into(),
                    },
                    upstream: None,
                    // Never past the chain: its arguments are not looked at.
                    arguments: Arguments::default(),
                }
            }
            _ => self.decide_and_relay(session, message).await,
        };
        let recorded = self
            .record(
                &mut handled.exchange,
                &handled.outcome,
                handled.reply.as_ref(),
                handled.upstream,
                &handled.arguments,
                started,
            )
            .await;
        if recorded {
            return handled.reply;
        }
        handled.reply.map(|_| {
            protocol::error(
                id,
                code::AUDIT_UNAVAILABLE,
                "the call is refused: the audit log cannot record it",
                None,
            )
        })
    }

    pub(super) async fn decide_and_relay(
        self: &Arc<Self>,
        session: &Arc<Session>,
        message: Value,
    ) -> Handled {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let mut exchange = self.exchange(
            session,
            message,
            Direction::ClientToServer,
            Phase::Request,
            &method,
        );
        // Routing first, so that interceptors see the target server, name
        // and listed definition.
        let route = match self.route_exchange(session, &method, &mut exchange) {
            Ok(route) => route,
            Err((code, reason)) => {
                // Still give the chain its say (`limits` names a broken
                // envelope more precisely than routing can).
                let ran = self.chain.run(&mut exchange);
                let arguments = self.arguments_of(&exchange.message);
                return match ran {
                    Err(refusal) => {
                        let reply = refusal.to_response(id);
                        self.done(exchange, arguments, Some(reply), refusal.outcome(), None)
                    }
                    Ok(()) => {
                        let reply = protocol::error(id, code, &reason, None);
                        let outcome = Outcome::Failed { reason };
                        self.done(exchange, arguments, Some(reply), outcome, None)
                    }
                };
            }
        };

        let ran = self.chain.run(&mut exchange);
        // The arguments' hash is taken once the request chain has run: of the
        // arguments as forwarded (after redaction), never of a secret.
        let arguments = self.arguments_of(&exchange.message);
        if let Err(refusal) = ran {
            let reply = refusal.to_response(id);
            return self.done(exchange, arguments, Some(reply), refusal.outcome(), None);
        }

        let route_kind = match route {
            Route::Local => RouteKind::Local,
            Route::Server { .. } => RouteKind::Server,
        };
        let mut upstream = None;
        // The catalog a list was answered from (interceptors judge the
        // items against that one, not a newer one).
        let mut listed_from = None;
        let reply = match route {
            Route::Local => self
                .answer_locally(session, &method, &exchange.message, &mut listed_from)
                .await
                .map(|reply| (reply, Outcome::Delivered)),
            Route::Server { server, rename } => {
                match self
                    .relay(session, server, rename, &id, &mut exchange)
                    .await
                {
                    Relayed::Answered(reply, waited) => {
                        upstream = Some(waited);
                        Ok(reply)
                    }
                    Relayed::Refused(refusal) => {
                        let reply = refusal.to_response(id);
                        return self.done(
                            exchange,
                            arguments,
                            Some(reply),
                            refusal.outcome(),
                            None,
                        );
                    }
                    Relayed::Cancelled(waited) => {
                        let outcome = Outcome::Failed {
                            reason: "cancelled by the client".into(),
                        };
                        return self.done(exchange, arguments, None, outcome, Some(waited));
                    }
                }
            }
        };
        let (reply, outcome) = match reply {
            Ok(answered) => answered,
            Err((code, reason)) => (
                protocol::error(id.clone(), code, &reason, None),
                Outcome::Failed { reason },
            ),
        };

        if method == "resources/subscribe" || method == "resources/unsubscribe" {
            self.track_subscription(session, &method, &exchange.context.target, &reply);
        }

        exchange.message = reply;
        exchange.phase = Phase::Response;
        if matches!(route_kind, RouteKind::Local) {
            // A list answered from the catalog: the very catalog it came
            // from (lists may have been read meanwhile).
            exchange.context.directory = Some(listed_from.unwrap_or_else(|| self.catalog()));
        }
        if let Err(refusal) = self.chain.run(&mut exchange) {
            let reply = refusal.to_response(id);
            return self.done(
                exchange,
                arguments,
                Some(reply),
                refusal.outcome(),
                upstream,
            );
        }
        let reply = exchange.message.clone();
        self.done(exchange, arguments, Some(reply), outcome, upstream)
    }

    /// The end of every request: the chain's `finish`, then what the audit
    /// record needs.
    fn done(
        &self,
        exchange: Exchange,
        arguments: Arguments,
        reply: Option<Value>,
        outcome: Outcome,
        upstream: Option<Duration>,
    ) -> Handled {
        self.chain.finish(&exchange, &outcome);
        Handled {
            reply,
            exchange,
            outcome,
            upstream,
            arguments,
        }
    }

    /// Routes the exchange's request and tells the chain what routing found:
    /// the server, the target, the listed definition and the catalog.
    fn route_exchange(
        &self,
        session: &Session,
        method: &str,
        exchange: &mut Exchange,
    ) -> Result<Route, (i64, String)> {
        let catalog = self.catalog();
        let (route, target) = self.route(&catalog, session, method, &exchange.message)?;
        if let Route::Server { server, .. } = &route {
            exchange.context.server = self.names.get(*server).cloned();
        }
        let name = protocol::param_str(&exchange.message, "name");
        exchange.context.definition = match method {
            "tools/call" => name.and_then(|name| catalog.tool_definition(name)),
            "prompts/get" => name.and_then(|name| catalog.prompt_definition(name)),
            _ => None,
        };
        exchange.context.target = target;
        exchange.context.directory = Some(catalog);
        Ok(route)
    }

    /// Sends a decided request to its server (renamed to the server's own
    /// name, within the server's limit on requests in flight, traced as a
    /// child span) and waits for its answer.
    async fn relay(
        &self,
        session: &Arc<Session>,
        server: usize,
        rename: Option<Rename>,
        id: &Value,
        exchange: &mut Exchange,
    ) -> Relayed {
        let mut outgoing = std::mem::take(&mut exchange.message);
        match rename {
            Some(Rename::Name(name)) => outgoing["params"]["name"] = Value::from(name),
            Some(Rename::RefName(name)) => outgoing["params"]["ref"]["name"] = Value::from(name),
            None => {}
        }
        // A place among the server's requests in flight, if it limits them
        // (the wait is bounded by its call timeout).
        let _place = match &self.in_flight[server] {
            None => None,
            Some(limit) => {
                let wait = self.config.servers[server].call_timeout;
                match limit.enter(&self.names[server], wait).await {
                    Ok(permit) => Some(permit),
                    Err(refusal) => {
                        exchange.message = outgoing;
                        return Relayed::Refused(refusal);
                    }
                }
            }
        };
        // The server's work is a child of the upstream span.
        let upstream_span = exchange.trace.as_deref().map(|trace| {
            let span = SpanId::random();
            propagate(&mut outgoing, trace.traceparent(span));
            span
        });
        let sent = std::time::Instant::now();
        let forwarded = self.forward(session, server, id, outgoing).await;
        let ended = std::time::Instant::now();
        if let (Some(trace), Some(span)) = (exchange.trace.as_deref_mut(), upstream_span) {
            let name = format!("upstream {}", self.names[server]);
            let mut call = Span::with_id(span, name, SpanKind::Client, sent, ended);
            call.attributes
                .push(("portcullis.server", self.names[server].clone().into()));
            if let Some((_, Outcome::Failed { reason } | Outcome::Denied { reason, .. })) =
                &forwarded
            {
                call.error = Some(reason.clone());
            }
            trace.push(call);
        }
        match forwarded {
            Some(reply) => Relayed::Answered(reply, ended - sent),
            None => Relayed::Cancelled(ended - sent),
        }
    }

    /// Decides where a request goes, and its target (unprefixed tool or prompt
    /// name, or resource URI). Errors are (code, client-safe reason).
    pub(super) fn route(
        &self,
        catalog: &Catalog,
        session: &Session,
        method: &str,
        message: &Value,
    ) -> Result<(Route, Option<String>), (i64, String)> {
        let invalid = |reason: String| (code::INVALID_PARAMS, reason);
        if method != "initialize" && method != "ping" && !session.is_initialized() {
            return Err((
                code::INVALID_REQUEST,
                "the session is not initialized: send `initialize` first".into(),
            ));
        }
        match method {
            "initialize"
            | "ping"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "logging/setLevel" => Ok((Route::Local, None)),
            "tools/call" | "prompts/get" => {
                let name = protocol::param_str(message, "name")
                    .ok_or_else(|| invalid("`params.name` must be a string".into()))?;
                let found = if method == "tools/call" {
                    catalog.tool(name)
                } else {
                    catalog.prompt(name)
                };
                match found {
                    Some((server, original)) => Ok((
                        Route::Server {
                            server,
                            rename: Some(Rename::Name(original.to_owned())),
                        },
                        Some(original.to_owned()),
                    )),
                    None => {
                        let what = if method == "tools/call" {
                            "tool"
                        } else {
                            "prompt"
                        };
                        Err(self.not_found(what, name))
                    }
                }
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = protocol::param_str(message, "uri")
                    .ok_or_else(|| invalid("`params.uri` must be a string".into()))?;
                if method == "resources/subscribe" {
                    self.may_subscribe(session, uri)?;
                }
                match catalog.resource_owner(uri) {
                    Some(server) => Ok((
                        Route::Server {
                            server,
                            rename: None,
                        },
                        Some(uri.to_owned()),
                    )),
                    None => Err((-32002, format!("resource not found: `{uri}`"))),
                }
            }
            "completion/complete" => {
                let reference = protocol::params(message)
                    .and_then(|p| p.get("ref"))
                    .ok_or_else(|| invalid("`params.ref` is required".into()))?;
                match reference.get("type").and_then(Value::as_str) {
                    Some("ref/prompt") => {
                        let name = reference
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("`params.ref.name` must be a string".into()))?;
                        let (server, original) = catalog
                            .prompt(name)
                            .map(|(s, o)| (s, o.to_owned()))
                            .ok_or_else(|| self.not_found("prompt", name))?;
                        Ok((
                            Route::Server {
                                server,
                                rename: Some(Rename::RefName(original.clone())),
                            },
                            Some(original),
                        ))
                    }
                    Some("ref/resource") => {
                        let uri = reference
                            .get("uri")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("`params.ref.uri` must be a string".into()))?;
                        let server = catalog
                            .resource_owner(uri)
                            .ok_or_else(|| (-32002, format!("resource not found: `{uri}`")))?;
                        Ok((
                            Route::Server {
                                server,
                                rename: None,
                            },
                            Some(uri.to_owned()),
                        ))
                    }
                    _ => Err(invalid(
                        "`params.ref.type` must be `ref/prompt` or `ref/resource`".into(),
                    )),
                }
            }
            _ => Err((
                code::METHOD_NOT_FOUND,
                format!("method not found: `{method}`"),
            )),
        }
    }

    /// A session subscribed to [`MAX_SUBSCRIPTIONS`] resources may
    /// subscribe again only to one of those; a URI longer than
    /// [`MAX_SUBSCRIBED_URI_BYTES`] is not kept at all.
    fn may_subscribe(&self, session: &Session, uri: &str) -> Result<(), (i64, String)> {
        if uri.len() > MAX_SUBSCRIBED_URI_BYTES {
            return Err((
                code::INVALID_PARAMS,
                format!(
                    "a URI to subscribe to may be at most {MAX_SUBSCRIBED_URI_BYTES} bytes long"
                ),
            ));
        }
        if session.subscribed.load(Ordering::Relaxed) < MAX_SUBSCRIPTIONS
            || lock(&self.subscriptions)
                .get(uri)
                .is_some_and(|subscribers| subscribers.contains(&session.key))
        {
            return Ok(());
        }
        Err((
            code::RATE_LIMITED,
            format!(
                "this session is subscribed to {MAX_SUBSCRIPTIONS} resources; unsubscribe from some first"
            ),
        ))
    }

    /// An unknown tool or prompt; if its server is down, or up again but its
    /// lists not read yet, say so instead.
    pub(super) fn not_found(&self, what: &str, name: &str) -> (i64, String) {
        let separator = &self.config.proxy.namespace_separator;
        if let Some((server, _)) = name.split_once(separator.as_str())
            && let Some(index) = self.index_of(server)
            && self.catalog().server_lists(index).is_none()
        {
            return (
                code::UPSTREAM_UNAVAILABLE,
                format!("server `{server}` is not available right now"),
            );
        }
        (code::INVALID_PARAMS, format!("unknown {what} `{name}`"))
    }

    /// Sends a request to a server and returns its reply with the client's id
    /// restored; `None` when the client cancelled it.
    pub(super) async fn forward(
        &self,
        session: &Arc<Session>,
        server: usize,
        client_id: &Value,
        outgoing: Value,
    ) -> Option<(Value, Outcome)> {
        let failed = |code: i64, reason: String| {
            let reply = protocol::error(client_id.clone(), code, &reason, None);
            Some((reply, Outcome::Failed { reason }))
        };
        let Some(upstream) = self.upstream_for(server, &session.client.name) else {
            return failed(
                code::UPSTREAM_UNAVAILABLE,
                "the server is not available: the proxy is shutting down".into(),
            );
        };
        let key = IdKey::from_value(client_id);
        let cancel = CancellationToken::new();
        if let Some(key) = &key
            && !session.begin_call(key.clone(), cancel.clone())
        {
            return failed(
                code::INVALID_REQUEST,
                "a request with this id is already in flight".into(),
            );
        }
        // A stopped (lazy or idle) server starts here: the cold start.
        if let Err(err) = upstream
            .ensure_running(self.config.proxy.startup_timeout)
            .await
        {
            if let Some(key) = &key {
                session.end_call(key);
            }
            return failed(err.code(), err.to_string());
        }
        let origin = Origin {
            session: session.key,
            request_id: client_id.clone(),
        };
        let call = upstream.begin(outgoing, Some(origin));
        // What the server sends during the call is the call's: it goes to
        // this session alone, on the call's stream.
        let follow = |message: Value| {
            self.notify(
                session,
                Some(server),
                message,
                Some(client_id),
                Some(client_id.clone()),
            );
        };
        let result = tokio::select! {
            result = call.send_and_follow(upstream.config().call_timeout, follow) => Some(result),
            () = cancel.cancelled() => None,
        };
        if let Some(key) = &key {
            session.end_call(key);
        }
        let mut reply = match result? {
            Ok(reply) => reply,
            // The reply was too large to relay: refused by `limits`.
            Err(err @ crate::upstream::UpstreamError::Refused { .. }) => {
                let reason = err.to_string();
                let data = json!({ "interceptor": "limits" });
                let reply = protocol::error(client_id.clone(), err.code(), &reason, Some(data));
                let outcome = Outcome::Denied {
                    interceptor: "limits".into(),
                    reason,
                };
                return Some((reply, outcome));
            }
            Err(err) => return failed(err.code(), err.to_string()),
        };
        reply["id"] = client_id.clone();
        Some((reply, Outcome::Delivered))
    }
}
