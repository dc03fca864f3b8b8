//! Multi round-trip requests toward 2026-07-28 clients: that revision has no
//! requests from server to client. When a server behind the proxy (which
//! speaks a handshake revision) asks the client something during a
//! `tools/call`, `prompts/get` or `resources/read` — sampling, elicitation,
//! roots — the proxy decides that request as it decides any server's
//! request to a client (Cedar, the capability the client declared,
//! redaction, a record), answers the client's request with
//! `resultType: input_required`, its `inputRequests` and a `requestState`,
//! and keeps the server's call waiting ("parked"). The client's retry of the
//! same request, with `inputResponses` and that `requestState`, hands each
//! answer to the server (decided and recorded as the answer to its request)
//! and waits for the call's next round or its result.
//!
//! `requestState` is an unguessable handle to the parked call, good for one
//! retry of the client it was given to, of the same request (method and
//! params): any other retry is refused as unknown, and the call goes on
//! waiting. Each round gives a new one. A call no retry continues within
//! its server's call timeout is cancelled at its server; so is one whose
//! retry the client abandons (closing the response, or cancelling it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::chain::{Direction, Phase};
use crate::protocol::{self, At as _, Method};

use super::failure::Failure;
use super::session::{InputAsk, Nowhere, Outlet, Relay};
use super::{Gateway, Session, lock, modern, reply_id};

/// A client's calls waiting for its input at once; past them, a server's
/// request to that client is refused.
pub(super) const WAITING_PER_CLIENT: usize = 16;
/// A client's questions waiting for its answers at once, whatever calls
/// they belong to: each holds one of its server's places for requests to
/// clients ([`super::server::SERVER_REQUESTS`]) until answered or timed
/// out, so one client holds at most a quarter of a server's.
pub(super) const QUESTIONS_PER_CLIENT: usize = 16;
/// A server's requests queued for one call's next round.
const ASKS_PER_CALL: usize = 16;
/// The longest `requestState` the proxy gives (longer ones are not its).
const STATE_BYTES: usize = 64;
/// What a retry's params carry for the rounds, besides the request it
/// continues.
const ROUND_KEYS: &[&str] = &["_meta", "inputResponses", "requestState"];

/// A call waiting for its client's next round.
pub(super) struct Parked {
    client: Arc<str>,
    method: Method,
    /// The digest of the request's params without what rounds add: a
    /// retry asks for the same.
    params: [u8; 32],
    /// The call's session, which outlives the request that began it.
    session: Arc<Session>,
    /// How the request that parked it came (a stdio connection's calls
    /// end with it).
    origin: Arc<dyn Outlet>,
    /// The call's reply (recorded), when it ends.
    done: oneshot::Receiver<Option<Value>>,
    asks: mpsc::Receiver<InputAsk>,
    /// Asks taken from the queue and not yet put to the client.
    queued: Vec<InputAsk>,
    /// What the client was asked in the last round, by key: the server's
    /// id and where its answer goes.
    pending: BTreeMap<String, (Value, oneshot::Sender<Value>)>,
    /// Keys given so far: a key names one request of the server's.
    keys: u64,
}

enum Round {
    /// The call ended (`None`: it was cancelled).
    Complete(Option<Value>),
    /// The server asked the client something.
    Input(Vec<InputAsk>),
}

impl Parked {
    async fn next_round(&mut self) -> Round {
        if !self.queued.is_empty() {
            return Round::Input(std::mem::take(&mut self.queued));
        }
        tokio::select! {
            biased;
            reply = &mut self.done => Round::Complete(reply.ok().flatten()),
            Some(ask) = self.asks.recv() => {
                let mut asks = vec![ask];
                while let Ok(more) = self.asks.try_recv() {
                    asks.push(more);
                }
                Round::Input(asks)
            }
        }
    }
}

/// The digest of a request's params as a retry must repeat them (whatever
/// the order of their keys): without `_meta` (a new progress token, say),
/// `inputResponses` and `requestState`.
pub(super) fn round_params(message: &Value) -> [u8; 32] {
    params_digest(message.get("params"))
}

