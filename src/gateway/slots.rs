//! The gateway's servers, by index: the configured ones, a catalog's
//! (`[discovery]`), the proxy's own tools, and those a config reload added.
//!
//! Indexes never change: the catalog, records in flight and server→client
//! requests name a server by its index, so a reload only appends slots (a
//! server added, or a changed one started anew) and retires others (taken
//! out: stopped, no longer listed, routed or found by name). The slots are
//! a concurrent append-only vector, read without a lock.
//!
//! [`Servers`] is the gateway's part that keeps them: the slots, the
//! per-client instances (`instances.rs`), what makes an upstream, and the
//! tasks their supervisors run as.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServerConfig, UpstreamSpec};
use crate::upstream::{Upstream, UpstreamEvent, UserTokens};

use super::in_flight::InFlight;
use super::server::PerServer;
use super::{MakeUpstream, ServerLists, lock};

/// The gateway's servers: each one's slot by index, the per-client
/// instances by (server, client), and what runs for them.
pub struct Servers {
    /// The servers by index: configured, then a catalog's, then the
    /// proxy's own tools, then those reloads added.
    pub(super) slots: boxcar::Vec<Slot>,
    /// The indexes of a catalog's servers (`[discovery]`), empty without
    /// one: started when a session adds them, never by a reload.
    pub(super) catalogued: Range<usize>,
    /// The per-client instances of `isolation = "per-client"` servers (and
    /// of remote servers that act as their users), by (server, client):
    /// created at a client's first call. Bounded by the configured clients
    /// and [`super::instances::MAX_INSTANCES_PER_SERVER`].
    pub(super) instances: Mutex<HashMap<(usize, Arc<str>), Upstream>>,
    /// What each per-client instance's supervisor runs under (a child of
    /// its server's `stop`): cancelled when the instance is forgotten
    /// after going idle.
    pub(super) instance_stops: Mutex<HashMap<(usize, Arc<str>), CancellationToken>>,
    /// Makes upstreams (per-client instances too).
    pub(super) make: Arc<MakeUpstream>,
    /// Where every upstream sends its events (the gateway's event loop).
    pub(super) events: mpsc::Sender<UpstreamEvent>,
    /// Clients' access tokens, for servers that act as their users.
    pub(super) user_tokens: Arc<UserTokens>,
    /// The proxy's shutdown: every slot's `stop` is a child of it.
    pub(super) shutdown: CancellationToken,
    /// The servers' supervisors and the gateway's event loop, awaited as
    /// the proxy stops.
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
}

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

impl Servers {
    /// The users' sign-ins to `sign_in` servers (the vault, the links
    /// given to users).
    pub fn sign_ins(&self) -> Option<Arc<crate::signin::SignIns>> {
        self.user_tokens.sign_ins()
    }

    /// The servers of `config` and then a catalog's (`catalogued`, their
    /// indexes following the configured ones'), and the proxy's own tools
    /// past them when `own_tools`; made, none started.
    pub(super) fn new(
        config: &Config,
        catalogued: &[ServerConfig],
        own_tools: bool,
        (make, events, user_tokens): (
            Arc<MakeUpstream>,
            mpsc::Sender<UpstreamEvent>,
            Arc<UserTokens>,
        ),
        shutdown: CancellationToken,
    ) -> Self {
        let slots = boxcar::Vec::new();
        for (position, server) in config.servers.iter().chain(catalogued).enumerate() {
            let upstream = make(Arc::new(server.clone()), None, events.clone());
            // A catalog's servers have no limit of their own.
            let in_flight = (position < config.servers.len())
                .then(|| in_flight_of(config, &server.name))
                .flatten();
            let name = upstream.name().clone();
            slots.push(Slot::new(
                name,
                Some(upstream),
                in_flight,
                shutdown.child_token(),
            ));
        }
        if own_tools {
            // The proxy's own tools, listed as a server's past the last.
            slots.push(Slot::new(
                Arc::from(crate::config::PROXY_SERVER),
                None,
                None,
                shutdown.child_token(),
            ));
        }
        let first = config.servers.len();
        Self {
            slots,
            catalogued: first..first + catalogued.len(),
            instances: Mutex::default(),
            instance_stops: Mutex::default(),
            make,
            events,
            user_tokens,
            shutdown,
            tasks: Mutex::default(),
        }
    }

