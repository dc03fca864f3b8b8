#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::*;

/// Serves `router` on a loopback port: its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

fn loopback_allowed() -> EgressConfig {
    EgressConfig {
        allow: Arc::from(vec!["127.0.0.0/8".parse().unwrap()]),
    }
}

fn challenge(value: String) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("www-authenticate", value.parse().unwrap());
    (StatusCode::UNAUTHORIZED, headers, "{}").into_response()
}

/// A protected server and its authorization server on one origin: the
/// resource metadata and the issuer's as given (`{base}` replaced by the
/// server's base URL); the challenge points at the metadata when `point`.
async fn server(resource: Value, issuer: Value, point: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fill = |doc: Value| -> Value {
        serde_json::from_str(&doc.to_string().replace("{base}", &base)).unwrap()
    };
    let (resource, issuer) = (fill(resource), fill(issuer));
    let header = if point {
        format!(
            "Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\", scope=\"mcp read\""
        )
    } else {
        "Bearer".to_owned()
    };
    let router = Router::new()
        .route("/mcp", post(move || async move { challenge(header) }))
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(move || async move { axum::Json(resource) }),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || async move { axum::Json(issuer) }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

fn good_resource() -> Value {
    json!({ "resource": "{base}/mcp", "authorization_servers": ["{base}"], "scopes_supported": ["mcp"] })
}

fn good_issuer() -> Value {
    json!({
        "issuer": "{base}",
        "authorization_endpoint": "{base}/authorize",
        "token_endpoint": "{base}/token",
        "registration_endpoint": "{base}/register",
        "revocation_endpoint": "{base}/revoke",
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": true
    })
}

async fn discovered(base: &str) -> Result<Discovered, DiscoverError> {
    expected(base, &Expect::default()).await
}

async fn expected(base: &str, expect: &Expect) -> Result<Discovered, DiscoverError> {
    let url = format!("{base}/mcp");
    let http = discovery_client_of(&loopback_allowed(), &url, false).unwrap();
    discover(&http, &url, expect).await
}

#[tokio::test]
async fn a_server_that_asks_for_sign_in_is_learned_whole() {
    let base = server(good_resource(), good_issuer(), true).await;
    let found = discovered(&base).await.unwrap();
    assert_eq!(found.resource, format!("{base}/mcp"));
    assert_eq!(
        found.resource_metadata,
        format!("{base}/.well-known/oauth-protected-resource/mcp")
    );
    // The challenge's scopes before the metadata's.
    assert_eq!(found.scopes, ["mcp", "read"]);
    assert_eq!(found.issuer, base);
    assert_eq!(found.authorization_endpoint, format!("{base}/authorize"));
    assert_eq!(found.token_endpoint, format!("{base}/token"));
    assert_eq!(
        found.registration_endpoint,
        Some(format!("{base}/register"))
    );
    assert_eq!(found.revocation_endpoint, Some(format!("{base}/revoke")));
    assert!(found.client_id_metadata_documents);

    // Without `resource_metadata` in the challenge: the well-known URL of
    // the server's path, and the metadata's scopes.
    let base = server(good_resource(), good_issuer(), false).await;
    let found = discovered(&base).await.unwrap();
    assert_eq!(found.scopes, ["mcp"]);
}

#[tokio::test]
async fn metadata_for_another_resource_or_issuer_is_refused() {
    let other = json!({ "resource": "{base}/other", "authorization_servers": ["{base}"] });
    let base = server(other, good_issuer(), true).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::OtherResource { .. }), "{err}");

    let elsewhere =
        json!({ "resource": "https://elsewhere.example/mcp", "authorization_servers": ["{base}"] });
    let base = server(elsewhere, good_issuer(), true).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::OtherResource { .. }
    ));

    let mut issuer = good_issuer();
    issuer["issuer"] = json!("https://evil.example");
    let base = server(good_resource(), issuer, true).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::OtherIssuer { .. }), "{err}");
}

