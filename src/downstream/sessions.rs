//! The HTTP sessions: where each one's messages go (the stream of the POST
//! they belong to, or its GET stream), its requests in the works, when it
//! was last used; and the table of them by `Mcp-Session-Id`.
//!
//! Idle time is read from tokio's clock, so that a test with paused time
//! can let hours pass at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::slots::Slot;
use crate::chain::ClientIdentity;
use crate::gateway::{Outlet, Session};
use crate::protocol::{self, IdKey, Kind};

/// Messages a call's stream holds for a client that has not read them yet
/// (progress, logs, server requests, then the reply). Past it, what the
/// server sends for the call is dropped (and counted as undelivered) until
/// the client reads; the reply waits for room. A client that reads nothing
/// is cut off by the listener's write timeout, which ends the stream.
pub(super) const CALL_STREAM_CAP: usize = 256;
/// Places of a call's stream that only the server's requests may take.
const CALL_STREAM_RESERVE: usize = 16;
/// Requests of one session in the works at once (as over stdio); past it a
/// request is refused with 429 until some are answered.
pub(super) const SESSION_IN_FLIGHT: usize = 256;
/// Messages the session's GET stream holds for a client that has not read
/// them yet; past it they are dropped (counted as undelivered).
pub(super) const GET_STREAM_CAP: usize = 1024;

/// A message on its way to a client's stream, with its share of the
/// session's budget (none for a reply: replies are bounded by the requests
/// in the works).
pub(super) type Queued = (Value, Option<Shares>);

