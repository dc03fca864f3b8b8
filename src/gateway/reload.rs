//! A config loaded again, applied to the running gateway: its servers and
//! its profile. Sessions stay open throughout: a server the new config
//! adds starts and is announced (`list_changed`), one it drops stops and
//! its tools, prompts and resources leave the lists, one it changes
//! restarts under its new settings. Everything else the config says is
//! wired into the chain at start; the caller compares it and says what
//! waits for a restart.

use std::sync::Arc;

use crate::config::{Config, ServerConfig};
use crate::upstream::Upstream;

use super::Gateway;

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Servers started: new in the config.
    pub added: Vec<String>,
    /// Servers stopped: no longer in the config.
    pub removed: Vec<String>,
    /// Servers started anew: their settings changed.
    pub restarted: Vec<String>,
    /// The profile's servers or tools changed.
    pub profile: bool,
}

/// Why a reload applied nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// A configured server may not take a name a catalog offers while
    /// `[discovery]` runs, nor that of the proxy's own tools (both would
    /// answer to it).
    #[error(
        "server `{0}` has the name of a server `[discovery]` offers (or of its own tools): restart the proxy to give it that name"
    )]
    NameTaken(String),
}

impl Gateway {
    /// Applies the servers and the profile of `next` (the config loaded
    /// again); nothing else of it. Waits (up to the startup timeout) for
    /// the servers it starts, as the proxy's start does. Reloads run one
    /// at a time.
    pub async fn reload(self: &Arc<Self>, next: &Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        // A proxy that is stopping starts nothing more.
        if self.shutdown.is_cancelled() {
            return Ok(Reloaded::default());
        }
        if let Some(discovery) = &self.discovery
            && let Some(taken) = next
                .servers
                .iter()
                .find(|server| discovery.takes_name(&server.name))
        {
            return Err(ReloadError::NameTaken(taken.name.clone()));
        }
        let current = self.servers.configured();
        let mut reloaded = Reloaded::default();
        let mut retire = Vec::new();
        let mut start: Vec<&ServerConfig> = Vec::new();
        for (index, upstream) in &current {
            let name = upstream.name().to_string();
            match next.servers.iter().find(|server| server.name == name) {
                None => {
                    retire.push(*index);
                    reloaded.removed.push(name);
                }
                Some(server) if !crate::config::same_settings(server, upstream.config()) => {
                    retire.push(*index);
                    start.push(server);
                    reloaded.restarted.push(name);
                }
                Some(_) => {}
            }
        }
        for server in &next.servers {
            let known = current
                .iter()
                .any(|(_, upstream)| **upstream.name() == *server.name);
            if !known {
                start.push(server);
                reloaded.added.push(server.name.clone());
            }
        }
        let profile = next.profile.clone().map(Arc::new);
        reloaded.profile = format!("{:?}", self.profile()) != format!("{profile:?}");
        if reloaded.profile
            && let Ok(mut held) = self.profile.write()
        {
            *held = profile;
        }
        // Out first: a changed server's new slot is the only one of its
        // name from here on.
        for index in retire {
            self.retire(index);
        }
        let mut started: Vec<(usize, Upstream)> = Vec::new();
        for server in start {
            started.push(self.servers.add(server, &self.config));
        }
        self.keep_config_order(next);
        if reloaded.profile {
            // What the servers listed, filtered by the new profile: at
            // once, whatever state each server is in.
            self.filter_again();
        }
        self.start_servers(&started).await;
        Ok(reloaded)
    }

    /// Merges the configured servers in `next`'s order from now on (a
    /// server a reload started anew keeps its place among the others).
    fn keep_config_order(&self, next: &Config) {
        let order = next
            .servers
            .iter()
            .filter_map(|server| self.servers.index_of(&server.name))
            .collect();
        let names = self.servers.names();
        if let Ok(mut catalog) = self.catalog.write() {
            let ordered = catalog.ordered(order, &names, &self.config.proxy.namespace_separator);
            *catalog = Arc::new(ordered);
        }
    }

    /// The profile in force.
    pub(super) fn profile(&self) -> Option<Arc<crate::config::profiles::Profile>> {
        match self.profile.read() {
            Ok(profile) => profile.clone(),
            Err(poison) => poison.into_inner().clone(),
        }
    }

    /// Takes server `index` out: no longer found by name, listed or routed
    /// (its lists leave the catalog and sessions are told), then stopped
    /// with its per-client instances (calls in flight to it fail).
    fn retire(&self, index: usize) {
        let Some(name) = self.servers.retire(index) else {
            return;
        };
        self.set_lists(index, None);
        self.forget_forwarded(index, &None);
        tracing::info!(server = %name, "server taken out by a config reload");
    }
}
