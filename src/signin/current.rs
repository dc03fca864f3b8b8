//! The token a user's instance of a `sign_in` server sends: the user's
//! own, from the vault, refreshed (with the client the proxy registered)
//! when it is about to expire, the refreshed tokens sealed again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::client::{
    Ways, callback_url, operators_client, registration, web_client, web_registration,
};
use super::discover::{Discovered, covers, discovery_client, discovery_client_of, learn, provider};
use super::flow::{exchange, refresh};
use super::pending::{Answered, Pendings, Proof, Proved};
use super::vault::{Opened, Tokens, Vault};
use crate::config::{Config, RemoteSpec};
use crate::protocol::unix_now;

/// A token is refreshed this many seconds before it expires.
pub const REFRESH_BEFORE: u64 = 60;

/// A (server, user)'s turn to refresh.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// The users' sign-ins, as the proxy's servers use them.
pub struct SignIns {
    pub(super) config: Arc<Config>,
    vault: Arc<Opened>,
    /// What each server asks for (by its name and settings), learned at
    /// its first need.
    found: Mutex<HashMap<String, Discovered>>,
    /// One refresh at a time for each (server, user): a rotated refresh
    /// token spent by one connection is not spent again by another.
    refreshing: Mutex<HashMap<(String, String), Turn>>,
    /// Sign-ins begun from a call, waiting for their user's browser.
    pendings: Pendings,
}

/// Whether `tokens` expire within [`REFRESH_BEFORE`] seconds.
fn expiring(tokens: &Tokens) -> bool {
    tokens
        .expires_at
        .is_some_and(|at| at <= unix_now().saturating_add(REFRESH_BEFORE))
}

/// A user's token to send now.
pub struct Current {
    pub access_token: String,
    /// Unix seconds, if said.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl From<Tokens> for Current {
    fn from(kept: Tokens) -> Self {
        Self {
            access_token: kept.access_token,
            expires_at: kept.expires_at,
        }
    }
}

/// Why a user's token cannot be sent. Its words (which may quote the
/// vault, an egress refusal or an authorization server) are for the
/// proxy's log; a client is told only [`SignInError::told`]. None carries
/// a token.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("`{}` has not signed in to `{}`", user.escape_debug(), server.escape_debug())]
    NotSignedIn { server: String, user: String },
    #[error("`{}`'s sign-in to `{}` has expired and cannot be refreshed", user.escape_debug(), server.escape_debug())]
    Expired { server: String, user: String },
    #[error(
        "`{}`'s sign-in to `{}` was issued for another resource than the server's URL now",
        user.escape_debug(),
        server.escape_debug()
    )]
    OtherResource { server: String, user: String },
    #[error(
        "`{}`'s sign-in to `{}` was issued by another authorization server than the server's `issuer` now",
        user.escape_debug(),
        server.escape_debug()
    )]
    OtherIssuer { server: String, user: String },
    #[error("`{}`'s sign-in to `{}` could not be refreshed: {reason}", user.escape_debug(), server.escape_debug())]
    Refresh {
        server: String,
        user: String,
        reason: String,
    },
    #[error("the vault: {0}")]
    Vault(String),
}

impl SignInError {
    /// [`SignInError::told`], or where the proxy gives the user a link to
    /// sign in from the browser (`linked`; the error is the user's to
    /// mend), words that say to open it (the link goes beside them).
    pub fn told_with(&self, linked: bool, life: std::time::Duration) -> String {
        match self {
            Self::NotSignedIn { server, user }
            | Self::Expired { server, user }
            | Self::OtherResource { server, user }
            | Self::OtherIssuer { server, user }
            | Self::Refresh { server, user, .. }
                if linked =>
            {
                format!(
                    "`{}` must sign in to `{}`: open the sign-in link in a browser within {} minutes, sign in, then call again",
                    user.escape_debug(),
                    server.escape_debug(),
                    life.as_secs().div_ceil(60)
                )
            }
            _ => self.told(),
        }
    }

    /// Whether the user can mend it by signing in (not the vault's fault).
    pub fn users(&self) -> bool {
        !matches!(self, Self::Vault(_))
    }

    /// What the client whose call needed the token is told: what its
    /// user can do, in fixed words.
    pub fn told(&self) -> String {
        let again = |server: &str, user: &str, what: &str| {
            let (user, server) = (user.escape_debug(), server.escape_debug());
            format!(
                "`{user}` {what} `{server}`: a person signs them in with `portcullis oauth login {server} --client {user}`"
            )
        };
        match self {
            Self::NotSignedIn { server, user } => again(server, user, "has not signed in to"),
            Self::Expired { server, user }
            | Self::OtherResource { server, user }
            | Self::OtherIssuer { server, user }
            | Self::Refresh { server, user, .. } => again(server, user, "must sign in again to"),
            Self::Vault(_) => {
                "the proxy cannot read its users' sign-ins now; its operator's log says why".into()
            }
        }
    }
}

