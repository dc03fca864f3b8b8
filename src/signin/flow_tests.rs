#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;

use super::*;

fn found(base: &str) -> Discovered {
    Discovered {
        url: format!("{base}/mcp"),
        resource: format!("{base}/mcp"),
        resource_metadata: format!("{base}/.well-known/oauth-protected-resource/mcp"),
        scopes: vec!["mcp".into(), "read".into()],
        issuer: base.to_owned(),
        issuer_metadata: format!("{base}/.well-known/oauth-authorization-server"),
        authorization_endpoint: format!("{base}/authorize?tenant=t1"),
        token_endpoint: format!("{base}/token"),
        registration_endpoint: Some(format!("{base}/register")),
        revocation_endpoint: Some(format!("{base}/revoke")),
        client_id_metadata_documents: false,
        token_endpoint_auth_methods: vec!["client_secret_post".into(), "none".into()],
        iss_parameter: true,
        alias: None,
    }
}

fn client(method: &str) -> Registration {
    Registration {
        issuer: "https://as.example".into(),
        client_id: "client-1".into(),
        client_secret: Some("client-secret-9f2".into()),
        auth_method: method.into(),
        redirect_uri: "http://127.0.0.1:7000/callback".into(),
        secret_expires_at: None,
    }
}

fn http() -> HttpClient {
    crate::signin::test_http()
}

/// A loopback server answering every POST with `answer`: its base URL,
/// and the bodies and authorization headers it received.
async fn endpoint(answer: Value, status: u16) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let handler = move |headers: axum::http::HeaderMap, body: String| {
        let kept = kept.clone();
        let answer = answer.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            kept.lock().unwrap().push((body, auth));
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(answer),
            )
        }
    };
    let router = Router::new().route("/{*path}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, seen)
}

#[test]
fn the_link_asks_for_the_resource_with_pkce_and_a_fresh_state() {
    let found = found("https://as.example");
    let one = start(&found, &client("none")).unwrap();
    let two = start(&found, &client("none")).unwrap();
    assert_ne!(one.state, two.state);
    assert_ne!(one.verifier, two.verifier);
    assert_eq!(one.verifier.len(), 43);
    let link = reqwest::Url::parse(&one.link).unwrap();
    let pairs: Vec<(String, String)> = link.query_pairs().into_owned().collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("tenant"), "t1", "the endpoint's own query is kept");
    assert_eq!(get("response_type"), "code");
    assert_eq!(get("client_id"), "client-1");
    assert_eq!(get("redirect_uri"), "http://127.0.0.1:7000/callback");
    assert_eq!(get("code_challenge_method"), "S256");
    assert_eq!(
        get("code_challenge"),
        URL_SAFE_NO_PAD.encode(Sha256::digest(one.verifier.as_bytes()))
    );
    assert_eq!(get("state"), one.state);
    assert_eq!(get("resource"), "https://as.example/mcp");
    assert_eq!(get("scope"), "mcp read");
    assert!(!one.link.contains(&one.verifier));
}

#[test]
fn an_answer_is_taken_only_for_its_own_state_and_issuer() {
    let found = found("https://as.example");
    let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let good = pairs(&[
        ("code", "c0de"),
        ("state", "s1"),
        ("iss", "https://as.example"),
    ]);
    assert_eq!(answered(&found, "s1", &good).unwrap(), "c0de");
    for (query, expected) in [
        (
            pairs(&[
                ("code", "c0de"),
                ("state", "s2"),
                ("iss", "https://as.example"),
            ]),
            "state",
        ),
        (
            pairs(&[("code", "c0de"), ("iss", "https://as.example")]),
            "state",
        ),
        (
            pairs(&[
                ("code", "c0de"),
                ("state", "s1"),
                ("iss", "https://evil.example"),
            ]),
            "evil",
        ),
        (pairs(&[("code", "c0de"), ("state", "s1")]), "(none)"),
        // A refusal that names no issuer: a refusal still, said so; a
        // code beside it is not taken.
        (
            pairs(&[
                ("code", "c0de"),
                ("error", "invalid_scope"),
                ("error_description", "call +1 555 0100 for help"),
                ("state", "s1"),
            ]),
            "invalid_scope (the answer names no issuer: its description is not shown)",
        ),
        (
            pairs(&[("state", "s1"), ("iss", "https://as.example")]),
            "no usable",
        ),
        (
            pairs(&[
                ("code", "a\u{1b}[2J"),
                ("state", "s1"),
                ("iss", "https://as.example"),
            ]),
            "no usable",
        ),
        (
            pairs(&[
                ("error", "access_denied"),
                ("error_description", "no\u{1b}[2J"),
                ("state", "s1"),
                ("iss", "https://as.example"),
            ]),
            "access_denied",
        ),
    ] {
        let err = answered(&found, "s1", &query).unwrap_err().to_string();
        assert!(err.contains(expected), "{query:?}: {err}");
        assert!(!err.contains('\u{1b}'), "{err:?}");
    }
    // A server that does not name itself: no `iss` is needed.
    let mut quiet = found.clone();
    quiet.iss_parameter = false;
    let without = pairs(&[("code", "c0de"), ("state", "s1")]);
    assert_eq!(answered(&quiet, "s1", &without).unwrap(), "c0de");
}

