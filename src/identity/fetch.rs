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

use serde_json::Value;

use crate::config::{OauthConfig, secure_url};
use crate::egress::{self, HttpClient, Timeouts, Trust};

/// The most a provider's document may weigh.
const MAX_DOCUMENT: usize = 512 * 1024;

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

/// A request to `url`, if the guard lets it be made.
pub(super) fn request(
    http: &HttpClient,
    method: reqwest::Method,
    url: &str,
) -> Result<reqwest::RequestBuilder, String> {
    http.request_to(method, url)
        .map_err(|err| format!("{url}: {err}"))
}

/// A JSON object read with `request`, from `url`.
pub(super) async fn json(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    if !secure_url(url) {
        return Err(format!(
            "`{url}` is not https:// (http:// is taken only on loopback)"
        ));
    }
    let mut response = egress::send(request.header(reqwest::header::ACCEPT, "application/json"))
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("{url}: {}", egress::without_url(&err)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("{url} sent more than {MAX_DOCUMENT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(format!("{url} did not send a JSON object")),
    }
}
