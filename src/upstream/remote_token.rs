//! A `remote` server's own access token (`remote = { oauth = { … } }`):
//! got from the organisation's authorization server with the OAuth 2.1
//! client-credentials grant (the proxy authenticating with HTTP Basic,
//! asking for the server as the resource, RFC 8707), sent as
//! `Authorization: Bearer …` on every request to the server, and renewed
//! before it expires. A client's own token never reaches a server.
//!
//! With `grant = "token_exchange"` each client has its own connection to
//! the server, whose token is got by exchanging the client's access token
//! (the newest it came with, kept in [`UserTokens`]) for one issued to
//! the proxy for that user (RFC 8693): the server sees the user, and the
//! authorization server alone ever sees the user's own token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::config::{EgressConfig, RemoteOauth, RemoteSpec};
use crate::egress::{HttpClient, Timeouts, Trust};
use crate::protocol::unix_now;
use crate::signin::SignIns;

/// A token is renewed this long before it expires (or at half its life,
/// if that is sooner).
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// After a failed renewal, the next try (doubling up to [`MOST_RETRY`]).
const RETRY: Duration = Duration::from_secs(5);
const MOST_RETRY: Duration = Duration::from_secs(60);
/// How long a token lives when its endpoint does not say (`expires_in`).
const UNSAID_LIFE: Duration = Duration::from_secs(300);

/// Clients whose tokens are kept at most: past it the one expiring first
/// goes.
const MAX_KEPT: usize = 4096;

/// RFC 8693's names.
const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The newest access token each client came with (by client name), while
/// it lives: what a `token_exchange` server's connection for that client
/// exchanges. Filled by the HTTP listener only when some server exchanges
/// tokens; never written anywhere, never logged.
#[derive(Default)]
pub struct UserTokens {
    kept: Mutex<HashMap<Arc<str>, Kept>>,
    /// The users' sign-ins, for `sign_in` servers' instances.
    sign_ins: Option<Arc<SignIns>>,
}

struct Kept {
    token: String,
    /// The `[[oauth.providers]]` that issued it.
    provider: Arc<str>,
    /// Unix seconds.
    until: u64,
}

impl UserTokens {
    /// Tokens kept, and the users' sign-ins from `sign_ins`.
    pub fn with_sign_ins(sign_ins: Arc<SignIns>) -> Self {
        Self {
            kept: Mutex::default(),
            sign_ins: Some(sign_ins),
        }
    }

    /// The users' sign-ins, if the proxy has them.
    pub fn sign_ins(&self) -> Option<Arc<SignIns>> {
        self.sign_ins.clone()
    }

    /// `client` came with `token`, issued by `provider` and good until
    /// `until` (Unix seconds).
    pub fn keep(&self, client: &Arc<str>, provider: &Arc<str>, token: &str, until: u64) {
        if until <= unix_now() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = kept.get(client)
            && held.token == token
        {
            return;
        }
        if kept.len() >= MAX_KEPT && !kept.contains_key(client) {
            let now = unix_now();
            kept.retain(|_, held| held.until > now);
            if kept.len() >= MAX_KEPT
                && let Some(first) = kept
                    .iter()
                    .min_by_key(|(_, held)| held.until)
                    .map(|(name, _)| name.clone())
            {
                kept.remove(&first);
            }
        }
        kept.insert(
            client.clone(),
            Kept {
                token: token.to_owned(),
                provider: provider.clone(),
                until,
            },
        );
    }

    /// The client's token from `provider`, if it still lives.
    fn current(&self, client: &str, provider: &str) -> Option<String> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let held = kept.get(client)?;
        if held.until <= unix_now() {
            kept.remove(client);
            return None;
        }
        (*held.provider == *provider).then(|| held.token.clone())
    }
}

/// Whose token a connection's token is got for.
#[derive(Clone)]
pub(super) enum Grant {
    /// The proxy's own (client credentials).
    Own,
    /// The client's user's, by exchanging the client's newest token (one
    /// of `provider`'s: no other provider's token is sent).
    For {
        tokens: Arc<UserTokens>,
        client: Arc<str>,
        provider: Arc<str>,
    },
}