/// [`round_params`] of a request's `params`.
fn params_digest(params: Option<&Value>) -> [u8; 32] {
    use sha2::Digest as _;
    let mut bytes = Vec::new();
    match params {
        Some(Value::Object(params)) => {
            let kept = params
                .iter()
                .filter(|(key, _)| !ROUND_KEYS.contains(&key.as_str()));
            canonical_object(kept, &mut bytes);
        }
        Some(other) => canonical(other, &mut bytes),
        None => {}
    }
    sha2::Sha256::digest(&bytes).into()
}

/// `value` as JSON with every object's keys in order.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => canonical_object(map.iter(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

fn canonical_object<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    let mut members: Vec<_> = members.collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (n, (key, value)) in members.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Value::from(key.as_str()).to_string().as_bytes());
        out.push(b':');
        canonical(value, out);
    }
    out.push(b'}');
}

/// Whether a retry answers exactly what its round asked: an object with a
/// result object for every key, and no other key.
fn answers_match(
    responses: Option<&Value>,
    pending: &BTreeMap<String, (Value, oneshot::Sender<Value>)>,
) -> Result<(), Failure> {
    let empty = Map::new();
    let responses = match responses {
        None => &empty,
        Some(Value::Object(responses)) => responses,
        Some(_) => {
            return Err(Failure::InvalidParams(
                "inputResponses must be an object".into(),
            ));
        }
    };
    if responses.len() != pending.len() || !pending.keys().all(|k| responses.contains_key(k)) {
        return Err(Failure::RequestStateMismatch(
            "inputResponses must answer each of the round's inputRequests, and nothing else",
        ));
    }
    if !responses.values().all(Value::is_object) {
        return Err(Failure::InvalidParams(
            "each of inputResponses must be a result object".into(),
        ));
    }
    Ok(())
}

/// A new `requestState`: 244 random bits.
fn new_state() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The 2026-07-28 calls waiting for their client's next round, and each
/// client's questions waiting for its answers.
#[derive(Default)]
pub(super) struct Rounds {
    /// The calls waiting, by the `requestState` their client was given (at
    /// most [`WAITING_PER_CLIENT`] per client).
    parked: Mutex<HashMap<String, Parked>>,
    /// Each client's questions (a server's requests in a 2026-07-28 call's
    /// rounds) waiting for its answers (at most [`QUESTIONS_PER_CLIENT`];
    /// bounded by the configured clients).
    questions: Mutex<HashMap<Arc<str>, usize>>,
}

/// One of a client's questions waiting for its answer; its place is given
/// back when dropped.
struct Question<'a> {
    rounds: &'a Rounds,
    client: Arc<str>,
}

impl Drop for Question<'_> {
    fn drop(&mut self) {
        let mut questions = lock(&self.rounds.questions);
        if let Some(count) = questions.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                questions.remove(&self.client);
            }
        }
    }
}

