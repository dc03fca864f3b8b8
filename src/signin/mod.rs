//! Signing users in to the third-party servers behind the proxy: OAuth
//! toward servers, per user (issue 47, in slices).
//!
//! Here now: what the proxy learns from a remote server that asks for
//! sign-in, as the MCP authorization specification lays out
//! ([`discover`]): the server's `401` and its `WWW-Authenticate` challenge,
//! its protected resource metadata (RFC 9728), and its authorization
//! server's metadata (RFC 8414, or OpenID Connect discovery), each checked
//! before anything is believed. `portcullis oauth discover SERVER` shows it.
//! Then the flow (`flow`): the proxy registers as a client, sends the user
//! to sign in with PKCE and the resource indicator, checks the answer, and
//! exchanges, refreshes and revokes the user's tokens, which the [`vault`]
//! keeps sealed (`portcullis oauth login`, `revoke`, `status`).
//!
//! Every URL here but the server's own was named by a peer (the server, its
//! metadata, its authorization server): each is reached as such, through
//! the egress guard, which refuses loopback, private, link-local and
//! reserved addresses unless `[egress] allow` names them.

mod challenge;
pub mod client;
mod current;
mod discover;
mod flow;
pub mod known;
pub mod page;
pub mod pending;
mod removed;
pub mod token;
pub mod vault;

pub use challenge::{Challenge, parse_bearer};
pub use client::{Ways, keep_registration, registration};
pub use current::{Current, REFRESH_BEFORE, SignInError, SignIns};
pub use discover::{
    DiscoverError, Discovered, Expect, discover, discovery_client, discovery_client_of, learn,
};
pub use flow::{
    DESKTOP, FlowError, Registration, Started, answered, exchange, refresh, register, revoke, start,
};

/// The remote settings of a `sign_in` server at `url`, listed as `ops`,
/// for the module's tests.
#[cfg(test)]
pub(crate) fn test_remote(
    url: &str,
    egress: crate::config::EgressConfig,
) -> crate::config::RemoteSpec {
    crate::config::RemoteSpec {
        url: url.to_owned(),
        transport: crate::config::RemoteTransport::default(),
        headers: Vec::new(),
        oauth: None,
        sign_in: Some(Box::new(crate::config::SignInSpec::listed_as("ops"))),
        learned: false,
        egress,
    }
}

/// An HTTP client for the module's tests: loopback allowed, short timeouts.
#[cfg(test)]
pub(crate) fn test_http() -> crate::egress::HttpClient {
    let egress = crate::config::EgressConfig {
        allow: std::sync::Arc::from(vec![
            "127.0.0.0/8"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid range")),
        ]),
    };
    crate::egress::HttpClient::new(
        &egress,
        crate::egress::Trust::Learned,
        &[],
        crate::egress::Timeouts {
            connect: std::time::Duration::from_secs(5),
            total: Some(std::time::Duration::from_secs(10)),
        },
    )
    .unwrap_or_else(|err| panic!("a test client: {err}"))
}
