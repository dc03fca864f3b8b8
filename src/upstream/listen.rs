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
//! acknowledged a stream with that URI (refused if the server did not
//! grant it). `resources/unsubscribe` takes it out. The set outlives a
//! restart: each start asks for it again.

use std::collections::BTreeSet;
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
    /// The generation of the set the stream asked for.
    asked: u64,
    /// The URIs it granted; `None`: it ended or refused the stream.
    granted: Option<BTreeSet<String>>,
}

/// The stream's state, shared by the supervisor (which holds the stream)
/// and the calls that change its set.
#[derive(Debug)]
pub(super) struct Listening {
    uris: Mutex<BTreeSet<String>>,
    /// Bumped at each change of `uris`.
    generation: AtomicU64,
    changed: Notify,
    acknowledged: watch::Sender<Acknowledged>,
    /// The upstream id of the stream in flight (0: none): not a call that
    /// keeps the server from idling.
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

impl Listening {
    fn uris(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.uris
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the set (`add` or take out `uri`); the generation whose
    /// acknowledgement says whether it was granted.
    fn change(&self, uri: &str, add: bool) -> u64 {
        let mut uris = self.uris();
        let changed = if add {
            uris.insert(uri.to_owned())
        } else {
            uris.remove(uri)
        };
        let generation = if changed {
            self.generation.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.generation.load(Ordering::Acquire)
        };
        drop(uris);
        if changed {
            self.changed.notify_one();
        }
        generation
    }
}

impl Listening {
    /// A client's `resources/subscribe` or `unsubscribe` of `uri` to
    /// `server`, a 2026-07-28 server, done on the proxy's listen stream. A
    /// subscription waits (at most `timeout`) for the server to
    /// acknowledge a stream with it.
    pub(super) async fn change_and_wait(
        &self,
        server: &str,
        uri: &str,
        subscribe: bool,
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        let generation = self.change(uri, subscribe);
        if !subscribe {
            return Ok(());
        }
        let mut acknowledged = self.acknowledged.subscribe();
        let answer = tokio::time::timeout(timeout, async {
            loop {
                {
                    let ack = acknowledged.borrow_and_update();
                    if ack.asked >= generation {
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
            Ok(Some(granted)) if granted.contains(uri) => return Ok(()),
            Ok(Some(_)) => "did not grant it on its listen stream".to_owned(),
            Ok(None) => "ended or refused its listen stream".to_owned(),
            Err(_) => format!("did not acknowledge it within {}", super::humanize(timeout)),
        };
        self.change(uri, false);
        Err(UpstreamError::NotGranted {
            server: server.to_owned(),
            reason: format!("cannot subscribe to {}: it {why}", protocol::cut(uri, 200)),
        })
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
            filter.insert("resourceSubscriptions".into(), json!(*uris));
        }
        (asked, filter)
    }

    /// Wakes when the set changes (register it before [`Self::to_ask`]).
    pub(super) fn changes(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// The stream asked at generation `asked` is (`Some`: the URIs granted)
    /// or is not (`None`: ended, refused, nothing to ask) acknowledged.
    pub(super) fn settle(&self, asked: u64, granted: Option<BTreeSet<String>>) {
        self.acknowledged
            .send_replace(Acknowledged { asked, granted });
    }

    /// Takes `message`, sent on the stream asked at `asked`: true if it is
    /// its acknowledgement (what it granted then settled).
    pub(super) fn acknowledgement(&self, asked: u64, message: &Value) -> bool {
        if protocol::method(message) != Some("notifications/subscriptions/acknowledged") {
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