impl Rounds {
    /// A place for one more of `client`'s questions, if it has one.
    fn question(&self, client: &Arc<str>) -> Option<Question<'_>> {
        let mut questions = lock(&self.questions);
        let count = questions.entry(client.clone()).or_insert(0);
        if *count >= QUESTIONS_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(Question {
            rounds: self,
            client: client.clone(),
        })
    }

    /// Asks the client a server's request in its call's next round, and
    /// waits (at most `timeout`) for the answer: the server's answer
    /// message. Past the client's places for questions
    /// ([`QUESTIONS_PER_CLIENT`]), refused at once.
    pub(super) async fn ask_in_round(
        &self,
        session: &Session,
        server_id: &Value,
        message: &Value,
        timeout: Duration,
    ) -> Value {
        let answer = |failure: Failure| failure.to_response(server_id.clone());
        let Some(asks) = session.asks.get() else {
            return answer(Failure::NoBackChannel);
        };
        let Some(_question) = self.question(&session.client.name) else {
            return answer(Failure::TooManyWaiting(QUESTIONS_PER_CLIENT));
        };
        let mut shown = message.clone();
        protocol::strip_protocol_meta(&mut shown);
        let mut request = Map::new();
        for key in ["method", "params"] {
            if let Some(value) = shown.get_mut(key) {
                request.insert(key.into(), value.take());
            }
        }
        let (tx, rx) = oneshot::channel();
        let ask = InputAsk {
            request: Value::Object(request),
            server_id: server_id.clone(),
            answer: tx,
            timeout,
        };
        if asks.try_send(ask).is_err() {
            return answer(Failure::ClientUnreachable);
        }
        tokio::select! {
            result = tokio::time::timeout(timeout, rx) => match result {
                Ok(Ok(answered)) => answered,
                Ok(Err(_)) => answer(Failure::ClientSessionEnded),
                Err(_) => answer(Failure::ClientTimeout),
            },
            () = session.closed.cancelled() => answer(Failure::ClientSessionEnded),
        }
    }

    /// A 2026-07-28 request: in rounds where its method can take them,
    /// framed as that revision wants. Its envelope was taken out at the edge
    /// (read into the request's session): the chain, its plugins and the
    /// record see the request as a session's request would be.
    pub(super) async fn request(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        message: Value,
    ) -> Option<Value> {
        debug_assert!(
            !protocol::strip_protocol_meta(&mut message.clone()),
            "a request reached the gateway with the protocol's keys in its _meta: its edge takes them out"
        );
        let method = Method::named_in(&message);
        // The ones whose server's requests to the client become rounds.
        let in_rounds = method.takes_rounds();
        // The rounds' futures are boxed: kept out of this one's (and so out
        // of every plain request's), which would otherwise be as large as
        // the largest of them and be copied as such.
        if in_rounds && message.at(&["params", "requestState"]).is_some() {
            return Box::pin(self.resume(gateway, session, message, method)).await;
        }
        session.in_rounds.store(in_rounds, Ordering::Relaxed);
        // A client that declared nothing a server could ask it is refused
        // every question (as lacking the capability) before a round would
        // be needed: its call runs as any other request, with no place
        // kept for questions and nothing kept to resume it by.
        if in_rounds && session.can_be_asked() {
            return Box::pin(self.first_round(gateway, session, message, method)).await;
        }
        let reply = gateway.handle_request(session, message).await;
        reply.map(|reply| modern::frame_reply(&method, reply))
    }

    /// A request that may take rounds: runs here until it ends or its
    /// server asks the client something, then on its own.
    async fn first_round(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        message: Value,
        method: Method,
    ) -> Option<Value> {
        let (asks_tx, mut asks) = mpsc::channel(ASKS_PER_CALL);
        let _ = session.asks.set(asks_tx);
        // Kept to be digested if the call is parked (most calls are not).
        let params = message.get("params").cloned();
        let id = reply_id(&message);
        let (this, call_session) = (gateway.clone(), session.clone());
        let mut call = Box::pin(async move { this.handle_request(&call_session, message).await });
        let first = tokio::select! {
            biased;
            reply = &mut call => return reply.map(|reply| modern::frame_reply(&method, reply)),
            Some(ask) = asks.recv() => ask,
        };
        // Questions asked together (a round of a 2026-07-28 server's, say)
        // go in one round.
        let mut queued = vec![first];
        while let Ok(more) = asks.try_recv() {
            queued.push(more);
        }
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let _ = done_tx.send(call.await);
        });
        let parked = Parked {
            client: session.client.name.clone(),
            method,
            params: params_digest(params.as_ref()),
            session: session.clone(),
            origin: session.outlet(),
            done,
            asks,
            queued,
            pending: BTreeMap::new(),
            keys: 0,
        };
        self.drive(gateway, parked, id, session).await
    }

    /// A retry carrying a `requestState`: the answers go to the parked
    /// call's server, and the call's next round or result is the reply.
    async fn resume(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        message: Value,
        method: Method,
    ) -> Option<Value> {
        let id = reply_id(&message);
        let params = round_params(&message);
        let taken = self.take_parked(session, &message, &method, &params);
        let mut parked = match taken {
            Ok(parked) => parked,
            Err(failure) => {
                let reply = failure.to_response(id);
                let target = protocol::routing_name(&message)
                    .and_then(Result::ok)
                    .map(str::to_owned);
                let mut run = gateway.begin(
                    session,
                    message,
                    Direction::ClientToServer,
                    Phase::Request,
                    &method,
                );
                run.exchange.context.target = target;
                run.end(&failure.outcome(), Some(&reply)).await;
                return Some(reply);
            }
        };
        // The call's messages go on this request's stream from now on
        // (before the server has the answers, so nothing it sends after
        // reading them is lost); progress under this request's token.
        let relay = Relay {
            to: session.outlet(),
            related: id.clone(),
            progress: message.at(&["params", "_meta", "progressToken"]).cloned(),
        };
        parked.session.redirect(Arc::new(relay));
        let mut responses = match message.at(&["params", "inputResponses"]) {
            Some(Value::Object(responses)) => responses.clone(),
            _ => Map::new(),
        };
        for (key, (server_id, answer)) in std::mem::take(&mut parked.pending) {
            if let Some(result) = responses.remove(&key) {
                let _ = answer.send(json!({ "jsonrpc": "2.0", "id": server_id, "result": result }));
            }
        }
        self.drive(gateway, parked, id, session).await
    }

    /// The parked call `message`'s `requestState` names, if it is this
    /// client's and `message` continues it; taken only then (otherwise it
    /// goes on waiting for the right retry).
    fn take_parked(
        &self,
        session: &Session,
        message: &Value,
        method: &Method,
        params: &[u8; 32],
    ) -> Result<Parked, Failure> {
        let state = message
            .at(&["params", "requestState"])
            .and_then(Value::as_str)
            .filter(|state| state.len() <= STATE_BYTES)
            .ok_or(Failure::UnknownRequestState)?;
        let mut parked = lock(&self.parked);
        let found = parked
            .get(state)
            // The same client as the call began with, all of it: one
            // whose token now says other groups or scopes (same name)
            // does not continue a call decided under the old ones.
            .filter(|found| {
                found.client == session.client.name && found.session.client == session.client
            })
            .ok_or(Failure::UnknownRequestState)?;
        if found.method != *method {
            return Err(Failure::RequestStateMismatch("another method"));
        }
        if &found.params != params {
            return Err(Failure::RequestStateMismatch("other params"));
        }
        answers_match(message.at(&["params", "inputResponses"]), &found.pending)?;
        parked.remove(state).ok_or(Failure::UnknownRequestState)
    }

    /// Waits for the call's next round, while `current` (the request that
    /// continues it) is open: its result, re-identified as `current`'s; or
    /// the client's next questions, the call parked again.
    async fn drive(
        &self,
        gateway: &Arc<Gateway>,
        mut parked: Parked,
        id: Value,
        current: &Session,
    ) -> Option<Value> {
        parked.origin = current.outlet();
        loop {
            let round = tokio::select! {
                biased;
                () = current.closed.cancelled() => {
                    end_parked(gateway, parked);
                    return None;
                }
                round = parked.next_round() => round,
            };
            match round {
                Round::Complete(reply) => {
                    parked.session.unpark();
                    gateway.close_stateless(&parked.session);
                    let reply = match reply {
                        Some(reply) => reply,
                        // Its client went: nobody to answer.
                        None if current.closed.is_cancelled() => return None,
                        // Ended otherwise (the proxy stopping, say).
                        None => Failure::CallEnded.to_response(id.clone()),
                    };
                    let mut reply = modern::frame_reply(&parked.method, reply);
                    reply.put(&["id"], id);
                    return Some(reply);
                }
                Round::Input(asks) => match self.park(gateway, parked, asks, &id, current) {
                    Ok(reply) => return Some(reply),
                    Err(back) => parked = *back,
                },
            }
        }
    }

    /// Parks the call with the client's questions (those its server still
    /// waits for): the `input_required` reply, or the call back if it
    /// cannot wait (the client's places are taken, or the request that
    /// would carry the round has ended; the questions are then refused at
    /// the server). Decided and done under the lock of the parked calls, so
    /// that a request that ends (and ends what it parked) is never parked
    /// after.
    fn park(
        &self,
        gateway: &Arc<Gateway>,
        mut parked: Parked,
        asks: Vec<InputAsk>,
        id: &Value,
        current: &Session,
    ) -> Result<Value, Box<Parked>> {
        let asks: Vec<InputAsk> = asks.into_iter().filter(|a| !a.answer.is_closed()).collect();
        if asks.is_empty() {
            return Err(Box::new(parked));
        }
        let mut all = lock(&self.parked);
        let waiting = all.values().filter(|p| p.client == parked.client).count();
        let refusal = if gateway.shutdown.is_cancelled() {
            Some(Failure::ShuttingDown)
        } else if current.closed.is_cancelled() {
            Some(Failure::ClientSessionEnded)
        } else if waiting >= WAITING_PER_CLIENT {
            Some(Failure::TooManyWaiting(WAITING_PER_CLIENT))
        } else if !parked.session.park() {
            Some(Failure::ClientSessionEnded)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(all);
            for ask in asks {
                let _ = ask.answer.send(refusal.to_response(ask.server_id));
            }
            return Err(Box::new(parked));
        }
        let mut requests = Map::new();
        let mut timeout = Duration::ZERO;
        for ask in asks {
            parked.keys += 1;
            let key = parked.keys.to_string();
            requests.insert(key.clone(), ask.request);
            parked.pending.insert(key, (ask.server_id, ask.answer));
            timeout = timeout.max(ask.timeout);
        }
        // Between rounds nobody listens for the call's notifications.
        parked.session.redirect(Arc::new(Nowhere));
        let state = new_state();
        all.insert(state.clone(), parked);
        drop(all);
        Self::expire(gateway, state.clone(), timeout);
        Ok(json!({ "jsonrpc": "2.0", "id": id, "result": {
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": state,
            "_meta": { protocol::meta::SERVER_INFO: modern::server_info() },
        } }))
    }

    /// Cancels the call parked under `state` if no retry takes it within
    /// `timeout` (how long its server waits for the answers).
    fn expire(gateway: &Arc<Gateway>, state: String, timeout: Duration) {
        let shutdown = gateway.shutdown.clone();
        let gateway: Weak<Gateway> = Arc::downgrade(gateway);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                () = shutdown.cancelled() => {}
            }
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            let expired = lock(&gateway.rounds.parked).remove(&state);
            if let Some(parked) = expired {
                tracing::debug!(client = %parked.client, "a call waiting for its client's input expired");
                end_parked(&gateway, parked);
            }
        });
    }

    /// Ends the calls parked by requests that came through `origin` (a
    /// stdio connection that ended: nobody can continue them).
    pub(super) fn end_parked_from(&self, gateway: &Gateway, origin: &Arc<dyn Outlet>) {
        let same =
            |found: &Arc<dyn Outlet>| std::ptr::addr_eq(Arc::as_ptr(found), Arc::as_ptr(origin));
        let ended: Vec<Parked> = {
            let mut parked = lock(&self.parked);
            let states: Vec<String> = parked
                .iter()
                .filter(|(_, p)| same(&p.origin))
                .map(|(state, _)| state.clone())
                .collect();
            states
                .iter()
                .filter_map(|state| parked.remove(state))
                .collect()
        };
        for parked in ended {
            end_parked(gateway, parked);
        }
    }

    /// Every parked call, as the proxy stops (their sessions are closed
    /// with the others).
    pub(super) fn drop_parked(&self) {
        let parked: HashMap<String, Parked> = std::mem::take(&mut *lock(&self.parked));
        for (_, parked) in parked {
            parked.session.unpark();
        }
    }
}

/// Ends a parked call: cancelled at its server, its questions withdrawn.
fn end_parked(gateway: &Gateway, parked: Parked) {
    parked.session.unpark();
    gateway.close_stateless(&parked.session);
}
