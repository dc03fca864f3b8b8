//! A scripted server for fast in-process tests: an [`Upstream`] whose link is
//! a pair of in-memory queues that the test drives, with no process, socket
//! or container. The test sees every message the upstream sends the server
//! and answers as the server would; a message the test sends is routed
//! (replies to their calls, the rest as [`UpstreamEvent`]s) before `send`
//! returns, so no test needs to wait for "nothing else arrived".
//!
//! Each start of the server (the first, and each restart after a crash or
//! an idle stop) opens a new link, handed to the test as a new
//! [`ScriptedServer`] by [`Connections::next`]. Timers (call timeouts,
//! restart backoff, idle timeouts) run on tokio's clock, so a test under
//! `#[tokio::test(start_paused = true)]` moves them with
//! `tokio::time::advance` instead of sleeping.
//!
//! ```ignore
//! use crate::upstream::{Upstream, scripted};
//!
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(16);
//! let (connector, mut connections) = scripted::connector();
//! let upstream = Upstream::for_test(scripted::config("files"), events_tx, connector);
//! upstream.start(CancellationToken::new());
//! let mut server = connections.next().await; // the link of the first start
//! server.handshake().await; // answers `initialize`, takes `notifications/initialized`
//! let call = upstream.begin(protocol::request(json!(7), "tools/list", json!({})), None);
//! let reply = tokio::spawn(call.send_and_wait(Duration::from_secs(5)));
//! let request = server.next_received().await; // `tools/list`, with the upstream's own id
//! server.reply(&request, json!({ "tools": [] })).await;
//! assert_eq!(reply.await??["result"], json!({ "tools": [] }));
//! ```
//!
//! (The same example runs as `upstream::tests::the_scripted_server_example_runs`.)
//!
//! [`Upstream`]: super::Upstream
//! [`UpstreamEvent`]: super::UpstreamEvent

#![allow(clippy::panic, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::link::{Connected, Connector, Inbox, Link, LinkError};
use crate::config::{
    ContainerSpec, Isolation, ProcessSpec, PullPolicy, Sandbox, ServerConfig, StartPolicy,
    UpstreamSpec,
};
use crate::protocol;

/// How long the test waits for the upstream before it fails (on tokio's
/// clock: no wait at all under a paused clock with nothing else to do).
const WAIT: Duration = Duration::from_secs(60);

/// A [`Connector`] for [`Upstream::for_test`](super::Upstream::for_test),
/// and the test's side of it: each link the upstream opens arrives in
/// [`Connections`].
pub(crate) fn connector() -> (Arc<dyn Connector>, Connections) {
    let (servers, opened) = mpsc::unbounded_channel();
    let refusals = Arc::new(Mutex::new(VecDeque::new()));
    let connector = ScriptedConnector {
        servers,
        refusals: refusals.clone(),
    };
    (Arc::new(connector), Connections { opened, refusals })
}

/// An eager `process` server named `name` (its command never runs): the
/// config for [`Upstream::for_test`](super::Upstream::for_test), with a call
/// timeout of 10s.
pub(crate) fn config(name: &str) -> Arc<ServerConfig> {
    server_config(
        name,
        UpstreamSpec::Process(ProcessSpec {
            command: "scripted".into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
        }),
    )
}

/// A lazy `container` server (started at its first use, stopped after
/// `idle_timeout` without a call); no engine is asked for anything.
pub(crate) fn lazy_config(name: &str, idle_timeout: Duration) -> Arc<ServerConfig> {
    server_config(
        name,
        UpstreamSpec::Container(Box::new(ContainerSpec {
            image: "scripted:test".into(),
            digest: None,
            entrypoint: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            pull: PullPolicy::Never,
            start: StartPolicy::Lazy,
            idle_timeout: Some(idle_timeout),
            isolation: Isolation::Shared,
            sandbox: Sandbox::default(),
            fifos: None,
            label: None,
            require_signature: false,
            signature_keys: Default::default(),
            sign_in: None,
            described_labels: None,
        })),
    )
}

