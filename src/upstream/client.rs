//! The MCP client toward one server: ids, pending calls, lifecycle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{UpstreamError, container, process, remote};
use crate::config::{LimitsConfig, ServerConfig, StartPolicy, UpstreamSpec};
use crate::protocol::{self, Frame, FrameReader, Kind};

/// A way to send bytes to a running server. What the server sends back is
/// handed to [`Shared::dispatch`] by the link's own reader.
pub(crate) trait Link: Send + Sync {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), String>>;
    /// Called once the handshake settled the protocol version.
    fn set_protocol_version(&self, _version: &str) {}
    /// Stops the link: kills the process, removes the container or ends the
    /// HTTP session, and returns once that is done.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A running link and the token it cancels when the connection dies.
pub(crate) struct Connected {
    pub link: Arc<dyn Link>,
    pub closed: CancellationToken,
}

/// The client session and request a server→client message belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub session: u64,
    pub request_id: Value,
}

/// Which running copy of a server an event comes from: the server's own, or
/// (for `isolation = "per-client"` servers) the one of a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub server: Arc<str>,
    /// The client whose instance it is; `None` for the server's own.
    pub instance: Option<Arc<str>>,
}

/// Something the server sent on its own.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// The server is (again) running and initialized: its lists may have
    /// changed. `took`: from the start of its start to its answer to
    /// `initialize` (a container's cold start).
    Ready { source: Source, took: Duration },
    /// The server stopped; calls in flight failed.
    Down { source: Source, reason: String },
    /// The proxy stopped the server on purpose (idle); no call failed.
    Stopped { source: Source, reason: String },
    /// A notification not tied to a call. Progress, and whatever else the
    /// server sends during a call (log messages, …), go to the call instead
    /// ([`PendingCall::send_and_follow`]). `ambiguous`: it came while calls
    /// of several client sessions were in flight, or on the stream of a call
    /// that has ended, so it may hold any one's data and goes to none of
    /// them (the gateway records it).
    Notification {
        source: Source,
        message: Value,
        ambiguous: bool,
    },
    /// A server→client request (`sampling/createMessage`, `elicitation/create`,
    /// `roots/list`, …) with the server's own id. Answer it with
    /// [`Upstream::send`]. `origin` is the call it was made for, when known.
    Request {
        source: Source,
        message: Value,
        origin: Option<Origin>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not running because nobody needs it yet (a lazy server) or any more
    /// (stopped after its idle timeout); it starts on the next use. Holds
    /// the `InitializeResult` of its last run, if it ran.
    Idle(Option<Arc<Value>>),
    Starting,
    /// Initialized; holds the server's `InitializeResult`.
    Ready(Arc<Value>),
    Down(String),
    Stopped,
}

impl Status {
    /// The server's `InitializeResult`, while running or from its last run.
    pub fn info(&self) -> Option<Arc<Value>> {
        match self {
            Self::Ready(info) | Self::Idle(Some(info)) => Some(info.clone()),
            _ => None,
        }
    }
}

/// When a server runs: always, or from its first use until it has been idle
/// for `idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunPolicy {
    lazy: bool,
    idle_timeout: Option<Duration>,
}

/// A lazy server stops after this long without a call unless it says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl RunPolicy {
    fn of(config: &ServerConfig) -> Self {
        match &config.kind {
            UpstreamSpec::Container(spec) => {
                let lazy = spec.start == StartPolicy::Lazy;
                Self {
                    lazy,
                    idle_timeout: spec.idle_timeout.or(lazy.then_some(DEFAULT_IDLE_TIMEOUT)),
                }
            }
            UpstreamSpec::Process(_) | UpstreamSpec::Remote(_) => Self {
                lazy: false,
                idle_timeout: None,
            },
        }
    }
}

struct Pending {
    /// The server's reply, or why the proxy refused it (too large).
    reply: oneshot::Sender<Result<Value, String>>,
    origin: Option<Origin>,
    /// The client's progress token, if it asked for progress.
    progress_token: Option<Value>,
    /// Where the call's own notifications (progress, log messages) go: to
    /// the task that waits for the reply, so that none can be overtaken by
    /// the reply it precedes. Bounded ([`FOLLOW_CAP`]).
    follow: mpsc::Sender<Value>,
}

