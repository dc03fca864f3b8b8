//! Streamable HTTP: the listener's router and its start. The routes are
//! grouped by who may use them, each group behind its own checks:
//!
//! - `/mcp` ([`super::mcp`]): clients, by token or certificate; and, with
//!   `[listener] sse`, HTTP+SSE's `/sse` and `/messages` ([`super::sse`]);
//! - the admin API under `/admin/audit` and `/metrics` ([`super::admin`]):
//!   auditors, by token or console login;
//! - the console's pages under `/admin/` ([`super::console`]): auditors,
//!   by console login;
//! - public: `/healthz`, `/admin` (a redirect to the console) and the
//!   console's script and style.
//!
//! The order of the checks is drawn in [`super::auth`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::DownstreamError;
pub use super::state::Enforcement;
use super::state::HttpState;

/// How often idle sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Serves streamable HTTP until the gateway shuts down.
pub async fn serve(
    gateway: Arc<crate::gateway::Gateway>,
    addr: SocketAddr,
    enforcement: Enforcement,
) -> Result<(), DownstreamError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DownstreamError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    if gateway.config().listener.sse {
        tracing::info!(addr = %local, "listening for MCP over streamable HTTP at /mcp, and over HTTP+SSE at /sse");
    } else {
        tracing::info!(addr = %local, "listening for MCP over streamable HTTP at /mcp");
    }
    serve_on(gateway, listener, enforcement).await
}

/// Serves on a bound listener.
pub async fn serve_on(
    gateway: Arc<crate::gateway::Gateway>,
    listener: tokio::net::TcpListener,
    enforcement: Enforcement,
) -> Result<(), DownstreamError> {
    let config = gateway.config();
    if config.listener.tls.is_none()
        && listener
            .local_addr()
            .is_ok_and(|addr| !addr.ip().is_loopback())
    {
        tracing::warn!(
            "PLAINTEXT: the listener is not on a loopback address and speaks plain HTTP (`[listener] insecure_plaintext = true`): tokens and calls cross the network in clear"
        );
    }
    let oauth = match &config.oauth {
        None => None,
        Some(oauth) => {
            // No token may name a client that has its own credential.
            let reserved = config.clients.iter().map(|c| c.name.clone()).collect();
            let verifier = crate::identity::OauthVerifier::new(oauth.clone(), reserved)
                .map_err(DownstreamError::Oauth)?;
            Some(Arc::new(verifier))
        }
    };
    let sealer =
        super::sealed::Sealer::load(&config.proxy.session_keys, config.proxy.session_max_age)
            .map_err(|error| DownstreamError::SessionKeys(error.to_string()))?;
    let state = Arc::new(HttpState::new(
        gateway.clone(),
        enforcement,
        listener.local_addr().ok(),
        (oauth, sealer),
    ));
    let app = router(state.clone());
    let sweeper = sweep(state.clone());
    {
        // The failures of the last interval are recorded as the proxy stops.
        let state = Arc::downgrade(&state);
        gateway.records().on_stop(move || {
            state
                .upgrade()
                .map(|state| state.throttle.take_records())
                .unwrap_or_default()
        });
    }
    let tls = match &config.listener.tls {
        None => None,
        Some(tls) => {
            let tls = super::tls::Tls::load(tls).map_err(DownstreamError::Tls)?;
            tls.clone().watch(gateway.shutdown_token());
            Some(tls)
        }
    };
    super::listener::serve(
        listener,
        app,
        config.listener.clone(),
        tls,
        gateway.records().metrics().cloned(),
        gateway.shutdown_token(),
    )
    .await;
    sweeper.abort();
    Ok(())
}

/// Every route, each group behind its checks (see the module's notes).
/// The Host/Origin layers are route layers: a path no route matches is a
/// plain 404; a method a route does not take is a 405 once Host and Origin
/// pass (the layer wraps the route's own 405 too, so a foreign origin gets
/// 403 first).
fn router(state: Arc<HttpState>) -> Router {
    let body_limit = state.gateway.config().limits.max_message_bytes;
    let strict = from_fn_with_state(state.clone(), super::auth::host_and_origin);
    let sse = if state.gateway.config().listener.sse {
        super::sse::routes().route_layer(strict.clone())
    } else {
        Router::new()
    };
    Router::new()
        .merge(super::mcp::routes().route_layer(strict.clone()))
        .merge(sse)
        .merge(super::admin::routes().route_layer(strict))
        .merge(
            super::console::routes()
                .route_layer(from_fn_with_state(state.clone(), super::auth::own_origin)),
        )
        .merge(super::console::public_routes())
        .merge(super::resource::routes())
        .merge(super::signin::routes())
        .layer(from_fn_with_state(state.clone(), super::auth::guard))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(super::unread::close_if_unread))
        .with_state(state)
}

/// Ends idle sessions, and records the authentication failures of each
/// interval, until the gateway shuts down.
fn sweep(state: Arc<HttpState>) -> tokio::task::JoinHandle<()> {
    let shutdown = state.gateway.shutdown_token();
    tokio::spawn(async move {
        let idle = state.gateway.config().proxy.session_idle_timeout;
        let interval = state.gateway.config().listener.failure_record_interval;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut record = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = sweep.tick() => state.expire_idle(idle),
                _ = record.tick() => {
                    state.gateway.records().events(state.throttle.take_records());
                }
                () = shutdown.cancelled() => return,
            }
        }
    })
}

/// Up, and what it enforces: the policy set's id and the config file's
/// digest as last applied, so that operators of several replicas (and a
/// load balancer's check) see one that did not reload. Which sections
/// wait for a restart (what old setting is still in force) is only on the
/// auditors' `/metrics`.
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let enforced = state.gateway.reloads().enforced();
    let policy_set = state
        .enforcement
        .policies
        .as_ref()
        .map(|engine| engine.current().id.to_string());
    // How many servers refuse calls for failing; which ones is for the
    // console and the metrics (this page answers anyone).
    // A per-client server counts when any of its instances' breakers is
    // open (some client's calls are refused).
    let failing = state
        .gateway
        .servers()
        .with_breakers()
        .iter()
        .filter(|(_, breakers)| breakers.failing())
        .count();
    axum::Json(json!({
        "status": "ok",
        "policy_set": policy_set,
        "config_sha256": enforced.config_sha256,
        "servers_failing": failing,
    }))
    .into_response()
}

#[cfg(test)]
mod tests;
