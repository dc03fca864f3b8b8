//! Servers from an MCP registry: `[[registries]]` (the official one is
//! known as `official` without being written) and `[[servers]] from =
//! "registry://REGISTRY/NAMESPACE/NAME@VERSION[#sha256:…]"`.
//!
//! `portcullis registry pull` fetches each such server's `server.json` (the
//! registry API's `GET …/servers/{name}/versions/{version}`) and keeps it
//! beside the config with a record of its SHA-256; the proxy reads only
//! what was pulled, never the network. What a `server.json` runs as is
//! `server_json`'s.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::names::shown;
use super::server_json::{ClassifyText as _, RemoteKind, Resolved, ServerJson};
use super::values::PathText;
use super::{ConfigError, Entry, Validator};

/// The official registry's name in `registry://` references.
pub const OFFICIAL: &str = "official";
/// The official registry's API (the frozen `v0.1`).
pub const OFFICIAL_URL: &str = "https://registry.modelcontextprotocol.io/v0.1";
/// The largest `server.json` read (published ones are a few KiB).
pub const MAX_SERVER_JSON_BYTES: usize = 1024 * 1024;

/// `[[registries]]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    /// The name `registry://NAME/…` uses: 1-63 characters of `a-z`, `0-9`
    /// and `-`. `official` is the official registry unless written here.
    name: String,
    /// The registry's API, up to and including its version
    /// (`https://registry.modelcontextprotocol.io/v0.1`): a server is read
    /// at `URL/servers/NAME/versions/VERSION`. `https://` (`http://` only
    /// on loopback).
    url: String,
    /// Where `portcullis registry pull` keeps what it pulled, relative to
    /// this file.
    #[schemars(with = "Option<PathText>")]
    #[schemars(extend("x-default" = "`registries/NAME`"))]
    path: Option<PathBuf>,
}

/// A registry the config names (or the official one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub name: String,
    /// Its API's base, without a trailing `/`.
    pub url: String,
    /// Where pulls are kept.
    pub dir: PathBuf,
}

impl RawRegistry {
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        validator: &Validator<'_>,
        names: &mut Vec<String>,
    ) -> Result<RegistryConfig, ConfigError> {
        super::names::claim(at, "registry", &self.name, names)?;
        let url = self.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url).ok();
        if !super::secure_url(&url)
            || parsed.is_none_or(|url| url.query().is_some() || url.fragment().is_some())
        {
            return Err(at.error(
                ".url",
                format!(
                    "`{}` must be an https:// URL (http:// only on loopback) without a query: what it serves decides what runs",
                    shown(&self.url)
                ),
            ));
        }
        let dir = self
            .path
            .unwrap_or_else(|| PathBuf::from(format!("registries/{}", self.name)));
        Ok(RegistryConfig {
            name: self.name,
            url,
            dir: validator.resolve(dir),
        })
    }
}

/// The config's registries, with the official one unless the config names
/// its own `official`.
pub(super) fn with_official(
    mut registries: Vec<RegistryConfig>,
    validator: &Validator<'_>,
) -> Vec<RegistryConfig> {
    if !registries.iter().any(|registry| registry.name == OFFICIAL) {
        registries.push(RegistryConfig {
            name: OFFICIAL.to_owned(),
            url: OFFICIAL_URL.to_owned(),
            dir: validator.resolve(PathBuf::from(format!("registries/{OFFICIAL}"))),
        });
    }
    registries
}

/// The config's registries and its `registry://` servers (by name), as
/// `portcullis registry pull` reads them.
pub struct RegistryServers {
    pub registries: Vec<RegistryConfig>,
    pub servers: Vec<(String, RegistryRef)>,
}

/// A `registry://` reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub registry: String,
    /// `NAMESPACE/NAME`, as the registry names the server.
    pub server: String,
    pub version: String,
    /// The SHA-256 of its `server.json` (canonical form) it must have.
    pub pin: Option<String>,
}