#[tokio::test]
async fn an_authorization_server_without_pkce_or_safe_endpoints_is_refused() {
    let mut plain = good_issuer();
    plain
        .as_object_mut()
        .unwrap()
        .remove("code_challenge_methods_supported");
    let base = server(good_resource(), plain, true).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::NoPkce(_)
    ));

    let mut only_plain = good_issuer();
    only_plain["code_challenge_methods_supported"] = json!(["plain"]);
    let base = server(good_resource(), only_plain, true).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::NoPkce(_)
    ));

    // A token endpoint that is plain HTTP elsewhere: not used.
    let mut insecure = good_issuer();
    insecure["token_endpoint"] = json!("http://tokens.example/token");
    let base = server(good_resource(), insecure, true).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::Endpoint {
            key: "token_endpoint",
            ..
        }
    ));

    // An authorization server named over plain HTTP off loopback.
    let resource =
        json!({ "resource": "{base}/mcp", "authorization_servers": ["http://idp.example"] });
    let base = server(resource, good_issuer(), true).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::InsecureIssuer(_)
    ));
}

#[tokio::test]
async fn addresses_a_peer_named_are_judged_as_a_peers() {
    // The server is the operator's; its metadata names another loopback
    // origin, which the guard refuses without `[egress] allow`.
    let issuer_base = serve(Router::new().route(
        "/.well-known/oauth-authorization-server",
        get(|| async { "{}" }),
    ))
    .await;
    let resource =
        json!({ "resource": "{base}/mcp", "authorization_servers": [issuer_base.clone()] });
    let base = server(resource, good_issuer(), true).await;
    let url = format!("{base}/mcp");
    let http = discovery_client_of(&EgressConfig::default(), &url, false).unwrap();
    let err = discover(&http, &url, &Expect::default()).await.unwrap_err();
    assert!(
        matches!(err, DiscoverError::NoIssuerMetadata { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("loopback"), "{err}");

    // A challenge pointing at cloud metadata is never read (link-local is
    // refused even where allowed ranges do not name it), and the
    // well-known URL is tried instead.
    let router = Router::new().route(
        "/mcp",
        post(|| async {
            challenge(
                "Bearer resource_metadata=\"https://169.254.169.254/latest/meta-data\"".to_owned(),
            )
        }),
    );
    let base = serve(router).await;
    let err = discovered(&base).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("169.254.169.254"), "{text}");
    assert!(
        text.contains("/.well-known/oauth-protected-resource/mcp"),
        "{text}"
    );
}

#[tokio::test]
async fn a_server_that_does_not_ask_says_so() {
    let base = serve(Router::new().route("/mcp", post(|| async { "{}" }))).await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::NotAsked { status: 200, .. }
    ));
    let base = serve(Router::new().route(
        "/mcp",
        post(|| async { challenge("Basic realm=\"x\"".to_owned()) }),
    ))
    .await;
    assert!(matches!(
        discovered(&base).await.unwrap_err(),
        DiscoverError::NoBearer { .. }
    ));
}

#[test]
fn a_resource_covers_its_own_url_and_those_below_it() {
    assert!(covers("https://s.example/mcp", "https://s.example/mcp"));
    assert!(covers("https://s.example/", "https://s.example/mcp"));
    assert!(covers("https://s.example", "https://s.example/mcp"));
    assert!(covers("https://s.example/mcp/", "https://s.example/mcp"));
    assert!(!covers("https://s.example/mc", "https://s.example/mcp"));
    assert!(!covers("https://s.example/mcp/x", "https://s.example/mcp"));
    assert!(!covers(
        "https://s.example:444/mcp",
        "https://s.example/mcp"
    ));
    assert!(!covers("http://s.example/mcp", "https://s.example/mcp"));
    assert!(!covers("https://u@s.example/mcp", "https://s.example/mcp"));
    assert!(!covers(
        "https://s.example/mcp?x=1",
        "https://s.example/mcp"
    ));
    assert!(!covers("not a url", "https://s.example/mcp"));
}

