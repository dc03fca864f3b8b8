//! A `remote` server's own access token (`remote = { oauth = { … } }`):
//! got from the organisation's authorization server with the OAuth 2.1
//! client-credentials grant (the proxy authenticating with HTTP Basic,
//! asking for the server as the resource, RFC 8707), sent as
//! `Authorization: Bearer …` on every request to the server, and renewed
//! before it expires. A client's own token never reaches a server.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::RemoteOauth;

/// The most of a token endpoint's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// A token is renewed this long before it expires (or at half its life,
/// if that is sooner).
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// After a failed renewal, the next try (doubling up to [`MOST_RETRY`]).
const RETRY: Duration = Duration::from_secs(5);
const MOST_RETRY: Duration = Duration::from_secs(60);
/// How long a token lives when its endpoint does not say (`expires_in`).
const UNSAID_LIFE: Duration = Duration::from_secs(300);

/// The current token, shared with the requests that send it.
pub(super) struct ServerToken {
    current: RwLock<HeaderValue>,
}

impl ServerToken {
    /// The `Authorization` value to send now.
    pub(super) fn header(&self) -> HeaderValue {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Gets the first token (the server does not start without one) and keeps
/// it renewed until `closed`. A token that expires unrenewed closes the
/// link: the server is down (and restarted with backoff, its secrets read
/// again), not sending a token it knows is dead.
pub(super) async fn start(
    oauth: &RemoteOauth,
    secret: String,
    server: Arc<str>,
    closed: CancellationToken,
) -> Result<Arc<ServerToken>, String> {
    // Its own client: a token endpoint's redirect is not followed.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("cannot build an HTTP client: {err}"))?;
    let (header, lives) = fetch(&client, oauth, &secret).await?;
    let token = Arc::new(ServerToken {
        current: RwLock::new(header),
    });
    let kept = token.clone();
    let oauth = oauth.clone();
    tokio::spawn(async move {
        let mut expires = Instant::now() + lives;
        let mut wait = renew_after(lives);
        let mut retry = RETRY;
        loop {
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match fetch(&client, &oauth, &secret).await {
                Ok((header, lives)) => {
                    *kept.current.write().unwrap_or_else(|p| p.into_inner()) = header;
                    expires = Instant::now() + lives;
                    wait = renew_after(lives);
                    retry = RETRY;
                }
                Err(reason) if Instant::now() >= expires => {
                    tracing::warn!(%server, %reason, "the server's access token expired unrenewed: closing its connection");
                    closed.cancel();
                    return;
                }
                Err(reason) => {
                    tracing::warn!(%server, %reason, "cannot renew the server's access token");
                    wait = retry.min(expires.saturating_duration_since(Instant::now()));
                    retry = (retry * 2).min(MOST_RETRY);
                }
            }
        }
    });
    Ok(token)
}

fn renew_after(lives: Duration) -> Duration {
    lives.saturating_sub(RENEW_BEFORE).max(lives / 2).max(RETRY)
}

/// One client-credentials grant: the `Authorization` value and how long
/// the token lives. Errors name the endpoint and what it said, never a
/// secret or a token.
async fn fetch(
    client: &reqwest::Client,
    oauth: &RemoteOauth,
    secret: &str,
) -> Result<(HeaderValue, Duration), String> {
    let endpoint = &oauth.token_endpoint;
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(resource) = &oauth.resource {
        form.push(("resource", resource));
    }
    if let Some(scope) = &oauth.scope {
        form.push(("scope", scope));
    }
    let started = Instant::now();
    let response = client
        .post(endpoint)
        .basic_auth(
            crate::config::form_encoded(&oauth.client_id),
            Some(crate::config::form_encoded(secret)),
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|err| format!("{endpoint}: {}", err.without_url()))?;
    let status = response.status();
    let body = super::http_body::read_limited(response, MAX_ANSWER)
        .await
        .map_err(|reason| format!("{endpoint}: {reason}"))?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        // The error code and description are the server's words about the
        // request, not secrets.
        let said = |key: &str| answer.get(key).and_then(Value::as_str).unwrap_or_default();
        return Err(format!(
            "{endpoint} answered {status} {} {}",
            crate::protocol::cut(said("error"), 64),
            crate::protocol::cut(said("error_description"), 200)
        ));
    }
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| format!("{endpoint} sent no access_token"))?;
    let token_type = answer
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(format!(
            "{endpoint} sent a `{}` token, not a bearer token",
            crate::protocol::cut(token_type, 32)
        ));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| format!("{endpoint} sent an access_token that is no header value"))?;
    header.set_sensitive(true);
    let lives = answer
        .get("expires_in")
        .and_then(Value::as_u64)
        .map_or(UNSAID_LIFE, Duration::from_secs)
        .saturating_sub(started.elapsed());
    Ok((header, lives))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_before_it_expires_and_never_in_a_loop() {
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            renew_after(Duration::from_secs(90)),
            Duration::from_secs(45)
        );
        assert_eq!(renew_after(Duration::from_secs(2)), RETRY);
        assert_eq!(renew_after(Duration::ZERO), RETRY);
    }
}