fn server_config(name: &str, kind: UpstreamSpec) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: name.into(),
        kind,
        call_timeout: Duration::from_secs(10),
        secrets: BTreeMap::new(),
        protocol: Default::default(),
        breaker: Default::default(),
        resolved: None,
    })
}

/// The `InitializeResult` [`ScriptedServer::handshake`] answers with.
pub(crate) fn initialize_result() -> Value {
    json!({
        "protocolVersion": protocol::LATEST_VERSION,
        "capabilities": { "tools": { "listChanged": true } },
        "serverInfo": { "name": "scripted", "version": "1.0.0" }
    })
}

struct ScriptedConnector {
    servers: mpsc::UnboundedSender<ScriptedServer>,
    refusals: Arc<Mutex<VecDeque<String>>>,
}

impl Connector for ScriptedConnector {
    fn connect(
        &self,
        inbox: Arc<dyn Inbox>,
        _restarts: u64,
    ) -> BoxFuture<'_, Result<Connected, UpstreamError>> {
        let refusal = self
            .refusals
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop_front();
        if let Some(reason) = refusal {
            let server = inbox.server().to_string();
            return std::future::ready(Err(UpstreamError::Start { server, reason })).boxed();
        }
        let (to_server, received) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let tools = Arc::new(Mutex::new(None));
        let link = Arc::new(ScriptedLink {
            to_server,
            closed: closed.clone(),
            tools: tools.clone(),
            inbox: inbox.clone(),
        });
        let server = ScriptedServer {
            received,
            inbox,
            closed: closed.clone(),
            tools,
        };
        // A test that stopped listening for links gets none: the start fails.
        let opened = self.servers.send(server).map_err(|_| UpstreamError::Start {
            server: "scripted".into(),
            reason: "the test takes no more links".into(),
        });
        std::future::ready(opened.map(|()| Connected { link, closed })).boxed()
    }
}

/// The upstream's side of a scripted link.
struct ScriptedLink {
    to_server: mpsc::UnboundedSender<Value>,
    closed: CancellationToken,
    /// What the server answers `tools/list` with by itself, if set.
    tools: Arc<Mutex<Option<Value>>>,
    inbox: Arc<dyn Inbox>,
}

impl Link for ScriptedLink {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>> {
        let tools = self
            .tools
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        if let Some(tools) = tools.filter(|_| {
            !self.closed.is_cancelled() && protocol::method(&message) == Some("tools/list")
        }) {
            let reply = protocol::result(id_of(&message), json!({ "tools": tools }));
            return async move {
                self.inbox.dispatch(reply, None).await;
                Ok(())
            }
            .boxed();
        }
        let sent = if self.closed.is_cancelled() {
            Err(LinkError::Closed("the scripted link is closed"))
        } else {
            self.to_server
                .send(message)
                .map_err(|_| LinkError::Closed("the scripted server is gone"))
        };
        std::future::ready(sent).boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.cancel();
        std::future::ready(()).boxed()
    }
}

/// The links an upstream opens, in order: one per start.
pub(crate) struct Connections {
    opened: mpsc::UnboundedReceiver<ScriptedServer>,
    refusals: Arc<Mutex<VecDeque<String>>>,
}

impl Connections {
    /// The next link the upstream opens (its next start). Panics if none
    /// comes within a minute of tokio's clock.
    pub(crate) async fn next(&mut self) -> ScriptedServer {
        match tokio::time::timeout(WAIT, self.opened.recv()).await {
            Ok(Some(server)) => server,
            Ok(None) => panic!("the upstream is gone: no more links"),
            Err(_) => panic!("the upstream opened no link within {WAIT:?}"),
        }
    }

    /// A link the upstream opened and the test has not taken yet, if any.
    pub(crate) fn try_next(&mut self) -> Option<ScriptedServer> {
        self.opened.try_recv().ok()
    }

    /// Makes the next start fail (the server `failed to start: {reason}`)
    /// instead of opening a link; each call refuses one more start.
    pub(crate) fn refuse_next(&self, reason: &str) {
        self.refusals
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push_back(reason.to_owned());
    }
}

/// The server's end of one scripted link. Dropping it closes the link, as a
/// server that exits.
pub(crate) struct ScriptedServer {
    received: mpsc::UnboundedReceiver<Value>,
    inbox: Arc<dyn Inbox>,
    closed: CancellationToken,
    tools: Arc<Mutex<Option<Value>>>,
}

