//! The guard against real sockets on loopback: what reached a listener is
//! counted by the listener itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A listener on loopback answering every request with `answer`; it counts
/// the connections it accepted.
async fn listener(answer: &'static str) -> (u16, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        total: Some(Duration::from_secs(30)),
    }
}

fn client(allow: &[&str], trust: Trust, written: &[&str]) -> HttpClient {
    let egress = EgressConfig {
        allow: allow
            .iter()
            .map(|range| crate::config::parse_range(range).unwrap())
            .collect(),
    };
    let written: Vec<reqwest::Url> = written
        .iter()
        .map(|url| reqwest::Url::parse(url).unwrap())
        .collect();
    HttpClient::new(&egress, trust, &written, timeouts()).unwrap()
}

#[tokio::test]
async fn a_redirect_is_an_error_and_its_target_is_never_reached() {
    let (trap, trapped) = listener(OK).await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nlocation: http://127.0.0.1:{trap}/steal?key=1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (port, reached) = listener(answer).await;
        let http = client(&[], Trust::Written, &[]);
        let request = http
            .request_to(
                reqwest::Method::POST,
                &format!("http://127.0.0.1:{port}/mcp"),
            )
            .unwrap()
            .header("x-api-key", "operator-secret")
            .body("{}");
        let err = send(request).await.expect_err(status);
        let text = err.to_string();
        assert!(
            matches!(err, EgressError::Redirect { .. }),
            "{status}: {text}"
        );
        assert!(text.contains("redirects are not followed"), "{text}");
        assert!(
            text.contains(&format!("to http://127.0.0.1:{trap}")),
            "{text}"
        );
        assert!(!text.contains("steal"), "the path is not shown: {text}");
        assert_eq!(reached.load(Ordering::SeqCst), 1, "{status}");
    }
    assert_eq!(trapped.load(Ordering::SeqCst), 0, "the trap was reached");
}

#[tokio::test]
async fn a_learned_name_resolving_to_loopback_is_refused_when_connecting() {
    let (port, reached) = listener(OK).await;
    let url = format!("http://localhost:{port}/jwks");
    let err = send(
        client(&[], Trust::Learned, &[])
            .request_to(reqwest::Method::GET, &url)
            .unwrap(),
    )
    .await
    .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("`localhost` is 127.0.0.1") || text.contains("`localhost` is ::1"),
        "{text}"
    );
    assert!(text.contains("loopback"), "{text}");
    assert!(text.contains("a peer named"), "{text}");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    // The same name, written by the operator, or in an allowed range.
    let written = format!("http://LOCALHOST:{port}/issuer");
    for http in [
        client(&[], Trust::Learned, &[&written]),
        client(&["127.0.0.0/8", "::1"], Trust::Learned, &[]),
        client(&[], Trust::Written, &[]),
    ] {
        let response = send(http.request_to(reqwest::Method::GET, &url).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(reached.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_address_written_as_such_is_checked_before_anything_is_sent() {
    let (port, reached) = listener(OK).await;
    let learned = client(&[], Trust::Learned, &[]);
    let err = learned
        .request_to(reqwest::Method::GET, &format!("http://127.0.0.1:{port}/"))
        .expect_err("refused");
    assert!(err.to_string().contains("a loopback address"), "{err}");
    let err = learned
        .request_to(
            reqwest::Method::GET,
            &format!("http://[::ffff:127.0.0.1]:{port}/"),
        )
        .expect_err("refused");
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    // Cloud metadata: refused even where the operator wrote it, unless named.
    let written = client(&[], Trust::Written, &[]);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
    ] {
        let err = written
            .request_to(reqwest::Method::GET, url)
            .expect_err(url);
        assert!(
            err.to_string().contains("link-local (cloud metadata)"),
            "{err}"
        );
    }
    assert!(
        client(&["169.254.169.254"], Trust::Written, &[])
            .request_to(reqwest::Method::GET, "http://169.254.169.254/")
            .is_ok()
    );
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/",
        "data:text/plain,x",
    ] {
        assert!(matches!(
            written.request_to(reqwest::Method::GET, url),
            Err(EgressError::NotHttp { .. })
        ));
    }
}

#[test]
fn an_origin_shows_no_path_query_or_user() {
    let url = reqwest::Url::parse("https://user:pw@example.com:8443/p?token=x#f").unwrap();
    assert_eq!(origin(&url), "https://example.com:8443");
}

#[tokio::test]
async fn a_peer_names_only_the_origins_the_config_writes_on_its_host() {
    let (port, reached) = listener(OK).await;
    let (other, elsewhere) = listener(OK).await;
    // The issuer is `localhost:PORT` and `127.0.0.1:PORT`; its metadata names
    // another port of the same hosts (any local service).
    let issuer = format!("http://localhost:{port}");
    let literal = format!("http://127.0.0.1:{port}");
    let http = client(&[], Trust::Learned, &[&issuer, &literal]);
    for url in [
        format!("http://localhost:{other}/jwks"),
        format!("https://localhost:{port}/jwks"),
    ] {
        let err = http.request_to(reqwest::Method::GET, &url).expect_err(&url);
        assert!(matches!(err, EgressError::OtherOrigin { .. }), "{err}");
    }
    let err = http
        .request_to(
            reqwest::Method::GET,
            &format!("http://127.0.0.1:{other}/jwks"),
        )
        .expect_err("another port of a written address");
    assert!(err.to_string().contains("a loopback address"), "{err}");
    assert_eq!(elsewhere.load(Ordering::SeqCst), 0);
    // Its own origin, any path.
    let response = send(
        http.request_to(reqwest::Method::GET, &format!("{issuer}/jwks"))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
}
