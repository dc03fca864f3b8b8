//! `[discovery]`: the proxy's own tools `portcullis__find`,
//! `portcullis__add` and `portcullis__remove`, over the catalogs the
//! operator named.
//!
//! Every server of those catalogs is a server of the gateway from the
//! start (an index past the configured ones), but nobody's: it runs, and
//! is listed, routed and heard, only for the sessions that added it (a
//! 2026-07-28 client, which has no session, adds it for its name). Cedar
//! decides what `find` shows (`find_servers`) and what `add` starts
//! (`add_server`), on `Server::"<name>"` with its catalog and image; the
//! calls themselves are tools of the server `portcullis`, decided, checked
//! and recorded like any other tool's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::chain::{Annotation, Exchange};
use crate::config::{DiscoveryConfig, ServerConfig};
use crate::interceptors::authz::{Action, Target};
use crate::protocol::{self, At as _};
use crate::search::{Index, server_fields};

use super::{Catalog, Gateway, ServerLists, Session, lock};
use crate::protocol::List;

/// Servers `portcullis__find` returns unless the call asks for fewer.
const DEFAULT_FOUND: usize = 10;
/// Servers `portcullis__find` returns at most.
const MAX_FOUND: usize = 50;
/// A query is at most this long (bytes).
const MAX_QUERY_BYTES: usize = 1024;

/// The proxy's own tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tool {
    Find,
    Add,
    Remove,
}

impl Tool {
    pub(super) fn parse(name: &str) -> Option<Self> {
        match name {
            "find" => Some(Self::Find),
            "add" => Some(Self::Add),
            "remove" => Some(Self::Remove),
            _ => None,
        }
    }
}

/// Who added a server: a session, or a 2026-07-28 client (by name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Holder {
    Session(u64),
    Client(Arc<str>),
}

impl Holder {
    pub(super) fn of(session: &Session) -> Self {
        if !session.revision.lasting() {
            Self::Client(session.client.name.clone())
        } else {
            Self::Session(session.key)
        }
    }
}

/// Why `reserve` took no place.
enum Reserved {
    /// The holder has it already.
    Already,
    Refused(String),
}

/// One server of the catalogs.
struct Entry {
    name: String,
    catalog: String,
    title: String,
    description: String,
    tools: Vec<String>,
    image: String,
    /// Its server index, or why it cannot be added.
    server: Result<usize, String>,
}

pub(super) struct Discovery {
    /// The first catalog server's index; those before are configured.
    pub(super) first: usize,
    /// The index the proxy's own tools are listed under (no upstream).
    pub(super) proxy: usize,
    entries: Vec<Entry>,
    search: Index,
    max_per_session: usize,
    /// Catalog servers in use by any holder at once, at most.
    max_servers: usize,
    /// What each holder added, in order.
    added: Mutex<HashMap<Holder, Vec<usize>>>,
    /// Per catalog server (from `first`): whether its supervisor runs.
    started: Vec<AtomicBool>,
}

impl Discovery {
    /// The discovery of `config`, its servers numbered from `first`, and
    /// those servers' configs in that order.
    pub(super) fn new(config: &DiscoveryConfig, first: usize) -> (Self, Vec<ServerConfig>) {
        let mut servers = Vec::new();
        let entries: Vec<Entry> = config
            .servers
            .iter()
            .map(|found| {
                let server = match &found.server {
                    Ok(server) => {
                        servers.push(server.clone());
                        Ok(first + servers.len() - 1)
                    }
                    Err(reason) => Err(reason.clone()),
                };
                Entry {
                    name: found.name.clone(),
                    catalog: found.catalog.clone(),
                    title: found.title.clone(),
                    description: found.description.clone(),
                    tools: found.tools.iter().map(|(name, _)| name.clone()).collect(),
                    image: found.image.clone(),
                    server,
                }
            })
            .collect();
        let search = Index::new(config.servers.iter().map(|found| {
            server_fields(&found.name, &found.title, &found.description, &found.tools)
        }));
        let started = servers.iter().map(|_| AtomicBool::new(false)).collect();
        let discovery = Self {
            first,
            proxy: first + servers.len(),
            entries,
            search,
            max_per_session: config.max_per_session,
            max_servers: config.max_servers,
            added: Mutex::new(HashMap::new()),
            started,
        };
        (discovery, servers)
    }