#[test]
fn peer_text_urls_and_scopes_are_taken_only_plain() {
    assert_eq!(printable("a\nb\u{1b}\u{202e}"), "a\\nb\\u{1b}\\u{202e}");
    assert!(plain_url("https://as.example/authorize?tenant=x", true));
    assert!(!plain_url("https://as.example/authorize?tenant=x", false));
    for bad in [
        "https://as.example/\u{1b}[2J",
        "https://as.example/a b",
        "https://as.example/\u{202e}",
        "https://user:pw@as.example/",
        "https://as.example/#frag",
        "not a url",
    ] {
        assert!(!plain_url(bad, true), "{bad:?}");
    }
    assert!(scope_token("repo:read"));
    assert!(scope_token("https://graph.example/.default"));
    for bad in ["", "a\"b", "a\\b", "caf\u{e9}", "a\u{7f}", "a\tb"] {
        assert!(!scope_token(bad), "{bad:?}");
    }
}

#[tokio::test]
async fn hostile_values_in_a_servers_answers_are_refused_not_shown() {
    // A scope carrying terminal escapes, in the metadata (a header
    // cannot carry control characters).
    let mut resource = good_resource();
    resource["scopes_supported"] = json!(["mcp", "\u{1b}[2Jowned"]);
    let base = server(resource, good_issuer(), false).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::BadScope(_)), "{err}");
    assert!(!err.to_string().contains('\u{1b}'), "{err:?}");

    // An issuer with an escape in it.
    let mut resource = good_resource();
    resource["authorization_servers"] = json!(["{base}/\u{1b}]0;title\u{7}"]);
    let base = server(resource, good_issuer(), true).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::BadUrl { .. }), "{err}");
    // Refused for its escape, not for want of a URL: it names the server.
    assert!(
        err.to_string()
            .contains(&format!("{base}/\\u{{1b}}]0;title")),
        "{err}"
    );
    assert!(!err.to_string().contains('\u{1b}'), "{err:?}");

    // A registration endpoint given but unusable is said, not dropped.
    let mut issuer = good_issuer();
    issuer["registration_endpoint"] = json!("javascript:alert(1)");
    let base = server(good_resource(), issuer, true).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(
        matches!(
            err,
            DiscoverError::Endpoint {
                key: "registration_endpoint",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_servers_url_is_named_without_its_credentials() {
    let base = serve(Router::new().route("/mcp", post(|| async { "{}" }))).await;
    let with_secrets = base.replace("http://", "http://user:pw-s3cret@") + "/mcp?api_key=k-s3cret";
    let http = discovery_client_of(&loopback_allowed(), &with_secrets, false).unwrap();
    let err = discover(&http, &with_secrets, &Expect::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DiscoverError::NotAsked { .. }), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("/mcp"), "{text}");
}

#[tokio::test]
async fn endpoints_off_the_issuers_origin_are_refused_unless_allowed() {
    // Another's authorization endpoint beside this issuer's token
    // endpoint (a mix-up: the code and verifier would come here).
    let honest = serve(Router::new()).await;
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
    ] {
        let mut issuer = good_issuer();
        issuer[key] = json!(format!("{honest}/{key}"));
        let base = server(good_resource(), issuer, true).await;
        let err = discovered(&base).await.unwrap_err();
        assert!(
            matches!(&err, DiscoverError::OtherOrigin { key: k, origin, .. } if *k == key && *origin == honest),
            "{key}: {err}"
        );
        // The operator names the provider's other origin: taken.
        let allowed = Expect {
            endpoint_origins: vec![honest.clone()],
            ..Expect::default()
        };
        let found = expected(&base, &allowed).await.unwrap();
        assert_eq!(
            [
                Some(found.authorization_endpoint),
                Some(found.token_endpoint),
                found.registration_endpoint,
                found.revocation_endpoint
            ]
            .iter()
            .filter(|url| url.as_deref() == Some(&format!("{honest}/{key}")))
            .count(),
            1
        );
    }
}

#[tokio::test]
async fn the_issuer_is_the_one_the_operator_named_and_as_it_writes_itself() {
    let base = server(good_resource(), good_issuer(), true).await;
    let pinned = |issuer: String| Expect {
        issuer: Some(issuer),
        ..Expect::default()
    };
    let err = expected(&base, &pinned("https://github.com/login/oauth".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoverError::NotTheIssuer { .. }), "{err}");
    assert!(expected(&base, &pinned(format!("{base}/"))).await.is_ok());

    // The resource metadata names it without a slash, its own metadata
    // with one: RFC 9207's `iss` is compared with the latter.
    let mut issuer = good_issuer();
    issuer["issuer"] = json!("{base}/");
    let base = server(good_resource(), issuer, true).await;
    let found = discovered(&base).await.unwrap();
    assert_eq!(found.issuer, format!("{base}/"));
}

#[tokio::test]
async fn more_scopes_than_a_sign_in_keeps_are_refused_at_discovery() {
    let mut resource = good_resource();
    let many: Vec<String> = (0..200).map(|n| format!("scope-{n}")).collect();
    resource["scopes_supported"] = json!(many);
    let base = server(resource, good_issuer(), false).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::TooManyScopes(_)), "{err}");
}

