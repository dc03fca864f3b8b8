//! What the proxy answers itself: `initialize`, lists from the catalog,
//! `logging/setLevel`, subscriptions.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::protocol::{self, Method};

use super::failure::Failure;
use super::{Catalog, Gateway, Session};

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
            self.lists.await_lists(self).await;
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
                self.log_levels.apply(self, Some(session)).await;
                json!({})
            }
            _ => match method.list() {
                Some(list) => {
                    let items = super::discovery::Discovery::visible_items(
                        self.discovery.as_ref(),
                        session,
                        &catalog,
                        list.result_key(),
                    );
                    let mut page = self.page(message, &items, list.result_key())?;
                    if *method == Method::ToolsList {
                        self.code_tool_in(session, &mut page).await;
                    }
                    page
                }
                None => return Err(Failure::MethodNotFound(method.to_string())),
            },
        };
        Ok(protocol::result(id, result))
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
        self.flows.resumed(&session);
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
        for upstream in self.servers.upstreams() {
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
        for upstream in self.servers.upstreams() {
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

    /// The code tool in a page of `tools/list`, if there, described for
    /// `session`'s client.
    async fn code_tool_in(self: &Arc<Self>, session: &Arc<Session>, page: &mut Value) {
        if self.code.is_none() {
            return;
        }
        let name = format!(
            "{}{}{}",
            crate::config::PROXY_SERVER,
            self.config.proxy.namespace_separator,
            crate::config::CODE_TOOL
        );
        let Some(item) = page
            .get_mut("tools")
            .and_then(Value::as_array_mut)
            .and_then(|tools| {
                tools
                    .iter_mut()
                    .find(|tool| tool.get("name").and_then(Value::as_str) == Some(&name))
            })
        else {
            return;
        };
        self.code_tool_for(session, item).await;
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

    /// Subscriptions and tasks live in the server: a server with
    /// subscribers or tasks running is not stopped for idleness (every
    /// instance of it, for a per-client one).
    pub(super) fn update_holds(&self) {
        let catalog = self.catalog();
        let mut held = self.subscriptions.owners(&catalog);
        held.extend(self.client_tasks.running_servers());
        self.servers.hold(&held);
    }
}