    /// The proxy's own tools, as its server lists them.
    pub(super) fn lists() -> ServerLists {
        let tool = |name: &str, description: &str, schema: Value| {
            json!({
                "name": name,
                "description": description,
                "inputSchema": schema,
                // `add` starts a container: no hint that it is harmless.
                "annotations": if name == "find" {
                    json!({ "readOnlyHint": true, "openWorldHint": false })
                } else {
                    json!({ "readOnlyHint": false })
                },
            })
        };
        ServerLists {
            tools: vec![
                tool(
                    "find",
                    "Search the catalogs of MCP servers this proxy may start for you, by words of their names, descriptions and tools. Returns each server's name, catalog, description, tools and whether it can be added.",
                    json!({
                        "type": "object",
                        "properties": {
                            "query": { "type": "string", "maxLength": MAX_QUERY_BYTES, "description": "Words to look for" },
                            "limit": { "type": "integer", "minimum": 1, "maximum": MAX_FOUND, "description": "Servers to return at most (10 unless set)" },
                        },
                        "required": ["query"],
                        "additionalProperties": false,
                    }),
                ),
                tool(
                    "add",
                    "Start a catalog server (by the name portcullis__find gave) for this session: its tools are listed from then on, as SERVER__TOOL.",
                    json!({
                        "type": "object",
                        "properties": { "name": { "type": "string", "maxLength": 63 } },
                        "required": ["name"],
                        "additionalProperties": false,
                    }),
                ),
                tool(
                    "remove",
                    "Take a server this session added out of it: its tools are no longer listed.",
                    json!({
                        "type": "object",
                        "properties": { "name": { "type": "string", "maxLength": 63 } },
                        "required": ["name"],
                        "additionalProperties": false,
                    }),
                ),
            ],
            ..ServerLists::default()
        }
    }

    /// Whether a server named `name` is one of the catalogs' (it has an
    /// index), or the proxy's own tools.
    pub(super) fn takes_name(&self, name: &str) -> bool {
        name == crate::config::PROXY_SERVER
            || self.entry(name).is_some_and(|entry| entry.server.is_ok())
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    fn target(entry: &Entry) -> Target {
        Target::Catalogued {
            name: entry.name.clone(),
            catalog: entry.catalog.clone(),
            image: entry.image.clone(),
        }
    }

    /// The servers `holder` added.
    fn added_by(&self, holder: &Holder) -> Vec<usize> {
        lock(&self.added).get(holder).cloned().unwrap_or_default()
    }

    /// Takes a place for `index` among `holder`'s servers (before it
    /// starts, so concurrent adds cannot pass the caps): `None` when taken;
    /// otherwise why not.
    fn reserve(&self, holder: &Holder, index: usize) -> Option<Reserved> {
        let mut all = lock(&self.added);
        let in_use: std::collections::HashSet<usize> = all.values().flatten().copied().collect();
        let mine = all.entry(holder.clone()).or_default();
        if mine.contains(&index) {
            return Some(Reserved::Already);
        }
        if mine.len() >= self.max_per_session {
            return Some(Reserved::Refused(format!(
                "this session has added {} servers, the most it may: remove one with portcullis__remove first",
                mine.len()
            )));
        }
        if !in_use.contains(&index) && in_use.len() >= self.max_servers {
            return Some(Reserved::Refused(format!(
                "the proxy already runs {} catalog servers for its sessions, the most `[discovery] max_servers` allows",
                in_use.len()
            )));
        }
        mine.push(index);
        None
    }

    /// Takes `index` out of `holder`'s servers (a place `reserve` took for
    /// a server that did not start, or one `remove` gives up); whether it
    /// was there.
    fn release(&self, holder: &Holder, index: usize) -> bool {
        let mut all = lock(&self.added);
        let Some(mine) = all.get_mut(holder) else {
            return false;
        };
        let before = mine.len();
        mine.retain(|&added| added != index);
        let released = mine.len() != before;
        if mine.is_empty() {
            all.remove(holder);
        }
        released
    }

    /// Forgets what `holder` added (its session closed).
    pub(super) fn forget(&self, holder: &Holder) {
        lock(&self.added).remove(holder);
    }
}

/// A tool's result: its text, an error or not.
fn tool_result(id: Value, text: String, error: bool) -> Value {
    protocol::result(
        id,
        json!({ "content": [{ "type": "text", "text": text }], "isError": error }),
    )
}

/// Notes what a discovery call was about, for its record's `detail`.
fn note(exchange: &mut Exchange, key: &str, value: &str) {
    exchange.annotations.push(Annotation {
        interceptor: Arc::from("discovery"),
        key: key.to_owned(),
        value: value.to_owned(),
    });
}

impl Discovery {
    /// Whether `session` sees server `index`: every configured one, a
    /// catalog's only once it added it.
    pub(super) fn visible(&self, session: &Session, index: usize) -> bool {
        if !(self.first..self.proxy).contains(&index) {
            return true;
        }
        lock(&self.added)
            .get(&Holder::of(session))
            .is_some_and(|added| added.contains(&index))
    }

