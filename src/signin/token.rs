//! A token endpoint's answer (RFC 6749 §5): what the proxy reads of it
//! whichever grant it asked for (an authorization code, a refresh token,
//! its own client credentials, a token exchange), and how it reads it:
//! bounded, the access token a bearer token that can go into a header,
//! an error as the server's code and (where it cannot quote a token)
//! description, escaped.

use serde_json::Value;

use crate::egress::{self, document};

/// The most of a token endpoint's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// The longest life taken from `expires_in`, in seconds (a year).
const MAX_LIFE: u64 = 365 * 24 * 3600;
/// The longest token taken (a provider's JWT with many claims fits).
pub const MAX_TOKEN: usize = 16 * 1024;

/// What a token endpoint granted.
#[derive(Clone, PartialEq, Eq)]
pub struct Granted {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Seconds the access token lives, if said.
    pub expires_in: Option<u64>,
    /// The scopes granted, if said (RFC 6749 §5.1: else those asked).
    pub scope: Option<Vec<String>>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("refresh", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Sends `request` to the token endpoint `endpoint` and reads what it
/// grants. `describe`: whether an error's description may be shown (not
/// where the request carried a user's token, which a server may quote).
pub async fn ask(
    request: reqwest::RequestBuilder,
    endpoint: &str,
    describe: bool,
) -> Result<Granted, String> {
    let shown = document::named(endpoint);
    let request = request.header(reqwest::header::ACCEPT, "application/json");
    let response = egress::send(request)
        .await
        .map_err(|err| format!("{shown}: {err}"))?;
    let status = response.status();
    let body = egress::read_limited(response, MAX_ANSWER)
        .await
        .map_err(|reason| format!("{shown}: {reason}"))?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let said = |key: &str| answer.get(key).and_then(Value::as_str).unwrap_or_default();
    if !status.is_success() {
        let description = if describe {
            said("error_description")
        } else {
            ""
        };
        return Err(format!(
            "{shown} answered {status} {} {}",
            escaped(said("error"), 64),
            escaped(description, 200),
        ));
    }
    let access_token = bearer(said("access_token"))
        .ok_or_else(|| format!("{shown} sent no access_token usable as a bearer token"))?;
    let token_type = answer
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(format!(
            "{shown} sent a `{}` token, not a bearer token",
            escaped(token_type, 32)
        ));
    }
    let refresh_token = match answer.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(bearer)
                .ok_or_else(|| format!("{shown} sent a refresh_token that is not a token"))?,
        ),
    };
    let scope = match answer.get("scope").and_then(Value::as_str) {
        None => None,
        Some(scope) => {
            let scopes: Vec<String> = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if scopes.iter().any(|scope| !scope_token(scope)) || scope.len() > 1024 {
                return Err(format!("{shown} granted a scope that is not a scope token"));
            }
            Some(scopes)
        }
    };
    Ok(Granted {
        access_token,
        refresh_token,
        // A year at most: a peer's huge figure overflows no clock.
        expires_in: answer
            .get("expires_in")
            .and_then(Value::as_u64)
            .map(|life| life.min(MAX_LIFE)),
        scope,
    })
}

/// `token` if it can be sent as a bearer token: 1 to [`MAX_TOKEN`]
/// characters of visible ASCII (no space, no line break, nothing a header
/// or a terminal would act on).
fn bearer(token: &str) -> Option<String> {
    (!token.is_empty()
        && token.len() <= MAX_TOKEN
        && token.bytes().all(|b| (0x21..=0x7e).contains(&b)))
    .then(|| token.to_owned())
}

/// Whether `scope` is a scope token (RFC 6749 §3.3:
/// `%x21 / %x23-5B / %x5D-7E`, at least one).
pub fn scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// A peer's words for a message: at most `most` characters, control and
/// non-ASCII characters escaped.
pub fn escaped(text: &str, most: usize) -> String {
    text.chars()
        .take(most)
        .flat_map(char::escape_default)
        .collect()
}
