//! The gateway: client sessions, aggregation of what the servers offer,
//! routing, id remapping, and the server→client direction.
//!
//! Every message passes through the interceptor chain here, in both
//! directions; this is also the one place where refusals and failures turn
//! into JSON-RPC errors for the client.

mod ask;
#[cfg(test)]
mod ask_tests;
mod catalog;
mod code;
#[cfg(test)]
mod code_tests;
mod discovery;
#[cfg(test)]
mod discovery_tests;
mod failure;
mod flows;
#[cfg(test)]
mod harness;
mod in_flight;
mod input_required;
mod instances;
mod listen;
mod lists;
mod local;
mod log_levels;
mod modern;
#[cfg(test)]
mod modern_tests;
mod notifications;
mod record;
mod relay;
#[cfg(test)]
mod relay_tests;
mod reload;
#[cfg(test)]
mod reload_tests;
mod rounds;
#[cfg(test)]
mod rounds_tests;
mod route;
mod run;
mod server;
mod session;
mod sign_in;
mod slots;
mod subscriptions;
mod task_table;
#[cfg(test)]
mod task_table_tests;
mod tasks;
mod telemetry;
#[cfg(test)]
mod tests;

pub use catalog::{Catalog, ServerLists};
pub use failure::{Failure, REFUSAL_META};

pub use instances::Breakers;
pub use modern::{checked_envelope, version_spoken};
pub use record::Records;
pub use reload::{ReloadError, Reloaded, Reloads};
pub use route::reply_id;
pub use session::{Outlet, Resumed, Revision, Session, Sessions};
pub use slots::Servers;
pub use telemetry::{Enforced, observe, root_of};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::chain::{Chain, ClientIdentity, Transport};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol;
use crate::traces::{Export, Tracer};
use crate::upstream::{Status, Upstream, UpstreamEvent};

pub struct Gateway {
    config: Arc<Config>,
    chain: Chain,
    /// Each exchange's and event's record, counts and trace.
    records: Records,
    /// The fleet's places among servers' requests in flight, in Redis
    /// (`[ratelimit.shared]`).
    shared_places: Option<Arc<crate::interceptors::ratelimit::SharedPlaces>>,
    /// Who may use which server (everyone without authz).
    access: Option<Arc<crate::interceptors::ServerAccess>>,
    /// The log level last sent to each running instance.
    log_levels: log_levels::LogLevels,
    /// Per server instance: the current second's unattributed
    /// notifications (relayed, dropped over the cap).
    unattributed: notifications::Unattributed,
    /// The servers by index and their per-client instances (see [`slots`]).
    servers: Servers,
    /// Config reloads, and what config is enforced.
    reloads: Reloads,
    /// The merged lists and the profile that filters them.
    lists: lists::Lists,
    /// The sessions open.
    sessions: Sessions,
    /// The links to sign in given as URL elicitations, and to whom.
    elicitations: sign_in::Elicitations,
    /// Resource URI → sessions subscribed to it.
    subscriptions: subscriptions::Subscriptions,
    /// 2026-07-28 calls waiting for their client's next round, and each
    /// client's questions waiting for its answers.
    rounds: rounds::Rounds,
    /// Each client's 2026-07-28 listen streams open.
    listens: listen::Listens,
    /// (server, instance, the server's request id) → (session, the id the
    /// client saw), for server→client requests in flight.
    forwarded: server::Forwarded,
    /// The 2026-07-28 tasks passed on to clients, by the proxy's id.
    client_tasks: task_table::Tasks,
    shutdown: CancellationToken,
    /// `[discovery]`: the catalogs' servers (upstreams from
    /// `discovery.first`) and who added which.
    discovery: Option<discovery::Discovery>,
    /// `[code_mode]`: the engine that runs `portcullis__code`'s scripts
    /// (`None`: off, or the engine could not start).
    code: Option<code::CodeMode>,
    /// The index the proxy's own tools (`[discovery]`'s, `[code_mode]`'s)
    /// are listed under, past the configured and catalog servers.
    own_tools: Option<usize>,
    /// `[flow]`: each client's flow (in its session, or its own).
    flows: flows::Flows,
}

