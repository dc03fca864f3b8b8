//! What an [`Upstream`](super::Upstream) tells the rest of the proxy: the
//! events it reports and the status it is in.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::protocol;

/// The client session and request a server→client message belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub session: u64,
    pub request_id: Value,
}

/// Which running copy of a server an event comes from: the server's own, or
/// (for `isolation = "per-client"` servers) the one of a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub server: Arc<str>,
    /// The client whose instance it is; `None` for the server's own.
    pub instance: Option<Arc<str>>,
}

/// Something the server sent on its own.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// The server is (again) running and initialized: its lists may have
    /// changed. `took`: from the start of its start to its answer to
    /// `initialize` (a container's cold start).
    Ready { source: Source, took: Duration },
    /// The server stopped; calls in flight failed.
    Down { source: Source, reason: String },
    /// The proxy stopped the server on purpose (idle); no call failed.
    Stopped { source: Source, reason: String },
    /// The server's breaker opened (its calls are refused at once) or
    /// closed again (a probe was answered).
    Breaker {
        source: Source,
        change: super::BreakerChange,
    },
    /// A notification not tied to a call. Progress, and whatever else the
    /// server sends during a call (log messages, …), go to the call instead
    /// ([`PendingCall::send_and_follow`]). `ambiguous`: it came while calls
    /// of several client sessions were in flight, or on the stream of a call
    /// that has ended, so it may hold any one's data and goes to none of
    /// them (the gateway records it).
    ///
    /// [`PendingCall::send_and_follow`]: super::PendingCall::send_and_follow
    Notification {
        source: Source,
        message: Value,
        ambiguous: bool,
        /// Its share of the instance's queue budget (`[limits]
        /// max_queued_bytes`), given back once the event is handled.
        held: protocol::Held,
    },
    /// A server→client request (`sampling/createMessage`, `elicitation/create`,
    /// `roots/list`, …) with the server's own id. Answer it with
    /// [`Upstream::send`]. `origin` is the call it was made for, when known.
    ///
    /// [`Upstream::send`]: super::Upstream::send
    Request {
        source: Source,
        message: Value,
        origin: Option<Origin>,
        /// Its share of the instance's queue budget, as a notification's.
        held: protocol::Held,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not running because nobody needs it yet (a lazy server) or any more
    /// (stopped after its idle timeout); it starts on the next use. Holds
    /// the `InitializeResult` of its last run, if it ran.
    Idle(Option<Arc<Value>>),
    Starting,
    /// Initialized; holds the server's `InitializeResult`.
    Ready(Arc<Value>),
    Down(String),
    Stopped,
}

impl Status {
    /// The server's `InitializeResult`, while running or from its last run.
    pub fn info(&self) -> Option<Arc<Value>> {
        match self {
            Self::Ready(info) | Self::Idle(Some(info)) => Some(info.clone()),
            _ => None,
        }
    }
}
