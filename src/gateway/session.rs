//! One client session: its identity, lifecycle state, calls in flight, and
//! the way back to the client for messages it did not ask for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::chain::{ClientIdentity, Transport};
use crate::protocol::{Envelope, IdKey, LogLevel, Method};

/// Delivers messages the client did not ask for: notifications and
/// server→client requests. `related` is the client request they belong to
/// (the HTTP transport sends those on that request's stream).
pub trait Outlet: Send + Sync {
    /// Returns false when the client cannot be reached now.
    fn deliver(&self, message: Value, related: Option<&Value>) -> bool;
}

#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub initialized: bool,
    pub protocol_version: Option<String>,
    pub client_capabilities: Value,
    /// The least severe log message the client wants (`logging/setLevel`);
    /// `None`: it never asked, and gets every message.
    pub log_level: Option<LogLevel>,
}

/// A server's request (sampling, elicitation, roots) to a 2026-07-28
/// client during one of its calls, decided and redacted: the client is
/// asked in the call's next round (`inputRequests`), and its answer comes
/// with its retry (`inputResponses`).
pub(crate) struct InputAsk {
    /// `{ "method", "params" }` as the client is to see it.
    pub request: Value,
    /// The server's id for it.
    pub server_id: Value,
    /// The answer to send the server (under its id): the client's result,
    /// or an error saying why there is none.
    pub answer: oneshot::Sender<Value>,
    /// How long the server waits for it.
    pub timeout: std::time::Duration,
}

/// What a session begun on another replica settled at its `initialize`,
/// as its sealed id carries it: this replica resumes it in that state.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub version: String,
    /// The client capabilities the proxy reads.
    pub capabilities: Value,
    /// The agent's name (`clientInfo.name`).
    pub agent: String,
}

/// An outlet that reaches nobody: a parked call's session between rounds.
pub(crate) struct Nowhere;

impl Outlet for Nowhere {
    fn deliver(&self, _message: Value, _related: Option<&Value>) -> bool {
        false
    }
}

/// Sends what a parked call's session delivers on the stream of the request
/// that continues it (the retry, under its own id): its progress under the
/// retry's progress token, or none if the retry asked for none.
pub(crate) struct Relay {
    pub to: Arc<dyn Outlet>,
    pub related: Value,
    pub progress: Option<Value>,
}

impl Outlet for Relay {
    fn deliver(&self, mut message: Value, _related: Option<&Value>) -> bool {
        if Method::of(&message) == Some(Method::Progress) {
            let Some(token) = &self.progress else {
                return false;
            };
            if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                params.insert("progressToken".into(), token.clone());
            }
        }
        self.to.deliver(message, Some(&self.related))
    }
}

/// A call of this session's that is in flight at a server.
pub(crate) struct InFlight {
    pub cancel: CancellationToken,
    /// The tool it calls: what the client's answers to its server's
    /// questions during it go to.
    pub call: Option<Arc<crate::chain::CallOf>>,
}

/// How a session's client speaks, as its edge (the transport that read the
/// revision) set it. Past the edge the gateway asks these properties, never
/// the version: a new revision is one more variant, its answers given here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// The handshake revisions (2024-11-05 to 2025-11-25): a session opened
    /// by `initialize`, lasting until its client ends it.
    Handshake,
    /// 2026-07-28: no handshake; each request carries what its client says
    /// of itself (its envelope) and is a session of its own.
    PerRequest,
}

impl Revision {
    /// The session lasts across requests: what is announced to sessions
    /// (list changes, servers' log levels, notifications no call owns)
    /// reaches it, its end is recorded, a catalog server it adds is its own,
    /// and the methods that came with sessions are there.
    pub fn lasting(self) -> bool {
        self == Self::Handshake
    }

    /// A server's requests to the client are asked in the rounds of the
    /// call they belong to (`input_required`, continued by `requestState`),
    /// not on a channel of the session's.
    pub fn in_rounds(self) -> bool {
        self == Self::PerRequest
    }

    /// The tasks extension: a call may become a task the client polls.
    pub fn takes_tasks(self) -> bool {
        self == Self::PerRequest
    }

    /// Results are checked and framed as the revision has them
    /// (`resultType`, what only it says); otherwise what only 2026-07-28
    /// says is taken out of a server's result.
    pub fn framed_results(self) -> bool {
        self == Self::PerRequest
    }

