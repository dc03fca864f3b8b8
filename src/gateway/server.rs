//! What the servers send on their own: the event loop, and server→client
//! requests (sampling, elicitation, roots) relayed to the session that caused
//! them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::protocol::{self, At, IdKey};
use crate::upstream::{BreakerChange, Origin, UpstreamEvent};

use super::failure::Failure;
use super::session::SERVER_REQUESTS_PER_SESSION;
use super::{Gateway, Session, lock};

/// A server's requests (sampling, elicitation, roots) relayed to clients
/// at once; each waits at most the server's call timeout for its client.
pub(super) const SERVER_REQUESTS: usize = 256;
/// A server's requests being refused at once, past [`SERVER_REQUESTS`].
const SERVER_REFUSALS: usize = 16;

/// What the gateway keeps per server.
pub(super) struct PerServer {
    /// Serializes catalog refreshes so two do not interleave.
    pub(super) refreshing: tokio::sync::Mutex<()>,
    /// A refresh waits to start (later `list_changed` are folded into it).
    pub(super) refresh_waiting: AtomicBool,
    /// Places for the server's requests being relayed to clients.
    requests: Arc<Semaphore>,
    /// Places for refusing its requests past those.
    refusals: Arc<Semaphore>,
    /// What the last read of its lists cut (reported only when it changes).
    pub(super) last_cuts: std::sync::Mutex<Vec<super::lists::Cut>>,
    /// Each client's places for its requests ([`SERVER_REQUESTS_PER_CLIENT`]):
    /// a client's many sessions together hold no more of the server's.
    client_places: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Semaphore>>>,
}

/// A server's requests to one client (over all its sessions) waiting for
/// the client's answer at once: of the server's [`SERVER_REQUESTS`], one
/// client holds at most this many.
pub(super) const SERVER_REQUESTS_PER_CLIENT: usize = 32;

/// Clients whose places are kept; past it, those holding none are
/// forgotten (identity providers' clients are as many as the people).
const CLIENT_PLACES_KEPT: usize = 4096;

impl PerServer {
    /// Places for `count` questions of a round of the server's (each one
    /// of its [`SERVER_REQUESTS`], as a request of its to a client is), if
    /// it has them.
    pub(super) fn question_places(
        &self,
        count: usize,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let count = u32::try_from(count).ok()?;
        self.requests.clone().try_acquire_many_owned(count).ok()
    }

    pub(super) fn new() -> Self {
        Self {
            refreshing: tokio::sync::Mutex::new(()),
            refresh_waiting: AtomicBool::new(false),
            requests: Arc::new(Semaphore::new(SERVER_REQUESTS)),
            refusals: Arc::new(Semaphore::new(SERVER_REFUSALS)),
            last_cuts: std::sync::Mutex::default(),
            client_places: std::sync::Mutex::default(),
        }
    }

    /// `client`'s places for the server's requests.
    pub(super) fn client_places(&self, client: &Arc<str>) -> Arc<Semaphore> {
        let mut places = lock(&self.client_places);
        if places.len() >= CLIENT_PLACES_KEPT && !places.contains_key(client) {
            places.retain(|_, held| Arc::strong_count(held) > 1);
        }
        places
            .entry(client.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(SERVER_REQUESTS_PER_CLIENT)))
            .clone()
    }
}

