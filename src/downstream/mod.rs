//! The transports toward clients: stdio and streamable HTTP.

mod admin;
mod console;
pub mod http;
pub mod stdio;

/// Failures of a downstream transport.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("stdio failed: {0}")]
    Stdio(std::io::Error),
}
