//! The gateway: client sessions, aggregation of what the servers offer,
//! routing, id remapping, and the server→client direction.
//!
//! Every message passes through the interceptor chain here, in both
//! directions; this is also the one place where refusals and failures turn
//! into JSON-RPC errors for the client.

mod catalog;
mod in_flight;
mod session;

pub use catalog::{Catalog, ListKind, ServerLists};
pub use session::{Outlet, Session};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::chain::{
    Chain, ClientIdentity, Context, Direction, Exchange, Outcome, Phase, Transport,
};
use crate::config::{Config, Isolation, UpstreamSpec};
use crate::metrics::Metrics;
use crate::protocol::{self, IdKey, Kind, code};
use crate::traces::{Attr, Export, Root, Span, SpanId, SpanKind, Tracer};
use crate::upstream::{Origin, Status, Upstream, UpstreamEvent};

/// Upstream pagination is followed for at most this many pages per list.
const MAX_LIST_PAGES: usize = 100;

/// Where a client request goes.
enum Route {
    /// Answered by the proxy itself.
    Local,
    /// Sent to a server, with the request's name rewritten to the server's own.
    Server {
        server: usize,
        rename: Option<Rename>,
    },
}

#[derive(Clone, Copy)]
enum RouteKind {
    Local,
    Server,
}

enum Rename {
    /// `params.name` (tools/call, prompts/get).
    Name(String),
    /// `params.ref.name` (completion/complete for a prompt).
    RefName(String),
}

pub struct Gateway {
    config: Arc<Config>,
    chain: Chain,
    /// The audit log (`None` only for the CLI's one-shot commands).
    audit: Option<Audit>,
    /// Takes every secret out of what is stored and traced (the record's
    /// target, reason and detail, span attributes and errors, arguments
    /// when kept). Set at wiring ([`Gateway::scrub_with`]); `None` only in
    /// the CLI's one-shot commands.
    scrubber: std::sync::OnceLock<Arc<crate::interceptors::Redact>>,
    /// Whether calls' arguments are kept, redacted, in their records.
    arguments_kept: std::sync::atomic::AtomicBool,
    /// Who may use which server (set at wiring; everyone without authz).
    access: std::sync::OnceLock<Arc<crate::interceptors::ServerAccess>>,
    /// The log level last sent to each running instance (server, the
    /// client of a per-client instance): the lowest any session that may
    /// use it asked for. Held while levels are sent, so they arrive in
    /// the order they were decided.
    log_levels: tokio::sync::Mutex<HashMap<InstanceKey, protocol::LogLevel>>,
    /// Per server instance: the current second's unattributed
    /// notifications (relayed, dropped over the cap).
    unattributed: Mutex<HashMap<InstanceKey, NoticeWindow>>,
    upstreams: Vec<Upstream>,
    names: Vec<Arc<str>>,
    catalog: RwLock<Arc<Catalog>>,
    sessions: RwLock<HashMap<u64, Arc<Session>>>,
    next_session: AtomicU64,
    /// Resource URI → sessions subscribed to it.
    subscriptions: Mutex<HashMap<String, HashSet<u64>>>,
    /// (server, instance, the server's request id) → (session, the id the
    /// client saw), for server→client requests in flight.
    forwarded: Mutex<HashMap<ForwardedKey, (u64, u64)>>,
    /// The per-client instances of `isolation = "per-client"` servers, by
    /// (server, client): created at a client's first call. Bounded by the
    /// configured clients.
    instances: Mutex<HashMap<(usize, Arc<str>), Upstream>>,
    events: mpsc::Sender<UpstreamEvent>,
    /// Serializes catalog refreshes per server so two do not interleave.
    refreshing: Vec<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Event records being committed in the background: `stop` waits for
    /// them, so `proxy_stop` is the last record of the chain.
    event_records: tokio_util::task::TaskTracker,
    /// Per server: its limit on requests in flight, if it has one.
    in_flight: Vec<Option<in_flight::InFlight>>,
    /// Counts and times for `GET /metrics` (`[observability] metrics`).
    metrics: Option<Arc<Metrics>>,
    /// Traces of exchanges (`[observability.traces]`), set once by
    /// [`Gateway::trace_with`] before any session opens.
    tracer: std::sync::OnceLock<Tracer>,
    /// The task that exports the tracer's spans; `stop` lets it send what
    /// is left.
    trace_export: Mutex<Option<Export>>,
    /// Run by `stop` before `proxy_stop`: see [`Gateway::on_stop`].
    stop_flushes: Mutex<Vec<StopFlush>>,
}

type StopFlush = Box<dyn Fn() -> Vec<crate::audit::AuditRecord> + Send + Sync>;

/// A server→client request in flight: (server, instance, the server's id).
type ForwardedKey = (usize, Option<Arc<str>>, IdKey);

/// A running copy of a server: (server, the client of a per-client instance).
type InstanceKey = (usize, Option<Arc<str>>);

/// The most notifications no call owns that one server instance gets
/// relayed (and recorded) per second; past it they are dropped and counted,
/// so a server cannot flood sessions or the audit log.
const UNATTRIBUTED_PER_SECOND: u32 = 100;

/// One second of a server instance's unattributed notifications.
struct NoticeWindow {
    started: std::time::Instant,
    relayed: u32,
    dropped: u64,
}

