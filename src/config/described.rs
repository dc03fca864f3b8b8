//! Servers described elsewhere (`[[servers]] from`), and the catalogs that
//! describe them (`[[catalogs]]`): `catalog://CATALOG/SERVER`, `file://PATH`
//! and `docker://IMAGE[@sha256:…]`, in Docker's catalog format (see
//! `catalog`), and `registry://…`, an MCP registry's `server.json` (see
//! `registry`). A described server runs under the same hardened profile,
//! chain and records as any other; its description never relaxes them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::catalog::{self, MAX_LABEL_BYTES, Operator, ServerMeta};
use super::container::RawContainer;
use super::names::shown;
use super::registry::{self, RegistryConfig, RegistryRef, Resolution};
use super::sandbox::RawSandbox;
use super::server_json::{self, RegistryUse, RemoteKind, Resolved};
use super::values::PathText;
use super::{ConfigError, ContainerSpec, DescribedLabels, Entry, ProxyConfig, Validator};

/// `[[catalogs]]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    /// The name `catalog://NAME/SERVER` uses: 1-63 characters of `a-z`,
    /// `0-9` and `-`.
    name: String,
    /// A catalog file in Docker's format (`registry:` and its servers),
    /// relative to this file. With `oci`: where `portcullis catalog pull`
    /// keeps it.
    #[schemars(with = "Option<PathText>")]
    #[schemars(extend("x-default" = "with `oci`: `catalogs/NAME.json`"))]
    path: Option<PathBuf>,
    /// A catalog in an OCI registry (`REGISTRY/REPOSITORY[:TAG][@sha256:…]`,
    /// as `docker mcp catalog push` stores them): `portcullis catalog pull`
    /// fetches it (the proxy never does at start) and the proxy refuses to
    /// start until it has. A pinned digest must be what was pulled.
    oci: Option<String>,
    /// Every server this catalog describes runs only a signed image (see
    /// `[signatures]`).
    #[schemars(extend("x-default" = "`false`"))]
    require_signature: Option<bool>,
}

/// A catalog the config names, read.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub name: String,
    pub path: PathBuf,
    /// Its servers by name.
    pub servers: BTreeMap<String, ServerMeta>,
    /// Where it is pulled from, for an OCI catalog.
    pub oci: Option<String>,
    /// An OCI catalog not pulled yet (no servers until it is).
    pub unpulled: bool,
    /// Its servers' images must be signed.
    pub require_signature: bool,
}

impl RawCatalog {
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        validator: &Validator<'_>,
        names: &mut Vec<String>,
    ) -> Result<CatalogConfig, ConfigError> {
        super::names::claim(at, "catalog", &self.name, names)?;
        let path = match (&self.path, &self.oci) {
            (Some(path), _) => validator.resolve(path.clone()),
            (None, Some(_)) => {
                validator.resolve(PathBuf::from(format!("catalogs/{}.json", self.name)))
            }
            (None, None) => {
                return Err(at.error(
                    "",
                    format!(
                        "catalog `{}` needs a `path` (a file) or `oci` (a registry's)",
                        self.name
                    ),
                ));
            }
        };
        let text = match &self.oci {
            None => read(&path).map_err(|message| at.error(".path", message))?,
            Some(reference) => {
                super::pulled::check_reference(reference).map_err(|m| at.error(".oci", m))?;
                let pulled = super::pulled::read(&path, reference, catalog::MAX_CATALOG_BYTES)
                    .map_err(|m| at.error(".oci", format!("catalog `{}`: {m}", self.name)))?;
                match pulled {
                    Some(text) => text,
                    None => {
                        return Ok(CatalogConfig {
                            name: self.name,
                            path,
                            servers: BTreeMap::new(),
                            oci: self.oci,
                            unpulled: true,
                            require_signature: self.require_signature.unwrap_or(false),
                        });
                    }
                }
            }
        };
        let file = catalog::parse_catalog(&text)
            .map_err(|message| at.error(".path", format!("{}: {message}", path.display())))?;
        Ok(CatalogConfig {
            name: self.name,
            path,
            servers: file.registry,
            oci: self.oci,
            unpulled: false,
            require_signature: self.require_signature.unwrap_or(false),
        })
    }
}

/// A file the config names, read whole (at most the catalog's limit).
fn read(path: &std::path::Path) -> Result<String, String> {
    super::values::read_regular(path, catalog::MAX_CATALOG_BYTES)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))
}

/// An image reference as the engine takes it (`[registry/]name[:tag]`,
/// and a digest apart): nothing a terminal or a log line would act on.
fn image_reference(image: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/:".contains(c);
    if image.is_empty() || image.len() > 255 || !image.chars().all(allowed) {
        return Err(format!("`{}` is not an image reference", shown(image)));
    }
    Ok(())
}

