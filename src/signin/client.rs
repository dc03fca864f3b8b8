//! Who the proxy is at a server's authorization server, in the order the
//! MCP authorization specification asks of a client that can be known
//! every way:
//!
//! 1. the client the operator registered there by hand (`sign_in.client`:
//!    its id, and its secret from the server's `secrets`);
//! 2. the proxy's client ID metadata document, where the authorization
//!    server takes them (`client_id_metadata_document_supported`, and
//!    public clients) and `[vault] public_url` is `https://`: the client's
//!    id is the document's URL, `{public_url}/oauth/client`, which the
//!    proxy serves (links only: the document names the proxy's callback,
//!    not a desktop's loopback);
//! 3. a registration the proxy makes (RFC 7591) and keeps in the vault.
//!
//! A server that offers none of these is answered with an error that
//! names `sign_in.client`.

use serde_json::{Value, json};

use super::discover::Discovered;
use super::flow::{Registration, register};
use super::vault::{Tokens, Vault, VaultError};
use crate::config::{RemoteSpec, VaultConfig, WebClientConfig};

/// Where the proxy serves its client ID metadata document, under `[vault]
/// public_url`.
pub const DOCUMENT_PATH: &str = "/oauth/client";

/// What the proxy may be known by at a server's authorization server,
/// besides registrations it made itself.
#[derive(Debug, Clone, Copy)]
pub struct Ways<'a> {
    /// `sign_in.client`, and the issuer it was registered at
    /// (`sign_in.issuer`): used there only.
    pub given: Option<(&'a WebClientConfig, &'a str)>,
    /// `[vault] public_url`, if the proxy offers its client ID metadata
    /// document under it.
    pub public: Option<&'a str>,
    /// Whether new sign-ins may use that document here
    /// (`sign_in.client_document`); tokens issued to it before are still
    /// refreshed and revoked as it.
    pub offer_document: bool,
}

impl<'a> Ways<'a> {
    /// The ways a `sign_in` server's settings and `[vault]` give.
    pub fn of(remote: &'a RemoteSpec, vault: &'a VaultConfig) -> Self {
        let sign_in = remote.sign_in.as_deref();
        Self {
            given: sign_in
                .and_then(|sign_in| Some((sign_in.client.as_ref()?, sign_in.issuer.as_deref()?))),
            public: document_base(vault),
            // Unless the operator said the server refuses what it issues
            // to documents (`sign_in.client_document = false`).
            offer_document: sign_in.is_none_or(|sign_in| sign_in.client_document),
        }
    }

    /// The ways a server known by name alone gives (its settings gone):
    /// the proxy's document, where it offers one.
    pub fn document_only(vault: &'a VaultConfig) -> Self {
        Self {
            given: None,
            public: document_base(vault),
            offer_document: true,
        }
    }

    /// The document's URL: the client id it gives.
    fn document(&self) -> Option<String> {
        self.public.map(document_url)
    }
}

/// `[vault] public_url`, where the proxy offers its client ID metadata
/// document under it: an `https://` one (a document's URL, the client's
/// id, must be).
pub fn document_base(vault: &VaultConfig) -> Option<&str> {
    vault
        .public_url
        .as_deref()
        .filter(|url| url.starts_with("https://"))
}

/// The URL of the proxy's client ID metadata document under `public`.
pub fn document_url(public: &str) -> String {
    format!("{}{DOCUMENT_PATH}", public.trim_end_matches('/'))
}

/// Where a sign-in's answer comes back under `public`.
pub fn callback_url(public: &str) -> String {
    format!("{}/oauth/callback", public.trim_end_matches('/'))
}

