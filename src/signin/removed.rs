//! A `sign_in` server the operator removed from the config (a reload):
//! every user's sign-in to it revoked at the authorization server that
//! issued it (RFC 7009, refresh token then access token, as the client it
//! was issued to) and forgotten. The server itself may be gone: its
//! issuer is read from the tokens, its metadata from the issuer.

use super::SignIns;
use super::client::{Ways, registration};
use super::discover::{Expect, discovery_client, provider};
use super::flow::revoke;
use super::vault::Vault;
use crate::config::RemoteSpec;

impl SignIns {
    /// Revokes and forgets every user's sign-in to `server` (`remote`, its
    /// settings before it was removed). A sign-in that cannot be revoked
    /// (its issuer unreachable, its client unknown) is kept, and the log
    /// says so: `portcullis oauth status` still lists it. Each is revoked
    /// only while `gone` says the server is still out of the config (a
    /// reload may have put it back). The users whose sign-ins were revoked.
    pub async fn revoke_removed(
        &self,
        server: &str,
        remote: &RemoteSpec,
        gone: impl Fn() -> bool,
    ) -> Vec<String> {
        let vault = match self.vault() {
            Ok(vault) => vault,
            Err(err) => {
                tracing::warn!(%server, reason = %err, "cannot revoke the sign-ins of a removed server");
                return Vec::new();
            }
        };
        let users: Vec<String> = match vault.list() {
            Ok(listed) => listed
                .into_iter()
                .filter_map(Result::ok)
                .filter(|entry| entry.server == server)
                .map(|entry| entry.user)
                .collect(),
            Err(err) => {
                tracing::warn!(%server, reason = %err, "cannot list the sign-ins of a removed server");
                return Vec::new();
            }
        };
        let mut revoked = Vec::new();
        for user in users {
            match revoke_one(
                vault,
                (server, remote),
                (&user, Ways::of(remote, &self.config.vault)),
                &gone,
            )
            .await
            {
                Ok(()) => {
                    tracing::info!(%server, %user, "a removed server's sign-in was revoked and forgotten");
                    revoked.push(user);
                }
                Err(reason) => {
                    tracing::warn!(%server, %user, %reason, "a removed server's sign-in could not be revoked: it is kept in the vault");
                }
            }
        }
        revoked
    }
}

/// `user`'s sign-in to `server` revoked where it was issued, then
/// forgotten; the entry held throughout (no refresh writes it back).
async fn revoke_one(
    vault: &Vault,
    (server, remote): (&str, &RemoteSpec),
    (user, ways): (&str, Ways<'_>),
    gone: &impl Fn() -> bool,
) -> Result<(), String> {
    let _held = vault
        .hold(server, user)
        .await
        .map_err(|err| err.to_string())?;
    if !gone() {
        return Err("the server is in the config again".into());
    }
    let Some(tokens) = vault.get(server, user).map_err(|err| err.to_string())? else {
        return Ok(());
    };
    // Reached as a refresh reaches it: the server's own client (the
    // issuer a peer-named address), the endpoint origins it allows.
    let http = discovery_client(remote).map_err(|err| err.to_string())?;
    let origins = Expect::of(remote.sign_in.as_deref()).endpoint_origins;
    let found = provider(
        &http,
        &tokens.issuer,
        (&tokens.resource, Vec::new()),
        &origins,
    )
    .await
    .map_err(|err| err.to_string())?;
    if found.revocation_endpoint.is_none() {
        // Nothing to revoke at: forgotten, its tokens left to expire.
        tracing::warn!(%server, %user, issuer = %found.issuer, "the issuer offers no revocation: the sign-in is forgotten, its tokens left to expire");
        return vault
            .remove(server, user)
            .map(|_| ())
            .map_err(|err| err.to_string());
    }
    let client = registration(vault, server, &tokens, (&found, ways))?
        .ok_or("the client its tokens were issued to is no longer known")?;
    if let Some(refresh) = &tokens.refresh_token {
        revoke(&http, &found, &client, refresh, "refresh_token")
            .await
            .map_err(|err| err.to_string())?;
    }
    // The refresh token is what outlives: once it is revoked, an access
    // token the issuer would not revoke is left to expire.
    if let Err(err) = revoke(&http, &found, &client, &tokens.access_token, "access_token").await {
        if tokens.refresh_token.is_none() {
            return Err(err.to_string());
        }
        tracing::warn!(%server, %user, reason = %err, "the access token was not revoked (its refresh token was): left to expire");
    }
    vault.remove(server, user).map_err(|err| err.to_string())?;
    Ok(())
}
