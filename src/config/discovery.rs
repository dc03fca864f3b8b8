//! `[discovery]`: the catalogs whose servers agents may find
//! (`portcullis__find`) and add to their own session (`portcullis__add`).
//! Each of their servers is described here once, exactly as a `[[servers]]
//! from = "catalog://…"` entry would be (the hardened profile, no sandbox
//! grant): one that cannot run so is kept with the reason, which `find`
//! shows and `add` gives.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::described::{self, CatalogConfig, Described};
use super::names::shown;
use super::values::parse_duration;
use super::{
    ConfigError, Entry, ProxyConfig, ServerConfig, ServerProtocol, UpstreamSpec, Validator,
};

/// The name of the proxy's own tools' server (`portcullis__find`): no
/// configured server may take it while discovery is on.
pub const PROXY_SERVER: &str = "portcullis";

/// Servers one session adds at most, unless `max_servers_per_session` says.
const DEFAULT_PER_SESSION: usize = 4;

/// Catalog servers in use at once (by any session), unless `max_servers`
/// says.
const DEFAULT_MAX_SERVERS: usize = 16;

/// Servers the discovery catalogs may offer together, at most.
const MAX_OFFERED: usize = 10_000;

/// How long an added server's container runs with no call, unless
/// `idle_timeout` says.
const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// `[discovery]` as written.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    /// The `[[catalogs]]` whose servers agents may find
    /// (`portcullis__find`) and add to their session (`portcullis__add`).
    /// Empty: no discovery tools.
    #[serde(default)]
    catalogs: Vec<String>,
    /// Servers one session may add, at most.
    #[schemars(extend("x-default" = "`4`"))]
    max_servers_per_session: Option<usize>,
    /// Catalog servers in use by all sessions together, at most (each a
    /// container).
    #[schemars(extend("x-default" = "`16`"))]
    max_servers: Option<usize>,
    /// How long an added server's container runs with no call before it is
    /// stopped (it starts again at the next call).
    #[schemars(extend("x-default" = "`\"10m\"`"))]
    idle_timeout: Option<String>,
    /// Secret references per server, by the variable its metadata reads
    /// them from: `[discovery.secrets.github] GITHUB_PERSONAL_ACCESS_TOKEN =
    /// "env:GH_TOKEN"`. A server gets its own, and only those its metadata
    /// declares.
    #[serde(default)]
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Values for an added server's `{{server.key}}` templates, by server:
    /// `[discovery.config.SERVER] key = "value"`.
    #[serde(default)]
    config: BTreeMap<String, BTreeMap<String, String>>,
}

/// `[discovery]`, validated, with every server it offers described.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub catalogs: Vec<String>,
    pub max_per_session: usize,
    pub max_servers: usize,
    /// Every server of those catalogs, in catalog then name order.
    pub servers: Vec<Discoverable>,
}

/// One server an agent may find.
#[derive(Debug, Clone)]
pub struct Discoverable {
    pub catalog: String,
    pub name: String,
    pub title: String,
    pub description: String,
    /// The tools its metadata lists: (name, description).
    pub tools: Vec<(String, String)>,
    /// Its image as the description names it (with its digest, if pinned).
    pub image: String,
    /// How it runs, or why it cannot be added.
    pub server: Result<ServerConfig, String>,
}