/// Notifications of one call the proxy holds while the task that waits for
/// its reply has not taken them yet. That task hands each one on at once
/// (to the client's own bounded queue, never waiting for the client), so a
/// full queue means only that the server sends faster than the proxy passes
/// them on: reading from the server then waits for room, which slows that
/// server alone, loses nothing, and holds no more than this in memory.
const FOLLOW_CAP: usize = 256;

/// How long a notification, or an answer to a server's request, may wait
/// for the server to take it.
const SEND_WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The client this instance serves alone (per-client isolation).
    pub(crate) instance: Option<Arc<str>>,
    link: RwLock<Option<Arc<dyn Link>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    events: mpsc::Sender<UpstreamEvent>,
    status: watch::Sender<Status>,
    restarts: AtomicU64,
    /// Whether the server should be running (always, for an eager server).
    wanted: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// When it was last used, in ms since `epoch`.
    last_used_ms: AtomicU64,
    /// Held running (by resource subscriptions, which live in the server).
    held: std::sync::atomic::AtomicBool,
    epoch: Instant,
}

impl Shared {
    /// Starts the server if it is idle and waits (up to `timeout`) until it
    /// is ready.
    async fn wait_running(&self, timeout: Duration) -> Result<(), UpstreamError> {
        if matches!(*self.status.borrow(), Status::Ready(_)) {
            return Ok(());
        }
        self.want();
        let server = self.name.to_string();
        let mut status = self.status.subscribe();
        let ready = async {
            loop {
                match status.borrow_and_update().clone() {
                    Status::Ready(_) => return Ok(()),
                    // The reason stays in the proxy's log: it can name host
                    // paths and the engine's own words.
                    Status::Down(_) => {
                        return Err(UpstreamError::Unavailable {
                            server: server.clone(),
                            reason: "it failed to start or exited (the proxy's log says why)"
                                .into(),
                        });
                    }
                    Status::Stopped => {
                        return Err(UpstreamError::Unavailable {
                            server: server.clone(),
                            reason: "the proxy is shutting down".into(),
                        });
                    }
                    // Idle again (stopped just as we asked): ask once more.
                    Status::Idle(_) => self.want(),
                    Status::Starting => {}
                }
                if status.changed().await.is_err() {
                    return Err(UpstreamError::Unavailable {
                        server: server.clone(),
                        reason: "the proxy is shutting down".into(),
                    });
                }
            }
        };
        tokio::time::timeout(timeout, ready)
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Unavailable {
                    server: server.clone(),
                    reason: format!("it did not start within {}", super::humanize(timeout)),
                })
            })
    }

    fn want(&self) {
        self.touch();
        if !self.wanted.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn source(&self) -> Source {
        Source {
            server: self.name.clone(),
            instance: self.instance.clone(),
        }
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn current_link(&self) -> Option<Arc<dyn Link>> {
        self.link.read().ok().and_then(|link| link.clone())
    }

    fn set_link(&self, link: Option<Arc<dyn Link>>) {
        if let Ok(mut slot) = self.link.write() {
            *slot = link;
        }
    }

    /// Whether the call with this upstream id still waits for its reply.
    pub(crate) fn in_flight(&self, id: u64) -> bool {
        self.pending().contains_key(&id)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; the map itself is still usable.
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Routes one message the server sent. `related` is the id of our request
    /// whose HTTP response stream carried it, when the transport knows.
    pub(crate) async fn dispatch(&self, message: Value, related: Option<u64>) {
        match protocol::classify(&message) {
            Some(Kind::Response | Kind::ErrorResponse) => {
                let Some(id) = message.get("id").and_then(Value::as_u64) else {
                    tracing::debug!(server = %self.name, "response with an id we never sent");
                    return;
                };
                let pending = self.pending().remove(&id);
                match pending {
                    Some(pending) => {
                        // The caller may have given up (timeout, cancellation).
                        let _ = pending.reply.send(Ok(message));
                    }
                    None => tracing::debug!(server = %self.name, id, "late or unknown response"),
                }
            }
            Some(Kind::Request) => {
                if protocol::method(&message) == Some("ping") {
                    let id = message.get("id").cloned().unwrap_or(Value::Null);
                    if let Some(link) = self.current_link() {
                        let _ = link.send(protocol::result(id, json!({}))).await;
                    }
                    return;
                }
                let origin = self.origin_for(related);
                let event = UpstreamEvent::Request {
                    source: self.source(),
                    message,
                    origin,
                };
                let _ = self.events.send(event).await;
            }
            Some(Kind::Notification) => {
                let mut message = message;
                let mut ambiguous = false;
                match protocol::method(&message) {
                    Some("notifications/progress") => {
                        let Some(token) = message
                            .get("params")
                            .and_then(|p| p.get("progressToken"))
                            .and_then(Value::as_u64)
                        else {
                            return;
                        };
                        let restored = {
                            let pending = self.pending();
                            pending
                                .get(&token)
                                .and_then(|p| Some((p.progress_token.clone()?, p.follow.clone())))
                        };
                        let Some((client_token, follow)) = restored else {
                            tracing::debug!(server = %self.name, "progress for a call no longer in flight");
                            return;
                        };
                        message["params"]["progressToken"] = client_token;
                        let _ = follow.send(message).await;
                        return;
                    }
                    // Handled by the proxy itself (lists read again,
                    // subscribers told, the server's request withdrawn).
                    Some(
                        "notifications/tools/list_changed"
                        | "notifications/prompts/list_changed"
                        | "notifications/resources/list_changed"
                        | "notifications/resources/updated"
                        | "notifications/cancelled",
                    ) => {}
                    // Anything else sent while one client session has calls
                    // in flight belongs to that session (to the call whose
                    // response stream carried it, when the transport tells).
                    _ => {
                        let follow = self
                            .call_for(related)
                            .and_then(|id| self.pending().get(&id).map(|p| p.follow.clone()));
                        if let Some(follow) = follow {
                            let _ = follow.send(message).await;
                            return;
                        }
                        // Calls of several sessions in flight, or a call
                        // the transport named that has ended: it could hold
                        // any one client's data, so it goes to none of them.
                        let pending = self.pending();
                        let ended_call = related.is_some_and(|id| !pending.contains_key(&id));
                        ambiguous = ended_call || pending.values().any(|p| p.origin.is_some());
                    }
                }
                let event = UpstreamEvent::Notification {
                    source: self.source(),
                    message,
                    ambiguous,
                };
                let _ = self.events.send(event).await;
            }
            None => tracing::debug!(server = %self.name, "ignored a message that is not JSON-RPC"),
        }
    }

    /// Which client call a server→client message belongs to: the call whose
    /// response stream carried it, or else a call of the only client session
    /// with calls in flight. With several sessions in flight nobody can tell,
    /// and the message is not guessed onto one of them.
    fn call_for(&self, related: Option<u64>) -> Option<u64> {
        let pending = self.pending();
        if let Some(id) = related {
            return pending.get(&id).and_then(|p| p.origin.as_ref()).map(|_| id);
        }
        let mut calls = pending
            .iter()
            .filter_map(|(id, p)| p.origin.as_ref().map(|origin| (*id, origin.session)));
        let (first, session) = calls.next()?;
        calls.all(|(_, other)| other == session).then_some(first)
    }

    fn origin_for(&self, related: Option<u64>) -> Option<Origin> {
        let id = self.call_for(related)?;
        self.pending().get(&id).and_then(|p| p.origin.clone())
    }

    /// Ends a call in flight with an error response of the proxy's own.
    fn fail_call(&self, id: u64, reason: &str) {
        if let Some(pending) = self.pending().remove(&id) {
            let _ = pending.reply.send(Err(reason.to_owned()));
        }
    }

    fn fail_all_pending(&self) {
        // Dropping the senders wakes every waiter with an error.
        self.pending().clear();
    }
}

/// Writes one message to a server's input as a line, and flushes. A write
/// that fails closes the link (`closed`): the server is gone.
pub(crate) async fn write_message<W: tokio::io::AsyncWrite + Unpin>(
    input: &tokio::sync::Mutex<W>,
    message: &Value,
    closed: &CancellationToken,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let line = protocol::encode_line(message);
    let mut input = input.lock().await;
    let written = async {
        input.write_all(&line).await?;
        input.flush().await
    }
    .await;
    written.map_err(|err| {
        closed.cancel();
        format!("cannot write to the server: {err}")
    })
}

/// Reads a server's output, one message per line (each bounded while it is
/// read), and dispatches each in order until the output ends or `closed`
/// fires; then fires `closed`.
pub(crate) async fn read_messages(
    output: impl tokio::io::AsyncRead + Unpin,
    limits: LimitsConfig,
    shared: Arc<Shared>,
    closed: CancellationToken,
) {
    let mut frames = FrameReader::new(
        tokio::io::BufReader::with_capacity(64 * 1024, output),
        limits.max_message_bytes,
    );
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = closed.cancelled() => break,
        };
        match frame {
            Ok(Some(Frame::Line(line))) => match protocol::parse(&line, limits.max_depth) {
                Ok(message) => shared.dispatch(message, None).await,
                Err(err) => {
                    tracing::warn!(server = %shared.name, error = %err, "dropped a message from the server")
                }
            },
            Ok(Some(Frame::Oversize(head))) => {
                tracing::warn!(
                    server = %shared.name,
                    limit = limits.max_message_bytes,
                    "dropped a message from the server: too large"
                );
                let error = protocol::ParseError::TooLarge {
                    limit: limits.max_message_bytes,
                };
                let id = protocol::sniff_id(&head);
                if protocol::sniff_has_method(&head) {
                    // The server's own request: refused to the server, whose
                    // ids are not ours to match against our calls.
                    if let (Some(id), Some(link)) = (id, shared.current_link()) {
                        let refusal = error.to_response(id);
                        let _ = link.send(refusal).await;
                    }
                } else if let Some(id) = id.and_then(|id| id.as_u64()) {
                    // A reply too large to relay still ends its call, at once.
                    let reason = format!("the server's reply was refused: {error}");
                    shared.fail_call(id, &reason);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    closed.cancel();
}

/// A call sent (or about to be sent) to the server. Dropping it before the
/// reply arrives withdraws the call and tells the server it was cancelled.
pub struct PendingCall {
    shared: Arc<Shared>,
    id: u64,
    message: Option<Value>,
    reply: Option<oneshot::Receiver<Result<Value, String>>>,
    follow: Option<mpsc::Receiver<Value>>,
    done: bool,
}

impl PendingCall {
    /// The id the server sees for this call.
    pub fn upstream_id(&self) -> u64 {
        self.id
    }

    /// Sends the call and waits for the server's response message (with the
    /// upstream id still in it).
    pub async fn send_and_wait(self, timeout: Duration) -> Result<Value, UpstreamError> {
        self.send_and_follow(timeout, |_| {}).await
    }

    /// Like [`send_and_wait`](Self::send_and_wait), handing each notification
    /// that belongs to the call (progress with its token restored to the
    /// client's, log messages) to `on_notification` as it comes, all of them
    /// before the reply.
    pub async fn send_and_follow(
        mut self,
        timeout: Duration,
        mut on_notification: impl FnMut(Value),
    ) -> Result<Value, UpstreamError> {
        let server = self.shared.name.to_string();
        let unavailable = |reason: String| UpstreamError::Unavailable {
            server: server.clone(),
            reason,
        };
        // Stopped for idleness just after this call was begun: it starts
        // the server again (the call stays registered meanwhile).
        let link = match self.shared.current_link() {
            Some(link) => Some(link),
            None => match self.shared.wait_running(timeout).await {
                Ok(()) => self.shared.current_link(),
                Err(err) => {
                    self.done = true;
                    self.shared.pending().remove(&self.id);
                    return Err(err);
                }
            },
        };
        let Some(link) = link else {
            self.done = true;
            self.shared.pending().remove(&self.id);
            return Err(unavailable("it is not running".into()));
        };
        let (Some(message), Some(reply)) = (self.message.take(), self.reply.take()) else {
            return Err(unavailable("the call was already sent".into()));
        };
        // A server that stops reading its input must not hold the call (or
        // the writers queued behind it) past the call's timeout.
        let sent = match tokio::time::timeout(timeout, link.send(message)).await {
            Ok(sent) => sent,
            Err(_) => Err(format!(
                "it did not take the call within {}",
                super::humanize(timeout)
            )),
        };
        if let Err(reason) = sent {
            self.done = true;
            self.shared.pending().remove(&self.id);
            return Err(unavailable(reason));
        }
        let mut follow = self.follow.take();
        let reply = async {
            let mut reply = reply;
            loop {
                // Biased: what the server sent before its reply is already
                // queued when the reply arrives, and goes first.
                tokio::select! {
                    biased;
                    Some(message) = async {
                        match follow.as_mut() {
                            Some(follow) => follow.recv().await,
                            None => std::future::pending().await,
                        }
                    } => on_notification(message),
                    reply = &mut reply => return reply,
                }
            }
        };
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(response))) => {
                self.done = true;
                Ok(response)
            }
            Ok(Ok(Err(reason))) => {
                self.done = true;
                Err(UpstreamError::Refused { server, reason })
            }
            Ok(Err(_)) => {
                self.done = true;
                Err(unavailable(
                    "it stopped while the call was in flight".into(),
                ))
            }
            Err(_) => {
                // Drop sends `notifications/cancelled`.
                Err(UpstreamError::Timeout {
                    server,
                    after: timeout,
                })
            }
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self.shared.pending().remove(&self.id).is_some();
        if was_pending && self.message.is_none() {
            // It was sent: tell the server to stop working on it.
            let shared = self.shared.clone();
            let id = self.id;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Some(link) = shared.current_link() {
                        let cancel = protocol::notification(
                            "notifications/cancelled",
                            json!({ "requestId": id, "reason": "cancelled by the proxy" }),
                        );
                        // A server that stops reading its input does not
                        // keep this task.
                        let _ = tokio::time::timeout(SEND_WAIT, link.send(cancel)).await;
                    }
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Shutdown,
    Idle,
}

/// Portcullis's client toward one MCP server.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
    policy: RunPolicy,
    config: Arc<ServerConfig>,
    limits: LimitsConfig,
    startup_timeout: Duration,
    status: watch::Receiver<Status>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .finish()
    }
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server that ran this long before dying restarts from the shortest backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

impl Upstream {
    /// The server's own instance; `instance` names the client of a
    /// per-client instance.
    pub fn new(
        config: Arc<ServerConfig>,
        instance: Option<Arc<str>>,
        limits: LimitsConfig,
        startup_timeout: Duration,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Self {
        let policy = RunPolicy::of(&config);
        let initial = if policy.lazy {
            Status::Idle(None)
        } else {
            Status::Starting
        };
        let (status_tx, status) = watch::channel(initial);
        let shared = Arc::new(Shared {
            name: Arc::from(config.name.as_str()),
            instance,
            link: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events,
            status: status_tx,
            restarts: AtomicU64::new(0),
            wanted: std::sync::atomic::AtomicBool::new(!policy.lazy),
            wake: tokio::sync::Notify::new(),
            last_used_ms: AtomicU64::new(0),
            held: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
        });
        Self {
            shared,
            policy,
            config,
            limits,
            startup_timeout,
            status,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The config, shared: per-client instances run the same one.
    pub fn config_handle(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Starts the supervisor, which keeps the server running until `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.supervise(shutdown).await })
    }

    /// Waits until the start attempt under way (if any) settled: ready,
    /// failed, or idle.
    pub async fn wait_settled(&self) -> Status {
        let mut status = self.status.clone();
        loop {
            let current = status.borrow_and_update().clone();
            if current != Status::Starting {
                return current;
            }
            if status.changed().await.is_err() {
                return Status::Stopped;
            }
        }
    }

    /// Keeps the server from being stopped for idleness while `held` (it
    /// holds state a client relies on, such as resource subscriptions).
    pub fn hold(&self, held: bool) {
        self.shared.held.store(held, Ordering::SeqCst);
    }

    /// Starts the server if it is idle and waits (up to `timeout`) until it
    /// is ready: the cold start of a call to a stopped server.
    pub async fn ensure_running(&self, timeout: Duration) -> Result<(), UpstreamError> {
        self.shared.wait_running(timeout).await
    }

    /// Resolves once the server has been idle (no call for `idle_timeout`,
    /// none in flight); never, without an idle timeout.
    async fn idle(&self) {
        let Some(timeout) = self.policy.idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let idle_for = self.shared.idle_for();
            if idle_for >= timeout
                && self.shared.pending().is_empty()
                && !self.shared.held.load(Ordering::SeqCst)
            {
                return;
            }
            let left = timeout
                .saturating_sub(idle_for)
                .max(Duration::from_millis(100));
            tokio::time::sleep(left).await;
        }
    }

    /// Prepares a request for the server: gives it a fresh id and, if it asks
    /// for progress, a fresh progress token; the originals stay with the call.
    pub fn begin(&self, mut message: Value, origin: Option<Origin>) -> PendingCall {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if origin.is_some() {
            self.shared.touch();
        }
        message["id"] = Value::from(id);
        let client_token = match message
            .get_mut("params")
            .and_then(|params| params.get_mut("_meta"))
            .and_then(|meta| meta.get_mut("progressToken"))
        {
            // The upstream id doubles as the progress token: unique per connection.
            Some(token) => Some(std::mem::replace(token, Value::from(id))),
            None => None,
        };
        let (follow_tx, follow_rx) = mpsc::channel(FOLLOW_CAP);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.shared.pending().insert(
            id,
            Pending {
                reply: reply_tx,
                origin,
                progress_token: client_token,
                follow: follow_tx,
            },
        );
        PendingCall {
            shared: self.shared.clone(),
            id,
            message: Some(message),
            reply: Some(reply_rx),
            follow: Some(follow_rx),
            done: false,
        }
    }

    /// A request of the proxy's own (lists, handshake), with the call timeout.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, UpstreamError> {
        let call = self.begin(protocol::request(Value::Null, method, params), None);
        let response = call.send_and_wait(self.config.call_timeout).await?;
        match response.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(UpstreamError::Unavailable {
                server: self.shared.name.to_string(),
                reason: format!(
                    "`{method}` failed: {}",
                    response
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no result")
                ),
            }),
        }
    }

    /// Sends a notification, or a response to a server→client request.
    pub async fn send(&self, message: Value) -> Result<(), UpstreamError> {
        self.send_within(message, SEND_WAIT).await
    }

    /// Like [`send`](Self::send), waiting at most `wait` for the server.
    async fn send_within(&self, message: Value, wait: Duration) -> Result<(), UpstreamError> {
        let unavailable = |reason: String| UpstreamError::Unavailable {
            server: self.shared.name.to_string(),
            reason,
        };
        let link = self
            .shared
            .current_link()
            .ok_or_else(|| unavailable("it is not running".into()))?;
        // A server that stops reading its input (or a remote one that
        // never answers the POST) holds the sender no longer than this.
        match tokio::time::timeout(wait, link.send(message)).await {
            Ok(sent) => sent.map_err(unavailable),
            Err(_) => Err(unavailable(format!(
                "it did not take the message within {}",
                super::humanize(wait)
            ))),
        }
    }

    async fn connect(&self) -> Result<Connected, UpstreamError> {
        let name = self.shared.name.to_string();
        let secrets = self
            .config
            .secrets
            .iter()
            .map(|(key, reference)| {
                reference
                    .resolve()
                    .map(|value| (key.clone(), value))
                    .map_err(|reason| UpstreamError::Start {
                        server: name.clone(),
                        reason: format!("secret `{key}`: {reason}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        match &self.config.kind {
            UpstreamSpec::Process(spec) => {
                process::spawn(spec, &secrets, self.limits, self.shared.clone()).await
            }
            UpstreamSpec::Remote(spec) => {
                remote::open(spec, &secrets, self.limits, self.shared.clone()).await
            }
            UpstreamSpec::Container(spec) => {
                container::spawn(
                    spec,
                    &secrets,
                    self.limits,
                    self.shared.clone(),
                    self.restarts(),
                )
                .await
            }
        }
    }

    async fn handshake(&self) -> Result<Value, UpstreamError> {
        let handshake_error = |reason: String| UpstreamError::Handshake {
            server: self.shared.name.to_string(),
            reason,
        };
        let params = json!({
            "protocolVersion": protocol::LATEST_VERSION,
            "capabilities": {
                "sampling": {},
                "elicitation": {},
                "roots": { "listChanged": true }
            },
            "clientInfo": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") }
        });
        let call = self.begin(protocol::request(Value::Null, "initialize", params), None);
        let response = call
            .send_and_wait(self.startup_timeout)
            .await
            .map_err(|err| handshake_error(err.to_string()))?;
        let Some(result) = response.get("result") else {
            return Err(handshake_error(
                response
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no result")
                    .to_owned(),
            ));
        };
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let known = rmcp::model::ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .any(|known| known.as_str() == version && known.has_initialize());
        if !known {
            return Err(handshake_error(format!(
                "it answered with protocol version `{version}`, which Portcullis does not speak"
            )));
        }
        if let Some(link) = self.shared.current_link() {
            link.set_protocol_version(version);
        }
        // Part of the handshake: as long as a call may take.
        self.send_within(
            protocol::notification("notifications/initialized", json!({})),
            self.config.call_timeout,
        )
        .await?;
        Ok(result.clone())
    }

    async fn supervise(self, shutdown: CancellationToken) {
        let name = self.shared.name.clone();
        let mut backoff = BACKOFF_START;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.shared.wanted.load(Ordering::SeqCst) {
                // Lazy and not used yet, or stopped after being idle: keep
                // what it said of itself, and wait for the next use.
                let last = self.status().info();
                self.shared.status.send_replace(Status::Idle(last));
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            self.shared.status.send_replace(Status::Starting);
            let started = Instant::now();
            let attempt = async {
                let connected = self.connect().await?;
                self.shared.set_link(Some(connected.link.clone()));
                let handshake = tokio::select! {
                    result = self.handshake() => result,
                    () = connected.closed.cancelled() => Err(UpstreamError::Start {
                        server: name.to_string(),
                        reason: "it exited during the handshake".into(),
                    }),
                };
                match handshake {
                    Ok(info) => Ok((connected, info)),
                    Err(err) => {
                        connected.link.close().await;
                        Err(err)
                    }
                }
            };
            let attempt = tokio::select! {
                attempt = attempt => attempt,
                () = shutdown.cancelled() => break,
            };
            match attempt {
                Ok((connected, info)) => {
                    let info = Arc::new(info);
                    tracing::info!(server = %name, "server ready");
                    // The idle clock starts when it is ready, not when it
                    // was asked for: a slow start is not idleness.
                    self.shared.touch();
                    self.shared.status.send_replace(Status::Ready(info.clone()));
                    let _ = self
                        .shared
                        .events
                        .send(UpstreamEvent::Ready {
                            source: self.shared.source(),
                            took: started.elapsed(),
                        })
                        .await;
                    let ended = loop {
                        let ended = tokio::select! {
                            () = connected.closed.cancelled() => Ended::Closed,
                            () = shutdown.cancelled() => Ended::Shutdown,
                            () = self.idle() => Ended::Idle,
                        };
                        if ended != Ended::Idle {
                            break ended;
                        }
                        // Decided under the lock that registers calls: a call
                        // begun from here on finds the server idle and starts
                        // it again, and none is cut off.
                        let pending = self.shared.pending();
                        if pending.is_empty() && !self.shared.held.load(Ordering::SeqCst) {
                            self.shared.wanted.store(false, Ordering::SeqCst);
                            self.shared.set_link(None);
                            self.shared
                                .status
                                .send_replace(Status::Idle(Some(info.clone())));
                            break Ended::Idle;
                        }
                    };
                    // A Ctrl-C in a terminal reaches the server too, and it
                    // may exit just before the proxy starts shutting down.
                    let ended = if shutdown.is_cancelled() {
                        Ended::Shutdown
                    } else {
                        ended
                    };
                    if ended == Ended::Idle {
                        // Its lists stay with the gateway; calls that came
                        // since the decision wait for the next start.
                        tracing::info!(server = %name, idle_for = ?self.shared.idle_for(), "stopping the server: idle");
                        connected.link.close().await;
                        let _ = self
                            .shared
                            .events
                            .send(UpstreamEvent::Stopped {
                                source: self.shared.source(),
                                reason: "idle".into(),
                            })
                            .await;
                        backoff = BACKOFF_START;
                        continue;
                    }
                    // Unlinked first: a call from now on fails fast instead
                    // of writing to a server on its way out.
                    self.shared.set_link(None);
                    connected.link.close().await;
                    self.shared.fail_all_pending();
                    if ended == Ended::Shutdown {
                        break;
                    }
                    let reason = "the server exited or its connection closed".to_owned();
                    tracing::warn!(server = %name, "{reason}; restarting");
                    self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .status
                        .send_replace(Status::Down(reason.clone()));
                    let _ = self
                        .shared
                        .events
                        .send(UpstreamEvent::Down {
                            source: self.shared.source(),
                            reason,
                        })
                        .await;
                    if started.elapsed() > STABLE_AFTER {
                        backoff = BACKOFF_START;
                    }
                }
                Err(err) => {
                    self.shared.set_link(None);
                    self.shared.fail_all_pending();
                    tracing::warn!(server = %name, error = %err, retry_in_ms = backoff.as_millis() as u64, "server failed to start");
                    self.shared
                        .status
                        .send_replace(Status::Down(err.to_string()));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        if let Some(link) = self.shared.current_link() {
            link.close().await;
        }
        self.shared.set_link(None);
        self.shared.fail_all_pending();
        self.shared.status.send_replace(Status::Stopped);
    }
}
