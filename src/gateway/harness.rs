//! An in-process gateway for fast tests: no binary, no sockets, no
//! processes. Its servers are scripted (`upstream::scripted`): every server
//! of the config, and every per-client instance, connects to a link the
//! test drives. It records what the chain saw end (`on_outcome`), keeps the
//! audit log in memory (and can make it fail), and opens sessions whose
//! outlet collects what the client would receive.
//!
//! ```ignore
//! let harness = Harness::new("[[clients]]\nname = \"alice\"\n[[servers]]\nname = \"files\"\nprocess = { command = \"scripted\" }\n");
//! let starting = harness.start();
//! let mut files = harness.serve("files", json!([{ "name": "read", "inputSchema": { "type": "object" } }])).await;
//! starting.await?;
//! let (session, mut received) = harness.initialized_session("alice").await;
//! let listed = harness.handle(&session, request(1, "tools/list", json!({}))).await;
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::audit::{Audit, AuditError, AuditRecord, ChainEnd, Storage};
use crate::chain::{
    Chain, ClientIdentity, Exchange, Interceptor, Outcome, Phase, Transport, Verdict,
};
use crate::config::Config;
use crate::protocol;
use crate::upstream::scripted::{self, Connections, ScriptedServer};
use crate::upstream::{Upstream, UpstreamEvent};

use super::{Gateway, Outlet, Session};

/// The test's side of each upstream the gateway made: by (server, client
/// of a per-client instance).
type Opened = Arc<Mutex<HashMap<(String, Option<String>), Connections>>>;

type Shared<T> = Arc<Mutex<Vec<T>>>;

fn take<T: Clone>(shared: &Shared<T>) -> Vec<T> {
    shared.lock().map(|v| v.clone()).unwrap_or_default()
}

/// An audit storage in memory that fails while `broken` is set.
struct Memory {
    broken: Arc<AtomicBool>,
    written: Shared<AuditRecord>,
}

impl Storage for Memory {
    fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
        Ok(None)
    }

    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(AuditError::Write("disk full".into()));
        }
        if let Ok(mut written) = self.written.lock() {
            written.extend_from_slice(records);
        }
        Ok(())
    }
}

/// An interceptor that lets everything through and notes every end it is
/// told of: (method, phase at the end, outcome), and every client request
/// as it saw it.
struct Ends(Shared<(String, Phase, Outcome)>, Shared<Value>);

impl Ends {
    /// A request, either way, as it passed.
    fn saw(&self, exchange: &Exchange) -> Verdict {
        if let Ok(mut seen) = self.1.lock() {
            seen.push(exchange.message.clone());
        }
        Verdict::Continue
    }
}

impl Interceptor for Ends {
    fn name(&self) -> &str {
        "ends"
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.saw(exchange)
    }

    fn on_server_request(&self, exchange: &mut Exchange) -> Verdict {
        self.saw(exchange)
    }

    fn on_outcome(&self, exchange: &Exchange, outcome: &Outcome) {
        if let Ok(mut ends) = self.0.lock() {
            ends.push((
                exchange.context.method.to_string(),
                exchange.phase,
                outcome.clone(),
            ));
        }
    }
}

/// Collects what a session's client would receive.
struct Inbox(mpsc::UnboundedSender<Value>);

impl Outlet for Inbox {
    fn deliver(&self, message: Value, _related: Option<&Value>) -> bool {
        self.0.send(message).is_ok()
    }
}

pub(super) struct Harness {
    pub(super) gateway: Arc<Gateway>,
    /// While set, the audit log cannot be written.
    pub(super) audit_broken: Arc<AtomicBool>,
    written: Shared<AuditRecord>,
    ends: Shared<(String, Phase, Outcome)>,
    requests_seen: Shared<Value>,
    opened: Opened,
    events: Mutex<Option<mpsc::Receiver<UpstreamEvent>>>,
}

impl Harness {
    /// A gateway on `config` (TOML text) whose chain is the recording
    /// interceptor alone.
    pub(super) fn new(config: &str) -> Self {
        Self::with(config, Vec::new())
    }

