//! What the proxy reads from an identity provider over HTTP: its metadata,
//! its key set, its introspection answers. Each read is bounded in time
//! and size, never follows a redirect, and goes only to `https://` (or
//! `http://` on loopback) URLs; an error names the URL, never a token.

use std::time::Duration;

use serde_json::Value;

use crate::config::secure_url;

/// The most a provider's document may weigh.
const MAX_DOCUMENT: usize = 512 * 1024;

/// The HTTP client for identity providers.
pub(super) fn client() -> Result<reqwest::Client, String> {
    // reqwest is built without a bundled crypto provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("cannot build an HTTP client: {err}"))
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
    let mut response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| format!("{url}: {}", err.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("{url}: {}", err.without_url()))?
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
