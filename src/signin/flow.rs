//! The authorization code flow toward a server's authorization server
//! (OAuth 2.1 with PKCE, as MCP authorization lays out): the proxy
//! registers itself as a client (dynamic client registration, RFC 7591),
//! sends the user to the authorization endpoint with a PKCE `S256`
//! challenge, a single-use `state` and the server's resource indicator
//! (RFC 8707), checks what comes back to its redirect URI (the `state`,
//! the issuer's `iss` where it names itself, RFC 9207), and exchanges the
//! code for the user's tokens; it refreshes them and revokes them
//! (RFC 7009).
//!
//! Every endpoint was named by a peer and learned by [`super::discover`]:
//! each request goes through the egress guard; no redirect is followed;
//! every answer is read bounded.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::discover::Discovered;
use super::token::{self, escaped};
use super::vault::{MAX_NAME, Tokens};
use crate::config::form_encoded;
use crate::egress::{self, HttpClient, document};
use crate::protocol::unix_now;

/// The name the client registered for desktop sign-ins (`oauth login`)
/// is kept under in the vault: a loopback redirect URI without its port,
/// which may change from one sign-in to the next (RFC 8252 §7.3).
pub const DESKTOP: &str = "http://127.0.0.1/callback";

/// The most of a registration's answer that is read.
const MAX_REGISTRATION: usize = 64 * 1024;
/// The shortest life of a registered client's secret the proxy takes
/// (seconds).
const MIN_SECRET_LIFE: u64 = 3600;
/// The longest client id, secret or authorization code taken.
const MAX_VALUE: usize = 2048;

/// Why a sign-in could not go on. No variant carries a token, a code, a
/// verifier or a client secret.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the system's random source failed")]
    Random,
    #[error(
        "the authorization server `{0}` offers no dynamic client registration: register a client with it by hand and set it as the server's `sign_in.client`"
    )]
    NoRegistration(String),
    #[error(
        "the authorization server `{0}` takes no client authentication the proxy can use (client_secret_basic, client_secret_post or none)"
    )]
    NoAuthMethod(String),
    #[error("registering with `{endpoint}` failed: {reason}")]
    Register { endpoint: String, reason: String },
    #[error("{0}")]
    Token(String),
    #[error("the sign-in was refused: {error} {description}")]
    Denied { error: String, description: String },
    #[error("this answer is not for the sign-in that was started (its `state` differs)")]
    OtherState,
    #[error(
        "the answer names the issuer `{named}`, not `{issuer}`: it did not come from the authorization server the sign-in went to"
    )]
    OtherIssuer { named: String, issuer: String },
    #[error("the answer carries no usable authorization code")]
    NoCode,
    #[error("`{endpoint}`: {reason}")]
    Revoke { endpoint: String, reason: String },
    #[error("`{0}` offers no token revocation (RFC 7009)")]
    NoRevocation(String),
}

/// The client the proxy is to an authorization server, for one redirect
/// URI.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub auth_method: String,
    pub redirect_uri: String,
    /// When the client secret expires (RFC 7591 `client_secret_expires_at`,
    /// seconds since the epoch), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_expires_at: Option<u64>,
}

impl Registration {
    /// The name it is kept under in the vault, beside its server: its
    /// issuer and id, so that each registration stays as long as tokens
    /// issued to it may (a later one does not take its place).
    pub fn kept_as(issuer: &str, client_id: &str) -> String {
        format!("{issuer} {client_id}")
    }

    /// Whether its secret has expired (a new registration is then made).
    pub fn expired(&self) -> bool {
        self.secret_expires_at.is_some_and(|at| at <= unix_now())
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("auth_method", &self.auth_method)
            .field("redirect_uri", &self.redirect_uri)
            .field("secret_expires_at", &self.secret_expires_at)
            .finish_non_exhaustive()
    }
}

/// One sign-in begun: its `state`, PKCE verifier and the link to send the
/// user to. Never written anywhere; the verifier never leaves the proxy
/// but toward the token endpoint.
pub struct Started {
    pub state: String,
    pub verifier: String,
    pub link: String,
}

