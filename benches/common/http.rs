//! A minimal HTTP/1.1 MCP client on one kept-alive connection, many of
//! them at once, and a `portcullis serve` to point them at: what the
//! round-trip and fleet benchmarks share.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{Stats, stats};

/// The bench client's bearer token.
pub const TOKEN: &str = "bench-token";

/// A streamable HTTP session over one kept-alive connection, with a minimal
/// HTTP/1.1 client (as the stdio client is a minimal JSON-RPC client): what
/// is measured is the transport and the proxy, not an HTTP library. It sends
/// the headers a real client sends (`Accept: application/json,
/// text/event-stream`, bearer token, session, protocol version).
pub struct HttpClient {
    stream: BufReader<Box<dyn Io>>,
    host: String,
    path: String,
    session: Option<String>,
    /// A 2026-07-28 client: no session; each request carries its envelope
    /// and the revision's headers.
    stateless: bool,
    next_id: u64,
}

/// The connection: plain TCP or TLS over it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl HttpClient {
    /// Connects to `url` (`http://` or, with `tls`, `https://`) and opens a
    /// session.
    pub async fn connect(url: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Self {
        let mut client = Self::open(url, tls).await;
        let (headers, _) = client
            .post(json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}))
            .await;
        let session = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| value.trim().to_owned())
            })
            .expect("an Mcp-Session-Id header");
        client.session = Some(session);
        client
            .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        client
    }

    /// Connects to `url` as a 2026-07-28 client: no handshake.
    pub async fn stateless(url: &str) -> Self {
        let mut client = Self::open(url, None).await;
        client.stateless = true;
        client
    }

    pub async fn open(url: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Self {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .expect("an http(s):// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let tcp = TcpStream::connect(host).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, tcp).await.unwrap())
            }
        };
        Self {
            stream: BufReader::new(io),
            host: host.to_owned(),
            path: path.to_owned(),
            session: None,
            stateless: false,
            next_id: 1,
        }
    }

    /// One POST; returns the response's headers and body. Replies must carry
    /// a Content-Length (the proxy answers a lone reply as plain JSON).
    pub async fn post(&mut self, mut message: Value) -> (String, String) {
        let mut modern = String::new();
        if self.stateless {
            message["params"]["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            modern = format!(
                "mcp-protocol-version: 2026-07-28\r\nmcp-method: {}\r\n",
                message["method"].as_str().unwrap_or_default()
            );
            if let Some(name) = message["params"]["name"].as_str() {
                modern.push_str(&format!("mcp-name: {name}\r\n"));
            }
        }
        let body = serde_json::to_vec(&message).unwrap();
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
            self.path,
            self.host,
            body.len()
        );
        if let Some(session) = &self.session {
            request.push_str(&format!(
                "mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n"
            ));
        }
        request.push_str(&modern);
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        self.stream.get_mut().write_all(&bytes).await.unwrap();

        let mut headers = String::new();
        let mut length = None;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
            headers.push_str(&line);
        }
        assert!(headers.starts_with("HTTP/1.1 2"), "HTTP error: {headers}");
        let length = length.unwrap_or_else(|| panic!("no content-length in {headers}"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        (headers, String::from_utf8(body).unwrap())
    }

    pub async fn ping(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (_, body) = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"ping"}))
            .await;
        assert!(body.contains("\"result\""), "ping failed: {body}");
    }

    pub async fn call(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (_, body) = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"example__echo","arguments":{"text":"hello"}}}))
            .await;
        assert!(body.contains("\"result\""), "call failed: {body}");
    }
}

/// `sessions` sessions calling for `seconds`, each on its own connection.
pub async fn many_sessions(
    url: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    label: &str,
    sessions: usize,
    seconds: u64,
) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..sessions {
        let url = url.to_owned();
        let tls = tls.cloned();
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(&url, tls.as_ref()).await;
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.call().await;
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut all_samples = Vec::new();
    for task in tasks {
        all_samples.extend(task.await.unwrap());
    }
    stats(
        &format!("proxied ({label}, {sessions} sessions)"),
        all_samples,
        start.elapsed(),
    )
}

pub async fn start_http_proxy(portcullis: &str, config: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(portcullis)
        .args(["serve", "--config"])
        .arg(config)
        .env("PORTCULLIS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("proxy exited");
        if line.contains("listening for MCP")
            && let Some(addr) = line.split("addr=").nth(1)
        {
            break addr.split_whitespace().next().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}/mcp"))
}
