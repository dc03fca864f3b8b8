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
//! attached) and `remote` (streamable HTTP).

mod client;
pub mod container;
mod process;
mod remote;
mod sse;

pub use client::{Origin, PendingCall, Source, Status, Upstream, UpstreamEvent};

use std::time::Duration;

/// Failures talking to an upstream server. Messages name the server and are
/// safe to show a client.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("server `{server}` is not available: {reason}")]
    Unavailable { server: String, reason: String },
    #[error("server `{server}` did not answer within {}", humanize(*after))]
    Timeout { server: String, after: Duration },
    #[error("server `{server}` failed to start: {reason}")]
    Start { server: String, reason: String },
    #[error("server `{server}` refused the handshake: {reason}")]
    Handshake { server: String, reason: String },
    /// The proxy refused the server's reply (`limits`: too large).
    #[error("{reason}")]
    Refused { server: String, reason: String },
}

impl UpstreamError {
    pub fn code(&self) -> i64 {
        match self {
            Self::Timeout { .. } => crate::protocol::code::UPSTREAM_TIMEOUT,
            Self::Refused { .. } => crate::protocol::code::INTERNAL_ERROR,
            _ => crate::protocol::code::UPSTREAM_UNAVAILABLE,
        }
    }
}

pub(crate) fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}
