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
//!
//! Where the link's user is one of an `[oauth]` provider's, the person is
//! first sent to that provider to sign in to the proxy itself (a
//! [`Proof`]: PKCE, its own single-use `state`, the proxy's resource); the
//! token that comes back is checked as the proxy checks a client's, and
//! only if it names the link's user is the browser sent on to the
//! server's authorization server. Anyone else is refused, and the link
//! ends (the user's next call gives a new one); so does a proof answered
//! in another browser than the one that took the link on.
//!
//! The sign-ins waiting are the proxy's own, in memory; where replicas
//! share the vault (`[vault] dir`), they are kept there, sealed, each step
//! taken under the folder's lock (`pending_shared.rs`): a link one replica
//! gave is shown, taken on and answered by whichever the balancer picks,
//! each step once across them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::discover::Discovered;
use super::flow::{self, Registration};
use super::vault::Opened;
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
    #[error(
        "you signed in to this proxy as `{}`, but this link is for `{}`: only they can use it, and it no longer works",
        person.escape_debug(),
        user.escape_debug()
    )]
    NotTheUser { person: String, user: String },
    #[error(
        "the proxy could not confirm who you are at your organisation's sign-in, and this link no longer works: ask your agent to call the server again for a new one"
    )]
    NotShown,
    #[error(
        "this sign-in was begun in another browser, and is now ended: ask your agent to call the server again for a new link, and open it in this browser"
    )]
    ProofElsewhere,
    #[error("{0}")]
    Flow(String),
    /// The vault replicas share could not be read or written: the details
    /// are in the proxy's log, not on a person's page.
    #[error("the proxy cannot read its waiting sign-ins now: try again later")]
    Vault,
}

/// A sign-in waiting for its user.
#[derive(Serialize, Deserialize)]
struct Pending {
    /// The server's settings when the link was given (what the answer is
    /// exchanged under, whatever a reload changed since); not kept where
    /// replicas share the sign-ins (the answering replica's are used).
    #[serde(skip)]
    remote: Option<Box<RemoteSpec>>,
    server: String,
    user: String,
    found: Discovered,
    client: Registration,
    state: String,
    verifier: String,
    /// The authorization server's link.
    link: String,
    until: SystemTime,
    /// The digest of the cookie of the browser that took it on.
    browser: Option<[u8; 32]>,
    /// Who the person must first show they are, if the user is one of an
    /// `[oauth]` provider's.
    proof: Option<Proving>,
    /// The `elicitationId` of the link given ([`Pendings::named`]).
    elicitation: Option<String>,
}

/// Where the person at a link shows they are its user: the sign-in to the
/// proxy at the `[oauth]` provider whose user it is.
#[derive(Clone, Serialize, Deserialize)]
pub struct Proof {
    /// The `[[oauth.providers]]` entry's name.
    pub provider: String,
    /// Its endpoints, and the proxy's resource and scopes.
    pub found: Discovered,
    /// The proxy's client there, for its callback.
    pub client: Registration,
}

/// A proof under way.
#[derive(Serialize, Deserialize)]
struct Proving {
    proof: Proof,
    /// The `state` and PKCE verifier of the sign-in to the provider, once
    /// the link was taken on; taken once.
    started: Option<(String, String)>,
    /// The person showed they are the user: the browser may go on.
    proven: bool,
}

/// A proof answered: which sign-in it was for (the digest of its link's
/// id, never the id) and in which browser.
#[derive(Clone, Copy)]
pub struct Ticket {
    key: [u8; 32],
    browser: [u8; 32],
}

/// What came back to the callback.
pub enum Answer {
    /// The server's authorization server: the sign-in to exchange.
    SignIn(Answered),
    /// The provider: the person's token to check, then [`Pendings::proven`].
    Proof(Proved),
}

/// A proof's answer: what to exchange its code with.
pub struct Proved {
    pub ticket: Ticket,
    pub user: String,
    pub proof: Proof,
    pub code: String,
    pub verifier: String,
}

/// What the page at a link shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub server: String,
    pub user: String,
    /// The authorization server, as [`issuer_shown`] names it.
    pub issuer: String,
    /// Where the person first shows they are the user, if they must.
    pub proof_issuer: Option<String>,
}

