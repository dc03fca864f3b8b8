//! A user's sign-in to a `sign_in` server, finished in their browser on
//! the proxy's listener (`[vault] public_url`; see `src/signin/pending.rs`):
//!
//! - `GET /oauth/start?id=ID`: the link the user's agent was given. A page
//!   naming the user, the server and the authorization server, asking the
//!   person to go on only if they are that user. Nothing is taken yet (a
//!   link previewed or scanned stays usable).
//! - `POST /oauth/start` (`id`): the link taken on in this browser, once;
//!   the browser gets the cookie that binds the sign-in to it and is sent
//!   to the authorization server.
//! - `GET /oauth/callback`: the authorization server's answer, taken only
//!   for a `state` this proxy gave, in the browser that took the link on.
//!
//! Every page is `no-store`, `no-referrer`, framed by no one, and runs
//! nothing. Without `[vault] public_url`, each answers 404.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use super::state::HttpState;
use crate::signin::SignIns;
use crate::signin::page::page;
use crate::signin::pending::{COOKIE, PendingError};

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/oauth/start", get(shown).post(taken))
        .route("/oauth/callback", get(callback))
}

/// The sign-ins, where the proxy gives links.
fn sign_ins(state: &HttpState) -> Option<Arc<SignIns>> {
    state
        .gateway
        .config()
        .vault
        .public_url
        .as_ref()
        .and(state.gateway.servers().sign_ins())
}

/// A link's id, as the page's query or its form sends it (missing: none
/// of the proxy's).
#[derive(serde::Deserialize, Default)]
struct Link {
    #[serde(default)]
    id: String,
}

async fn shown(State(state): State<Arc<HttpState>>, Query(link): Query<Link>) -> Response {
    let Some(sign_ins) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    match sign_ins.pendings().shown(&link.id) {
        Ok(shown) => {
            let text = format!(
                "Sign `{}` in to `{}` at the authorization server {}? Go on only if you are `{}` and your agent just asked you to sign in: whoever goes on gives `{}` their account at that server.",
                shown.user.escape_debug(),
                shown.server.escape_debug(),
                shown.issuer,
                shown.user.escape_debug(),
                shown.user.escape_debug(),
            );
            page(StatusCode::OK, &text, Some(&link.id))
        }
        Err(err) => refused(&err),
    }
}

async fn taken(State(state): State<Arc<HttpState>>, body: axum::body::Bytes) -> Response {
    let Some(sign_ins) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    let link: Link = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let (cookie, to) = match sign_ins.pendings().take(&link.id) {
        Ok(taken) => taken,
        Err(err) => return refused(&err),
    };
    let secure = state
        .gateway
        .config()
        .vault
        .public_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"));
    let life = sign_ins.link_life().as_secs();
    let set = format!(
        "{COOKIE}={cookie}; Path=/oauth; Max-Age={life}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = page(
        StatusCode::SEE_OTHER,
        "On to the authorization server.",
        None,
    );
    let headers = response.headers_mut();
    match (HeaderValue::from_str(&to), HeaderValue::from_str(&set)) {
        (Ok(to), Ok(set)) => {
            headers.insert(header::LOCATION, to);
            headers.insert(header::SET_COOKIE, set);
            response
        }
        _ => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The authorization server's link cannot be followed.",
            None,
        ),
    }
}

async fn callback(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let Some(sign_ins) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    let cookie = cookie(&headers);
    let answered = match sign_ins.pendings().answer(&query, cookie.as_deref()) {
        Ok(answered) => answered,
        Err(err) => return refused(&err),
    };
    let mut response = match sign_ins.finish(answered).await {
        Ok(text) => page(StatusCode::OK, &text, None),
        Err(reason) => {
            tracing::warn!(%reason, "a sign-in from a link failed");
            page(
                StatusCode::BAD_GATEWAY,
                "The sign-in could not be finished at the authorization server: ask your agent to call again for a new link. The proxy's log says why.",
                None,
            )
        }
    };
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "portcullis_sign_in=; Path=/oauth; Max-Age=0; HttpOnly; SameSite=Lax",
        ),
    );
    response
}

/// The sign-in cookie the browser sent, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn refused(err: &PendingError) -> Response {
    let status = match err {
        PendingError::Unknown | PendingError::UnknownState => StatusCode::NOT_FOUND,
        PendingError::Taken | PendingError::OtherBrowser => StatusCode::CONFLICT,
        PendingError::Full => StatusCode::SERVICE_UNAVAILABLE,
        PendingError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        PendingError::Flow(_) => StatusCode::BAD_REQUEST,
    };
    page(status, &err.to_string(), None)
}
