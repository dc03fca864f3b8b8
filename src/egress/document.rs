//! A JSON document read from a peer (an identity provider's or an
//! authorization server's metadata, a key set, an introspection answer, a
//! server's protected resource metadata): bounded in size, never following
//! a redirect, only from `https://` (or `http://` on loopback) URLs; an
//! error names the URL, never a token.

use serde_json::Value;

use crate::config::secure_url;

use super::HttpClient;

/// The most a document may weigh.
const MAX_DOCUMENT: usize = 512 * 1024;

/// A request to `url`, if the guard lets it be made.
pub fn request(
    http: &HttpClient,
    method: reqwest::Method,
    url: &str,
) -> Result<reqwest::RequestBuilder, String> {
    http.request_to(method, url)
        .map_err(|err| format!("{}: {err}", named(url)))
}

/// `url` as a message may name it: its scheme, host, port and path, never
/// its user info, query or fragment (which may carry credentials), with
/// control and non-ASCII characters escaped and at most 200 characters.
pub fn named(url: &str) -> String {
    let shown = match reqwest::Url::parse(url) {
        Ok(parsed) => format!("{}{}", super::origin(&parsed), parsed.path()),
        Err(_) => "(not a URL)".to_owned(),
    };
    shown
        .chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect()
}

/// `url`'s origin (`https://host:port`, without user info) and its path
/// without trailing slashes (`/mcp`, or empty): what well-known URLs are
/// made of (RFC 8615, RFC 8414 §3.1, RFC 9728 §3.1).
pub fn origin_and_path(url: &reqwest::Url) -> (String, String) {
    (
        url.origin().ascii_serialization(),
        url.path().trim_end_matches('/').to_owned(),
    )
}

/// A JSON object read with `request`, from `url`.
pub async fn json(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    let shown = named(url);
    if !secure_url(url) {
        return Err(format!(
            "`{shown}` is not https:// (http:// is taken only on loopback)"
        ));
    }
    let response = super::send(request.header(reqwest::header::ACCEPT, "application/json"))
        .await
        .map_err(|err| format!("{shown}: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{shown} answered {status}"));
    }
    let body = super::read_limited(response, MAX_DOCUMENT)
        .await
        .map_err(|err| format!("{shown}: {err}"))?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(format!("{shown} did not send a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_named_without_what_may_carry_credentials() {
        assert_eq!(
            named("https://user:pass@api.example:8443/a/mcp?api_key=s3cret#frag"),
            "https://api.example:8443/a/mcp"
        );
        assert_eq!(named("not a url s3cret"), "(not a URL)");
        let shown = named("https://h.example/\u{202e}x\u{1b}[2J");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{202e}'),
            "{shown}"
        );
    }

    #[test]
    fn well_known_parts_leave_out_user_info_query_and_trailing_slashes() {
        let url = reqwest::Url::parse("https://u:p@s.example/a/mcp//?x=1#f").expect("url");
        assert_eq!(
            origin_and_path(&url),
            ("https://s.example".to_owned(), "/a/mcp".to_owned())
        );
        let url = reqwest::Url::parse("http://127.0.0.1:9").expect("url");
        assert_eq!(
            origin_and_path(&url),
            ("http://127.0.0.1:9".to_owned(), String::new())
        );
    }
}