    /// Adds server `server` (a reload's), made and not started, as the
    /// config it came from limits it: its index and upstream.
    pub(super) fn add(&self, server: &ServerConfig, config: &Config) -> (usize, Upstream) {
        let upstream = (self.make)(Arc::new(server.clone()), None, self.events.clone());
        let index = self.slots.push(Slot::new(
            upstream.name().clone(),
            Some(upstream.clone()),
            in_flight_of(config, &server.name),
            self.shutdown.child_token(),
        ));
        (index, upstream)
    }

    /// Starts the supervisors of `servers` (by index) under their slots'
    /// stops.
    pub(super) fn start(&self, servers: &[(usize, Upstream)]) {
        let mut tasks = Vec::new();
        for (index, upstream) in servers {
            if let Some(slot) = self.slot(*index) {
                tasks.push(upstream.start(slot.stop.clone()));
            }
        }
        self.keep_tasks(tasks);
    }

    /// Keeps tasks to await as the proxy stops (those that ended go).
    pub(super) fn keep_tasks(&self, more: impl IntoIterator<Item = JoinHandle<()>>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.extend(more);
    }

    /// The tasks kept, taken out to be awaited.
    pub(super) fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        lock(&self.tasks).drain(..).collect()
    }

    /// Every slot, by index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots.iter()
    }

    /// How many slots there are (retired ones too).
    pub(super) fn count(&self) -> usize {
        self.slots.count()
    }

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

    /// Whether server `index` is a catalog's (`[discovery]`).
    pub(super) fn is_catalogued(&self, index: usize) -> bool {
        self.catalogued.contains(&index)
    }

    /// The configured servers in force (not a catalog's, not retired), with
    /// their indexes.
    /// The configured servers' upstreams in force (not the catalogs' of
    /// `[discovery]`, not those a reload took out), in order.
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.configured()
            .into_iter()
            .map(|(_, upstream)| upstream)
            .collect()
    }

    pub(super) fn configured(&self) -> Vec<(usize, Upstream)> {
        self.slots
            .iter()
            .filter(|(index, slot)| !slot.is_retired() && !self.is_catalogued(*index))
            .filter_map(|(index, slot)| Some((index, slot.upstream.clone()?)))
            .collect()
    }

    /// Whether any server runs in a container.
    pub(super) fn any_container(&self) -> bool {
        self.slots.iter().any(|(_, slot)| {
            slot.upstream
                .as_ref()
                .is_some_and(|u| matches!(u.config().kind, UpstreamSpec::Container(_)))
        })
    }

    /// Takes server `index` out (see [`Slot::retire`]) with its per-client
    /// instances: its name, if it had a slot.
    pub(super) fn retire(&self, index: usize) -> Option<&Arc<str>> {
        let slot = self.slot(index)?;
        slot.retire();
        lock(&self.instances).retain(|(at, _), _| *at != index);
        lock(&self.instance_stops).retain(|(at, _), _| *at != index);
        Some(&slot.name)
    }

    /// Tells every running copy whether something is held at it (a
    /// subscription, a task): `held` are the servers with something.
    pub(super) fn hold(&self, held: &std::collections::HashSet<usize>) {
        for (index, slot) in &self.slots {
            if let Some(upstream) = &slot.upstream {
                upstream.hold(held.contains(&index));
            }
        }
        for ((index, _), instance) in lock(&self.instances).iter() {
            instance.hold(held.contains(index));
        }
    }
}

/// Server `name`'s limit on requests in flight (`[ratelimit] concurrency`).
fn in_flight_of(config: &Config, name: &str) -> Option<InFlight> {
    config
        .ratelimit
        .concurrency
        .iter()
        .find(|limit| limit.server == name)
        .map(InFlight::new)
}