/// Where a connection's token comes from.
pub(super) enum Source {
    /// An authorization server's grant (`remote = { oauth = … }`).
    Oauth {
        oauth: Box<RemoteOauth>,
        /// The client secret.
        secret: String,
        grant: Grant,
    },
    /// The user's own sign-in (`remote = { sign_in = true }`), from the
    /// vault.
    SignedIn {
        sign_ins: Arc<SignIns>,
        user: Arc<str>,
        remote: Box<RemoteSpec>,
        /// A client's connection: its user is given a link to sign in.
        link: bool,
        /// The token is given once (a container's environment): a new one
        /// (refreshed, or signed in anew) closes the link, for a start
        /// with it.
        once: bool,
    },
}

/// Why no token can be sent: the reason (for the log), and what the
/// client whose call waits is told where that differs (a link to sign in,
/// which is the client's alone: never logged or recorded).
pub(super) struct NoToken {
    pub(super) reason: String,
    pub(super) told: Option<super::Told>,
}

impl From<String> for NoToken {
    fn from(reason: String) -> Self {
        Self { reason, told: None }
    }
}

/// A token given once (a container's environment) that lives less than
/// this restarts its instance that often: worth a warning.
const SHORT_FOR_ONCE: Duration = Duration::from_secs(300);

/// How often a user's connection looks at the vault again: a sign-in
/// revoked or replaced there stops being sent within this.
const VAULT_LOOK: Duration = Duration::from_secs(30);

/// The current token, shared with the requests that send it.
pub(super) struct ServerToken {
    current: RwLock<HeaderValue>,
    /// The server answered 401 to it: renewed now.
    refused: tokio::sync::Notify,
}

/// A token the server refuses is renewed at once, but not more often than
/// this (a server that refuses every token is not a loop of grants).
const MIN_RENEW: Duration = Duration::from_secs(10);

impl ServerToken {
    /// The server answered 401 to `sent`: if that is still the token, it
    /// is renewed without waiting for its time (at most every
    /// [`MIN_RENEW`]); a refusal of a token renewed since asks nothing.
    pub(super) fn refused(&self, sent: &HeaderValue) {
        if *sent == self.header() {
            self.refused.notify_one();
        }
    }

    /// The token itself (what follows `Bearer `), as given in a
    /// container's environment.
    pub(super) fn bare(&self) -> Option<String> {
        let header = self.header();
        let value = header.to_str().ok()?.strip_prefix("Bearer ")?;
        Some(value.to_owned())
    }

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
    source: Source,
    egress: &EgressConfig,
    server: Arc<str>,
    closed: CancellationToken,
) -> Result<Arc<ServerToken>, NoToken> {
    // Its own client; the operator wrote the token endpoint.
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        total: Some(Duration::from_secs(10)),
    };
    let client =
        HttpClient::new(egress, Trust::Written, &[], timeouts).map_err(|err| err.to_string())?;
    let (header, lives) = fetch(&client, &source, &server, (true, None)).await?;
    let token = Arc::new(ServerToken {
        current: RwLock::new(header),
        refused: tokio::sync::Notify::new(),
    });
    let kept = token.clone();
    // A user's token is the vault's: looked at again every VAULT_LOOK, and
    // no longer sent once the vault has none to give.
    let users = matches!(source, Source::SignedIn { .. });
    let once = matches!(source, Source::SignedIn { once: true, .. });
    if once && lives < SHORT_FOR_ONCE {
        tracing::warn!(%server, lives_s = lives.as_secs(), "the user's token lives minutes at most: their instance restarts with each new one (a provider of short-lived tokens suits a remote server better)");
    }
    let renew_after = move |lives| {
        let wait = renew_after(lives);
        if users { wait.min(VAULT_LOOK) } else { wait }
    };
    tokio::spawn(async move {
        let mut expires = Instant::now() + lives;
        let mut wait = renew_after(lives);
        let mut retry = RETRY;
        let mut last = Instant::now();
        loop {
            // The token the server refused, if that is why it is renewed.
            let mut refused = None;
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = kept.refused.notified() => {
                    refused = kept
                        .header()
                        .to_str()
                        .ok()
                        .and_then(|value| value.strip_prefix("Bearer "))
                        .map(str::to_owned);
                    tracing::info!(%server, "the server refused its access token: renewing it");
                    let early = MIN_RENEW.saturating_sub(last.elapsed());
                    tokio::select! {
                        () = closed.cancelled() => return,
                        () = tokio::time::sleep(early) => {}
                    }
                }
            }
            last = Instant::now();
            match fetch(&client, &source, &server, (false, refused.as_deref())).await {
                Ok((header, _)) if once && header != kept.header() => {
                    tracing::info!(%server, "the user's token changed: restarting their instance with the new one");
                    closed.cancel();
                    return;
                }
                Ok((header, lives)) => {
                    *kept.current.write().unwrap_or_else(|p| p.into_inner()) = header;
                    expires = Instant::now() + lives;
                    wait = renew_after(lives);
                    retry = RETRY;
                }
                Err(NoToken { reason, .. }) if Instant::now() >= expires || users => {
                    tracing::warn!(%server, %reason, "no access token to send: closing the connection");
                    closed.cancel();
                    return;
                }
                Err(NoToken { reason, .. }) => {
                    tracing::warn!(%server, %reason, "cannot renew the server's access token");
                    wait = retry.min(expires.saturating_duration_since(Instant::now()));
                    retry = (retry * 2).min(MOST_RETRY);
                }
            }
        }
    });
    Ok(token)
}

