//! A user's sign-in to a `sign_in` server, finished in their browser on
//! the proxy's listener (`[vault] public_url`; see `src/signin/pending.rs`):
//!
//! - `GET /oauth/start?id=ID`: the link the user's agent was given. A page
//!   naming the user, the server and the authorization server, asking the
//!   person to go on only if they are that user. Nothing is taken yet (a
//!   link previewed or scanned stays usable). The page's form carries a
//!   fresh token, also set as a `SameSite=Strict` cookie.
//! - `POST /oauth/start` (`id`, `form`): the link taken on in this browser,
//!   once; only from the page itself: its `Origin` (where sent) is the
//!   proxy's, its `Sec-Fetch-Site` (where sent) `same-origin`, and the
//!   form's token is its cookie's (a page elsewhere that posts a link's id
//!   has neither). The browser gets the cookie that binds the sign-in to
//!   it and is sent to the authorization server.
//! - `GET /oauth/callback`: the authorization server's answer, taken only
//!   for a `state` this proxy gave, in the browser that took the link on
//!   (one cookie of that name, no more).
//!
//! - `GET /oauth/client`: the proxy's client ID metadata document, where
//!   `public_url` is `https://` (authorization servers that take them read
//!   the proxy's client there).
//!
//! Under `https://`, the cookies are `__Host-` (`Secure`, `Path=/`, no
//! `Domain`: a sibling host cannot set one). Every page is `no-store`,
//! names its URL to no other site (`Referrer-Policy: same-origin`), is
//! framed by no one, and runs nothing. Without `[vault]
//! public_url`, each answers 404.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use axum_extra::extract::cookie::{Cookie, SameSite};

use super::logins::cookies_named;
use super::state::HttpState;
use crate::signin::SignIns;
use crate::signin::client::{document, document_base};
use crate::signin::page::page;
use crate::signin::pending::{Answer, PendingError, Proved, fresh_token};

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/oauth/start", get(shown).post(taken))
        .route("/oauth/callback", get(callback))
        .route("/oauth/client", get(client_document))
}

