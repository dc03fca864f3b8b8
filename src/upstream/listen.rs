//! The proxy's own `subscriptions/listen` to a 2026-07-28 server: that
//! revision has no `resources/subscribe` and sends list changes only on a
//! listen stream. While such a server runs, the proxy holds one stream to
//! it asking for every list change the server offers and for the resources
//! clients are subscribed to; what comes on it reaches the gateway as any
//! server's list changes and resource updates (lists read again,
//! subscribers told).
//!
//! A client's `resources/subscribe` to such a server adds its URI to the
//! stream: the stream is asked again with the new set (the old one
//! cancelled), and the subscription is answered once the server
//! acknowledged a stream asked since (refused if the server did not grant
//! it, refused the stream, or did not answer in time: the URI then leaves
//! the stream unless another subscription holds it, also when the caller
//! gives up waiting). The last subscriber's `resources/unsubscribe` takes
//! it out. The set outlives a restart: each start asks for it again, and
//! only the new process's acknowledgement answers a subscription.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

use super::UpstreamError;
use crate::protocol::{self, meta};

/// What the server acknowledged of the stream asked for at `asked`.
#[derive(Debug, Clone, Default)]
pub(super) struct Acknowledged {
    /// The generation of the set the stream asked for (0: none since the
    /// server started; a subscription always waits for a later one).
    asked: u64,
    /// The URIs it granted; `None`: it refused the stream.
    granted: Option<BTreeSet<String>>,
}

/// Who holds a URI on the stream.
#[derive(Debug, Default)]
struct Holders {
    /// A subscription to it was granted (and not ended since).
    granted: bool,
    /// Subscriptions to it waiting for the server's answer.
    waiting: usize,
}

/// The stream's state, shared by the supervisor (which holds the stream)
/// and the calls that change its set.
#[derive(Debug)]
pub(super) struct Listening {
    uris: Mutex<BTreeMap<String, Holders>>,
    /// Bumped at each change of the set of URIs.
    generation: AtomicU64,
    changed: Notify,
    acknowledged: watch::Sender<Acknowledged>,
    /// The upstream id of the stream in flight (0: none): not a call that
    /// keeps the server from idling, and the one acknowledgement taken.
    pub(super) id: AtomicU64,
}

impl Default for Listening {
    fn default() -> Self {
        Self {
            uris: Mutex::default(),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            acknowledged: watch::channel(Acknowledged::default()).0,
            id: AtomicU64::new(0),
        }
    }
}

/// A subscription waiting for the server's answer: if it ends without one
/// (refused, timed out, or its caller gone), it gives its hold on the URI
/// back, and the URI leaves the stream unless another subscription holds
/// it.
struct Waiting<'a> {
    listening: &'a Listening,
    uri: &'a str,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut uris = self.listening.uris();
        let Some(holders) = uris.get_mut(self.uri) else {
            return;
        };
        holders.waiting = holders.waiting.saturating_sub(1);
        holders.granted |= self.granted;
        if holders.granted || holders.waiting > 0 {
            return;
        }
        uris.remove(self.uri);
        drop(uris);
        self.listening.bump();
    }
}

