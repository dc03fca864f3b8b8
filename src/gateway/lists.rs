//! The servers' lists (tools, prompts, resources): read, merged into the
//! catalog, and announced when they change.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::protocol;
use crate::upstream::{Status, Upstream};

use super::{Catalog, Gateway, ListKind, ServerLists, lock};

/// Upstream pagination is followed for at most this many pages per list.
pub(super) const MAX_LIST_PAGES: usize = 100;

/// Every page of a server's list (up to [`MAX_LIST_PAGES`]); a failure keeps
/// what was read so far.
pub(super) async fn fetch_all(
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

impl Gateway {
    /// Starts the lazy servers that nobody has used yet, and waits (each up
    /// to the startup timeout) until every running server's lists are read:
    /// a client's first `initialize` and lists see every server.
    pub(super) async fn await_lists(self: &Arc<Self>) {
        let catalog = self.catalog();
        let unlisted = (0..self.slots.count()).filter(|&index| {
            catalog.server_lists(index).is_none()
                && !self.is_catalogued(index)
                && !self.is_retired(index)
                && self.upstream_at(index).is_some_and(|u| {
                    matches!(
                        u.status(),
                        Status::Idle(_) | Status::Starting | Status::Ready(_)
                    )
                })
        });
        let waits = unlisted.map(|index| async move {
            let Some(upstream) = self.upstream_at(index) else {
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

    /// Reads a server's lists unless they are already known.
    pub(super) async fn list_once(self: &Arc<Self>, index: usize) {
        self.read_lists(index, true).await;
    }

    /// Re-reads a server's lists and tells the sessions what changed.
    pub async fn refresh(self: &Arc<Self>, index: usize) {
        self.read_lists(index, false).await;
    }

    /// Reads a server's lists again after it said they changed. What it
    /// says while a read waits to start is folded into that read: however
    /// many notifications a server sends, at most one read of its lists
    /// runs and one waits.
    pub(super) fn refresh_soon(self: &Arc<Self>, index: usize) {
        let Some(server) = self.slot(index).map(|slot| &slot.per_server) else {
            return;
        };
        if server.refresh_waiting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Some(server) = this.slot(index).map(|slot| &slot.per_server) else {
                return;
            };
            // After the read in progress, if any: what the server says from
            // now on needs a read of its own.
            drop(server.refreshing.lock().await);
            server.refresh_waiting.store(false, Ordering::Release);
            this.refresh(index).await;
        });
    }

    pub(super) async fn read_lists(self: &Arc<Self>, index: usize, unless_known: bool) {
        let Some(upstream) = self.upstream_at(index) else {
            return;
        };
        let Some(_guard) = self.slot(index).map(|s| s.per_server.refreshing.lock()) else {
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

    pub(super) fn set_lists(&self, index: usize, lists: Option<ServerLists>) {
        let changed = {
            let Ok(mut catalog) = self.catalog.write() else {
                return;
            };
            self.set_lists_locked(&mut catalog, index, lists)
        };
        self.announce_changes(index, changed);
    }

    /// [`Gateway::set_lists`] under the catalog's lock. Read under it, as
    /// a reload retires a server, appends slots and changes the profile
    /// before it takes that lock: a server taken out lists nothing (a read
    /// of its lists under way ends here), every name is known, and the
    /// profile is the one in force.
    fn set_lists_locked(
        &self,
        catalog: &mut Arc<Catalog>,
        index: usize,
        lists: Option<ServerLists>,
    ) -> Vec<ListKind> {
        let mut lists = if self.is_retired(index) { None } else { lists };
        // As the server sent them, for a profile that changes later.
        if let Some(slot) = self.slot(index) {
            *lock(&slot.lists) = lists.clone();
        }
        // A profile's tools alone: the others are not listed, and so not
        // found when called (before any policy is asked).
        let profile = self.profile();
        if let (Some(profile), Some(lists), Some(server)) =
            (profile.as_deref(), lists.as_mut(), self.name_at(index))
        {
            lists.tools.retain(|tool| {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                profile.allows_tool(server, name)
            });
        }
        let names = self.names();
        let (next, changed) =
            catalog.with_server(index, lists, &names, &self.config.proxy.namespace_separator);
        *catalog = Arc::new(next);
        changed
    }

    /// Tells who hears server `index` that its lists changed.
    fn announce_changes(&self, index: usize, changed: Vec<ListKind>) {
        for kind in changed {
            // A catalog's server is heard only by those that added it.
            if self.is_catalogued(index) {
                self.announce_to_holders(index, kind);
            } else {
                self.announce(kind);
            }
        }
    }

    /// Applies the profile in force again to every server's lists as the
    /// server last sent them, whatever state the server is in (one stopped
    /// for idleness keeps its lists). All under the catalog's lock: a read
    /// of a server's lists, or its going down, lands before or after, never
    /// under an older copy.
    pub(super) fn filter_again(&self) {
        let mut changes = Vec::new();
        {
            let Ok(mut catalog) = self.catalog.write() else {
                return;
            };
            for (index, slot) in &self.slots {
                let lists = lock(&slot.lists).clone();
                if lists.is_some() {
                    changes.push((index, self.set_lists_locked(&mut catalog, index, lists)));
                }
            }
        }
        for (index, changed) in changes {
            self.announce_changes(index, changed);
        }
    }

    /// Tells every session that a list changed (`notifications/*/list_changed`):
    /// a server's list, or what the proxy lets through (pins approved).
    pub fn announce(&self, kind: ListKind) {
        let message = protocol::notification(kind.notification(), json!({}));
        let listeners = self.listeners();
        for session in self.initialized_sessions().into_iter().chain(listeners) {
            self.notify(&session, None, message.clone(), None, None);
        }
    }
}
