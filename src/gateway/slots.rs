//! The gateway's servers, by index: the configured ones, a catalog's
//! (`[discovery]`), the proxy's own tools, and those a config reload added.
//!
//! Indexes never change: the catalog, records in flight and server→client
//! requests name a server by its index, so a reload only appends slots (a
//! server added, or a changed one started anew) and retires others (taken
//! out: stopped, no longer listed, routed or found by name). The slots are
//! a concurrent append-only vector, read without a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::upstream::Upstream;

use super::in_flight::InFlight;
use super::server::PerServer;
use super::{Gateway, ServerLists};

/// One server of the gateway.
pub(super) struct Slot {
    pub(super) name: Arc<str>,
    /// Its upstream: `None` for the proxy's own tools (`portcullis`).
    pub(super) upstream: Option<Upstream>,
    pub(super) per_server: PerServer,
    /// Its limit on requests in flight, if it has one.
    pub(super) in_flight: Option<InFlight>,
    /// Its lists as it last sent them (before a profile filtered them).
    pub(super) lists: std::sync::Mutex<Option<Arc<ServerLists>>>,
    /// What its supervisor and its per-client instances run under (a child
    /// of the proxy's shutdown): cancelled when a reload retires it.
    pub(super) stop: CancellationToken,
    /// A reload took it out.
    retired: AtomicBool,
}

impl Slot {
    pub(super) fn new(
        name: Arc<str>,
        upstream: Option<Upstream>,
        in_flight: Option<InFlight>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            name,
            upstream,
            per_server: PerServer::new(),
            in_flight,
            lists: std::sync::Mutex::new(None),
            stop,
            retired: AtomicBool::new(false),
        }
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Takes it out: marked first (nothing new reaches it), then stopped
    /// (its supervisor and instances end; calls in flight fail).
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.stop.cancel();
    }
}

impl Gateway {
    pub(super) fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)
    }

    /// Server `index`'s own upstream (a retired one's too: its calls in
    /// flight end through it).
    pub(super) fn upstream_at(&self, index: usize) -> Option<&Upstream> {
        self.slots
            .get(index)
            .and_then(|slot| slot.upstream.as_ref())
    }

    /// Server `index`'s name.
    pub(super) fn name_at(&self, index: usize) -> Option<&Arc<str>> {
        self.slots.get(index).map(|slot| &slot.name)
    }

    /// Server `index`'s name, or nothing (for logs and records).
    pub(super) fn name_or_none(&self, index: usize) -> Arc<str> {
        self.name_at(index)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Every slot's name by index (a retired one's too: the catalog lists
    /// nothing of it), as the catalog is built from.
    pub(super) fn names(&self) -> Vec<Arc<str>> {
        self.slots
            .iter()
            .map(|(_, slot)| slot.name.clone())
            .collect()
    }

    /// Whether server `index` was retired by a reload.
    pub(super) fn is_retired(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(Slot::is_retired)
    }

    /// The configured servers in force (not a catalog's, not retired), with
    /// their indexes.
    pub(super) fn configured(&self) -> Vec<(usize, Upstream)> {
        self.slots
            .iter()
            .filter(|(index, slot)| !slot.is_retired() && !self.is_catalogued(*index))
            .filter_map(|(index, slot)| Some((index, slot.upstream.clone()?)))
            .collect()
    }
}
