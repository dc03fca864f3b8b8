//! Notifications both ways: a client's to the servers, and a server's to the
//! sessions it belongs to or that may use the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::chain::{Direction, Outcome, Phase};
use crate::protocol::{self, At as _, IdKey, Method};
use crate::upstream::Status;

use super::{Gateway, InstanceKey, Session, lock};

/// The most notifications no call owns that one server instance gets
/// relayed (and recorded) per second; past it they are dropped and counted,
/// so a server cannot flood sessions or the audit log.
pub(super) const UNATTRIBUTED_PER_SECOND: u32 = 100;

/// One second of a server instance's unattributed notifications.
pub(super) struct NoticeWindow {
    pub(super) started: std::time::Instant,
    pub(super) relayed: u32,
    pub(super) dropped: u64,
}

/// Per server instance: the current second's notifications that belong to
/// no call (relayed, dropped over [`UNATTRIBUTED_PER_SECOND`]).
#[derive(Default)]
pub(super) struct Unattributed(std::sync::Mutex<HashMap<InstanceKey, NoticeWindow>>);

impl Unattributed {
    /// Forgets an instance's window (its client's instance was forgotten).
    pub(super) fn forget(&self, key: &InstanceKey) {
        lock(&self.0).remove(key);
    }

    /// A server's notification that belongs to no call: to each session
    /// that may have it (authz decides per session in the chain), and
    /// recorded with how many sessions got it. `ambiguous`: calls of several
    /// sessions were in flight, so it goes to none.
    pub(super) fn relay(
        &self,
        gateway: &Gateway,
        index: usize,
        instance: &Option<Arc<str>>,
        message: Value,
        ambiguous: bool,
    ) {
        let now = std::time::Instant::now();
        let (admitted, dropped_before) = {
            let mut windows = lock(&self.0);
            let window = windows
                .entry((index, instance.clone()))
                .or_insert(NoticeWindow {
                    started: now,
                    relayed: 0,
                    dropped: 0,
                });
            let mut dropped_before = 0;
            if now.duration_since(window.started) >= Duration::from_secs(1) {
                dropped_before = std::mem::take(&mut window.dropped);
                window.started = now;
                window.relayed = 0;
            }
            let admitted = window.relayed < UNATTRIBUTED_PER_SECOND;
            if admitted {
                window.relayed += 1;
            } else {
                window.dropped += 1;
            }
            (admitted, dropped_before)
        };
        if dropped_before > 0 {
            let mut record = crate::audit::AuditRecord::event("server_notification", "deny");
            record.server = gateway.servers.name_at(index).map(|name| name.to_string());
            record.reason = Some(format!(
                "{dropped_before} notifications dropped: over {UNATTRIBUTED_PER_SECOND} per second that no call owns"
            ));
            record.detail = Some(json!({ "dropped": dropped_before }));
            gateway.records.event(record);
        }
        if !admitted {
            return;
        }
        let method = protocol::method(&message).unwrap_or_default().to_owned();
        let sessions = gateway.sessions.of_instance(instance);
        let mut counts: HashMap<Delivery, usize> = HashMap::new();
        if ambiguous {
            let method = gateway.records.scrubbed(protocol::cut(&method, 128));
            tracing::debug!(server = %gateway.servers.name_or_none(index), method, "dropped a notification that cannot be tied to one client session");
            counts.insert(Delivery::Withheld, sessions.len());
        } else {
            for session in &sessions {
                let delivery = gateway.notify(session, Some(index), message.clone(), None, None);
                *counts.entry(delivery).or_default() += 1;
            }
        }
        let count = |delivery| counts.get(&delivery).copied().unwrap_or(0);
        let delivered = count(Delivery::Delivered);
        let withheld = count(Delivery::Withheld);
        let decision = if delivered == 0 && withheld > 0 {
            "deny"
        } else {
            "allow"
        };
        let mut record = crate::audit::AuditRecord::event("server_notification", decision);
        record.server = gateway.servers.name_at(index).map(|name| name.to_string());
        // A server chooses the method: a long one is cut.
        let method = protocol::cut(&method, 128);
        record.method = method.to_owned();
        let mut detail = json!({
            "method": method,
            "delivered": delivered,
            "withheld": withheld,
            "below_level": count(Delivery::BelowLevel),
            "unreachable": count(Delivery::Unreachable),
        });
        if ambiguous {
            detail.put(
                &["reason"],
                Value::from(
                    "calls of several client sessions were in flight: it could belong to any of them",
                ),
            );
        }
        if let Some(client) = instance {
            detail.put(&["instance"], Value::from(&**client));
        }
        record.detail = Some(detail);
        gateway.records.event(record);
    }
}

/// What became of a notification offered to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Delivery {
    Delivered,
    /// Refused by the chain (authz: the client may not use the server).
    Withheld,
    /// A log message below the session's level.
    BelowLevel,
    Unreachable,
}

