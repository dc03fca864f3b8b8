//! The frame of the console's pages (header, navigation, the security
//! headers every page is sent with) and the login page, which the
//! console's routes and the authentication that answers a console request
//! without a login both send.
//!
//! HTML is built with maud: what is spliced in is escaped, so a value from
//! the log (tool names, reasons and details come from clients and servers)
//! can never become markup.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};

/// A page with the console's headers.
pub(super) fn page(
    status: StatusCode,
    title: &str,
    auditor: Option<&str>,
    body: Markup,
) -> Response {
    let html = html! {
        (PreEscaped("<!doctype html>\n"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Portcullis" }
                link rel="stylesheet" href="/admin/static/console.css";
                script src="/admin/static/console.js" defer {}
            }
            body {
                header {
                    h1 { "Portcullis" }
                    @if let Some(auditor) = auditor {
                        nav {
                            a href="/admin/" { "Calls" }
                            a href="/admin/servers" { "Servers" }
                            a href="/admin/fleet" { "Fleet" }
                            a href="/admin/pins" { "Tool pins" }
                            a href="/admin/policies" { "Policies" }
                            span class="who" { (auditor) }
                            form method="post" action="/admin/logout" {
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
        "\n"
    };
    let mut response = (status, html.into_string()).into_response();
    secure(&mut response, "text/html; charset=utf-8");
    response
}

/// The console's headers: a strict Content-Security-Policy (scripts and
/// styles from the proxy only, no inline script), `nosniff`, no framing,
/// no caching, and the referrer sent to the proxy itself only (with
/// `no-referrer` a form's `Origin` would be `null`, which the origin check
/// refuses).
pub(super) fn secure(response: &mut Response, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

pub(super) fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    page(
        status,
        "Log in",
        None,
        html! {
            section class="login" {
                h2 { "Auditors' console" }
                @if let Some(problem) = problem {
                    p class="problem" role="alert" { (problem) }
                }
                form method="post" action="/admin/login" {
                    label for="token" { "Auditor token" }
                    input id="token" name="token" type="password" autocomplete="off" required;
                    button type="submit" { "Log in" }
                }
                p class="hint" {
                    "An " code { "[[auditors]]" } " token from the proxy's config. Client tokens cannot read the log."
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn the_frame_escapes_the_title_and_the_auditor() {
        let html = text(page(
            StatusCode::OK,
            "<b>t</b>",
            Some("a\"<i>"),
            html! { p { "body" } },
        ))
        .await;
        assert!(
            html.starts_with("<!doctype html>\n<html lang=\"en\">"),
            "{html}"
        );
        assert!(
            html.contains("<title>&lt;b&gt;t&lt;/b&gt; · Portcullis</title>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"who\">a&quot;&lt;i&gt;</span>"),
            "{html}"
        );
        assert!(html.contains("<main><p>body</p></main>"), "{html}");
    }

    #[tokio::test]
    async fn the_login_page_has_the_form_and_no_navigation() {
        let response = login_page(StatusCode::UNAUTHORIZED, Some("No <b>."));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        let html = text(response).await;
        assert!(html.contains("name=\"token\""), "{html}");
        assert!(
            html.contains("<p class=\"problem\" role=\"alert\">No &lt;b&gt;.</p>"),
            "{html}"
        );
        assert!(!html.contains("<nav>"), "{html}");
    }
}
