//! Sign-ins begun from an agent's call, finished in the user's browser on
//! the proxy's own listener (`[vault] public_url`).
//!
//! A user who calls a `sign_in` server without having signed in is given a
//! link to the proxy: `PUBLIC_URL/oauth/start?id=ID`. `ID` is 256 random
//! bits, known only to the client it was given to, and lives `[vault]
//! link_life`. The page at the link names the user, the server and the
//! authorization server, and asks the person to go on only if they are
//! that user; going on (a `POST`: a link previewed or scanned is not
//! consumed) binds the sign-in to that browser with a cookie of 256 random
//! bits, once: the link cannot be taken on in another browser. The browser
//! is sent to the authorization server with PKCE, a fresh `state` and the
//! resource indicator; what comes back to `PUBLIC_URL/oauth/callback` is
//! taken only for a `state` this proxy gave, in the browser that began it
//! (its cookie), before the link expires, once. Nothing in a link lets
//! another user finish it or use it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::discover::Discovered;
use super::flow::{self, Registration};
use crate::config::RemoteSpec;

/// The most sign-ins waiting at once (each a few KiB).
const MAX_PENDING: usize = 10_000;

/// Why a link or an answer is not taken. Each says what the person can
/// do; none carries a code, a verifier, a `state` or a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PendingError {
    #[error(
        "this sign-in link is unknown or has expired: ask your agent to call the server again for a new one"
    )]
    Unknown,
    #[error(
        "this sign-in link was already taken on in a browser: ask your agent to call the server again for a new one"
    )]
    Taken,
    #[error(
        "this answer is not for a sign-in this proxy started, or that sign-in is finished or expired"
    )]
    UnknownState,
    #[error(
        "this sign-in was begun in another browser: finish it in the browser that opened the link"
    )]
    OtherBrowser,
    #[error("too many sign-ins are waiting: try again in a few minutes")]
    Full,
    #[error("the system's random source failed")]
    Random,
    #[error("{0}")]
    Flow(String),
}

/// A sign-in waiting for its user.
struct Pending {
    /// The server's settings when the link was given (what the answer is
    /// exchanged under, whatever a reload changed since).
    remote: Box<RemoteSpec>,
    server: String,
    user: String,
    found: Discovered,
    client: Registration,
    state: String,
    verifier: String,
    /// The authorization server's link.
    link: String,
    until: Instant,
    /// The digest of the cookie of the browser that took it on.
    browser: Option<[u8; 32]>,
}

/// What the page at a link shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub server: String,
    pub user: String,
    pub issuer: String,
}

/// A sign-in answered in its own browser: what to exchange the code with.
pub struct Answered {
    pub remote: Box<RemoteSpec>,
    pub server: String,
    pub user: String,
    pub found: Discovered,
    pub client: Registration,
    pub code: String,
    pub verifier: String,
}

/// The sign-ins waiting, by the digest of their link's id, and the digest
/// of each one's `state` (an answer is found without a scan).
pub struct Pendings {
    life: Duration,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<[u8; 32], Pending>,
    by_state: HashMap<[u8; 32], [u8; 32]>,
}

