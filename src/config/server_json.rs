//! An MCP registry's `server.json`, read as a publisher's request, as a
//! catalog description is: an OCI package runs as a container under the
//! hardened profile, and what its runtime arguments ask of the engine is
//! refused; a remote is reached as any `remote` server, through
//! `[egress]`, as an address a peer named; secrets come from the
//! operator's `secrets` alone, and go only where a secret may go (an
//! environment variable, the last word of a header over TLS).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::catalog::{MetaEnv, MetaSecret, ServerMeta};
use super::names::shown;

/// A JSON error's kind, in words (never its text, which may quote).
pub(super) trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "a syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// `server.json` as published (the 2025-12-11 schema, and the 2025-09-29
/// one's separate OCI `version`): what says how the server runs. Other keys
/// are read by the credential scan only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJson {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub packages: Vec<Package>,
    #[serde(default)]
    pub remotes: Vec<Transport>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub registry_type: String,
    pub identifier: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub registry_base_url: Option<String>,
    pub transport: Transport,
    #[serde(default)]
    pub runtime_arguments: Vec<Argument>,
    #[serde(default)]
    pub package_arguments: Vec<Argument>,
    #[serde(default)]
    pub environment_variables: Vec<KeyValueInput>,
}

/// A package's or a remote's transport.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transport {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: Vec<KeyValueInput>,
    #[serde(default)]
    pub variables: BTreeMap<String, Input>,
}

/// A value the server needs, and what the publisher says of it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub is_required: bool,
    #[serde(default)]
    pub is_secret: bool,
    #[serde(default)]
    pub choices: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, Input>,
}

#[derive(Debug, Deserialize)]
pub struct KeyValueInput {
    pub name: String,
    #[serde(flatten)]
    pub input: Input,
}

/// A positional or named (`--flag`) argument.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Argument {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value_hint: Option<String>,
    #[serde(flatten)]
    pub input: Input,
}

impl ServerJson {
    /// Reads a `server.json` value, after the credential scan has.
    pub fn parse(value: &Value) -> Result<Self, String> {
        // The kind only: serde's words quote the publisher's values.
        serde_json::from_value(value.clone())
            .map_err(|err| format!("not a `server.json` ({})", err.classify_text()))
    }
}

/// The transport of a remote a `server.json` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    StreamableHttp,
    Sse,
}

/// `[[servers]] use`: which of a `server.json`'s forms the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistryUse {
    /// Its OCI package, as a container under the hardened profile.
    Package,
    /// Its remote, over streamable HTTP (or HTTP+SSE).
    Remote,
}

/// What a `server.json` resolves to with the operator's values.
#[derive(Debug)]
pub enum Resolved {
    /// An OCI package, as the metadata a catalog entry would be.
    Package(Box<ServerMeta>),
    Remote {
        url: String,
        transport: RemoteKind,
        /// Header values as a `remote` server's: `… secret:NAME` for the
        /// operator's secrets.
        headers: BTreeMap<String, String>,
    },
}

/// The operator's side: `config` values and the names of `secrets`.
pub struct Values<'a> {
    pub config: &'a BTreeMap<String, String>,
    pub secrets: &'a [String],
}

/// Runtime arguments that only say what the proxy does anyway.
const HARMLESS_RUNTIME_FLAGS: &[&str] = &["-i", "--interactive", "--rm"];

/// Headers a description may not set: the proxy's own, or what would change
/// where or how a request goes.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "accept",
    "cookie",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "proxy-authorization",
    "forwarded",
    "x-http-method-override",
    "x-method-override",
    "accept-encoding",
    "expect",
];

/// Header name prefixes no description may use: the MCP headers the proxy
/// sets (`Mcp-Method`, `Mcp-Name`, …) and the forwarding ones.
const RESERVED_HEADER_PREFIXES: &[&str] = &["mcp-", "x-forwarded-", "proxy-"];

