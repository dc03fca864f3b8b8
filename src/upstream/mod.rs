//! Connections to the MCP servers behind the proxy.
//!
//! An [`Upstream`] is Portcullis's MCP client toward one server. It owns the
//! server's lifecycle (start, `initialize`, restart with backoff when the
//! server dies), remaps request ids and progress tokens so that many client
//! sessions can share one server, and reports what the server sends on its
//! own (notifications, server→client requests) as [`UpstreamEvent`]s.
//!
//! How bytes reach the server is a link: `process` (a local command over
//! stdio), `container` (an image run through the Docker engine, stdio
//! attached) and `remote` (streamable HTTP). What the links and the client
//! share is in `link`; the links know nothing else of the client.
//!
//! The client itself: `client` ([`Upstream`], what the proxy holds),
//! `calls` (the calls in flight, [`PendingCall`]), `dispatch` (where what
//! the server sends goes), `supervisor` (start, restart, idle stop) and
//! `connect` (the link the config names). Tests replace that last one with
//! a scripted link: see `scripted`.

mod breaker;
mod calls;
mod client;
mod connect;
pub mod container;
mod dispatch;
mod era;
mod events;
mod link;
mod listen;
pub mod oci;
mod process;
mod remote;
mod remote_shared;
mod remote_sse;
mod remote_token;
#[cfg(test)]
pub(crate) mod scripted;
#[doc(hidden)]
pub mod sse;
mod supervisor;
#[cfg(test)]
mod tests;

pub use breaker::{Admitted, BreakerChange, BreakerState};
pub use calls::{Call, PendingCall, Round};
pub use client::Upstream;
pub use events::{Origin, Source, Status, UpstreamEvent};
pub use remote_token::UserTokens;

use std::time::Duration;

/// Failures talking to an upstream server. Messages name the server and are
/// safe to show a client.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("server `{server}` is not available: {reason}")]
    Unavailable { server: String, reason: String },
    /// The server answered, refusing the credential the request carried
    /// (HTTP 401 or 403): it is up, and its breaker does not count it.
    #[error("server `{server}` is not available: {reason}")]
    Rejected { server: String, reason: String },
    #[error("server `{server}` did not answer within {}", humanize(*after))]
    Timeout { server: String, after: Duration },
    #[error("server `{server}` failed to start: {reason}")]
    Start { server: String, reason: String },
    /// A client's instance of a server that acts as its user, without a
    /// token for the user (the client has no live access token, or the
    /// authorization server refused to exchange it): opened again at the
    /// client's next call, not retried before.
    #[error("server `{server}` acts as the client's user and has no token for it: {reason}")]
    NeedsClient {
        server: String,
        reason: String,
        /// What the client is told, where not `reason`: fixed words, and
        /// perhaps a link to sign in.
        told: Option<Told>,
    },
    /// The client's user must sign in to the server: `told` says so (and
    /// is what a record keeps); `link` is where, which only the client's
    /// answer carries (never a log or a record: it is the user's alone).
    #[error("server `{server}` is not available: {told}")]
    SignInNeeded {
        server: String,
        told: String,
        link: String,
    },
    #[error("server `{server}` refused the handshake: {reason}")]
    Handshake { server: String, reason: String },
    /// The proxy refused the server's reply (`limits`: too large).
    #[error("{reason}")]
    Refused { server: String, reason: String },
    /// A 2026-07-28 server did not grant a subscription on the proxy's
    /// listen stream.
    #[error("server `{server}` {reason}")]
    NotGranted { server: String, reason: String },
    /// The server's breaker is open: its calls failed `failures` times in
    /// a row and it did not answer the proxy either; calls are refused at
    /// once until it does, which the proxy asks again in `left` (zero: it
    /// is asking now). Why the last call failed is in the audit log's
    /// `server_circuit_open` record, not here: it was another client's call.
    #[error("server `{server}` is failing: its calls are refused until it answers the proxy again (asked {}; {failures} calls in a row failed)", breaker_left(*left))]
    BreakerOpen {
        server: String,
        left: Duration,
        failures: u32,
    },
}

/// When the proxy asks an open breaker's server again, as a refusal says it.
fn breaker_left(left: Duration) -> String {
    if left.is_zero() {
        return "now".to_owned();
    }
    // Whole seconds, rounded up: "in 0s" would say nothing.
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    format!("in {seconds}s")
}

impl UpstreamError {
    pub fn code(&self) -> i64 {
        match self {
            Self::Timeout { .. } => crate::protocol::code::UPSTREAM_TIMEOUT,
            Self::Refused { .. } | Self::NotGranted { .. } => crate::protocol::code::INTERNAL_ERROR,
            _ => crate::protocol::code::UPSTREAM_UNAVAILABLE,
        }
    }
}

/// What a client whose instance has no token for its user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub text: String,
    /// A link to sign in, the client's alone.
    pub link: Option<String>,
}

pub(crate) fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}