impl From<super::vault::VaultError> for SignInError {
    fn from(err: super::vault::VaultError) -> Self {
        Self::Vault(err.to_string())
    }
}

impl SignIns {
    pub fn new(config: Arc<Config>) -> Self {
        let vault = Arc::new(Opened::new(config.clone()));
        let life = config.vault.link_life;
        // Where replicas share the vault, so do they the sign-ins waiting:
        // a link one gave is answered by whichever the balancer picks.
        let pendings = match config.vault.dir {
            Some(_) => Pendings::shared(life, vault.clone()),
            None => Pendings::new(life),
        };
        Self {
            pendings,
            config,
            vault,
            found: Mutex::default(),
            refreshing: Mutex::default(),
        }
    }

    /// How long a link to sign in lives.
    pub fn link_life(&self) -> std::time::Duration {
        self.config.vault.link_life
    }

    /// The sign-ins begun from calls.
    pub fn pendings(&self) -> &Pendings {
        &self.pendings
    }

    /// Where a sign-in's answer comes back, with `[vault] public_url`.
    fn callback(&self) -> Option<String> {
        Some(callback_url(self.config.vault.public_url.as_deref()?))
    }

    /// A link for `user` to sign in to `server` (`remote`) from their
    /// browser, on the proxy's listener (see [`super::pending`]); `None`
    /// without `[vault] public_url`. The proxy registers itself with the
    /// server's authorization server for its callback once, and keeps
    /// that registration.
    pub async fn link(
        &self,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
    ) -> Result<Option<String>, String> {
        let Some(callback) = self.callback() else {
            return Ok(None);
        };
        let vault = self.vault().map_err(|err| err.to_string())?;
        let http = discovery_client(remote).map_err(|err| err.to_string())?;
        let found = self.found(server, remote, &http).await?;
        let ways = Ways::of(remote, &self.config.vault);
        let client = web_client(vault, &http, (server, &callback), &found, ways).await?;
        let proof = self.proof(vault, user, &callback).await?;
        let id = self
            .pendings
            .begin(remote, (server, user), found, client, proof)
            .map_err(|err| err.to_string())?;
        let public = self.config.vault.public_url.as_deref().unwrap_or_default();
        let link = format!("{}/oauth/start?id={id}", public.trim_end_matches('/'));
        self.pendings.named(&id, &link);
        Ok(Some(link))
    }

    /// Where the person at `user`'s link must first show they are `user`:
    /// where `[oauth]` names `user`'s provider (`user` is none of
    /// `[[clients]]`), a sign-in to the proxy there, with the client the
    /// operator gave (`web_client`) or one the proxy registered for its
    /// `callback` and kept. An `[oauth]` user whose provider cannot be
    /// reached is given no link (fails closed).
    async fn proof(
        &self,
        vault: &Vault,
        user: &str,
        callback: &str,
    ) -> Result<Option<Proof>, String> {
        let Some(oauth) = &self.config.oauth else {
            return Ok(None);
        };
        if self.config.clients.iter().any(|client| client.name == user) {
            return Ok(None);
        }
        // Prefixes never begin one another: at most one is `user`'s.
        let named = oauth
            .providers
            .iter()
            .find(|provider| user.starts_with(provider.name_prefix.as_str()))
            .ok_or_else(|| format!("`{}` is no client this proxy knows", user.escape_debug()))?;
        // A name taken from the OAuth client a token was issued to names
        // no person: every proof would name the proxy's own client.
        if ["client_id", "azp", "cid", "appid"].contains(&named.client_claim.as_str()) {
            return Err(format!(
                "the provider `{}` names clients by `{}`, an OAuth client, not a person: a person at a link cannot show who they are",
                named.name, named.client_claim
            ));
        }
        let http = discovery_client_of(&oauth.egress, &named.issuer, false)
            .map_err(|err| err.to_string())?;
        let key = format!("[oauth.providers] {}", named.name);
        let found = self
            .learned(key.clone(), async {
                let mut scopes = oauth.scopes.clone();
                for scope in &oauth.required_scopes {
                    if !scopes.contains(scope) {
                        scopes.push(scope.clone());
                    }
                }
                provider(&http, &named.issuer, (&oauth.resource, scopes), &[]).await
            })
            .await?;
        let client = match &named.web_client {
            Some(given) => operators_client(given, &found, callback)?,
            None => web_registration(vault, &http, (&key, callback), &found).await?,
        };
        Ok(Some(Proof {
            provider: named.name.clone(),
            found,
            client,
        }))
    }