/// A sign-in answered in its own browser: what to exchange the code with.
pub struct Answered {
    /// The server's settings when the link was given; `None` where
    /// replicas share the sign-ins waiting (the caller gives its own).
    pub remote: Option<Box<RemoteSpec>>,
    pub server: String,
    pub user: String,
    pub found: Discovered,
    pub client: Registration,
    pub code: String,
    pub verifier: String,
    /// The `elicitationId` of the link, as the user's client was given it.
    pub elicitation: Option<String>,
}

/// `found`'s issuer as a person is shown it (the link's page, `oauth
/// login`): with the origin of its authorization endpoint where that is
/// not the issuer's (an alias's, or one the operator allowed), so the
/// person knows where they sign in.
pub fn issuer_shown(found: &Discovered) -> String {
    let origin = |url: &str| {
        reqwest::Url::parse(url)
            .map(|url| url.origin().ascii_serialization())
            .ok()
    };
    match origin(&found.authorization_endpoint) {
        Some(at) if origin(&found.issuer).as_ref() != Some(&at) => {
            format!("{} (its sign-in page is at {at})", found.issuer)
        }
        _ => found.issuer.clone(),
    }
}

/// The `elicitationId` of a link to sign in given as a URL elicitation: a
/// digest of the link (it names it without repeating its secret).
pub fn elicitation_id(link: &str) -> String {
    let digest = Sha256::digest(link.as_bytes());
    hex::encode(digest.get(..16).unwrap_or_default())
}

/// The sign-ins waiting, by the digest of their link's id, and the digest
/// of each one's `state` (an answer is found without a scan).
pub struct Pendings {
    life: Duration,
    store: Store,
}

/// Where the sign-ins waiting are kept.
enum Store {
    /// This proxy's own.
    Memory(Mutex<Waiting>),
    /// The vault's, which replicas share; this proxy's steps there one at
    /// a time, and when it last swept it.
    Shared(Arc<Opened>, Mutex<shared::Swept>),
}

