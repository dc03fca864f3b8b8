//! A JSON document read from a peer (an identity provider's or an
//! authorization server's metadata, a key set, an introspection answer, a
//! server's protected resource metadata): bounded in size, never following
//! a redirect, only from `https://` (or `http://` on loopback) URLs; an
//! error names the URL, never a token.

use serde_json::Value;

use crate::config::secure_url;

use super::HttpClient;

/// The most a document may weigh.
const MAX_DOCUMENT: usize = 512 * 1024;

/// A request to `url`, if the guard lets it be made.
pub fn request(
    http: &HttpClient,
    method: reqwest::Method,
    url: &str,
) -> Result<reqwest::RequestBuilder, String> {
    http.request_to(method, url)
        .map_err(|err| format!("{url}: {err}"))
}

/// A JSON object read with `request`, from `url`.
pub async fn json(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    if !secure_url(url) {
        return Err(format!(
            "`{url}` is not https:// (http:// is taken only on loopback)"
        ));
    }
    let mut response = super::send(request.header(reqwest::header::ACCEPT, "application/json"))
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
        .map_err(|err| format!("{url}: {}", super::without_url(&err)))?
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