/// A running copy of a server: (server, the client of a per-client instance).
type InstanceKey = (usize, Option<Arc<str>>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Makes the upstream of a server: its own, or (given a client's name) that
/// client's instance of a per-client server. The proxy's makes what the
/// config names; a test's connects scripted servers instead.
pub(crate) type MakeUpstream = dyn Fn(Arc<crate::config::ServerConfig>, Option<Arc<str>>, mpsc::Sender<UpstreamEvent>) -> Upstream
    + Send
    + Sync;

/// What the gateway is built with besides its config, chain and audit log:
/// each part given whole at construction, none set afterwards.
#[derive(Default)]
pub struct Wiring {
    /// Takes every secret out of what is stored and traced.
    pub scrubber: Option<Arc<crate::interceptors::Redact>>,
    /// Calls' arguments kept, redacted, in their records
    /// (`[audit] arguments = "redacted"`).
    pub keep_arguments: bool,
    /// Who may use which server (authz's); `None`: everyone may use every
    /// server.
    pub access: Option<Arc<crate::interceptors::ServerAccess>>,
    /// Servers' requests in flight counted in the fleet's places
    /// (`[[ratelimit.concurrency]]` with `[ratelimit.shared]`).
    pub shared_places: Option<Arc<crate::interceptors::ratelimit::SharedPlaces>>,
    /// Traces of exchanges and the task that exports them.
    pub traces: Option<(Tracer, Export)>,
}

impl Gateway {
    /// Builds the gateway whole from its parts; nothing runs until
    /// [`Gateway::start`].
    pub fn new(
        config: Arc<Config>,
        chain: Chain,
        audit: Option<Audit>,
        wiring: Wiring,
    ) -> (Arc<Self>, mpsc::Receiver<UpstreamEvent>) {
        let (limits, startup_timeout) = (config.limits, config.proxy.startup_timeout);
        let sign_ins = Arc::new(crate::signin::SignIns::new(config.clone()));
        let user_tokens = Arc::new(crate::upstream::UserTokens::with_sign_ins(sign_ins));
        let tokens = user_tokens.clone();
        let make = move |server, instance, events| {
            Upstream::new(
                server,
                instance,
                limits,
                startup_timeout,
                events,
                tokens.clone(),
            )
        };
        Self::build((config, chain, audit, wiring), Arc::new(make), user_tokens)
    }

    /// Builds the gateway with upstreams from `make` (the seam the
    /// in-process tests use).
    #[cfg(test)]
    pub(crate) fn with_upstreams(
        config: Arc<Config>,
        chain: Chain,
        audit: Option<Audit>,
        make: Arc<MakeUpstream>,
    ) -> (Arc<Self>, mpsc::Receiver<UpstreamEvent>) {
        let parts = (config, chain, audit, Wiring::default());
        Self::build(parts, make, Arc::default())
    }

    fn build(
        (config, chain, audit, wiring): (Arc<Config>, Chain, Option<Audit>, Wiring),
        make: Arc<MakeUpstream>,
        user_tokens: Arc<crate::upstream::UserTokens>,
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
        let (discovery, catalogued) = match &config.discovery {
            Some(offered) => {
                let (discovery, servers) = discovery::Discovery::new(offered, config.servers.len());
                (Some(discovery), servers)
            }
            None => (None, Vec::new()),
        };
        // Built at start: an engine that cannot start leaves the tool out.
        let code = config.code_mode.as_ref().and_then(code::CodeMode::new);
        let own_tools = (discovery.is_some() || code.is_some())
            .then(|| config.servers.len() + catalogued.len());
        let shutdown = CancellationToken::new();
        let servers = Servers::new(
            &config,
            &catalogued,
            own_tools.is_some(),
            (make, events_tx, user_tokens),
            shutdown.clone(),
        );
        let names = servers.names();
        let mut catalog = Catalog::new(names.len());
        if let Some(discovery) = &discovery {
            catalog = catalog.catalogued(discovery.first..discovery.proxy);
        }
        if let Some(own) = own_tools {
            let mut lists = discovery
                .as_ref()
                .map(|_| discovery::Discovery::lists())
                .unwrap_or_default();
            if code.is_some() {
                lists.tools.push(code::CodeMode::tool());
            }
            catalog = catalog
                .with_server(
                    own,
                    Some(Arc::new(lists)),
                    &names,
                    &config.proxy.namespace_separator,
                )
                .0;
        }
        let lists = lists::Lists::new(catalog, config.profile.clone().map(Arc::new));
        let Wiring {
            scrubber,
            keep_arguments,
            access,
            shared_places,
            traces,
        } = wiring;
        let records = Records::new(
            audit,
            scrubber,
            keep_arguments,
            traces,
            metrics,
            &config.proxy.namespace_separator,
        );
        let flows = flows::Flows::new(
            Arc::new(config.flow.clone()),
            &config.proxy.namespace_separator,
            (!config.proxy.session_keys.is_empty()).then_some(config.proxy.session_max_age),
        );
        let gateway = Arc::new(Self {
            lists,
            servers,
            reloads: Reloads::default(),
            chain,
            records,
            shared_places,
            access,
            log_levels: log_levels::LogLevels::default(),
            unattributed: notifications::Unattributed::default(),
            config,
            sessions: Sessions::default(),
            elicitations: sign_in::Elicitations::default(),
            subscriptions: subscriptions::Subscriptions::default(),
            listens: listen::Listens::default(),
            rounds: rounds::Rounds::default(),
            forwarded: server::Forwarded::default(),
            client_tasks: task_table::Tasks::default(),
            shutdown,
            discovery,
            code,
            own_tools,
            flows,
        });
        (gateway, events_rx)
    }

    /// Starts every server and the event loop, and waits (up to the startup
    /// timeout) until each server is ready or has failed its first start.
    pub async fn start(self: &Arc<Self>, events: mpsc::Receiver<UpstreamEvent>) {
        let this = self.clone();
        let event_loop = tokio::spawn(async move { this.event_loop(events).await });
        self.servers.keep_tasks([event_loop]);
        // A catalog's servers start when a session adds them.
        let configured = self.servers.configured();
        self.start_servers(&configured).await;
    }

    /// Starts servers (by index), and waits (up to the startup timeout)
    /// until each is ready or has failed its first start, then for the
    /// lists of those that came up: a first `tools/list` is complete.
    async fn start_servers(self: &Arc<Self>, servers: &[(usize, Upstream)]) {
        self.servers.start(servers);
        let settle = futures_util::future::join_all(servers.iter().map(|(_, u)| u.wait_settled()));
        let _ = tokio::time::timeout(self.config.proxy.startup_timeout, settle).await;
        // Their lists, read at once, within one startup timeout.
        let reads = servers
            .iter()
            .filter(|(_, upstream)| matches!(upstream.status(), Status::Ready(_)))
            .map(|(index, _)| self.lists.refresh(self, *index));
        let all = futures_util::future::join_all(reads);
        let _ = tokio::time::timeout(self.config.proxy.startup_timeout, all).await;
        // One whose lists are not read (a lazy server, started at its first
        // use): the sessions are told its lists changed at once (resource
        // templates with resources: one notification), and their next read
        // of a list starts it.
        const ANNOUNCED: [crate::protocol::List; 3] = [
            crate::protocol::List::Tools,
            crate::protocol::List::Prompts,
            crate::protocol::List::Resources,
        ];
        let catalog = self.lists.catalog();
        for (index, _) in servers {
            if catalog.server_lists(*index).is_none() {
                lists::Lists::announce_changes(self, *index, ANNOUNCED.to_vec());
            }
        }
    }

    /// Stops every server and ends every session.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        // A reload under way ends first (its servers, started under the
        // cancelled token, stop at once): every slot is known below.
        let _no_reload = self.reloads.stopping().await;
        self.rounds.drop_parked();
        let sessions = self.sessions.drain();
        let mut ended = Vec::new();
        for session in sessions {
            session.close();
            // A 2026-07-28 request's session was never opened as one.
            if session.revision.lasting() {
                ended.push(record::session_end(&session));
            }
        }
        self.records.stopping(ended).await;
        let tasks = self.servers.take_tasks();
        // Long enough for every container to be removed.
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::future::join_all(tasks),
        )
        .await;
        // A container whose creation was under way when its supervisor
        // stopped is still ours: none may outlive the proxy.
        if self.servers.any_container() {
            match crate::upstream::container::remove_owned().await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::warn!(count, "removed containers left by an interrupted start")
                }
                Err(err) => tracing::warn!(error = err, "cannot check for containers left behind"),
            }
        }
        // Last: the records of everything that ended above are on disk.
        self.records.close().await;
    }

    /// Whether `session`'s client may use server `index` (see
    /// [`ServerAccess`](crate::interceptors::ServerAccess)).
    fn may_use(&self, session: &Session, index: usize) -> bool {
        if !self.visible(session, index) {
            return false;
        }
        let (Some(access), Some(name)) = (self.access.as_ref(), self.servers.name_at(index)) else {
            return true;
        };
        let directory: Arc<dyn crate::chain::Directory> = self.catalog();
        let protocol = session.protocol_version().unwrap_or_default();
        access.may_use(
            &session.client,
            (session.transport, &protocol),
            name,
            &directory,
        )
    }

    /// Whether `session` sees server `index`: every configured one, a
    /// catalog's only once it added it.
    fn visible(&self, session: &Session, index: usize) -> bool {
        self.discovery
            .as_ref()
            .is_none_or(|discovery| discovery.visible(session, index))
    }

    /// What is written about what passes: records, metrics, traces.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The servers and their per-client instances.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.lists.catalog()
    }

    /// Applies the servers and the profile of `next` (the config loaded
    /// again); see [`Reloads`].
    pub async fn reload(self: &Arc<Self>, next: &Config) -> Result<Reloaded, ReloadError> {
        self.reloads.reload(self, next).await
    }

    /// Config reloads, and what config the proxy enforces.
    pub fn reloads(&self) -> &Reloads {
        &self.reloads
    }

    /// Tells every session (and listen stream) that a list changed
    /// (`notifications/*/list_changed`): a server's list, or what the proxy
    /// lets through (pins approved).
    pub fn announce(&self, kind: crate::protocol::List) {
        let message = protocol::notification(kind.changed().as_str(), serde_json::json!({}));
        let listeners = self.sessions.listeners();
        for session in self.sessions.initialized().into_iter().chain(listeners) {
            self.notify(&session, None, message.clone(), None, None);
        }
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
        let key = self.sessions.next_key();
        let session = Arc::new(Session::new(key, id, client, transport, outlet));
        self.sessions.insert(session.clone());
        tracing::debug!(session = %session.id, client = %session.client.name, "session opened");
        session
    }

    /// Opens the session of one 2026-07-28 request (its envelope gives the
    /// version, capabilities and log level; who the client is comes from
    /// its credential, as ever): registered while the request runs, so the
    /// server's answers and notifications for it find their way back, and
    /// closed by [`Gateway::close_stateless`] when it is answered. It is
    /// no session of the client's: nothing is recorded of its opening or
    /// end, and what is announced to sessions (list changes, servers' log
    /// levels) does not reach it. Its id (in its records, for plugins) is
    /// no secret and never reaches the client: a UUID (version 8) of this
    /// process's random prefix, drawn once from the OS, and the session's
    /// number, unique without a draw per request.
    pub fn open_stateless(
        &self,
        client: ClientIdentity,
        transport: Transport,
        outlet: Arc<dyn Outlet>,
        envelope: protocol::Envelope,
    ) -> Arc<Session> {
        let key = self.sessions.next_key();
        let id = request_session_id(key);
        let session = Arc::new(Session::of_request(
            key, id, client, transport, outlet, envelope,
        ));
        self.sessions.insert(session.clone());
        session
    }

    /// Ends the session of a 2026-07-28 request: a call of it still at a
    /// server is cancelled (the client went away), and what a listen
    /// request subscribed to is given up.
    /// A parked call's session (waiting for its client's next round) is
    /// left to the rounds: the request that parked it has ended, the call
    /// has not.
    pub fn close_stateless(&self, session: &Session) {
        let mut closed = false;
        session.unless_parked(|| {
            self.sessions.remove(session.key);
            session.close();
            closed = true;
        });
        if closed && session.listen_asked.load(Ordering::Relaxed) {
            self.subscriptions.session_closed(self, session);
        }
    }

    /// Ends the 2026-07-28 calls parked by requests that came through
    /// `origin` (a stdio connection that ended: nobody can continue them).
    pub fn end_parked_from(&self, origin: &Arc<dyn Outlet>) {
        self.rounds.end_parked_from(self, origin);
    }

    /// The sessions open.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn close_session(self: &Arc<Self>, session: &Session) {
        self.sessions.remove(session.key);
        // Its level no longer counts: a server may be sent a higher one.
        if session.log_level().is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let this = self.clone();
            runtime.spawn(async move { this.log_levels.apply(&this, None).await });
        }
        if !session.closed.is_cancelled() {
            self.records.event(record::session_end(session));
        }
        session.close();
        self.flows.closed(session);
        if let Some(discovery) = &self.discovery {
            discovery.forget(&discovery::Holder::Session(session.key));
        }
        // After it is closed: a subscription that completes meanwhile is
        // either taken out here or not kept (`track_subscription`).
        self.subscriptions.session_closed(self, session);
        tracing::debug!(session = %session.id, "session closed");
    }
}

/// A 2026-07-28 request's session id: this process's random half (from the
/// OS, once) and the session's number, as a version 8 UUID.
fn request_session_id(key: u64) -> Arc<str> {
    static PREFIX: std::sync::LazyLock<[u8; 8]> = std::sync::LazyLock::new(|| {
        let mut prefix = [0; 8];
        prefix.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        prefix
    });
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&*PREFIX);
    bytes[8..].copy_from_slice(&key.to_be_bytes());
    let id = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    Arc::from(
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()) as &str,
    )
}