impl Gateway {
    pub(super) async fn event_loop(self: Arc<Self>, mut events: mpsc::Receiver<UpstreamEvent>) {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = self.shutdown.cancelled() => None,
            };
            let Some(event) = event else { break };
            match event {
                // The lists come from the server's own instance; a client's
                // instance of a per-client server does not change them.
                UpstreamEvent::Ready { source, took } => {
                    let mut record = self.server_event("server_ready", &source);
                    record.total_us = took.as_micros() as u64;
                    if let Some(metrics) = self.records.metrics() {
                        let upstream = record
                            .detail
                            .as_ref()
                            .and_then(|detail| detail["upstream"].as_str())
                            .unwrap_or("");
                        metrics
                            .upstream_start_seconds
                            .get([&source.server, upstream])
                            .observe(took);
                    }
                    self.records.event(record);
                    if let Some(index) = self.servers.index_of_source(&source) {
                        let this = self.clone();
                        tokio::spawn(async move {
                            if source.instance.is_none() {
                                this.lists.refresh(&this, index).await;
                            }
                            this.subscriptions
                                .resubscribe(&this, index, &source.instance)
                                .await;
                            // A restarted server forgot its log level.
                            let key = (index, source.instance.clone());
                            this.log_levels.forget(&key).await;
                            this.log_levels.apply(&this, None).await;
                        });
                    }
                }
                UpstreamEvent::Down { source, reason } => {
                    let mut record = self.server_event("server_down", &source);
                    record.reason = Some(reason);
                    self.records.event(record);
                    if let Some(index) = self.servers.index_of_source(&source) {
                        if source.instance.is_none() {
                            self.lists.set_lists(&self, index, None);
                        }
                        self.forwarded.forget(index, &source.instance);
                        // A client's instance down for good (a token
                        // exchange refused: not started again before its
                        // client's next call) is forgotten too.
                        if let Some(client) = &source.instance {
                            self.forget_unwanted_instance(index, client);
                        }
                    }
                }
                // One record per change, none per refused call (each of
                // those has its own exchange record).
                UpstreamEvent::Breaker { source, change } => {
                    let record = match change {
                        BreakerChange::Opened { failures, last } => {
                            let mut record = self.server_event("server_circuit_open", &source);
                            record.reason = Some(format!(
                                "{failures} calls in a row failed (the last: {last}): calls are refused until a probe is answered"
                            ));
                            record
                        }
                        BreakerChange::Closed => {
                            self.server_event("server_circuit_closed", &source)
                        }
                    };
                    self.records.event(record);
                }
                UpstreamEvent::Stopped { source, reason } => {
                    let mut record = self.server_event("server_stopped", &source);
                    let idle = reason == "idle";
                    record.reason = Some(reason);
                    self.records.event(record);
                    if let (true, Some(client), Some(index)) = (
                        idle,
                        &source.instance,
                        self.servers.index_of_source(&source),
                    ) {
                        self.forget_unwanted_instance(index, client);
                    }
                }
                // Its share of the server's queue budget is given back once
                // handled (when the arm ends).
                UpstreamEvent::Notification {
                    source,
                    message,
                    ambiguous,
                    held: _held,
                } => {
                    if let Some(index) = self.servers.index_of_source(&source) {
                        self.server_notification(index, &source.instance, message, ambiguous);
                    }
                }
                UpstreamEvent::Request {
                    source,
                    message,
                    origin,
                    held: _held,
                } => {
                    if let Some(index) = self.servers.index_of_source(&source) {
                        self.relay_request(index, source.instance, message, origin);
                    }
                }
            }
        }
    }

    /// Relays a server's request in a task of its own, within one of the
    /// places of the session it is for ([`SERVER_REQUESTS_PER_SESSION`]:
    /// a client that never answers holds only its own) and of the server's
    /// ([`SERVER_REQUESTS`], a ceiling on what one server has waiting);
    /// past them it is refused at once, and past the places for refusals
    /// too, dropped (the server sent more than it could be waiting for).
    fn relay_request(
        self: &Arc<Self>,
        index: usize,
        instance: Option<Arc<str>>,
        message: Value,
        origin: Option<Origin>,
    ) {
        let Some(server) = self.servers.slot(index).map(|slot| &slot.per_server) else {
            return;
        };
        // No session to ask: no place of one needed (it is refused as such).
        // The session's place, then its client's (a client's many sessions
        // together hold no more than that of the server's).
        let session = origin.as_ref().and_then(|o| self.sessions.get(o.session));
        let mut session_places = None;
        if let Some(session) = &session {
            let Ok(own) = session.server_requests.clone().try_acquire_owned() else {
                self.refuse_request(index, instance, &message, SERVER_REQUESTS_PER_SESSION);
                return;
            };
            let places = server.client_places(&session.client.name);
            let Ok(clients) = places.try_acquire_owned() else {
                self.refuse_request(index, instance, &message, SERVER_REQUESTS_PER_CLIENT);
                return;
            };
            session_places = Some((own, clients));
        }
        let Ok(place) = server.requests.clone().try_acquire_owned() else {
            self.refuse_request(index, instance, &message, SERVER_REQUESTS);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.server_request(index, instance, message, origin).await;
            drop((place, session_places));
        });
    }

    /// Refuses a server's request past `limit` places, within the places
    /// for refusals; past those it is dropped.
    fn refuse_request(
        &self,
        index: usize,
        instance: Option<Arc<str>>,
        message: &Value,
        limit: usize,
    ) {
        let Some(server) = self.servers.slot(index).map(|slot| &slot.per_server) else {
            return;
        };
        let Ok(place) = server.refusals.clone().try_acquire_owned() else {
            tracing::debug!(server = %self.servers.name_or_none(index), "a request of the server's dropped: too many in flight");
            return;
        };
        let Some(upstream) = self.servers.upstream_of(index, &instance) else {
            return;
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        tokio::spawn(async move {
            let refusal = Failure::TooManyServerRequests(limit).to_response(id);
            let _ = upstream.send(refusal).await;
            drop(place);
        });
    }

    /// Forwards a server→client request to the client whose call caused it
    /// and relays the answer back.
    pub(super) async fn server_request(
        self: Arc<Self>,
        index: usize,
        instance: Option<Arc<str>>,
        message: Value,
        origin: Option<Origin>,
    ) {
        let Some(upstream) = self.servers.upstream_of(index, &instance) else {
            return;
        };
        let server_id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let answer = |failure: Failure| failure.to_response(server_id.clone());
        let session = origin.as_ref().and_then(|o| self.sessions.get(o.session));
        let Some(session) = session else {
            let _ = upstream.send(answer(Failure::NoClientToAsk)).await;
            return;
        };
        // A server whose revision has no requests to clients asks in a
        // call's rounds (`input_required`), which the proxy carries.
        if !upstream.asks_clients() {
            let refusal = Failure::NotOnStatelessServer(protocol::cut(&method, 64).to_owned());
            let _ = upstream.send(answer(refusal)).await;
            return;
        }
        let related = origin.as_ref().map(|o| o.request_id.clone());
        let answer_message = self
            .put_to_client(
                (index, instance),
                &upstream,
                &session,
                message,
                related.as_ref(),
            )
            .await;
        let _ = upstream.send(answer_message).await;
    }

    /// Sends a server's request to the client (with an id of the client
    /// session's own) and waits, at most the server's call timeout, for
    /// the answer, which comes back with the server's id.
    pub(super) async fn ask_client(
        &self,
        session: &Session,
        (index, instance): (usize, Option<Arc<str>>),
        server_id: &Value,
        message: &Value,
        related: Option<&Value>,
        timeout: Duration,
    ) -> Value {
        let answer = |failure: Failure| failure.to_response(server_id.clone());
        let (client_id, reply) = session.expect_client_answer();
        let server_key = IdKey::from_value(server_id).map(|key| (index, instance, key));
        if let Some(key) = &server_key {
            self.forwarded.keep(key.clone(), session.key, client_id);
        }
        let mut asked = Asked {
            forwarded: &self.forwarded,
            session,
            client_id,
            server_key,
            settled: false,
        };
        let mut outgoing = message.clone();
        outgoing.put(&["id"], Value::from(client_id));
        let answer_message = if !session.deliver(outgoing, related) {
            session.forget_client_request(client_id);
            answer(Failure::ClientUnreachable)
        } else {
            tokio::select! {
                result = tokio::time::timeout(timeout, reply) => match result {
                    Ok(Ok(mut answer_message)) => {
                        answer_message.put(&["id"], server_id.clone());
                        answer_message
                    }
                    Ok(Err(_)) => answer(Failure::ClientSessionEnded),
                    Err(_) => {
                        session.forget_client_request(client_id);
                        answer(Failure::ClientTimeout)
                    }
                },
                () = session.closed.cancelled() => answer(Failure::ClientSessionEnded),
            }
        };
        asked.settled = true;
        answer_message
    }
}