/// Where a `from` reference points.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Catalog {
        catalog: String,
        server: String,
    },
    File(PathBuf),
    Docker {
        image: String,
        digest: Option<String>,
    },
    Registry(RegistryRef),
}

fn source(text: &str) -> Result<Source, String> {
    if let Some(rest) = text.strip_prefix("catalog://") {
        return match rest.split_once('/') {
            Some((catalog, server)) if !catalog.is_empty() && !server.is_empty() => {
                Ok(Source::Catalog {
                    catalog: catalog.to_owned(),
                    server: server.to_owned(),
                })
            }
            _ => Err("a catalog reference is `catalog://CATALOG/SERVER`".into()),
        };
    }
    if let Some(path) = text.strip_prefix("file://") {
        if path.is_empty() {
            return Err("a file reference is `file://PATH` (relative to this file)".into());
        }
        return Ok(Source::File(PathBuf::from(path)));
    }
    if let Some(rest) = text.strip_prefix("registry://") {
        return RegistryRef::parse(rest).map(Source::Registry);
    }
    if let Some(image) = text.strip_prefix("docker://") {
        let (image, digest) = match image.split_once('@') {
            Some((image, digest)) => (image, Some(digest.to_ascii_lowercase())),
            None => (image, None),
        };
        if image_reference(image).is_err() {
            return Err("an image reference is `docker://IMAGE[:TAG][@sha256:DIGEST]`".into());
        }
        return Ok(Source::Docker {
            image: image.to_owned(),
            digest,
        });
    }
    Err(format!(
        "`{}` is not a server reference: `catalog://CATALOG/SERVER`, `file://PATH`, `docker://IMAGE[@sha256:…]` or `registry://REGISTRY/NAMESPACE/NAME@VERSION`",
        shown(text)
    ))
}

/// What a `from` server's entry holds besides its reference.
pub(super) struct Described<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub config: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub container: Option<RawContainer>,
    pub sandbox: Option<RawSandbox>,
    /// `use`: which form of a registry server.
    pub choice: Option<RegistryUse>,
}

/// Where described servers are described: the config's catalogs and
/// registries.
pub(super) struct Sources<'a> {
    pub catalogs: &'a [CatalogConfig],
    pub registries: &'a [RegistryConfig],
}

/// What a described server runs as.
pub(super) enum DescribedUpstream {
    /// The metadata's image, command and environment, the operator's
    /// sandbox and run settings; a `docker://` server's command is read
    /// from its label when it starts.
    Container(Box<ContainerSpec>),
    /// A registry server's remote, its header values as a `remote`
    /// server's (`… secret:NAME`).
    Remote {
        url: String,
        transport: RemoteKind,
        headers: BTreeMap<String, String>,
    },
}