/// Metadata read at the address the server names, naming another issuer
/// (Atlassian's): refused, as RFC 8414 §3.3 says, unless the operator
/// pinned that issuer and named the address as its alias; then the
/// metadata is read at the alias whichever of the two the server names,
/// its endpoints may be on the alias's origin (not a third), and the
/// issuer found is the one named (what `iss` is compared with). An alias
/// whose metadata names a third issuer, or a server that names neither,
/// is refused still.
#[tokio::test]
async fn an_issuer_known_by_an_alias_the_operator_named_is_taken() {
    let mut issuer = good_issuer();
    issuer["issuer"] = json!("http://localhost:1");
    let base = server(good_resource(), issuer, true).await;
    let err = discovered(&base).await.unwrap_err();
    assert!(matches!(err, DiscoverError::OtherIssuer { .. }), "{err}");
    assert!(err.to_string().contains("issuer_alias"), "{err}");
    let expect = |issuer: &str, alias: Option<String>| Expect {
        issuer: Some(issuer.to_owned()),
        alias,
        ..Expect::default()
    };
    let err = expected(&base, &expect("http://localhost:1", None))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoverError::NotTheIssuer { .. }), "{err}");
    let found = expected(&base, &expect("http://localhost:1", Some(base.clone())))
        .await
        .unwrap();
    assert_eq!(found.issuer, "http://localhost:1");
    assert_eq!(found.token_endpoint, format!("{base}/token"));
    assert_eq!(found.alias.as_deref(), Some(base.as_str()));
    // The alias's metadata names a third issuer: refused.
    let err = expected(&base, &expect("https://other.example", Some(base.clone())))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoverError::OtherIssuer { .. }), "{err}");
    // A server naming the issuer itself: its metadata is still read at
    // the alias (never at an address the operator did not name).
    let mut resource = good_resource();
    resource["authorization_servers"] = json!(["http://localhost:1"]);
    let mut issuer = good_issuer();
    issuer["issuer"] = json!("http://localhost:1");
    let direct = server(resource, issuer, true).await;
    let found = expected(&direct, &expect("http://localhost:1", Some(direct.clone())))
        .await
        .unwrap();
    assert_eq!(found.alias.as_deref(), Some(direct.as_str()));
    // An endpoint on a third origin: refused still.
    let elsewhere = serve(Router::new()).await;
    let mut issuer = good_issuer();
    issuer["issuer"] = json!("http://localhost:1");
    issuer["token_endpoint"] = json!(format!("{elsewhere}/token"));
    let third = server(good_resource(), issuer, true).await;
    let err = expected(&third, &expect("http://localhost:1", Some(third.clone())))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoverError::OtherOrigin { .. }), "{err}");
    // An alias the server does not name: the pin holds.
    let err = expected(
        &base,
        &expect(
            "http://localhost:1",
            Some("https://elsewhere.example".into()),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DiscoverError::NotTheIssuer { .. }), "{err}");
}
