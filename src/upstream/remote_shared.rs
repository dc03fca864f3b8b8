//! What both `remote` links share (streamable HTTP in `remote`, HTTP+SSE
//! in `remote_sse`): what goes with every request, and a response's
//! content type.

use std::sync::Arc;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

/// What goes with every request to a remote server: the configured
/// headers, and the server's own token.
pub(super) struct Sent {
    pub(super) headers: HeaderMap,
    /// The server's own access token (`remote = { oauth = … }`), if any.
    pub(super) token: Option<Arc<super::remote_token::ServerToken>>,
}

impl Sent {
    /// The headers, the token's included; and the token's header as sent
    /// (told back to the token if the server refuses it).
    pub(super) fn headers(&self) -> (HeaderMap, Option<HeaderValue>) {
        let mut headers = self.headers.clone();
        let token = self.token.as_ref().map(|token| token.header());
        if let Some(token) = &token {
            headers.insert(reqwest::header::AUTHORIZATION, token.clone());
        }
        (headers, token)
    }

    /// The server answered 401 to a request that carried `sent`: it no
    /// longer takes its token (revoked there, rotated), so the next request
    /// gets a new one.
    pub(super) fn refused(&self, status: reqwest::StatusCode, sent: Option<&HeaderValue>) {
        if status == reqwest::StatusCode::UNAUTHORIZED
            && let (Some(token), Some(sent)) = (&self.token, sent)
        {
            token.refused(sent);
        }
    }
}

/// A response's content type, lowercase (`""` when it has none).
pub(super) fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}