/// A described server, and for `doctor` what a registry reference
/// resolved to.
pub(super) fn upstream(
    mut described: Described<'_>,
    at: &Entry<'_>,
    sources: &Sources<'_>,
    proxy: &ProxyConfig,
) -> Result<(DescribedUpstream, Option<Resolution>), ConfigError> {
    let fail =
        |message: String| at.error(".from", format!("server `{}`: {message}", described.name));
    let source = source(described.from).map_err(fail)?;
    if described.choice.is_some() && !matches!(source, Source::Registry(_)) {
        let message = "`use` chooses a form of a `registry://` server";
        return Err(at.error(".use", format!("server `{}`: {message}", described.name)));
    }
    let container_given = described.container.is_some();
    let raw = described.container.take().unwrap_or_default();
    let (meta_name, meta, catalog_signed, summary) = match source {
        Source::Docker { image, digest } => {
            let raw = raw.described(at, image, digest)?;
            let mut spec = raw.validate(at, described.name, described.sandbox, proxy)?;
            spec.label = Some(Operator {
                meta_name: String::new(),
                server: described.name.to_owned(),
                config: described.config,
                secrets: described.secrets,
            });
            return Ok((DescribedUpstream::Container(Box::new(spec)), None));
        }
        Source::Registry(reference) => {
            let (summary, resolved) =
                from_registry(&reference, &described, sources).map_err(fail)?;
            let summary = Some(summary);
            match resolved {
                Resolved::Package(meta) => {
                    let name = meta.name.clone().unwrap_or_default();
                    (name, *meta, false, summary)
                }
                Resolved::Remote {
                    url,
                    transport,
                    headers,
                } if !container_given && described.sandbox.is_none() => {
                    let remote = DescribedUpstream::Remote {
                        url,
                        transport,
                        headers,
                    };
                    return Ok((remote, summary));
                }
                Resolved::Remote { .. } => {
                    let message =
                        "it resolves to a remote: `container` and `sandbox` apply to a package";
                    return Err(fail(message.into()));
                }
            }
        }
        Source::Catalog { catalog, server } => {
            let (meta, signed) = catalog_entry(sources, &catalog, &server).map_err(fail)?;
            (server, meta, signed, None)
        }
        Source::File(path) => {
            let path = at.validator.resolve(path);
            let text = read(&path).map_err(fail)?;
            let meta = catalog::parse_server(&text, catalog::MAX_CATALOG_BYTES)
                .map_err(|message| fail(format!("{}: {message}", path.display())))?;
            let name = meta
                .name
                .clone()
                .unwrap_or_else(|| described.name.to_owned());
            (name, meta, false, None)
        }
    };
    scan(&meta).map_err(|message| fail(format!("its metadata {message}")))?;
    if meta.kind.as_deref() == Some("remote") {
        return Err(fail(
            "its metadata describes a `remote` server: write it as `remote = { url = … }`, whose headers and secrets the config states"
                .into(),
        ));
    }
    let Some(image) = meta.image.clone().filter(|image| !image.trim().is_empty()) else {
        return Err(fail("its metadata names no `image`".into()));
    };
    let (image, digest) = match image.split_once('@') {
        Some((image, digest)) => (image.to_owned(), Some(digest.to_ascii_lowercase())),
        None => (image, None),
    };
    image_reference(&image).map_err(|message| fail(format!("its metadata's image: {message}")))?;
    if let Some(digest) = &digest
        && !digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(fail(format!(
            "its metadata's image digest `{}` is not `sha256:` and 64 hex digits",
            shown(digest)
        )));
    }
    let labels = flow_labels(&meta).map_err(fail)?;
    let raw = raw.described(at, image, digest)?;
    let mut spec = raw.validate(at, described.name, described.sandbox, proxy)?;
    spec.require_signature |= catalog_signed;
    spec.described_labels = labels;
    let operator = Operator {
        meta_name,
        server: described.name.to_owned(),
        config: described.config,
        secrets: described.secrets,
    };
    let launch = catalog::launch(&meta, &operator, &spec.sandbox).map_err(fail)?;
    super::secrets::check_env(&launch.env)
        .map_err(|(_, message)| fail(format!("its metadata's environment: {message}")))?;
    super::secrets::check_args(&launch.args)
        .map_err(|(_, message)| fail(format!("its metadata's command: {message}")))?;
    spec.args = launch.args;
    spec.env = launch.env;
    Ok((DescribedUpstream::Container(Box::new(spec)), summary))
}

/// What a description's `flow` key labels (see `DescribedLabels`).
fn flow_labels(meta: &ServerMeta) -> Result<Option<Box<DescribedLabels>>, String> {
    let parsed = meta.flow.as_ref().map(DescribedLabels::parse).transpose();
    parsed
        .map(|labels| labels.map(Box::new))
        .map_err(|message| format!("its metadata's {message}"))
}

/// A catalog's entry, and whether the catalog wants its images signed.
fn catalog_entry(
    sources: &Sources<'_>,
    catalog: &str,
    server: &str,
) -> Result<(ServerMeta, bool), String> {
    let Some(found) = sources.catalogs.iter().find(|c| c.name == catalog) else {
        return Err(format!("no `[[catalogs]]` is named `{}`", shown(catalog)));
    };
    let Some(meta) = found.servers.get(server) else {
        return Err(format!(
            "catalog `{catalog}` has no server `{}`",
            shown(server)
        ));
    };
    Ok((meta.clone(), found.require_signature))
}