    /// A proof answered in the person's browser: the code exchanged at the
    /// provider for the person's access token to the proxy, to be checked
    /// as a client's is. Never kept.
    pub async fn proof_token(&self, proved: &Proved) -> Result<String, String> {
        let oauth = self
            .config
            .oauth
            .as_ref()
            .ok_or("the proxy no longer has `[oauth]`")?;
        let issuer = oauth
            .providers
            .iter()
            .find(|provider| provider.name == proved.proof.provider)
            .map(|provider| provider.issuer.as_str())
            .ok_or("the provider is no longer in the config")?;
        let http =
            discovery_client_of(&oauth.egress, issuer, false).map_err(|err| err.to_string())?;
        let tokens = exchange(
            &http,
            &proved.proof.found,
            &proved.proof.client,
            &proved.code,
            &proved.verifier,
        )
        .await
        .map_err(|err| err.to_string())?;
        Ok(tokens.access_token)
    }

    /// A sign-in answered in its user's browser: the code exchanged, the
    /// tokens sealed (the entry held). What to tell the person.
    pub async fn finish(&self, answered: Answered) -> Result<String, String> {
        // Under the server's settings when the link was given (where
        // replicas share the sign-ins waiting, this replica's now, which
        // the caller filled in).
        let remote = answered
            .remote
            .as_deref()
            .ok_or("the server is not in this proxy's config")?;
        let vault = self.vault().map_err(|err| err.to_string())?;
        let http = discovery_client(remote).map_err(|err| err.to_string())?;
        let tokens = exchange(
            &http,
            &answered.found,
            &answered.client,
            &answered.code,
            &answered.verifier,
        )
        .await
        .map_err(|err| err.to_string())?;
        remember(&tokens);
        vault
            .put_held(&answered.server, &answered.user, &tokens)
            .await
            .map_err(|err| err.to_string())?;
        tracing::info!(server = %answered.server, user = %answered.user, "a user signed in from a link");
        Ok(format!(
            "`{}` is signed in to `{}`. Go back to your agent: its next call is served.",
            answered.user.escape_debug(),
            answered.server.escape_debug()
        ))
    }

    /// What `server` asks for: learned at its first need, then kept for
    /// its settings as they are (a reload that changes its URL, issuer or
    /// endpoint origins learns it anew).
    async fn found(
        &self,
        server: &str,
        remote: &RemoteSpec,
        http: &crate::egress::HttpClient,
    ) -> Result<Discovered, String> {
        let key = format!("{server}\n{}\n{:?}", remote.url, remote.sign_in);
        self.learned(key, learn(http, remote)).await
    }