/// A message's shares of its session's budget and of all sessions', and
/// for an HTTP+SSE reply, its request's place among those in the works
/// (given back once the client has taken the reply, not when it is queued).
pub(super) struct Shares(
    #[allow(dead_code, reason = "held for its drop")] Option<(protocol::Held, protocol::Held)>,
    #[allow(dead_code, reason = "held for its drop")] Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Where messages for one HTTP session go: the stream of the POST they
/// belong to, or else the session's GET stream. Both are bounded, in
/// messages and, together, in bytes (`[limits] max_queued_bytes`).
pub(super) struct HttpOutlet {
    pub(super) get_stream: Mutex<Option<mpsc::Sender<Queued>>>,
    pub(super) post_streams: Mutex<HashMap<IdKey, mpsc::Sender<Queued>>>,
    queued: protocol::ByteBudget,
    /// All sessions' budget (`[limits] max_queued_bytes_total`).
    all: protocol::ByteBudget,
}

impl HttpOutlet {
    pub(super) fn new(queued_bytes: usize, all: protocol::ByteBudget) -> Self {
        Self {
            get_stream: Mutex::default(),
            post_streams: Mutex::default(),
            queued: protocol::ByteBudget::new(queued_bytes),
            all,
        }
    }
}

impl Default for HttpOutlet {
    fn default() -> Self {
        let limits = crate::config::LimitsConfig::default();
        Self::new(
            limits.max_queued_bytes,
            protocol::ByteBudget::new(limits.max_queued_bytes_total),
        )
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl HttpOutlet {
    /// The shares of the budgets an HTTP+SSE reply takes while it waits on
    /// the stream, with its request's `place`; past the budgets (the
    /// client does not read what it asked for), the place alone, which
    /// the short error sent instead keeps until it is read.
    pub(super) fn reply_shares(
        &self,
        reply: &Value,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Shares, Shares> {
        let bytes = protocol::held_bytes(reply);
        let taken = self
            .queued
            .try_take(bytes)
            .and_then(|own| Some((own, self.all.try_take(bytes)?)));
        match taken {
            Some(taken) => Ok(Shares(Some(taken), Some(place))),
            None => Err(Shares(None, Some(place))),
        }
    }
}

impl Outlet for HttpOutlet {
    fn deliver(&self, message: Value, related: Option<&Value>) -> bool {
        // Past the session's bytes, what servers send on their own is
        // dropped (counted as undelivered), as past its messages.
        let bytes = protocol::held_bytes(&message);
        let Some(own) = self.queued.try_take(bytes) else {
            return false;
        };
        let Some(all) = self.all.try_take(bytes) else {
            return false;
        };
        let mut queued = (message, Some(Shares(Some((own, all)), None)));
        let stream = related
            .and_then(IdKey::from_value)
            .and_then(|key| lock(&self.post_streams).get(&key).cloned());
        if let Some(stream) = stream {
            // The last places are kept for the server's requests (sampling,
            // elicitation, roots): a burst of progress does not crowd out
            // a request the call waits on.
            if stream.capacity() < CALL_STREAM_RESERVE
                && protocol::classify(&queued.0) == Some(Kind::Notification)
            {
                return false;
            }
            match stream.try_send(queued) {
                Ok(()) => return true,
                // A full stream drops the message rather than sending it on
                // the session's GET stream ahead of the ones it waits behind.
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                // The client left the call's stream: the GET stream, if any.
                Err(mpsc::error::TrySendError::Closed(back)) => queued = back,
            }
        }
        match lock(&self.get_stream).as_ref() {
            Some(stream) => stream.try_send(queued).is_ok(),
            None => false,
        }
    }
}

/// Stateless requests of one client in the works at once; past it a
/// request is refused with 429 until some are answered.
pub(super) const CLIENT_IN_FLIGHT: usize = 256;

/// Each client's places for stateless requests in the works (one entry per
/// client: only authenticated clients get here; past [`PLACES_KEPT`]
/// clients, those with nothing in the works are forgotten, as identity
/// providers' clients are as many as the organisation's people).
#[derive(Default)]
pub(super) struct Places(Mutex<HashMap<Arc<str>, Arc<Semaphore>>>);

const PLACES_KEPT: usize = 4096;

impl Places {
    pub(super) fn of(&self, client: &str) -> Arc<Semaphore> {
        let mut places = lock(&self.0);
        if let Some(found) = places.get(client) {
            return found.clone();
        }
        if places.len() >= PLACES_KEPT {
            places.retain(|_, places| Arc::strong_count(places) > 1);
        }
        places
            .entry(Arc::from(client))
            .or_insert_with(|| Arc::new(Semaphore::new(CLIENT_IN_FLIGHT)))
            .clone()
    }
}

pub(super) struct HttpSession {
    /// The id the client sends (`Mcp-Session-Id`): the session's own, or
    /// its sealed id (`[proxy] session_keys`).
    pub(super) wire_id: Arc<str>,
    pub(super) session: Arc<Session>,
    pub(super) outlet: Arc<HttpOutlet>,
    /// Places for the session's requests in the works
    /// ([`SESSION_IN_FLIGHT`]): a call whose client went away runs on, and
    /// still holds its place until it ends.
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// When the client last sent the session a message.
    last_active: Mutex<Instant>,
    /// Its place under the session caps, given back when it is gone.
    _slot: Slot<Arc<str>>,
}

impl HttpSession {
    pub(super) fn new(
        wire_id: Arc<str>,
        session: Arc<Session>,
        outlet: Arc<HttpOutlet>,
        slot: Slot<Arc<str>>,
    ) -> Self {
        Self {
            wire_id,
            session,
            outlet,
            in_flight: Arc::new(tokio::sync::Semaphore::new(SESSION_IN_FLIGHT)),
            last_active: Mutex::new(Instant::now()),
            _slot: slot,
        }
    }

    /// The client sent a message for the session: it is not idle.
    pub(super) fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_active).elapsed()
    }
}

/// The open sessions by id.
#[derive(Default)]
pub(super) struct SessionTable {
    sessions: RwLock<HashMap<String, Arc<HttpSession>>>,
}

/// Why a request's session was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unknown {
    /// The request names none.
    Unnamed,
    /// No open session has that id, or it is another client's.
    Unknown,
}

impl SessionTable {
    pub(super) fn insert(&self, session: Arc<HttpSession>) {
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.insert(session.wire_id.to_string(), session);
        }
    }

    /// The session named `id`, or else the one `make` makes (if it makes
    /// one), entered under that id: two requests resuming one session at
    /// once get one.
    pub(super) fn get_or_insert(
        &self,
        id: &str,
        make: impl FnOnce() -> Option<Arc<HttpSession>>,
    ) -> Option<Arc<HttpSession>> {
        let mut sessions = self.sessions.write().ok()?;
        if let Some(found) = sessions.get(id) {
            return Some(found.clone());
        }
        let made = make()?;
        sessions.insert(id.to_owned(), made.clone());
        Some(made)
    }

    pub(super) fn remove(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.remove(id);
        }
    }

    /// The session named `id`; it must belong to the same client, as it
    /// was when the session began: a client from an identity provider
    /// whose token now says other groups, attributes or scopes is told the
    /// session is unknown, and starts another (it would otherwise keep the
    /// rights it had).
    pub(super) fn find(
        &self,
        id: Option<&str>,
        client: &ClientIdentity,
    ) -> Result<Arc<HttpSession>, Unknown> {
        let id = id.ok_or(Unknown::Unnamed)?;
        let session = self.sessions.read().ok().and_then(|s| s.get(id).cloned());
        match session {
            Some(session) if session.session.client == *client => Ok(session),
            // Another client's session is reported as unknown, not as forbidden.
            _ => Err(Unknown::Unknown),
        }
    }

    /// Takes out the sessions idle for longer than `idle`, calling
    /// `ended` with each one's id before it leaves the table (under its
    /// lock: no request finds it gone and not yet ended).
    pub(super) fn take_idle(&self, idle: Duration, ended: impl Fn(&str)) -> Vec<Arc<HttpSession>> {
        match self.sessions.write() {
            Ok(mut sessions) => {
                let ids: Vec<String> = sessions
                    .iter()
                    .filter(|(_, s)| s.idle_for() > idle)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter()
                    .filter_map(|id| {
                        ended(id);
                        sessions.remove(id)
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What servers send on their own for a client that does not read is
    /// bounded in bytes as well as in messages: past the session's bytes it
    /// is dropped (undelivered), and room comes back as the client reads.
    #[test]
    fn a_sessions_streams_hold_no_more_bytes_than_its_budget() {
        let outlet = HttpOutlet::new(256 * 1024, protocol::ByteBudget::new(1 << 30));
        let (tx, mut rx) = mpsc::channel::<Queued>(GET_STREAM_CAP);
        *lock(&outlet.get_stream) = Some(tx);
        let big = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": "x".repeat(100 * 1024)}});
        let delivered = (0..10)
            .filter(|_| outlet.deliver(big.clone(), None))
            .count();
        assert_eq!(delivered, 2, "two of 100 KiB in a budget of 256 KiB");
        assert!(!outlet.deliver(big.clone(), None));
        // Far fewer messages than the stream's cap were queued.
        assert_eq!(GET_STREAM_CAP - tx_capacity(&outlet), 2);
        // The client reads one: room for one more.
        let taken = rx.try_recv();
        assert!(taken.is_ok());
        drop(taken);
        assert!(outlet.deliver(big.clone(), None));
        assert!(!outlet.deliver(big, None));
    }

    /// All sessions together hold no more than the proxy's total, whatever
    /// each one's own budget.
    #[test]
    fn all_sessions_together_hold_no_more_than_the_total() {
        let all = protocol::ByteBudget::new(300 * 1024);
        let big = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": "x".repeat(100 * 1024)}});
        let mut streams = Vec::new();
        let delivered: usize = (0..3)
            .map(|_| {
                let outlet = HttpOutlet::new(256 * 1024, all.clone());
                let (tx, rx) = mpsc::channel::<Queued>(GET_STREAM_CAP);
                *lock(&outlet.get_stream) = Some(tx);
                let count = (0..3).filter(|_| outlet.deliver(big.clone(), None)).count();
                streams.push((outlet, rx));
                count
            })
            .sum();
        assert_eq!(delivered, 2, "two of 100 KiB in all sessions' 300 KiB");
    }

    fn tx_capacity(outlet: &HttpOutlet) -> usize {
        lock(&outlet.get_stream)
            .as_ref()
            .map_or(0, mpsc::Sender::capacity)
    }
}