    /// Each request carries the protocol's keys in its `_meta` (taken out
    /// at the edge; none of them may reach a server).
    pub fn carries_envelope(self) -> bool {
        self == Self::PerRequest
    }

    /// A server's log messages reach the client though it never asked for
    /// a level.
    pub fn hears_logs_unasked(self) -> bool {
        self == Self::Handshake
    }
}

pub struct Session {
    pub(crate) key: u64,
    pub id: Arc<str>,
    pub client: ClientIdentity,
    pub transport: Transport,
    /// Where what the client did not ask for goes (a parked call's session
    /// is pointed at the request that continues it).
    outlet: Mutex<Arc<dyn Outlet>>,
    state: Mutex<SessionState>,
    calls: Mutex<HashMap<IdKey, InFlight>>,
    /// Server→client requests forwarded to this client, by the id we gave them.
    client_requests: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next_request_id: AtomicU64,
    /// When the session opened (its `session_end` record gives its length).
    pub(crate) opened: Instant,
    pub(crate) closed: CancellationToken,
    /// The labels the data given to the client carries so far (`[flow]`;
    /// a session that lasts keeps its own).
    flow: Mutex<Option<Arc<crate::flow::Flow>>>,
    /// The proxy is asking the person a question (`@ask`): one at a time.
    pub(crate) asking: std::sync::atomic::AtomicBool,
    /// How many resources the session is subscribed to (at most
    /// [`MAX_SUBSCRIPTIONS`]).
    pub(crate) subscribed: std::sync::atomic::AtomicUsize,
    /// How its client speaks, as the edge read it: a session of its own
    /// (the handshake), or one 2026-07-28 request's (no state kept between
    /// requests: what its client says of itself comes with the request, and
    /// it lives only as long as that request). Past the edge the gateway
    /// asks its properties, never the version.
    pub(crate) revision: Revision,
    /// A 2026-07-28 `subscriptions/listen` request runs in this session:
    /// it may subscribe to resources on the client's behalf.
    pub(crate) listen_asked: std::sync::atomic::AtomicBool,
    /// What that request listens to, once acknowledged: from then on the
    /// session carries those notifications, and only those.
    pub(crate) listen: std::sync::OnceLock<Listen>,
    /// A 2026-07-28 request whose method can take rounds (a call, a prompt,
    /// a read): its server may ask the client what the client declared.
    pub(crate) in_rounds: std::sync::atomic::AtomicBool,
    /// A 2026-07-28 call that may take several rounds: where its server's
    /// requests to the client go (see `gateway::rounds`).
    pub(crate) asks: std::sync::OnceLock<mpsc::Sender<InputAsk>>,
    /// The call waits for the client's next round: its session outlives
    /// the request that began it (closing it is then the rounds' to do).
    parked: Mutex<bool>,
    /// Places for servers' requests put to this client and not answered
    /// yet ([`SERVER_REQUESTS_PER_SESSION`]): a client that never answers
    /// holds its own, never another session's.
    pub(crate) server_requests: Arc<tokio::sync::Semaphore>,
}

/// Servers' requests (sampling, elicitation, roots, a round's questions) a
/// session may have waiting for its client's answer at once.
pub(crate) const SERVER_REQUESTS_PER_SESSION: usize = 16;

/// What a `subscriptions/listen` stream was granted: the list changes it
/// asked for, and the resources it is subscribed to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listen {
    /// The listen request's id, which tags each notification it carries.
    pub id: Value,
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    pub uris: std::collections::BTreeSet<String>,
}

impl Listen {
    /// Whether the stream carries `message`.
    fn accepts(&self, message: &Value) -> bool {
        match Method::of(message) {
            Some(Method::ToolsListChanged) => self.tools,
            Some(Method::PromptsListChanged) => self.prompts,
            Some(Method::ResourcesListChanged) => self.resources,
            Some(Method::ResourceUpdated) => crate::protocol::param_str(message, "uri")
                .is_some_and(|uri| self.uris.contains(uri)),
            _ => false,
        }
    }

    /// The filter as the revision spells it (what was accepted).
    pub(crate) fn filter(&self) -> Value {
        let mut filter = serde_json::Map::new();
        for (key, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                filter.insert(key.into(), Value::Bool(true));
            }
        }
        if !self.uris.is_empty() {
            filter.insert(
                "resourceSubscriptions".into(),
                self.uris.iter().cloned().collect(),
            );
        }
        Value::Object(filter)
    }
}