/// The ways of client authentication the proxy can use.
const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

/// How the proxy registers to authenticate at `found`'s token endpoint:
/// with the secret in the form where the server offers it (the client
/// then authenticates one way only, its id and secret in the form: some
/// servers refuse HTTP Basic beside a form `client_id`, which others
/// want); else the first the server lists that the proxy can use.
fn method_of(found: &Discovered) -> Result<&'static str, FlowError> {
    let offered = |method: &str| {
        found
            .token_endpoint_auth_methods
            .iter()
            .any(|m| m == method)
    };
    if offered("client_secret_post") {
        return Ok("client_secret_post");
    }
    found
        .token_endpoint_auth_methods
        .iter()
        .find_map(|method| AUTH_METHODS.into_iter().find(|own| own == method))
        .ok_or_else(|| FlowError::NoAuthMethod(document::named(&found.issuer)))
}

/// Registers the proxy with `found`'s authorization server, for
/// `redirect_uri`.
pub async fn register(
    http: &HttpClient,
    found: &Discovered,
    redirect_uri: &str,
) -> Result<Registration, FlowError> {
    let endpoint = found
        .registration_endpoint
        .as_deref()
        .ok_or_else(|| FlowError::NoRegistration(document::named(&found.issuer)))?;
    let method = method_of(found)?;
    let fail = |reason: String| FlowError::Register {
        endpoint: document::named(endpoint),
        reason,
    };
    let mut asked = serde_json::Map::new();
    asked.insert("client_name".into(), json!("Portcullis"));
    // A client on the user's machine with a loopback redirect, else the
    // proxy's web callback (OpenID Connect registration; providers that
    // follow it check the redirect against it).
    let loopback = reqwest::Url::parse(redirect_uri)
        .is_ok_and(|url| url.scheme() == "http" && crate::config::is_loopback(&url));
    asked.insert(
        "application_type".into(),
        json!(if loopback { "native" } else { "web" }),
    );
    asked.insert("redirect_uris".into(), json!([redirect_uri]));
    asked.insert(
        "grant_types".into(),
        json!(["authorization_code", "refresh_token"]),
    );
    asked.insert("response_types".into(), json!(["code"]));
    asked.insert("token_endpoint_auth_method".into(), json!(method));
    if !found.scopes.is_empty() {
        asked.insert("scope".into(), json!(found.scopes.join(" ")));
    }
    let request = document::request(http, reqwest::Method::POST, endpoint)
        .map_err(fail)?
        .header(reqwest::header::ACCEPT, "application/json")
        .json(&asked);
    let response = egress::send(request)
        .await
        .map_err(|err| fail(err.to_string()))?;
    let status = response.status();
    let body = egress::read_limited(response, MAX_REGISTRATION)
        .await
        .map_err(fail)?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let said = |key: &str| answer.get(key).and_then(Value::as_str);
    if !status.is_success() {
        return Err(fail(format!(
            "it answered {status} {} {}",
            escaped(said("error").unwrap_or_default(), 64),
            escaped(said("error_description").unwrap_or_default(), 200)
        )));
    }
    let client_id = said("client_id")
        .and_then(plain)
        .ok_or_else(|| fail("it gave no usable client_id".into()))?;
    if Registration::kept_as(&found.issuer, &client_id).len() > MAX_NAME {
        return Err(fail(format!(
            "its client_id is too long to keep (the issuer and it over {MAX_NAME} bytes)"
        )));
    }
    // 0 or unsaid: the secret does not expire (RFC 7591 §3.2.1).
    let secret_expires_at = answer
        .get("client_secret_expires_at")
        .and_then(Value::as_u64)
        .filter(|at| *at != 0);
    // A secret about to expire would have the proxy register again at each
    // sign-in, each registration kept (tokens issued to it may need it).
    if secret_expires_at.is_some_and(|at| at < unix_now().saturating_add(MIN_SECRET_LIFE)) {
        return Err(fail(format!(
            "it gave a client secret that expires within {} minutes: the proxy cannot keep such a client",
            MIN_SECRET_LIFE / 60
        )));
    }
    let client_secret = said("client_secret").and_then(plain);
    // The method it registered, if it says one the proxy can use.
    let auth_method = match said("token_endpoint_auth_method") {
        Some(granted) if AUTH_METHODS.contains(&granted) => granted.to_owned(),
        Some(granted) => {
            return Err(fail(format!(
                "it registered the client for `{}`, which the proxy cannot use",
                escaped(granted, 64)
            )));
        }
        None => method.to_owned(),
    };
    if auth_method != "none" && client_secret.is_none() {
        return Err(fail(format!(
            "it gave no client_secret for `{auth_method}`"
        )));
    }
    Ok(Registration {
        issuer: found.issuer.clone(),
        client_id,
        client_secret,
        auth_method,
        redirect_uri: redirect_uri.to_owned(),
        secret_expires_at,
    })
}

