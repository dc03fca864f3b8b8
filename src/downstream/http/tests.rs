//! The router in-process (no sockets): every route is listed with what it
//! answers a request without credentials, so that a route added without
//! its checks fails here; and the idle sweep under paused time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use super::*;
use crate::chain::{Chain, ClientIdentity, Transport};
use crate::config::Config;
use crate::downstream::sessions::{HttpOutlet, HttpSession};
use crate::gateway::Gateway;

const CLIENT_TOKEN: &str = "a-client-token-for-the-router-tests";
const AUDITOR_TOKEN: &str = "an-auditor-token-for-the-router-tests";
const OTHER_TOKEN: &str = "another-client-token-for-the-router-tests";

fn state() -> Arc<HttpState> {
    state_sealing(None)
}

/// A listener's state (a replica of its own: its own gateway and session
/// table), its session ids sealed by `sealer` if given.
fn state_sealing(sealer: Option<crate::downstream::sealed::Sealer>) -> Arc<HttpState> {
    let sha = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    let text = format!(
        "[proxy]\nsession_idle_timeout = \"60s\"\n\n[listener]\nsse = true\nauth_failures_per_source = \"100/min\"\nauth_failures_per_credential = \"100/min\"\n\n\
         [[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\n\n\
         [[clients]]\nname = \"other\"\ntoken_sha256 = \"{}\"\n\n\
         [[auditors]]\nname = \"auditors\"\ntoken_sha256 = \"{}\"\n",
        sha(CLIENT_TOKEN),
        sha(OTHER_TOKEN),
        sha(AUDITOR_TOKEN)
    );
    let config = Config::parse(&text, Path::new("portcullis.toml"))
        .unwrap_or_else(|err| panic!("the test config loads: {err}"));
    let (gateway, _events) =
        Gateway::new(Arc::new(config), Chain::default(), None, Default::default());
    Arc::new(HttpState::new(
        gateway,
        Enforcement::default(),
        None,
        (None, sealer),
    ))
}

/// What a route answers a request that brings no credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Without {
    /// 401 with `WWW-Authenticate: Bearer` (a [`super::super::auth::Client`]).
    Client,
    /// 401 with `WWW-Authenticate: Bearer` (an [`super::super::auth::Auditor`]).
    Auditor,
    /// The console's login page, 200 (a [`super::super::auth::LoggedIn`]).
    LoginPage,
    /// Needs no credentials but is behind the Host/Origin check: a form.
    Form(StatusCode),
    /// Open to anyone, with no check at all.
    Public(StatusCode),
}

/// Every route of the listener, as registered, with its methods.
const ROUTES: &[(&str, Method, Without)] = &[
    ("/mcp", Method::GET, Without::Client),
    ("/mcp", Method::POST, Without::Client),
    ("/mcp", Method::DELETE, Without::Client),
    // HTTP+SSE (`[listener] sse`, on here).
    ("/sse", Method::GET, Without::Client),
    ("/messages", Method::POST, Without::Client),
    ("/admin/audit", Method::GET, Without::Auditor),
    ("/admin/audit/export", Method::GET, Without::Auditor),
    ("/admin/audit/tail", Method::GET, Without::Auditor),
    ("/admin/audit/verify", Method::GET, Without::Auditor),
    ("/admin/audit/fleet", Method::GET, Without::Auditor),
    ("/metrics", Method::GET, Without::Auditor),
    ("/admin/", Method::GET, Without::LoginPage),
    ("/admin/exchange/{seq}", Method::GET, Without::LoginPage),
    ("/admin/servers", Method::GET, Without::LoginPage),
    ("/admin/fleet", Method::GET, Without::LoginPage),
    ("/admin/pins", Method::GET, Without::LoginPage),
    ("/admin/policies", Method::GET, Without::LoginPage),
    // An empty form: "Enter an auditor token."
    (
        "/admin/login",
        Method::POST,
        Without::Form(StatusCode::BAD_REQUEST),
    ),
    (
        "/admin/logout",
        Method::POST,
        Without::Form(StatusCode::SEE_OTHER),
    ),
    (
        "/admin",
        Method::GET,
        Without::Public(StatusCode::SEE_OTHER),
    ),
    (
        "/admin/static/console.js",
        Method::GET,
        Without::Public(StatusCode::OK),
    ),
    (
        "/admin/static/console.css",
        Method::GET,
        Without::Public(StatusCode::OK),
    ),
    ("/healthz", Method::GET, Without::Public(StatusCode::OK)),
    // The protected resource metadata: public, and not found without
    // `[oauth]` (as here).
    (
        "/.well-known/oauth-protected-resource",
        Method::GET,
        Without::Public(StatusCode::NOT_FOUND),
    ),
    (
        "/.well-known/oauth-protected-resource/{*path}",
        Method::GET,
        Without::Public(StatusCode::NOT_FOUND),
    ),
    // A user's sign-in finished in their browser: public (the browser has
    // no credentials; the link's id, its cookie and its `state` are the
    // checks), and not found without `[vault] public_url` (as here).
    (
        "/oauth/start",
        Method::GET,
        Without::Public(StatusCode::NOT_FOUND),
    ),
    (
        "/oauth/start",
        Method::POST,
        Without::Public(StatusCode::NOT_FOUND),
    ),
    (
        "/oauth/callback",
        Method::GET,
        Without::Public(StatusCode::NOT_FOUND),
    ),
    // The proxy's client ID metadata document: public, and not found
    // without an https:// `[vault] public_url`.
    (
        "/oauth/client",
        Method::GET,
        Without::Public(StatusCode::NOT_FOUND),
    ),
];