#[tokio::test]
async fn registration_takes_only_what_the_proxy_can_use() {
    let (base, seen) = endpoint(
        json!({"client_id": "new-client", "client_secret": "s3cret", "token_endpoint_auth_method": "client_secret_post"}),
        201,
    )
    .await;
    let found = found(&base);
    let registered = register(&http(), &found, "http://127.0.0.1:7000/callback")
        .await
        .unwrap();
    assert_eq!(registered.client_id, "new-client");
    assert_eq!(registered.auth_method, "client_secret_post");
    assert!(!format!("{registered:?}").contains("s3cret"));
    let (body, _) = seen.lock().unwrap()[0].clone();
    let asked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        asked["redirect_uris"],
        json!(["http://127.0.0.1:7000/callback"])
    );
    assert_eq!(asked["token_endpoint_auth_method"], "client_secret_post");
    assert_eq!(asked["scope"], "mcp read");
    assert_eq!(asked["application_type"], "native");
    // The proxy's own web callback registers a web application.
    register(&http(), &found, "https://proxy.example/oauth/callback")
        .await
        .unwrap();
    let (body, _) = seen.lock().unwrap()[1].clone();
    let asked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(asked["application_type"], "web");
    assert_eq!(registered.secret_expires_at, None);
    assert!(!registered.expired());

    // A secret that expires: kept with its time. One about to expire is
    // refused (the proxy would register again at each sign-in).
    let later = unix_now() + 7200;
    let (base, _) = endpoint(
        json!({"client_id": "c", "client_secret": "s", "client_secret_expires_at": later}),
        201,
    )
    .await;
    let registered = register(&http(), &self::found(&base), "http://127.0.0.1:1/cb")
        .await
        .unwrap();
    assert_eq!(registered.secret_expires_at, Some(later));
    assert!(!registered.expired());
    let mut past = registered.clone();
    past.secret_expires_at = Some(1_000);
    assert!(past.expired());

    for (answer, status, expected) in [
        (json!({"client_secret": "x"}), 201, "no usable client_id"),
        (json!({"client_id": "a\nb"}), 201, "no usable client_id"),
        (
            json!({"client_id": "c".repeat(1500)}),
            201,
            "too long to keep",
        ),
        (
            json!({"client_id": "c", "token_endpoint_auth_method": "private_key_jwt"}),
            201,
            "cannot use",
        ),
        (
            json!({"client_id": "c", "token_endpoint_auth_method": "client_secret_basic"}),
            201,
            "no client_secret",
        ),
        (
            json!({"error": "invalid_client_metadata", "error_description": "bad\u{1b}[2J"}),
            400,
            "invalid_client_metadata",
        ),
    ] {
        let (base, _) = endpoint(answer, status).await;
        let err = register(&http(), &self::found(&base), "http://127.0.0.1:1/cb")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains('\u{1b}'), "{err:?}");
    }
    let mut none = self::found(&base);
    none.registration_endpoint = None;
    assert!(matches!(
        register(&http(), &none, "http://127.0.0.1:1/cb").await,
        Err(FlowError::NoRegistration(_))
    ));
    none.registration_endpoint = Some(format!("{base}/register"));
    none.token_endpoint_auth_methods = vec!["private_key_jwt".into()];
    assert!(matches!(
        register(&http(), &none, "http://127.0.0.1:1/cb").await,
        Err(FlowError::NoAuthMethod(_))
    ));
}