/// A sign-in begun: a fresh `state` and PKCE verifier, and the link to
/// the authorization endpoint.
pub fn start(found: &Discovered, client: &Registration) -> Result<Started, FlowError> {
    let state = random_text()?;
    let verifier = random_text()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut link = reqwest::Url::parse(&found.authorization_endpoint)
        .map_err(|_| FlowError::Token("the authorization endpoint is not a URL".into()))?;
    {
        let mut query = link.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state)
            .append_pair("resource", &found.resource);
        if !found.scopes.is_empty() {
            query.append_pair("scope", &found.scopes.join(" "));
        }
    }
    Ok(Started {
        state,
        verifier,
        link: link.into(),
    })
}

/// The authorization code in what came back to the redirect URI
/// (`query`'s pairs), if it answers the sign-in whose `state` is
/// `expected`, from the authorization server it went to.
pub fn answered(
    found: &Discovered,
    expected: &str,
    query: &[(String, String)],
) -> Result<String, FlowError> {
    let get = |key: &str| {
        query
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    // Compared as digests: how long the comparison takes says nothing of
    // the expected state.
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    if get("state").is_none_or(|state| digest(state) != digest(expected)) {
        return Err(FlowError::OtherState);
    }
    match get("iss") {
        Some(named) if named != found.issuer => {
            return Err(FlowError::OtherIssuer {
                named: escaped(named, 200),
                issuer: document::named(&found.issuer),
            });
        }
        // A refusal is one whoever sent it: said as such (some servers
        // name themselves in codes only), never taken as more.
        // Its code only, never its words: who sent it is not known.
        None if found.iss_parameter && get("error").is_some() => {
            return Err(FlowError::Denied {
                error: escaped(get("error").unwrap_or_default(), 64),
                description: "(the answer names no issuer: its description is not shown)".into(),
            });
        }
        None if found.iss_parameter => {
            return Err(FlowError::OtherIssuer {
                named: "(none)".into(),
                issuer: document::named(&found.issuer),
            });
        }
        _ => {}
    }
    if let Some(error) = get("error") {
        return Err(FlowError::Denied {
            error: escaped(error, 64),
            description: escaped(get("error_description").unwrap_or_default(), 200),
        });
    }
    get("code")
        .filter(|code| code.len() <= MAX_VALUE)
        .and_then(plain)
        .ok_or(FlowError::NoCode)
}

/// The user's tokens for `code`.
pub async fn exchange(
    http: &HttpClient,
    found: &Discovered,
    client: &Registration,
    code: &str,
    verifier: &str,
) -> Result<Tokens, FlowError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", client.redirect_uri.as_str()),
        ("code_verifier", verifier),
        ("resource", found.resource.as_str()),
    ];
    let granted = token_request(http, &found.token_endpoint, client, &form, true).await?;
    Ok(tokens_of(found, client, granted, None))
}

