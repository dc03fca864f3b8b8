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

    /// The auditor of the one login among `ids` (a request's login
    /// cookies): a planted cookie that names no login is passed over (it
    /// cannot lock an auditor out), and two that name different logins
    /// are refused (nobody is made to act under another's login).
    pub(super) fn auditor_of(&self, ids: &[String]) -> Option<String> {
        let mut found: Option<(&str, String)> = None;
        for id in ids {
            let Some(auditor) = self.auditor(id) else {
                continue;
            };
            match &found {
                Some((seen, _)) if *seen != id.as_str() => return None,
                _ => found = Some((id, auditor)),
            }
        }
        found.map(|(_, auditor)| auditor)
    }

    pub(super) fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The values of every login cookie a request carries. A browser may send
/// several: a page of another port of this machine (or a sibling host) can
/// plant one, even for a longer path than ours, so that it comes first.
pub(super) fn cookies(headers: &HeaderMap) -> Vec<String> {
    cookies_named(headers, COOKIE)
}

/// The values of every cookie named `name` a request carries.
pub(super) fn cookies_named(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
        .collect()
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
    fn the_login_cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; portcullis_console=abc123; x=y"),
        );
        assert_eq!(cookies(&headers), ["abc123"]);
        headers.insert(header::COOKIE, HeaderValue::from_static("other=1"));
        assert!(cookies(&headers).is_empty());
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_console=planted; portcullis_console=own"),
        );
        assert_eq!(cookies(&headers), ["planted", "own"]);
    }

    #[test]
    fn a_planted_cookie_neither_locks_out_nor_stands_in_for_a_login() {
        let logins = Logins::default();
        let (Ok(own), Ok(other)) = (logins.open("alice"), logins.open("mallory")) else {
            panic!("room for logins");
        };
        // Junk planted first (a longer path) is passed over, either order.
        for ids in [
            vec!["junk".to_owned(), own.clone()],
            vec![own.clone(), "junk".to_owned()],
            vec![own.clone(), own.clone()],
        ] {
            assert_eq!(logins.auditor_of(&ids).as_deref(), Some("alice"), "{ids:?}");
        }
        // Another's valid login beside one's own: neither counts.
        assert_eq!(logins.auditor_of(&[other.clone(), own.clone()]), None);
        assert_eq!(logins.auditor_of(&[own, other]), None);
        assert_eq!(logins.auditor_of(&["junk".to_owned()]), None);
        assert_eq!(logins.auditor_of(&[]), None);
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
