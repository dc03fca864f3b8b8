//! What every HTTP route shares: the gateway, the credentials, the session
//! table, the console's logins, the throttle; and the small pieces the
//! routes of `/mcp`, `/admin/audit` and the console all use (reading a
//! body, a plain JSON error, waiting for the audit log to catch up).
//!
//! Built once as the listener starts and handed to each sub-router as
//! axum state. Nothing here looks at a request's credentials: the `auth`
//! module does, above this one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::json;

use super::logins::Logins;
use super::sealed::Sealer;
use super::sessions::{Places, SessionTable};
use super::slots::Slots;
use super::throttle::Throttle;
use crate::chain::ClientIdentity;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::OauthVerifier;
use crate::interceptors::{Pinning, PolicyEngine};

/// How long a read of the fleet's log may take (connecting included).
const FLEET_READ_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) struct HttpState {
    pub(super) gateway: Arc<Gateway>,
    pub(super) credentials: Credentials,
    pub(super) sessions: SessionTable,
    /// The HTTP+SSE sessions by id (`[listener] sse`), apart: an id of
    /// one transport means nothing to the other.
    pub(super) sse_sessions: SessionTable,
    pub(super) allowed_origins: Vec<String>,
    /// Host names the `Host` header may name (lowercase, no port).
    pub(super) allowed_hosts: Vec<String>,
    /// The web console's logins: cookie value → auditor and expiry.
    pub(super) logins: Logins,
    pub(super) enforcement: Enforcement,
    /// Authentication failures per source and credential prefix.
    pub(super) throttle: Throttle,
    /// Sessions open or being opened, in total and per client.
    pub(super) slots: Arc<Slots<Arc<str>>>,
    /// How long a request's body may take to arrive.
    pub(super) body_read_timeout: Duration,
    /// Whether the listener speaks TLS (the console's cookie is `Secure`).
    pub(super) tls: bool,
    /// Each client's places for 2026-07-28 requests in the works.
    pub(super) stateless_places: Places,
    /// Access tokens from the organisation's identity provider (`[oauth]`).
    pub(super) oauth: Option<Arc<OauthVerifier>>,
    /// Reads of the fleet's log under way (one at a time).
    pub(super) fleet_reads: tokio::sync::Semaphore,
    /// Seals session ids so that any replica serves them (`[proxy]
    /// session_keys`).
    pub(super) sealer: Option<Sealer>,
    /// What waits for all HTTP sessions to read it, in bytes (`[limits]
    /// max_queued_bytes_total`), beside each session's own budget.
    pub(super) queued_total: crate::protocol::ByteBudget,
}

impl HttpState {
    /// A new HTTP session's outlet, under its own budget and all sessions'.
    pub(super) fn outlet(&self) -> super::sessions::HttpOutlet {
        let limits = self.gateway.config().limits;
        super::sessions::HttpOutlet::new(limits.max_queued_bytes, self.queued_total.clone())
    }
}

/// Who may use the listener, by the SHA-256 (hex) of what they present.
pub(super) struct Credentials {
    /// Each client's token → the client.
    pub(super) tokens: HashMap<String, ClientIdentity>,
    /// Each auditor's token → the auditor's name.
    pub(super) auditors: HashMap<String, String>,
    /// Clients by the SHA-256 of their TLS certificate.
    pub(super) certificates: HashMap<String, ClientIdentity>,
}

impl Credentials {
    /// Whether the token of SHA-256 (hex) `hash` is a client's or an
    /// auditor's static token (else it may be an access token from an
    /// identity provider).
    pub(super) fn is_static(&self, hash: &str) -> bool {
        self.tokens.contains_key(hash) || self.auditors.contains_key(hash)
    }

    fn of(config: &Config) -> Self {
        // Each client's identity, by its token's hash and by its certificate's.
        let (mut tokens, mut certificates) = (HashMap::new(), HashMap::new());
        for client in &config.clients {
            let identity = ClientIdentity::new(&client.name, &client.groups)
                .with_attributes(client.attributes.clone());
            if let Some(hash) = &client.token_sha256 {
                tokens.insert(hash.clone(), identity.clone());
            }
            if let Some(hash) = &client.cert_sha256 {
                certificates.insert(hash.clone(), identity);
            }
        }
        let auditors = config
            .auditors
            .iter()
            .map(|auditor| (auditor.token_sha256.clone(), auditor.name.clone()))
            .collect();
        Self {
            tokens,
            auditors,
            certificates,
        }
    }
}

/// What the console shows of the chain: the policy set authz enforces and
/// the pins pinning enforces. They are built with the chain, beside the
/// gateway, and are absent when their interceptor is not in the chain.
#[derive(Clone, Default)]
pub struct Enforcement {
    pub policies: Option<Arc<PolicyEngine>>,
    pub pinning: Option<Arc<Pinning>>,
}

