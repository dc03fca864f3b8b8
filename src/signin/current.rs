//! The token a user's instance of a `sign_in` server sends: the user's
//! own, from the vault, refreshed (with the client the proxy registered)
//! when it is about to expire, the refreshed tokens sealed again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::discover::{Discovered, discover, discovery_client};
use super::flow::{DESKTOP, Registration, refresh};
use super::vault::{Tokens, Vault};
use crate::config::{Config, EgressConfig};
use crate::protocol::unix_now;

/// A token is refreshed this many seconds before it expires.
pub const REFRESH_BEFORE: u64 = 60;

/// A (server, user)'s turn to refresh.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// The users' sign-ins, as the proxy's servers use them.
pub struct SignIns {
    config: Arc<Config>,
    /// Opened at first use (a proxy whose servers ask no sign-in needs no
    /// `[vault] keys`).
    vault: OnceLock<Result<Vault, String>>,
    /// What each server asks for, learned at the first refresh.
    found: Mutex<HashMap<String, Discovered>>,
    /// One refresh at a time for each (server, user): a rotated refresh
    /// token spent by one connection is not spent again by another.
    refreshing: Mutex<HashMap<(String, String), Turn>>,
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

impl SignIns {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            vault: OnceLock::new(),
            found: Mutex::default(),
            refreshing: Mutex::default(),
        }
    }

    fn vault(&self) -> Result<&Vault, String> {
        self.vault
            .get_or_init(|| Vault::of(&self.config).map_err(|err| err.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `user`'s token for `server` (at `url`): as kept, or refreshed when it
    /// expires within [`REFRESH_BEFORE`] seconds. An error says what the
    /// user can do (never a token).
    pub async fn current(
        &self,
        server: &str,
        url: &str,
        egress: &EgressConfig,
        user: &str,
    ) -> Result<Current, String> {
        let vault = self.vault()?;
        let shown = (user.escape_debug(), server.escape_debug());
        let kept = vault
            .get(server, user)
            .map_err(|err| err.to_string())?
            .ok_or_else(|| {
                format!(
                    "`{}` has not signed in to `{}`: a person signs them in with `portcullis oauth login {} --client {}`",
                    shown.0, shown.1, shown.1, shown.0
                )
            })?;
        if !expiring(&kept) {
            return Ok(Current {
                access_token: kept.access_token,
                expires_at: kept.expires_at,
            });
        }
        let turn = self
            .refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((server.to_owned(), user.to_owned()))
            .or_default()
            .clone();
        // Held until the refreshed tokens are sealed.
        let _turn = turn.lock().await;
        // Another connection may have refreshed it meanwhile.
        let kept = vault
            .get(server, user)
            .map_err(|err| err.to_string())?
            .unwrap_or(kept);
        let alive = kept.expires_at.is_none_or(|at| at > unix_now());
        let kept = if !expiring(&kept) || (kept.refresh_token.is_none() && alive) {
            // Fresh, or not refreshable but still alive: sent while it lives.
            kept
        } else if kept.refresh_token.is_none() {
            return Err(format!(
                "`{}`'s sign-in to `{}` has expired and cannot be refreshed: sign in again",
                shown.0, shown.1
            ));
        } else {
            self.refreshed(vault, server, url, egress, user, &kept)
                .await
                .map_err(|reason| {
                    format!(
                        "`{}`'s sign-in to `{}` could not be refreshed ({reason}): sign in again",
                        shown.0, shown.1
                    )
                })?
        };
        Ok(Current {
            access_token: kept.access_token,
            expires_at: kept.expires_at,
        })
    }

    async fn refreshed(
        &self,
        vault: &Vault,
        server: &str,
        url: &str,
        egress: &EgressConfig,
        user: &str,
        kept: &Tokens,
    ) -> Result<Tokens, String> {
        let http = discovery_client(egress, url).map_err(|err| err.to_string())?;
        let cached = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server)
            .cloned();
        let found = match cached {
            Some(found) => found,
            None => {
                let found = discover(&http, url).await.map_err(|err| err.to_string())?;
                self.found
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(server.to_owned(), found.clone());
                found
            }
        };
        // The refresh token goes only to the authorization server that
        // issued it, as the client it was issued to.
        if found.issuer != kept.issuer {
            return Err("the server names another authorization server than the one that issued the sign-in".into());
        }
        let client = vault
            .get_client::<Registration>(server, DESKTOP)
            .map_err(|err| err.to_string())?
            .filter(|client| client.client_id == kept.client_id && client.issuer == kept.issuer)
            .ok_or("the client the sign-in was issued to is no longer registered")?;
        let fresh = refresh(&http, &found, &client, kept)
            .await
            .map_err(|err| err.to_string())?;
        vault
            .put(server, user, &fresh)
            .map_err(|err| err.to_string())?;
        Ok(fresh)
    }
}

#[cfg(test)]
#[path = "current_tests.rs"]
mod tests;
