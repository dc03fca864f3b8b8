//! Server metadata in Docker's catalog format: a catalog file's entries
//! (`registry: { NAME: { … } }`), a single server's YAML (`file://`), and
//! the `io.docker.server.metadata` label an image carries (`docker://`),
//! and what a server so described runs as under the hardened profile.
//!
//! What the metadata says is a request, never a grant: it names the image,
//! the command, plain environment, the secrets the server needs and the
//! config values it reads. What it asks for beyond the hardened profile (a
//! network, a user, volumes, host names, privileges) is refused unless the
//! operator's `[servers.sandbox]` grants exactly that. Secret values come
//! from the operator's `secrets`, never from the metadata.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sandbox::Sandbox;

/// The label Docker's self-describing MCP server images carry.
pub const METADATA_LABEL: &str = "io.docker.server.metadata";
/// The largest catalog file read (a catalog of thousands of servers fits).
pub const MAX_CATALOG_BYTES: usize = 16 * 1024 * 1024;
/// The largest label value read (an image's author wrote it).
pub const MAX_LABEL_BYTES: usize = 64 * 1024;

/// A catalog file as Docker's gateway reads it: its servers by name under
/// `registry` (other top-level keys, `version` among them, are ignored, as
/// Docker does).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub registry: BTreeMap<String, ServerMeta>,
}

/// One server's metadata: the fields of Docker's catalog `Server` that say
/// how it runs, plus what is read only to be refused.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerMeta {
    #[serde(default)]
    pub name: Option<String>,
    /// `server` (an image; the default), `remote`, or `poci` (refused).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Arguments after the image's entrypoint, with `{{server.key}}`
    /// templates.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<MetaEnv>,
    #[serde(default)]
    pub secrets: Vec<MetaSecret>,
    /// JSON schemas of the config values the server reads.
    #[serde(default)]
    pub config: Vec<Value>,
    #[serde(default)]
    pub tools: Vec<MetaTool>,
    #[serde(default)]
    pub remote: Option<MetaRemote>,
    /// Portcullis's own key (Docker ignores it): the `[flow]` labels of the
    /// server's items, read by `flow::DescribedLabels::parse` (kept as
    /// written here, so a mistake refuses this server, not its catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Value>,
    // What is asked of the sandbox:
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub disable_network: bool,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// Every other key: Docker ignores them; those that would ask the
    /// engine for more than the hardened profile are refused here.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetaEnv {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetaSecret {
    /// The secret's name in the catalog (`github.personal_access_token`).
    pub name: String,
    /// The environment variable the server reads it from.
    pub env: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetaTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetaRemote {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Keys no metadata may use to ask the engine for more: refused whatever
/// the operator grants (the operator's `[servers.sandbox]` says it).
const ENGINE_ASKS: &[&str] = &[
    "network",
    "networkMode",
    "network_mode",
    "privileged",
    "capAdd",
    "cap_add",
    "capabilities",
    "devices",
    "pid",
    "ipc",
    "securityOpt",
    "security_opt",
    "runtime",
    "sysctls",
];

/// The parser's options: errors name a line and column but quote nothing
/// (a file that is not a catalog, say a key file a symlink points at, is
/// not echoed into the log); aliases may replay at most `replays` events
/// (a label is small: a few thousand are plenty).
fn options(replays: usize) -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.alias_limits.max_total_replayed_events = replays;
    options
}

/// Parses a catalog file.
pub fn parse_catalog(text: &str) -> Result<CatalogFile, String> {
    if text.len() > MAX_CATALOG_BYTES {
        return Err(format!(
            "the catalog is over {} MiB",
            MAX_CATALOG_BYTES / 1024 / 1024
        ));
    }
    serde_saphyr::from_str_with_options(text, options(1_000_000))
        .map_err(|err| format!("not a catalog in Docker's format: {}", first_line(&err)))
}

/// A catalog file (YAML or JSON) as the JSON an OCI catalog's layer holds:
/// every key kept; refused unless it parses as a catalog.
pub fn to_json(text: &str) -> Result<Vec<u8>, String> {
    parse_catalog(text)?;
    let value: Value = serde_saphyr::from_str_with_options(text, options(1_000_000))
        .map_err(|err| format!("not a catalog in Docker's format: {}", first_line(&err)))?;
    serde_json::to_vec(&value).map_err(|err| err.to_string())
}

/// Parses one server's metadata (a `file://` server, an image's label).
pub fn parse_server(text: &str, limit: usize) -> Result<ServerMeta, String> {
    if text.len() > limit {
        return Err(format!(
            "the server's metadata is over {} KiB",
            limit / 1024
        ));
    }
    let replays = if limit <= MAX_LABEL_BYTES {
        10_000
    } else {
        1_000_000
    };
    serde_saphyr::from_str_with_options(text, options(replays))
        .map_err(|err| format!("not a server's metadata: {}", first_line(&err)))
}