/// Which sign-in a step is for: what a shared store reads for it.
#[derive(Clone, Copy)]
enum At<'a> {
    /// The one of a link (its id's digest).
    Link(&'a [u8; 32]),
    /// The same, only looked at (nothing is written back).
    Look(&'a [u8; 32]),
    /// The one a `state` (its digest) was given for.
    State(&'a [u8; 32]),
    /// A new one of this server and user (the user's last one too).
    Begin(&'a str, &'a str),
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<[u8; 32], Pending>,
    by_state: HashMap<[u8; 32], [u8; 32]>,
}

/// The digests of the `state`s a sign-in answers to: its server's, and its
/// proof's once begun.
fn states_of(pending: &Pending) -> Vec<[u8; 32]> {
    let proof = pending
        .proof
        .as_ref()
        .and_then(|proving| proving.started.as_ref())
        .map(|(state, _)| digest(state));
    std::iter::once(digest(&pending.state))
        .chain(proof)
        .collect()
}

impl Waiting {
    /// Ends the sign-in `key`: its link and its states no longer work.
    fn end(&mut self, key: &[u8; 32]) {
        self.by_id.remove(key);
        self.by_state.retain(|_, of| of != key);
    }

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
    /// This proxy's own sign-ins waiting.
    pub fn new(life: Duration) -> Self {
        Self {
            life,
            store: Store::Memory(Mutex::default()),
        }
    }

    /// Sign-ins waiting in `vault`, which replicas share.
    pub fn shared(life: Duration, vault: Arc<Opened>) -> Self {
        Self {
            life,
            store: Store::Shared(vault, Mutex::default()),
        }
    }

    /// `step` done on the sign-in `at` names: among this proxy's own, or
    /// read from the shared vault and written back, under its lock.
    fn with<R>(
        &self,
        at: At<'_>,
        step: impl FnOnce(&mut Waiting) -> Result<R, PendingError>,
    ) -> Result<R, PendingError> {
        match &self.store {
            Store::Memory(waiting) => step(&mut waiting.lock().unwrap_or_else(|p| p.into_inner())),
            Store::Shared(vault, swept) => {
                let vault = vault.get().map_err(|reason| {
                    tracing::warn!(%reason, "the sign-ins waiting cannot be read");
                    PendingError::Vault
                })?;
                shared::step((vault, swept), self.life, at, step)
            }
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
        proof: Option<Proof>,
    ) -> Result<String, PendingError> {
        let started =
            flow::start(&found, &client).map_err(|err| PendingError::Flow(err.to_string()))?;
        let id = random_text()?;
        let now = SystemTime::now();
        let key = digest(&id);
        let pending = Pending {
            remote: match self.store {
                Store::Memory(_) => Some(Box::new(remote.clone())),
                Store::Shared(..) => None,
            },
            server: server.to_owned(),
            user: user.to_owned(),
            found,
            client,
            state: started.state,
            verifier: started.verifier,
            link: started.link,
            until: now + self.life,
            browser: None,
            elicitation: None,
            proof: proof.map(|proof| Proving {
                proof,
                started: None,
                proven: false,
            }),
        };
        self.with(At::Begin(server, user), |waiting| {
            // The user's earlier link no longer works, unless a browser
            // took it on (the person may be at the authorization server
            // now).
            waiting.retain(|pending| {
                pending.until > now
                    && (pending.browser.is_some()
                        || !(pending.server == server && pending.user == user))
            });
            if waiting.by_id.len() >= MAX_PENDING {
                return Err(PendingError::Full);
            }
            waiting.by_state.insert(digest(&pending.state), key);
            waiting.by_id.insert(key, pending);
            Ok(())
        })?;
        Ok(id)
    }

    /// Forgets the sign-in whose link is `link` (the whole URL, or its
    /// id), if it was not taken on: a link that was never given out.
    pub fn forget(&self, link: &str) {
        let id = link.rsplit_once("id=").map_or(link, |(_, id)| id);
        let key = digest(id);
        let forgotten = self.with(At::Link(&key), |waiting| {
            if waiting
                .by_id
                .get(&key)
                .is_some_and(|pending| pending.browser.is_none())
            {
                waiting.end(&key);
            }
            Ok(())
        });
        if forgotten.is_err() {
            // Its link was never given out: no one holds it.
            tracing::warn!("a sign-in link never given out could not be forgotten");
        }
    }

    /// What the page at link `id` shows, if it is live and not yet taken
    /// on.
    pub fn shown(&self, id: &str) -> Result<Shown, PendingError> {
        let key = digest(id);
        self.with(At::Look(&key), |waiting| {
            let pending = waiting
                .by_id
                .get(&key)
                .filter(|pending| pending.until > SystemTime::now())
                .ok_or(PendingError::Unknown)?;
            if pending.browser.is_some() {
                return Err(PendingError::Taken);
            }
            Ok(Shown {
                server: pending.server.clone(),
                user: pending.user.clone(),
                issuer: issuer_shown(&pending.found),
                proof_issuer: pending
                    .proof
                    .as_ref()
                    .map(|proving| proving.proof.found.issuer.clone()),
            })
        })
    }

    /// Link `id` taken on in a browser, once: the cookie that browser is
    /// given, and the link it is sent to: the server's authorization
    /// server, or first the provider where the person shows they are the
    /// user.
    pub fn take(&self, id: &str) -> Result<(String, String), PendingError> {
        let cookie = random_text()?;
        let key = digest(id);
        self.with(At::Link(&key), |waiting| {
            let pending = waiting
                .by_id
                .get_mut(&key)
                .filter(|pending| pending.until > SystemTime::now())
                .ok_or(PendingError::Unknown)?;
            if pending.browser.is_some() {
                return Err(PendingError::Taken);
            }
            let to = match &mut pending.proof {
                Some(proving) if !proving.proven => {
                    let started = flow::start(&proving.proof.found, &proving.proof.client)
                        .map_err(|err| PendingError::Flow(err.to_string()))?;
                    let state = digest(&started.state);
                    proving.started = Some((started.state, started.verifier));
                    pending.browser = Some(digest(&cookie));
                    waiting.by_state.insert(state, key);
                    started.link
                }
                _ => {
                    pending.browser = Some(digest(&cookie));
                    pending.link.clone()
                }
            };
            Ok((cookie, to))
        })
    }

    /// A proof's answer checked: the person signed in to the proxy as
    /// `person`. If that is the link's user, the link the browser goes on
    /// to (the server's authorization server); else the person is refused
    /// and the link ended.
    /// `person` is `None` where the proof could not be finished or its
    /// token was not taken: refused the same way.
    pub fn proven(&self, ticket: Ticket, person: Option<&str>) -> Result<String, PendingError> {
        self.with(At::Link(&ticket.key), |waiting| {
            let pending = waiting
                .by_id
                .get_mut(&ticket.key)
                .filter(|pending| {
                    pending.until > SystemTime::now() && pending.browser == Some(ticket.browser)
                })
                .ok_or(PendingError::UnknownState)?;
            let Some(proving) = pending.proof.as_mut() else {
                return Err(PendingError::UnknownState);
            };
            if let Some(person) = person
                && person == pending.user
            {
                proving.proven = true;
                return Ok(pending.link.clone());
            }
            // Whoever holds a link may fail its proof as often as they
            // like: it ends, and the user's next call gives them a new one.
            let err = match person {
                Some(person) => PendingError::NotTheUser {
                    person: person.to_owned(),
                    user: pending.user.clone(),
                },
                None => PendingError::NotShown,
            };
            waiting.end(&ticket.key);
            Err(err)
        })
    }

    /// What came back to the callback (`query`), in the browser whose
    /// cookie is `cookie`: the sign-in it answers, taken out (once), with
    /// its code. An answer whose `state` is none of this proxy's leaves
    /// every sign-in as it was; so does the server's answer from another
    /// browser, while a proof's from another browser ends its link.
    pub fn answer(
        &self,
        query: &[(String, String)],
        cookie: Option<&str>,
    ) -> Result<Answer, PendingError> {
        let state = query
            .iter()
            .find(|(name, _)| name == "state")
            .map(|(_, value)| value.as_str())
            .ok_or(PendingError::UnknownState)?;
        let state = digest(state);
        self.with(At::State(&state), |waiting| {
            answered(waiting, &state, query, cookie)
        })
    }

    /// Names the link `id` gave, `link`, as the URL elicitation it may be
    /// given as ([`elicitation_id`]).
    pub fn named(&self, id: &str, link: &str) {
        let key = digest(id);
        let named = self.with(At::Link(&key), |waiting| {
            if let Some(pending) = waiting.by_id.get_mut(&key) {
                pending.elicitation = Some(elicitation_id(link));
            }
            Ok(())
        });
        if named.is_err() {
            tracing::warn!(
                "a sign-in link's elicitation id could not be kept: its client will not be told when it is answered"
            );
        }
    }
}

/// [`Pendings::answer`] among `waiting`, for the digest of its `state`.
fn answered(
    waiting: &mut Waiting,
    state: &[u8; 32],
    query: &[(String, String)],
    cookie: Option<&str>,
) -> Result<Answer, PendingError> {
    // Found by its digest: how long it takes says nothing of a state.
    let key = *waiting
        .by_state
        .get(state)
        .ok_or(PendingError::UnknownState)?;
    let pending = waiting
        .by_id
        .get_mut(&key)
        .filter(|pending| pending.until > SystemTime::now())
        .ok_or(PendingError::UnknownState)?;
    let browser = pending
        .browser
        .filter(|_| pending.browser == cookie.map(digest));
    if let Some(proving) = pending.proof.as_mut() {
        let proof_state = proving
            .started
            .as_ref()
            .is_some_and(|(own, _)| digest(own) == *state);
        if proof_state {
            // Taken once, whatever it says.
            let (own, verifier) = proving.started.take().unwrap_or_default();
            let proof = proving.proof.clone();
            let user = pending.user.clone();
            // A proof answered in another browser ends the link: its code
            // names whoever signed in there (perhaps the user, lured to
            // the provider with another's link), and must not be usable
            // by the browser that began it.
            let Some(browser) = browser else {
                waiting.end(&key);
                return Err(PendingError::ProofElsewhere);
            };
            let code = flow::answered(&proof.found, &own, query).map_err(|err| {
                waiting.end(&key);
                PendingError::Flow(err.to_string())
            })?;
            waiting.by_state.remove(&digest(&own));
            return Ok(Answer::Proof(Proved {
                ticket: Ticket { key, browser },
                user,
                proof,
                code,
                verifier,
            }));
        }
        if !proving.proven {
            return Err(PendingError::UnknownState);
        }
    }
    if browser.is_none() {
        return Err(PendingError::OtherBrowser);
    }
    let pending = waiting
        .by_id
        .remove(&key)
        .ok_or(PendingError::UnknownState)?;
    waiting.by_state.remove(&digest(&pending.state));
    let code = flow::answered(&pending.found, &pending.state, query)
        .map_err(|err| PendingError::Flow(err.to_string()))?;
    Ok(Answer::SignIn(Answered {
        remote: pending.remote,
        server: pending.server,
        user: pending.user,
        found: pending.found,
        client: pending.client,
        code,
        verifier: pending.verifier,
        elicitation: pending.elicitation,
    }))
}

#[path = "pending_shared.rs"]
mod shared;

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
