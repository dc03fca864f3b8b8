//! The calls in flight to one server: the state its client shares with its
//! supervisor and its link's reader (the table of calls, the link in use,
//! the status), and [`PendingCall`], one call from the caller's side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::UpstreamError;
use super::events::{Origin, Source, Status, UpstreamEvent};
use super::link::{Link, LinkError};
use crate::protocol::{self, At};

pub(super) struct Pending {
    /// The server's reply, or why the proxy refused it (too large).
    pub(super) reply: oneshot::Sender<Result<Value, String>>,
    pub(super) origin: Option<Origin>,
    /// The client's progress token, if it asked for progress.
    pub(super) progress_token: Option<Value>,
    /// Where the call's own notifications (progress, log messages) go: to
    /// the task that waits for the reply, so that none can be overtaken by
    /// the reply it precedes. Bounded ([`FOLLOW_CAP`]).
    pub(super) follow: mpsc::Sender<(Value, protocol::Held)>,
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
pub(super) const SEND_WAIT: Duration = Duration::from_secs(10);

/// What the proxy says of itself to a 2026-07-28 server in each request's
/// `params._meta`: the version, no client capabilities (a client's call
/// that can take rounds is sent with its client's instead:
/// [`PendingCall::in_round`]), and its name.
pub(super) fn proxy_envelope() -> serde_json::Map<String, Value> {
    let mut envelope = serde_json::Map::new();
    envelope.insert(
        protocol::meta::PROTOCOL_VERSION.into(),
        Value::from(protocol::MODERN_VERSION),
    );
    envelope.insert(protocol::meta::CLIENT_CAPABILITIES.into(), json!({}));
    envelope.insert(
        protocol::meta::CLIENT_INFO.into(),
        json!({ "name": "portcullis", "version": env!("CARGO_PKG_VERSION") }),
    );
    envelope
}

/// What the client of one server shares with its supervisor, its calls and
/// its link's reader.
pub(crate) struct Shared {
    pub(super) name: Arc<str>,
    /// The client this instance serves alone (per-client isolation).
    pub(super) instance: Option<Arc<str>>,
    pub(super) link: RwLock<Option<Arc<dyn Link>>>,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    pub(super) next_id: AtomicU64,
    pub(super) events: mpsc::Sender<UpstreamEvent>,
    pub(super) status: watch::Sender<Status>,
    pub(super) restarts: AtomicU64,
    /// Whether the server should be running (always, for an eager server).
    pub(super) wanted: AtomicBool,
    pub(super) wake: tokio::sync::Notify,
    /// When it was last used, in ms since `epoch`.
    pub(super) last_used_ms: AtomicU64,
    /// Held running (by resource subscriptions, which live in the server).
    pub(super) held: AtomicBool,
    /// The revision it is spoken to in, as configured or as learned
    /// ([`super::era`]): in 2026-07-28 every request carries the envelope.
    pub(super) era: super::era::Remembered,
    /// The proxy's listen stream to it, when it speaks 2026-07-28.
    pub(super) listening: super::listen::Listening,
    /// What it sent that waits to be passed on (its calls' notifications,
    /// its events), in bytes held: past it, reading it waits.
    pub(super) queued: protocol::ByteBudget,
    pub(super) epoch: Instant,
    /// Why a client's instance is down, in words for that client (it has
    /// no token for its user: what it can do about it), while it is.
    pub(super) told: Mutex<Option<super::Told>>,
}

impl Shared {
    /// `wanted`: whether the server should run from the start (an eager one).
    pub(super) fn new(
        name: Arc<str>,
        instance: Option<Arc<str>>,
        events: mpsc::Sender<UpstreamEvent>,
        status: watch::Sender<Status>,
        (wanted, queued): (bool, usize),
    ) -> Self {
        Self {
            name,
            instance,
            link: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events,
            status,
            restarts: AtomicU64::new(0),
            wanted: AtomicBool::new(wanted),
            wake: tokio::sync::Notify::new(),
            last_used_ms: AtomicU64::new(0),
            held: AtomicBool::new(false),
            era: super::era::Remembered::default(),
            queued: protocol::ByteBudget::new(queued),
            listening: super::listen::Listening::default(),
            epoch: Instant::now(),
            told: Mutex::new(None),
        }
    }

