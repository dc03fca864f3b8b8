//! The HTTP listener against clients that are not legitimate, through the
//! real binary: slow headers, slow bodies, idle keep-alive connections,
//! connection floods past the caps, brute-forced tokens and console logins,
//! sessions hoarded by one client, refusals that keep the request's id, and
//! a refusal answered before its body came, which closes the connection.
//!
//! Sources other than 127.0.0.1 are other loopback addresses (127.0.0.0/8
//! is all loopback on Linux), so that one test can play several hosts.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{AUDITOR_TOKEN, OTHER_TOKEN, TOKEN, TestProxy};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long any one wait of these tests may last before it fails: far
/// beyond the timeouts the configs set, so a pass never depends on speed.
const PATIENCE: Duration = Duration::from_secs(20);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to the proxy from `source`.
async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// An HTTP client whose connections come from `source`.
fn client_from(source: IpAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(source)
        .build()
        .unwrap()
}

/// Reads until the proxy closes the connection (or resets it): what it
/// sent before. Fails when it is still open after [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open; it sent: {}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// What the proxy answers a raw `GET /healthz` from `source` with, until
/// it closes the connection.
async fn raw_health_check(source: IpAddr, to: SocketAddr) -> String {
    let mut stream = connect_from(source, to).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut stream).await
}

/// Whether the proxy answers `GET /healthz` on a new connection from `source`.
async fn healthy_from(source: IpAddr, base: &str) -> bool {
    let answer = client_from(source)
        .get(format!("{base}/healthz"))
        .send()
        .await;
    answer.is_ok_and(|a| a.status() == StatusCode::OK)
}

fn initialize_message(id: i64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"listener-test","version":"0"}}})
}

