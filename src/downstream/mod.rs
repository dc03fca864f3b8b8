//! The transports toward clients: stdio and streamable HTTP.
//!
//! HTTP, from the top: `http` assembles the router and serves it; its
//! routes are `mcp` (clients), `admin` (the auditors' API) and `console`
//! (the auditors' pages), each behind `auth`; all share `state` (with the
//! `sessions` and console `logins` tables); `layout` frames the console's
//! pages; `listener` and `tls` carry the connections. Under `/mcp`, a
//! handshake session's requests are `mcp`'s and a 2026-07-28 request's
//! (no session) `stateless`'s; both answer through `messages`.

mod admin;
mod auth;
#[doc(hidden)]
pub mod authority;
mod console;
mod detached;
pub mod http;
mod layout;
mod listener;
mod logins;
mod mcp;
mod messages;
mod resource;
pub mod sealed;
mod sessions;
mod signin;
mod slots;
mod sse;
mod state;
mod stateless;
pub mod stdio;
mod throttle;
mod tls;
mod unread;

/// Failures of a downstream transport.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("stdio failed: {0}")]
    Stdio(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("[oauth]: {0}")]
    Oauth(String),
    /// The session keys (`[proxy] session_keys`) cannot be used.
    #[error("{0}")]
    SessionKeys(String),
}