impl Waiting {
    /// Drops what `keep` refuses, both maps kept in step.
    fn retain(&mut self, keep: impl Fn(&Pending) -> bool) {
        self.by_id.retain(|_, pending| keep(pending));
        let by_id = &self.by_id;
        self.by_state.retain(|_, id| by_id.contains_key(id));
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_text() -> Result<String, PendingError> {
    flow::random_text().map_err(|_| PendingError::Random)
}

/// 256 random bits, for a token a page and its cookie share.
pub fn fresh_token() -> Result<String, PendingError> {
    random_text()
}

impl Pendings {
    pub fn new(life: Duration) -> Self {
        Self {
            life,
            waiting: Mutex::default(),
        }
    }

    /// A sign-in of `user` to `server` begun: the id of its link. An
    /// earlier one of the same user and server is dropped (its link no
    /// longer works).
    pub fn begin(
        &self,
        remote: &RemoteSpec,
        (server, user): (&str, &str),
        found: Discovered,
        client: Registration,
    ) -> Result<String, PendingError> {
        let started =
            flow::start(&found, &client).map_err(|err| PendingError::Flow(err.to_string()))?;
        let id = random_text()?;
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // The user's earlier link no longer works, unless a browser took it
        // on (the person may be at the authorization server now).
        waiting.retain(|pending| {
            pending.until > now
                && (pending.browser.is_some()
                    || !(pending.server == server && pending.user == user))
        });
        if waiting.by_id.len() >= MAX_PENDING {
            return Err(PendingError::Full);
        }
        let key = digest(&id);
        waiting.by_state.insert(digest(&started.state), key);
        waiting.by_id.insert(
            key,
            Pending {
                remote: Box::new(remote.clone()),
                server: server.to_owned(),
                user: user.to_owned(),
                found,
                client,
                state: started.state,
                verifier: started.verifier,
                link: started.link,
                until: now + self.life,
                browser: None,
            },
        );
        Ok(id)
    }

    /// What the page at link `id` shows, if it is live and not yet taken
    /// on.
    pub fn shown(&self, id: &str) -> Result<Shown, PendingError> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let pending = waiting
            .by_id
            .get(&digest(id))
            .filter(|pending| pending.until > Instant::now())
            .ok_or(PendingError::Unknown)?;
        if pending.browser.is_some() {
            return Err(PendingError::Taken);
        }
        Ok(Shown {
            server: pending.server.clone(),
            user: pending.user.clone(),
            issuer: pending.found.issuer.clone(),
        })
    }

    /// Link `id` taken on in a browser, once: the cookie that browser is
    /// given, and the authorization server's link it is sent to.
    pub fn take(&self, id: &str) -> Result<(String, String), PendingError> {
        let cookie = random_text()?;
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let pending = waiting
            .by_id
            .get_mut(&digest(id))
            .filter(|pending| pending.until > Instant::now())
            .ok_or(PendingError::Unknown)?;
        if pending.browser.is_some() {
            return Err(PendingError::Taken);
        }
        pending.browser = Some(digest(&cookie));
        Ok((cookie, pending.link.clone()))
    }

    /// What came back to the callback (`query`), in the browser whose
    /// cookie is `cookie`: the sign-in it answers, taken out (once), with
    /// its code. An answer whose `state` is none of this proxy's, or from
    /// another browser, leaves every sign-in as it was.
    pub fn answer(
        &self,
        query: &[(String, String)],
        cookie: Option<&str>,
    ) -> Result<Answered, PendingError> {
        let state = query
            .iter()
            .find(|(name, _)| name == "state")
            .map(|(_, value)| value.as_str())
            .ok_or(PendingError::UnknownState)?;
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Found by its digest: how long it takes says nothing of a state.
        let key = *waiting
            .by_state
            .get(&digest(state))
            .ok_or(PendingError::UnknownState)?;
        let pending = waiting
            .by_id
            .get(&key)
            .filter(|pending| pending.until > now)
            .ok_or(PendingError::UnknownState)?;
        if pending.browser.is_none() || pending.browser != cookie.map(digest) {
            return Err(PendingError::OtherBrowser);
        }
        let pending = waiting
            .by_id
            .remove(&key)
            .ok_or(PendingError::UnknownState)?;
        waiting.by_state.remove(&digest(&pending.state));
        drop(waiting);
        let code = flow::answered(&pending.found, &pending.state, query)
            .map_err(|err| PendingError::Flow(err.to_string()))?;
        Ok(Answered {
            remote: pending.remote,
            server: pending.server,
            user: pending.user,
            found: pending.found,
            client: pending.client,
            code,
            verifier: pending.verifier,
        })
    }
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