impl HttpState {
    /// The state for a listener bound to `local` (its address is one the
    /// `Host` header may name).
    pub(super) fn new(
        gateway: Arc<Gateway>,
        enforcement: Enforcement,
        local: Option<SocketAddr>,
        (oauth, sealer): (Option<Arc<OauthVerifier>>, Option<Sealer>),
    ) -> Self {
        let config = gateway.config();
        // DNS rebinding: a page on another site whose name now resolves to
        // this proxy sends its own name as Host. This machine's loopback
        // names, the listen address itself and `allowed_hosts` are accepted.
        let mut allowed_hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .chain(config.proxy.allowed_hosts.iter().cloned())
            .collect();
        if let Some(addr) = local
            && !addr.ip().is_unspecified()
        {
            allowed_hosts.push(addr.ip().to_string());
        }
        Self {
            credentials: Credentials::of(config),
            sessions: SessionTable::default(),
            sse_sessions: SessionTable::default(),
            allowed_origins: config.proxy.allowed_origins.clone(),
            allowed_hosts,
            logins: Logins::default(),
            enforcement,
            throttle: Throttle::new(
                config.listener.auth_failures_per_source,
                config.listener.auth_failures_per_credential,
            ),
            slots: Slots::new(
                config.proxy.max_sessions,
                config.proxy.max_sessions_per_client,
            ),
            body_read_timeout: config.listener.body_read_timeout,
            tls: config.listener.tls.is_some(),
            stateless_places: Places::default(),
            oauth,
            fleet_reads: tokio::sync::Semaphore::new(1),
            sealer,
            queued_total: crate::protocol::ByteBudget::new(config.limits.max_queued_bytes_total),
            gateway,
        }
    }

    /// Ends the sessions idle for longer than `idle`.
    pub(super) fn expire_idle(&self, idle: Duration) {
        // Ended here as on one replica (another replica may still resume
        // it until `session_max_age`).
        let ended = |id: &str| {
            if let Some(sealer) = &self.sealer {
                sealer.ended(id);
            }
        };
        // An HTTP+SSE session's id is never sealed: none to mark ended.
        let idle_sessions = self.sessions.take_idle(idle, ended);
        let idle_sse = self.sse_sessions.take_idle(idle, |_| ());
        for session in idle_sessions.into_iter().chain(idle_sse) {
            tracing::info!(session = %session.session.id, "session expired after being idle");
            self.gateway.close_session(&session.session);
        }
    }

    /// The records of the fleet's log (`[audit.ship]`'s database) that
    /// `filter` wants: `Ok(None)` when this replica ships no log. One read
    /// at a time per replica (each on a connection of its own): auditors
    /// cannot take the database's connections from the shippers. The
    /// error is what the client is told; the reason is logged.
    pub(super) async fn fleet_records(
        &self,
        filter: &crate::audit::Filter,
    ) -> Result<Option<Vec<crate::audit::fleet::FleetRecord>>, &'static str> {
        let config = self.gateway.config();
        let Some(ship) = &config.audit.ship else {
            return Ok(None);
        };
        let separator = config.proxy.namespace_separator.clone();
        let read = async {
            let _one = self
                .fleet_reads
                .acquire()
                .await
                .map_err(|e| e.to_string())?;
            let database = crate::audit::fleet::Database::of(ship).map_err(|e| e.to_string())?;
            let client = database.connect().await.map_err(|e| e.to_string())?;
            crate::audit::fleet::query(&client, filter, &separator)
                .await
                .map_err(|e| e.to_string())
        };
        let failed = match tokio::time::timeout(FLEET_READ_TIMEOUT, read).await {
            Ok(Ok(records)) => return Ok(Some(records)),
            Ok(Err(message)) => message,
            Err(_) => format!("no answer within {FLEET_READ_TIMEOUT:?}"),
        };
        tracing::error!(error = %failed, "the fleet's log cannot be read");
        Err("the fleet's database cannot be read (the proxy's log says why)")
    }

    /// Waits until every record committed before the request is readable (a
    /// second at most: a store that cannot take them is answered as it is).
    pub(super) async fn caught_up(&self) {
        if let Some(audit) = self.gateway.records().audit() {
            audit.caught_up(Duration::from_secs(1)).await;
        }
    }
}

pub(super) fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Why a request's body could not be read.
pub(super) enum BodyError {
    /// It is longer than the limit: its first `limit` bytes.
    TooLarge(Bytes),
    /// It did not arrive within the body read timeout.
    TimedOut,
    /// The connection failed while it was read.
    Failed,
}

/// Reads a whole body of at most `limit` bytes within `timeout`.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut parts: Vec<Bytes> = Vec::new();
        let mut length = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Failed)?;
            if length + chunk.len() > limit {
                let mut head = Vec::with_capacity(limit);
                for part in &parts {
                    head.extend_from_slice(part);
                }
                head.extend(chunk.iter().take(limit - length));
                return Err(BodyError::TooLarge(head.into()));
            }
            length += chunk.len();
            parts.push(chunk);
        }
        Ok(match parts.len() {
            0 => Bytes::new(),
            1 => parts.swap_remove(0),
            _ => parts.concat().into(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// 408 for a body that took too long; the connection is closed, as the
/// rest of the body is never read.
pub(super) fn body_timed_out() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, HeaderValue::from_static("close"))],
        axum::Json(json!({ "error": "the request body did not arrive in time" })),
    )
        .into_response()
}
