//! The supervisor of one server: starts it (a link, then the `initialize`
//! handshake), restarts it with backoff when it dies, and stops it once it
//! has been idle for its idle timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::calls::{Shared, proxy_envelope};
use super::era::Era;
use super::events::{Status, UpstreamEvent};
use super::link::{Connected, Connector};
use crate::protocol;

pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server that ran this long before dying restarts from the shortest backoff.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long one listen stream to a 2026-07-28 server may stay open before
/// it is asked again.
const LISTEN_FOR: Duration = Duration::from_secs(24 * 3600);
/// The wait before a listen stream the server ended or refused is asked
/// again, doubled up to the next while it keeps refusing.
const LISTEN_AGAIN_AFTER: Duration = Duration::from_secs(1);
const LISTEN_AGAIN_AT_MOST: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Shutdown,
    Idle,
}

/// Keeps one server running until shutdown: the task
/// [`Upstream::start`](super::Upstream::start) spawns.
pub(super) struct Supervisor {
    pub(super) shared: Arc<Shared>,
    pub(super) connector: Arc<dyn Connector>,
    /// Stops the server after this long without a call; never, if `None`.
    pub(super) idle_timeout: Option<Duration>,
    /// How long the handshake may take.
    pub(super) startup_timeout: Duration,
    pub(super) call_timeout: Duration,
}

