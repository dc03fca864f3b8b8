//! Which sessions are subscribed to which resource (`resources/subscribe`):
//! the gateway's part that keeps the map, and each session's count of its
//! own subscriptions with it. What the servers are sent (a subscription at
//! a server, given up when its last subscriber goes, renewed after a
//! restart) is the gateway's, in `local.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::catalog::Catalog;
use super::session::{MAX_SUBSCRIBED_URI_BYTES, MAX_SUBSCRIPTIONS};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::protocol::Method;

use super::{Failure, Gateway, Servers, Session, Sessions, lock};

/// Resource URI → the sessions (by key) subscribed to it.
#[derive(Default)]
pub(super) struct Subscriptions(Mutex<HashMap<String, HashSet<u64>>>);

impl Subscriptions {
    /// A session subscribed to [`MAX_SUBSCRIPTIONS`] resources may
    /// subscribe again only to one of those; a URI longer than
    /// [`MAX_SUBSCRIBED_URI_BYTES`] is not kept at all.
    pub(super) fn may_subscribe(&self, session: &Session, uri: &str) -> Result<(), Failure> {
        if uri.len() > MAX_SUBSCRIBED_URI_BYTES {
            return Err(Failure::UriTooLong);
        }
        if session.subscribed.load(Ordering::Relaxed) < MAX_SUBSCRIPTIONS
            || lock(&self.0)
                .get(uri)
                .is_some_and(|subscribers| subscribers.contains(&session.key))
        {
            return Ok(());
        }
        Err(Failure::TooManySubscriptions)
    }

