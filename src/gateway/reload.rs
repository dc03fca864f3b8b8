//! A config loaded again, applied to the running gateway: its servers and
//! its profile. Sessions stay open throughout: a server the new config
//! adds starts and is announced (`list_changed`), one it drops stops and
//! its tools, prompts and resources leave the lists, one it changes
//! restarts under its new settings. Everything else the config says is
//! wired into the chain at start; the caller compares it and says what
//! waits for a restart.

use std::sync::{Arc, RwLock};

use crate::config::{Config, ServerConfig};
use crate::upstream::Upstream;

use super::{Enforced, Gateway};

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
    /// `[discovery]` runs, nor that of the proxy's own tools while
    /// `[discovery]` or `[code_mode]` runs (both would answer to it).
    #[error(
        "server `{0}` has the name of a server `[discovery]` offers, or of the proxy's own tools (`[discovery]`, `[code_mode]`): restart the proxy to give it that name"
    )]
    NameTaken(String),
}

/// Config reloads, one at a time, and what config the proxy enforces.
#[derive(Default)]
pub struct Reloads {
    /// Held while a reload applies, so two never interleave.
    reloading: tokio::sync::Mutex<()>,
    /// The config file's digest as last applied, and the sections that
    /// changed since the start and wait for a restart (`/healthz`, metrics).
    enforced: RwLock<Enforced>,
}

impl Reloads {
    /// Applies the servers and the profile of `next` (the config loaded
    /// again); nothing else of it. Waits (up to the startup timeout) for
    /// the servers it starts, as the proxy's start does. Reloads run one
    /// at a time.
    pub(super) async fn reload(
        &self,
        gateway: &Arc<Gateway>,
        next: &Config,
    ) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        // A proxy that is stopping starts nothing more.
        if gateway.shutdown.is_cancelled() {
            return Ok(Reloaded::default());
        }
        // The proxy's own server (`[discovery]`'s and `[code_mode]`'s
        // tools), and the catalogs' servers, keep their names.
        let taken = next.servers.iter().find(|server| {
            (gateway.own_tools.is_some() && server.name == crate::config::PROXY_SERVER)
                || gateway
                    .discovery
                    .as_ref()
                    .is_some_and(|discovery| discovery.takes_name(&server.name))
        });
        if let Some(taken) = taken {
            return Err(ReloadError::NameTaken(taken.name.clone()));
        }
        let current = gateway.servers.configured();
        let mut reloaded = Reloaded::default();
        let mut retire = Vec::new();
        let mut start: Vec<&ServerConfig> = Vec::new();
        // Servers whose users signed in, removed: their sign-ins revoked.
        let mut signed_in = Vec::new();
        for (index, upstream) in &current {
            let name = upstream.name().to_string();
            match next.servers.iter().find(|server| server.name == name) {
                None => {
                    retire.push(*index);
                    if let Some(remote) = upstream.config().kind.sign_in() {
                        signed_in.push((name.clone(), remote.clone()));
                    }
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
        reloaded.profile = format!("{:?}", gateway.lists.profile()) != format!("{profile:?}");
        if reloaded.profile
            && let Ok(mut held) = gateway.lists.profile.write()
        {
            *held = profile;
        }
        // Out first: a changed server's new slot is the only one of its
        // name from here on.
        for index in retire {
            Self::retire(gateway, index);
        }
        let mut started: Vec<(usize, Upstream)> = Vec::new();
        for server in start {
            started.push(gateway.servers.add(server, &gateway.config));
        }
        Self::keep_config_order(gateway, next);
        if reloaded.profile {
            // What the servers listed, filtered by the new profile: at
            // once, whatever state each server is in.
            gateway.lists.filter_again(gateway);
        }
        gateway.start_servers(&started).await;
        gateway.name_sign_in_servers();
        for (server, remote) in signed_in {
            gateway.revoke_later(Some((server, remote)));
        }
        Ok(reloaded)
    }

    /// Merges the configured servers in `next`'s order from now on (a
    /// server a reload started anew keeps its place among the others).
    fn keep_config_order(gateway: &Gateway, next: &Config) {
        let order = next
            .servers
            .iter()
            .filter_map(|server| gateway.servers.index_of(&server.name))
            .collect();
        let names = gateway.servers.names();
        if let Ok(mut catalog) = gateway.lists.catalog.write() {
            let ordered = catalog.ordered(order, &names, &gateway.config.proxy.namespace_separator);
            *catalog = Arc::new(ordered);
        }
    }

    /// Takes server `index` out: no longer found by name, listed or routed
    /// (its lists leave the catalog and sessions are told), then stopped
    /// with its per-client instances (calls in flight to it fail).
    fn retire(gateway: &Gateway, index: usize) {
        let Some(name) = gateway.servers.retire(index) else {
            return;
        };
        gateway.lists.set_lists(gateway, index, None);
        gateway.forwarded.forget(index, &None);
        tracing::info!(server = %name, "server taken out by a config reload");
    }
}

impl Reloads {
    /// Waits for a reload under way to end, and holds off the next while
    /// the guard is kept (the proxy stopping).
    pub(super) async fn stopping(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reloading.lock().await
    }

    /// What config the proxy enforces now.
    pub fn enforced(&self) -> Enforced {
        self.enforced
            .read()
            .map(|enforced| enforced.clone())
            .unwrap_or_default()
    }

    /// Says which config the proxy enforces: at start, and after each
    /// reload it applied.
    pub fn set_enforced(&self, enforced: Enforced) {
        if let Ok(mut current) = self.enforced.write() {
            *current = enforced;
        }
    }

    /// The config the proxy enforces, and the sections that wait for a
    /// restart.
    pub(super) fn render_enforced(&self, out: &mut crate::metrics::Exposition) {
        let enforced = self.enforced();
        out.declare(
            "portcullis_config_info",
            "The config this proxy enforces (1), by the SHA-256 of its file as last applied (at start or by a reload).",
            "gauge",
        );
        out.sample(
            "portcullis_config_info",
            &[(
                "config_sha256",
                enforced.config_sha256.as_deref().unwrap_or(""),
            )],
            1.0,
        );
        out.declare(
            "portcullis_config_restart_required",
            "Config sections changed since the proxy started that apply only when it restarts (1 each), by section.",
            "gauge",
        );
        for section in &enforced.restart_required {
            out.sample(
                "portcullis_config_restart_required",
                &[("section", section)],
                1.0,
            );
        }
    }
}
