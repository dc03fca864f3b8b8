//! What the proxy answers itself: `initialize`, lists from the catalog,
//! `logging/setLevel`, subscriptions.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::protocol::{self, Method};
use crate::upstream::Status;

use super::failure::Failure;
use super::{Catalog, Gateway, Session};

/// How long the proxy waits for a server to take a new log level.
pub(super) const LOG_LEVEL_WAIT: Duration = Duration::from_secs(5);

/// The level a server is sent: the lowest any session asked for (sessions
/// that never asked do not count), `None` when none asked.
pub(super) fn lowest_level(
    levels: impl IntoIterator<Item = Option<protocol::LogLevel>>,
) -> Option<protocol::LogLevel> {
    levels.into_iter().flatten().min()
}

impl Gateway {
    pub(super) async fn answer_locally(
        self: &Arc<Self>,
        session: &Arc<Session>,
        method: &Method,
        message: &Value,
        listed_from: &mut Option<Arc<Catalog>>,
    ) -> Result<Value, Failure> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        if !matches!(method, Method::Ping | Method::LoggingSetLevel) {
            self.await_lists().await;
        }
        let catalog = self.catalog();
        *listed_from = Some(catalog.clone());
        let result = match method {
            Method::Initialize => self.initialize(session, message)?,
            Method::ServerDiscover => json!({
                // A stdio connection that speaks 2026-07-28 speaks nothing
                // else; over HTTP each request may pick its revision.
                "supportedVersions": match session.transport {
                    crate::chain::Transport::Stdio => &[protocol::MODERN_VERSION][..],
                    _ => protocol::ALL_VERSIONS,
                },
                "capabilities": self.discovered_capabilities(),
                "instructions": self.instructions(),
                "_meta": { protocol::meta::SERVER_INFO: super::modern::server_info() },
            }),
            // Another session still reads it there (see
            // `unsubscribes_at_server`): this session's alone is taken out.
            Method::Ping | Method::ResourcesUnsubscribe => json!({}),
            Method::LoggingSetLevel => {
                let name = protocol::param_str(message, "level").ok_or_else(|| {
                    Failure::InvalidParams("`params.level` must be a string".to_owned())
                })?;
                let level = protocol::LogLevel::parse(name).ok_or_else(|| {
                    Failure::InvalidParams(format!(
                        "unknown log level `{}`: use debug, info, notice, warning, error, critical, alert or emergency",
                        protocol::cut(name, 64)
                    ))
                })?;
                // The session's own level: the proxy filters what it gets.
                session.state().log_level = Some(level);
                self.apply_log_levels(Some(session)).await;
                json!({})
            }
            _ => match method.list() {
                Some(list) => {
                    let items = self.visible_items(session, &catalog, list.result_key());
                    self.page(message, &items, list.result_key())?
                }
                None => return Err(Failure::MethodNotFound(method.to_string())),
            },
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
    pub(super) async fn apply_log_levels(&self, asked_by: Option<&Session>) {
        // Decided under the lock, sent outside it: a server that never
        // answers holds nobody else's `logging/setLevel`.
        let mut sends = Vec::new();
        {
            let mut sent = self.log_levels.lock().await;
            let sessions = self.sessions.initialized();
            let instances = self
                .servers
                .instances(asked_by.map(|session| &session.client.name));
            for ((index, instance), upstream) in instances {
                if asked_by.is_some_and(|session| !self.may_use(session, index)) {
                    continue;
                }
                let Status::Ready(info) = upstream.status() else {
                    continue;
                };
                // A 2026-07-28 server has no `logging/setLevel`.
                if info.pointer("/capabilities/logging").is_none() || upstream.speaks_stateless() {
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
            let asked =
                upstream.request(Method::LoggingSetLevel, json!({ "level": wanted.as_str() }));
            let failed = match tokio::time::timeout(LOG_LEVEL_WAIT, asked).await {
                Ok(Ok(_)) => return,
                // The server's own words: scrubbed like a record's.
                Ok(Err(err)) => self.records.scrubbed(&err.to_string()),
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

    pub(super) fn initialize(&self, session: &Session, message: &Value) -> Result<Value, Failure> {
        let params = protocol::params(message);
        let requested = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Failure::InvalidParams("`params.protocolVersion` must be a string".to_owned())
            })?;
        let version = protocol::negotiated_version(requested);
        {
            let mut state = session.state();
            if state.initialized {
                return Err(Failure::AlreadyInitialized);
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
        let mut started = super::record::session_event(session, "session_start");
        started.detail = Some(json!({
            "agent": client_name,
            "agent_version": params
                .and_then(|p| p.get("clientInfo"))
                .and_then(|info| info.get("version"))
                .and_then(Value::as_str),
            "protocol_version": version,
        }));
        self.records.event(started);
        Ok(json!({
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": { "name": "portcullis", "version": env!("CARGO_PKG_VERSION") },
            "instructions": self.instructions(),
        }))
    }

    /// Resumes here, as `resumed` says it was settled, a session another
    /// replica began (or this one forgot): it is initialized, and its
    /// `session_start` record says it was resumed.
    pub fn resume_session(
        &self,
        id: Arc<str>,
        client: crate::chain::ClientIdentity,
        outlet: Arc<dyn super::Outlet>,
        resumed: super::Resumed,
    ) -> Arc<Session> {
        let session = self.open_session(id, client, crate::chain::Transport::Http, outlet);
        {
            let mut state = session.state();
            state.initialized = true;
            state.protocol_version = Some(resumed.version.clone());
            state.client_capabilities = resumed.capabilities;
        }
        tracing::info!(session = %session.id, client = %session.client.name, agent = resumed.agent, version = resumed.version, "session resumed");
        let mut started = super::record::session_event(&session, "session_start");
        started.detail = Some(json!({
            "agent": resumed.agent,
            "protocol_version": resumed.version,
            "resumed": true,
        }));
        self.records.event(started);
        session
    }

    /// What `server/discover` offers: the capabilities, and the tasks
    /// extension (whether a call becomes a task is its server's choice;
    /// the proxy carries the tasks of those that make them).
    fn discovered_capabilities(&self) -> Value {
        let mut capabilities = self.capabilities();
        if let Some(offered) = capabilities.as_object_mut() {
            offered.insert(
                "extensions".into(),
                json!({ super::task_table::EXTENSION: {} }),
            );
        }
        capabilities
    }

    /// The servers' capabilities merged. Tools, prompts and resources are
    /// always offered (the lists are the proxy's own, and a server that comes
    /// up later announces itself through `list_changed`).
    pub(super) fn capabilities(&self) -> Value {
        let mut subscribe = false;
        let mut logging = false;
        let mut completions = false;
        // The configured servers': a catalog's is only its holders' (a
        // session that did not add it hears nothing of it).
        for upstream in self.upstreams() {
            if let Some(info) = upstream.status().info() {
                let caps = info.get("capabilities");
                let has = |pointer: &str| caps.and_then(|c| c.pointer(pointer)).is_some();
                // (Subscriptions to a 2026-07-28 server are made on the
                // proxy's listen stream to it; its log messages are asked
                // for in each request's envelope, at the client's level.)
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

    pub(super) fn instructions(&self) -> String {
        let separator = &self.config.proxy.namespace_separator;
        let mut text = format!(
            "Portcullis proxies several MCP servers. Tool and prompt names are prefixed with their server's name and `{separator}`."
        );
        for upstream in self.upstreams() {
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
    pub(super) fn page(
        &self,
        message: &Value,
        items: &[Value],
        key: &str,
    ) -> Result<Value, Failure> {
        let size = self.config.proxy.list_page_size;
        let start = match protocol::param_str(message, "cursor") {
            None => 0,
            Some(cursor) => cursor
                .strip_prefix("offset:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n <= items.len())
                .ok_or_else(|| Failure::InvalidParams("invalid `cursor`".to_owned()))?,
        };
        let end = (start + size).min(items.len());
        let mut result = Map::new();
        result.insert(
            key.into(),
            Value::Array(items.get(start..end).unwrap_or_default().to_vec()),
        );
        if end < items.len() {
            result.insert("nextCursor".into(), Value::from(format!("offset:{end}")));
        }
        Ok(Value::Object(result))
    }

    /// `session`'s `resources/subscribe` or `resources/unsubscribe` of
    /// `uri`, answered with `reply`: kept if it succeeded, and what is held
    /// at servers told.
    pub(super) fn track_subscription(
        &self,
        session: &Session,
        method: &Method,
        uri: &Option<String>,
        reply: &Value,
    ) {
        let (Some(uri), Some(_)) = (uri, reply.get("result")) else {
            return;
        };
        let subscribe = *method == Method::ResourcesSubscribe;
        self.subscriptions.track(session, subscribe, uri);
        self.update_holds();
    }

    /// A closed session's subscriptions: taken out, and a URI nobody else
    /// (of its client, at a per-client instance) is subscribed to any more
    /// is unsubscribed from at its server, so that a server does not keep
    /// sending updates nobody reads.
    pub(super) fn drop_subscriptions(&self, session: &Session) {
        let released = self.subscriptions.drop_session(
            session,
            &self.catalog(),
            (&self.servers, &self.sessions),
        );
        self.update_holds();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (index, instance, uri) in released {
            let Some(upstream) = self.servers.upstream_of(index, &instance) else {
                continue;
            };
            let scrubbed = self.records.scrubbed(&uri);
            runtime.spawn(async move {
                // A 2026-07-28 server's: off the proxy's listen stream.
                let asked = if upstream.speaks_stateless() {
                    upstream.listen_change(&uri, false).await
                } else {
                    let asked = upstream.request(Method::ResourcesUnsubscribe, json!({ "uri": uri }));
                    asked.await.map(drop)
                };
                if asked.is_err() {
                    tracing::debug!(server = %upstream.name(), uri = scrubbed, "cannot unsubscribe");
                }
            });
        }
    }

    /// Subscriptions and tasks live in the server: a server with
    /// subscribers or tasks running is not stopped for idleness (every
    /// instance of it, for a per-client one).
    pub(super) fn update_holds(&self) {
        let catalog = self.catalog();
        let mut held = self.subscriptions.owners(&catalog);
        held.extend(self.client_tasks.running_servers());
        self.servers.hold(&held);
    }

    /// After a restart the server has forgotten its subscriptions: subscribe
    /// again to every URI it owns that sessions (of its client, for a
    /// per-client instance) are subscribed to.
    pub(super) async fn resubscribe(&self, index: usize, instance: &Option<Arc<str>>) {
        let Some(upstream) = self.servers.upstream_of(index, instance) else {
            return;
        };
        // A 2026-07-28 server's subscriptions are on the proxy's listen
        // stream, asked again at each start.
        if upstream.speaks_stateless() {
            return;
        }
        let catalog = self.catalog();
        let uris = self.subscriptions.uris(|uri, subscribers| {
            catalog.resource_owner(uri) == Some(index)
                && subscribers.iter().any(|key| {
                    self.sessions.get(*key).is_some_and(|session| {
                        instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                    })
                })
        });
        for uri in uris {
            if let Err(err) = upstream
                .request(Method::ResourcesSubscribe, json!({ "uri": uri }))
                .await
            {
                // The server's words may quote the URI: scrubbed.
                let error = self.records.scrubbed(&err.to_string());
                tracing::warn!(server = %upstream.name(), error, "cannot renew a resource subscription");
            }
        }
    }
}