/// Tasks (2026-07-28) one client may run at once at one server.
pub(crate) const MAX_TASKS_PER_CLIENT: usize = 64;
/// Resources one session may be subscribed to at once: each is kept for
/// the session's life, so a client cannot make the proxy hold any number.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 1000;
/// The longest URI a session may subscribe to (its subscriptions are kept
/// for its life, so their size is bounded as well as their number).
pub(crate) const MAX_SUBSCRIBED_URI_BYTES: usize = 8 * 1024;

/// A message's `params._meta` as an object (one that was something else
/// is replaced), if the message's params are an object or absent.
fn meta_of(message: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let params = message
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()?;
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    meta.as_object_mut()
}

/// Puts a listen request's id in a notification's `_meta`.
fn tag_subscription(message: &mut Value, id: &Value) {
    if let Some(meta) = meta_of(message) {
        meta.insert(crate::protocol::meta::SUBSCRIPTION_ID.into(), id.clone());
    }
}

/// The client capabilities a server's request to a client may need (what
/// `gateway::server::capability_of` names).
const ASKABLE: [&str; 3] = ["sampling", "elicitation", "roots"];

/// Whether `declared` (a client's capabilities) holds `capability`.
fn declares(declared: &Value, capability: &str) -> bool {
    declared.get(capability).is_some_and(|c| !c.is_null())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain maps and flags, valid after any panic.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Session {
    pub(crate) fn new(
        key: u64,
        id: Arc<str>,
        client: ClientIdentity,
        transport: Transport,
        outlet: Arc<dyn Outlet>,
    ) -> Self {
        Self {
            key,
            id,
            client,
            transport,
            outlet: Mutex::new(outlet),
            state: Mutex::new(SessionState::default()),
            calls: Mutex::new(HashMap::new()),
            client_requests: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            opened: Instant::now(),
            subscribed: std::sync::atomic::AtomicUsize::new(0),
            flow: Mutex::new(None),
            asking: std::sync::atomic::AtomicBool::new(false),
            closed: CancellationToken::new(),
            revision: Revision::Handshake,
            listen_asked: std::sync::atomic::AtomicBool::new(false),
            listen: std::sync::OnceLock::new(),
            in_rounds: std::sync::atomic::AtomicBool::new(false),
            asks: std::sync::OnceLock::new(),
            parked: Mutex::new(false),
            server_requests: Arc::new(tokio::sync::Semaphore::new(SERVER_REQUESTS_PER_SESSION)),
        }
    }

    /// The session of one 2026-07-28 request with this `envelope`: its
    /// version, capabilities and log level are the request's own.
    pub(crate) fn of_request(
        key: u64,
        id: Arc<str>,
        client: ClientIdentity,
        transport: Transport,
        outlet: Arc<dyn Outlet>,
        envelope: Envelope,
    ) -> Self {
        let session = Self {
            revision: Revision::PerRequest,
            ..Self::new(key, id, client, transport, outlet)
        };
        {
            let mut state = session.state();
            state.initialized = true;
            state.protocol_version = Some(envelope.version);
            state.client_capabilities = Value::Object(envelope.capabilities);
            state.log_level = envelope.log_level;
        }
        session
    }

    /// The session's flow as it stands (`None`: nothing yet).
    pub(crate) fn flow(&self) -> Option<Arc<crate::flow::Flow>> {
        lock(&self.flow).clone()
    }

    /// Grows the session's flow by what `next` makes of it (`None`:
    /// nothing new).
    pub(crate) fn add_to_flow(
        &self,
        next: impl FnOnce(&crate::flow::Flow) -> Option<crate::flow::Flow>,
    ) {
        let mut flow = lock(&self.flow);
        let current = flow.as_deref().cloned().unwrap_or_default();
        if let Some(grown) = next(&current) {
            *flow = Some(Arc::new(grown));
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    pub fn is_initialized(&self) -> bool {
        self.state().initialized
    }

    pub fn protocol_version(&self) -> Option<String> {
        self.state().protocol_version.clone()
    }

    /// What `read` finds in the capabilities the client declared (its
    /// `initialize`, or the request's envelope), read in place, under the
    /// session's state lock: `read` must not touch the session.
    pub(crate) fn client_capabilities<T>(&self, read: impl FnOnce(&Value) -> T) -> T {
        read(&self.state().client_capabilities)
    }

    pub(crate) fn has_client_capability(&self, capability: &str) -> bool {
        self.client_capabilities(|declared| declares(declared, capability))
    }

    /// Whether the client declared any capability a server's request to it
    /// needs ([`ASKABLE`]).
    pub(crate) fn can_be_asked(&self) -> bool {
        self.client_capabilities(|declared| {
            ASKABLE
                .iter()
                .any(|capability| declares(declared, capability))
        })
    }

    pub fn log_level(&self) -> Option<LogLevel> {
        self.state().log_level
    }

    /// Whether a server's log message is one the client asked for: at or
    /// above its level (every message, if it never set one; none, for a
    /// 2026-07-28 request that did not ask for a level). A message without
    /// a level MCP names is below any level.
    pub(crate) fn wants_log(&self, message: &Value) -> bool {
        match self.log_level() {
            None => self.revision.hears_logs_unasked(),
            Some(least) => LogLevel::of_message(message).is_some_and(|level| level >= least),
        }
    }

    /// Sends the client a message it did not ask for. A listen stream
    /// carries only what it was granted, each tagged with its id; any other
    /// 2026-07-28 request's session only what belongs to that request.
    pub(crate) fn deliver(&self, mut message: Value, related: Option<&Value>) -> bool {
        if let Some(listen) = self.listen.get() {
            if !listen.accepts(&message) {
                return false;
            }
            tag_subscription(&mut message, &listen.id);
            return self.outlet().deliver(message, Some(&listen.id));
        }
        if !self.revision.lasting() {
            // A listen not acknowledged yet: nothing goes before its
            // acknowledgment (what its subscriptions' servers say included).
            let listening = self.listen_asked.load(std::sync::atomic::Ordering::Relaxed);
            if related.is_none() || listening {
                return false;
            }
            // A server cannot pass off what it sends during a call as
            // something of a listen stream's: no acknowledgment, no
            // subscription tag, none of the protocol's `_meta` keys.
            if crate::protocol::method(&message)
                .is_some_and(|method| method.starts_with("notifications/subscriptions/"))
            {
                return false;
            }
            crate::protocol::strip_protocol_meta(&mut message);
        }
        self.outlet().deliver(message, related)
    }

    /// Where what the client did not ask for goes now.
    pub(crate) fn outlet(&self) -> Arc<dyn Outlet> {
        lock(&self.outlet).clone()
    }

    /// Points the session at another way to its client.
    pub(crate) fn redirect(&self, outlet: Arc<dyn Outlet>) {
        *lock(&self.outlet) = outlet;
    }

    /// Parks the session (its call waits for the client's next round);
    /// false if it was closed already.
    pub(crate) fn park(&self) -> bool {
        let mut parked = lock(&self.parked);
        if self.closed.is_cancelled() {
            return false;
        }
        *parked = true;
        true
    }

    /// Ends the parking: closing the session is its requests' to do again.
    pub(crate) fn unpark(&self) {
        *lock(&self.parked) = false;
    }

    /// Runs `close` unless the session is parked (decided under the same
    /// lock as parking, so a session is never parked once closed).
    pub(crate) fn unless_parked(&self, close: impl FnOnce()) {
        let parked = lock(&self.parked);
        if !*parked {
            close();
        }
    }

    /// Sends a listen stream's acknowledgment, before anything else on it.
    pub(crate) fn acknowledge(&self, listen: Listen) -> bool {
        let mut ack = crate::protocol::notification(
            Method::SubscriptionsAcknowledged.as_str(),
            serde_json::json!({ "notifications": listen.filter() }),
        );
        tag_subscription(&mut ack, &listen.id);
        let sent = self.outlet().deliver(ack, Some(&listen.id));
        let _ = self.listen.set(listen);
        sent
    }

    /// Registers a call in flight (of `call`'s tool, if it calls one);
    /// returns false if the id is already in use.
    pub(crate) fn begin_call(
        &self,
        id: IdKey,
        cancel: CancellationToken,
        call: Option<Arc<crate::chain::CallOf>>,
    ) -> bool {
        let mut calls = lock(&self.calls);
        if calls.contains_key(&id) {
            return false;
        }
        calls.insert(id, InFlight { cancel, call });
        true
    }

    /// The tool the call `id` in flight calls.
    pub(crate) fn call_of(&self, id: &IdKey) -> Option<Arc<crate::chain::CallOf>> {
        lock(&self.calls).get(id).and_then(|call| call.call.clone())
    }

    /// Registers a call of the client's (`key`, if it has an id) for its
    /// cancel, which cancels `cancel`, until the guard is dropped; `None`:
    /// the id is one of a call in flight.
    pub(crate) fn register_call(
        &self,
        key: Option<IdKey>,
        cancel: CancellationToken,
    ) -> Option<Registered<'_>> {
        if let Some(key) = &key
            && !self.begin_call(key.clone(), cancel, None)
        {
            return None;
        }
        Some(Registered { session: self, key })
    }

    pub(crate) fn end_call(&self, id: &IdKey) {
        lock(&self.calls).remove(id);
    }

    /// The client cancelled one of its calls.
    pub(crate) fn cancel_call(&self, id: &IdKey) -> bool {
        match lock(&self.calls).remove(id) {
            Some(call) => {
                call.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub(crate) fn expect_client_answer(&self) -> (u64, oneshot::Receiver<Value>) {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.client_requests).insert(id, tx);
        (id, rx)
    }

    pub(crate) fn forget_client_request(&self, id: u64) {
        lock(&self.client_requests).remove(&id);
    }

    /// Hands the client's answer to whoever forwarded the request.
    pub(crate) fn client_answered(&self, message: Value) -> bool {
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            return false;
        };
        match lock(&self.client_requests).remove(&id) {
            Some(waiter) => waiter.send(message).is_ok(),
            None => false,
        }
    }

    /// Ends the session: every call in flight is withdrawn.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        for (_, call) in lock(&self.calls).drain() {
            call.cancel.cancel();
        }
        lock(&self.client_requests).clear();
    }
}

/// The sessions open (a client's, and each 2026-07-28 request's while it
/// runs), by the proxy's own number for them: one part of the gateway,
/// with one job, finding a session.
pub struct Sessions {
    open: RwLock<HashMap<u64, Arc<Session>>>,
    next: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl Sessions {
    /// A number no session of this process had.
    pub(super) fn next_key(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn insert(&self, session: Arc<Session>) {
        if let Ok(mut open) = self.open.write() {
            open.insert(session.key, session);
        }
    }

    pub(super) fn remove(&self, key: u64) {
        if let Ok(mut open) = self.open.write() {
            open.remove(&key);
        }
    }

    /// Every session, taken out (the proxy stops).
    pub(super) fn drain(&self) -> Vec<Arc<Session>> {
        self.open
            .write()
            .map(|mut open| open.drain().map(|(_, s)| s).collect())
            .unwrap_or_default()
    }

    /// How many are open.
    pub fn count(&self) -> usize {
        self.open.read().map(|s| s.len()).unwrap_or(0)
    }

    pub(super) fn get(&self, key: u64) -> Option<Arc<Session>> {
        self.open.read().ok().and_then(|s| s.get(&key).cloned())
    }

    /// The open sessions that `keep` keeps.
    pub(super) fn matching(&self, keep: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        self.open
            .read()
            .map(|s| s.values().filter(|s| keep(s)).cloned().collect())
            .unwrap_or_default()
    }

    /// The 2026-07-28 listen streams that have been acknowledged: what the
    /// proxy announces of its lists reaches them too.
    pub(super) fn listeners(&self) -> Vec<Arc<Session>> {
        self.matching(|s| s.listen.get().is_some())
    }

    /// The sessions that did the handshake: those what is announced to
    /// sessions reaches (a 2026-07-28 request's session is not one).
    pub(super) fn initialized(&self) -> Vec<Arc<Session>> {
        self.matching(|s| s.is_initialized() && s.revision.lasting())
    }

    /// The sessions a notification from `instance` may be offered to (authz
    /// then decides per session): every one, or only its client's for a
    /// per-client instance.
    pub(super) fn of_instance(&self, instance: &Option<Arc<str>>) -> Vec<Arc<Session>> {
        match instance {
            None => self.initialized(),
            Some(client) => self.matching(|s| {
                s.is_initialized() && s.revision.lasting() && s.client.name == *client
            }),
        }
    }
}

/// A call registered for its client's cancel ([`Session::register_call`]),
/// its registration ended when dropped.
pub(crate) struct Registered<'s> {
    session: &'s Session,
    key: Option<IdKey>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.session.end_call(key);
        }
    }
}
