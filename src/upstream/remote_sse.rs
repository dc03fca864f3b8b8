//! `remote` upstreams that speak HTTP+SSE, the transport of protocol
//! 2024-11-05 (`remote = { url, transport = "sse" }`).
//!
//! At each start the proxy opens the server's stream (`GET url`) and waits
//! for its first event, `endpoint`, which names where messages go. That
//! endpoint must be on `url`'s own origin (scheme, host and port): a server
//! naming another would have the proxy send every message, and the
//! headers and token the operator set for it, there. Each message is then
//! POSTed to it, and everything the server sends comes on the stream. The
//! requests go through the same guarded client as every remote server's
//! (`[egress]`: no redirect followed, every address checked as it is
//! connected to). The stream ending ends the link (the supervisor starts
//! again, with a new stream and session); a POST answered 404 says the
//! server forgot the session, which ends it too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::UpstreamError;
use super::link::{Connected, Inbox, Link, LinkError};
use super::remote_shared::{Sent, content_type};
use super::sse::{SseEvent, SseParser};
use crate::config::LimitsConfig;
use crate::egress::{self, HttpClient};
use crate::protocol;

/// The most of a message POST's answer read (`Accepted`, as a rule).
const POST_ANSWER_BYTES: usize = 64 * 1024;

/// How long the server may take to open its stream and name its endpoint.
const ENDPOINT_WAIT: Duration = Duration::from_secs(30);

struct SseLink {
    client: HttpClient,
    /// Where messages are POSTed: the endpoint the stream named.
    endpoint: reqwest::Url,
    sent: Sent,
    closed: CancellationToken,
}

impl SseLink {
    async fn post(&self, message: &Value) -> Result<(), LinkError> {
        let (headers, token) = self.sent.headers();
        let request = self
            .client
            .request(reqwest::Method::POST, self.endpoint.clone())
            .map_err(|err| LinkError::Unreachable(err.to_string()))?
            .headers(headers)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(message).unwrap_or_default());
        let response = egress::send(request).await.map_err(|err| match err {
            egress::EgressError::Redirect { .. } => LinkError::Unreachable(err.to_string()),
            err => LinkError::Unreachable(format!(
                "cannot reach {}: {err}",
                egress::origin(&self.endpoint)
            )),
        })?;
        let status = response.status();
        self.sent.refused(status, token.as_ref());
        if status == reqwest::StatusCode::NOT_FOUND {
            // The server forgot the session: start over with a new stream.
            self.closed.cancel();
            return Err(LinkError::Closed("the server ended the session"));
        }
        if !status.is_success() {
            return Err(LinkError::Status(status));
        }
        // What the body says is nothing (replies come on the stream); read
        // to its end, bounded, the connection carries the next message.
        let _ = egress::read_limited(response, POST_ANSWER_BYTES).await;
        Ok(())
    }
}

struct SseHandle(Arc<SseLink>);

impl Link for SseHandle {
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), LinkError>> {
        async move { self.0.post(&message).await }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        // The stream's reader stops, and its connection closes: that is
        // the session's end for an HTTP+SSE server.
        self.0.closed.cancel();
        futures_util::future::ready(()).boxed()
    }
}

/// Opens the server's stream and waits for its endpoint; then reads the
/// stream on a task of its own.
pub(super) async fn open(
    client: HttpClient,
    url: reqwest::Url,
    sent: Sent,
    limits: LimitsConfig,
    inbox: Arc<dyn Inbox>,
    closed: CancellationToken,
) -> Result<Connected, UpstreamError> {
    let start_error = |reason: String| UpstreamError::Start {
        server: inbox.server().to_string(),
        reason,
    };
    let (headers, token) = sent.headers();
    let request = client
        .request(reqwest::Method::GET, url.clone())
        .map_err(|err| start_error(err.to_string()))?
        .headers(headers)
        .header(ACCEPT, "text/event-stream");
    let opened = async {
        let response = egress::send(request).await.map_err(|err| match err {
            egress::EgressError::Redirect { .. } => err.to_string(),
            err => format!("cannot reach {}: {err}", egress::origin(&url)),
        })?;
        let status = response.status();
        sent.refused(status, token.as_ref());
        if !status.is_success() {
            return Err(format!(
                "the server answered HTTP {status} to the opening of its SSE stream"
            ));
        }
        let content_type = content_type(&response);
        if !content_type.starts_with("text/event-stream") {
            return Err(format!(
                "the server answered its SSE stream's opening with content type `{content_type}`"
            ));
        }
        endpoint(response, &url, limits.max_message_bytes).await
    };
    let (endpoint, response, parser, early) = tokio::time::timeout(ENDPOINT_WAIT, opened)
        .await
        .map_err(|_| {
            start_error(format!(
                "the server named no endpoint on its SSE stream within {}",
                super::humanize(ENDPOINT_WAIT)
            ))
        })?
        .map_err(start_error)?;
    tracing::debug!(server = %inbox.server(), endpoint = %egress::origin(&endpoint), "the server's SSE stream is open");
    let link = Arc::new(SseLink {
        client,
        endpoint,
        sent,
        closed: closed.clone(),
    });
    let reader = Reader {
        inbox,
        limits,
        closed: closed.clone(),
    };
    tokio::spawn(reader.run(response, parser, early));
    Ok(Connected {
        link: Arc::new(SseHandle(link)),
        closed,
    })
}

