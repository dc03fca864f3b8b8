//! `logging/setLevel` toward the servers: each running instance is sent the
//! lowest level the sessions that may use it asked for.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::protocol::{self, Method};
use crate::upstream::Status;

use super::{Gateway, InstanceKey, Session};

/// How long the proxy waits for a server to take a new log level.
pub(super) const LOG_LEVEL_WAIT: Duration = Duration::from_secs(5);

/// The level a server is sent: the lowest any session asked for (sessions
/// that never asked do not count), `None` when none asked.
pub(super) fn lowest_level(
    levels: impl IntoIterator<Item = Option<protocol::LogLevel>>,
) -> Option<protocol::LogLevel> {
    levels.into_iter().flatten().min()
}

/// The log level last sent to each running instance (server, the client of
/// a per-client instance). Held while levels are sent, so they arrive in
/// the order they were decided.
#[derive(Default)]
pub(super) struct LogLevels(tokio::sync::Mutex<HashMap<InstanceKey, protocol::LogLevel>>);

impl LogLevels {
    /// Forgets the level sent to an instance (it restarted, or stopped):
    /// the next [`LogLevels::apply`] sends it one again.
    pub(super) async fn forget(&self, key: &InstanceKey) {
        self.0.lock().await.remove(key);
    }

    /// Sends each running instance that supports logging the lowest level
    /// the sessions that may use it asked for (of its client only, for a
    /// per-client instance), when that changed since it was last sent.
    /// `asked_by`: only the instances serving that session's client that
    /// the client may use (a client that may not use a server never
    /// changes its level); `None`: every instance (a session closed, a
    /// server restarted). No session with a level: the server keeps the
    /// last one it was sent.
    pub(super) async fn apply(&self, gateway: &Gateway, asked_by: Option<&Session>) {
        // Decided under the lock, sent outside it: a server that never
        // answers holds nobody else's `logging/setLevel`.
        let mut sends = Vec::new();
        {
            let mut sent = self.0.lock().await;
            let sessions = gateway.sessions.initialized();
            let instances = gateway
                .servers
                .instances(asked_by.map(|session| &session.client.name));
            for ((index, instance), upstream) in instances {
                if asked_by.is_some_and(|session| !gateway.may_use(session, index)) {
                    continue;
                }
                let Status::Ready(info) = upstream.status() else {
                    continue;
                };
                if !upstream.takes_log_level(&info) {
                    continue;
                }
                let levels = sessions
                    .iter()
                    .filter(|session| {
                        instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                            && gateway.may_use(session, index)
                    })
                    .map(|session| session.log_level());
                let Some(wanted) = lowest_level(levels) else {
                    continue;
                };
                let key = (index, instance);
                if sent.get(&key) == Some(&wanted) {
                    continue;
                }
                sent.insert(key.clone(), wanted);
                sends.push((key, wanted, upstream));
            }
        }
        let requests = sends.into_iter().map(|(key, wanted, upstream)| async move {
            let asked =
                upstream.request(Method::LoggingSetLevel, json!({ "level": wanted.as_str() }));
            let failed = match tokio::time::timeout(LOG_LEVEL_WAIT, asked).await {
                Ok(Ok(_)) => return,
                // The server's own words: scrubbed like a record's.
                Ok(Err(err)) => gateway.records.scrubbed(&err.to_string()),
                Err(_) => format!("no answer within {LOG_LEVEL_WAIT:?}"),
            };
            tracing::warn!(server = %upstream.name(), error = failed, "cannot set the log level");
            // Not set after all: the next change tries again.
            let mut sent = self.0.lock().await;
            if sent.get(&key) == Some(&wanted) {
                sent.remove(&key);
            }
        });
        futures_util::future::join_all(requests).await;
    }
}