impl Listening {
    fn uris(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Holders>> {
        self.uris
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The set changed: a new generation, and the stream is asked again.
    fn bump(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.notify_one();
        generation
    }

    /// A subscription to `uri` to `server`, a 2026-07-28 server, made on
    /// the proxy's listen stream: waits (at most `timeout`) for the server
    /// to acknowledge a stream asked since, and says whether it granted
    /// the URI.
    pub(super) async fn subscribe(
        &self,
        server: &str,
        uri: &str,
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        let generation = {
            let mut uris = self.uris();
            let holders = uris.entry(uri.to_owned()).or_default();
            holders.waiting += 1;
            let added = !holders.granted && holders.waiting == 1;
            drop(uris);
            if added {
                self.bump()
            } else {
                self.generation.load(Ordering::Acquire)
            }
        };
        let mut waiting = Waiting {
            listening: self,
            uri,
            granted: false,
        };
        let mut acknowledged = self.acknowledged.subscribe();
        let answer = tokio::time::timeout(timeout, async {
            loop {
                {
                    let ack = acknowledged.borrow_and_update();
                    if ack.asked >= generation.max(1) {
                        return ack.granted.clone();
                    }
                }
                if acknowledged.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        let why = match answer {
            Ok(Some(granted)) if granted.contains(uri) => {
                waiting.granted = true;
                return Ok(());
            }
            Ok(Some(_)) => "did not grant it on its listen stream".to_owned(),
            Ok(None) => "refused its listen stream".to_owned(),
            Err(_) => format!("did not acknowledge it within {}", super::humanize(timeout)),
        };
        drop(waiting);
        Err(UpstreamError::NotGranted {
            server: server.to_owned(),
            reason: format!("cannot subscribe to {}: it {why}", protocol::cut(uri, 200)),
        })
    }

    /// The last subscription to `uri` ended (the gateway asks only for the
    /// last one): it leaves the stream, unless a subscription to it is
    /// waiting (which then decides).
    pub(super) fn unsubscribe(&self, uri: &str) {
        let mut uris = self.uris();
        let Some(holders) = uris.get_mut(uri) else {
            return;
        };
        holders.granted = false;
        if holders.waiting > 0 {
            return;
        }
        uris.remove(uri);
        drop(uris);
        self.bump();
    }

    /// A new process of the server: no acknowledgement of the last one
    /// stands for it.
    pub(super) fn restart(&self) {
        self.id.store(0, Ordering::Release);
        self.settle(0, None);
    }

    /// What to ask a server that said `info` of itself for now: the
    /// generation of the set, and the filter (empty: nothing to ask).
    pub(super) fn to_ask(&self, info: &Value) -> (u64, Map<String, Value>) {
        let offers = |pointer: &str| {
            info.pointer(pointer)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let mut filter = Map::new();
        for (key, pointer) in [
            ("toolsListChanged", "/capabilities/tools/listChanged"),
            ("promptsListChanged", "/capabilities/prompts/listChanged"),
            (
                "resourcesListChanged",
                "/capabilities/resources/listChanged",
            ),
        ] {
            if offers(pointer) {
                filter.insert(key.to_owned(), Value::Bool(true));
            }
        }
        let uris = self.uris();
        let asked = self.generation.load(Ordering::Acquire);
        if offers("/capabilities/resources/subscribe") && !uris.is_empty() {
            let uris: Vec<&String> = uris.keys().collect();
            filter.insert("resourceSubscriptions".into(), json!(uris));
        }
        (asked, filter)
    }

    /// Wakes when the set changes (register it before [`Self::to_ask`]).
    pub(super) fn changes(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// The stream asked at generation `asked` is (`Some`: the URIs granted;
    /// none when there is nothing to ask) or is not (`None`: refused)
    /// acknowledged.
    pub(super) fn settle(&self, asked: u64, granted: Option<BTreeSet<String>>) {
        self.acknowledged
            .send_replace(Acknowledged { asked, granted });
    }

    /// Takes `message`, sent on the stream asked at `asked`: true if it is
    /// its acknowledgement (what it granted then settled).
    pub(super) fn acknowledgement(&self, asked: u64, message: &Value) -> bool {
        if protocol::Method::of(message) != Some(protocol::Method::SubscriptionsAcknowledged)
            || stream_of(message) != Some(self.id.load(Ordering::Acquire))
        {
            return false;
        }
        let granted = message
            .pointer("/params/notifications/resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        self.settle(asked, Some(granted));
        true
    }
}

/// The listen stream a notification was sent on (its `_meta`
/// subscription id), if it is one of the proxy's (an upstream id).
pub(super) fn stream_of(message: &Value) -> Option<u64> {
    message
        .get("params")?
        .get("_meta")?
        .get(meta::SUBSCRIPTION_ID)?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SERVER_INFO: &str = r#"{"capabilities":{"resources":{"subscribe":true}}}"#;

    fn info() -> Value {
        serde_json::from_str(SERVER_INFO).unwrap_or_default()
    }

    /// The URIs the stream would ask for now.
    fn asked(listening: &Listening) -> Value {
        let (_, filter) = listening.to_ask(&info());
        filter
            .get("resourceSubscriptions")
            .cloned()
            .unwrap_or_else(|| json!([]))
    }

    /// An acknowledgement of the stream in flight (`stream`) granting `uris`.
    fn ack(stream: u64, uris: Value) -> Value {
        json!({ "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": { "notifications": { "resourceSubscriptions": uris },
                "_meta": { meta::SUBSCRIPTION_ID: stream } } })
    }

    #[tokio::test]
    async fn a_subscription_given_up_leaves_the_stream_unless_granted_to_another() {
        let listening = Listening::default();
        listening.id.store(7, Ordering::Release);
        // Its caller gives up before any answer: the URI leaves.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            listening.subscribe("s", "a://1", Duration::from_secs(60)),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(asked(&listening), json!([]));
        // Granted to one, then refused to another (an acknowledgement
        // without it): the first keeps it.
        let first = listening.subscribe("s", "a://1", Duration::from_secs(60));
        tokio::pin!(first);
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        let (generation, _) = listening.to_ask(&info());
        assert!(listening.acknowledgement(generation, &ack(7, json!(["a://1"]))));
        assert!(first.await.is_ok());
        let second = listening.subscribe("s", "a://1", Duration::from_secs(60));
        tokio::pin!(second);
        // A new process: the last one's grant answers nobody.
        listening.restart();
        listening.id.store(8, Ordering::Release);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        assert!(listening.acknowledgement(generation, &ack(8, json!([]))));
        let refused = second.await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(asked(&listening), json!(["a://1"]));
        // The last subscriber's unsubscribe takes it out.
        listening.unsubscribe("a://1");
        assert_eq!(asked(&listening), json!([]));
    }

    #[test]
    fn only_the_stream_in_flight_is_acknowledged() {
        let listening = Listening::default();
        listening.id.store(7, Ordering::Release);
        // A server's acknowledgement naming another of the proxy's calls.
        assert!(!listening.acknowledgement(1, &ack(6, json!(["a://1"]))));
        assert!(!listening.acknowledgement(1, &ack(7, json!(["a://1"]))["params"].clone()));
        assert!(listening.acknowledgement(1, &ack(7, json!(["a://1"]))));
    }
}