/// The token of the user a server's link acts as, kept renewed (from the
/// vault) until `closed`: the client's user for a client's instance (who
/// is given a link to sign in where the proxy gives one), `list_as` for
/// the server's own. `once`: given once, a new token closes the link.
pub(super) async fn users_token(
    remote: &RemoteSpec,
    inbox: &Arc<dyn super::link::Inbox>,
    tokens: &UserTokens,
    closed: &CancellationToken,
    once: bool,
) -> Result<Arc<ServerToken>, super::UpstreamError> {
    let server = inbox.server().to_string();
    let needs = |reason: String, told| super::UpstreamError::NeedsClient {
        server: server.clone(),
        reason,
        told,
    };
    let sign_in = remote
        .sign_in
        .as_deref()
        .ok_or_else(|| needs("the server has no sign-in".into(), None))?;
    let user = inbox.instance().unwrap_or(&sign_in.list_as);
    let sign_ins = tokens
        .sign_ins()
        .ok_or_else(|| needs("the proxy keeps no sign-ins".into(), None))?;
    let source = Source::SignedIn {
        sign_ins,
        user: Arc::from(user),
        remote: Box::new(remote.clone()),
        link: inbox.instance().is_some(),
        once,
    };
    start(
        source,
        &remote.egress,
        inbox.server().clone(),
        closed.clone(),
    )
    .await
    .map_err(|no| needs(no.reason, no.told))
}

fn renew_after(lives: Duration) -> Duration {
    lives.saturating_sub(RENEW_BEFORE).max(lives / 2).max(RETRY)
}

/// The token to send now: the `Authorization` value and how long the
/// token lives. `asked`: a client's call waits for it (its user may be
/// given a link to sign in); `refused`: the token the server just refused
/// (a user's is then refreshed at once, never sent again).
async fn fetch(
    client: &HttpClient,
    source: &Source,
    server: &str,
    (asked, refused): (bool, Option<&str>),
) -> Result<(HeaderValue, Duration), NoToken> {
    match source {
        Source::Oauth {
            oauth,
            secret,
            grant,
        } => Ok(granted(client, oauth, secret, grant).await?),
        Source::SignedIn {
            sign_ins,
            user,
            remote,
            link,
            ..
        } => {
            let current = match refused {
                Some(refused) => {
                    sign_ins
                        .current_after_refusal(server, remote, user, refused)
                        .await
                }
                None => sign_ins.current(server, remote, user).await,
            };
            let current = match current {
                Ok(current) => current,
                Err(err) => {
                    // The reason to the log; the client, its fixed words
                    // (and a link to sign in, where the proxy gives one).
                    let link = if *link && asked && err.users() {
                        sign_ins
                            .link(server, remote, user)
                            .await
                            .unwrap_or_else(|reason| {
                                tracing::warn!(server, %reason, "cannot give a link to sign in");
                                None
                            })
                    } else {
                        None
                    };
                    return Err(NoToken {
                        reason: err.to_string(),
                        told: Some(super::Told {
                            text: err.told_with(link.is_some(), sign_ins.link_life()),
                            link,
                        }),
                    });
                }
            };
            let mut header = HeaderValue::from_str(&format!("Bearer {}", current.access_token))
                .map_err(|_| "the kept token is no header value".to_owned())?;
            header.set_sensitive(true);
            let lives = current.expires_at.map_or(UNSAID_LIFE, |at| {
                Duration::from_secs(at.saturating_sub(unix_now()))
            });
            Ok((header, lives))
        }
    }
}

