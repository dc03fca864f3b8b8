//! The servers' lists (tools, prompts, resources): read, merged into the
//! catalog, and announced when they change.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use crate::protocol::{self, List};
use crate::upstream::{Status, Upstream};

use super::{Catalog, Gateway, ServerLists, lock};

/// Upstream pagination is followed for at most this many pages per list.
pub(super) const MAX_LIST_PAGES: usize = 100;

/// What one read of a server's lists may keep: items per list, and bytes
/// held (parsed, `protocol::held_bytes`) of the four lists together (`[limits]
/// max_list_items`, `max_list_bytes`). A server decides how much it sends; this decides how
/// much the proxy holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListBudget {
    pub(super) items: usize,
    pub(super) bytes: usize,
    pub(super) bytes_left: usize,
}

impl ListBudget {
    pub(super) fn of(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            items: limits.max_list_items,
            bytes: limits.max_list_bytes,
            bytes_left: limits.max_list_bytes,
        }
    }
}

/// Why a list was cut short, and what of it was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut {
    /// The list (its method: `tools/list`, …).
    pub(super) list: List,
    pub(super) kept: usize,
    pub(super) cause: CutCause,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CutCause {
    /// More items than `max_list_items`.
    Items(usize),
    /// More bytes held than `max_list_bytes` (of the server's lists together).
    Bytes(usize),
    /// More pages than [`MAX_LIST_PAGES`].
    Pages,
    /// A next cursor the server had already given: it would never end.
    CursorAgain,
    /// A next cursor longer than [`MAX_CURSOR`]: it is sent back, and kept
    /// while the list is read.
    CursorTooLong,
}

/// The longest next cursor the proxy follows: an opaque token, in every
/// server seen, of tens of bytes.
const MAX_CURSOR: usize = 4096;

impl Cut {
    /// What the log and the record say of it.
    pub(super) fn reason(&self) -> String {
        let cause = match &self.cause {
            CutCause::Items(limit) => {
                format!("more than {limit} items (`[limits] max_list_items`)")
            }
            CutCause::Bytes(limit) => {
                format!("over {limit} bytes of lists (`[limits] max_list_bytes`)")
            }
            CutCause::Pages => format!("more than {MAX_LIST_PAGES} pages"),
            CutCause::CursorAgain => "a next cursor it had already sent".to_owned(),
            CutCause::CursorTooLong => format!("a next cursor over {MAX_CURSOR} bytes"),
        };
        format!(
            "{} cut at {} items: the server sent {cause}",
            self.list.method(),
            self.kept
        )
    }

    pub(super) fn detail(&self) -> Value {
        let (cause, limit) = match &self.cause {
            CutCause::Items(limit) => ("items", Some(*limit)),
            CutCause::Bytes(limit) => ("bytes", Some(*limit)),
            CutCause::Pages => ("pages", Some(MAX_LIST_PAGES)),
            CutCause::CursorAgain => ("cursor_again", None),
            CutCause::CursorTooLong => ("cursor_too_long", Some(MAX_CURSOR)),
        };
        let list = self.list.method();
        json!({ "list": list.as_str(), "kept": self.kept, "cause": cause, "limit": limit })
    }
}

/// Every page of a server's list, within `budget` (its bytes shared with
/// the server's other lists, and spent here); a failure keeps what was
/// read so far. What was cut, if anything, is said beside the items.
pub(super) async fn fetch_all(
    upstream: &Upstream,
    list: List,
    budget: &mut ListBudget,
    scrub: &(dyn Fn(&str) -> String + Sync),
) -> (Vec<Value>, Option<Cut>) {
    let mut items = Vec::new();
    // The cursors seen, by a digest: a repeated one is found without
    // keeping what a server sent (each at most MAX_CURSOR bytes anyway).
    let mut cursors = std::collections::HashSet::new();
    let digest = |cursor: &str| -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(cursor.as_bytes()).into()
    };
    let mut cursor: Option<String> = None;
    let (method, key) = (list.method(), list.result_key());
    let cut = |items: Vec<Value>, cause| {
        let kept = items.len();
        (items, Some(Cut { list, kept, cause }))
    };
    for _ in 0..MAX_LIST_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        let mut result = match upstream.request(method.clone(), params).await {
            Ok(result) => result,
            Err(err) => {
                // The server's own words: scrubbed like a record's.
                let error = scrub(&err.to_string());
                tracing::warn!(server = %upstream.name(), %method, error, "cannot read the list");
                return (items, None);
            }
        };
        // Moved out of the page, not copied: the rest of it is dropped here.
        if let Some(Value::Array(page)) = result.get_mut(key).map(Value::take) {
            for item in page {
                if items.len() >= budget.items {
                    return cut(items, CutCause::Items(budget.items));
                }
                let size = protocol::held_bytes(&item);
                if size > budget.bytes_left {
                    budget.bytes_left = 0;
                    return cut(items, CutCause::Bytes(budget.bytes));
                }
                budget.bytes_left -= size;
                items.push(item);
            }
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(next) if !next.is_empty() => {
                if next.len() > MAX_CURSOR {
                    return cut(items, CutCause::CursorTooLong);
                }
                if !cursors.insert(digest(next)) {
                    return cut(items, CutCause::CursorAgain);
                }
                cursor = Some(next.to_owned());
            }
            _ => return (items, None),
        }
    }
    cut(items, CutCause::Pages)
}