impl Supervisor {
    /// Waits until a call wants the server (a wake-up left over from
    /// before is not one); `false` at shutdown.
    async fn until_wanted(&self, shutdown: &CancellationToken) -> bool {
        while !self.shared.wanted.load(Ordering::SeqCst) {
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = shutdown.cancelled() => return false,
            }
        }
        true
    }

    pub(super) async fn run(self, shutdown: CancellationToken) {
        let name = self.shared.name.clone();
        let mut backoff = BACKOFF_START;
        // The reason of the last failed start recorded (see below).
        let mut last_reported: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.shared.wanted.load(Ordering::SeqCst) {
                // Lazy and not used yet, or stopped after being idle: keep
                // what it said of itself, and wait for the next use.
                let last = self.shared.status.borrow().info();
                self.shared.status.send_replace(Status::Idle(last));
                tokio::select! {
                    () = self.shared.wake.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            // What an earlier start told is not this one's to tell.
            *self.shared.told.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.shared.status.send_replace(Status::Starting);
            let started = Instant::now();
            let attempt = tokio::select! {
                attempt = self.start_once() => attempt,
                () = shutdown.cancelled() => break,
            };
            match attempt {
                Ok((connected, info)) => {
                    match self.serve(connected, info, started, &shutdown).await {
                        Ended::Idle => {
                            backoff = BACKOFF_START;
                            continue;
                        }
                        Ended::Shutdown => break,
                        Ended::Closed => {
                            if started.elapsed() > STABLE_AFTER {
                                backoff = BACKOFF_START;
                            }
                        }
                    }
                }
                Err(err)
                    if self.shared.instance.is_some()
                        || matches!(err, UpstreamError::NeedsClient { .. }) =>
                {
                    // A client's own instance (a per-client container, a
                    // connection that acts as the user) serves that client
                    // alone: down until its next call, not started again
                    // and again for nobody (nor, for a connection acting as
                    // the user, exchanging a token in a loop).
                    tracing::warn!(server = %name, error = %err, "a client's instance not started; tried again at the client's next call");
                    // What the client can do about a missing token is
                    // its to know (the engine's words for other failures
                    // stay in the log).
                    // Anything else clears what an earlier start told (a
                    // link to sign in, dead since).
                    *self.shared.told.lock().unwrap_or_else(|p| p.into_inner()) = match &err {
                        UpstreamError::NeedsClient { reason, told, .. } => {
                            Some(told.clone().unwrap_or_else(|| super::Told {
                                text: reason.clone(),
                                link: None,
                            }))
                        }
                        _ => None,
                    };
                    self.report_failed_start(&err).await;
                    self.shared.set_link(None);
                    self.shared.wanted.store(false, Ordering::SeqCst);
                    self.shared.fail_all_pending();
                    self.shared
                        .status
                        .send_replace(Status::Down(err.to_string()));
                    backoff = BACKOFF_START;
                    if !self.until_wanted(&shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(err) => {
                    self.shared.set_link(None);
                    self.shared.fail_all_pending();
                    tracing::warn!(server = %name, error = %err, retry_in_ms = backoff.as_millis() as u64, "server failed to start");
                    // Recorded at the first failure of a run, and whenever
                    // the reason changes (a harmless failure first does not
                    // hide a refused image after it); not at each retry.
                    let reason = err.to_string();
                    if backoff == BACKOFF_START || last_reported.as_deref() != Some(reason.as_str())
                    {
                        self.report_failed_start(&err).await;
                        last_reported = Some(reason);
                    }
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

    /// Tells the gateway (which records it as `server_down`) why a start
    /// failed: an image refused (its signature, its pin), a command that
    /// exits, a handshake that never comes.
    async fn report_failed_start(&self, err: &UpstreamError) {
        let _ = self
            .shared
            .events
            .send(UpstreamEvent::Down {
                source: self.shared.source(),
                reason: err.to_string(),
            })
            .await;
    }

    /// Opens a link and does the handshake on it; a link whose handshake
    /// fails is closed.
    async fn start_once(&self) -> Result<(Connected, Value), UpstreamError> {
        let restarts = self.shared.restarts.load(Ordering::Relaxed);
        let connected = self
            .connector
            .connect(self.shared.clone(), restarts)
            .await?;
        self.shared.set_link(Some(connected.link.clone()));
        let handshake = tokio::select! {
            result = self.handshake() => result,
            () = connected.closed.cancelled() => {
                self.shared.era.exited_during_start();
                Err(UpstreamError::Start {
                    server: self.shared.name.to_string(),
                    reason: "it exited during the handshake".into(),
                })
            }
        };
        match handshake {
            Ok(info) => Ok((connected, info)),
            Err(err) => {
                connected.link.close().await;
                Err(err)
            }
        }
    }

    /// The start in the server's revision ([`super::era`]): what it said
    /// about itself, as an `initialize` result.
    async fn handshake(&self) -> Result<Value, UpstreamError> {
        match self.shared.era.get() {
            Era::Stateless => {
                let answer = self.ask_discover().await?;
                self.discovered(&answer)
                    .map_err(|reason| self.start_error(reason))
            }
            Era::Handshake => self.initialize().await,
            Era::HandshakeNext => {
                let started = self.initialize().await;
                self.shared.era.learn(match started {
                    Ok(_) => Era::Handshake,
                    Err(_) => Era::Unknown,
                });
                started
            }
            Era::Unknown => self.probe().await,
        }
    }

    /// `protocol = "auto"`, not known yet: `server/discover`, and the
    /// handshake on the same link if the server does not answer it as a
    /// 2026-07-28 server.
    async fn probe(&self) -> Result<Value, UpstreamError> {
        let why_not = match self.ask_discover().await {
            Ok(answer) => match self.discovered(&answer) {
                Ok(info) => {
                    self.shared.era.learn(Era::Stateless);
                    tracing::info!(server = %self.shared.name, "it speaks 2026-07-28 (server/discover)");
                    return Ok(info);
                }
                Err(reason) => reason,
            },
            Err(unanswered) => unanswered.to_string(),
        };
        tracing::info!(server = %self.shared.name, reason = %why_not, "not a 2026-07-28 server: the handshake instead");
        let started = self.initialize().await;
        self.shared.era.learn(match started {
            Ok(_) => Era::Handshake,
            Err(_) => Era::HandshakeNext,
        });
        started
    }

    fn start_error(&self, reason: String) -> UpstreamError {
        UpstreamError::Handshake {
            server: self.shared.name.to_string(),
            reason,
        }
    }

    /// The `initialize` handshake, offering the latest handshake revision.
    async fn initialize(&self) -> Result<Value, UpstreamError> {
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
        let call = self.shared.begin(
            protocol::request(Value::Null, protocol::Method::Initialize.as_str(), params),
            None,
        );
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
        self.shared
            .send_within(
                protocol::notification(protocol::Method::Initialized.as_str(), json!({})),
                self.call_timeout,
            )
            .await?;
        Ok(result.clone())
    }

    /// `server/discover`, sent with the proxy's envelope (as every request
    /// to a 2026-07-28 server): its answer.
    async fn ask_discover(&self) -> Result<Value, UpstreamError> {
        let mut request = protocol::request(
            Value::Null,
            protocol::Method::ServerDiscover.as_str(),
            json!({}),
        );
        protocol::put_envelope(&mut request, &proxy_envelope());
        self.shared
            .begin(request, None)
            .send_and_wait(self.startup_timeout)
            .await
            .map_err(|err| self.start_error(err.to_string()))
    }

    /// A 2026-07-28 server's start: its answer to `server/discover` says it
    /// speaks that revision and what it offers. What it said stands for the
    /// `initialize` result of a handshake server: its capabilities and who
    /// it is, under the version spoken. Otherwise, why it is not one.
    fn discovered(&self, response: &Value) -> Result<Value, String> {
        let Some(result) = response.get("result") else {
            let said = response
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no result");
            return Err(format!(
                "server/discover failed ({}): is it a 2026-07-28 server?",
                protocol::cut(said, 200)
            ));
        };
        let speaks = result
            .get("supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|versions| versions.iter().any(|v| v == protocol::MODERN_VERSION));
        if !speaks {
            return Err(format!(
                "its server/discover does not list {}: set `protocol = \"2025-11-25\"` for it",
                protocol::MODERN_VERSION
            ));
        }
        let server_info = result
            .get("serverInfo")
            .or_else(|| result.get("_meta")?.get(protocol::meta::SERVER_INFO))
            .cloned()
            .unwrap_or_else(|| json!({ "name": self.shared.name.to_string(), "version": "" }));
        let mut info = serde_json::Map::new();
        info.insert(
            "protocolVersion".into(),
            Value::from(protocol::MODERN_VERSION),
        );
        info.insert(
            "capabilities".into(),
            result
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
        );
        info.insert("serverInfo".into(), server_info);
        if let Some(instructions) = result.get("instructions") {
            info.insert("instructions".into(), instructions.clone());
        }
        if let Some(link) = self.shared.current_link() {
            link.set_protocol_version(protocol::MODERN_VERSION);
        }
        Ok(Value::Object(info))
    }

    /// Runs a started server until its link closes, the proxy shuts down or
    /// it has been idle, and does what each end asks for.
    async fn serve(
        &self,
        connected: Connected,
        info: Value,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> Ended {
        let name = &self.shared.name;
        let info = Arc::new(info);
        tracing::info!(server = %name, "server ready");
        // The idle clock starts when it is ready, not when it was asked
        // for: a slow start is not idleness.
        self.shared.touch();
        *self.shared.told.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.status.send_replace(Status::Ready(info.clone()));
        let _ = self
            .shared
            .events
            .send(UpstreamEvent::Ready {
                source: self.shared.source(),
                took: started.elapsed(),
            })
            .await;
        let ended = self.wait_for_end(&connected, &info, shutdown).await;
        // A Ctrl-C in a terminal reaches the server too, and it may exit
        // just before the proxy starts shutting down.
        let ended = if shutdown.is_cancelled() {
            Ended::Shutdown
        } else {
            ended
        };
        if ended == Ended::Idle {
            // Its lists stay with the gateway; calls that came since the
            // decision wait for the next start.
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
            return ended;
        }
        // Unlinked first: a call from now on fails fast instead of writing
        // to a server on its way out.
        self.shared.set_link(None);
        connected.link.close().await;
        self.shared.fail_all_pending();
        if ended == Ended::Shutdown {
            return ended;
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
        ended
    }

    /// Waits until the server's link closes, the proxy shuts down, or the
    /// server is idle; once idle, it is unlinked (and no longer wanted)
    /// before this returns.
    async fn wait_for_end(
        &self,
        connected: &Connected,
        info: &Arc<Value>,
        shutdown: &CancellationToken,
    ) -> Ended {
        // A 2026-07-28 server's list changes and resource updates come on
        // the proxy's listen stream, held as long as it runs.
        let listening = async {
            if self.shared.era.stateless() {
                self.keep_listening(info).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(listening);
        loop {
            let ended = tokio::select! {
                () = connected.closed.cancelled() => Ended::Closed,
                () = shutdown.cancelled() => Ended::Shutdown,
                () = self.idle() => Ended::Idle,
                () = &mut listening => Ended::Closed,
            };
            if ended != Ended::Idle {
                return ended;
            }
            // Decided under the lock that registers calls: a call begun
            // from here on finds the server idle and starts it again, and
            // none is cut off.
            let pending = self.shared.pending();
            if self.shared.no_calls(&pending) && !self.shared.held.load(Ordering::SeqCst) {
                self.shared.wanted.store(false, Ordering::SeqCst);
                self.shared.set_link(None);
                self.shared
                    .status
                    .send_replace(Status::Idle(Some(info.clone())));
                return Ended::Idle;
            }
        }
    }

    /// Holds the proxy's listen stream to a started 2026-07-28 server
    /// (`info`: what it said of itself) while it runs, asked again at each
    /// change of the subscriptions ([`super::listen`]): never returns.
    async fn keep_listening(&self, info: &Value) {
        let listening = &self.shared.listening;
        listening.restart();
        let mut again = LISTEN_AGAIN_AFTER;
        let heard = std::sync::atomic::AtomicBool::new(false);
        loop {
            let changed = listening.changes();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (asked, filter) = listening.to_ask(info);
            if filter.is_empty() {
                // Nothing to listen for: every subscription asked is refused.
                listening.settle(asked, Some(Default::default()));
                changed.await;
                continue;
            }
            let params = json!({ "notifications": filter });
            let call = self.shared.begin(
                protocol::request(
                    Value::Null,
                    protocol::Method::SubscriptionsListen.as_str(),
                    params,
                ),
                None,
            );
            listening.id.store(call.upstream_id(), Ordering::Release);
            let acknowledge = |message: Value| {
                if listening.acknowledgement(asked, &message) {
                    heard.store(true, Ordering::Relaxed);
                }
            };
            let opened = Instant::now();
            let ended = tokio::select! {
                ended = call.send_and_follow(LISTEN_FOR, acknowledge) => ended,
                // Dropping the call cancels it at the server.
                () = &mut changed => {
                    again = LISTEN_AGAIN_AFTER;
                    continue;
                }
            };
            listening.id.store(0, Ordering::Release);
            // Refused before it was acknowledged: the subscriptions waiting
            // are refused too (one acknowledged stays the answer).
            if !heard.swap(false, Ordering::Relaxed) {
                listening.settle(asked, None);
            }
            let said = match &ended {
                Ok(reply) => reply
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("it ended the stream")
                    .to_owned(),
                Err(err) => err.to_string(),
            };
            tracing::debug!(server = %self.shared.name, reason = %protocol::cut(&said, 200), "listen stream ended; asking again");
            // Only a stream that lasted starts the wait over: a server
            // that ends each stream at once is asked ever more rarely.
            if opened.elapsed() >= STABLE_AFTER {
                again = LISTEN_AGAIN_AFTER;
            }
            tokio::select! {
                () = tokio::time::sleep(again) => {}
                () = &mut changed => {}
            }
            again = (again * 2).min(LISTEN_AGAIN_AT_MOST);
        }
    }

    /// Resolves once the server has been idle (no call for `idle_timeout`,
    /// none in flight); never, without an idle timeout.
    async fn idle(&self) {
        let Some(timeout) = self.idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let idle_for = self.shared.idle_for();
            if idle_for >= timeout
                && self.shared.no_calls(&self.shared.pending())
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
}