    /// A gateway on `config` whose chain is `first`, then the recording
    /// interceptor.
    pub(super) fn with(config: &str, first: Vec<Arc<dyn Interceptor>>) -> Self {
        let config = match Config::parse(config, std::path::Path::new("portcullis.toml")) {
            Ok(config) => Arc::new(config),
            Err(err) => panic!("the test config loads: {err}"),
        };
        let (ends, requests_seen) = (Shared::default(), Shared::default());
        let mut interceptors = first;
        interceptors.push(Arc::new(Ends(ends.clone(), requests_seen.clone())));
        let chain = Chain::new(interceptors);
        let audit_broken = Arc::new(AtomicBool::new(false));
        let written = Shared::default();
        let storage = Memory {
            broken: audit_broken.clone(),
            written: written.clone(),
        };
        let audit = match Audit::start(storage, true) {
            Ok(audit) => audit,
            Err(err) => panic!("the audit writer starts: {err}"),
        };
        let opened = Opened::default();
        let make = {
            let opened = opened.clone();
            move |server: Arc<crate::config::ServerConfig>, instance: Option<Arc<str>>, events| {
                let (connector, connections) = scripted::connector();
                let key = (server.name.clone(), instance.as_deref().map(str::to_owned));
                if let Ok(mut opened) = opened.lock() {
                    opened.insert(key, connections);
                }
                Upstream::instance_for_test(server, instance, events, connector)
            }
        };
        let (gateway, events) = Gateway::with_upstreams(config, chain, Some(audit), Arc::new(make));
        Self {
            gateway,
            audit_broken,
            written,
            ends,
            requests_seen,
            opened,
            events: Mutex::new(Some(events)),
        }
    }

    /// Starts the gateway in a task of its own: it waits for its servers'
    /// handshakes and first lists, which the test answers meanwhile
    /// ([`Harness::serve`]).
    pub(super) fn start(&self) -> tokio::task::JoinHandle<()> {
        let gateway = self.gateway.clone();
        let events = self.events.lock().ok().and_then(|mut events| events.take());
        let Some(events) = events else {
            panic!("the harness's gateway starts once");
        };
        tokio::spawn(async move { gateway.start(events).await })
    }

    /// The links of `server` (of `client`'s instance, for a per-client
    /// server) as they open; once per server and instance.
    pub(super) fn connections(&self, server: &str, client: Option<&str>) -> Connections {
        let key = (server.to_owned(), client.map(str::to_owned));
        match self
            .opened
            .lock()
            .ok()
            .and_then(|mut opened| opened.remove(&key))
        {
            Some(connections) => connections,
            None => panic!("no upstream was made for {key:?}"),
        }
    }