/// The methods tried on every path: those a route does not list must be
/// refused with 405 (so a method added to a route must be listed too).
const METHODS: [Method; 8] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// What else registers a route (or a handler of paths no route matches):
/// none of it is read by [`registered_paths`], so the module may not use it.
const UNREAD: [&str; 5] = [
    ".route_service(",
    ".nest(",
    ".nest_service(",
    ".fallback(",
    ".fallback_service(",
];

/// The paths the module's sources register with `Router::route`, read from
/// the files themselves (but for tests, which register none).
fn registered_paths() -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            panic!("{} is readable", dir.display());
        };
        for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
            if path.is_dir() {
                walk(&path, found);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs")
                || path.file_name().is_some_and(|name| name == "tests.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for unread in UNREAD {
                assert!(
                    !text.contains(unread),
                    "{}: `{unread}` registers what the route table cannot see; register routes with `.route(\"/path\", …)`",
                    path.display()
                );
            }
            for (at, _) in text.match_indices(".route(") {
                let rest = text[at + ".route(".len()..].trim_start();
                let path_text = rest
                    .strip_prefix('"')
                    .and_then(|rest| rest.find('"').map(|end| &rest[..end]));
                let Some(literal) = path_text else {
                    panic!(
                        "{}: a route whose path is not a string literal; the route table reads literals only",
                        path.display()
                    );
                };
                found.insert(literal.to_owned());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/downstream"),
        &mut found,
    );
    found
}

/// A request from this machine, for `Host: localhost`.
fn request(method: &Method, path: &str) -> axum::http::request::Builder {
    request_for(method, path, "localhost")
}

