//! Portcullis's MCP client toward one server, [`Upstream`]: what the rest
//! of the proxy holds and calls. The calls in flight live in `calls`, the
//! routing of what the server sends in `dispatch`, its lifecycle in
//! `supervisor`, and how it is reached in `link` and the links.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::breaker::{Admitted, Breaker, BreakerState, Next};
use super::calls::{Call, PendingCall, SEND_WAIT, Shared};
use super::connect::ConfigConnector;
use super::events::{Origin, Status, UpstreamEvent};
use super::link::Connector;
use super::supervisor::Supervisor;
use crate::config::{LimitsConfig, ServerConfig, StartPolicy, UpstreamSpec};
use crate::protocol;

/// When a server runs: always, or from its first use until it has been idle
/// for `idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunPolicy {
    lazy: bool,
    idle_timeout: Option<Duration>,
}

/// A lazy server stops after this long without a call unless it says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// What an upstream is built with besides its config: how long it may take
/// to start, and the bytes it may have waiting to be passed on.
struct Starts {
    startup_timeout: Duration,
    queued: usize,
}

impl RunPolicy {
    /// `for_client`: the policy of a client's own instance.
    fn of(config: &ServerConfig, for_client: bool) -> Self {
        match &config.kind {
            // A client's connection to a server that acts as its user
            // (`token_exchange`): opened at its first call, closed when
            // idle, and not retried while the client has no live token.
            UpstreamSpec::Remote(spec)
                if for_client
                    && spec.oauth.as_ref().is_some_and(|oauth| {
                        oauth.grant == crate::config::RemoteGrant::TokenExchange
                    }) =>
            {
                Self {
                    lazy: true,
                    idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                }
            }
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

/// Portcullis's client toward one MCP server.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
    policy: RunPolicy,
    config: Arc<ServerConfig>,
    /// Opens the link at each start: the one the config names, or (in
    /// tests) a scripted one.
    connector: Arc<dyn Connector>,
    startup_timeout: Duration,
    status: watch::Receiver<Status>,
    /// Refuses clients' calls at once while the server keeps failing.
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl Upstream {
    /// The server's own instance; `instance` names the client of a
    /// per-client instance.
    pub fn new(
        config: Arc<ServerConfig>,
        instance: Option<Arc<str>>,
        limits: LimitsConfig,
        startup_timeout: Duration,
        events: mpsc::Sender<UpstreamEvent>,
        tokens: Arc<super::UserTokens>,
    ) -> Self {
        let connector = Arc::new(ConfigConnector {
            config: config.clone(),
            limits,
            tokens,
            containers: Arc::new(super::container::Docker),
        });
        let starts = Starts {
            startup_timeout,
            queued: limits.max_queued_bytes,
        };
        Self::with_connector(config, instance, starts, events, connector)
    }

    /// An upstream whose links come from `connector` instead of the config
    /// (a scripted server: see `upstream::scripted`). The config still says
    /// how it runs (lazy, idle timeout) and its call timeout; the startup
    /// timeout is the proxy's default (30s).
    #[cfg(test)]
    pub(crate) fn for_test(
        config: Arc<ServerConfig>,
        events: mpsc::Sender<UpstreamEvent>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Self::instance_for_test(config, None, events, connector)
    }

    /// [`Upstream::for_test`] for the instance of a client (`instance`) or
    /// of none.
    #[cfg(test)]
    pub(crate) fn instance_for_test(
        config: Arc<ServerConfig>,
        instance: Option<Arc<str>>,
        events: mpsc::Sender<UpstreamEvent>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let starts = Starts {
            startup_timeout: Duration::from_secs(30),
            queued: LimitsConfig::default().max_queued_bytes,
        };
        Self::with_connector(config, instance, starts, events, connector)
    }

    fn with_connector(
        config: Arc<ServerConfig>,
        instance: Option<Arc<str>>,
        Starts {
            startup_timeout,
            queued,
        }: Starts,
        events: mpsc::Sender<UpstreamEvent>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let policy = RunPolicy::of(&config, instance.is_some());
        let initial = if policy.lazy {
            Status::Idle(None)
        } else {
            Status::Starting
        };
        let (status_tx, status) = watch::channel(initial);
        let shared = Shared::new(
            Arc::from(config.name.as_str()),
            instance,
            events,
            status_tx,
            (!policy.lazy, queued),
        );
        shared.era.configure(config.protocol);
        let shared = Arc::new(shared);
        let breaker = Arc::new(Breaker::new(config.breaker));
        Self {
            shared,
            policy,
            config,
            connector,
            startup_timeout,
            status,
            breaker,
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

    /// Whether the server is to run: started, starting, or being
    /// restarted (not idle, and not down until a client's next call).
    pub fn is_wanted(&self) -> bool {
        self.shared.wanted.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Whether it is spoken to in 2026-07-28: configured so, or found so
    /// by `protocol = "auto"` (false until then).
    pub fn speaks_stateless(&self) -> bool {
        self.shared.era.stateless()
    }

    /// Whether the server takes `logging/setLevel`: it said it logs, and
    /// its revision has the method (2026-07-28 has not: a request carries
    /// its level).
    pub fn takes_log_level(&self, info: &Value) -> bool {
        info.pointer("/capabilities/logging").is_some() && !self.speaks_stateless()
    }

    /// Whether the server is told of a client's roots changing (2026-07-28
    /// has no roots to tell a server of).
    pub fn hears_roots(&self) -> bool {
        !self.speaks_stateless()
    }

    /// Whether the server may send requests of its own to a client
    /// (2026-07-28 has none: a server asks in a call's rounds, which the
    /// proxy carries).
    pub fn asks_clients(&self) -> bool {
        !self.speaks_stateless()
    }

    /// Whether the server's revision keeps subscriptions on the proxy's
    /// listen stream to it (2026-07-28 has no `resources/subscribe`): a
    /// client's (un)subscribe is made there, and the stream asks for them
    /// again at each start.
    pub fn subscribes_on_listen(&self) -> bool {
        self.speaks_stateless()
    }

    /// Whether the server may answer a call with `input_required` (its
    /// questions, in rounds the proxy carries to the client): 2026-07-28's.
    pub fn asks_in_rounds(&self) -> bool {
        self.speaks_stateless()
    }

    /// Whether the server may make a call a task (the tasks extension of
    /// 2026-07-28).
    pub fn takes_tasks(&self) -> bool {
        self.speaks_stateless()
    }

    /// Ends the proxy's subscription to `uri` at the server, as its revision
    /// has it: `resources/unsubscribe`, or the URI off the proxy's listen
    /// stream to a 2026-07-28 server.
    pub async fn unsubscribe(&self, uri: &str) -> Result<(), UpstreamError> {
        if self.subscribes_on_listen() {
            return self.listen_change(uri, false).await;
        }
        let asked = self.request(
            protocol::Method::ResourcesUnsubscribe,
            json!({ "uri": uri }),
        );
        asked.await.map(drop)
    }

    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Starts the supervisor, which keeps the server running until `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let supervisor = Supervisor {
            shared: self.shared.clone(),
            connector: self.connector.clone(),
            idle_timeout: self.policy.idle_timeout,
            startup_timeout: self.startup_timeout,
            call_timeout: self.config.call_timeout,
        };
        tokio::spawn(supervisor.run(shutdown))
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

    /// Prepares a request for the server: gives it a fresh id and, if it asks
    /// for progress, a fresh progress token; the originals stay with the call.
    pub fn begin(&self, message: Value, origin: Option<Origin>) -> PendingCall {
        self.shared.begin(message, origin)
    }

    /// A client's call let through by the server's breaker, or refused at
    /// once while the breaker is open ([`UpstreamError::BreakerOpen`]).
    /// Settle it with [`Upstream::settle`].
    pub fn admit(&self) -> Result<Admitted, UpstreamError> {
        self.breaker.admit(&self.shared.name)
    }

    /// How a call [`Upstream::admit`] let through went (`Some`: it failed).
    /// The failures in a row reaching the breaker's threshold, the server
    /// is asked something of the proxy's own, on a task of its own: the
    /// breaker opens only if it does not answer (see `breaker`), and each
    /// change is told to the gateway once, as an [`UpstreamEvent::Breaker`].
    pub fn settle(&self, admitted: Admitted, failed: Option<&UpstreamError>) {
        if let Next::Check { failures, last } = admitted.settle(&self.breaker, failed) {
            tokio::spawn(super::breaker::watch(
                Arc::downgrade(&self.breaker),
                Arc::downgrade(&self.shared),
                self.config.call_timeout,
                (failures, last),
            ));
        }
    }

    /// Whether the server's breaker is open (refusing its calls, or
    /// probing with one).
    pub fn breaker(&self) -> BreakerState {
        self.breaker.current()
    }

    /// A client's request sent to the server and its reply awaited (with
    /// the server's id in it), in one call: begun under a fresh id, told
    /// what `call` carries for the server's revision, written, and
    /// followed until the reply within the call timeout. What the server
    /// sends for the call meanwhile (progress, log messages) goes to
    /// `follow`, all of it before the reply. Dropping the future withdraws
    /// the call and tells the server it was cancelled.
    ///
    /// Begun when called, not when first polled: the future returned is the
    /// call's alone (`PendingCall::send_and_follow`), small, and the
    /// request is not moved through another future's state first (each
    /// move of a future is a copy: `scripts/instructions-per-call.sh`).
    pub fn call<F: FnMut(Value)>(
        &self,
        call: Call,
        follow: F,
    ) -> impl Future<Output = Result<Value, UpstreamError>> + use<F> {
        self.shared.call(call, self.config.call_timeout, follow)
    }

    /// A client's `resources/subscribe` (or, with `subscribe` false,
    /// `unsubscribe`) of `uri` to a 2026-07-28 server: done on the proxy's
    /// listen stream to it ([`super::listen`]), within the call timeout.
    pub async fn listen_change(&self, uri: &str, subscribe: bool) -> Result<(), UpstreamError> {
        // A use of the server, as a call is: it is not stopped for
        // idleness while the subscription waits.
        self.shared.touch();
        let listening = &self.shared.listening;
        if !subscribe {
            listening.unsubscribe(uri);
            return Ok(());
        }
        let timeout = self.config.call_timeout;
        listening.subscribe(&self.shared.name, uri, timeout).await
    }

    /// A request of the proxy's own (lists, handshake), with the call timeout.
    pub async fn request(
        &self,
        method: impl Into<protocol::Method>,
        params: Value,
    ) -> Result<Value, UpstreamError> {
        let method = method.into();
        let call = self.begin(
            protocol::request(Value::Null, method.as_str(), params),
            None,
        );
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
        self.shared.send_within(message, SEND_WAIT).await
    }
}