    /// [`Harness::serve`] once the gateway has made `server`'s upstream
    /// (a reload makes it as it applies; up to a minute, far past what a
    /// loaded machine takes).
    pub(super) async fn serve_when_made(&self, server: &str, tools: Value) -> ScriptedServer {
        let key = (server.to_owned(), None);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if self
                .opened
                .lock()
                .is_ok_and(|opened| opened.contains_key(&key))
            {
                return self.serve(server, tools).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no upstream was made for {key:?}");
    }

    /// Brings `server` up: its first link handshakes with the tools
    /// capability and answers every `tools/list` with `tools` by itself.
    pub(super) async fn serve(&self, server: &str, tools: Value) -> ScriptedServer {
        let mut link = self.connections(server, None).next().await;
        link.answer_lists(tools);
        link.handshake().await;
        link
    }

    /// A session of `client` that has done the handshake.
    pub(super) async fn initialized_session(
        &self,
        client: &str,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<Value>) {
        let (session, inbox) = self.session(client);
        let initialize = request(
            0,
            "initialize",
            json!({ "protocolVersion": protocol::LATEST_VERSION,
                    "capabilities": { "sampling": {}, "elicitation": {}, "roots": {} },
                    "clientInfo": { "name": "harness", "version": "0" } }),
        );
        let reply = self.gateway.handle(&session, initialize).await;
        assert!(
            reply.as_ref().is_some_and(|r| r.get("result").is_some()),
            "{reply:?}"
        );
        let initialized = protocol::notification("notifications/initialized", json!({}));
        self.gateway.handle(&session, initialized).await;
        (session, inbox)
    }

    /// Opens a session of `client` over HTTP; its receiver gets what the
    /// client would.
    pub(super) fn session(&self, client: &str) -> (Arc<Session>, mpsc::UnboundedReceiver<Value>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let session = self.gateway.open_session(
            format!("session-of-{client}").into(),
            ClientIdentity::new(client, &[]),
            Transport::Http,
            Arc::new(Inbox(sender)),
        );
        (session, receiver)
    }

    /// The session of one 2026-07-28 request of `client` over HTTP (no
    /// handshake); its receiver gets what that request's stream would.
    pub(super) fn stateless_session(
        &self,
        client: &str,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<Value>) {
        self.stateless_session_with(client, json!({}))
    }

    /// The same, with the client's `capabilities` (an object) in its
    /// envelope.
    pub(super) fn stateless_session_with(
        &self,
        client: &str,
        capabilities: Value,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<Value>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let envelope = protocol::Envelope {
            version: protocol::MODERN_VERSION.to_owned(),
            capabilities: capabilities.as_object().cloned().unwrap_or_default(),
            log_level: None,
        };
        let session = self.gateway.open_stateless(
            ClientIdentity::new(client, &[]),
            Transport::Http,
            Arc::new(Inbox(sender)),
            envelope,
        );
        (session, receiver)
    }

    /// Hands the gateway `message` of `session`'s, as an edge would (see
    /// [`past_the_edge`]).
    pub(super) async fn handle(&self, session: &Arc<Session>, mut message: Value) -> Option<Value> {
        past_the_edge(session, &mut message);
        self.gateway.handle(session, message).await
    }

    /// Every record committed so far (after the background ones landed).
    pub(super) async fn records(&self) -> Vec<AuditRecord> {
        self.gateway.records.settled().await;
        take(&self.written)
    }

    /// The records of exchanges (events left out).
    pub(super) async fn exchanges(&self) -> Vec<AuditRecord> {
        let mut records = self.records().await;
        records.retain(|record| record.kind == "exchange");
        records
    }

    /// Every end the chain was told of: (method, phase, outcome).
    pub(super) fn ends(&self) -> Vec<(String, Phase, Outcome)> {
        take(&self.ends)
    }

    /// The client requests the chain was given, as it saw them.
    pub(super) fn requests_seen(&self) -> Vec<Value> {
        take(&self.requests_seen)
    }
}

/// Hands `message` to the gateway in a task of its own (the test goes on to
/// play the server meanwhile); the task ends with the reply, if any.
pub(super) fn spawn_handle(
    harness: &Harness,
    session: &Arc<Session>,
    mut message: Value,
) -> tokio::task::JoinHandle<Option<Value>> {
    past_the_edge(session, &mut message);
    let (gateway, session) = (harness.gateway.clone(), session.clone());
    tokio::spawn(async move { gateway.handle(&session, message).await })
}

/// What an edge does to a message before the gateway has it: a 2026-07-28
/// request's protocol keys taken out of its `_meta` (the edges read its
/// envelope into the request's session with `protocol::take_envelope`,
/// which takes every one of them).
fn past_the_edge(session: &Session, message: &mut Value) {
    if session.revision.carries_envelope()
        && let Some(params) = message.get_mut("params").and_then(Value::as_object_mut)
    {
        protocol::take_protocol_meta(params, |_, _| {});
    }
}

/// A JSON-RPC request.
pub(super) fn request(id: i64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// `future`'s output, within a minute (far past what a loaded machine
/// takes); a test that waits longer fails naming `what`.
pub(super) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(60), future).await {
        Ok(done) => done,
        Err(_) => panic!("{what} did not come"),
    }
}

/// The next message for the client (`Null` if its outlet closed).
pub(super) async fn next(inbox: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    within("a message for the client", inbox.recv())
        .await
        .unwrap_or_default()
}