    /// Why a stopped server takes no call: the proxy stops, or (a client's
    /// own instance) this client's connection was let go, and its next
    /// call opens another.
    fn stopped(&self) -> &'static str {
        if self.instance.is_some() {
            "this client's connection to it closed: call again"
        } else {
            "the proxy is shutting down"
        }
    }

    /// Starts the server if it is idle and waits (up to `timeout`) until it
    /// is ready.
    pub(super) async fn wait_running(&self, timeout: Duration) -> Result<(), UpstreamError> {
        if matches!(*self.status.borrow(), Status::Ready(_)) {
            return Ok(());
        }
        let server = self.name.to_string();
        let mut status = self.status.subscribe();
        let woke = self.want();
        let ready = async {
            // Down and not wanted (a client's instance left until the
            // client's next call): that was before; its start says anew.
            if woke
                && matches!(*status.borrow(), Status::Down(_))
                && status.changed().await.is_err()
            {
                return Err(UpstreamError::Unavailable {
                    server: server.clone(),
                    reason: "the proxy is shutting down".into(),
                });
            }
            loop {
                match status.borrow_and_update().clone() {
                    Status::Ready(_) => return Ok(()),
                    // The reason stays in the proxy's log: it can name host
                    // paths and the engine's own words.
                    Status::Down(_) => return Err(self.down(&server)),
                    // A client's own instance let go just after a start that
                    // failed with words for the client (a sign-in needed):
                    // those words, not the letting go (which only raced them).
                    Status::Stopped
                        if self.instance.is_some()
                            && self
                                .told
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .is_some() =>
                    {
                        return Err(self.down(&server));
                    }
                    Status::Stopped => {
                        return Err(UpstreamError::Unavailable {
                            server: server.clone(),
                            reason: self.stopped().into(),
                        });
                    }
                    // Idle again (stopped just as we asked): ask once more.
                    Status::Idle(_) => {
                        self.want();
                    }
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

    /// Why a server that is down takes no call: what its last start told
    /// the client (a link to sign in, where there is one), else that it
    /// failed (the reason stays in the proxy's log: it can name host paths
    /// and the engine's own words).
    fn down(&self, server: &str) -> UpstreamError {
        let server = server.to_owned();
        let told = self.told.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match told {
            Some(super::Told {
                text,
                link: Some(link),
            }) => UpstreamError::SignInNeeded {
                server,
                told: text,
                link,
            },
            told => UpstreamError::Unavailable {
                server,
                reason: told.map_or_else(
                    || "it failed to start or exited (the proxy's log says why)".into(),
                    |told| told.text,
                ),
            },
        }
    }

    /// Asks for the server to run; whether it was not wanted until now.
    pub(super) fn want(&self) -> bool {
        self.touch();
        let woke = !self.wanted.swap(true, Ordering::SeqCst);
        if woke {
            self.wake.notify_one();
        }
        woke
    }

    pub(super) fn source(&self) -> Source {
        Source {
            server: self.name.clone(),
            instance: self.instance.clone(),
        }
    }

    pub(super) fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.store(now, Ordering::Relaxed);
    }

    pub(super) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(super) fn current_link(&self) -> Option<Arc<dyn Link>> {
        self.link.read().ok().and_then(|link| link.clone())
    }

    pub(super) fn set_link(&self, link: Option<Arc<dyn Link>>) {
        if let Ok(mut slot) = self.link.write() {
            *slot = link;
        }
    }

    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; the map itself is still usable.
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Ends a call in flight with an error response of the proxy's own.
    pub(super) fn fail_call(&self, id: u64, reason: &str) {
        if let Some(pending) = self.pending().remove(&id) {
            let _ = pending.reply.send(Err(reason.to_owned()));
        }
    }

    pub(super) fn fail_all_pending(&self) {
        // Dropping the senders wakes every waiter with an error.
        self.pending().clear();
    }

    /// Whether no call is in flight but the proxy's listen stream (which
    /// does not keep the server from idling). `pending`: the table, locked.
    pub(super) fn no_calls(&self, pending: &HashMap<u64, Pending>) -> bool {
        let stream = self.listening.id.load(Ordering::Acquire);
        pending.keys().all(|id| *id == stream)
    }

    /// [`Upstream::call`](super::Upstream::call): `call` begun, told what
    /// it carries for the server's revision, sent and followed until its
    /// reply within `timeout`.
    pub(super) fn call<F: FnMut(Value)>(
        self: &Arc<Self>,
        call: Call,
        timeout: Duration,
        follow: F,
    ) -> impl Future<Output = Result<Value, UpstreamError>> + use<F> {
        let Call {
            message,
            origin,
            log_level,
            round,
        } = call;
        let mut pending = self.begin(message, origin).log_level(log_level);
        if let Some(round) = round {
            pending = pending.in_round(round.capabilities, round.answers);
        }
        pending.send_and_follow(timeout, follow)
    }

    /// Prepares a request for the server: gives it a fresh id and, if it asks
    /// for progress, a fresh progress token; the originals stay with the call.
    pub(super) fn begin(
        self: &Arc<Self>,
        mut message: Value,
        origin: Option<Origin>,
    ) -> PendingCall {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if origin.is_some() {
            self.touch();
        }
        message.put(&["id"], Value::from(id));
        if self.era.stateless() {
            // The proxy's envelope, none of a client's protocol keys, and no
            // answers to questions the proxy never relayed: whatever a
            // client put there, the server hears only the proxy.
            protocol::strip_protocol_meta(&mut message);
            // (A task's answers are the client's to a task's questions the
            // gateway showed it, checked there.)
            let answers_a_task =
                protocol::Method::of(&message) == Some(protocol::Method::TasksUpdate);
            if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                if !answers_a_task {
                    params.remove("inputResponses");
                }
                params.remove("requestState");
            }
            protocol::put_envelope(&mut message, &proxy_envelope());
        } else if origin.is_some() {
            // What only 2026-07-28 puts in `_meta` (a version, capabilities):
            // a handshake server is not told it by a client (the proxy's
            // own probe, `server/discover`, carries the proxy's).
            protocol::strip_envelope_keys(&mut message);
        }
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
        self.pending().insert(
            id,
            Pending {
                reply: reply_tx,
                origin,
                progress_token: client_token,
                follow: follow_tx,
            },
        );
        PendingCall {
            shared: self.clone(),
            id,
            message: Some(message),
            reply: Some(reply_rx),
            follow: Some(follow_rx),
            done: false,
        }
    }

    /// Sends a notification, or a response to a server→client request,
    /// waiting at most `wait` for the server to take it.
    pub(super) async fn send_within(
        &self,
        message: Value,
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        let unavailable = |reason: String| UpstreamError::Unavailable {
            server: self.name.to_string(),
            reason,
        };
        let link = self
            .current_link()
            .ok_or_else(|| unavailable("it is not running".into()))?;
        // A server that stops reading its input (or a remote one that
        // never answers the POST) holds the sender no longer than this.
        let sent = match tokio::time::timeout(wait, link.send(message)).await {
            Ok(sent) => sent,
            Err(_) => Err(LinkError::Slow {
                what: "message",
                after: wait,
            }),
        };
        sent.map_err(|error| not_sent(&self.name, error))
    }
}

/// Why a message did not reach `server`: a credential it refused (HTTP
/// 401, 403: it answered), or the server not available.
fn not_sent(server: &str, error: LinkError) -> UpstreamError {
    let reason = error.to_string();
    let server = server.to_owned();
    match error {
        LinkError::Status(status)
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN =>
        {
            UpstreamError::Rejected { server, reason }
        }
        _ => UpstreamError::Unavailable { server, reason },
    }
}

/// A client's request to send to the server with
/// [`Upstream::call`](super::Upstream::call), and what it carries besides
/// the message.
pub struct Call {
    /// The request, under the client's id (the call gives it a fresh one).
    pub message: Value,
    /// The client and request it came from: what the server sends during
    /// the call is theirs.
    pub origin: Option<Origin>,
    /// For a 2026-07-28 server: the least severe log message the client
    /// wants (a server sends none for a request without one).
    pub log_level: Option<protocol::LogLevel>,
    /// For a 2026-07-28 server that asks in rounds or takes tasks.
    pub round: Option<Round>,
}

/// What a 2026-07-28 server is told of a call's round: the client
/// capabilities its envelope declares (instead of none) and, for a retry
/// of an `input_required` call, the `inputResponses` and the server's
/// `requestState`.
pub struct Round {
    pub capabilities: serde_json::Map<String, Value>,
    pub answers: Option<(serde_json::Map<String, Value>, Option<Value>)>,
}

/// A call sent (or about to be sent) to the server. Dropping it before the
/// reply arrives withdraws the call and tells the server it was cancelled.
pub struct PendingCall {
    shared: Arc<Shared>,
    id: u64,
    message: Option<Value>,
    reply: Option<oneshot::Receiver<Result<Value, String>>>,
    follow: Option<mpsc::Receiver<(Value, protocol::Held)>>,
    done: bool,
}

impl PendingCall {
    /// For a 2026-07-28 server, before it is sent: the client capabilities
    /// its envelope declares (`capabilities`, instead of none), and, for a
    /// retry of an `input_required` call, its `inputResponses` and the
    /// server's `requestState`.
    fn in_round(
        mut self,
        capabilities: serde_json::Map<String, Value>,
        answers: Option<(serde_json::Map<String, Value>, Option<Value>)>,
    ) -> Self {
        if let Some(message) = self.message.as_mut()
            && let Some(params) = message.get_mut("params").and_then(Value::as_object_mut)
        {
            if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
                meta.insert(
                    protocol::meta::CLIENT_CAPABILITIES.into(),
                    Value::Object(capabilities),
                );
            }
            if let Some((responses, state)) = answers {
                params.insert("inputResponses".into(), Value::Object(responses));
                if let Some(state) = state {
                    params.insert("requestState".into(), state);
                }
            }
        }
        self
    }

    /// For a 2026-07-28 server, before it is sent: the least severe log
    /// message the calling client wants (`logLevel` in the envelope; a
    /// server sends none for a request without one).
    fn log_level(mut self, level: Option<protocol::LogLevel>) -> Self {
        if let Some(level) = level
            && let Some(meta) = self
                .message
                .as_mut()
                .and_then(|message| message.pointer_mut("/params/_meta"))
                .and_then(Value::as_object_mut)
            && meta.contains_key(protocol::meta::PROTOCOL_VERSION)
        {
            meta.insert(
                protocol::meta::LOG_LEVEL.into(),
                Value::from(level.as_str()),
            );
        }
        self
    }

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
            Err(_) => Err(LinkError::Slow {
                what: "call",
                after: timeout,
            }),
        };
        if let Err(error) = sent {
            self.done = true;
            self.shared.pending().remove(&self.id);
            return Err(not_sent(&server, error));
        }
        let mut follow = self.follow.take();
        let reply = async {
            let mut reply = reply;
            loop {
                // Biased: what the server sent before its reply is already
                // queued when the reply arrives, and goes first.
                tokio::select! {
                    biased;
                    Some((message, held)) = async {
                        match follow.as_mut() {
                            Some(follow) => follow.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        on_notification(message);
                        // Handed on: its share of the budget is given back.
                        drop(held);
                    }
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
                            protocol::Method::Cancelled.as_str(),
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