/// The proxy's client ID metadata document (see `src/signin/client.rs`),
/// where `[vault] public_url` is `https://` (the document's URL is the
/// client's id, which must be): fetched by authorization servers, which
/// may keep it a day.
async fn client_document(State(state): State<Arc<HttpState>>) -> Response {
    let Some(public) = document_base(&state.gateway.config().vault) else {
        return page(StatusCode::NOT_FOUND, "No client document here.", None);
    };
    let mut response = axum::Json(document(public)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The sign-ins and the proxy's public URL, where the proxy gives links.
fn sign_ins(state: &HttpState) -> Option<(Arc<SignIns>, String)> {
    let public = state.gateway.config().vault.public_url.clone()?;
    Some((state.gateway.servers().sign_ins()?, public))
}

/// The cookies' names and attributes: `__Host-` under `https://`.
struct Cookies {
    secure: bool,
}

impl Cookies {
    fn of(public: &str) -> Self {
        Self {
            secure: public.starts_with("https://"),
        }
    }

    fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    /// A `Set-Cookie` value.
    fn set(&self, base: &str, value: &str, life: u64, same_site: SameSite) -> Option<HeaderValue> {
        let cookie = Cookie::build((self.name(base), value.to_owned()))
            .path("/")
            .max_age(
                std::time::Duration::from_secs(life)
                    .try_into()
                    .unwrap_or_default(),
            )
            .http_only(true)
            .same_site(same_site)
            .secure(self.secure)
            .build();
        HeaderValue::from_str(&cookie.to_string()).ok()
    }

    /// The one cookie named `base` the browser sent: `None` if none, or if
    /// it sent two (one planted beside the proxy's).
    fn sent(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        match <[String; 1]>::try_from(cookies_named(headers, &self.name(base))) {
            Ok([value]) => Some(value),
            Err(_) => None,
        }
    }
}

/// The browser binding a sign-in, and the page's form token.
const SIGN_IN: &str = "portcullis_sign_in";
const FORM: &str = "portcullis_form";

/// A link's id and the form's token, as the page's query or form sends
/// them (missing: none of the proxy's).
#[derive(serde::Deserialize, Default)]
struct Link {
    #[serde(default)]
    id: String,
    #[serde(default)]
    form: String,
}

async fn shown(State(state): State<Arc<HttpState>>, Query(link): Query<Link>) -> Response {
    let Some((sign_ins, public)) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    let shown = match sign_ins.pendings().shown(&link.id) {
        Ok(shown) => shown,
        Err(err) => return refused(&err),
    };
    let Ok(token) = fresh_token() else {
        return refused(&PendingError::Random);
    };
    let mut text = format!(
        "Sign `{}` in to `{}` at the authorization server {}? Go on only if you are `{}` and your agent just asked you to sign in: whoever goes on gives `{}` their account at that server.",
        shown.user.escape_debug(),
        shown.server.escape_debug(),
        shown.issuer,
        shown.user.escape_debug(),
        shown.user.escape_debug(),
    );
    if let Some(provider) = &shown.proof_issuer {
        text.push_str(&format!(
            " You will first sign in to this proxy at {provider}, as `{}`: no one else can go on.",
            shown.user.escape_debug()
        ));
    }
    let mut response = page(StatusCode::OK, &text, Some((&link.id, &token)));
    let cookies = Cookies::of(&public);
    if let Some(set) = cookies.set(
        FORM,
        &token,
        sign_ins.link_life().as_secs(),
        SameSite::Strict,
    ) {
        response.headers_mut().insert(header::SET_COOKIE, set);
    }
    response
}

/// Whether a `POST` comes from the proxy's own page: its `Origin` (where
/// the browser sends one) is `public`'s, and its `Sec-Fetch-Site` (where
/// sent) says the same origin.
fn from_own_page(headers: &HeaderMap, public: &str) -> bool {
    let own = reqwest::Url::parse(public)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_default();
    let origin_ok = headers
        .get(header::ORIGIN)
        .is_none_or(|origin| origin.to_str().is_ok_and(|origin| origin == own));
    let site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|site| site.to_str().is_ok_and(|site| site == "same-origin"));
    origin_ok && site_ok
}

async fn taken(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((sign_ins, public)) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    let link: Link = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let cookies = Cookies::of(&public);
    let form = cookies.sent(&headers, FORM);
    if !from_own_page(&headers, &public)
        || link.form.is_empty()
        || form.as_deref() != Some(link.form.as_str())
    {
        return page(
            StatusCode::FORBIDDEN,
            "A sign-in is taken on only from its own page: open the link your agent gave you and press its button.",
            None,
        );
    }
    let (cookie, to) = match sign_ins.pendings().take(&link.id) {
        Ok(taken) => taken,
        Err(err) => return refused(&err),
    };
    let life = sign_ins.link_life().as_secs();
    let mut response = page(
        StatusCode::SEE_OTHER,
        "On to the authorization server.",
        None,
    );
    let headers = response.headers_mut();
    match (
        HeaderValue::from_str(&to),
        cookies.set(SIGN_IN, &cookie, life, SameSite::Lax),
    ) {
        (Ok(to), Some(set)) => {
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
    let Some((sign_ins, public)) = sign_ins(&state) else {
        return page(StatusCode::NOT_FOUND, "No sign-ins here.", None);
    };
    let cookies = Cookies::of(&public);
    let cookie = cookies.sent(&headers, SIGN_IN);
    let mut answered = match sign_ins.pendings().answer(&query, cookie.as_deref()) {
        Ok(Answer::SignIn(answered)) => answered,
        Ok(Answer::Proof(proved)) => return proof(&state, &sign_ins, proved, &cookies).await,
        Err(err) => return refused(&err),
    };
    // A sign-in another replica began is exchanged under this one's
    // settings for its server.
    if answered.remote.is_none() {
        answered.remote = state.gateway.sign_in_remote(&answered.server).map(Box::new);
    }
    let elicitation = answered.elicitation.clone();
    let mut response = match sign_ins.finish(answered).await {
        Ok(text) => {
            // A client asked by URL elicitation may retry at once.
            if let Some(elicitation) = elicitation {
                state.gateway.elicitation_complete(&elicitation);
            }
            page(StatusCode::OK, &text, None)
        }
        Err(reason) => {
            tracing::warn!(%reason, "a sign-in from a link failed");
            page(
                StatusCode::BAD_GATEWAY,
                "The sign-in could not be finished at the authorization server: ask your agent to call again for a new link. The proxy's log says why.",
                None,
            )
        }
    };
    if let Some(clear) = cookies.set(SIGN_IN, "", 0, SameSite::Lax) {
        response.headers_mut().insert(header::SET_COOKIE, clear);
    }
    response
}

/// The person's sign-in to the proxy at their organisation's provider,
/// answered: its token checked as a client's at `/mcp` is; the browser
/// goes on to the server's authorization server only if it names the
/// link's user.
async fn proof(
    state: &HttpState,
    sign_ins: &SignIns,
    proved: Proved,
    cookies: &Cookies,
) -> Response {
    let person = match (sign_ins.proof_token(&proved).await, &state.oauth) {
        (Ok(token), Some(verifier)) => match verifier.verify(&token).await {
            Ok(identity)
                if identity
                    .token
                    .as_ref()
                    .is_some_and(|facts| *facts.provider == proved.proof.provider) =>
            {
                Some(identity.name.to_string())
            }
            Ok(_) => {
                tracing::warn!(provider = %proved.proof.provider, "a sign-in link's proof token was another provider's");
                None
            }
            Err(err) => {
                tracing::warn!(reason = %err, "a sign-in link's proof token was not taken");
                None
            }
        },
        (Ok(_), None) => None,
        (Err(reason), _) => {
            tracing::warn!(%reason, "a sign-in link's proof could not be finished");
            None
        }
    };
    match sign_ins.pendings().proven(proved.ticket, person.as_deref()) {
        Ok(to) => match HeaderValue::from_str(&to) {
            Ok(to) => {
                let mut response = page(
                    StatusCode::SEE_OTHER,
                    "On to the authorization server.",
                    None,
                );
                response.headers_mut().insert(header::LOCATION, to);
                response
            }
            Err(_) => page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The authorization server's link cannot be followed.",
                None,
            ),
        },
        Err(err) => {
            if let PendingError::NotTheUser { person, user } = &err {
                tracing::warn!(%person, %user, "a sign-in link was opened by another person than its user");
            }
            let mut response = refused(&err);
            if let Some(clear) = cookies.set(SIGN_IN, "", 0, SameSite::Lax) {
                response.headers_mut().insert(header::SET_COOKIE, clear);
            }
            response
        }
    }
}

fn refused(err: &PendingError) -> Response {
    let status = match err {
        PendingError::Unknown | PendingError::UnknownState => StatusCode::NOT_FOUND,
        PendingError::Taken | PendingError::OtherBrowser | PendingError::ProofElsewhere => {
            StatusCode::CONFLICT
        }
        PendingError::Full | PendingError::Vault => StatusCode::SERVICE_UNAVAILABLE,
        PendingError::NotTheUser { .. } | PendingError::NotShown => StatusCode::FORBIDDEN,
        PendingError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        PendingError::Flow(_) => StatusCode::BAD_REQUEST,
    };
    page(status, &err.to_string(), None)
}
