//! `subscriptions/listen`, the 2026-07-28 way to hear of changes: one
//! long request whose stream carries the list changes and resource updates
//! the client asked for, until the client ends it (closes the response,
//! or over stdio cancels it) or the proxy shuts down.
//!
//! Each resource asked for is subscribed to as a `resources/subscribe` of
//! the client's would be: through the chain (Cedar decides, the record
//! says), at the server that owns the URI. What the stream was granted is
//! acknowledged first (`notifications/subscriptions/acknowledged`); only
//! those notifications reach it, each tagged with the listen request's id,
//! and only from servers the client may use (per-client instances: its
//! own).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::protocol::{self, At as _, meta};

use super::failure::Failure;
use super::session::{Listen, MAX_SUBSCRIBED_URI_BYTES, MAX_SUBSCRIPTIONS};
use super::{Gateway, Session};

/// Listen streams one client may hold open at once: each holds up to
/// [`MAX_SUBSCRIPTIONS`] subscriptions and a place among the client's
/// requests in the works, so a client cannot make the proxy hold any number.
pub(super) const MAX_LISTENS_PER_CLIENT: usize = 16;

/// How long a listen request subscribes before it is acknowledged with
/// what was granted by then (a hung server delays it no longer).
const SUBSCRIBING: std::time::Duration = std::time::Duration::from_secs(30);
/// Subscriptions of one listen request asked for at once.
const SUBSCRIBING_AT_ONCE: usize = 8;

/// Each client's listen streams open (at most [`MAX_LISTENS_PER_CLIENT`];
/// bounded by the configured clients).
#[derive(Default)]
pub(super) struct Listens(std::sync::Mutex<HashMap<Arc<str>, usize>>);

/// A client's place among its listen streams, given back when dropped.
struct ListenSlot<'a> {
    listens: &'a Listens,
    client: Arc<str>,
}

impl Drop for ListenSlot<'_> {
    fn drop(&mut self) {
        let mut listens = super::lock(&self.listens.0);
        if let Some(count) = listens.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                listens.remove(&self.client);
            }
        }
    }
}

impl Listens {
    /// A place for one more listen stream of `client`, if it has one left.
    fn listen_slot(&self, client: &Arc<str>) -> Result<ListenSlot<'_>, Failure> {
        let mut listens = super::lock(&self.0);
        let count = listens.entry(client.clone()).or_default();
        if *count >= MAX_LISTENS_PER_CLIENT {
            return Err(Failure::TooManyListens(MAX_LISTENS_PER_CLIENT));
        }
        *count += 1;
        Ok(ListenSlot {
            listens: self,
            client: client.clone(),
        })
    }
}

/// What a listen request asks for: `params.notifications`.
fn asked(message: &Value, id: &Value) -> Result<Listen, Failure> {
    let invalid = |why: &str| Failure::InvalidParams(why.to_owned());
    let filter = message
        .at(&["params", "notifications"])
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("`params.notifications` must be an object"))?;
    let flag = |key: &str| match filter.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(on)) => Ok(*on),
        Some(_) => Err(invalid(&format!("`notifications.{key}` must be a boolean"))),
    };
    let mut uris = BTreeSet::new();
    match filter.get("resourceSubscriptions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= MAX_SUBSCRIPTIONS => {
            for item in items {
                let uri = item.as_str().ok_or_else(|| {
                    invalid("`notifications.resourceSubscriptions` must hold strings")
                })?;
                if uri.len() > MAX_SUBSCRIBED_URI_BYTES {
                    return Err(Failure::UriTooLong);
                }
                uris.insert(uri.to_owned());
            }
        }
        Some(_) => {
            return Err(invalid(&format!(
                "`notifications.resourceSubscriptions` must be an array of at most {MAX_SUBSCRIPTIONS} URIs"
            )));
        }
    }
    Ok(Listen {
        id: id.clone(),
        tools: flag("toolsListChanged")?,
        prompts: flag("promptsListChanged")?,
        resources: flag("resourcesListChanged")?,
        uris,
    })
}