async fn post_mcp(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    http.post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_slow_bodies_and_idle_connections_are_dropped() {
    let proxy = TestProxy::new().with_raw_server("raw").with_config(
        "[listener]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nwrite_timeout = \"1s\"\n",
    );
    let served = proxy.serve_http().await;
    let to = addr_of(&served.base);
    let here = loopback(1);

    // A connection that sends nothing.
    let mut silent = connect_from(here, to).await;
    assert_eq!(read_until_closed(&mut silent).await, "");

    // Slowloris: the request line and one header byte every 300 ms. Each
    // byte arrives well within any per-read timeout; the headers as a
    // whole never do.
    let mut trickle = connect_from(here, to).await;
    trickle
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let dripping = tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if trickle.write_all(b"X").await.is_err() {
                return;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut probe)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(dripping.is_ok(), "a trickled request was held open");

    // A body that stops arriving: 408, then the connection is closed.
    let mut slow_body = connect_from(here, to).await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: 500\r\n\r\n{{\"jsonrpc\":\"2.0\","
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");

    // A kept-alive connection after its request: closed once idle.
    let mut kept = connect_from(here, to).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");

    // A client that sends requests and never reads the replies: once the
    // replies fill the socket, the proxy's write waits on it, and fails
    // after the write timeout (1 s); the proxy closes the connection and
    // the client's writes fail. Without the timeout the proxy would stop
    // reading, the client's writes would wait forever, and the connection
    // would be held as long as the client likes. The client writes until
    // that happens, however fast or slow the proxy answers.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::new(here, 0)).unwrap();
    let deaf = socket.connect(to).await.unwrap();
    let (mut reader, mut writer) = deaf.into_split();
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let writing = tokio::spawn(async move {
        let batch = REQUEST.repeat(1000);
        let mut sent = 0usize;
        while writer.write_all(&batch).await.is_ok() {
            sent += 1000;
        }
        sent
    });
    let sent = tokio::time::timeout(PATIENCE * 3, writing).await;
    let Ok(Ok(sent)) = sent else {
        panic!("the proxy kept reading or held the connection of a client that never reads")
    };
    let mut replies = Vec::new();
    let drained = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut replies)).await;
    assert!(drained.is_ok(), "the connection was held open");
    let answered = String::from_utf8_lossy(&replies)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        answered < sent,
        "every one of {answered} replies was delivered"
    );

    // None of it cost a real client anything.
    let session = common::HttpSession::connect(&served.url).await;
    common::assert_mirrored(&session, 2).await;
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_past_the_caps_is_refused_while_a_real_client_calls_tools() {
    let proxy = TestProxy::new().with_raw_server("raw").with_config(
        "[listener]\nheader_read_timeout = \"60s\"\nmax_connections = 24\nmax_connections_per_ip = 8\n",
    );
    let served = proxy.serve_http().await;
    let to = addr_of(&served.base);

    // The real client's session, and its own kept-alive connection.
    let session = common::HttpSession::connect(&served.url).await;
    common::assert_mirrored(&session, 2).await;
    let mut kept = KeptConnection::open(to, &session.id()).await;
    kept.assert_mirrored(2).await;

    // One flooding host: eight connections held, every one after refused
    // with 503 and closed.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from(loopback(2), to).await);
    }
    for _ in 0..49 {
        let answer = raw_health_check(loopback(2), to).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
    }
    // A real HTTP client reads it as a whole answer.
    let refused = client_from(loopback(2))
        .get(format!("{}/healthz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too many connections; try again");
    // Another host is not affected by that host's cap.
    assert!(healthy_from(loopback(3), &served.base).await);
    common::assert_mirrored(&session, 3).await;

    // Two more hosts fill the global cap (24, the real client's
    // connection among them): a new connection from anywhere is refused…
    for host in [7, 8] {
        for _ in 0..8 {
            held.push(connect_from(loopback(host), to).await);
        }
    }
    let answer = raw_health_check(loopback(5), to).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // One that never sends its request is answered (and closed) too.
    let mut silent = connect_from(loopback(5), to).await;
    assert!(
        read_until_closed(&mut silent)
            .await
            .starts_with("HTTP/1.1 503")
    );
    // …while the real client, connected before, still calls tools.
    for id in 4..10 {
        kept.assert_mirrored(id).await;
    }

    // The flood ends: its places are given back.
    drop(held);
    let back = tokio::time::timeout(PATIENCE, async {
        while !healthy_from(loopback(5), &served.base).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the caps were not given back");

    let metrics = common::metrics_text(&served.base).await;
    assert!(
        metrics.contains("portcullis_connections_refused_total{cap=\"max_connections_per_ip\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_connections_refused_total{cap=\"max_connections\"}"),
        "{metrics}"
    );
    served.terminate().await;
}

/// One kept-alive HTTP/1.1 connection from 127.0.0.1 that calls
/// `raw__mirror` in a session: a client connected before a flood (an HTTP
/// library's pool may open a new connection whenever it likes).
struct KeptConnection {
    stream: tokio::io::BufReader<TcpStream>,
    session: String,
}

impl KeptConnection {
    async fn open(to: SocketAddr, session: &str) -> Self {
        Self {
            stream: tokio::io::BufReader::new(connect_from(loopback(1), to).await),
            session: session.to_owned(),
        }
    }

    async fn assert_mirrored(&mut self, id: i64) {
        use tokio::io::AsyncBufReadExt as _;
        let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"raw__mirror","arguments":{}}})
        .to_string();
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Mcp-Session-Id: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.session,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut length = 0;
        let mut status = String::new();
        self.stream.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut reply = vec![0; length];
        self.stream.read_exact(&mut reply).await.unwrap();
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(common::first_text(&reply), "mirrored", "{reply}");
    }
}