#[tokio::test]
async fn the_code_is_exchanged_with_the_verifier_and_the_client_as_registered() {
    let (base, seen) = endpoint(
        json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1", "scope": "mcp"}),
        200,
    )
    .await;
    let found = found(&base);
    for method in ["client_secret_basic", "client_secret_post", "none"] {
        let tokens = exchange(&http(), &found, &client(method), "the-code", "the-verifier")
            .await
            .unwrap();
        assert_eq!(tokens.access_token, "at-1");
        assert_eq!(tokens.refresh_token.as_deref(), Some("rt-1"));
        assert_eq!(tokens.scopes, ["mcp"]);
        assert!(tokens.expires_at.unwrap() >= unix_now() + 3500);
        let (body, auth) = seen.lock().unwrap().pop().unwrap();
        let form: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{body}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        assert!(has("grant_type", "authorization_code"), "{body}");
        assert!(
            has("code", "the-code") && has("code_verifier", "the-verifier"),
            "{body}"
        );
        assert!(has("resource", &format!("{base}/mcp")), "{body}");
        match method {
            "client_secret_basic" => {
                let pair = auth.strip_prefix("Basic ").unwrap();
                let pair = base64::engine::general_purpose::STANDARD
                    .decode(pair)
                    .unwrap();
                assert_eq!(pair, b"client-1:client-secret-9f2", "{auth}");
                assert!(has("client_id", "client-1"), "{body}");
                assert!(!body.contains("client-secret-9f2"), "{body}");
            }
            "client_secret_post" => {
                assert!(auth.is_empty());
                assert!(has("client_id", "client-1") && has("client_secret", "client-secret-9f2"));
            }
            _ => {
                assert!(auth.is_empty());
                assert!(has("client_id", "client-1") && !body.contains("client_secret"));
            }
        }
    }
    // A refresh keeps the refresh token when no new one comes.
    let (base, seen) = endpoint(json!({"access_token": "at-2", "token_type": "bearer"}), 200).await;
    let kept = exchange(&http(), &found, &client("none"), "c", "v")
        .await
        .unwrap();
    assert_eq!(kept.resource, found.resource);
    let fresh = refresh(&http(), &self::found(&base), &client("none"), &kept)
        .await
        .unwrap();
    assert_eq!(fresh.access_token, "at-2");
    assert_eq!(fresh.refresh_token.as_deref(), Some("rt-1"));
    assert_eq!(fresh.scopes, ["mcp"]);
    let (body, auth) = seen.lock().unwrap().pop().unwrap();
    let mut form: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    form.sort();
    let expected = [
        ("client_id", "client-1".to_owned()),
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", "rt-1".to_owned()),
        ("resource", format!("{base}/mcp")),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    assert_eq!(form, expected, "{body}");
    assert!(auth.is_empty());
}

#[tokio::test]
async fn a_token_answer_that_could_inject_or_is_not_bearer_is_refused() {
    for (answer, status, expected) in [
        (
            json!({"access_token": "a\r\nX-Evil: 1", "token_type": "Bearer"}),
            200,
            "no access_token",
        ),
        (
            json!({"access_token": "", "token_type": "Bearer"}),
            200,
            "no access_token",
        ),
        (
            json!({"access_token": "a", "token_type": "DPoP"}),
            200,
            "not a bearer",
        ),
        (
            json!({"access_token": "a", "refresh_token": 7}),
            200,
            "refresh_token",
        ),
        (
            json!({"access_token": "a", "scope": "mcp \u{1b}[2J"}),
            200,
            "scope",
        ),
        (
            json!({"error": "invalid_grant", "error_description": "code\u{1b}]0;x"}),
            400,
            "invalid_grant",
        ),
    ] {
        let (base, _) = endpoint(answer, status).await;
        let err = exchange(&http(), &found(&base), &client("none"), "c", "v")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");
    }
}

#[tokio::test]
async fn a_huge_expires_in_is_taken_as_a_year_at_most() {
    let (base, _) = endpoint(
        json!({"access_token": "a", "token_type": "Bearer", "expires_in": u64::MAX}),
        200,
    )
    .await;
    let tokens = exchange(&http(), &found(&base), &client("none"), "c", "v")
        .await
        .unwrap();
    let at = tokens.expires_at.unwrap();
    assert!(
        at <= unix_now() + 366 * 24 * 3600 && at > unix_now(),
        "{at}"
    );
}

/// The proxy registers to authenticate one way, in the form where the
/// server offers it (some refuse HTTP Basic beside a form `client_id`),
/// else the first the server lists that it can use.
#[tokio::test]
async fn registration_asks_for_the_secret_in_the_form_where_offered() {
    let (base, seen) = endpoint(
        json!({"client_id": "new-client", "token_endpoint_auth_method": "none"}),
        201,
    )
    .await;
    let mut offered = found(&base);
    for (methods, asked_for) in [
        (
            vec!["none", "client_secret_basic", "client_secret_post"],
            "client_secret_post",
        ),
        (vec!["none", "client_secret_basic"], "none"),
        (vec!["client_secret_basic", "none"], "client_secret_basic"),
        (vec!["private_key_jwt", "none"], "none"),
    ] {
        offered.token_endpoint_auth_methods = methods.iter().map(|m| (*m).to_owned()).collect();
        register(&http(), &offered, "http://127.0.0.1:7000/callback")
            .await
            .unwrap();
        let (body, _) = seen.lock().unwrap().last().unwrap().clone();
        let asked: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            asked["token_endpoint_auth_method"], asked_for,
            "{methods:?}"
        );
    }
}