impl Listens {
    /// Subscribes to `uris` on the client's behalf, a few at a time, each
    /// as its own `resources/subscribe` (through the chain, recorded with
    /// an id that names the listen request); each granted one goes into
    /// `granted` as it is (so that what was granted by a deadline is known
    /// if this is dropped then).
    async fn subscribe_all(
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        id: &Value,
        uris: BTreeSet<String>,
        granted: &std::sync::Mutex<BTreeSet<String>>,
    ) {
        use futures_util::StreamExt as _;
        let listen_id = match id {
            Value::String(text) => protocol::cut(text, 64).to_owned(),
            other => other.to_string(),
        };
        let subscribes = uris.into_iter().enumerate().map(|(n, uri)| {
            let subscribe = json!({ "jsonrpc": "2.0",
                "id": format!("portcullis-listen-{listen_id}-{n}"),
                "method": protocol::Method::ResourcesSubscribe.as_str(), "params": { "uri": uri } });
            async move {
                let reply = Box::pin(gateway.handle_request(session, subscribe)).await;
                if reply.is_some_and(|reply| reply.get("result").is_some()) {
                    super::lock(granted).insert(uri);
                }
            }
        });
        futures_util::stream::iter(subscribes)
            .buffer_unordered(SUBSCRIBING_AT_ONCE)
            .for_each(|()| async {})
            .await;
    }

    /// Runs one listen request: its result when the proxy ends it, `None`
    /// when the client did.
    pub(super) async fn listen(
        &self,
        gateway: &Arc<Gateway>,
        session: &Arc<Session>,
        message: &Value,
        id: &Value,
    ) -> Result<Option<Value>, Failure> {
        let mut listen = asked(message, id)?;
        let _slot = self.listen_slot(&session.client.name)?;
        session.listen_asked.store(true, Ordering::Relaxed);
        let uris = std::mem::take(&mut listen.uris);
        let granted = std::sync::Mutex::new(BTreeSet::new());
        // Those not answered by the deadline are not granted (the session's
        // subscriptions all end with it, late ones included).
        let subscribing = Self::subscribe_all(gateway, session, id, uris, &granted);
        let _ = tokio::time::timeout(SUBSCRIBING, subscribing).await;
        let granted = std::mem::take(&mut *super::lock(&granted));
        if session.closed.is_cancelled() {
            return Ok(None);
        }
        listen.uris = granted;
        session.acknowledge(listen);
        // The proxy stopping also closes every session: its shutdown is
        // looked at first, so that the stream is answered, not dropped.
        tokio::select! {
            biased;
            () = gateway.shutdown.cancelled() => Ok(Some(protocol::result(
                id.clone(),
                json!({ "_meta": { meta::SUBSCRIPTION_ID: id } }),
            ))),
            () = session.closed.cancelled() => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(notifications: Value) -> Value {
        json!({ "jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
            "params": { "notifications": notifications } })
    }

    #[test]
    fn a_filter_is_read_strictly_and_bounded() {
        let id = json!(7);
        let read = asked(
            &listen(
                json!({ "toolsListChanged": true, "resourceSubscriptions": ["a://1", "a://1"] }),
            ),
            &id,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(read.tools && !read.prompts && !read.resources);
        assert_eq!(read.uris.len(), 1, "duplicates count once");
        assert_eq!(
            read.filter(),
            json!({ "toolsListChanged": true, "resourceSubscriptions": ["a://1"] })
        );
        let many: Vec<String> = (0..=MAX_SUBSCRIPTIONS)
            .map(|i| format!("a://{i}"))
            .collect();
        for bad in [
            json!({ "jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen", "params": {} }),
            listen(json!({ "toolsListChanged": "yes" })),
            listen(json!({ "resourceSubscriptions": "a://1" })),
            listen(json!({ "resourceSubscriptions": [1] })),
            listen(json!({ "resourceSubscriptions": many })),
            listen(json!({ "resourceSubscriptions": ["x".repeat(MAX_SUBSCRIBED_URI_BYTES + 1)] })),
        ] {
            assert!(asked(&bad, &id).is_err(), "{bad}");
        }
    }
}