    /// `session`'s `resources/subscribe` (`subscribe`) or
    /// `resources/unsubscribe` of `uri`, answered with success: kept, and
    /// counted in the session's subscriptions. A session that has closed
    /// keeps none (its key would stay for good).
    pub(super) fn track(&self, session: &Session, subscribe: bool, uri: &str) {
        let mut subscriptions = lock(&self.0);
        if subscribe && session.closed.is_cancelled() {
            return;
        }
        if subscribe {
            let added = subscriptions
                .entry(uri.to_owned())
                .or_default()
                .insert(session.key);
            if added {
                session.subscribed.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(subscribers) = subscriptions.get_mut(uri) {
            if subscribers.remove(&session.key) {
                session.subscribed.fetch_sub(1, Ordering::Relaxed);
            }
            if subscribers.is_empty() {
                subscriptions.remove(uri);
            }
        }
    }

    /// Whether a session's `resources/unsubscribe` of `uri` (of server
    /// `index`) goes to the server: only if the session is subscribed to it
    /// and is the last there. Otherwise it is answered by the proxy (its
    /// own subscription taken out), so that no session ends another's.
    pub(super) fn unsubscribes_at_server(
        &self,
        (session, uri, index): (&Session, &str, usize),
        servers: &Servers,
        sessions: &Sessions,
    ) -> bool {
        lock(&self.0).get(uri).is_some_and(|subscribers| {
            subscribers.contains(&session.key)
                && !others_at_instance((servers, sessions), index, session, subscribers)
        })
    }

    /// Takes a closed session's subscriptions out: the URIs (with their
    /// server, and the client of a per-client instance) that nobody else
    /// reads at that instance any more, to be given up at their servers.
    pub(super) fn drop_session(
        &self,
        session: &Session,
        catalog: &Catalog,
        (servers, sessions): (&Servers, &Sessions),
    ) -> Vec<(usize, Option<std::sync::Arc<str>>, String)> {
        let mut released = Vec::new();
        lock(&self.0).retain(|uri, subscribers| {
            if !subscribers.remove(&session.key) {
                return !subscribers.is_empty();
            }
            if let Some(index) = catalog.resource_owner(uri) {
                let instance = servers
                    .per_client(index)
                    .then(|| session.client.name.clone());
                if !others_at_instance((servers, sessions), index, session, subscribers) {
                    released.push((index, instance, uri.clone()));
                }
            }
            !subscribers.is_empty()
        });
        released
    }

    /// The sessions subscribed to `uri`.
    pub(super) fn subscribers(&self, uri: &str) -> Vec<u64> {
        lock(&self.0)
            .get(uri)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The servers (by index) owning a URI somebody is subscribed to.
    pub(super) fn owners(&self, catalog: &Catalog) -> HashSet<usize> {
        lock(&self.0)
            .keys()
            .filter_map(|uri| catalog.resource_owner(uri))
            .collect()
    }

    /// The URIs `wanted` keeps, given each one's subscribers.
    pub(super) fn uris(&self, wanted: impl Fn(&str, &HashSet<u64>) -> bool) -> Vec<String> {
        lock(&self.0)
            .iter()
            .filter(|(uri, subscribers)| wanted(uri, subscribers))
            .map(|(uri, _)| uri.clone())
            .collect()
    }
}

/// Whether any of `subscribers` but `session` reads updates from the
/// instance of server `index` that `session` reads them from: any session,
/// at a shared server; one of its client's, at a per-client one.
fn others_at_instance(
    (servers, sessions): (&Servers, &Sessions),
    index: usize,
    session: &Session,
    subscribers: &HashSet<u64>,
) -> bool {
    let per_client = servers.per_client(index);
    subscribers.iter().any(|key| {
        *key != session.key
            && (!per_client
                || sessions
                    .get(*key)
                    .is_some_and(|other| other.client.name == session.client.name))
    })
}

impl Subscriptions {
    /// `session`'s `resources/subscribe` or `resources/unsubscribe` of
    /// `uri`, answered with `reply`: kept if it succeeded, and what is held
    /// at servers told.
    pub(super) fn answered(
        &self,
        gateway: &Gateway,
        session: &Session,
        method: &Method,
        uri: &Option<String>,
        reply: &Value,
    ) {
        let (Some(uri), Some(_)) = (uri, reply.get("result")) else {
            return;
        };
        let subscribe = *method == Method::ResourcesSubscribe;
        self.track(session, subscribe, uri);
        gateway.update_holds();
    }

    /// A closed session's subscriptions: taken out, and a URI nobody else
    /// (of its client, at a per-client instance) is subscribed to any more
    /// is unsubscribed from at its server, so that a server does not keep
    /// sending updates nobody reads.
    pub(super) fn session_closed(&self, gateway: &Gateway, session: &Session) {
        let released = self.drop_session(
            session,
            &gateway.catalog(),
            (&gateway.servers, &gateway.sessions),
        );
        gateway.update_holds();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (index, instance, uri) in released {
            let Some(upstream) = gateway.servers.upstream_of(index, &instance) else {
                continue;
            };
            let scrubbed = gateway.records.scrubbed(&uri);
            runtime.spawn(async move {
                if upstream.unsubscribe(&uri).await.is_err() {
                    tracing::debug!(server = %upstream.name(), uri = scrubbed, "cannot unsubscribe");
                }
            });
        }
    }

    /// After a restart the server has forgotten its subscriptions: subscribe
    /// again to every URI it owns that sessions (of its client, for a
    /// per-client instance) are subscribed to.
    pub(super) async fn resubscribe(
        &self,
        gateway: &Gateway,
        index: usize,
        instance: &Option<Arc<str>>,
    ) {
        let Some(upstream) = gateway.servers.upstream_of(index, instance) else {
            return;
        };
        // Kept on the proxy's listen stream instead, which asks for them
        // again at each start.
        if upstream.subscribes_on_listen() {
            return;
        }
        let catalog = gateway.catalog();
        let uris = self.uris(|uri, subscribers| {
            catalog.resource_owner(uri) == Some(index)
                && subscribers.iter().any(|key| {
                    gateway.sessions.get(*key).is_some_and(|session| {
                        instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                    })
                })
        });
        for uri in uris {
            if let Err(err) = upstream
                .request(Method::ResourcesSubscribe, json!({ "uri": uri }))
                .await
            {
                // The server's words may quote the URI: scrubbed.
                let error = gateway.records.scrubbed(&err.to_string());
                tracing::warn!(server = %upstream.name(), error, "cannot renew a resource subscription");
            }
        }
    }
}