/// The `auth_failure` records whose source is `source`: (reason, count).
fn failures_from(records: &[Value], source: &str) -> Vec<(String, u64)> {
    records
        .iter()
        .filter(|r| r["detail"]["source"] == source)
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["detail"]["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn total(failures: &[(String, u64)], reason: &str) -> u64 {
    failures
        .iter()
        .filter(|(r, _)| r.contains(reason))
        .map(|(_, count)| count)
        .sum()
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn brute_force_is_throttled_and_recorded_in_aggregate() {
    let proxy = TestProxy::new().with_raw_server("raw").with_config(
        "[listener]\nauth_failures_per_source = \"5/min\"\nauth_failures_per_credential = \"4/min\"\nfailure_record_interval = \"1s\"\n\n[audit]\nmax_records = 100\n",
    );
    let config = proxy.write_config();
    let served = common::serve_config(&config).await;

    // A real exchange, recorded before the attack.
    let session = common::HttpSession::connect(&served.url).await;
    common::assert_mirrored(&session, 2).await;

    // 300 wrong tokens from one host: five 401s, then 429 with
    // Retry-After (one failure drains in 12 s at 5/min).
    let attacker = client_from(loopback(2));
    let mut statuses = Vec::new();
    for n in 0..300 {
        let response = post_mcp(
            &attacker,
            &served.url,
            &format!("{n:04}-wrong-token"),
            &initialize_message(1),
        )
        .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&response);
            assert!((1..=12).contains(&wait), "Retry-After: {wait}");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // Once throttled, even a right token from that host waits.
    let throttled = post_mcp(&attacker, &served.url, TOKEN, &initialize_message(1)).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another host with the right token is served.
    let elsewhere = post_mcp(
        &client_from(loopback(3)),
        &served.url,
        TOKEN,
        &initialize_message(1),
    )
    .await;
    assert_eq!(elsewhere.status(), StatusCode::OK);

    // A partly known token guessed from many hosts: its prefix is
    // throttled after four failures, wherever the fifth comes from; another
    // prefix from that host is not.
    for host in 10..14 {
        let guess = format!("pcl_beefguess{host}");
        let response = post_mcp(
            &client_from(loopback(host)),
            &served.url,
            &guess,
            &initialize_message(1),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{guess}");
    }
    let fifth = client_from(loopback(14));
    let response = post_mcp(
        &fifth,
        &served.url,
        "pcl_beefguess14",
        &initialize_message(1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let response = post_mcp(&fifth, &served.url, "pcl_0000other", &initialize_message(1)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Console logins: the same, with the login page.
    let browser = client_from(loopback(6));
    let mut logins = Vec::new();
    for n in 0..8 {
        let response = browser
            .post(format!("{}/admin/login", served.base))
            .header("origin", &served.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={n}-not-an-auditor"))
            .send()
            .await
            .unwrap();
        logins.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&response) >= 1);
            let page = response.text().await.unwrap();
            assert!(page.contains("Too many failed logins"), "{page}");
        }
    }
    assert_eq!(logins, [401, 401, 401, 401, 401, 429, 429, 429]);

    // The log holds the failures as counts per source and reason, a few
    // records for 300 attempts; the real record is still there, and the
    // chain verifies.
    let records = tokio::time::timeout(PATIENCE, async {
        loop {
            let records =
                common::admin_records(&served.base, "kind=auth_failure&limit=1000", AUDITOR_TOKEN)
                    .await;
            let from_attacker = failures_from(&records, "127.0.0.2");
            if total(&from_attacker, "") >= 301
                && total(&failures_from(&records, "127.0.0.6"), "") >= 8
            {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the failures are recorded within a few intervals");
    let from_attacker = failures_from(&records, "127.0.0.2");
    assert_eq!(
        total(&from_attacker, "unknown token"),
        5,
        "{from_attacker:?}"
    );
    assert_eq!(total(&from_attacker, "throttled"), 296, "{from_attacker:?}");
    assert!(
        from_attacker.len() <= 20,
        "{} records for 301 attempts",
        from_attacker.len()
    );
    let from_browser = failures_from(&records, "127.0.0.6");
    assert_eq!(total(&from_browser, "unknown token"), 5, "{from_browser:?}");
    assert_eq!(total(&from_browser, "throttled"), 3, "{from_browser:?}");
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "deny" && r["transport"] == "http")
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("wrong-token") && !text.contains("beefguess"),
        "tokens are never recorded"
    );

    let kept = common::admin_records(
        &served.base,
        "kind=exchange&tool=raw__mirror",
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(kept.len(), 1, "the real record was flushed out: {kept:?}");
    served.terminate().await;
    let (ok, stdout, stderr) = common::audit(&config, &["verify"]);
    assert!(ok, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_session() {
    let proxy = TestProxy::new()
        .with_raw_server("raw")
        .with_config("max_sessions = 5\nmax_sessions_per_client = 3\n");
    let served = proxy.serve_http().await;
    let http = reqwest::Client::new();

    // Ten initializes at once from one client: exactly three sessions.
    let attempts = (0..10).map(|n| {
        let http = http.clone();
        let url = served.url.clone();
        async move { post_mcp(&http, &url, TOKEN, &initialize_message(100 + n)).await }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let mut opened = Vec::new();
    let mut refused = 0;
    for answer in answers {
        match answer.status() {
            StatusCode::OK => opened.push(
                answer.headers()["mcp-session-id"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                let body: Value = answer.json().await.unwrap();
                // The refusal answers the request's own id.
                let id = body["id"].as_i64().unwrap();
                assert!((100..110).contains(&id), "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("too many sessions open"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((opened.len(), refused), (3, 7));

    // Another client still gets in, up to the total.
    for _ in 0..2 {
        common::initialize_http(&http, &served.url, OTHER_TOKEN, "other").await;
    }
    let full = post_mcp(&http, &served.url, OTHER_TOKEN, &initialize_message(7)).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["id"], 7, "{body}");

    // Ending a session gives its place back.
    let ended = http
        .delete(&served.url)
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &opened[0])
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success());
    let again = post_mcp(&http, &served.url, TOKEN, &initialize_message(8)).await;
    assert_eq!(again.status(), StatusCode::OK);
    served.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_over_http_answer_the_requests_own_id() {
    let proxy = TestProxy::new()
        .with_raw_server("raw")
        .with_config("[limits]\nmax_message_bytes = 65536\nmax_depth = 16\n");
    let served = proxy.serve_http().await;
    let http = reqwest::Client::new();
    let session = common::initialize_http(&http, &served.url, TOKEN, "ids").await;
    let send = |body: String| {
        http.post(&served.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", &session)
            .body(body)
            .send()
    };

    // Too deep, with the id after the deep part.
    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"a\":{}1{}}},\"id\":31}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let answer = send(deep).await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], 31, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deeper than 16"),
        "{body}"
    );

    // Too large: the id read from its head.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"big-32\",\"method\":\"tools/call\",\"params\":{{\"name\":\"raw__mirror\",\"arguments\":{{\"x\":\"{}\"}}}}}}",
        "a".repeat(200_000)
    );
    let answer = send(big).await.unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], "big-32", "{body}");

    // Not JSON after its id: still answered with it.
    let answer = send("{\"jsonrpc\":\"2.0\",\"id\":33,\"method\":\"ping\",\"params\":{".into())
        .await
        .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["id"], 33, "{body}");
    // A response (no method) is never answered as if it were a request.
    let answer = send(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":34,\"result\":{}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    ))
    .await
    .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert!(body["id"].is_null(), "{body}");
    served.terminate().await;
}

/// A request refused before its body arrived (no token) is answered with
/// `Connection: close`, and the connection closes: the proxy did not read
/// an unauthenticated peer's body, so the connection cannot carry another
/// request, and a client's pool must not reuse it (the Python SDK's OAuth
/// flow failed on such a connection). A request whose body was read keeps
/// its connection for the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_before_the_body_came_closes_the_connection_and_says_so() {
    let proxy = TestProxy::new().with_example_server("example");
    let served = proxy.serve_http().await;
    let to = addr_of(&served.base);
    let body = initialize_message(1).to_string();
    let head = |auth: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };

    // The headers alone: refused, said, closed.
    let mut stream = connect_from(loopback(1), to).await;
    stream.write_all(head("").as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");

    // Served (its body read), then a second request on the same connection.
    let mut stream = connect_from(loopback(1), to).await;
    let served_request = format!(
        "{}{body}",
        head(&format!("Authorization: Bearer {TOKEN}\r\n"))
    );
    stream
        .write_all(
            format!("{served_request}GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let answers = read_until_closed(&mut stream).await;
    let at = answers
        .get(1..)
        .and_then(|rest| rest.find("HTTP/1.1 "))
        .unwrap_or_else(|| panic!("one answer: {answers}"));
    let (first, second) = answers.split_at(at + 1);
    assert!(first.starts_with("HTTP/1.1 200"), "{answers}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{answers}"
    );
    assert!(second.contains("\"status\":\"ok\""), "{answers}");
    served.terminate().await;
}