/// A parse error's first line, its control characters escaped.
fn first_line(err: &serde_saphyr::Error) -> String {
    super::names::shown(err.to_string().lines().next().unwrap_or_default())
}

/// Environment variables no description may set: they would send the
/// server's traffic (and so the operator's secrets) elsewhere, change whom
/// it trusts, or load code into it. The operator may still set them, in
/// the server's `secrets`.
pub(super) fn redirecting(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    const EXACT: &[&str] = &[
        "NODE_OPTIONS",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "RUBYOPT",
        "PERL5OPT",
        "BASH_ENV",
        "ENV",
        "HOSTALIASES",
        "RES_OPTIONS",
        "LOCALDOMAIN",
        "CORECLR_PROFILER",
        "GIT_PROXY_COMMAND",
        "GIT_ASKPASS",
        "GIT_EXEC_PATH",
        "GIT_TEMPLATE_DIR",
    ];
    const PREFIXES: &[&str] = &[
        "LD_",
        "DYLD_",
        "SSL_",
        "NODE_TLS",
        "PYTHON",
        "GIT_SSL",
        "GIT_SSH",
        "GIT_CONFIG",
        "GODEBUG",
        "GOPROXY",
        "GOFLAGS",
        "NPM_CONFIG_",
        "PIP_",
        "UV_",
        "OPENSSL_",
        "DOTNET_STARTUP",
        "DOTNET_ADDITIONAL",
        "GCONV_",
    ];
    EXACT.contains(&upper.as_str())
        || PREFIXES.iter().any(|prefix| upper.starts_with(prefix))
        || upper.ends_with("_PROXY")
        || upper.contains("CA_BUNDLE")
        || upper.contains("CA_CERT")
        || upper.contains("CERT_FILE")
}

/// What the operator's entry brings to a server described by metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operator {
    /// The metadata's name (catalog key) its templates use as the first
    /// part of `{{server.key}}`.
    pub meta_name: String,
    /// The server's name in the proxy, which templates may use as well.
    pub server: String,
    /// `[servers.config]`: values for the templates.
    pub config: BTreeMap<String, String>,
    /// The names of the server's `secrets` (the environment variables they
    /// become).
    pub secrets: Vec<String>,
}

/// A `server`-type entry as the container runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The command and environment of a server described by `meta`, checked
/// against what the operator granted. `image` names it in errors.
pub fn launch(meta: &ServerMeta, operator: &Operator, sandbox: &Sandbox) -> Result<Launch, String> {
    match meta.kind.as_deref() {
        None | Some("server") => {}
        Some("poci") => {
            return Err(
                "a `poci` server (a container per tool call) is not supported; only `server` and `remote`"
                    .into(),
            );
        }
        Some(other) => {
            return Err(format!(
                "a `{}` server cannot run as a container",
                super::names::shown(other)
            ));
        }
    }
    asks_within(meta, sandbox)?;
    needs_secrets(meta, operator)?;
    let mut args = Vec::with_capacity(meta.command.len());
    for arg in &meta.command {
        match template(arg, operator)? {
            Some(value) => args.push(value),
            None => {
                return Err(format!(
                    "its command reads `{}`, which has no value: set it in the server's `config`",
                    missing_key(arg)
                ));
            }
        }
    }
    let mut env = BTreeMap::new();
    for entry in &meta.env {
        if !super::names::is_identifier(&entry.name) {
            return Err(format!(
                "its environment variable `{}` is not a valid name",
                super::names::shown(&entry.name)
            ));
        }
        if redirecting(&entry.name) {
            return Err(format!(
                "its environment sets `{}`, which could send the server's traffic (and your secrets) elsewhere or load code into it; no description may set it",
                entry.name
            ));
        }
        if operator.secrets.contains(&entry.name) {
            return Err(format!(
                "its environment sets `{}`, the name of a secret",
                entry.name
            ));
        }
        // An empty value leaves the variable out, as Docker's gateway does.
        if let Some(value) = template(&entry.value, operator)?
            && !value.is_empty()
        {
            env.insert(entry.name.clone(), value);
        }
    }
    Ok(Launch { args, env })
}

/// A description's `user` as numbers, `uid` and maybe `gid`: `root` is
/// uid 0 and group 0 (as Docker reads it); another name has no number
/// before the image runs (`None`).
fn numeric_user(user: &str) -> Option<(u64, Option<u64>)> {
    let number = |part: &str| match part {
        "root" => Some(0),
        _ => part.parse::<u64>().ok(),
    };
    match user.split_once(':') {
        None if user == "root" => Some((0, Some(0))),
        None => Some((number(user)?, None)),
        Some((uid, gid)) => Some((number(uid)?, Some(number(gid)?))),
    }
}