/// The merged lists clients see, and the profile that filters the tools
/// in them (`serve --profile`, replaced by a reload).
pub(super) struct Lists {
    pub(super) catalog: RwLock<Arc<Catalog>>,
    pub(super) profile: RwLock<Option<Arc<crate::config::profiles::Profile>>>,
}

impl Lists {
    pub(super) fn new(
        catalog: Catalog,
        profile: Option<Arc<crate::config::profiles::Profile>>,
    ) -> Self {
        Self {
            catalog: RwLock::new(Arc::new(catalog)),
            profile: RwLock::new(profile),
        }
    }

    /// The merged lists as they are now.
    pub(super) fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poison| poison.into_inner().clone())
    }
}

impl Lists {
    /// Starts the lazy servers that nobody has used yet, and waits (each up
    /// to the startup timeout) until every running server's lists are read:
    /// a client's first `initialize` and lists see every server.
    pub(super) async fn await_lists(&self, gateway: &Arc<Gateway>) {
        let catalog = self.catalog();
        let unlisted = (0..gateway.servers.count()).filter(|&index| {
            catalog.server_lists(index).is_none()
                && !gateway.servers.is_catalogued(index)
                && !gateway.servers.is_retired(index)
                && gateway.servers.upstream_at(index).is_some_and(|u| {
                    matches!(
                        u.status(),
                        Status::Idle(_) | Status::Starting | Status::Ready(_)
                    )
                })
        });
        let waits = unlisted.map(|index| async move {
            let Some(upstream) = gateway.servers.upstream_at(index) else {
                return;
            };
            match upstream
                .ensure_running(gateway.config.proxy.startup_timeout)
                .await
            {
                Ok(()) => self.list_once(gateway, index).await,
                Err(err) => tracing::warn!(server = %upstream.name(), error = %err, "cannot start the server"),
            }
        });
        futures_util::future::join_all(waits).await;
    }

    /// Reads a server's lists unless they are already known.
    pub(super) async fn list_once(&self, gateway: &Arc<Gateway>, index: usize) {
        self.read_lists(gateway, index, true).await;
    }

    /// Re-reads a server's lists and tells the sessions what changed.
    pub(super) async fn refresh(&self, gateway: &Arc<Gateway>, index: usize) {
        self.read_lists(gateway, index, false).await;
    }

    /// Reads a server's lists again after it said they changed. What it
    /// says while a read waits to start is folded into that read: however
    /// many notifications a server sends, at most one read of its lists
    /// runs and one waits.
    pub(super) fn refresh_soon(gateway: &Arc<Gateway>, index: usize) {
        let Some(server) = gateway.servers.slot(index).map(|slot| &slot.per_server) else {
            return;
        };
        if server.refresh_waiting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = gateway.clone();
        tokio::spawn(async move {
            let Some(server) = this.servers.slot(index).map(|slot| &slot.per_server) else {
                return;
            };
            // After the read in progress, if any: what the server says from
            // now on needs a read of its own.
            drop(server.refreshing.lock().await);
            server.refresh_waiting.store(false, Ordering::Release);
            this.lists.refresh(&this, index).await;
        });
    }