/// A registry server's pulled `server.json`, scanned, read and resolved
/// with the operator's values: what it runs as, and that in a line.
fn from_registry(
    reference: &RegistryRef,
    described: &Described<'_>,
    sources: &Sources<'_>,
) -> Result<(Resolution, Resolved), String> {
    let Some(found) = sources
        .registries
        .iter()
        .find(|registry| registry.name == reference.registry)
    else {
        return Err(format!(
            "no `[[registries]]` is named `{}`",
            shown(&reference.registry)
        ));
    };
    let path = reference.file(found);
    let text = super::pulled::read_pinned(
        &path,
        &reference.unpinned(),
        reference.pin.as_deref(),
        "registry",
        registry::MAX_SERVER_JSON_BYTES,
    )?
    .ok_or_else(|| {
        format!(
            "`{}` has not been pulled: run `portcullis registry pull --config FILE`",
            reference.unpinned()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| format!("`{}` is not JSON: pull it again", path.display()))?;
    scan_value(&value).map_err(|message| format!("its server.json {message}"))?;
    let server = server_json::ServerJson::parse(&value)?;
    let values = server_json::Values {
        config: &described.config,
        secrets: &described.secrets,
    };
    let resolved = server_json::resolve(&server, described.choice, &values)?;
    let digest = super::pulled::sha256_digest(text.as_bytes());
    let summary = Resolution {
        summary: registry::summary(&reference.unpinned(), &digest, &resolved),
        file: path,
    };
    Ok((summary, resolved))
}

/// A `docker://` server's command and environment from the label of the
/// image that is about to run, checked as a catalog entry's is.
pub fn from_label(spec: &ContainerSpec, label: Option<&str>) -> Result<ContainerSpec, String> {
    let Some(operator) = &spec.label else {
        return Ok(spec.clone());
    };
    let Some(label) = label else {
        return Err(format!(
            "image `{}` has no `{}` label: it does not describe itself",
            spec.image,
            catalog::METADATA_LABEL
        ));
    };
    let meta = catalog::parse_server(label, MAX_LABEL_BYTES)
        .map_err(|message| format!("image `{}`: {message}", spec.image))?;
    scan(&meta).map_err(|message| format!("image `{}`: its label {message}", spec.image))?;
    let operator = Operator {
        meta_name: meta.name.clone().unwrap_or_default(),
        ..operator.clone()
    };
    let launch = catalog::launch(&meta, &operator, &spec.sandbox)
        .map_err(|message| format!("image `{}`: {message}", spec.image))?;
    super::secrets::check_env(&launch.env).map_err(|(_, message)| {
        format!("image `{}`: its label's environment: {message}", spec.image)
    })?;
    super::secrets::check_args(&launch.args).map_err(|(_, message)| {
        format!("image `{}`: its label's command: {message}", spec.image)
    })?;
    let mut resolved = spec.clone();
    resolved.args = launch.args;
    resolved.env = launch.env;
    resolved.label = None;
    Ok(resolved)
}

/// Refuses a description that holds something shaped like a credential,
/// wherever it is (a description, a tool's, an environment value, a
/// command, a remote's URL or headers, any other key): a publisher must not
/// ship one, and the server is not started with it. The error names where,
/// never what.
fn scan(meta: &ServerMeta) -> Result<(), String> {
    scan_value(&serde_json::to_value(meta).map_err(|err| err.to_string())?)
}

/// [`scan`] of a description as JSON (a registry's `server.json`).
fn scan_value(value: &serde_json::Value) -> Result<(), String> {
    fn walk(value: &serde_json::Value, at: &mut String) -> Option<String> {
        match value {
            serde_json::Value::String(text) => {
                super::secrets::credential_in_text(text).then(|| at.clone())
            }
            serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                let found = walk(item, at);
                at.truncate(len);
                found
            }),
            serde_json::Value::Object(entries) => entries.iter().find_map(|(key, item)| {
                // A key may be the credential too: named by where it is,
                // never by itself.
                if super::secrets::credential_in_text(key) {
                    let parent = if at.is_empty() { "." } else { at.as_str() };
                    return Some(format!("{parent} (a key)"));
                }
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(&shown(key));
                let found = walk(item, at);
                at.truncate(len);
                found
            }),
            _ => None,
        }
    }
    match walk(value, &mut String::new()) {
        None => Ok(()),
        Some(at) => Err(format!(
            "holds what looks like a credential at `{at}`: refused before the server starts (a description must not carry one; the operator's secrets go in `secrets`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential found says where, never what: a key that is one is
    /// named by the place it is in.
    #[test]
    fn a_credential_is_named_by_where_it_is() {
        let key = ["gh", "p_R8xT2mQ9vL4nK7pW3sZ6yB1cD5fG0hJ8aE2u"].concat();
        let meta =
            catalog::parse_server(&format!("name: x\nimage: img\nextra:\n  {key}: 1\n"), 4096)
                .unwrap_or_else(|e| panic!("{e}"));
        let refused = scan(&meta).err().unwrap_or_default();
        assert!(refused.contains("at `extra (a key)`"), "{refused}");
        assert!(!refused.contains(&key), "{refused}");
        let meta = catalog::parse_server(
            &format!("name: x\nimage: img\ntools:\n  - name: t\n    description: use {key}\n"),
            4096,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let refused = scan(&meta).err().unwrap_or_default();
        assert!(refused.contains("at `tools[0].description`"), "{refused}");
        assert!(!refused.contains(&key), "{refused}");
    }

    #[test]
    fn references_are_parsed_strictly() {
        assert_eq!(
            source("catalog://team/github"),
            Ok(Source::Catalog {
                catalog: "team".into(),
                server: "github".into()
            })
        );
        assert_eq!(
            source("docker://mcp/time@SHA256:AB"),
            Ok(Source::Docker {
                image: "mcp/time".into(),
                digest: Some("sha256:ab".into())
            })
        );
        assert_eq!(
            source("file://servers/time.yaml"),
            Ok(Source::File(PathBuf::from("servers/time.yaml")))
        );
        for bad in [
            "catalog://team",
            "catalog:///x",
            "docker://",
            "docker://a b",
            "file://",
            "https://example.com/x",
            "mcp/time",
        ] {
            assert!(source(bad).is_err(), "{bad}");
        }
    }
}