    /// A merged list as `session` sees it: without the items of catalog
    /// servers it did not add (all of them without `[discovery]`).
    pub(super) fn visible_items<'c>(
        discovery: Option<&Self>,
        session: &Session,
        catalog: &'c Catalog,
        kind: &str,
    ) -> Cow<'c, [Value]> {
        let items: &'c [Value] = match kind {
            "tools" => &catalog.tools,
            "prompts" => &catalog.prompts,
            "resources" => &catalog.resources,
            _ => &catalog.templates,
        };
        let Some(discovery) = discovery else {
            return Cow::Borrowed(items);
        };
        let running =
            (discovery.first..discovery.proxy).any(|index| catalog.server_lists(index).is_some());
        if !running {
            return Cow::Borrowed(items);
        }
        // The session's own, read once for the whole list.
        let added = discovery.added_by(&Holder::of(session));
        let catalogued = discovery.first..discovery.proxy;
        Cow::Owned(
            items
                .iter()
                .filter(|item| {
                    catalog
                        .owner_of(kind, item)
                        .is_none_or(|index| !catalogued.contains(&index) || added.contains(&index))
                })
                .cloned()
                .collect(),
        )
    }

    /// Tells the sessions that added catalog server `index` that its list
    /// changed (nobody else sees it).
    pub(super) fn announce_to_holders(&self, gateway: &Gateway, index: usize, kind: List) {
        let holders: Vec<Holder> = lock(&self.added)
            .iter()
            .filter(|(_, added)| added.contains(&index))
            .map(|(holder, _)| holder.clone())
            .collect();
        for holder in holders {
            Self::tell(gateway, &holder, kind);
        }
    }

    /// Sends `holder` a list change: its session, or a 2026-07-28 client's
    /// listen streams.
    fn tell(gateway: &Gateway, holder: &Holder, kind: List) {
        let message = protocol::notification(kind.changed().as_str(), json!({}));
        let sessions = match holder {
            Holder::Session(key) => gateway.sessions.get(*key).into_iter().collect(),
            Holder::Client(name) => gateway
                .sessions
                .matching(|s| s.listen.get().is_some() && s.client.name == *name),
        };
        for session in sessions {
            gateway.notify(&session, None, message.clone(), None, None);
        }
    }

    /// Runs `portcullis__find`, `__add` or `__remove` (decided by the
    /// chain as a tool of `portcullis`); what a server asks for is decided
    /// here by Cedar.
    pub(super) async fn call(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        tool: Tool,
        exchange: &mut Exchange,
    ) -> Result<Value, super::Failure> {
        let id = exchange.message.get("id").cloned().unwrap_or(Value::Null);
        let arguments = exchange
            .message
            .at(&["params", "arguments"])
            .cloned()
            .unwrap_or_default();
        let text = |key: &str| {
            arguments
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        note(
            exchange,
            "tool",
            match tool {
                Tool::Find => "find",
                Tool::Add => "add",
                Tool::Remove => "remove",
            },
        );
        match tool {
            Tool::Find => {
                let query = protocol::cut(text("query"), MAX_QUERY_BYTES).to_owned();
                let limit = arguments
                    .get("limit")
                    .and_then(Value::as_u64)
                    .map_or(DEFAULT_FOUND, |n| usize::try_from(n).unwrap_or(MAX_FOUND))
                    .clamp(1, MAX_FOUND);
                let found = self.find(gateway, session, &query, limit);
                Ok(tool_result(id, found.to_string(), false))
            }
            Tool::Add => {
                let name = protocol::cut(text("name"), 63).to_owned();
                note(exchange, "server", &name);
                self.add(gateway, session, &name, exchange)
                    .await
                    .map(|(text, error)| tool_result(id, text, error))
            }
            Tool::Remove => {
                let name = protocol::cut(text("name"), 63).to_owned();
                note(exchange, "server", &name);
                let (text, error) = self.remove(gateway, session, &name);
                Ok(tool_result(id, text, error))
            }
        }
    }

    /// The servers that match `query`, best first, among those Cedar lets
    /// `session`'s client find.
    fn find(&self, gateway: &Gateway, session: &Session, query: &str, limit: usize) -> Value {
        let added = self.added_by(&Holder::of(session));
        let protocol = session.protocol_version().unwrap_or_default();
        let hits = self.search.search(query, limit, |position| {
            let Some(entry) = self.entries.get(position) else {
                return false;
            };
            Self::decide(gateway, session, &protocol, Action::FindServers, entry)
                .is_none_or(|decision| decision.allowed)
        });
        let servers: Vec<Value> = hits
            .into_iter()
            .filter_map(|(position, _)| self.entries.get(position))
            .map(|entry| {
                let mut found = json!({
                    "name": entry.name,
                    "catalog": entry.catalog,
                    "title": entry.title,
                    "description": entry.description,
                    "tools": entry.tools,
                    "added": entry.server.as_ref().is_ok_and(|index| added.contains(index)),
                    "available": entry.server.is_ok(),
                });
                if let Err(reason) = &entry.server {
                    found.put(&["reason"], Value::from(reason.as_str()));
                }
                found
            })
            .collect();
        json!({ "servers": servers })
    }

    /// Cedar's decision on `action` for a catalog server (`None`: no
    /// authz).
    fn decide(
        gateway: &Gateway,
        session: &Session,
        protocol: &str,
        action: Action,
        entry: &Entry,
    ) -> Option<crate::interceptors::authz::Decision> {
        let access = gateway.access.as_ref()?;
        access.decide(
            &session.client,
            (session.transport, protocol, &session.id),
            action,
            &Discovery::target(entry),
        )
    }

    /// Adds a catalog server to `session`: decided (`add_server`), started
    /// under the hardened profile, its lists read, and the session told.
    /// The text for the caller, and whether it is an error.
    async fn add(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        name: &str,
        exchange: &mut Exchange,
    ) -> Result<(String, bool), super::Failure> {
        let protocol = session.protocol_version().unwrap_or_default();
        // A server the client may not find is, to it, one no catalog offers.
        let Some(entry) = self.entry(name).filter(|entry| {
            Self::decide(gateway, session, &protocol, Action::FindServers, entry)
                .is_none_or(|decision| decision.allowed)
        }) else {
            return Ok((
                format!(
                    "no catalog offers a server named `{name}`: portcullis__find lists those that do"
                ),
                true,
            ));
        };
        note(exchange, "catalog", &entry.catalog);
        if let Some(decision) = Self::decide(gateway, session, &protocol, Action::AddServer, entry)
        {
            super::sign_in::note_decision(
                exchange,
                &session.client.name,
                (Action::AddServer, &entry.name),
                decision,
            )?;
        }
        let index = match &entry.server {
            Ok(index) => *index,
            Err(reason) => {
                return Ok((format!("`{name}` cannot be added: {reason}"), true));
            }
        };
        let holder = Holder::of(session);
        if let Some(refused) = self.reserve(&holder, index) {
            return Ok(match refused {
                Reserved::Already => (Self::added_text(gateway, name, index, true), false),
                Reserved::Refused(why) => (why, true),
            });
        }
        if let Err(error) = self.start_catalogued(gateway, index).await {
            let _ = self.release(&holder, index);
            tracing::warn!(server = %name, error, "an added server did not start");
            return Ok((format!("`{name}` did not start: {error}"), true));
        }
        gateway.lists.list_once(gateway, index).await;
        // A session that closed meanwhile keeps nothing.
        if matches!(holder, Holder::Session(_)) && session.closed.is_cancelled() {
            self.forget(&holder);
        }
        tracing::info!(client = %session.client.name, server = %name, catalog = %entry.catalog, "catalog server added");
        Self::tell_lists(gateway, &holder, index);
        Ok((Self::added_text(gateway, name, index, false), false))
    }

    /// Starts catalog server `index` (its supervisor at its first add) and
    /// reads its lists; why not, scrubbed.
    async fn start_catalogued(&self, gateway: &Gateway, index: usize) -> Result<(), String> {
        let Some(slot) = gateway.servers.slot(index) else {
            return Err("it has no server".into());
        };
        let Some(upstream) = &slot.upstream else {
            return Err("it has no server".into());
        };
        if let Some(started) = self.started.get(index - self.first)
            && !started.swap(true, Ordering::AcqRel)
        {
            gateway.servers.start(&[(index, upstream.clone())]);
        }
        upstream
            .ensure_running(gateway.config.proxy.startup_timeout)
            .await
            .map_err(|err| gateway.records.scrubbed(&err.to_string()))?;
        Ok(())
    }

    /// Tells `holder` every list of server `index` that has items.
    fn tell_lists(gateway: &Gateway, holder: &Holder, index: usize) {
        let catalog = gateway.catalog();
        let Some(lists) = catalog.server_lists(index) else {
            return;
        };
        let kinds = [
            (!lists.tools.is_empty(), List::Tools),
            (!lists.prompts.is_empty(), List::Prompts),
            (
                !lists.resources.is_empty() || !lists.templates.is_empty(),
                List::Resources,
            ),
        ];
        for (changed, kind) in kinds {
            if changed {
                Self::tell(gateway, holder, kind);
            }
        }
    }

    /// What `add` tells its caller: the server's tools as it now calls them.
    fn added_text(gateway: &Gateway, name: &str, index: usize, already: bool) -> String {
        let catalog = gateway.catalog();
        let separator = &gateway.config.proxy.namespace_separator;
        let tools: Vec<String> = catalog
            .server_lists(index)
            .map(|lists| {
                lists
                    .tools
                    .iter()
                    .filter_map(|tool| tool.get("name").and_then(Value::as_str))
                    .map(|tool| format!("{name}{separator}{tool}"))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "added": name,
            "already": already,
            "tools": tools,
        })
        .to_string()
    }

    /// Takes a server out of `session`'s (it keeps running for others until
    /// its idle timeout).
    fn remove(&self, gateway: &Gateway, session: &Session, name: &str) -> (String, bool) {
        let Some(Ok(index)) = self.entry(name).map(|entry| entry.server.clone()) else {
            return (format!("this session has not added `{name}`"), true);
        };
        let holder = Holder::of(session);
        if !self.release(&holder, index) {
            return (format!("this session has not added `{name}`"), true);
        }
        Self::tell_lists(gateway, &holder, index);
        (json!({ "removed": name }).to_string(), false)
    }
}
