//! The web console's logins: an auditor's token posted to `/admin/login`
//! opens one, named by a random value that the browser keeps in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` over TLS) for 8 hours.
//! Kept in memory: a restart logs everyone out.
//!
//! Expiry is read from tokio's clock, so that a test with paused time can
//! let the hours pass at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use axum_extra::extract::cookie::{Cookie, SameSite};
use tokio::time::Instant;

/// The login cookie's name.
const COOKIE: &str = "portcullis_console";
/// The paths the browser sends the cookie to: the console and its API.
const COOKIE_PATH: &str = "/admin";
/// How long a login lasts.
const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many logins at once (expired ones are dropped first).
const MAX_LOGINS: usize = 1_000;

/// One console login.
#[derive(Debug, Clone)]
struct Login {
    auditor: String,
    expires: Instant,
}

#[derive(Default)]
pub(super) struct Logins(Mutex<HashMap<String, Login>>);

/// There are [`MAX_LOGINS`] logins already.
#[derive(Debug)]
pub(super) struct TooMany;

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Login>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a login for `auditor`: the cookie's value.
    pub(super) fn open(&self, auditor: &str) -> Result<String, TooMany> {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut logins = self.lock();
        let now = Instant::now();
        logins.retain(|_, login| login.expires > now);
        if logins.len() >= MAX_LOGINS {
            return Err(TooMany);
        }
        logins.insert(
            id.clone(),
            Login {
                auditor: auditor.to_owned(),
                expires: now + LOGIN_TTL,
            },
        );
        Ok(id)
    }

    /// The auditor of the login `id`, while it lasts.
    pub(super) fn auditor(&self, id: &str) -> Option<String> {
        let mut logins = self.lock();
        match logins.get(id) {
            Some(login) if login.expires > Instant::now() => Some(login.auditor.clone()),
            Some(_) => {
                logins.remove(id);
                None
            }
            None => None,
        }
    }

    pub(super) fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The login a request's cookie names, if any. The first cookie of the
/// name counts: a browser sends the one of the longest path first, and
/// the proxy's own is set for `/admin` (a page of another port of this
/// machine may set one for `/`).
pub(super) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .map(|cookie| cookie.value().to_owned())
}

/// The cookie that carries the login `id`; over TLS the browser must never
/// send it in clear.
pub(super) fn login_cookie(id: String, tls: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, id))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .max_age(LOGIN_TTL.try_into().unwrap_or_default())
        .build()
}

/// The cookie that makes the browser forget the login: the same cookie,
/// empty, expired now.
pub(super) fn logout_cookie(tls: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, ""))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .max_age(Default::default())
        .build()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_login_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; portcullis_console=abc123; x=y"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc123"));
        headers.insert(header::COOKIE, HeaderValue::from_static("other=1"));
        assert_eq!(cookie(&headers), None);
        // Of two, the first (the browser sends the longest path first).
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_console=own; portcullis_console=planted"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("own"));
    }

    #[test]
    fn the_cookies_keep_their_attributes() {
        assert_eq!(
            login_cookie("abc".into(), false).to_string(),
            "portcullis_console=abc; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=28800"
        );
        assert_eq!(
            login_cookie("abc".into(), true).to_string(),
            "portcullis_console=abc; HttpOnly; SameSite=Strict; Secure; Path=/admin; Max-Age=28800"
        );
        assert_eq!(
            logout_cookie(false).to_string(),
            "portcullis_console=; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=0"
        );
        assert_eq!(
            logout_cookie(true).to_string(),
            "portcullis_console=; HttpOnly; SameSite=Strict; Secure; Path=/admin; Max-Age=0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_lasts_eight_hours() {
        let logins = Logins::default();
        let Ok(id) = logins.open("alice") else {
            panic!("room for a login");
        };
        tokio::time::advance(LOGIN_TTL - Duration::from_secs(1)).await;
        assert_eq!(logins.auditor(&id).as_deref(), Some("alice"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(logins.auditor(&id), None);
        assert!(logins.lock().is_empty(), "an expired login is dropped");
    }

    #[test]
    fn logins_past_the_cap_are_refused_and_an_ended_one_makes_room() {
        let logins = Logins::default();
        let ids: Vec<String> = (0..MAX_LOGINS)
            .filter_map(|_| logins.open("alice").ok())
            .collect();
        assert_eq!(ids.len(), MAX_LOGINS);
        assert!(logins.open("bob").is_err());
        logins.end(&ids[0]);
        assert_eq!(logins.auditor(&ids[0]), None);
        assert!(logins.open("bob").is_ok());
    }
}
