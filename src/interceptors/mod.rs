//! The native interceptors, one file (or folder) each.

pub mod authz;
mod limits;
pub mod pinning;
pub mod ratelimit;
pub mod redact;
pub mod schema;
pub mod wasm;

pub use authz::{Authz, PolicyEngine, ServerAccess, Shadow};
pub use limits::Limits;
pub use pinning::Pinning;
pub use ratelimit::Ratelimit;
pub use redact::Redact;
pub use schema::Schema;
pub use wasm::Plugin;

use std::sync::Arc;

use crate::chain::{Chain, Interceptor};
use crate::config::{AuditArguments, ChainEntry, Config};

/// The chain, and the parts of it that run beside the hot path.
pub struct Built {
    pub chain: Chain,
    /// The policy set authz enforces (to watch for reloads).
    pub policies: Option<Arc<PolicyEngine>>,
    /// The pins pinning enforces (to watch for approvals).
    pub pinning: Option<Arc<Pinning>>,
    /// The WASM plugins, in chain order (to watch their breakers).
    pub plugins: Vec<Arc<Plugin>>,
    /// What takes every secret out of what is stored and traced (the audit
    /// record's target, reason and detail, span attributes, authz's denial
    /// reasons), built from `[redact]` whether or not `redact` is in the
    /// chain (it is the chain's own when it is).
    pub scrubber: Arc<Redact>,
    /// Whether calls' arguments are kept, redacted, in their audit records
    /// (`[audit] arguments = "redacted"`).
    pub keep_arguments: bool,
    /// Who may use which server: authz's, or everyone without authz.
    pub access: Arc<ServerAccess>,
    /// The fleet's places among servers' requests in flight, in Redis
    /// (concurrency limits with `[ratelimit.shared]`).
    pub shared_places: Option<Arc<ratelimit::SharedPlaces>>,
}

/// An interceptor that cannot be built: the proxy does not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("policies in {}:\n{source}", dir.display())]
    Policies {
        dir: std::path::PathBuf,
        source: authz::PolicyError,
    },
    #[error("tool pinning: {0}")]
    Pinning(pinning::PinningError),
    #[error("plugin `{name}`: {source}")]
    Plugin {
        name: String,
        source: wasm::LoadError,
    },
    #[error("secret scanning: {0}")]
    Redact(#[from] redact::RedactError),
    #[error("rate limits: {0}")]
    Ratelimit(String),
}

impl From<pinning::PinningError> for BuildError {
    fn from(err: pinning::PinningError) -> Self {
        Self::Pinning(err)
    }
}

/// Builds the chain in the config's order.
pub fn build_chain(config: &Config) -> Result<Built, BuildError> {
    let mut policies = None;
    let mut pins = None;
    let scrubber = Arc::new(Redact::new(&config.redact)?);
    let mut access = None;
    let mut interceptors: Vec<Arc<dyn Interceptor>> = Vec::new();
    let mut plugins = Vec::new();
    // One engine for every plugin, made only when there are plugins.
    let plugin_configs: Vec<&crate::config::PluginConfig> = config
        .chain
        .iter()
        .filter_map(|entry| match entry {
            ChainEntry::Wasm(plugin) => Some(&**plugin),
            _ => None,
        })
        .collect();
    let runtime = match plugin_configs.first() {
        None => None,
        Some(first) => {
            Some(
                wasm::Runtime::new(&plugin_configs).map_err(|source| BuildError::Plugin {
                    name: first.name.clone(),
                    source,
                })?,
            )
        }
    };
    for entry in &config.chain {
        match entry {
            ChainEntry::Limits => interceptors.push(Arc::new(Limits::new(config.limits))),
            ChainEntry::Ratelimit => interceptors.push(Arc::new(
                Ratelimit::new(&config.ratelimit).map_err(BuildError::Ratelimit)?,
            )),
            ChainEntry::Authz => {
                let dir = config.proxy.policies.clone().unwrap_or_default();
                let engine = Arc::new(
                    PolicyEngine::load(&dir, &config.clients)
                        .map_err(|source| BuildError::Policies { dir, source })?,
                );
                policies = Some(engine.clone());
                let redact = scrubber.clone();
                let mut authz = Authz::new(engine, &config.proxy.namespace_separator)
                    .scrub_with(Arc::new(move |text: &str| redact.scrubbed(text)))
                    .with_flow(Arc::new(config.flow.clone()));
                if config.code_mode.is_some() {
                    authz = authz.with_code_tool();
                }
                if let Some(dir) = config.proxy.shadow_policies.clone() {
                    let engine = PolicyEngine::load(&dir, &config.clients)
                        .map_err(|source| BuildError::Policies { dir, source })?;
                    // Its folder is watched while authz holds it.
                    let shadow = Shadow::new(Arc::new(engine), config.proxy.policy_poll);
                    authz = authz.with_shadow(Arc::new(shadow));
                }
                access = Some(authz.access().clone());
                interceptors.push(Arc::new(authz));
            }
            ChainEntry::Pinning => {
                let pinning = Arc::new(Pinning::new(
                    &config.pinning,
                    &config.proxy.namespace_separator,
                )?);
                pins = Some(pinning.clone());
                interceptors.push(pinning);
            }
            ChainEntry::Schema => interceptors.push(Arc::new(Schema::new(&config.schema))),
            ChainEntry::Redact => interceptors.push(scrubber.clone()),
            ChainEntry::Wasm(plugin) => {
                let Some(runtime) = &runtime else {
                    continue;
                };
                let loaded = Arc::new(
                    Plugin::load(
                        runtime.clone(),
                        plugin,
                        config.limits.max_message_bytes,
                        &config.proxy.namespace_separator,
                    )
                    .map_err(|source| BuildError::Plugin {
                        name: plugin.name.clone(),
                        source,
                    })?,
                );
                plugins.push(loaded.clone());
                interceptors.push(loaded);
            }
        }
    }
    // Concurrency limits with `[ratelimit.shared]`: the fleet's places.
    let shared_places = match &config.ratelimit.shared {
        Some(shared) if !config.ratelimit.concurrency.is_empty() => Some(Arc::new(
            ratelimit::SharedPlaces::new(shared).map_err(BuildError::Ratelimit)?,
        )),
        _ => None,
    };
    Ok(Built {
        chain: Chain::new(interceptors),
        shared_places,
        policies,
        pinning: pins,
        plugins,
        scrubber,
        keep_arguments: config.audit.arguments == AuditArguments::Redacted,
        access: access.unwrap_or_else(|| Arc::new(ServerAccess::everyone())),
    })
}