/// One grant (client credentials, or the exchange of a client's token):
/// the `Authorization` value and how long the token lives. Errors name
/// the endpoint and what it said, never a secret or a token.
async fn granted(
    client: &HttpClient,
    oauth: &RemoteOauth,
    secret: &str,
    grant: &Grant,
) -> Result<(HeaderValue, Duration), String> {
    let endpoint = &oauth.token_endpoint;
    let subject;
    let mut form = match grant {
        Grant::Own => vec![("grant_type", "client_credentials")],
        Grant::For {
            tokens,
            client,
            provider,
        } => {
            subject = tokens.current(client, provider).ok_or_else(|| {
                format!("the client `{client}` has no live access token to exchange")
            })?;
            vec![
                ("grant_type", EXCHANGE_GRANT),
                ("subject_token", subject.as_str()),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ]
        }
    };
    if let Some(resource) = &oauth.resource {
        form.push(("resource", resource));
    }
    if let Some(audience) = &oauth.audience {
        form.push(("audience", audience));
    }
    if let Some(scope) = &oauth.scope {
        form.push(("scope", scope));
    }
    let started = Instant::now();
    let request = client
        .request_to(reqwest::Method::POST, endpoint)
        .map_err(|err| err.to_string())?
        .basic_auth(
            crate::config::form_encoded(&oauth.client_id),
            Some(crate::config::form_encoded(secret)),
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form);
    let granted = crate::signin::token::ask(request, endpoint, matches!(grant, Grant::Own)).await?;
    let mut header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
        .map_err(|_| format!("{endpoint} sent an access_token that is no header value"))?;
    header.set_sensitive(true);
    let lives = granted
        .expires_in
        .map_or(UNSAID_LIFE, Duration::from_secs)
        .saturating_sub(started.elapsed());
    Ok((header, lives))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_token_is_kept_while_it_lives_and_the_kept_are_bounded() {
        let tokens = UserTokens::default();
        let now = unix_now();
        let (alice, corp): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("corp"));
        tokens.keep(&alice, &corp, "first", now + 60);
        tokens.keep(&alice, &corp, "second", now + 60);
        assert_eq!(tokens.current("alice", "corp").as_deref(), Some("second"));
        assert_eq!(
            tokens.current("alice", "partner"),
            None,
            "never sent for another provider"
        );
        tokens.keep(&alice, &corp, "dead", now.saturating_sub(1));
        assert_eq!(
            tokens.current("alice", "corp").as_deref(),
            Some("second"),
            "a dead token replaces no live one"
        );
        assert_eq!(tokens.current("bob", "corp"), None);
        for n in 0..MAX_KEPT + 10 {
            tokens.keep(
                &Arc::from(format!("c{n}")),
                &corp,
                "t",
                now + 600 + n as u64,
            );
        }
        let kept = tokens.kept.lock().unwrap().len();
        assert!(kept <= MAX_KEPT, "{kept}");
        assert_eq!(
            tokens
                .current(&format!("c{}", MAX_KEPT + 9), "corp")
                .as_deref(),
            Some("t")
        );
        assert_eq!(
            tokens.current("c0", "corp"),
            None,
            "the one expiring first went"
        );
    }

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