impl Gateway {
    pub(super) async fn handle_notification(
        self: &Arc<Self>,
        session: &Arc<Session>,
        message: Value,
    ) {
        let method = Method::named_in(&message);
        let mut run = self.begin(
            session,
            message,
            Direction::ClientToServer,
            Phase::Notification,
            &method,
        );
        if let Err(refusal) = self.chain.run(&mut run.exchange) {
            // A client chooses the method: a long one is cut.
            let method = self.records.scrubbed(protocol::cut(method.as_str(), 128));
            tracing::debug!(session = %session.id, method, interceptor = %refusal.interceptor, "notification refused");
            run.end_notification(&refusal.outcome());
            return;
        }
        match method {
            Method::Initialized => {}
            Method::Cancelled => {
                let cancelled = run
                    .exchange
                    .message
                    .at(&["params", "requestId"])
                    .and_then(IdKey::from_value)
                    .is_some_and(|id| session.cancel_call(&id));
                if !cancelled {
                    tracing::debug!(session = %session.id, "cancellation of a request not in flight");
                }
            }
            Method::RootsListChanged => {
                // The proxy's own, with nothing of the client's in it, and
                // only to the servers this client may use.
                let notice = protocol::notification(method.as_str(), json!({}));
                for ((index, _), upstream) in self.servers.instances(Some(&session.client.name)) {
                    if self.may_use(session, index)
                        && upstream.hears_roots()
                        && matches!(upstream.status(), Status::Ready(_))
                    {
                        let _ = upstream.send(notice.clone()).await;
                    }
                }
            }
            _ => {
                let method = self.records.scrubbed(protocol::cut(method.as_str(), 128));
                tracing::debug!(session = %session.id, method, "notification not relayed")
            }
        }
        run.end_notification(&Outcome::Delivered);
    }

    // -- server → proxy ----------------------------------------------------

    /// Sends a server's notification to a session through the chain.
    /// `related`: the client request whose stream should carry it; `call`:
    /// the request it belongs to (its `context.request_id`), if any —
    /// authz lets one that belongs to no call reach only a client that may
    /// use the server. A server's log message below the session's level
    /// (`logging/setLevel`) is not sent to it.
    pub(super) fn notify(
        &self,
        session: &Session,
        server: Option<usize>,
        message: Value,
        related: Option<&Value>,
        call: Option<Value>,
    ) -> Delivery {
        // A catalog's server is heard only by the sessions that added it.
        if server.is_some_and(|index| !self.visible(session, index)) {
            return Delivery::Withheld;
        }
        let method = Method::named_in(&message);
        if server.is_some() && method == Method::LogMessage && !session.wants_log(&message) {
            return Delivery::BelowLevel;
        }
        let mut run = self.begin(
            session,
            message,
            Direction::ServerToClient,
            Phase::Notification,
            &method,
        );
        let exchange = &mut run.exchange;
        exchange.context.server = server.and_then(|s| self.servers.name_at(s).cloned());
        exchange.context.request_id = call;
        if exchange.context.server.is_some() {
            if method == Method::ResourceUpdated {
                exchange.context.target =
                    protocol::param_str(&exchange.message, "uri").map(str::to_owned);
            }
            exchange.context.directory = Some(self.catalog());
        }
        if let Err(refusal) = self.chain.run(exchange) {
            run.end_notification(&refusal.outcome());
            return Delivery::Withheld;
        }
        let delivered = session.deliver(exchange.message.clone(), related);
        let (outcome, delivery) = if delivered {
            (Outcome::Delivered, Delivery::Delivered)
        } else {
            let outcome = Outcome::Failed {
                reason: "the client is not reachable".into(),
            };
            (outcome, Delivery::Unreachable)
        };
        run.end_notification(&outcome);
        delivery
    }

    pub(super) fn server_notification(
        self: &Arc<Self>,
        index: usize,
        instance: &Option<Arc<str>>,
        message: Value,
        ambiguous: bool,
    ) {
        let method = Method::named_in(&message);
        match method {
            _ if method.list_changed().is_some() => {
                super::lists::Lists::refresh_soon(self, index);
            }
            Method::ResourceUpdated => {
                let Some(uri) = protocol::param_str(&message, "uri") else {
                    return;
                };
                // Only the server that owns the URI may report on it.
                if self.catalog().resource_owner(uri) != Some(index) {
                    return;
                }
                for key in self.subscriptions.subscribers(uri) {
                    if let Some(session) = self.sessions.get(key)
                        && instance
                            .as_ref()
                            .is_none_or(|client| session.client.name == *client)
                    {
                        self.notify(&session, Some(index), message.clone(), None, None);
                    }
                }
            }
            Method::Cancelled => {
                // The server withdrew one of its requests to a client.
                let Some(server_id) = message
                    .at(&["params", "requestId"])
                    .and_then(IdKey::from_value)
                else {
                    return;
                };
                let Some((session_key, client_id)) =
                    self.forwarded.take(&(index, instance.clone(), server_id))
                else {
                    return;
                };
                if let Some(session) = self.sessions.get(session_key) {
                    session.forget_client_request(client_id);
                    let mut message = message;
                    message.put(&["params", "requestId"], Value::from(client_id));
                    // It belongs to the request it withdraws.
                    let call = Some(Value::from(client_id));
                    self.notify(&session, Some(index), message, None, call);
                }
            }
            // Progress belongs to a call: without one it has no reader.
            Method::Progress => {}
            // Everything sent during a call went to that call's session
            // (`forward`); these came while no call was in flight.
            _ => self
                .unattributed
                .relay(self, index, instance, message, ambiguous),
        }
    }
}
