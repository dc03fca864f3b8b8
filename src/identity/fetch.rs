//! What the proxy reads from an identity provider over HTTP: its metadata,
//! its key set, its introspection answers. Each read is bounded in time
//! and size, never follows a redirect, and goes only to `https://` (or
//! `http://` on loopback) URLs; an error names the URL, never a token.
//!
//! The hosts the config writes (issuers, key set and introspection URLs)
//! are the operator's; any other host is one the provider's metadata
//! named, and the egress guard refuses it at loopback, private, link-local
//! or reserved addresses unless `[egress] allow` names them.

use std::time::Duration;

use crate::config::OauthConfig;
use crate::egress::{HttpClient, Timeouts, Trust};

/// The HTTP client for the identity providers of `config`.
pub(super) fn client(config: &OauthConfig) -> Result<HttpClient, String> {
    let mut written = Vec::new();
    for provider in &config.providers {
        let urls = [
            Some(&provider.issuer),
            provider.jwks_uri.as_ref(),
            provider
                .introspection
                .as_ref()
                .and_then(|introspection| introspection.endpoint.as_ref()),
        ];
        written.extend(
            urls.into_iter()
                .flatten()
                .filter_map(|url| reqwest::Url::parse(url).ok()),
        );
    }
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        total: Some(Duration::from_secs(10)),
    };
    HttpClient::new(&config.egress, Trust::Learned, &written, timeouts)
        .map_err(|err| err.to_string())
}

pub(super) use crate::egress::document::{json, named, origin_and_path, request};