impl RegistryRef {
    /// `text` after `registry://`, checked strictly: every part becomes a
    /// path beside the config and in the registry's URL.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let usage =
            "a registry reference is `registry://REGISTRY/NAMESPACE/NAME@VERSION[#sha256:…]`";
        let (rest, pin) = match rest.split_once('#') {
            Some((rest, pin)) => (rest, Some(pin.to_owned())),
            None => (rest, None),
        };
        let Some((path, version)) = rest.split_once('@') else {
            return Err(format!(
                "{usage}: the version is required (a registry's `latest` moves)"
            ));
        };
        let mut parts = path.splitn(3, '/');
        let (Some(registry), Some(namespace), Some(name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(usage.into());
        };
        let part = |text: &str, extra: &str| {
            !text.is_empty()
                && text != "."
                && text != ".."
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        if !super::names::valid_server_name(registry)
            || !part(namespace, ".-")
            || !part(name, "._-")
            || path.len() > 260
        {
            return Err(format!(
                "{usage}: `{}` is not a registry and a server name (reverse DNS: `io.github.user/server`)",
                shown(path)
            ));
        }
        if !part(version, "._+-") || version.len() > 128 || version.eq_ignore_ascii_case("latest") {
            return Err(format!(
                "{usage}: `{}` is not a version (letters, digits and `._+-`; not `latest`, which moves)",
                shown(version)
            ));
        }
        if let Some(pin) = &pin
            && !super::pulled::is_pin(pin)
        {
            return Err(format!(
                "{usage}: `{}` is not `sha256:` and 64 lowercase hex digits",
                shown(pin)
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            server: format!("{namespace}/{name}"),
            version: version.to_owned(),
            pin,
        })
    }

    /// The reference without its pin, as the pull's record keeps it.
    pub fn unpinned(&self) -> String {
        format!(
            "registry://{}/{}@{}",
            self.registry, self.server, self.version
        )
    }

    /// Where its pull is kept under the registry's folder.
    pub fn file(&self, registry: &RegistryConfig) -> PathBuf {
        registry
            .dir
            .join(format!("{}@{}.json", self.server, self.version))
    }

    /// Where the registry serves it (the name and version encoded, as the
    /// API asks).
    pub fn api_url(&self, registry: &RegistryConfig) -> String {
        let encode = |text: &str| {
            text.chars()
                .map(|c| match c {
                    '/' => "%2F".to_owned(),
                    '+' => "%2B".to_owned(),
                    c => c.to_string(),
                })
                .collect::<String>()
        };
        format!(
            "{}/servers/{}/versions/{}",
            registry.url,
            encode(&self.server),
            encode(&self.version)
        )
    }
}

/// A `server.json` in its canonical form (object keys sorted, no spaces):
/// what a pull keeps and its pin is the SHA-256 of, however the registry
/// spaced or ordered it.
pub fn canonical(value: &Value) -> Vec<u8> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(entries) => {
                let mut keys: Vec<&String> = entries.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|key| (key.clone(), sorted(&entries[key])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string().into_bytes()
}

/// What the registry API answered for one version: its `server.json`,
/// checked to be the one asked for. `Err` says why not.
pub fn from_response(body: &[u8], asked: &RegistryRef) -> Result<Pulled, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| format!("its answer is not JSON ({})", err.classify_text()))?;
    let Some(server) = value.get("server").filter(|server| server.is_object()) else {
        return Err("its answer has no `server` object (the registry API's shape)".into());
    };
    let parsed = ServerJson::parse(server)?;
    if parsed.name != asked.server || parsed.version != asked.version {
        return Err(format!(
            "it answered `{}@{}`, not what was asked",
            shown(&parsed.name),
            shown(&parsed.version)
        ));
    }
    let status = value
        .pointer("/_meta/io.modelcontextprotocol.registry~1official/status")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if status.as_deref() == Some("deleted") {
        return Err("the registry marks this version deleted".into());
    }
    Ok(Pulled {
        json: canonical(server),
        status,
    })
}

/// A pulled `server.json`, ready to keep.
pub struct Pulled {
    pub json: Vec<u8>,
    /// The registry's word on it (`active`, `deprecated`), if any.
    pub status: Option<String>,
}

/// What a `registry://` server resolved to: a line for `doctor`, and the
/// pulled file it was read from (a reload watches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub summary: String,
    pub file: PathBuf,
}

/// One line on what a registry server resolved to, for `doctor`: the
/// publisher's text in it unescaped, and whole.
pub fn summary(reference: &str, digest: &str, resolved: &Resolved) -> String {
    let what = match resolved {
        Resolved::Package(meta) => format!(
            "image {}{}{}{}",
            meta.image.as_deref().unwrap_or_default(),
            if meta.command.is_empty() {
                String::new()
            } else {
                format!(", command {:?}", meta.command)
            },
            if meta.env.is_empty() {
                String::new()
            } else {
                format!(
                    ", environment {}",
                    meta.env
                        .iter()
                        .map(|env| format!("{}={}", env.name, env.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if meta.secrets.is_empty() {
                String::new()
            } else {
                format!(
                    ", secrets {}",
                    meta.secrets
                        .iter()
                        .map(|secret| secret.env.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        Resolved::Remote {
            url,
            transport,
            headers,
        } => format!(
            "remote {url} ({}){}",
            match transport {
                RemoteKind::StreamableHttp => "streamable HTTP",
                RemoteKind::Sse => "HTTP+SSE",
            },
            if headers.is_empty() {
                String::new()
            } else {
                format!(
                    ", headers {}",
                    headers.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ),
    };
    // Escaped where it is shown (`doctor` escapes every line).
    format!("{reference} ({digest}): {what}")
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
