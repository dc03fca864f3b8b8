//! The pages a person's browser is shown during a sign-in (the desktop's
//! loopback callback, the proxy's `/oauth/` pages).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A plain page: `text`, and with `go_on` a form that takes link `go_on`
/// on. Never cached, never naming its URL to another site, never framed,
/// running nothing.
pub fn page(status: StatusCode, text: &str, go_on: Option<&str>) -> Response {
    let form = go_on.map_or_else(String::new, |id| {
        format!(
            "<form method=post action=/oauth/start><input type=hidden name=id value=\"{}\"><button type=submit>Sign in</button></form>",
            escape(id)
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
        (header::REFERRER_POLICY, "no-referrer"),
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