    /// What was learned under `key`, or `learn`ed now and kept (an error
    /// is not: the next need learns anew).
    async fn learned(
        &self,
        key: String,
        learn: impl std::future::Future<Output = Result<Discovered, super::discover::DiscoverError>>,
    ) -> Result<Discovered, String> {
        let cached = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(found) = cached {
            return Ok(found);
        }
        let found = learn.await.map_err(|err| err.to_string())?;
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, found.clone());
        Ok(found)
    }

    pub(super) fn vault(&self) -> Result<&Vault, SignInError> {
        self.vault
            .get()
            .map_err(|err| SignInError::Vault(err.to_owned()))
    }

    /// `user`'s token for `server` (`remote`): as kept, or refreshed when it
    /// expires within [`REFRESH_BEFORE`] seconds. Sent only where the
    /// resource it was issued for covers the server's URL.
    pub async fn current(
        &self,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
    ) -> Result<Current, SignInError> {
        self.current_unless(server, remote, user, None).await
    }

    /// [`SignIns::current`] once the server answered 401 to `refused` (an
    /// access token): if that is still the one kept, it is refreshed at
    /// once, whenever it expires, and never sent again (one that cannot be
    /// refreshed: the user must sign in again). One refreshed meanwhile is
    /// sent as kept.
    pub async fn current_after_refusal(
        &self,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
        refused: &str,
    ) -> Result<Current, SignInError> {
        self.current_unless(server, remote, user, Some(refused))
            .await
    }

    async fn current_unless(
        &self,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
        refused: Option<&str>,
    ) -> Result<Current, SignInError> {
        let vault = self.vault()?;
        let dead = |kept: &Tokens| refused.is_some_and(|refused| kept.access_token == refused);
        let kept = self.kept(vault, server, remote, user)?;
        if !expiring(&kept) && !dead(&kept) {
            return Ok(kept.into());
        }
        let turn = self
            .refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((server.to_owned(), user.to_owned()))
            .or_default()
            .clone();
        // Held until the refreshed tokens are sealed: one refresh at a time
        // in this proxy, and none beside another process's refresh, sign-in
        // or revoke of the entry.
        let _turn = turn.lock().await;
        let _held = vault.hold(server, user).await?;
        // Refreshed, replaced or revoked meanwhile, perhaps.
        let kept = self.kept(vault, server, remote, user)?;
        let alive = kept.expires_at.is_none_or(|at| at > unix_now()) && !dead(&kept);
        if !dead(&kept) && (!expiring(&kept) || (kept.refresh_token.is_none() && alive)) {
            // Fresh, or not refreshable but still alive: sent while it lives.
            return Ok(kept.into());
        }
        // A token the server refused is dead whatever it says of itself:
        // kept so (its refresh token with it), it is never sent again, and
        // the user is told to sign in again until a refresh works.
        let bury = |kept: &Tokens| {
            if dead(kept) {
                let mut buried = kept.clone();
                buried.expires_at = Some(0);
                if let Err(err) = vault.put(server, user, &buried) {
                    tracing::warn!(server, user, reason = %err, "a refused token could not be marked dead");
                }
            }
        };
        if kept.refresh_token.is_none() {
            bury(&kept);
            return Err(SignInError::Expired {
                server: server.to_owned(),
                user: user.to_owned(),
            });
        }
        let refreshed = self.refreshed(vault, server, remote, user, &kept).await;
        if refreshed.is_err() {
            bury(&kept);
        }
        match refreshed {
            Ok(fresh) => Ok(fresh.into()),
            Err(reason) if alive => {
                // Sent while it lives; the next call tries again.
                tracing::warn!(server, user, %reason, "a user's sign-in could not be refreshed yet");
                Ok(kept.into())
            }
            Err(reason) => Err(SignInError::Refresh {
                server: server.to_owned(),
                user: user.to_owned(),
                reason,
            }),
        }
    }

    /// `user`'s tokens at `server` as kept, if they are for its URL.
    fn kept(
        &self,
        vault: &Vault,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
    ) -> Result<Tokens, SignInError> {
        let kept = vault
            .get(server, user)?
            .ok_or_else(|| SignInError::NotSignedIn {
                server: server.to_owned(),
                user: user.to_owned(),
            })?;
        remember(&kept);
        // The operator may have pointed the server elsewhere since.
        if !covers(&kept.resource, &remote.url) {
            return Err(SignInError::OtherResource {
                server: server.to_owned(),
                user: user.to_owned(),
            });
        }
        // Or pinned it to another authorization server.
        if let Some(issuer) = remote
            .sign_in
            .as_ref()
            .and_then(|spec| spec.issuer.as_deref())
            && !super::discover::same_issuer(issuer, &kept.issuer)
        {
            return Err(SignInError::OtherIssuer {
                server: server.to_owned(),
                user: user.to_owned(),
            });
        }
        Ok(kept)
    }

    async fn refreshed(
        &self,
        vault: &Vault,
        server: &str,
        remote: &RemoteSpec,
        user: &str,
        kept: &Tokens,
    ) -> Result<Tokens, String> {
        let http = discovery_client(remote).map_err(|err| err.to_string())?;
        let found = self.found(server, remote, &http).await?;
        // The refresh token goes only to the authorization server that
        // issued it, as the client it was issued to.
        if found.issuer != kept.issuer {
            return Err("the server names another authorization server than the one that issued the sign-in".into());
        }
        let ways = Ways::of(remote, &self.config.vault);
        let client = registration(vault, server, kept, (&found, ways))?
            .ok_or("the client the sign-in was issued to is no longer registered")?;
        let fresh = refresh(&http, &found, &client, kept)
            .await
            .map_err(|err| err.to_string())?;
        remember(&fresh);
        vault
            .put(server, user, &fresh)
            .map_err(|err| err.to_string())?;
        Ok(fresh)
    }
}

/// Makes `tokens` known to redaction (see [`super::known`]).
fn remember(tokens: &Tokens) {
    let known = super::known::known();
    known.remember(&tokens.access_token);
    if let Some(refresh) = &tokens.refresh_token {
        known.remember(refresh);
    }
}

#[cfg(test)]
#[path = "current_tests.rs"]
mod tests;
