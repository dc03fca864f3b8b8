//! The proxy as an OAuth 2.1 protected resource (`[oauth]`): its metadata
//! (RFC 9728) at `/.well-known/oauth-protected-resource` followed by the
//! path of `/mcp`'s URL, and at the bare well-known path; and the
//! `WWW-Authenticate` challenges of the MCP authorization spec, which
//! point a client at that metadata (and at the scopes to ask for).
//!
//! The metadata is public (a client reads it before it has a token): it
//! names the resource, the authorization servers the proxy trusts and the
//! scopes, and nothing else.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::state::{HttpState, plain_error};
use crate::config::OauthConfig;
use crate::protocol::At;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata's routes: the bare well-known path, and it followed by
/// the resource's path (404 without `[oauth]`, and for any other path).
pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/.well-known/oauth-protected-resource", get(metadata))
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(metadata_at),
        )
}

async fn metadata_at(state: State<Arc<HttpState>>, Path(path): Path<String>) -> Response {
    let ours = state.oauth.as_ref().is_some_and(|oauth| {
        resource_path(&oauth.config().resource) == format!("/{}", path.trim_end_matches('/'))
    });
    if !ours {
        return plain_error(StatusCode::NOT_FOUND, "no such resource here");
    }
    metadata(state).await
}

async fn metadata(State(state): State<Arc<HttpState>>) -> Response {
    let Some(oauth) = &state.oauth else {
        return plain_error(StatusCode::NOT_FOUND, "no OAuth here");
    };
    let config = oauth.config();
    let mut body = json!({
        "resource": config.resource,
        "authorization_servers": config
            .providers
            .iter()
            .map(|provider| Value::from(provider.issuer.as_str()))
            .collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Portcullis",
    });
    if !config.scopes.is_empty() {
        body.put(&["scopes_supported"], json!(config.scopes));
    }
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        )],
        axum::Json(body),
    )
        .into_response()
}

/// The path of the resource's URL (`/mcp`), without a trailing `/`; empty
/// for a URL without one.
fn resource_path(resource: &str) -> &str {
    let after_scheme = resource.find("://").map_or(0, |at| at + 3);
    let rest = &resource[after_scheme..];
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.trim_end_matches('/')
}

/// The URL of the resource's metadata.
pub(super) fn metadata_url(oauth: &OauthConfig) -> String {
    let path = resource_path(&oauth.resource);
    let after_scheme = oauth.resource.find("://").map_or(0, |at| at + 3);
    let origin_end = oauth.resource[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(oauth.resource.len(), |at| after_scheme + at);
    format!("{}{WELL_KNOWN}{path}", &oauth.resource[..origin_end])
}

/// How a request failed to prove who it is, for the challenge.
pub(super) enum Challenge<'a> {
    /// No token came (or one of no known kind): where to get one.
    NoToken,
    /// A token came and was refused.
    InvalidToken(&'a str),
    /// A good token without the scopes needed.
    InsufficientScope,
}

/// The `WWW-Authenticate` value for a refusal at `/mcp`.
pub(super) fn challenge(oauth: &OauthConfig, kind: Challenge<'_>) -> HeaderValue {
    let mut value = format!("Bearer resource_metadata=\"{}\"", metadata_url(oauth));
    let scopes = match kind {
        Challenge::InsufficientScope => &oauth.required_scopes,
        _ if oauth.scopes.is_empty() => &oauth.required_scopes,
        _ => &oauth.scopes,
    };
    if !scopes.is_empty() {
        value.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
    }
    match kind {
        Challenge::NoToken => {}
        Challenge::InvalidToken(description) => value.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{}\"",
            description.replace(['"', '\\'], "'")
        )),
        Challenge::InsufficientScope => value.push_str(", error=\"insufficient_scope\""),
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(resource: &str) -> OauthConfig {
        OauthConfig {
            resource: resource.into(),
            scopes: vec!["mcp".into()],
            required_scopes: vec![],
            providers: vec![],
            egress: Default::default(),
        }
    }

    #[test]
    fn the_metadata_url_inserts_the_well_known_path_before_the_resources_path() {
        assert_eq!(
            metadata_url(&oauth("https://proxy.example.com/mcp")),
            "https://proxy.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url(&oauth("http://127.0.0.1:8811/team/mcp/")),
            "http://127.0.0.1:8811/.well-known/oauth-protected-resource/team/mcp"
        );
        assert_eq!(
            metadata_url(&oauth("https://proxy.example.com")),
            "https://proxy.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn a_challenge_names_the_metadata_the_scopes_and_the_error() {
        let config = oauth("https://proxy.example.com/mcp");
        let value = challenge(&config, Challenge::InvalidToken("the \"token\" expired"));
        assert_eq!(
            value.to_str().unwrap(),
            "Bearer resource_metadata=\"https://proxy.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\", error=\"invalid_token\", error_description=\"the 'token' expired\""
        );
    }
}