/// The proxy's client ID metadata document under `public` (an `https://`
/// public URL): a public client (PKCE, no secret: the document is
/// public) whose one redirect URI is the proxy's callback.
pub fn document(public: &str) -> Value {
    json!({
        "client_id": document_url(public),
        "client_name": "Portcullis",
        "client_uri": public.trim_end_matches('/'),
        "application_type": "web",
        "redirect_uris": [callback_url(public)],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

/// The client the proxy is for a link (its answer at `callback`) at
/// `found`'s authorization server: the operator's, else its document, else
/// its own registration (kept in `vault` beside `server`).
pub async fn web_client(
    vault: &Vault,
    http: &crate::egress::HttpClient,
    (server, callback): (&str, &str),
    found: &Discovered,
    ways: Ways<'_>,
) -> Result<Registration, String> {
    if let Some(given) = ways.given {
        return given_client(given, found, callback);
    }
    if let Some(client_id) = ways.document().filter(|_| ways.offer_document)
        && takes_documents(found)
        && ways.public.map(callback_url).as_deref() == Some(callback)
    {
        return Ok(Registration {
            issuer: found.issuer.clone(),
            client_id,
            client_secret: None,
            auth_method: "none".into(),
            redirect_uri: callback.to_owned(),
            secret_expires_at: None,
        });
    }
    // One kept from before serves still; else one is made where offered.
    match web_registration(vault, http, (server, callback), found).await {
        Err(_) if found.registration_endpoint.is_none() => Err(no_way(found)),
        made => made,
    }
}

/// Whether `found`'s authorization server takes a client ID metadata
/// document for a public client.
fn takes_documents(found: &Discovered) -> bool {
    found.client_id_metadata_documents
        && found
            .token_endpoint_auth_methods
            .iter()
            .any(|method| method == "none")
}

/// Why no client could be had at `found`'s authorization server.
pub fn no_way(found: &Discovered) -> String {
    format!(
        "`{}` offers no dynamic client registration{}: register a client there by hand and set it as the server's `sign_in.client`",
        found.issuer,
        if found.client_id_metadata_documents {
            " (it takes client ID metadata documents, which the proxy offers only with an https:// `[vault] public_url`, for links, unless `sign_in.client_document = false`)"
        } else {
            ""
        }
    )
}

/// The client the proxy registered with `found`'s authorization server for
/// its `callback`, kept in `vault` beside `server`: as kept, or registered
/// now (and kept) where the issuer, the callback or the secret's life
/// changed.
pub async fn web_registration(
    vault: &Vault,
    http: &crate::egress::HttpClient,
    (server, callback): (&str, &str),
    found: &Discovered,
) -> Result<Registration, String> {
    let kept = vault
        .get_client::<Registration>(server, callback)
        .map_err(|err| err.to_string())?
        .filter(|client| {
            client.issuer == found.issuer && client.redirect_uri == callback && !client.expired()
        });
    if let Some(client) = kept {
        return Ok(client);
    }
    let client = register(http, found, callback)
        .await
        .map_err(|err| err.to_string())?;
    keep_registration(vault, server, callback, &client).map_err(|err| err.to_string())?;
    Ok(client)
}

/// The client the operator registered (`given`, at the issuer it names)
/// at `found`'s authorization server, for `redirect_uri`: authenticated
/// with its secret as `given.auth_method` says, else the first of HTTP
/// Basic and the form the server lists; or public. Refused if `found` is another authorization server: the
/// client's secret goes nowhere else.
pub fn given_client(
    (given, issuer): (&WebClientConfig, &str),
    found: &Discovered,
    redirect_uri: &str,
) -> Result<Registration, String> {
    if !super::discover::same_issuer(issuer, &found.issuer) {
        return Err(format!(
            "the client given is `{issuer}`'s, and the server names `{}`: its secret is not sent there",
            found.issuer
        ));
    }
    operators_client(given, found, redirect_uri)
}

/// The client the operator registered (`given`) at `found`'s authorization
/// server (the caller has checked it is the one): see [`given_client`].
pub fn operators_client(
    given: &WebClientConfig,
    found: &Discovered,
    redirect_uri: &str,
) -> Result<Registration, String> {
    let secret = given
        .client_secret
        .as_ref()
        .map(|secret| {
            secret
                .resolve()
                .map_err(|reason| format!("the client's secret: {reason}"))
        })
        .transpose()?;
    let auth_method = match (&secret, given.auth_method.as_deref()) {
        (None, _) => "none",
        // As the operator registered it.
        (Some(_), Some(method)) => method,
        (Some(_), None) => found
            .token_endpoint_auth_methods
            .iter()
            .map(String::as_str)
            .find(|method| ["client_secret_basic", "client_secret_post"].contains(method))
            .ok_or_else(|| {
                format!(
                    "`{}` takes neither client_secret_basic nor client_secret_post",
                    found.issuer
                )
            })?,
    };
    Ok(Registration {
        issuer: found.issuer.clone(),
        client_id: given.client_id.clone(),
        client_secret: secret,
        auth_method: auth_method.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        secret_expires_at: None,
    })
}

/// Keeps `client`, just registered for `server`: under its issuer and id
/// (where the tokens issued to it find it, [`registration`]) and as
/// `latest` (what the next sign-in of its kind reuses).
pub fn keep_registration(
    vault: &Vault,
    server: &str,
    latest: &str,
    client: &Registration,
) -> Result<(), VaultError> {
    let named = Registration::kept_as(&client.issuer, &client.client_id);
    vault.put_client(server, &named, client)?;
    vault.put_client(server, latest, client)
}

/// The client `kept` was issued to (to refresh or revoke it at `found`'s
/// authorization server, which issued it): the operator's if it is that
/// one (its secret read now), the proxy's document if it is that one,
/// else as registered for `server` (kept under its issuer and id, or, for
/// a sign-in from before registrations were kept so, as the last desktop
/// registration if it is that one).
pub fn registration(
    vault: &Vault,
    server: &str,
    kept: &Tokens,
    (found, ways): (&Discovered, Ways<'_>),
) -> Result<Option<Registration>, String> {
    // Its issuer, reached where the sign-in reached it (at the alias the
    // operator named, or at itself): a refresh token issued through one
    // never goes to the other's address.
    if kept.issuer != found.issuer || kept.issuer_alias != found.alias {
        return Ok(None);
    }
    // The operator's client only for tokens its own issuer issued to it
    // (a hostile server's registration may have been given the same id).
    if let Some(given) = ways.given.filter(|(given, issuer)| {
        given.client_id == kept.client_id && super::discover::same_issuer(issuer, &kept.issuer)
    }) {
        return given_client(given, found, "").map(Some);
    }
    if ways.document().as_deref() == Some(kept.client_id.as_str()) {
        return Ok(Some(Registration {
            issuer: kept.issuer.clone(),
            client_id: kept.client_id.clone(),
            client_secret: None,
            auth_method: "none".into(),
            redirect_uri: String::new(),
            secret_expires_at: None,
        }));
    }
    let named = Registration::kept_as(&kept.issuer, &kept.client_id);
    let found = match vault
        .get_client::<Registration>(server, &named)
        .map_err(|err| err.to_string())?
    {
        Some(client) => Some(client),
        None => vault
            .get_client::<Registration>(server, super::flow::DESKTOP)
            .map_err(|err| err.to_string())?,
    };
    Ok(found.filter(|client| client.client_id == kept.client_id && client.issuer == kept.issuer))
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