/// Resolves `server` for the operator: the form `choice` names, or the only
/// one it offers that the proxy runs.
pub fn resolve(
    server: &ServerJson,
    choice: Option<RegistryUse>,
    values: &Values<'_>,
) -> Result<Resolved, String> {
    let package = server
        .packages
        .iter()
        .find(|package| package.registry_type == "oci");
    let remote = server
        .remotes
        .iter()
        .find(|remote| remote.kind == "streamable-http")
        .or_else(|| server.remotes.iter().find(|remote| remote.kind == "sse"));
    let offered = || {
        let mut forms: Vec<String> = server
            .packages
            .iter()
            .map(|package| format!("a {} package", shown(&package.registry_type)))
            .collect();
        forms.extend(
            server
                .remotes
                .iter()
                .map(|remote| format!("a {} remote", shown(&remote.kind))),
        );
        if forms.is_empty() {
            "nothing".to_owned()
        } else {
            forms.join(", ")
        }
    };
    match (choice, package, remote) {
        (Some(RegistryUse::Package) | None, Some(package), None)
        | (Some(RegistryUse::Package), Some(package), Some(_)) => {
            resolve_package(server, package, values).map(|meta| Resolved::Package(Box::new(meta)))
        }
        (Some(RegistryUse::Remote) | None, None, Some(remote))
        | (Some(RegistryUse::Remote), Some(_), Some(remote)) => resolve_remote(remote, values),
        (None, Some(_), Some(_)) => Err(
            "it offers both an OCI package and a remote: say which with `use = \"package\"` (a container under the hardened profile) or `use = \"remote\"`"
                .into(),
        ),
        (Some(RegistryUse::Package), None, _) => Err(format!(
            "`use = \"package\"`, but it offers no OCI package (it offers {}): Portcullis runs packages only as OCI images",
            offered()
        )),
        (Some(RegistryUse::Remote), _, None) | (None, None, None) => Err(format!(
            "it offers {}: Portcullis runs an OCI package (as a container) or a streamable-http or sse remote",
            offered()
        )),
    }
}

/// The image an OCI package names: its identifier (with its tag or digest),
/// or, in the older schema, the identifier and `version` apart, on the
/// registry `registryBaseUrl` names.
fn image_of(package: &Package) -> Result<String, String> {
    let mut image = package.identifier.trim().to_owned();
    if let Some(base) = &package.registry_base_url {
        let host = reqwest::Url::parse(base)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .ok_or_else(|| format!("its `registryBaseUrl` `{}` is not a URL", shown(base)))?;
        let first = image.split('/').next().unwrap_or_default();
        let names_a_host = image.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let docker_hub = matches!(
            host.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        );
        if !names_a_host && !docker_hub {
            image = format!("{host}/{image}");
        }
    }
    let last = image.rsplit('/').next().unwrap_or_default();
    if let Some(version) = &package.version
        && !image.contains('@')
        && !last.contains(':')
    {
        image = format!("{image}:{version}");
    }
    Ok(image)
}

fn resolve_package(
    server: &ServerJson,
    package: &Package,
    values: &Values<'_>,
) -> Result<ServerMeta, String> {
    if package.transport.kind != "stdio" {
        return Err(format!(
            "its OCI package speaks `{}`; Portcullis runs a package over stdio only",
            shown(&package.transport.kind)
        ));
    }
    let mut meta = ServerMeta {
        name: Some(server.name.clone()),
        image: Some(image_of(package)?),
        title: server.title.clone(),
        description: server.description.clone(),
        ..ServerMeta::default()
    };
    let mut env = Env::default();
    for variable in &package.environment_variables {
        env.add(&variable.name, &variable.input, values)?;
    }
    // Runtime arguments are asks of the engine (`docker run …`): only
    // `-e NAME[=VALUE]` is read, as an environment variable; the rest is
    // refused, whatever it asks.
    for argument in &package.runtime_arguments {
        let flag = argument.name.as_deref().unwrap_or_default();
        if argument.kind == "named" && HARMLESS_RUNTIME_FLAGS.contains(&flag) {
            continue;
        }
        if argument.kind == "named" && (flag == "-e" || flag == "--env") {
            let text = argument.input.value.clone().unwrap_or_default();
            let (name, value) = match text.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (text, None),
            };
            let input = Input {
                value,
                is_required: argument.input.is_required,
                is_secret: argument.input.is_secret,
                variables: argument_variables(argument),
                choices: argument.input.choices.clone(),
                default: argument.input.default.clone(),
            };
            match input.value {
                // `-e NAME`: the variable the package declares.
                None if env.declared(&name) => {}
                _ => env.add(&name, &input, values)?,
            }
            continue;
        }
        let asked = [argument.name.as_deref(), argument.input.value.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        return Err(format!(
            "its package asks the container engine for `{}`, which no description may ask: the operator's `[servers.sandbox]` decides the container's profile",
            shown(&asked)
        ));
    }
    for argument in &package.package_arguments {
        meta.command.extend(command_argument(argument, values)?);
    }
    meta.env = env.plain;
    meta.secrets = env.secrets;
    Ok(meta)
}