    pub(super) async fn read_lists(
        &self,
        gateway: &Arc<Gateway>,
        index: usize,
        unless_known: bool,
    ) {
        let Some(upstream) = gateway.servers.upstream_at(index) else {
            return;
        };
        let Some(_guard) = gateway
            .servers
            .slot(index)
            .map(|s| s.per_server.refreshing.lock())
        else {
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
        let scrub = |text: &str| gateway.records.scrubbed(text);
        let mut budget = ListBudget::of(&gateway.config.limits);
        let mut cuts = Vec::new();
        let wanted: [(List, &mut Vec<Value>); 4] = [
            (List::Tools, &mut lists.tools),
            (List::Prompts, &mut lists.prompts),
            (List::Resources, &mut lists.resources),
            (List::ResourceTemplates, &mut lists.templates),
        ];
        for (kind, list) in wanted {
            if caps.get(kind.capability()).is_none() {
                continue;
            }
            let (items, cut) = fetch_all(upstream, kind, &mut budget, &scrub).await;
            *list = items;
            cuts.extend(cut);
        }
        tracing::debug!(server = %upstream.name(), tools = lists.tools.len(), prompts = lists.prompts.len(), resources = lists.resources.len(), "lists refreshed");
        Self::report_cuts(gateway, index, upstream, cuts);
        self.set_lists(gateway, index, Some(lists));
    }

    /// Logs and records the cuts of a read of a server's lists, when they
    /// are not the ones its last read made (a server that announces list
    /// changes over and over floods neither the log nor the audit log).
    fn report_cuts(gateway: &Gateway, index: usize, upstream: &Upstream, cuts: Vec<Cut>) {
        let Some(slot) = gateway.servers.slot(index) else {
            return;
        };
        {
            let mut last = lock(&slot.per_server.last_cuts);
            if *last == cuts {
                return;
            }
            last.clone_from(&cuts);
        }
        let server = upstream.name();
        let mut records = Vec::new();
        for cut in cuts {
            let reason = cut.reason();
            tracing::warn!(server = %server, list = %cut.list.method(), kept = cut.kept, "a server's list was cut: {reason}");
            let mut record = crate::audit::AuditRecord::event("list_cut", "deny");
            record.server = Some(server.to_string());
            record.method = cut.list.method().as_str().to_owned();
            record.reason = Some(reason);
            record.detail = Some(cut.detail());
            records.push(record);
        }
        gateway.records.events(records);
    }

    pub(super) fn set_lists(&self, gateway: &Gateway, index: usize, lists: Option<ServerLists>) {
        self.set_shared_lists(gateway, index, lists.map(Arc::new));
    }

    fn set_shared_lists(&self, gateway: &Gateway, index: usize, lists: Option<Arc<ServerLists>>) {
        let changed = {
            let Ok(mut catalog) = self.catalog.write() else {
                return;
            };
            self.set_lists_locked(gateway, &mut catalog, index, lists)
        };
        Self::announce_changes(gateway, index, changed);
    }

    /// [`Gateway::set_lists`] under the catalog's lock. Read under it, as
    /// a reload retires a server, appends slots and changes the profile
    /// before it takes that lock: a server taken out lists nothing (a read
    /// of its lists under way ends here), every name is known, and the
    /// profile is the one in force.
    fn set_lists_locked(
        &self,
        gateway: &Gateway,
        catalog: &mut Arc<Catalog>,
        index: usize,
        lists: Option<Arc<ServerLists>>,
    ) -> Vec<List> {
        let mut lists = if gateway.servers.is_retired(index) {
            None
        } else {
            lists
        };
        // As the server sent them, for a profile that changes later (the
        // same lists the catalog takes, unless a profile filters them).
        if let Some(slot) = gateway.servers.slot(index) {
            *lock(&slot.lists) = lists.clone();
        }
        // A profile's tools alone: the others are not listed, and so not
        // found when called (before any policy is asked).
        let profile = self.profile();
        if let (Some(profile), Some(shared), Some(server)) = (
            profile.as_deref(),
            lists.as_ref(),
            gateway.servers.name_at(index),
        ) {
            let allowed = |tool: &Value| {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                profile.allows_tool(server, name)
            };
            if !shared.tools.iter().all(allowed) {
                let mut filtered = ServerLists::clone(shared);
                filtered.tools.retain(allowed);
                lists = Some(Arc::new(filtered));
            }
        }
        let names = gateway.servers.names();
        let (next, changed) = catalog.with_server(
            index,
            lists,
            &names,
            &gateway.config.proxy.namespace_separator,
        );
        *catalog = Arc::new(next);
        changed
    }

    /// Tells who hears server `index` that its lists changed.
    pub(super) fn announce_changes(gateway: &Gateway, index: usize, changed: Vec<List>) {
        for kind in changed {
            // A catalog's server is heard only by those that added it.
            if gateway.servers.is_catalogued(index) {
                if let Some(discovery) = &gateway.discovery {
                    discovery.announce_to_holders(gateway, index, kind);
                }
            } else {
                gateway.announce(kind);
            }
        }
    }

    /// Applies the profile in force again to every server's lists as the
    /// server last sent them, whatever state the server is in (one stopped
    /// for idleness keeps its lists). All under the catalog's lock: a read
    /// of a server's lists, or its going down, lands before or after, never
    /// under an older copy.
    pub(super) fn filter_again(&self, gateway: &Gateway) {
        let mut changes = Vec::new();
        {
            let Ok(mut catalog) = self.catalog.write() else {
                return;
            };
            for (index, slot) in gateway.servers.iter() {
                let lists = lock(&slot.lists).clone();
                if lists.is_some() {
                    changes.push((
                        index,
                        self.set_lists_locked(gateway, &mut catalog, index, lists),
                    ));
                }
            }
        }
        for (index, changed) in changes {
            Self::announce_changes(gateway, index, changed);
        }
    }
}

impl Lists {
    /// The profile in force.
    pub(super) fn profile(&self) -> Option<Arc<crate::config::profiles::Profile>> {
        match self.profile.read() {
            Ok(profile) => profile.clone(),
            Err(poison) => poison.into_inner().clone(),
        }
    }
}