impl RawDiscovery {
    pub(super) fn validate(
        self,
        validator: &Validator<'_>,
        catalogs: &[CatalogConfig],
        configured: &[ServerConfig],
        proxy: &ProxyConfig,
    ) -> Result<Option<DiscoveryConfig>, ConfigError> {
        if self.catalogs.is_empty() {
            if !self.secrets.is_empty() || !self.config.is_empty() {
                return Err(validator.error(
                    None,
                    "discovery.catalogs",
                    "`[discovery]` names no catalog: list the `[[catalogs]]` agents may add servers from".into(),
                ));
            }
            return Ok(None);
        }
        let error = |key: &str, message: String| validator.error(None, key, message);
        for name in &self.catalogs {
            if !catalogs.iter().any(|catalog| catalog.name == *name) {
                return Err(error(
                    "discovery.catalogs",
                    format!("no `[[catalogs]]` is named `{}`", shown(name)),
                ));
            }
        }
        if let Some(server) = configured.iter().find(|s| s.name == PROXY_SERVER) {
            return Err(error(
                "servers",
                format!(
                    "server `{}`: the name is the proxy's own while `[discovery]` is on (its tools are `portcullis__find`, `__add` and `__remove`)",
                    server.name
                ),
            ));
        }
        let max_per_session = self.max_servers_per_session.unwrap_or(DEFAULT_PER_SESSION);
        if max_per_session == 0 || max_per_session > 64 {
            return Err(error(
                "discovery.max_servers_per_session",
                "must be 1 to 64".into(),
            ));
        }
        let max_servers = self.max_servers.unwrap_or(DEFAULT_MAX_SERVERS);
        if max_servers == 0 || max_servers > 256 {
            return Err(error("discovery.max_servers", "must be 1 to 256".into()));
        }
        let idle = match &self.idle_timeout {
            None => DEFAULT_IDLE,
            Some(text) => parse_duration(text).map_err(|m| error("discovery.idle_timeout", m))?,
        };
        let secrets = self.secret_refs(validator)?;
        let mut taken: HashSet<&str> = configured.iter().map(|s| s.name.as_str()).collect();
        taken.insert(PROXY_SERVER);
        let at = Entry {
            validator,
            span: 0..0,
            key: "discovery".into(),
        };
        let mut servers = Vec::new();
        for name in &self.catalogs {
            let Some(catalog) = catalogs.iter().find(|catalog| catalog.name == *name) else {
                continue;
            };
            for (server, meta) in &catalog.servers {
                // A name a configured server (or an earlier catalog) has is
                // not offered: not even its existence is shown.
                if taken.contains(server.as_str()) {
                    continue;
                }
                let described = if !super::valid_server_name(server) {
                    Err(format!(
                        "`{}` is not a server name Portcullis accepts (1-63 characters of a-z, 0-9 and `-`)",
                        shown(server)
                    ))
                } else {
                    taken.insert(server);
                    let declared: BTreeMap<_, _> = secrets
                        .get(server)
                        .into_iter()
                        .flatten()
                        .filter(|(env, _)| meta.secrets.iter().any(|s| s.env == **env))
                        .map(|(env, reference)| (env.clone(), reference.clone()))
                        .collect();
                    describe(
                        &at,
                        (name, server),
                        &self.config,
                        declared,
                        catalogs,
                        proxy,
                        idle,
                    )
                };
                servers.push(discoverable(name, server, meta, described));
            }
        }
        if servers.len() > MAX_OFFERED {
            return Err(error(
                "discovery.catalogs",
                format!(
                    "the catalogs offer {} servers, over the limit of {MAX_OFFERED}",
                    servers.len()
                ),
            ));
        }
        Ok(Some(DiscoveryConfig {
            catalogs: self.catalogs,
            max_per_session,
            max_servers,
            servers,
        }))
    }
}

impl RawDiscovery {
    /// `[discovery.secrets.SERVER]`, parsed: by server, by variable.
    fn secret_refs(
        &self,
        validator: &Validator<'_>,
    ) -> Result<BTreeMap<String, BTreeMap<String, super::SecretRef>>, ConfigError> {
        let mut secrets: BTreeMap<String, BTreeMap<String, super::SecretRef>> = BTreeMap::new();
        for (server, references) in &self.secrets {
            for (name, reference) in references {
                let key = format!("discovery.secrets.{server}.{name}");
                if !super::names::is_identifier(name) {
                    return Err(validator.error(
                        None,
                        &key,
                        format!("`{}` is not an environment variable's name", shown(name)),
                    ));
                }
                let parsed = validator
                    .secret_ref(reference)
                    .map_err(|m| validator.error(None, &key, m))?;
                secrets
                    .entry(server.clone())
                    .or_default()
                    .insert(name.clone(), parsed);
            }
        }
        Ok(secrets)
    }
}

/// A catalog's entry as `find` shows it, and how it runs (or why not).
fn discoverable(
    catalog: &str,
    server: &str,
    meta: &super::catalog::ServerMeta,
    described: Result<ServerConfig, String>,
) -> Discoverable {
    Discoverable {
        catalog: catalog.to_owned(),
        name: server.to_owned(),
        title: meta.title.clone().unwrap_or_default(),
        description: meta.description.clone().unwrap_or_default(),
        tools: meta
            .tools
            .iter()
            .map(|tool| (tool.name.clone(), tool.description.clone()))
            .collect(),
        image: meta.image.clone().unwrap_or_default(),
        server: described,
    }
}

/// A catalog server as a `from = "catalog://CATALOG/SERVER"` entry with no
/// grant would run, or why it cannot.
fn describe(
    at: &Entry<'_>,
    (catalog, server): (&str, &str),
    config: &BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, super::SecretRef>,
    catalogs: &[CatalogConfig],
    proxy: &ProxyConfig,
    idle: Duration,
) -> Result<ServerConfig, String> {
    let from = format!("catalog://{catalog}/{server}");
    let described = Described {
        name: server,
        from: &from,
        config: config.get(server).cloned().unwrap_or_default(),
        secrets: secrets.keys().cloned().collect(),
        container: None,
        sandbox: None,
        choice: None,
    };
    let sources = described::Sources {
        catalogs,
        registries: &[],
    };
    let described::DescribedUpstream::Container(mut spec) =
        described::upstream(described, at, &sources, proxy)
            .map_err(|err| err.message)?
            .0
    else {
        return Err("a catalog server runs as a container".into());
    };
    spec.idle_timeout = Some(idle);
    Ok(ServerConfig {
        name: server.to_owned(),
        kind: UpstreamSpec::Container(spec),
        call_timeout: proxy.call_timeout,
        secrets,
        protocol: ServerProtocol::Handshake,
        breaker: Default::default(),
        resolved: None,
    })
}