impl ScriptedServer {
    /// From now on the server answers every `tools/list` itself with
    /// `tools` (the test no longer sees those requests): for tests about
    /// something else than when lists are read.
    pub(crate) fn answer_lists(&self, tools: Value) {
        *self
            .tools
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(tools);
    }

    /// The next message the upstream sent the server, in order. Panics if
    /// the link closed with nothing left to take, or if nothing comes
    /// within a minute of tokio's clock.
    pub(crate) async fn next_received(&mut self) -> Value {
        let closed = self.closed.clone();
        let next = async {
            tokio::select! {
                biased;
                message = self.received.recv() => message,
                () = closed.cancelled() => None,
            }
        };
        let message = match tokio::time::timeout(WAIT, next).await {
            Ok(message) => message.or_else(|| self.received.try_recv().ok()),
            Err(_) => panic!("the upstream sent nothing within {WAIT:?}"),
        };
        message.unwrap_or_else(|| panic!("the link closed: the upstream sends nothing more"))
    }

    /// A message the upstream sent and the test has not taken yet, if any.
    pub(crate) fn try_received(&mut self) -> Option<Value> {
        self.received.try_recv().ok()
    }

    /// Sends a message to the upstream, as a server writes a line to its
    /// stdout (or on its standalone HTTP stream). Returns once the upstream
    /// has routed it, so it waits while the upstream's events channel, or
    /// the queue of the call it belongs to, is full. Nothing is sent once
    /// the link is closed.
    pub(crate) async fn send(&self, message: Value) {
        if !self.closed.is_cancelled() {
            self.inbox.dispatch(message, None).await;
        }
    }

    /// Sends a message on the HTTP response stream of `request` (a call the
    /// upstream sent), as a remote server does: it then belongs to that call.
    pub(crate) async fn send_on_stream_of(&self, request: &Value, message: Value) {
        let related = request.get("id").and_then(Value::as_u64);
        if !self.closed.is_cancelled() {
            self.inbox.dispatch(message, related).await;
        }
    }

    /// Answers `request` with `result`.
    pub(crate) async fn reply(&self, request: &Value, result: Value) {
        self.send(protocol::result(id_of(request), result)).await;
    }

    /// Answers `request` with a JSON-RPC error.
    pub(crate) async fn reply_error(&self, request: &Value, code: i64, message: &str) {
        self.send(protocol::error(id_of(request), code, message, None))
            .await;
    }

    /// Sends a notification not tied to a call's stream.
    pub(crate) async fn notify(&self, method: &str, params: Value) {
        self.send(protocol::notification(method, params)).await;
    }

    /// Sends a server→client request with the server's own `id`.
    pub(crate) async fn request(&self, id: Value, method: &str, params: Value) {
        self.send(protocol::request(id, method, params)).await;
    }

    /// Answers the upstream's `initialize` with [`initialize_result`] and
    /// takes its `notifications/initialized`: the server is ready once this
    /// returns. Returns the `initialize` request.
    pub(crate) async fn handshake(&mut self) -> Value {
        self.handshake_with(initialize_result()).await
    }

    /// Like [`handshake`](Self::handshake), answering with `result`.
    pub(crate) async fn handshake_with(&mut self, result: Value) -> Value {
        let initialize = self.next_received().await;
        assert_eq!(
            protocol::method(&initialize),
            Some("initialize"),
            "the upstream starts with `initialize`: {initialize}"
        );
        self.reply(&initialize, result).await;
        let initialized = self.next_received().await;
        assert_eq!(
            protocol::method(&initialized),
            Some("notifications/initialized"),
            "the upstream ends the handshake with `notifications/initialized`: {initialized}"
        );
        initialize
    }

    /// The server crashes: its link closes, and the upstream sees it at once.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the link is closed (by the server, or by the upstream: an
    /// idle stop, a shutdown, a failed handshake).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves once the link is closed.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

fn id_of(request: &Value) -> Value {
    request.get("id").cloned().unwrap_or(Value::Null)
}
