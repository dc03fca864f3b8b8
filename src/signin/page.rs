//! The pages a person's browser is shown during a sign-in (the desktop's
//! loopback callback, the proxy's `/oauth/` pages).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A plain page: `text`, and with `go_on` (a link's id and the form's
/// token) a form that takes that link on. Never cached, never naming its
/// URL to another site, never framed, running nothing. The form posts to
/// `start` beside the page (a `public_url` with a path keeps it).
pub fn page(status: StatusCode, text: &str, go_on: Option<(&str, &str)>) -> Response {
    let form = go_on.map_or_else(String::new, |(id, token)| {
        format!(
            "<form method=post action=start><input type=hidden name=id value=\"{}\"><input type=hidden name=form value=\"{}\"><button type=submit>Sign in</button></form>",
            escape(id),
            escape(token)
        )
    });
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Portcullis sign-in</title><p>{}</p>{form}",
        escape(text)
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // Sent to the proxy itself only (its URL may hold a link's id or a
        // code); `no-referrer` would make the form's `Origin` `null`, which
        // the proxy refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}
