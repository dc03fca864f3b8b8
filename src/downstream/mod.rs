//! The transports toward clients: stdio and streamable HTTP.

mod admin;
mod console;
mod detached;
pub mod http;
mod listener;
mod slots;
pub mod stdio;
mod throttle;
mod tls;

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
}