fn request_for(method: &Method, path: &str, host: &str) -> axum::http::request::Builder {
    let path = path.replace("{seq}", "1");
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    // A stream (the admin API's tail) is not read: its head says enough.
    let text = match parts.headers.get(header::CONTENT_TYPE) {
        Some(kind) if kind == "application/x-ndjson" => String::new(),
        _ => {
            let bytes = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    (parts.status, parts.headers, text)
}

#[test]
fn every_route_is_in_the_table() {
    let listed: BTreeSet<String> = ROUTES.iter().map(|(path, ..)| (*path).to_owned()).collect();
    let registered = registered_paths();
    assert_eq!(
        registered, listed,
        "a route was added or removed: list it in ROUTES with what it answers without credentials"
    );
}

#[tokio::test]
async fn every_route_refuses_a_request_without_credentials_unless_it_is_public() {
    let state = state();
    let app = router(state.clone());
    for (path, method, without) in ROUTES {
        let (status, headers, body) = send(
            &app,
            request(method, path)
                .body(Body::empty())
                .unwrap_or_default(),
        )
        .await;
        let what = format!("{method} {path}: {status} {body}");
        match without {
            Without::Client | Without::Auditor => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer", "{what}");
                assert_eq!(body, r#"{"error":"a bearer token is required"}"#, "{what}");
            }
            Without::LoginPage => {
                assert_eq!(status, StatusCode::OK, "{what}");
                assert!(body.contains("name=\"token\""), "{what}");
                assert!(!body.contains("<nav>"), "{what}");
            }
            Without::Form(expected) | Without::Public(expected) => {
                assert_eq!(status, *expected, "{what}");
            }
        }
        // A method the table does not list for the path is not routed.
        for other in &METHODS {
            if ROUTES.iter().any(|(p, m, _)| p == path && m == other) {
                continue;
            }
            let (status, ..) = send(
                &app,
                request(other, path).body(Body::empty()).unwrap_or_default(),
            )
            .await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{other} {path}");
        }
    }
    // Each refusal without a token was recorded (and none counted).
    let records = state.throttle.take_records();
    for endpoint in ["/mcp", "/admin"] {
        assert!(
            records
                .iter()
                .any(|r| r.method == endpoint && r.reason.as_deref() == Some("no bearer token")),
            "{endpoint}: {records:?}"
        );
    }
}

#[tokio::test]
async fn a_client_cannot_read_the_log_and_an_auditor_cannot_call_tools() {
    let app = router(state());
    for (path, method, without) in ROUTES {
        let (token, refusal) = match without {
            Without::Client => (AUDITOR_TOKEN, "the bearer token is not valid"),
            Without::Auditor => (CLIENT_TOKEN, "this is not an auditor's token"),
            // A token opens no console page: only the login cookie does.
            Without::LoginPage => (AUDITOR_TOKEN, ""),
            Without::Form(_) | Without::Public(_) => continue,
        };
        let (status, _, body) = send(
            &app,
            request(method, path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap_or_default(),
        )
        .await;
        if *without == Without::LoginPage {
            assert!(body.contains("name=\"token\""), "{method} {path}: {body}");
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            body,
            format!(r#"{{"error":"{refusal}"}}"#),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn every_route_but_the_public_ones_checks_host_and_origin() {
    let app = router(state());
    for (path, method, without) in ROUTES {
        if matches!(without, Without::Public(_)) {
            continue;
        }
        let (status, _, body) = send(
            &app,
            request(method, path)
                .header(header::ORIGIN, "http://evil.example")
                .body(Body::empty())
                .unwrap_or_default(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(body, r#"{"error":"cross-origin requests are not allowed"}"#);
        // Another name, and values that begin like an allowed host but
        // are not an authority.
        for host in [
            "evil.example",
            "127.0.0.1:8811.evil.example",
            "localhost:abc",
            "localhost:1:2",
            "[::1]evil",
            "[::1]:80.evil",
            "user@localhost",
        ] {
            let (status, _, body) = send(
                &app,
                request_for(method, path, host)
                    .body(Body::empty())
                    .unwrap_or_default(),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} {host}");
            assert!(body.contains("`[proxy] allowed_hosts`"), "{body}");
        }
    }
    // The console's own origin is only its own when its Host is one.
    let (status, ..) = send(
        &app,
        request_for(
            &Method::POST,
            "/admin/logout",
            "localhost:8811.evil.example",
        )
        .header(header::ORIGIN, "http://localhost:8811.evil.example")
        .body(Body::empty())
        .unwrap_or_default(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The console's forms come from its own origin.
    let (status, ..) = send(
        &app,
        request(&Method::POST, "/admin/logout")
            .header(header::ORIGIN, "http://localhost")
            .body(Body::empty())
            .unwrap_or_default(),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test(start_paused = true)]
async fn the_sweep_ends_a_session_idle_past_the_timeout_and_keeps_one_in_use() {
    let state = state();
    let client = ClientIdentity::new("tester", &[]);
    let outlet = Arc::new(HttpOutlet::default());
    let session = state.gateway.open_session(
        Arc::from("s-1"),
        client.clone(),
        Transport::Http,
        outlet.clone(),
    );
    let Ok(slot) = state.slots.take(&Arc::from("tester")) else {
        panic!("a place for the session");
    };
    let http = Arc::new(HttpSession::new(
        Arc::from("s-1"),
        session.clone(),
        outlet,
        slot,
    ));
    state.sessions.insert(http.clone());
    drop(http);
    let sweeper = sweep(state.clone());
    let pass = |secs| async move {
        tokio::time::advance(Duration::from_secs(secs)).await;
        // The sweep runs on this thread: let it.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };

    // Used within the timeout (60 s), again and again: kept.
    for _ in 0..4 {
        pass(45).await;
        let Ok(found) = state.sessions.find(Some("s-1"), &client) else {
            panic!("a session in use is kept");
        };
        found.touch();
    }
    assert!(!session.closed.is_cancelled());
    assert_eq!(state.gateway.sessions().count(), 1);

    // Then idle: gone by the first sweep past the timeout.
    pass(60).await;
    assert!(
        state.sessions.find(Some("s-1"), &client).is_ok(),
        "60 s is not past 60 s"
    );
    pass(15).await;
    assert!(state.sessions.find(Some("s-1"), &client).is_err());
    assert!(session.closed.is_cancelled(), "the gateway closed it");
    assert_eq!(state.gateway.sessions().count(), 0);
    assert_eq!(state.slots.taken(), (0, 0), "its place is given back");
    sweeper.abort();
}

#[path = "resume_tests.rs"]
mod resume;