/// A server→client request in flight: (server, instance, the server's id).
type ForwardedKey = (usize, Option<Arc<str>>, IdKey);

/// The servers' requests to clients in flight: (server, instance, the
/// server's id) → (session, the id the client saw).
#[derive(Default)]
pub(super) struct Forwarded(std::sync::Mutex<HashMap<ForwardedKey, (u64, u64)>>);

impl Forwarded {
    fn keep(&self, key: ForwardedKey, session: u64, client_id: u64) {
        lock(&self.0).insert(key, (session, client_id));
    }

    /// The session and client id of a server's request, no longer kept.
    pub(super) fn take(&self, key: &ForwardedKey) -> Option<(u64, u64)> {
        lock(&self.0).remove(key)
    }

    /// Forgets every request of a server instance that stopped.
    pub(super) fn forget(&self, index: usize, instance: &Option<Arc<str>>) {
        lock(&self.0).retain(|(server, from, _), _| !(*server == index && from == instance));
    }
}

/// A server's request put to a client, until it is settled (answered,
/// refused, timed out). Given up before (the call it belongs to ended:
/// cancelled, or another question of its round refused), the client is
/// told it was cancelled, and the proxy forgets it either way.
struct Asked<'a> {
    forwarded: &'a Forwarded,
    session: &'a Session,
    client_id: u64,
    server_key: Option<ForwardedKey>,
    settled: bool,
}

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.server_key {
            self.forwarded.take(key);
        }
        if !self.settled {
            self.session.forget_client_request(self.client_id);
            let notice = protocol::notification(
                protocol::Method::Cancelled.as_str(),
                serde_json::json!({ "requestId": self.client_id,
                    "reason": "the call it belongs to ended" }),
            );
            let _ = self.session.deliver(notice, None);
        }
    }
}