/// Fresh tokens for `kept`'s refresh token: the refresh token rotated
/// where the server sends a new one, else kept.
pub async fn refresh(
    http: &HttpClient,
    found: &Discovered,
    client: &Registration,
    kept: &Tokens,
) -> Result<Tokens, FlowError> {
    let Some(refresh_token) = kept.refresh_token.as_deref() else {
        return Err(FlowError::Token("the sign-in cannot be refreshed".into()));
    };
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("resource", found.resource.as_str()),
    ];
    let granted = token_request(http, &found.token_endpoint, client, &form, false).await?;
    Ok(tokens_of(found, client, granted, Some(kept)))
}

/// Revokes `token` (`refresh_token` or `access_token`, as `hint` says) at
/// the authorization server (RFC 7009).
pub async fn revoke(
    http: &HttpClient,
    found: &Discovered,
    client: &Registration,
    token: &str,
    hint: &str,
) -> Result<(), FlowError> {
    let endpoint = found
        .revocation_endpoint
        .as_deref()
        .ok_or_else(|| FlowError::NoRevocation(document::named(&found.issuer)))?;
    let fail = |reason: String| FlowError::Revoke {
        endpoint: document::named(endpoint),
        reason,
    };
    let request = authenticated(
        document::request(http, reqwest::Method::POST, endpoint).map_err(fail)?,
        client,
        &[("token", token), ("token_type_hint", hint)],
    );
    let response = egress::send(request)
        .await
        .map_err(|err| fail(err.to_string()))?;
    let status = response.status();
    // Read (bounded) and dropped: its words could quote the token.
    let _ = egress::read_limited(response, MAX_REGISTRATION).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(fail(format!("it answered {status}")))
    }
}

async fn token_request(
    http: &HttpClient,
    endpoint: &str,
    client: &Registration,
    form: &[(&str, &str)],
    describe: bool,
) -> Result<token::Granted, FlowError> {
    let request = authenticated(
        document::request(http, reqwest::Method::POST, endpoint).map_err(FlowError::Token)?,
        client,
        form,
    );
    token::ask(request, endpoint, describe)
        .await
        .map_err(FlowError::Token)
}

/// `request` with `form` and the client's authentication, as registered.
/// The client's id is in the form whatever the method (RFC 6749 §4.1.3;
/// some servers, the Python SDK's among them, look for it there even
/// beside HTTP Basic).
fn authenticated(
    request: reqwest::RequestBuilder,
    client: &Registration,
    form: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut form: Vec<(&str, &str)> = form.to_vec();
    form.push(("client_id", client.client_id.as_str()));
    let secret = client.client_secret.as_deref().unwrap_or_default();
    let request = match client.auth_method.as_str() {
        "client_secret_basic" => {
            request.basic_auth(form_encoded(&client.client_id), Some(form_encoded(secret)))
        }
        "client_secret_post" => {
            form.push(("client_secret", secret));
            request
        }
        _ => request,
    };
    request.form(&form)
}

fn tokens_of(
    found: &Discovered,
    client: &Registration,
    granted: token::Granted,
    before: Option<&Tokens>,
) -> Tokens {
    Tokens {
        access_token: granted.access_token,
        refresh_token: granted
            .refresh_token
            .or_else(|| before.and_then(|kept| kept.refresh_token.clone())),
        expires_at: granted
            .expires_in
            .map(|life| unix_now().saturating_add(life)),
        scopes: granted.scope.unwrap_or_else(|| {
            before.map_or_else(|| found.scopes.clone(), |kept| kept.scopes.clone())
        }),
        issuer: found.issuer.clone(),
        client_id: client.client_id.clone(),
        resource: found.resource.clone(),
        issuer_alias: found.alias.clone(),
    }
}

/// 32 random bytes in base64url: a `state` or a PKCE verifier (43
/// characters, within RFC 7636's 43 to 128).
pub(super) fn random_text() -> Result<String, FlowError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| FlowError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `value` if it is 1 to [`MAX_VALUE`] characters of visible ASCII.
fn plain(value: &str) -> Option<String> {
    (!value.is_empty()
        && value.len() <= MAX_VALUE
        && value.bytes().all(|b| (0x21..=0x7e).contains(&b)))
    .then(|| value.to_owned())
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