/// Whether the sandbox's user (`uid[:gid]`, numbers, as validated) is the
/// one the description asks for, by name (`root`) or number alike: the
/// same uid, and the same group where both name one.
fn granted_user(asked: &str, granted: &str) -> bool {
    match (numeric_user(asked), numeric_user(granted)) {
        (Some((uid, gid)), Some((granted_uid, granted_gid))) => {
            uid == granted_uid && (gid.is_none() || granted_gid.is_none() || gid == granted_gid)
        }
        _ => false,
    }
}

/// Refuses what the metadata asks of the engine beyond the sandbox the
/// operator granted.
fn asks_within(meta: &ServerMeta, sandbox: &Sandbox) -> Result<(), String> {
    if let Some(key) = ENGINE_ASKS
        .iter()
        .find(|key| meta.other.contains_key(**key))
    {
        return Err(format!(
            "its metadata asks for `{key}`, which no server's metadata may ask: the operator's `[servers.sandbox]` decides the container's profile"
        ));
    }
    if let Some(user) = &meta.user
        && !granted_user(user.trim(), &sandbox.user)
    {
        let user = user.trim();
        let grant = match numeric_user(user) {
            Some((uid, gid)) => match gid {
                Some(gid) => format!("`[servers.sandbox] user = \"{uid}:{gid}\"`"),
                None => format!("`[servers.sandbox] user = \"{uid}\"`"),
            },
            // A name other than root means what the image's own users say,
            // which is read only once it runs.
            None => "`[servers.sandbox] user`, by number (`UID[:GID]`)".to_owned(),
        };
        return Err(format!(
            "it asks to run as user `{}`; the hardened profile runs it as `{}`: grant that user with {grant} if you trust it",
            super::names::shown(user),
            sandbox.user
        ));
    }
    if !meta.allow_hosts.is_empty() && sandbox.network == super::sandbox::DEFAULT_NETWORK {
        return Err(
            "it asks for network access (`allowHosts`); the hardened profile has no network: grant one with `[servers.sandbox] network` if you trust it"
                .into(),
        );
    }
    if !meta.extra_hosts.is_empty() {
        return Err(
            "it asks for host names of its own (`extraHosts`), which Portcullis does not grant"
                .into(),
        );
    }
    for volume in &meta.volumes {
        let target = volume.split(':').nth(1).unwrap_or(volume);
        if !sandbox.mounts.iter().any(|mount| mount.target == target) {
            return Err(format!(
                "it asks for the volume `{}`; the hardened profile mounts nothing: grant it with `[servers.sandbox] mounts` (target `{}`) if you trust it",
                super::names::shown(volume),
                super::names::shown(target)
            ));
        }
    }
    Ok(())
}

/// Every secret the metadata declares must be one of the operator's.
fn needs_secrets(meta: &ServerMeta, operator: &Operator) -> Result<(), String> {
    for secret in &meta.secrets {
        if !operator.secrets.contains(&secret.env) {
            return Err(format!(
                "it needs the secret `{}` (as `{}`): add `{} = \"file:…\"` or `\"env:…\"` to the server's `secrets`",
                super::names::shown(&secret.name),
                super::names::shown(&secret.env),
                super::names::shown(&secret.env)
            ));
        }
    }
    Ok(())
}

/// A value with its `{{server.key}}` templates (and `{{server.key|or:DEFAULT}}`)
/// filled from the operator's config; `None` when one has no value and no
/// default.
fn template(text: &str, operator: &Operator) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "`{}` opens a template it does not close",
                super::names::shown(text)
            ));
        };
        let (path, default) = match after[..end].split_once('|') {
            None => (after[..end].trim(), None),
            Some((path, function)) => match function.trim().strip_prefix("or:") {
                Some(default) => (path.trim(), Some(default)),
                None => {
                    return Err(format!(
                        "`{}` uses a template function Portcullis does not know (only `or:DEFAULT`)",
                        super::names::shown(text)
                    ));
                }
            },
        };
        match lookup(path, operator)?.or(default) {
            Some(value) => out.push_str(value),
            None => return Ok(None),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// `server.key`: the operator's config value `key`, if the first part
/// names the server (dots in its name as `_`, as Docker writes them).
fn lookup<'a>(path: &str, operator: &'a Operator) -> Result<Option<&'a str>, String> {
    let canonical = operator.meta_name.replace('.', "_");
    let key = [canonical.as_str(), &operator.meta_name, &operator.server]
        .into_iter()
        .filter(|name| !name.is_empty())
        .find_map(|name| path.strip_prefix(name)?.strip_prefix('.'));
    let Some(key) = key else {
        return Err(format!(
            "the template `{{{{{}}}}}` reads another server's config (templates read `{}.KEY`)",
            super::names::shown(path),
            operator.meta_name
        ));
    };
    Ok(operator.config.get(key).map(String::as_str))
}

/// The first template key of `text` that has no value, for the error.
fn missing_key(text: &str) -> String {
    text.split("{{")
        .nth(1)
        .and_then(|rest| rest.split("}}").next())
        .map(|key| super::names::shown(key.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
