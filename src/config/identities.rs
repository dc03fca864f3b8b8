//! `[[clients]]` and `[[auditors]]`: who may connect, and how each proves
//! it (a bearer token's hash, or a client certificate's).

use std::collections::{BTreeMap, HashSet};

use schemars::JsonSchema;
use serde::Deserialize;

use super::names::{is_identifier, valid_client_name};
use super::{ConfigError, Entry, ListenerConfig, Validator};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer token; `None` for stdio-only clients.
    pub token_sha256: Option<String>,
    /// Lower-case hex SHA-256 of the client's TLS certificate (DER), when it
    /// may authenticate with one (`[listener] tls_client_ca`).
    pub cert_sha256: Option<String>,
    pub groups: Vec<String>,
    /// Attributes of the client's Cedar entity (strings, integers, booleans
    /// and arrays of those).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct AuditorConfig {
    pub name: String,
    pub token_sha256: String,
}

/// One `[[clients]]` entry as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    /// The client's name: letters, digits, `-`, `_` and `.`. Policies see it
    /// as `Client::"NAME"`; on stdio, `--client NAME` picks it.
    name: String,
    /// The lower-case hex SHA-256 of the client's bearer token
    /// (`printf %s TOKEN | sha256sum`), never the token itself; every client
    /// and auditor has its own. HTTP clients only: stdio clients need none.
    token_sha256: Option<String>,
    /// With `[listener] tls_client_ca`: the SHA-256 of the client's
    /// certificate (DER; `openssl x509 -in CERT -outform der | sha256sum`),
    /// which identifies it without a token.
    cert_sha256: Option<String>,
    /// The groups it is in: policies see `Group::"NAME"`.
    #[serde(default)]
    groups: Vec<String>,
    /// Attributes of its Cedar entity, which the Cedar schema must declare:
    /// strings, integers, booleans and arrays of those, named by
    /// identifiers (`name` is the client's own).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    attributes: BTreeMap<String, toml::Value>,
}

/// One `[[auditors]]` entry as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuditor {
    /// The auditor's name, as the log and `auth_failure` records give it.
    name: String,
    /// The lower-case hex SHA-256 of its bearer token, which opens the admin
    /// API, the console and `/metrics` (and not `/mcp`).
    token_sha256: String,
}

/// The names and credentials taken so far: every client and auditor needs
/// its own token, every client its own name and certificate.
#[derive(Default)]
pub(super) struct Taken {
    names: HashSet<String>,
    tokens: HashSet<String>,
    certificates: HashSet<String>,
}

impl RawClient {
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        taken: &mut Taken,
    ) -> Result<ClientConfig, ConfigError> {
        if !valid_client_name(&self.name) {
            return Err(at.error(
                ".name",
                format!(
                    "client name `{}` may use only letters, digits, `-`, `_` and `.`",
                    self.name
                ),
            ));
        }
        if !taken.names.insert(self.name.clone()) {
            return Err(at.error(".name", format!("client `{}` is defined twice", self.name)));
        }
        let token_sha256 = match self.token_sha256 {
            None => None,
            Some(hash) => Some(token_hash(at, &hash, &mut taken.tokens)?),
        };
        let cert_sha256 = match self.cert_sha256 {
            None => None,
            Some(hash) => {
                let normalized = hash.trim().replace(':', "").to_ascii_lowercase();
                if !is_sha256(&normalized) || !taken.certificates.insert(normalized.clone()) {
                    return Err(at.error(
                        ".cert_sha256",
                        "must be the SHA-256 of the client's certificate (DER), 64 hex characters (`openssl x509 -in CERT -outform der | sha256sum`), one per client".into(),
                    ));
                }
                Some(normalized)
            }
        };
        let mut attributes = serde_json::Map::new();
        for (name, value) in self.attributes {
            if !is_identifier(&name) || name == "name" {
                return Err(at.error(
                    &format!(".attributes.{name}"),
                    "attribute names are identifiers (letters, digits, `_`), and `name` is the client's own".into(),
                ));
            }
            let converted = attribute_value(&value).ok_or_else(|| {
                at.error(
                    &format!(".attributes.{name}"),
                    "an attribute is a string, an integer, a boolean, or an array of those".into(),
                )
            })?;
            attributes.insert(name, converted);
        }
        Ok(ClientConfig {
            name: self.name,
            token_sha256,
            cert_sha256,
            groups: self.groups,
            attributes,
        })
    }
}

impl RawAuditor {
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        taken: &mut Taken,
    ) -> Result<AuditorConfig, ConfigError> {
        Ok(AuditorConfig {
            token_sha256: token_hash(at, &self.token_sha256, &mut taken.tokens)?,
            name: self.name,
        })
    }
}

/// A client with a certificate needs a listener that asks for one.
pub(super) fn check_certificates(
    v: &Validator<'_>,
    clients: &[ClientConfig],
    listener: &ListenerConfig,
) -> Result<(), ConfigError> {
    let mtls = listener
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    match clients.iter().find(|c| c.cert_sha256.is_some()) {
        Some(client) if !mtls => Err(v.error(
            None,
            "clients.cert_sha256",
            format!(
                "client `{}` has a `cert_sha256`, but no client certificate is asked for: set `[listener] tls_client_ca` (with `tls_cert` and `tls_key`)",
                client.name
            ),
        )),
        _ => Ok(()),
    }
}

fn is_sha256(hex: &str) -> bool {
    hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// A token's hash, normalized, once in the whole config.
fn token_hash(
    at: &Entry<'_>,
    hash: &str,
    seen: &mut HashSet<String>,
) -> Result<String, ConfigError> {
    let normalized = hash.trim().to_ascii_lowercase();
    if !is_sha256(&normalized) {
        return Err(at.error(
            ".token_sha256",
            "must be the 64-character hex SHA-256 of the token (e.g. `printf %s TOKEN | sha256sum`), never the token itself".into(),
        ));
    }
    if !seen.insert(normalized.clone()) {
        return Err(at.error(
            ".token_sha256",
            "the same token hash is used twice; every client and auditor needs its own token"
                .into(),
        ));
    }
    Ok(normalized)
}

/// A client attribute as JSON: strings, integers, booleans and arrays of
/// those (what becomes a Cedar value without a schema's help).
fn attribute_value(value: &toml::Value) -> Option<serde_json::Value> {
    match value {
        toml::Value::String(text) => Some(serde_json::Value::from(text.as_str())),
        toml::Value::Integer(number) => Some(serde_json::Value::from(*number)),
        toml::Value::Boolean(flag) => Some(serde_json::Value::from(*flag)),
        toml::Value::Array(items) => items
            .iter()
            .map(attribute_value)
            .collect::<Option<Vec<_>>>()
            .map(serde_json::Value::Array),
        _ => None,
    }
}
