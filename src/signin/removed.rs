//! A `sign_in` server the operator removed from the config (a reload):
//! every user's sign-in to it revoked at the authorization server that
//! issued it (RFC 7009, refresh token then access token, as the client it
//! was issued to) and forgotten; so is, at start, every sign-in to a
//! server removed while the proxy was stopped. The server itself may be
//! gone: its issuer is read from the tokens, its metadata from the issuer.

use std::collections::BTreeSet;

use super::SignIns;
use super::client::{Ways, registration};
use super::discover::{Expect, discovery_client, discovery_client_of, provider_at};
use super::flow::revoke;
use super::vault::Vault;
use crate::config::RemoteSpec;

/// What the proxy knows of a removed server: its settings when a reload
/// took it out, or nothing (it was taken out while the proxy was
/// stopped).
#[derive(Clone, Copy)]
enum Was<'a> {
    Configured(&'a RemoteSpec),
    Unknown,
}

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
        self.revoke_all(server, Was::Configured(remote), &gone)
            .await
    }

    /// At start: every sign-in to a server the config at `file` named
    /// (as a proxy of it last wrote, [`SignIns::name_servers`]) and no
    /// longer does (`configured` says which it does): removed while the
    /// proxy was stopped, revoked and forgotten as
    /// [`SignIns::revoke_removed`] does, each while `configured` still says
    /// the server is out. A server another config names (sharing this
    /// `data_dir`) is never one. Its settings gone, its issuer is reached
    /// as a peer-named address under `[egress]`, every endpoint on the
    /// issuer's own origin, as the client the tokens were issued to if the
    /// proxy still knows it (a registration kept, or its client ID
    /// metadata document; not a client the operator registered by hand,
    /// whose secret left with the server's settings). Then what the
    /// config names now (`named`) is written, with the servers whose
    /// sign-ins could not be revoked. The sign-ins revoked, as (server,
    /// user).
    pub async fn revoke_orphans(
        &self,
        (file, named): (&std::path::Path, &BTreeSet<String>),
        configured: impl Fn(&str) -> bool,
    ) -> Vec<(String, String)> {
        let before = match self.vault().map(|vault| vault.servers_named_by(file)) {
            Ok(Ok(before)) => before.unwrap_or_default(),
            Ok(Err(err)) => {
                tracing::warn!(reason = %err, "cannot read which servers the config named before");
                return Vec::new();
            }
            // No vault: nothing kept.
            Err(_) => return Vec::new(),
        };
        let mut revoked = Vec::new();
        for server in before.iter().filter(|server| !configured(server)) {
            let gone = || !configured(server);
            for user in self.revoke_all(server, Was::Unknown, &gone).await {
                revoked.push((server.clone(), user));
            }
        }
        self.name_servers(file, named);
        revoked
    }

    /// Writes the `sign_in` servers the config at `file` names now
    /// (`named`), with those it named before whose sign-ins are still in
    /// the vault (their revocation still to come): what the next start
    /// revokes, if they are still out then.
    pub fn name_servers(&self, file: &std::path::Path, named: &BTreeSet<String>) {
        let Ok(vault) = self.vault() else {
            return;
        };
        let before = vault
            .servers_named_by(file)
            .ok()
            .flatten()
            .unwrap_or_default();
        let waiting: BTreeSet<String> = match vault.list() {
            Ok(listed) => listed
                .into_iter()
                .filter_map(Result::ok)
                .map(|entry| entry.server)
                .filter(|server| before.contains(server))
                .collect(),
            Err(_) => before,
        };
        let all: BTreeSet<String> = named.union(&waiting).cloned().collect();
        if let Err(err) = vault.name_servers(file, &all) {
            tracing::warn!(reason = %err, "cannot write which servers the config names");
        }
    }

    async fn revoke_all(
        &self,
        server: &str,
        was: Was<'_>,
        gone: &impl Fn() -> bool,
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
        let mut kept = false;
        for user in users {
            match self.revoke_one(vault, (server, was), &user, gone).await {
                // Gone already (another proxy of this `data_dir` did it).
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(%server, %user, "a removed server's sign-in was revoked and forgotten");
                    revoked.push(user);
                }
                Err(reason) => {
                    kept = true;
                    tracing::warn!(%server, %user, %reason, "a removed server's sign-in could not be revoked: it is kept in the vault");
                }
            }
        }
        // A server removed while the proxy was stopped (no link of this
        // proxy's can still be answered for it), none of whose sign-ins
        // is left, not even one that does not open: the clients the proxy
        // registered for it (their secrets) go too. After a reload's
        // removal they stay: a link given before may still be answered.
        if !kept && matches!(was, Was::Unknown) && gone() && nothing_left(vault, server) {
            forget_clients(vault, server);
        }
        revoked
    }

    /// `user`'s sign-in to `server` revoked where it was issued, then
    /// forgotten; the entry held throughout (no refresh writes it back).
    async fn revoke_one(
        &self,
        vault: &Vault,
        (server, was): (&str, Was<'_>),
        user: &str,
        gone: &impl Fn() -> bool,
    ) -> Result<bool, String> {
        let _held = vault
            .hold(server, user)
            .await
            .map_err(|err| err.to_string())?;
        if !gone() {
            return Err("the server is in the config again".into());
        }
        let Some(tokens) = vault.get(server, user).map_err(|err| err.to_string())? else {
            return Ok(false);
        };
        // Reached as a refresh reaches it: the server's own client (the
        // issuer a peer-named address), the endpoint origins it allows.
        let (http, origins, ways) = match was {
            Was::Configured(remote) => (
                discovery_client(remote),
                Expect::of(remote.sign_in.as_deref()).endpoint_origins,
                Ways::of(remote, &self.config.vault),
            ),
            Was::Unknown => (
                discovery_client_of(&self.config.egress, &tokens.issuer, true),
                Vec::new(),
                Ways::document_only(&self.config.vault),
            ),
        };
        let http = http.map_err(|err| err.to_string())?;
        // Where the sign-in reached its issuer: at the alias the operator
        // named, if it did (never at the issuer's own address, which the
        // sign-in may never have reached).
        let at = tokens.issuer_alias.as_deref().unwrap_or(&tokens.issuer);
        let found = provider_at(
            &http,
            (at, &tokens.issuer),
            (&tokens.resource, Vec::new()),
            &origins,
        )
        .await
        .map_err(|err| err.to_string())?;
        if found.revocation_endpoint.is_none() {
            // Nothing to revoke at: forgotten, its tokens left to expire.
            tracing::warn!(%server, %user, issuer = %found.issuer, "the issuer offers no revocation: the sign-in is forgotten, its tokens left to expire");
            return vault.remove(server, user).map_err(|err| err.to_string());
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
        if let Err(err) = revoke(&http, &found, &client, &tokens.access_token, "access_token").await
        {
            if tokens.refresh_token.is_none() {
                return Err(err.to_string());
            }
            tracing::warn!(%server, %user, reason = %err, "the access token was not revoked (its refresh token was): left to expire");
        }
        vault.remove(server, user).map_err(|err| err.to_string())
    }
}

/// Whether the vault keeps no sign-in to `server`, read again now (one
/// written meanwhile, or one that does not open, counts).
fn nothing_left(vault: &Vault, server: &str) -> bool {
    vault.list().is_ok_and(|listed| {
        listed.iter().all(|entry| match entry {
            Ok(entry) => entry.server != server,
            Err(super::vault::VaultError::Unsealable { server: named, .. }) => named != server,
            Err(_) => false,
        })
    })
}

/// Forgets every client the proxy registered for `server` (a removed
/// server none of whose users' sign-ins is kept).
fn forget_clients(vault: &Vault, server: &str) {
    match vault.clients_of(server) {
        Ok(names) => {
            for name in names {
                if let Err(err) = vault.remove_client(server, &name) {
                    tracing::warn!(%server, reason = %err, "a removed server's registration could not be forgotten");
                }
            }
        }
        Err(err) => {
            tracing::warn!(%server, reason = %err, "cannot list a removed server's registrations");
        }
    }
}