/// How long the proxy waits for a server to take a new log level.
const LOG_LEVEL_WAIT: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Gateway {
    /// Builds the gateway; nothing runs until [`Gateway::start`].
    pub fn new(
        config: Arc<Config>,
        chain: Chain,
        audit: Option<Audit>,
    ) -> (Arc<Self>, mpsc::Receiver<UpstreamEvent>) {
        let (events_tx, events_rx) = mpsc::channel(1024);
        let metrics = config
            .observability
            .metrics
            .then(|| Arc::new(Metrics::default()));
        let chain = match &metrics {
            Some(metrics) => chain.timed(metrics),
            None => chain,
        };
        let upstreams: Vec<Upstream> = config
            .servers
            .iter()
            .map(|server| {
                Upstream::new(
                    Arc::new(server.clone()),
                    None,
                    config.limits,
                    config.proxy.startup_timeout,
                    events_tx.clone(),
                )
            })
            .collect();
        let names = upstreams.iter().map(|u| u.name().clone()).collect();
        let in_flight = config
            .servers
            .iter()
            .map(|server| {
                config
                    .ratelimit
                    .concurrency
                    .iter()
                    .find(|limit| limit.server == server.name)
                    .map(in_flight::InFlight::new)
            })
            .collect();
        let gateway = Arc::new(Self {
            in_flight,
            catalog: RwLock::new(Arc::new(Catalog::new(upstreams.len()))),
            refreshing: upstreams
                .iter()
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            upstreams,
            names,
            chain,
            audit,
            scrubber: std::sync::OnceLock::new(),
            arguments_kept: std::sync::atomic::AtomicBool::new(false),
            access: std::sync::OnceLock::new(),
            log_levels: tokio::sync::Mutex::new(HashMap::new()),
            unattributed: Mutex::new(HashMap::new()),
            config,
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            subscriptions: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(HashMap::new()),
            instances: Mutex::new(HashMap::new()),
            events: events_tx,
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            event_records: tokio_util::task::TaskTracker::new(),
            metrics,
            tracer: std::sync::OnceLock::new(),
            trace_export: Mutex::new(None),
            stop_flushes: Mutex::new(Vec::new()),
        });
        (gateway, events_rx)
    }

    /// Starts every server and the event loop, and waits (up to the startup
    /// timeout) until each server is ready or has failed its first start.
    pub async fn start(self: &Arc<Self>, events: mpsc::Receiver<UpstreamEvent>) {
        let mut tasks = Vec::new();
        for upstream in &self.upstreams {
            tasks.push(upstream.start(self.shutdown.clone()));
        }
        let this = self.clone();
        tasks.push(tokio::spawn(async move { this.event_loop(events).await }));
        lock(&self.tasks).extend(tasks);
        let settle =
            futures_util::future::join_all(self.upstreams.iter().map(|u| u.wait_settled()));
        let _ = tokio::time::timeout(self.config.proxy.startup_timeout, settle).await;
        // Lists of the servers that came up are fetched by the event loop;
        // wait for those fetches so the first `tools/list` is complete.
        for (index, upstream) in self.upstreams.iter().enumerate() {
            if matches!(upstream.status(), Status::Ready(_)) {
                let _ =
                    tokio::time::timeout(self.config.proxy.startup_timeout, self.refresh(index))
                        .await;
            }
        }
    }

    /// Stops every server and ends every session.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let sessions: Vec<_> = self
            .sessions
            .write()
            .map(|mut s| s.drain().map(|(_, s)| s).collect())
            .unwrap_or_default();
        let mut ended = Vec::new();
        for session in sessions {
            session.close();
            ended.push(Self::session_end(&session));
        }
        let flushes: Vec<_> = lock(&self.stop_flushes).drain(..).collect();
        for flush in flushes {
            self.record_events(flush());
        }
        // Events recorded just before (a session that ended as the proxy
        // was told to stop) go before `proxy_stop`.
        self.event_records.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.event_records.wait()).await;
        if let Some(audit) = &self.audit {
            let mut stop = crate::audit::AuditRecord::event("proxy_stop", "allow");
            stop.detail = Some(json!({ "sessions_ended": ended.len() }));
            ended.push(stop);
            for record in ended {
                if let Err(err) = audit.commit(record).await {
                    tracing::error!(error = %err, "AUDIT: an event cannot be recorded");
                }
            }
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        // Long enough for every container to be removed.
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::future::join_all(tasks),
        )
        .await;
        // A container whose creation was under way when its supervisor
        // stopped is still ours: none may outlive the proxy.
        let containers = self
            .config
            .servers
            .iter()
            .any(|server| matches!(server.kind, UpstreamSpec::Container(_)));
        if containers {
            match crate::upstream::container::remove_owned().await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::warn!(count, "removed containers left by an interrupted start")
                }
                Err(err) => tracing::warn!(error = err, "cannot check for containers left behind"),
            }
        }
        // Last: the records of everything that ended above are on disk.
        if let Some(audit) = &self.audit
            && let Err(err) = audit.flush().await
        {
            tracing::error!(error = %err, "AUDIT: the last records could not be flushed");
        }
        let export = lock(&self.trace_export).take();
        if let Some(export) = export {
            export.finish().await;
        }
    }

    /// Traces every exchange through `tracer`, whose spans `export` sends.
    /// Once only; a second call is ignored.
    pub fn trace_with(&self, tracer: Tracer, export: Export) {
        if self.tracer.set(tracer).is_ok() {
            *lock(&self.trace_export) = Some(export);
        }
    }

    /// Scrubs what is stored and traced with `scrubber` (every finding of
    /// every rule replaced by its placeholder). Once only.
    pub fn scrub_with(&self, scrubber: Arc<crate::interceptors::Redact>) {
        let _ = self.scrubber.set(scrubber);
    }

    /// Keeps calls' arguments in their audit records, every secret redacted
    /// by the scrubber (`[audit] arguments = "redacted"`).
    pub fn keep_arguments(&self) {
        self.arguments_kept.store(true, Ordering::Relaxed);
    }

    /// Decides who may use which server with `access` (authz's). Once only;
    /// unset, every client may use every server.
    pub fn limit_access(&self, access: Arc<crate::interceptors::ServerAccess>) {
        let _ = self.access.set(access);
    }

    /// Whether `session`'s client may use server `index` (see
    /// [`ServerAccess`](crate::interceptors::ServerAccess)).
    fn may_use(&self, session: &Session, index: usize) -> bool {
        let (Some(access), Some(name)) = (self.access.get(), self.names.get(index)) else {
            return true;
        };
        let directory: Arc<dyn crate::chain::Directory> = self.catalog();
        access.may_use(&session.client, session.transport, name, &directory)
    }

    /// `text` with every secret replaced by its placeholder.
    fn scrub(&self, text: &str) -> String {
        match self.scrubber.get() {
            Some(scrubber) => scrubber.scrubbed(text),
            None => text.to_owned(),
        }
    }

    /// Scrubs what a record carries from a peer's words: its method and
    /// request id (a client chooses both, and an unknown method is recorded
    /// as sent), its target, its reason, and its detail (the kept
    /// arguments are already redacted).
    fn scrub_record(&self, record: &mut crate::audit::AuditRecord) {
        let Some(scrubber) = self.scrubber.get() else {
            return;
        };
        for text in [&mut record.target, &mut record.reason]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&mut record.method))
        {
            *text = scrubber.scrubbed(text);
        }
        if let Some(id) = &mut record.request_id {
            scrubber.redact_all(id);
        }
        match &mut record.detail {
            Some(Value::Object(detail)) => {
                for (key, value) in detail.iter_mut() {
                    if key != "arguments" {
                        scrubber.redact_all(value);
                    }
                }
            }
            Some(other) => scrubber.redact_all(other),
            None => {}
        }
    }

    /// A call's arguments as the audit keeps them: the hash of what the
    /// chain left, and (if kept) a copy with every secret redacted.
    fn arguments_of(&self, message: &Value) -> Arguments {
        let Some(arguments) = message.pointer("/params/arguments") else {
            return Arguments::default();
        };
        let kept = self.arguments_kept.load(Ordering::Relaxed);
        let stored = self.scrubber.get().filter(|_| kept).map(|scrubber| {
            let mut copy = arguments.clone();
            scrubber.redact_all(&mut copy);
            let bytes = serde_json::to_vec(&copy).map_or(usize::MAX, |b| b.len());
            if bytes > MOST_STORED_ARGUMENT_BYTES {
                json!({ "omitted": format!("{bytes} bytes, over the {MOST_STORED_ARGUMENT_BYTES} kept") })
            } else {
                copy
            }
        });
        Arguments {
            sha256: Some(crate::audit::sha256_canonical(arguments)),
            stored,
        }
    }

    /// The audit log, if this gateway keeps one.
    pub fn audit(&self) -> Option<&Audit> {
        self.audit.as_ref()
    }

    /// Commits an event record in the background (events are not replies:
    /// nothing waits for them; a failure is logged loudly, and the calls
    /// that follow are refused while the store cannot be written).
    pub fn record_event(&self, record: crate::audit::AuditRecord) {
        self.record_events(vec![record]);
    }

    /// Commits event records in the background, in this order (records
    /// committed from separate tasks may land in either order).
    pub fn record_events(&self, mut records: Vec<crate::audit::AuditRecord>) {
        for record in &mut records {
            self.scrub_record(record);
        }
        if let Some(metrics) = &self.metrics {
            for record in &records {
                metrics.events.get([&record.kind]).add(1);
            }
        }
        let Some(audit) = self.audit.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.event_records.spawn_on(
            async move {
                for record in records {
                    if let Err(err) = audit.commit(record).await {
                        tracing::error!(error = %err, "AUDIT: an event cannot be recorded");
                    }
                }
            },
            &runtime,
        );
    }

    /// A session's event record.
    fn session_event(session: &Session, kind: &str) -> crate::audit::AuditRecord {
        let mut record = crate::audit::AuditRecord::event(kind, "allow");
        record.session = session.id.to_string();
        record.client = session.client.name.to_string();
        record.transport = session.transport.as_str().into();
        record
    }

    /// The `session_end` record of a session.
    fn session_end(session: &Session) -> crate::audit::AuditRecord {
        let mut record = Self::session_event(session, "session_end");
        record.total_us = session.opened.elapsed().as_micros() as u64;
        record
    }

    /// A server's event record.
    fn server_event(
        &self,
        kind: &str,
        source: &crate::upstream::Source,
    ) -> crate::audit::AuditRecord {
        let decision = if kind == "server_down" {
            "error"
        } else {
            "allow"
        };
        let mut record = crate::audit::AuditRecord::event(kind, decision);
        record.server = Some(source.server.to_string());
        let upstream = self
            .config
            .servers
            .iter()
            .find(|server| *server.name == *source.server)
            .map(|server| match &server.kind {
                UpstreamSpec::Container(_) => "container",
                UpstreamSpec::Process(_) => "process",
                UpstreamSpec::Remote(_) => "remote",
            });
        let restarts = self
            .index_of(&source.server)
            .and_then(|index| self.upstreams.get(index))
            .map(|upstream| upstream.restarts());
        record.detail = Some(json!({
            "upstream": upstream,
            "instance": source.instance.as_deref(),
            "restarts": restarts,
        }));
        record
    }

    /// Counts and times for `GET /metrics`, when they are on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Runs `flush` as the proxy stops, before `proxy_stop` is recorded,
    /// and records what it returns (events held back to be aggregated).
    pub fn on_stop(
        &self,
        flush: impl Fn() -> Vec<crate::audit::AuditRecord> + Send + Sync + 'static,
    ) {
        lock(&self.stop_flushes).push(Box::new(flush));
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poison| poison.into_inner().clone())
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    // -- sessions ----------------------------------------------------------

    pub fn open_session(
        &self,
        id: Arc<str>,
        client: ClientIdentity,
        transport: Transport,
        outlet: Arc<dyn Outlet>,
    ) -> Arc<Session> {
        let key = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(key, id, client, transport, outlet));
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.insert(key, session.clone());
        }
        tracing::debug!(session = %session.id, client = %session.client.name, "session opened");
        session
    }

    /// The metrics text (`GET /metrics`), or `None` when metrics are off:
    /// the counts and times kept on the hot path, then what the gateway
    /// knows now (sessions, servers, the audit log) and each interceptor's
    /// own series.
    pub fn render_metrics(&self) -> Option<String> {
        use crate::metrics::Exposition;
        let metrics = self.metrics.as_ref()?;
        let mut out = Exposition::default();
        out.declare("portcullis_build_info", "The proxy's version.", "gauge");
        out.sample(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        metrics.render(&mut out);
        let (mut stdio, mut http) = (0u64, 0u64);
        for session in self
            .sessions
            .read()
            .map(|s| s.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            match session.transport {
                crate::chain::Transport::Stdio => stdio += 1,
                crate::chain::Transport::Http => http += 1,
            }
        }
        out.declare(
            "portcullis_sessions",
            "Sessions open, by transport.",
            "gauge",
        );
        out.sample(
            "portcullis_sessions",
            &[("transport", "stdio")],
            stdio as f64,
        );
        out.sample("portcullis_sessions", &[("transport", "http")], http as f64);
        out.declare(
            "portcullis_upstream_up",
            "Whether the server is running and initialized (1) or not (0), by server and state (idle, starting, ready, down, stopped).",
            "gauge",
        );
        out.declare(
            "portcullis_upstream_restarts_total",
            "Times the server was started again after it stopped, by server.",
            "counter",
        );
        for upstream in &self.upstreams {
            let state = match upstream.status() {
                Status::Idle(_) => "idle",
                Status::Starting => "starting",
                Status::Ready(_) => "ready",
                Status::Down(_) => "down",
                Status::Stopped => "stopped",
            };
            let name = upstream.name();
            out.sample(
                "portcullis_upstream_up",
                &[("server", name), ("state", state)],
                f64::from(u8::from(state == "ready")),
            );
            out.sample(
                "portcullis_upstream_restarts_total",
                &[("server", name)],
                upstream.restarts() as f64,
            );
        }
        if let Some(audit) = &self.audit {
            out.declare(
                "portcullis_audit_last_seq",
                "The sequence number of the last audit record written.",
                "gauge",
            );
            out.sample(
                "portcullis_audit_last_seq",
                &[],
                *audit.written().borrow() as f64,
            );
            out.declare(
                "portcullis_audit_failing",
                "Whether the audit store cannot be written (1: calls are refused).",
                "gauge",
            );
            out.sample(
                "portcullis_audit_failing",
                &[],
                f64::from(u8::from(audit.is_failing())),
            );
        }
        self.chain.render_metrics(&mut out);
        if let Some(tracer) = self.tracer.get() {
            tracer.render_metrics(&mut out);
        }
        Some(out.finish())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.read().map(|s| s.len()).unwrap_or(0)
    }

    pub fn close_session(self: &Arc<Self>, session: &Session) {
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.remove(&session.key);
        }
        // Its level no longer counts: a server may be sent a higher one.
        if session.log_level().is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let this = self.clone();
            runtime.spawn(async move { this.apply_log_levels(None).await });
        }
        lock(&self.subscriptions).retain(|_, subscribers| {
            subscribers.remove(&session.key);
            !subscribers.is_empty()
        });
        self.update_holds();
        if !session.closed.is_cancelled() {
            self.record_event(Self::session_end(session));
        }
        session.close();
        tracing::debug!(session = %session.id, "session closed");
    }

    fn session(&self, key: u64) -> Option<Arc<Session>> {
        self.sessions.read().ok().and_then(|s| s.get(&key).cloned())
    }

    fn initialized_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .read()
            .map(|s| s.values().filter(|s| s.is_initialized()).cloned().collect())
            .unwrap_or_default()
    }

    // -- client → proxy ----------------------------------------------------

    /// Handles one message from a client. Returns the reply for requests
    /// (`None` when the client cancelled the request, which gets no reply).
    pub async fn handle(self: &Arc<Self>, session: &Arc<Session>, message: Value) -> Option<Value> {
        session.touch();
        match protocol::classify(&message) {
            Some(Kind::Request) => self.handle_request(session, message).await,
            Some(Kind::Notification) => {
                self.handle_notification(session, message).await;
                None
            }
            Some(Kind::Response | Kind::ErrorResponse) => {
                if !session.client_answered(message) {
                    tracing::debug!(session = %session.id, "answer to a request that is no longer pending");
                }
                None
            }
            None => {
                // Not a JSON-RPC message at all: the chain's `limits` refuses
                // it with the precise reason.
                let started = std::time::Instant::now();
                let id = reply_id(&message);
                let mut exchange = self.exchange(
                    session,
                    message,
                    Direction::ClientToServer,
                    Phase::Request,
                    "",
                );
                let refusal = self.chain.run(&mut exchange).err();
                let reply = match &refusal {
                    Some(refusal) => refusal.to_response(id),
                    None => {
                        protocol::error(id, code::INVALID_REQUEST, "not a JSON-RPC message", None)
                    }
                };
                let outcome = refusal.map_or(
                    Outcome::Failed {
                        reason: "not a JSON-RPC message".into(),
                    },
                    |r| r.outcome(),
                );
                self.chain.finish(&exchange, &outcome);
                self.record(
                    &mut exchange,
                    &outcome,
                    Some(&reply),
                    None,
                    &Arguments::default(),
                    started,
                )
                .await;
                Some(reply)
            }
        }
    }

    fn exchange(
        &self,
        session: &Session,
        message: Value,
        direction: Direction,
        phase: Phase,
        method: &str,
    ) -> Exchange {
        let request_id = message.get("id").cloned();
        let trace = match (phase, self.tracer.get()) {
            (Phase::Request, Some(tracer)) => tracer.start(&message),
            _ => None,
        };
        let mut exchange = Exchange::new(
            message,
            direction,
            phase,
            Context {
                request_id,
                ..Context::new(
                    session.id.clone(),
                    session.client.clone(),
                    session.transport,
                    method,
                )
            },
        );
        exchange.trace = trace;
        exchange
    }

    /// A client request, end to end: decided, relayed, and recorded in the
    /// audit log before the reply is returned. While the log cannot be
    /// written, calls are refused (fail closed).
    async fn handle_request(
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

    async fn decide_and_relay(self: &Arc<Self>, session: &Arc<Session>, message: Value) -> Handled {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let mut exchange = self.exchange(
            session,
            message,
            Direction::ClientToServer,
            Phase::Request,
            &method,
        );
        // The arguments' hash is taken once the request chain has run: of the
        // arguments as forwarded (after redaction), never of a secret.
        let done = |exchange: Exchange,
                    arguments: Arguments,
                    reply: Option<Value>,
                    outcome: Outcome,
                    upstream| {
            self.chain.finish(&exchange, &outcome);
            Handled {
                reply,
                exchange,
                outcome,
                upstream,
                arguments,
            }
        };

        // Routing first, so that interceptors see the target server, name
        // and listed definition.
        let catalog = self.catalog();
        let route = match self.route(&catalog, session, &method, &exchange.message) {
            Ok((route, target)) => {
                if let Route::Server { server, .. } = &route {
                    exchange.context.server = self.names.get(*server).cloned();
                }
                let name = protocol::param_str(&exchange.message, "name");
                exchange.context.definition = match method.as_str() {
                    "tools/call" => name.and_then(|name| catalog.tool_definition(name)),
                    "prompts/get" => name.and_then(|name| catalog.prompt_definition(name)),
                    _ => None,
                };
                exchange.context.target = target;
                exchange.context.directory = Some(catalog);
                route
            }
            Err((code, reason)) => {
                // Still give the chain its say (`limits` names a broken
                // envelope more precisely than routing can).
                let ran = self.chain.run(&mut exchange);
                let arguments = self.arguments_of(&exchange.message);
                return match ran {
                    Err(refusal) => {
                        let reply = refusal.to_response(id);
                        done(exchange, arguments, Some(reply), refusal.outcome(), None)
                    }
                    Ok(()) => {
                        let reply = protocol::error(id, code, &reason, None);
                        done(
                            exchange,
                            arguments,
                            Some(reply),
                            Outcome::Failed { reason },
                            None,
                        )
                    }
                };
            }
        };

        let ran = self.chain.run(&mut exchange);
        let arguments = self.arguments_of(&exchange.message);
        if let Err(refusal) = ran {
            let reply = refusal.to_response(id);
            return done(exchange, arguments, Some(reply), refusal.outcome(), None);
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
                let mut outgoing = std::mem::take(&mut exchange.message);
                match rename {
                    Some(Rename::Name(name)) => outgoing["params"]["name"] = Value::from(name),
                    Some(Rename::RefName(name)) => {
                        outgoing["params"]["ref"]["name"] = Value::from(name)
                    }
                    None => {}
                }
                // A place among the server's requests in flight, if it
                // limits them (the wait is bounded by its call timeout).
                let _place = match &self.in_flight[server] {
                    None => None,
                    Some(limit) => {
                        let wait = self.config.servers[server].call_timeout;
                        match limit.enter(&self.names[server], wait).await {
                            Ok(permit) => Some(permit),
                            Err(refusal) => {
                                exchange.message = outgoing;
                                let reply = refusal.to_response(id);
                                return done(
                                    exchange,
                                    arguments,
                                    Some(reply),
                                    refusal.outcome(),
                                    None,
                                );
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
                let forwarded = self.forward(session, server, &id, outgoing).await;
                let ended = std::time::Instant::now();
                upstream = Some(ended - sent);
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
                    Some(reply) => Ok(reply),
                    None => {
                        let outcome = Outcome::Failed {
                            reason: "cancelled by the client".into(),
                        };
                        return done(exchange, arguments, None, outcome, upstream);
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
            return done(
                exchange,
                arguments,
                Some(reply),
                refusal.outcome(),
                upstream,
            );
        }
        let reply = exchange.message.clone();
        done(exchange, arguments, Some(reply), outcome, upstream)
    }

    /// Decides where a request goes, and its target (unprefixed tool or prompt
    /// name, or resource URI). Errors are (code, client-safe reason).
    fn route(
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

    /// An unknown tool or prompt; if its server is down, or up again but its
    /// lists not read yet, say so instead.
    fn not_found(&self, what: &str, name: &str) -> (i64, String) {
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
    async fn forward(
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

    async fn answer_locally(
        self: &Arc<Self>,
        session: &Arc<Session>,
        method: &str,
        message: &Value,
        listed_from: &mut Option<Arc<Catalog>>,
    ) -> Result<Value, (i64, String)> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        if method != "ping" && method != "logging/setLevel" {
            self.await_lists().await;
        }
        let catalog = self.catalog();
        *listed_from = Some(catalog.clone());
        let result = match method {
            "initialize" => self.initialize(session, message)?,
            "ping" => json!({}),
            "tools/list" => self.page(message, &catalog.tools, "tools")?,
            "prompts/list" => self.page(message, &catalog.prompts, "prompts")?,
            "resources/list" => self.page(message, &catalog.resources, "resources")?,
            "resources/templates/list" => {
                self.page(message, &catalog.templates, "resourceTemplates")?
            }
            "logging/setLevel" => {
                let name = protocol::param_str(message, "level").ok_or_else(|| {
                    (
                        code::INVALID_PARAMS,
                        "`params.level` must be a string".to_owned(),
                    )
                })?;
                let level = protocol::LogLevel::parse(name).ok_or_else(|| {
                    (
                        code::INVALID_PARAMS,
                        format!(
                            "unknown log level `{}`: use debug, info, notice, warning, error, critical, alert or emergency",
                            protocol::cut(name, 64)
                        ),
                    )
                })?;
                // The session's own level: the proxy filters what it gets.
                session.state().log_level = Some(level);
                self.apply_log_levels(Some(session)).await;
                json!({})
            }
            _ => {
                return Err((
                    code::METHOD_NOT_FOUND,
                    format!("method not found: `{method}`"),
                ));
            }
        };
        Ok(protocol::result(id, result))
    }

    /// Sends each running instance that supports logging the lowest level
    /// the sessions that may use it asked for (of its client only, for a
    /// per-client instance), when that changed since it was last sent.
    /// `asked_by`: only the instances serving that session's client that
    /// the client may use (a client that may not use a server never
    /// changes its level); `None`: every instance (a session closed, a
    /// server restarted). No session with a level: the server keeps the
    /// last one it was sent.
    async fn apply_log_levels(&self, asked_by: Option<&Session>) {
        // Decided under the lock, sent outside it: a server that never
        // answers holds nobody else's `logging/setLevel`.
        let mut sends = Vec::new();
        {
            let mut sent = self.log_levels.lock().await;
            let sessions = self.initialized_sessions();
            let instances = self.instances(asked_by.map(|session| &session.client.name));
            for ((index, instance), upstream) in instances {
                if asked_by.is_some_and(|session| !self.may_use(session, index)) {
                    continue;
                }
                let Status::Ready(info) = upstream.status() else {
                    continue;
                };
                if info.pointer("/capabilities/logging").is_none() {
                    continue;
                }
                let levels = sessions
                    .iter()
                    .filter(|session| {
                        instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                            && self.may_use(session, index)
                    })
                    .map(|session| session.log_level());
                let Some(wanted) = lowest_level(levels) else {
                    continue;
                };
                let key = (index, instance);
                if sent.get(&key) == Some(&wanted) {
                    continue;
                }
                sent.insert(key.clone(), wanted);
                sends.push((key, wanted, upstream));
            }
        }
        let requests = sends.into_iter().map(|(key, wanted, upstream)| async move {
            let asked = upstream.request("logging/setLevel", json!({ "level": wanted.as_str() }));
            let failed = match tokio::time::timeout(LOG_LEVEL_WAIT, asked).await {
                Ok(Ok(_)) => return,
                // The server's own words: scrubbed like a record's.
                Ok(Err(err)) => self.scrub(&err.to_string()),
                Err(_) => format!("no answer within {LOG_LEVEL_WAIT:?}"),
            };
            tracing::warn!(server = %upstream.name(), error = failed, "cannot set the log level");
            // Not set after all: the next change tries again.
            let mut sent = self.log_levels.lock().await;
            if sent.get(&key) == Some(&wanted) {
                sent.remove(&key);
            }
        });
        futures_util::future::join_all(requests).await;
    }

    /// Starts the lazy servers that nobody has used yet, and waits (each up
    /// to the startup timeout) until every running server's lists are read:
    /// a client's first `initialize` and lists see every server.
    async fn await_lists(self: &Arc<Self>) {
        let catalog = self.catalog();
        let unlisted = (0..self.upstreams.len()).filter(|&index| {
            catalog.server_lists(index).is_none()
                && self.upstreams.get(index).is_some_and(|u| {
                    matches!(
                        u.status(),
                        Status::Idle(_) | Status::Starting | Status::Ready(_)
                    )
                })
        });
        let waits = unlisted.map(|index| async move {
            let Some(upstream) = self.upstreams.get(index) else {
                return;
            };
            match upstream
                .ensure_running(self.config.proxy.startup_timeout)
                .await
            {
                Ok(()) => self.list_once(index).await,
                Err(err) => tracing::warn!(server = %upstream.name(), error = %err, "cannot start the server"),
            }
        });
        futures_util::future::join_all(waits).await;
    }

    fn initialize(&self, session: &Session, message: &Value) -> Result<Value, (i64, String)> {
        let params = protocol::params(message);
        let requested = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                (
                    code::INVALID_PARAMS,
                    "`params.protocolVersion` must be a string".to_owned(),
                )
            })?;
        let version = if protocol::SUPPORTED_VERSIONS.contains(&requested) {
            requested
        } else {
            protocol::LATEST_VERSION
        };
        {
            let mut state = session.state();
            if state.initialized {
                return Err((
                    code::INVALID_REQUEST,
                    "the session is already initialized".into(),
                ));
            }
            state.initialized = true;
            state.protocol_version = Some(version.to_owned());
            state.client_capabilities = params
                .and_then(|p| p.get("capabilities"))
                .cloned()
                .unwrap_or_else(|| json!({}));
        }
        let client_name = params
            .and_then(|p| p.get("clientInfo"))
            .and_then(|info| info.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        tracing::info!(session = %session.id, client = %session.client.name, agent = client_name, version, "session initialized");
        let mut started = Self::session_event(session, "session_start");
        started.detail = Some(json!({
            "agent": client_name,
            "agent_version": params
                .and_then(|p| p.get("clientInfo"))
                .and_then(|info| info.get("version"))
                .and_then(Value::as_str),
            "protocol_version": version,
        }));
        self.record_event(started);
        Ok(json!({
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") },
            "instructions": self.instructions(),
        }))
    }

    /// The servers' capabilities merged. Tools, prompts and resources are
    /// always offered (the lists are the proxy's own, and a server that comes
    /// up later announces itself through `list_changed`).
    fn capabilities(&self) -> Value {
        let mut subscribe = false;
        let mut logging = false;
        let mut completions = false;
        for upstream in &self.upstreams {
            if let Some(info) = upstream.status().info() {
                let caps = info.get("capabilities");
                let has = |pointer: &str| caps.and_then(|c| c.pointer(pointer)).is_some();
                subscribe |= caps
                    .and_then(|c| c.pointer("/resources/subscribe"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                logging |= has("/logging");
                completions |= has("/completions");
            }
        }
        let mut capabilities = Map::new();
        capabilities.insert("tools".into(), json!({ "listChanged": true }));
        capabilities.insert("prompts".into(), json!({ "listChanged": true }));
        capabilities.insert(
            "resources".into(),
            json!({ "listChanged": true, "subscribe": subscribe }),
        );
        if logging {
            capabilities.insert("logging".into(), json!({}));
        }
        if completions {
            capabilities.insert("completions".into(), json!({}));
        }
        Value::Object(capabilities)
    }

    fn instructions(&self) -> String {
        let separator = &self.config.proxy.namespace_separator;
        let mut text = format!(
            "Portcullis proxies several MCP servers. Tool and prompt names are prefixed with their server's name and `{separator}`."
        );
        for upstream in &self.upstreams {
            if let Some(info) = upstream.status().info()
                && let Some(instructions) = info.get("instructions").and_then(Value::as_str)
                && !instructions.trim().is_empty()
            {
                text.push_str(&format!(
                    "\n\n## Server `{}`\n{}",
                    upstream.name(),
                    instructions.trim()
                ));
            }
        }
        text
    }

    /// One page of a merged list. Cursors are offsets, opaque to clients.
    fn page(&self, message: &Value, items: &[Value], key: &str) -> Result<Value, (i64, String)> {
        let size = self.config.proxy.list_page_size;
        let start = match protocol::param_str(message, "cursor") {
            None => 0,
            Some(cursor) => cursor
                .strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n <= items.len())
                .ok_or_else(|| (code::INVALID_PARAMS, "invalid `cursor`".to_owned()))?,
        };
        let end = (start + size).min(items.len());
        let mut result = Map::new();
        result.insert(key.into(), Value::Array(items[start..end].to_vec()));
        if end < items.len() {
            result.insert("nextCursor".into(), Value::from(format!("offset:{end}")));
        }
        Ok(Value::Object(result))
    }

    fn track_subscription(
        &self,
        session: &Session,
        method: &str,
        uri: &Option<String>,
        reply: &Value,
    ) {
        let (Some(uri), Some(_)) = (uri, reply.get("result")) else {
            return;
        };
        {
            let mut subscriptions = lock(&self.subscriptions);
            if method == "resources/subscribe" {
                subscriptions
                    .entry(uri.clone())
                    .or_default()
                    .insert(session.key);
            } else if let Some(subscribers) = subscriptions.get_mut(uri) {
                subscribers.remove(&session.key);
                if subscribers.is_empty() {
                    subscriptions.remove(uri);
                }
            }
        }
        self.update_holds();
    }

    /// Subscriptions live in the server: a server with subscribers is not
    /// stopped for idleness (every instance of it, for a per-client one).
    fn update_holds(&self) {
        let catalog = self.catalog();
        let held: HashSet<usize> = lock(&self.subscriptions)
            .keys()
            .filter_map(|uri| catalog.resource_owner(uri))
            .collect();
        for (index, upstream) in self.upstreams.iter().enumerate() {
            upstream.hold(held.contains(&index));
        }
        for ((index, _), instance) in lock(&self.instances).iter() {
            instance.hold(held.contains(index));
        }
    }

    /// After a restart the server has forgotten its subscriptions: subscribe
    /// again to every URI it owns that sessions (of its client, for a
    /// per-client instance) are subscribed to.
    async fn resubscribe(&self, index: usize, instance: &Option<Arc<str>>) {
        let Some(upstream) = self.upstream_of(index, instance) else {
            return;
        };
        let catalog = self.catalog();
        let uris: Vec<String> = lock(&self.subscriptions)
            .iter()
            .filter(|(uri, subscribers)| {
                catalog.resource_owner(uri) == Some(index)
                    && subscribers.iter().any(|key| {
                        self.session(*key).is_some_and(|session| {
                            instance
                                .as_ref()
                                .is_none_or(|client| session.client.name == *client)
                        })
                    })
            })
            .map(|(uri, _)| uri.clone())
            .collect();
        for uri in uris {
            if let Err(err) = upstream
                .request("resources/subscribe", json!({ "uri": uri }))
                .await
            {
                // The server's words may quote the URI: scrubbed.
                let error = self.scrub(&err.to_string());
                tracing::warn!(server = %upstream.name(), error, "cannot renew a resource subscription");
            }
        }
    }

    async fn handle_notification(self: &Arc<Self>, session: &Arc<Session>, message: Value) {
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let mut exchange = self.exchange(
            session,
            message,
            Direction::ClientToServer,
            Phase::Notification,
            &method,
        );
        if let Err(refusal) = self.chain.run(&mut exchange) {
            // A client chooses the method: a long one is cut.
            let method = self.scrub(protocol::cut(&method, 128));
            tracing::debug!(session = %session.id, method, interceptor = %refusal.interceptor, "notification refused");
            self.chain.finish(&exchange, &refusal.outcome());
            return;
        }
        match method.as_str() {
            "notifications/initialized" => {}
            "notifications/cancelled" => {
                let cancelled = exchange
                    .message
                    .pointer("/params/requestId")
                    .and_then(IdKey::from_value)
                    .is_some_and(|id| session.cancel_call(&id));
                if !cancelled {
                    tracing::debug!(session = %session.id, "cancellation of a request not in flight");
                }
            }
            "notifications/roots/list_changed" => {
                // The proxy's own, with nothing of the client's in it, and
                // only to the servers this client may use.
                let notice = protocol::notification("notifications/roots/list_changed", json!({}));
                for ((index, _), upstream) in self.instances(Some(&session.client.name)) {
                    if self.may_use(session, index) && matches!(upstream.status(), Status::Ready(_))
                    {
                        let _ = upstream.send(notice.clone()).await;
                    }
                }
            }
            _ => {
                let method = self.scrub(protocol::cut(&method, 128));
                tracing::debug!(session = %session.id, method, "notification not relayed")
            }
        }
        self.chain.finish(&exchange, &Outcome::Delivered);
    }

    // -- server → proxy ----------------------------------------------------

    async fn event_loop(self: Arc<Self>, mut events: mpsc::Receiver<UpstreamEvent>) {
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
                    if let Some(metrics) = &self.metrics {
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
                    self.record_event(record);
                    if let Some(index) = self.index_of(&source.server) {
                        let this = self.clone();
                        tokio::spawn(async move {
                            if source.instance.is_none() {
                                this.refresh(index).await;
                            }
                            this.resubscribe(index, &source.instance).await;
                            // A restarted server forgot its log level.
                            let key = (index, source.instance.clone());
                            this.log_levels.lock().await.remove(&key);
                            this.apply_log_levels(None).await;
                        });
                    }
                }
                UpstreamEvent::Down { source, reason } => {
                    let mut record = self.server_event("server_down", &source);
                    record.reason = Some(reason);
                    self.record_event(record);
                    if let Some(index) = self.index_of(&source.server) {
                        if source.instance.is_none() {
                            self.set_lists(index, None);
                        }
                        self.forget_forwarded(index, &source.instance);
                    }
                }
                UpstreamEvent::Stopped { source, reason } => {
                    let mut record = self.server_event("server_stopped", &source);
                    record.reason = Some(reason);
                    self.record_event(record);
                }
                UpstreamEvent::Notification {
                    source,
                    message,
                    ambiguous,
                } => {
                    if let Some(index) = self.index_of(&source.server) {
                        self.server_notification(index, &source.instance, message, ambiguous);
                    }
                }
                UpstreamEvent::Request {
                    source,
                    message,
                    origin,
                } => {
                    if let Some(index) = self.index_of(&source.server) {
                        let this = self.clone();
                        tokio::spawn(async move {
                            this.server_request(index, source.instance, message, origin)
                                .await
                        });
                    }
                }
            }
        }
    }

    /// Whether each client gets its own instance of the server.
    fn per_client(&self, index: usize) -> bool {
        self.config.servers.get(index).is_some_and(|server| {
            matches!(&server.kind, UpstreamSpec::Container(spec) if spec.isolation == Isolation::PerClient)
        })
    }

    /// The instance of server `index` that serves `client`: the server's own,
    /// or for a per-client server the client's, created (lazy) at first use.
    fn upstream_for(&self, index: usize, client: &Arc<str>) -> Option<Upstream> {
        let primary = self.upstreams.get(index)?;
        if !self.per_client(index) {
            return Some(primary.clone());
        }
        let mut instances = lock(&self.instances);
        if let Some(instance) = instances.get(&(index, client.clone())) {
            return Some(instance.clone());
        }
        if self.shutdown.is_cancelled() {
            return None;
        }
        let instance = Upstream::new(
            primary.config_handle(),
            Some(client.clone()),
            self.config.limits,
            self.config.proxy.startup_timeout,
            self.events.clone(),
        );
        lock(&self.tasks).push(instance.start(self.shutdown.clone()));
        instances.insert((index, client.clone()), instance.clone());
        tracing::debug!(server = %primary.name(), client = %client, "per-client instance created");
        Some(instance)
    }

    /// The instances clients' calls reach, with their keys: the shared
    /// servers and the per-client instances (of `client` only, if given).
    fn instances(&self, client: Option<&Arc<str>>) -> Vec<(InstanceKey, Upstream)> {
        let mut out: Vec<(InstanceKey, Upstream)> = self
            .upstreams
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.per_client(*index))
            .map(|(index, upstream)| ((index, None), upstream.clone()))
            .collect();
        out.extend(
            lock(&self.instances)
                .iter()
                .filter(|((_, owner), _)| client.is_none_or(|client| owner == client))
                .map(|((index, owner), instance)| {
                    ((*index, Some(owner.clone())), instance.clone())
                }),
        );
        out
    }

    /// The instance an event came from.
    fn upstream_of(&self, index: usize, instance: &Option<Arc<str>>) -> Option<Upstream> {
        match instance {
            None => self.upstreams.get(index).cloned(),
            Some(client) => lock(&self.instances).get(&(index, client.clone())).cloned(),
        }
    }

    fn index_of(&self, server: &str) -> Option<usize> {
        self.names.iter().position(|name| &**name == server)
    }

    /// Reads a server's lists unless they are already known.
    async fn list_once(self: &Arc<Self>, index: usize) {
        self.read_lists(index, true).await;
    }

    /// Re-reads a server's lists and tells the sessions what changed.
    pub async fn refresh(self: &Arc<Self>, index: usize) {
        self.read_lists(index, false).await;
    }

    async fn read_lists(self: &Arc<Self>, index: usize, unless_known: bool) {
        let Some(upstream) = self.upstreams.get(index) else {
            return;
        };
        let Some(_guard) = self.refreshing.get(index).map(|m| m.lock()) else {
            return;
        };
        let _guard = _guard.await;
        if unless_known && self.catalog().server_lists(index).is_some() {
            return;
        }
        let Status::Ready(info) = upstream.status() else {
            return;
        };
        let caps = info.get("capabilities").cloned().unwrap_or_default();
        let mut lists = ServerLists::default();
        let scrub = |text: &str| self.scrub(text);
        if caps.get("tools").is_some() {
            lists.tools = fetch_all(upstream, "tools/list", "tools", &scrub).await;
        }
        if caps.get("prompts").is_some() {
            lists.prompts = fetch_all(upstream, "prompts/list", "prompts", &scrub).await;
        }
        if caps.get("resources").is_some() {
            lists.resources = fetch_all(upstream, "resources/list", "resources", &scrub).await;
            lists.templates = fetch_all(
                upstream,
                "resources/templates/list",
                "resourceTemplates",
                &scrub,
            )
            .await;
        }
        tracing::debug!(server = %upstream.name(), tools = lists.tools.len(), prompts = lists.prompts.len(), resources = lists.resources.len(), "lists refreshed");
        self.set_lists(index, Some(lists));
    }

    fn set_lists(&self, index: usize, lists: Option<ServerLists>) {
        let changed = {
            let Ok(mut catalog) = self.catalog.write() else {
                return;
            };
            let (next, changed) = catalog.with_server(
                index,
                lists,
                &self.names,
                &self.config.proxy.namespace_separator,
            );
            *catalog = Arc::new(next);
            changed
        };
        for kind in changed {
            self.announce(kind);
        }
    }

    /// Tells every session that a list changed (`notifications/*/list_changed`):
    /// a server's list, or what the proxy lets through (pins approved).
    pub fn announce(&self, kind: ListKind) {
        let message = protocol::notification(kind.notification(), json!({}));
        for session in self.initialized_sessions() {
            self.notify(&session, None, message.clone(), None, None);
        }
    }

    fn forget_forwarded(&self, index: usize, instance: &Option<Arc<str>>) {
        lock(&self.forwarded)
            .retain(|(server, from, _), _| !(*server == index && from == instance));
    }

    /// The sessions a notification from `instance` may be offered to (authz
    /// then decides per session): every one, or only its client's for a
    /// per-client instance.
    fn sessions_of(&self, instance: &Option<Arc<str>>) -> Vec<Arc<Session>> {
        let sessions = self.initialized_sessions();
        match instance {
            None => sessions,
            Some(client) => sessions
                .into_iter()
                .filter(|s| s.client.name == *client)
                .collect(),
        }
    }

    /// Sends a server's notification to a session through the chain.
    /// `related`: the client request whose stream should carry it; `call`:
    /// the request it belongs to (its `context.request_id`), if any —
    /// authz lets one that belongs to no call reach only a client that may
    /// use the server. A server's log message below the session's level
    /// (`logging/setLevel`) is not sent to it.
    fn notify(
        &self,
        session: &Session,
        server: Option<usize>,
        message: Value,
        related: Option<&Value>,
        call: Option<Value>,
    ) -> Delivery {
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        if server.is_some() && method == "notifications/message" && !session.wants_log(&message) {
            return Delivery::BelowLevel;
        }
        let mut exchange = self.exchange(
            session,
            message,
            Direction::ServerToClient,
            Phase::Notification,
            &method,
        );
        exchange.context.server = server.and_then(|s| self.names.get(s).cloned());
        exchange.context.request_id = call;
        if exchange.context.server.is_some() {
            if method == "notifications/resources/updated" {
                exchange.context.target =
                    protocol::param_str(&exchange.message, "uri").map(str::to_owned);
            }
            exchange.context.directory = Some(self.catalog());
        }
        if let Err(refusal) = self.chain.run(&mut exchange) {
            self.chain.finish(&exchange, &refusal.outcome());
            return Delivery::Withheld;
        }
        let delivered = session.deliver(exchange.message.clone(), related);
        let (outcome, delivery) = if delivered {
            (Outcome::Delivered, Delivery::Delivered)
        } else {
            let outcome = Outcome::Failed {
                reason: "the client is not reachable".into(),
            };
            (outcome, Delivery::Unreachable)
        };
        self.chain.finish(&exchange, &outcome);
        delivery
    }

    /// A server's notification that belongs to no call: to each session
    /// that may have it (authz decides per session in the chain), and
    /// recorded with how many sessions got it. `ambiguous`: calls of several
    /// sessions were in flight, so it goes to none.
    fn unattributed_notification(
        &self,
        index: usize,
        instance: &Option<Arc<str>>,
        message: Value,
        ambiguous: bool,
    ) {
        let now = std::time::Instant::now();
        let (admitted, dropped_before) = {
            let mut windows = lock(&self.unattributed);
            let window = windows
                .entry((index, instance.clone()))
                .or_insert(NoticeWindow {
                    started: now,
                    relayed: 0,
                    dropped: 0,
                });
            let mut dropped_before = 0;
            if now.duration_since(window.started) >= Duration::from_secs(1) {
                dropped_before = std::mem::take(&mut window.dropped);
                window.started = now;
                window.relayed = 0;
            }
            let admitted = window.relayed < UNATTRIBUTED_PER_SECOND;
            if admitted {
                window.relayed += 1;
            } else {
                window.dropped += 1;
            }
            (admitted, dropped_before)
        };
        if dropped_before > 0 {
            let mut record = crate::audit::AuditRecord::event("server_notification", "deny");
            record.server = self.names.get(index).map(|name| name.to_string());
            record.reason = Some(format!(
                "{dropped_before} notifications dropped: over {UNATTRIBUTED_PER_SECOND} per second that no call owns"
            ));
            record.detail = Some(json!({ "dropped": dropped_before }));
            self.record_event(record);
        }
        if !admitted {
            return;
        }
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let sessions = self.sessions_of(instance);
        let mut counts: HashMap<Delivery, usize> = HashMap::new();
        if ambiguous {
            let method = self.scrub(protocol::cut(&method, 128));
            tracing::debug!(server = %self.names[index], method, "dropped a notification that cannot be tied to one client session");
            counts.insert(Delivery::Withheld, sessions.len());
        } else {
            for session in &sessions {
                let delivery = self.notify(session, Some(index), message.clone(), None, None);
                *counts.entry(delivery).or_default() += 1;
            }
        }
        let count = |delivery| counts.get(&delivery).copied().unwrap_or(0);
        let delivered = count(Delivery::Delivered);
        let withheld = count(Delivery::Withheld);
        let decision = if delivered == 0 && withheld > 0 {
            "deny"
        } else {
            "allow"
        };
        let mut record = crate::audit::AuditRecord::event("server_notification", decision);
        record.server = self.names.get(index).map(|name| name.to_string());
        // A server chooses the method: a long one is cut.
        let method = protocol::cut(&method, 128);
        record.method = method.to_owned();
        let mut detail = json!({
            "method": method,
            "delivered": delivered,
            "withheld": withheld,
            "below_level": count(Delivery::BelowLevel),
            "unreachable": count(Delivery::Unreachable),
        });
        if ambiguous {
            detail["reason"] = Value::from(
                "calls of several client sessions were in flight: it could belong to any of them",
            );
        }
        if let Some(client) = instance {
            detail["instance"] = Value::from(&**client);
        }
        record.detail = Some(detail);
        self.record_event(record);
    }

    fn server_notification(
        self: &Arc<Self>,
        index: usize,
        instance: &Option<Arc<str>>,
        message: Value,
        ambiguous: bool,
    ) {
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        match method.as_str() {
            "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/resources/list_changed" => {
                let this = self.clone();
                tokio::spawn(async move { this.refresh(index).await });
            }
            "notifications/resources/updated" => {
                let Some(uri) = protocol::param_str(&message, "uri") else {
                    return;
                };
                // Only the server that owns the URI may report on it.
                if self.catalog().resource_owner(uri) != Some(index) {
                    return;
                }
                let subscribers: Vec<u64> = lock(&self.subscriptions)
                    .get(uri)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for key in subscribers {
                    if let Some(session) = self.session(key)
                        && instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                    {
                        self.notify(&session, Some(index), message.clone(), None, None);
                    }
                }
            }
            "notifications/cancelled" => {
                // The server withdrew one of its requests to a client.
                let Some(server_id) = message
                    .pointer("/params/requestId")
                    .and_then(IdKey::from_value)
                else {
                    return;
                };
                let Some((session_key, client_id)) =
                    lock(&self.forwarded).remove(&(index, instance.clone(), server_id))
                else {
                    return;
                };
                if let Some(session) = self.session(session_key) {
                    session.forget_client_request(client_id);
                    let mut message = message;
                    message["params"]["requestId"] = Value::from(client_id);
                    // It belongs to the request it withdraws.
                    let call = Some(Value::from(client_id));
                    self.notify(&session, Some(index), message, None, call);
                }
            }
            // Progress belongs to a call: without one it has no reader.
            "notifications/progress" => {}
            // Everything sent during a call went to that call's session
            // (`forward`); these came while no call was in flight.
            _ => self.unattributed_notification(index, instance, message, ambiguous),
        }
    }

    /// Forwards a server→client request to the client whose call caused it
    /// and relays the answer back.
    async fn server_request(
        self: Arc<Self>,
        index: usize,
        instance: Option<Arc<str>>,
        message: Value,
        origin: Option<Origin>,
    ) {
        let Some(upstream) = self.upstream_of(index, &instance) else {
            return;
        };
        let server_id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let answer =
            |code: i64, reason: &str| protocol::error(server_id.clone(), code, reason, None);
        let session = origin.as_ref().and_then(|o| self.session(o.session));
        let Some(session) = session else {
            let reason = "no client session to ask: the request is not tied to exactly one client call in flight";
            let _ = upstream
                .send(answer(code::CLIENT_UNAVAILABLE, reason))
                .await;
            return;
        };
        let capability = match method.as_str() {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        if let Some(capability) = capability
            && !session.has_client_capability(capability)
        {
            let reason = format!("the client does not support {capability}");
            let _ = upstream.send(answer(code::METHOD_NOT_FOUND, &reason)).await;
            return;
        }

        let mut exchange = self.exchange(
            &session,
            message,
            Direction::ServerToClient,
            Phase::Request,
            &method,
        );
        exchange.context.server = Some(upstream.name().clone());
        let started = std::time::Instant::now();
        if let Err(refusal) = self.chain.run(&mut exchange) {
            let answer = refusal.to_response(server_id.clone());
            self.chain.finish(&exchange, &refusal.outcome());
            // Recorded before the server gets the refusal; if the record
            // cannot be written, the refusal stands.
            self.record(
                &mut exchange,
                &refusal.outcome(),
                Some(&answer),
                None,
                &Arguments::default(),
                started,
            )
            .await;
            let _ = upstream.send(answer).await;
            return;
        }
        let (client_id, reply) = session.expect_client_answer();
        let server_key = IdKey::from_value(&server_id);
        if let Some(key) = &server_key {
            lock(&self.forwarded).insert(
                (index, instance.clone(), key.clone()),
                (session.key, client_id),
            );
        }
        let mut outgoing = exchange.message.clone();
        outgoing["id"] = Value::from(client_id);
        let related = origin.as_ref().map(|o| &o.request_id);
        let answer_message = if !session.deliver(outgoing, related) {
            session.forget_client_request(client_id);
            answer(code::CLIENT_UNAVAILABLE, "the client is not reachable")
        } else {
            let timeout = upstream.config().call_timeout;
            tokio::select! {
                result = tokio::time::timeout(timeout, reply) => match result {
                    Ok(Ok(mut answer_message)) => {
                        answer_message["id"] = server_id.clone();
                        answer_message
                    }
                    Ok(Err(_)) => answer(code::CLIENT_UNAVAILABLE, "the client session ended"),
                    Err(_) => {
                        session.forget_client_request(client_id);
                        answer(code::UPSTREAM_TIMEOUT, "the client did not answer in time")
                    }
                },
                () = session.closed.cancelled() => answer(code::CLIENT_UNAVAILABLE, "the client session ended"),
            }
        };
        if let Some(key) = &server_key {
            lock(&self.forwarded).remove(&(index, instance.clone(), key.clone()));
        }
        exchange.message = answer_message;
        exchange.phase = Phase::Response;
        let outcome = match self.chain.run(&mut exchange) {
            Ok(()) => Outcome::Delivered,
            Err(refusal) => {
                exchange.message = refusal.to_response(server_id.clone());
                refusal.outcome()
            }
        };
        self.chain.finish(&exchange, &outcome);
        let asked = started.elapsed();
        let answer_message = std::mem::take(&mut exchange.message);
        let recorded = self
            .record(
                &mut exchange,
                &outcome,
                Some(&answer_message),
                Some(asked),
                &Arguments::default(),
                started,
            )
            .await;
        exchange.message = answer_message;
        if !recorded {
            exchange.message = protocol::error(
                server_id.clone(),
                code::AUDIT_UNAVAILABLE,
                "refused: the audit log cannot record this request",
                None,
            );
        }
        let _ = upstream.send(exchange.message.clone()).await;
    }

    /// Commits an exchange's record; `false` when the log cannot take it
    /// (the caller refuses the exchange).
    async fn record(
        &self,
        exchange: &mut Exchange,
        outcome: &Outcome,
        reply: Option<&Value>,
        upstream: Option<Duration>,
        arguments: &Arguments,
        started: std::time::Instant,
    ) -> bool {
        let Some(audit) = &self.audit else {
            if let Some(metrics) = &self.metrics {
                observe(metrics, exchange, outcome, upstream, started.elapsed());
            }
            self.finish_trace(exchange, outcome, None);
            return true;
        };
        let mut record = record_of(
            exchange,
            outcome,
            reply,
            upstream,
            arguments,
            started.elapsed(),
        );
        self.scrub_record(&mut record);
        let committing = std::time::Instant::now();
        let committed = audit.commit(record).await;
        let commit_ended = std::time::Instant::now();
        if let Some(metrics) = &self.metrics {
            metrics
                .audit_commit_seconds
                .observe(commit_ended - committing);
            if committed.is_err() {
                metrics.audit_failures.add(1);
            }
            observe(metrics, exchange, outcome, upstream, started.elapsed());
        }
        if let Some(trace) = exchange.trace.as_deref_mut() {
            let mut span = Span::new("audit commit", SpanKind::Internal, committing, commit_ended);
            if let Err(err) = &committed {
                span.error = Some(err.to_string());
            }
            trace.push(span);
        }
        let seq = committed.as_ref().ok().copied().flatten();
        self.finish_trace(exchange, outcome, seq);
        match committed {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(error = %err, "AUDIT: an exchange cannot be recorded");
                false
            }
        }
    }

    /// Ends the exchange's span (if it is traced) and hands its trace to
    /// the exporter.
    fn finish_trace(&self, exchange: &mut Exchange, outcome: &Outcome, seq: Option<u64>) {
        let (Some(tracer), Some(recording)) = (self.tracer.get(), exchange.trace.take()) else {
            return;
        };
        let mut root = root_of(
            exchange,
            outcome,
            seq,
            &self.config.proxy.namespace_separator,
        );
        let mut recording = recording;
        if let Some(scrubber) = self.scrubber.get() {
            scrub_trace(scrubber, &mut root, &mut recording);
        }
        tracer.finish(recording, root);
    }
}

/// Counts and times an exchange. Labels are bounded: the method by the
/// MCP methods, the server by the config, the tool or prompt by the
/// server's list (a name only once routing found it there: an unknown
/// name, which a client chooses, is never a label; a resource's URI never
/// is one).
pub fn observe(
    metrics: &Metrics,
    exchange: &Exchange,
    outcome: &Outcome,
    upstream: Option<Duration>,
    total: Duration,
) {
    let context = &exchange.context;
    let method = crate::metrics::method_label(&context.method);
    let server = context.server.as_deref().unwrap_or("");
    // A server chooses its tools' names: a long one is cut.
    let tool = match (&context.target, &context.server) {
        (Some(target), Some(_)) if matches!(method, "tools/call" | "prompts/get") => {
            crate::protocol::cut(target, 128)
        }
        _ => "",
    };
    let decision = match outcome {
        Outcome::Delivered => "allow",
        Outcome::Denied { interceptor, .. } => {
            metrics.denials.get([interceptor, method]).add(1);
            if &**interceptor == "ratelimit" {
                metrics.rate_limited.get([&context.client.name]).add(1);
            }
            "deny"
        }
        Outcome::Failed { .. } => "error",
    };
    metrics
        .requests
        .get([method, server, tool, decision])
        .add(1);
    metrics.request_seconds.get([method]).observe(total);
    if let Some(upstream) = upstream {
        metrics.upstream_seconds.get([server]).observe(upstream);
    }
    for (rule, direction, count) in crate::interceptors::redact::counts(&exchange.annotations) {
        metrics.redactions.get([&rule, &direction]).add(count);
    }
}

/// Scrubs what a trace carries from a peer's words before it is exported:
/// the exchange's name and its tool, prompt or resource names (a URI may
/// hold a credential; a server names its tools), and every span's error
/// (a refusal's reason can quote what was refused).
fn scrub_trace(
    scrubber: &crate::interceptors::Redact,
    root: &mut Root,
    recording: &mut crate::traces::Recording,
) {
    root.name = scrubber.scrubbed(&root.name);
    // Every text attribute: names, URIs, the request id a peer chose.
    for (_, value) in &mut root.attributes {
        if let Attr::Text(text) = value {
            *value = Attr::from(scrubber.scrubbed(text.as_str()));
        }
    }
    let errors = std::iter::once(&mut root.error)
        .chain(recording.spans_mut().iter_mut().map(|span| &mut span.error));
    for error in errors.flatten() {
        *error = scrubber.scrubbed(error);
    }
}

/// What `authz` noted on the exchange under `key` (its policy ids, decision
/// id, policy set), for the record and the trace alike.
fn authz_note<'a>(exchange: &'a Exchange, key: &str) -> Option<&'a str> {
    exchange
        .annotations
        .iter()
        .find(|a| &*a.interceptor == "authz" && a.key == key)
        .map(|a| a.value.as_str())
}

/// The exchange's own span, as its audit record tells it: the method and
/// the name the client called, the decision, the deciding interceptor, the
/// policies, and the record's sequence number. Never a URI in the name (span
/// names stay few) and never an argument.
pub fn root_of(exchange: &Exchange, outcome: &Outcome, seq: Option<u64>, separator: &str) -> Root {
    let context = &exchange.context;
    let method = crate::metrics::method_label(&context.method);
    let mut attributes: Vec<(&'static str, Attr)> = vec![
        // A method outside MCP's is `other`: a client chooses it.
        (
            "mcp.method.name",
            if method == &*context.method {
                context.method.clone().into()
            } else {
                Attr::from("other")
            },
        ),
        ("mcp.session.id", context.session.clone().into()),
        ("portcullis.client", context.client.name.clone().into()),
        ("portcullis.transport", context.transport.as_str().into()),
    ];
    if let Some(id) = &context.request_id {
        let id = match id {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        attributes.push(("jsonrpc.request.id", id.into()));
    }
    // The name a client calls a tool or prompt by (never a URI: span
    // names stay few).
    let mut name = method.to_owned();
    if let Some(server) = &context.server {
        attributes.push(("portcullis.server", server.clone().into()));
        if let Some(target) = &context.target {
            let key = match &*context.method {
                "tools/call" => Some("gen_ai.tool.name"),
                "prompts/get" => Some("gen_ai.prompt.name"),
                "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                    attributes.push(("mcp.resource.uri", target.clone().into()));
                    None
                }
                _ => None,
            };
            if let Some(key) = key {
                let namespaced = format!("{server}{separator}{target}");
                name = format!("{method} {namespaced}");
                attributes.push((key, namespaced.into()));
            }
        }
    }
    let (decision, error) = match outcome {
        Outcome::Delivered => ("allow", None),
        Outcome::Denied {
            interceptor,
            reason,
        } => {
            attributes.push(("portcullis.decided_by", interceptor.clone().into()));
            ("deny", Some(reason.clone()))
        }
        Outcome::Failed { reason } => ("error", Some(reason.clone())),
    };
    attributes.push(("portcullis.decision", decision.into()));
    if let Some(ids) = authz_note(exchange, "policy_ids").filter(|ids| !ids.is_empty()) {
        attributes.push(("portcullis.policy_ids", ids.to_owned().into()));
    }
    if let Some(seq) = seq.and_then(|seq| i64::try_from(seq).ok()) {
        attributes.push(("portcullis.audit.seq", Attr::Int(seq)));
    }
    Root {
        name,
        attributes,
        error,
    }
}

/// The level a server is sent: the lowest any session asked for (sessions
/// that never asked do not count), `None` when none asked.
fn lowest_level(
    levels: impl IntoIterator<Item = Option<protocol::LogLevel>>,
) -> Option<protocol::LogLevel> {
    levels.into_iter().flatten().min()
}

/// What became of a notification offered to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Delivery {
    Delivered,
    /// Refused by the chain (authz: the client may not use the server).
    Withheld,
    /// A log message below the session's level.
    BelowLevel,
    Unreachable,
}

/// How a request ended, for its audit record.
struct Handled {
    /// The reply to send (`None`: the client cancelled the request).
    reply: Option<Value>,
    exchange: Exchange,
    outcome: Outcome,
    /// Time spent waiting on the server, if the request reached one.
    upstream: Option<Duration>,
    /// The arguments as the chain left them, as the audit keeps them.
    arguments: Arguments,
}

/// A call's arguments as its audit record keeps them.
#[derive(Debug, Default)]
struct Arguments {
    /// SHA-256 of the arguments as the chain left them (redacted).
    sha256: Option<String>,
    /// The arguments themselves, every secret redacted
    /// (`[audit] arguments = "redacted"`).
    stored: Option<Value>,
}

/// Stored arguments larger than this (as JSON) are replaced by a note.
const MOST_STORED_ARGUMENT_BYTES: usize = 64 * 1024;

/// The audit record of an exchange. Arguments are kept as a hash only, and
/// the result by its size.
fn record_of(
    exchange: &Exchange,
    outcome: &Outcome,
    reply: Option<&Value>,
    upstream: Option<Duration>,
    arguments: &Arguments,
    total: Duration,
) -> crate::audit::AuditRecord {
    let context = &exchange.context;
    let annotation = |key: &str| authz_note(exchange, key).map(str::to_owned);
    let (decision, decided_by, reason) = match outcome {
        // A result that broke its output schema and was passed on
        // (`[schema] output = "log"`) says so.
        Outcome::Delivered => (
            "allow",
            None,
            exchange
                .annotations
                .iter()
                .find(|a| &*a.interceptor == "schema" && a.key == "output_violation")
                .map(|a| {
                    format!(
                        "the result does not match the tool's output schema (passed on): {}",
                        a.value
                    )
                }),
        ),
        Outcome::Denied {
            interceptor,
            reason,
        } => ("deny", Some(interceptor.to_string()), Some(reason.clone())),
        Outcome::Failed { reason } => ("error", None, Some(reason.clone())),
    };
    let is_error = reply.is_some_and(|r| {
        r.get("error").is_some()
            || r.pointer("/result/isError").and_then(Value::as_bool) == Some(true)
    });
    crate::audit::AuditRecord {
        seq: 0,
        time: crate::audit::timestamp(std::time::SystemTime::now()),
        kind: "exchange".into(),
        session: context.session.to_string(),
        client: context.client.name.to_string(),
        transport: context.transport.as_str().into(),
        server: context.server.as_deref().map(str::to_owned),
        method: context.method.to_string(),
        target: context.target.clone(),
        request_id: context.request_id.clone(),
        decision: decision.into(),
        decided_by,
        policy_ids: annotation("policy_ids")
            .filter(|ids| !ids.is_empty())
            .map(|ids| ids.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        decision_id: annotation("decision_id"),
        policy_set: annotation("policy_set"),
        reason,
        redactions: crate::interceptors::redact::counts(&exchange.annotations)
            .into_iter()
            .map(|(rule, direction, count)| crate::audit::Redaction {
                rule,
                direction,
                count,
            })
            .collect(),
        arguments_sha256: arguments.sha256.clone(),
        result_bytes: reply.map_or(0, |r| serde_json::to_vec(r).map_or(0, |b| b.len() as u64)),
        is_error,
        upstream_us: upstream.map(|d| d.as_micros() as u64),
        total_us: total.as_micros() as u64,
        detail: detail_of(exchange, arguments),
        prev_hash: String::new(),
        hash: String::new(),
        mac: None,
    }
}

/// The record's `detail`: the stored arguments, and what each WASM plugin
/// noted (`plugins.NAME.KEY`, its annotations and failures).
fn detail_of(exchange: &Exchange, arguments: &Arguments) -> Option<Value> {
    let mut detail = serde_json::Map::new();
    if let Some(stored) = &arguments.stored {
        detail.insert("arguments".into(), stored.clone());
    }
    let mut plugins = serde_json::Map::new();
    for annotation in &exchange.annotations {
        if let Some(plugin) = annotation.interceptor.strip_prefix("wasm:")
            && let Value::Object(notes) = plugins
                .entry(plugin)
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
        {
            notes.insert(
                annotation.key.clone(),
                Value::from(annotation.value.as_str()),
            );
        }
    }
    if !plugins.is_empty() {
        detail.insert("plugins".into(), Value::Object(plugins));
    }
    // The trace the exchange is part of: from the record to its spans.
    if let Some(trace) = &exchange.trace {
        detail.insert("trace_id".into(), Value::from(trace.trace_id().to_hex()));
        detail.insert("span_id".into(), Value::from(trace.span_id().to_hex()));
    }
    (!detail.is_empty()).then_some(Value::Object(detail))
}

/// Puts the W3C `traceparent` of the proxy's upstream span into a request's
/// `params._meta`, replacing the caller's (which is its parent). A request
/// whose `params` is not an object is left as it is.
fn propagate(outgoing: &mut Value, traceparent: String) {
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
fn reply_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

/// Every page of a server's list (up to [`MAX_LIST_PAGES`]); a failure keeps
/// what was read so far.
async fn fetch_all(
    upstream: &Upstream,
    method: &str,
    key: &str,
    scrub: &(dyn Fn(&str) -> String + Sync),
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        match upstream.request(method, params).await {
            Ok(result) => {
                if let Some(page) = result.get(key).and_then(Value::as_array) {
                    items.extend(page.iter().cloned());
                }
                match result.get("nextCursor").and_then(Value::as_str) {
                    Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                    _ => break,
                }
            }
            Err(err) => {
                // The server's own words: scrubbed like a record's.
                let error = scrub(&err.to_string());
                tracing::warn!(server = %upstream.name(), method, error, "cannot read the list");
                break;
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LogLevel;

    /// A token the default rules find (built here, so that the source
    /// itself holds none).
    fn secret() -> String {
        format!("ghp_{}", "Zk3Qw9Lm2Xv8Rt5Yp1Bn7Hc4Jd6Fg0Sa2Ue9")
    }

    fn scrubber() -> Arc<crate::interceptors::Redact> {
        match crate::interceptors::Redact::new(&crate::config::RedactConfig::default()) {
            Ok(redact) => Arc::new(redact),
            Err(err) => panic!("the default rules load: {err}"),
        }
    }

    #[test]
    fn a_server_is_sent_the_lowest_level_any_session_asked_for() {
        use LogLevel::*;
        assert_eq!(lowest_level([]), None);
        assert_eq!(lowest_level([None, None]), None, "nobody asked");
        assert_eq!(lowest_level([None, Some(Warning)]), Some(Warning));
        assert_eq!(
            lowest_level([Some(Error), None, Some(Info), Some(Emergency)]),
            Some(Info)
        );
        assert!(Debug < Info && Info < Notice && Notice < Warning && Warning < Error);
        assert!(Error < Critical && Critical < Alert && Alert < Emergency);
        for level in LogLevel::ALL {
            assert_eq!(LogLevel::parse(level.as_str()), Some(level));
        }
        assert_eq!(LogLevel::parse("Info"), None, "names are lowercase");
        assert_eq!(LogLevel::parse("warn"), None);
    }

    #[test]
    fn a_session_gets_the_log_messages_at_or_above_its_level() {
        struct Nowhere;
        impl Outlet for Nowhere {
            fn deliver(&self, _: Value, _: Option<&Value>) -> bool {
                false
            }
        }
        let session = Session::new(
            1,
            "s".into(),
            ClientIdentity::new("c", &[]),
            Transport::Http,
            Arc::new(Nowhere),
        );
        let message = |level: &str| {
            protocol::notification(
                "notifications/message",
                json!({ "level": level, "data": "x" }),
            )
        };
        // Never asked: every message, even one without a known level.
        assert!(session.wants_log(&message("debug")));
        assert!(session.wants_log(&message("nonsense")));
        session.state().log_level = Some(LogLevel::Warning);
        assert!(!session.wants_log(&message("debug")));
        assert!(!session.wants_log(&message("info")));
        assert!(session.wants_log(&message("warning")));
        assert!(session.wants_log(&message("emergency")));
        assert!(!session.wants_log(&message("nonsense")));
    }

    #[test]
    fn what_a_record_and_a_trace_keep_is_scrubbed() {
        let path = std::path::Path::new("portcullis.toml");
        let config = match Config::parse("[[clients]]\nname = \"tester\"\n", path) {
            Ok(config) => Arc::new(config),
            Err(err) => panic!("{err}"),
        };
        let (gateway, _events) = Gateway::new(config, Chain::default(), None);
        let secret = secret();
        gateway.scrub_with(scrubber());
        let uri = format!("file:///notes?token={secret}");
        let mut record = crate::audit::AuditRecord::event("exchange", "deny");
        record.target = Some(uri.clone());
        record.reason = Some(format!("read_resource on `{uri}` is not permitted"));
        record.detail = Some(json!({
            "plugins": { "p": { "note": secret } },
            "arguments": { "kept": "already redacted" },
        }));
        gateway.scrub_record(&mut record);
        let stored = serde_json::to_string(&record).unwrap_or_default();
        assert!(!stored.contains(&secret), "{stored}");
        assert_eq!(
            record.target.as_deref(),
            Some("file:///notes?token=[REDACTED:github-pat-classic]")
        );
        assert!(
            record
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("[REDACTED:github-pat-classic]")),
            "{record:?}"
        );

        let (tracer, _queue) = crate::traces::Tracer::new(1.0);
        let Some(mut recording) = tracer.start(&json!({})) else {
            panic!("sampled at 1.0");
        };
        let now = std::time::Instant::now();
        let mut refused = Span::new("authz request", SpanKind::Internal, now, now);
        refused.error = Some(format!("read_resource on `{uri}`"));
        recording.push(refused);
        let mut root = Root {
            name: format!("tools/call srv__x-{secret}"),
            attributes: vec![
                ("mcp.resource.uri", Attr::from(uri.clone())),
                ("gen_ai.tool.name", Attr::from(format!("srv__x-{secret}"))),
            ],
            error: Some(uri.clone()),
        };
        scrub_trace(&scrubber(), &mut root, &mut recording);
        let exported = format!("{root:?} {:?}", recording.spans());
        assert!(!exported.contains(&secret), "{exported}");
        assert!(exported.contains("[REDACTED:"), "{exported}");
    }
}