/// An argument's variables, copied (the argument is borrowed).
fn argument_variables(argument: &Argument) -> BTreeMap<String, Input> {
    argument
        .input
        .variables
        .iter()
        .map(|(name, input)| (name.clone(), input.copy()))
        .collect()
}

impl Input {
    fn copy(&self) -> Self {
        Self {
            value: self.value.clone(),
            default: self.default.clone(),
            is_required: self.is_required,
            is_secret: self.is_secret,
            choices: self.choices.clone(),
            variables: self
                .variables
                .iter()
                .map(|(name, input)| (name.clone(), input.copy()))
                .collect(),
        }
    }
}

/// A package's environment as it is resolved: plain values, and the names
/// the operator's secrets must fill.
#[derive(Default)]
struct Env {
    plain: Vec<MetaEnv>,
    secrets: Vec<MetaSecret>,
}

impl Env {
    fn declared(&self, name: &str) -> bool {
        self.plain.iter().any(|env| env.name == name)
            || self.secrets.iter().any(|secret| secret.env == name)
    }

    fn add(&mut self, name: &str, input: &Input, values: &Values<'_>) -> Result<(), String> {
        if !super::names::is_identifier(name) {
            return Err(format!(
                "its environment variable `{}` is not a valid name",
                shown(name)
            ));
        }
        if self.declared(name) {
            return Ok(());
        }
        // A secret, or a value made with one, is the operator's secret of
        // that name, whole.
        let secret = input.is_secret || secret_variable(input).is_some();
        if secret {
            if let Some(value) = &input.value
                && !value.contains('{')
            {
                return Err(format!(
                    "its secret `{}` has a value of its own: a secret comes from the operator's `secrets`, never from a description",
                    shown(name)
                ));
            }
            if input.is_required || values.secrets.iter().any(|s| s == name) {
                self.secrets.push(MetaSecret {
                    name: name.to_owned(),
                    env: name.to_owned(),
                });
            }
            return Ok(());
        }
        match filled(name, input, values)? {
            Some(value) => self.plain.push(MetaEnv {
                name: name.to_owned(),
                value,
            }),
            None if input.is_required => {
                return Err(format!(
                    "it needs the environment variable `{}`: set it in the server's `config` ({} = \"…\")",
                    shown(name),
                    shown(name)
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// The first secret variable `input`'s value uses, if any.
fn secret_variable(input: &Input) -> Option<&str> {
    input
        .variables
        .iter()
        .find(|(_, variable)| variable.is_secret)
        .map(|(name, _)| name.as_str())
}

/// `input`'s value: the publisher's (its `{variables}` filled), else the
/// operator's `config` under `key`, else the default; `None` when none.
/// Never a secret (the caller has seen to those).
fn filled(key: &str, input: &Input, values: &Values<'_>) -> Result<Option<String>, String> {
    let value = match &input.value {
        Some(value) => fill(value, &input.variables, values)?,
        None => values
            .config
            .get(key)
            .cloned()
            .or_else(|| input.default.clone()),
    };
    if let Some(value) = &value {
        if !input.choices.is_empty() && !input.choices.contains(value) {
            return Err(format!(
                "`{}` must be one of {}",
                shown(key),
                input
                    .choices
                    .iter()
                    .map(|choice| format!("`{}`", shown(choice)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // Later read by the catalog's templates: none may be in a value.
        if value.contains("{{") {
            return Err(format!("`{}`'s value holds `{{{{`", shown(key)));
        }
    }
    Ok(value)
}

/// The longest value filling may make (a value is an argument, a variable,
/// a header, a URL).
const MAX_FILLED_BYTES: usize = 16 * 1024;

/// `text` with each `{NAME}` of `variables` filled, in one pass over
/// `text` (a variable's own value is taken as written, never filled again,
/// so values cannot multiply); a name not among them is left as written,
/// as the schema says. `None` when one has no value.
fn fill(
    text: &str,
    variables: &BTreeMap<String, Input>,
    values: &Values<'_>,
) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some((name, variable)) = after.find('}').and_then(|close| {
            let name = &after[..close];
            variables.get(name).map(|variable| (name, variable))
        }) else {
            out.push('{');
            rest = after;
            continue;
        };
        if variable.is_secret {
            return Err(format!(
                "its value `{}` would put the secret `{}` where a secret cannot go",
                shown(text),
                shown(name)
            ));
        }
        let value = variable
            .value
            .clone()
            .or_else(|| values.config.get(name).cloned())
            .or_else(|| variable.default.clone());
        let Some(value) = value else {
            return Ok(None);
        };
        if !variable.choices.is_empty() && !variable.choices.contains(&value) {
            return Err(format!("`{}` is not one of its choices", shown(name)));
        }
        out.push_str(&value);
        if out.len() > MAX_FILLED_BYTES {
            return Err(format!(
                "its value `{}` fills to over {} KiB",
                shown(text),
                MAX_FILLED_BYTES / 1024
            ));
        }
        rest = &after[name.len() + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The command-line words of one package argument.
fn command_argument(argument: &Argument, values: &Values<'_>) -> Result<Vec<String>, String> {
    if argument.input.is_secret || secret_variable(&argument.input).is_some() {
        return Err(format!(
            "its argument `{}` is a secret: a secret on a command line is visible to every process on the host (and in the container's configuration)",
            shown(
                argument
                    .name
                    .as_deref()
                    .or(argument.value_hint.as_deref())
                    .unwrap_or_default()
            )
        ));
    }
    match argument.kind.as_str() {
        "positional" => {
            let key = argument.value_hint.as_deref().unwrap_or_default();
            match filled(key, &argument.input, values)? {
                Some(value) => Ok(vec![value]),
                None if argument.input.is_required => Err(format!(
                    "its argument `{}` has no value: set it in the server's `config`",
                    shown(key)
                )),
                None => Ok(Vec::new()),
            }
        }
        "named" => {
            let Some(flag) = argument.name.as_deref().filter(|flag| {
                flag.starts_with('-')
                    && !flag.contains("{{")
                    && !flag.chars().any(|c| c.is_whitespace() || c.is_control())
            }) else {
                return Err(format!(
                    "a named argument's `name` `{}` is not a flag (`-x`, `--name`)",
                    shown(argument.name.as_deref().unwrap_or_default())
                ));
            };
            // The operator's value is named by the argument's hint, or by
            // its flag without dashes.
            let key = argument
                .value_hint
                .as_deref()
                .unwrap_or_else(|| flag.trim_start_matches('-'));
            let has_value = argument.input.value.is_some()
                || argument.input.default.is_some()
                || values.config.contains_key(key);
            if !has_value {
                // A flag alone when required; left out otherwise.
                return Ok(if argument.input.is_required {
                    vec![flag.to_owned()]
                } else {
                    Vec::new()
                });
            }
            match filled(key, &argument.input, values)? {
                Some(value) => Ok(vec![flag.to_owned(), value]),
                None if argument.input.is_required => Err(format!(
                    "its argument `{}` has no value: set it in the server's `config`",
                    shown(flag)
                )),
                None => Ok(Vec::new()),
            }
        }
        other => Err(format!("an argument of type `{}`", shown(other))),
    }
}

/// The secret a header's value comes from: the variable its value names, or
/// the header's own name (`X-Api-Key` → `X_Api_Key`).
fn header_secret(header: &KeyValueInput) -> String {
    secret_variable(&header.input).map_or_else(
        || {
            header
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        },
        str::to_owned,
    )
}

fn resolve_remote(remote: &Transport, values: &Values<'_>) -> Result<Resolved, String> {
    let transport = match remote.kind.as_str() {
        "sse" => RemoteKind::Sse,
        _ => RemoteKind::StreamableHttp,
    };
    let Some(template) = &remote.url else {
        return Err("its remote has no `url`".into());
    };
    let url = match fill(template, &remote.variables, values)? {
        Some(url) => url,
        None => {
            return Err(format!(
                "its remote's URL `{}` has a variable with no value: set it in the server's `config`",
                shown(template)
            ));
        }
    };
    let parsed = reqwest::Url::parse(&url).ok().filter(|parsed| {
        matches!(parsed.scheme(), "http" | "https")
            && parsed.username().is_empty()
            && parsed.password().is_none()
    });
    let Some(parsed) = parsed else {
        return Err(format!(
            "its remote's URL `{}` is not an http:// or https:// URL without a user name",
            shown(&url)
        ));
    };
    let url = parsed.to_string();
    let mut headers = BTreeMap::new();
    for header in &remote.headers {
        let lower = header.name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(header.name.as_bytes()).is_err()
            || RESERVED_HEADERS.contains(&lower.as_str())
            || RESERVED_HEADER_PREFIXES
                .iter()
                .any(|prefix| lower.starts_with(prefix))
        {
            return Err(format!(
                "its remote asks for the header `{}`, which a description may not set",
                shown(&header.name)
            ));
        }
        if header.input.is_secret || secret_variable(&header.input).is_some() {
            let secret = header_secret(header);
            if !values.secrets.iter().any(|name| name == &secret) {
                if header.input.is_required {
                    return Err(format!(
                        "it needs the secret `{}` for its header `{}`: add `{} = \"file:…\"` (or `env:…`) to the server's `secrets`",
                        shown(&secret),
                        shown(&header.name),
                        shown(&secret)
                    ));
                }
                continue;
            }
            // The secret ends the value (`Bearer {token}`), as a `remote`
            // server's headers name one.
            let prefix = match &header.input.value {
                None => String::new(),
                Some(value) => {
                    let marker = format!("{{{secret}}}");
                    match value.strip_suffix(&marker) {
                        Some(prefix) if !prefix.contains('{') && !prefix.contains("secret:") => {
                            prefix.to_owned()
                        }
                        _ => {
                            return Err(format!(
                                "its header `{}` puts a secret inside `{}`: Portcullis sends a secret at the end of a header's value only",
                                shown(&header.name),
                                shown(value)
                            ));
                        }
                    }
                }
            };
            if !prefix.is_empty() && !prefix.ends_with(' ') {
                return Err(format!(
                    "its header `{}` joins a secret to `{}`: Portcullis sends a secret as the header's last word only",
                    shown(&header.name),
                    shown(&prefix)
                ));
            }
            headers.insert(header.name.clone(), format!("{prefix}secret:{secret}"));
            continue;
        }
        match filled(&header.name, &header.input, values)? {
            Some(value) if value.contains("secret:") => {
                return Err(format!(
                    "its header `{}` names a secret of the operator's",
                    shown(&header.name)
                ));
            }
            Some(value) => {
                headers.insert(header.name.clone(), value);
            }
            None if header.input.is_required => {
                return Err(format!(
                    "its header `{}` has no value: set it in the server's `config`",
                    shown(&header.name)
                ));
            }
            None => {}
        }
    }
    // The operator's secrets go where the publisher said: never in clear
    // across a network.
    if headers.values().any(|value| value.contains("secret:")) && !super::secure_url(&url) {
        return Err(format!(
            "its remote `{}` would get the operator's secrets in clear: it must be https:// (http:// only on loopback)",
            shown(&url)
        ));
    }
    Ok(Resolved::Remote {
        url,
        transport,
        headers,
    })
}

#[cfg(test)]
#[path = "server_json_tests.rs"]
mod tests;