/// The stream read until its `endpoint` event: the endpoint (resolved
/// against `url`, on its origin), the stream and its parser, and the events
/// that came in the same chunk after it.
async fn endpoint(
    mut response: reqwest::Response,
    url: &reqwest::Url,
    limit: usize,
) -> Result<(reqwest::Url, reqwest::Response, SseParser, Vec<SseEvent>), String> {
    let mut parser = SseParser::with_endpoints(limit);
    let mut events = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                return Err("the server's SSE stream ended before naming an endpoint".into());
            }
            Err(err) => {
                return Err(format!(
                    "the server's SSE stream failed before naming an endpoint: {}",
                    egress::without_url(&err)
                ));
            }
        };
        parser.feed(&chunk, &mut events);
        let mut drained = events.drain(..);
        // The first event must name the endpoint.
        match drained.next() {
            None => {}
            Some(SseEvent::Endpoint(data)) => {
                let endpoint = on_origin(url, &data)?;
                let rest = drained.collect();
                return Ok((endpoint, response, parser, rest));
            }
            Some(SseEvent::Data(_) | SseEvent::TooLarge) => {
                return Err(
                    "the server sent a message on its SSE stream before naming its endpoint".into(),
                );
            }
        }
    }
}

/// The endpoint an `endpoint` event names, resolved against the stream's
/// URL; refused unless it is on that URL's origin.
fn on_origin(url: &reqwest::Url, data: &[u8]) -> Result<reqwest::Url, String> {
    let named = std::str::from_utf8(data)
        .ok()
        .map(str::trim)
        .filter(|named| !named.is_empty())
        .ok_or("the server's endpoint event names no endpoint")?;
    let endpoint = url
        .join(named)
        .map_err(|_| "the server's endpoint event names no URL".to_owned())?;
    if endpoint.origin() != url.origin() {
        return Err(format!(
            "the server named an endpoint on another origin ({}, not {}): refused, as it would be sent every message and this server's headers",
            egress::origin(&endpoint),
            egress::origin(url)
        ));
    }
    Ok(endpoint)
}

/// Reads the stream: each message to the inbox, in order.
struct Reader {
    inbox: Arc<dyn Inbox>,
    limits: LimitsConfig,
    closed: CancellationToken,
}

impl Reader {
    async fn run(
        self,
        mut response: reqwest::Response,
        mut parser: SseParser,
        mut events: Vec<SseEvent>,
    ) {
        loop {
            for event in std::mem::take(&mut events) {
                self.take(event).await;
            }
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                () = self.closed.cancelled() => return,
            };
            let Ok(Some(chunk)) = chunk else {
                tracing::info!(server = %self.inbox.server(), "the server's SSE stream ended");
                // The link is dead: the supervisor starts it again.
                self.closed.cancel();
                return;
            };
            parser.feed(&chunk, &mut events);
        }
    }

    async fn take(&self, event: SseEvent) {
        let server = self.inbox.server();
        match event {
            SseEvent::Data(data) => match protocol::parse(&data, self.limits.max_depth) {
                Ok(message) => self.inbox.dispatch(message, None).await,
                Err(error) => {
                    tracing::warn!(%server, %error, "dropped an event from the server");
                }
            },
            SseEvent::TooLarge => {
                tracing::warn!(%server, "dropped an event from the server: too large");
            }
            // Messages keep going where the first one said.
            SseEvent::Endpoint(_) => {
                tracing::warn!(%server, "ignored the server's second endpoint event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_must_stay_on_the_streams_origin() {
        let url = reqwest::Url::parse("http://127.0.0.1:8000/sse").unwrap();
        let same = on_origin(&url, b"/messages/?session_id=abc").unwrap();
        assert_eq!(
            same.as_str(),
            "http://127.0.0.1:8000/messages/?session_id=abc"
        );
        let relative = on_origin(&url, b"messages?session_id=abc").unwrap();
        assert_eq!(
            relative.as_str(),
            "http://127.0.0.1:8000/messages?session_id=abc"
        );
        for elsewhere in [
            &b"http://127.0.0.1:8001/messages"[..],
            b"https://127.0.0.1:8000/messages",
            b"http://evil.example/messages",
            b"//evil.example/messages",
            b"http://user@evil.example:8000/messages",
        ] {
            let refused = on_origin(&url, elsewhere).unwrap_err();
            assert!(refused.contains("another origin"), "{refused}");
        }
        assert!(on_origin(&url, b"  ").is_err());
        assert!(on_origin(&url, b"\xff").is_err());
    }
}
