//! How what a server sends is routed: replies to their calls, progress and
//! a call's own notifications to the call that waits, the rest to the
//! proxy as [`UpstreamEvent`]s.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::calls::Shared;
use super::events::{Origin, UpstreamEvent};
use super::link::{Inbox, Link};
use crate::protocol::{self, At, Kind, Method};

impl Shared {
    /// Routes one message the server sent. `related` is the id of our request
    /// whose HTTP response stream carried it, when the transport knows.
    async fn dispatch(&self, message: Value, related: Option<u64>) {
        match protocol::classify(&message) {
            Some(Kind::Response | Kind::ErrorResponse) => {
                let Some(id) = message.get("id").and_then(Value::as_u64) else {
                    tracing::debug!(server = %self.name, "response with an id we never sent");
                    return;
                };
                let pending = self.pending().remove(&id);
                match pending {
                    Some(pending) => {
                        // The caller may have given up (timeout, cancellation).
                        let _ = pending.reply.send(Ok(message));
                    }
                    None => tracing::debug!(server = %self.name, id, "late or unknown response"),
                }
            }
            Some(Kind::Request) => {
                if Method::of(&message) == Some(Method::Ping) {
                    let id = message.get("id").cloned().unwrap_or(Value::Null);
                    if let Some(link) = self.current_link() {
                        let _ = link.send(protocol::result(id, json!({}))).await;
                    }
                    return;
                }
                let origin = self.origin_for(related);
                let held = self.queued.take(protocol::held_bytes(&message)).await;
                let event = UpstreamEvent::Request {
                    source: self.source(),
                    message,
                    origin,
                    held,
                };
                let _ = self.events.send(event).await;
            }
            Some(Kind::Notification) => self.dispatch_notification(message, related).await,
            None => tracing::debug!(server = %self.name, "ignored a message that is not JSON-RPC"),
        }
    }

    /// Routes a notification the server sent (see [`Shared::dispatch`]).
    async fn dispatch_notification(&self, mut message: Value, related: Option<u64>) {
        // A 2026-07-28 server's protocol keys (the tag of the proxy's listen
        // stream, say) are the proxy's business: never passed on.
        // (An acknowledgement is the proxy's alone, and read by its tag.)
        let acknowledgement = Method::of(&message) == Some(Method::SubscriptionsAcknowledged);
        if self.era.stateless() && !acknowledgement && protocol::strip_protocol_meta(&mut message) {
            let params = message.get_mut("params").and_then(Value::as_object_mut);
            if let Some(params) = params
                && params
                    .get("_meta")
                    .and_then(Value::as_object)
                    .is_some_and(serde_json::Map::is_empty)
            {
                params.remove("_meta");
            }
        }
        let mut ambiguous = false;
        match Method::of(&message) {
            Some(Method::Progress) => {
                let Some(token) = message
                    .get("params")
                    .and_then(|p| p.get("progressToken"))
                    .and_then(Value::as_u64)
                else {
                    return;
                };
                let restored = {
                    let pending = self.pending();
                    pending
                        .get(&token)
                        .and_then(|p| Some((p.progress_token.clone()?, p.follow.clone())))
                };
                let Some((client_token, follow)) = restored else {
                    tracing::debug!(server = %self.name, "progress for a call no longer in flight");
                    return;
                };
                message.put(&["params", "progressToken"], client_token);
                let held = self.queued.take(protocol::held_bytes(&message)).await;
                let _ = follow.send((message, held)).await;
                return;
            }
            // Handled by the proxy itself (lists read again,
            // subscribers told, the server's request withdrawn).
            Some(
                Method::ToolsListChanged
                | Method::PromptsListChanged
                | Method::ResourcesListChanged
                | Method::ResourceUpdated
                | Method::Cancelled,
            ) => {}
            // Of the proxy's own listen stream to a 2026-07-28
            // server: what it granted goes to that stream alone.
            Some(Method::SubscriptionsAcknowledged) => {
                let stream = self.listening.id.load(std::sync::atomic::Ordering::Acquire);
                let follow = super::listen::stream_of(&message)
                    .filter(|id| *id == stream)
                    .and_then(|id| self.pending().get(&id).map(|p| p.follow.clone()));
                match follow {
                    Some(follow) => {
                        let held = self.queued.take(protocol::held_bytes(&message)).await;
                        let _ = follow.send((message, held)).await;
                    }
                    None => {
                        tracing::debug!(server = %self.name, "acknowledgement of no listen stream in flight");
                    }
                }
                return;
            }
            // Anything else sent while one client session has calls
            // in flight belongs to that session (to the call whose
            // response stream carried it, when the transport tells).
            _ => {
                let follow = self
                    .call_for(related)
                    .and_then(|id| self.pending().get(&id).map(|p| p.follow.clone()));
                if let Some(follow) = follow {
                    let held = self.queued.take(protocol::held_bytes(&message)).await;
                    let _ = follow.send((message, held)).await;
                    return;
                }
                // A 2026-07-28 server logs only for a request that asked:
                // one that belongs to no call in flight is nobody else's.
                if self.era.stateless() && Method::of(&message) == Some(Method::LogMessage) {
                    tracing::debug!(server = %self.name, "a log message of no call in flight dropped");
                    return;
                }
                // Calls of several sessions in flight, or a call
                // the transport named that has ended: it could hold
                // any one client's data, so it goes to none of them.
                let pending = self.pending();
                let ended_call = related.is_some_and(|id| !pending.contains_key(&id));
                ambiguous = ended_call || pending.values().any(|p| p.origin.is_some());
            }
        }
        let held = self.queued.take(protocol::held_bytes(&message)).await;
        let event = UpstreamEvent::Notification {
            source: self.source(),
            message,
            ambiguous,
            held,
        };
        let _ = self.events.send(event).await;
    }

    /// Which client call a server→client message belongs to: the call whose
    /// response stream carried it, or else a call of the only client session
    /// with calls in flight. With several sessions in flight nobody can tell,
    /// and the message is not guessed onto one of them.
    fn call_for(&self, related: Option<u64>) -> Option<u64> {
        let pending = self.pending();
        if let Some(id) = related {
            return pending.get(&id).and_then(|p| p.origin.as_ref()).map(|_| id);
        }
        let mut calls = pending
            .iter()
            .filter_map(|(id, p)| p.origin.as_ref().map(|origin| (*id, origin.session)));
        let (first, session) = calls.next()?;
        calls.all(|(_, other)| other == session).then_some(first)
    }

    fn origin_for(&self, related: Option<u64>) -> Option<Origin> {
        let id = self.call_for(related)?;
        self.pending().get(&id).and_then(|p| p.origin.clone())
    }
}

impl Inbox for Shared {
    fn server(&self) -> &Arc<str> {
        &self.name
    }

    fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    fn dispatch(&self, message: Value, related: Option<u64>) -> BoxFuture<'_, ()> {
        Shared::dispatch(self, message, related).boxed()
    }

    fn in_flight(&self, id: u64) -> bool {
        self.pending().contains_key(&id)
    }

    fn fail_call(&self, id: u64, reason: &str) {
        Shared::fail_call(self, id, reason);
    }

    fn current_link(&self) -> Option<Arc<dyn Link>> {
        Shared::current_link(self)
    }
}
