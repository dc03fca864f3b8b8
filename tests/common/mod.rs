//! The shared harness for the integration tests: builds a config around real
//! upstream servers, runs the real `portcullis` binary, and connects clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod certs;
pub mod debian;
pub mod haproxy;
pub mod listening;
pub mod ports;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod wasm_fixtures;

pub use ports::free_port;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const TOKEN: &str = "test-token-for-the-tester-client";
pub const OTHER_TOKEN: &str = "test-token-for-the-other-client";
/// The token of the `auditors` auditor every test config has.
pub const AUDITOR_TOKEN: &str = "test-token-for-the-auditors";

pub fn portcullis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

pub fn example_server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis-example-server")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python virtualenv with the `mcp` SDK and `mcp-server-time`, made on
/// first use by `scripts/pyenv.sh` (which locks against parallel tests).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let output = std::process::Command::new("bash")
                .arg(repo_root().join("scripts/pyenv.sh"))
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/pyenv.sh");
            assert!(
                output.status.success(),
                "scripts/pyenv.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("pyenv.sh prints the python path")
                    .trim(),
            )
        })
        .clone()
}

/// The example server's image (`FROM scratch`, statically linked), built on
/// first use by `scripts/build-test-image.sh`, the command the README shows.
/// Fails, never skips, when Docker is missing.
pub fn test_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| image_from("build-test-image.sh"))
        .clone()
}

/// Runs `scripts/SCRIPT` (an image script) and returns the tag it built:
/// a `dev` build of the binaries, linked statically (what the tests check
/// of an image is not its speed; `PORTCULLIS_IMAGE_PROFILE` set outside
/// chooses another profile).
pub fn image_from(script: &str) -> String {
    image_from_with(script, &[], None)
}

/// [`image_from`] with more of the script's environment, and the tag to
/// build (else the script's own).
pub fn image_from_with(script: &str, env: &[(&str, &str)], tag: Option<&str>) -> String {
    let profile = std::env::var("PORTCULLIS_IMAGE_PROFILE").unwrap_or_else(|_| "dev".to_owned());
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .args(tag)
        .env("PORTCULLIS_IMAGE_PROFILE", profile)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run scripts/{script}: {err}"));
    assert!(
        output.status.success(),
        "scripts/{script} failed (these tests need a running Docker engine):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .expect("the script prints the tag")
        .trim()
        .to_owned()
}

/// Runs `tests/python/mcp_client.py` (the official Python SDK's client)
/// with `command`'s arguments added by the caller, and returns the JSON
/// document it prints; fails when it fails or takes over two minutes.
pub async fn python_client_output(mut command: Command) -> Value {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the Python client finished in time")
        .expect("run the Python client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed: {stderr}"
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("bad JSON from the Python client ({err}); stderr: {stderr}"))
}

/// `python tests/python/mcp_client.py` in the test virtualenv, arguments
/// to be added.
pub fn python_client() -> Command {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/python/mcp_client.py"))
        .stdin(Stdio::null());
    command
}

/// Runs the `portcullis` binary to completion: (success, stdout, stderr).
pub fn run_portcullis<I, S>(args: I) -> (bool, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = std::process::Command::new(portcullis_bin())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A client of the Docker engine, which the container tests need (they
/// fail, never skip, without it).
pub async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_defaults()
        .expect("a Docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine answers (these tests need it)")
}

/// `portcullis serve --config CONFIG`, which must refuse to start; its stderr.
pub fn serve_refused(config: &Path) -> String {
    let (ok, _, stderr) = run_portcullis([
        std::ffi::OsStr::new("serve"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ]);
    assert!(!ok, "the proxy must refuse to start");
    stderr
}

pub fn sha256_hex(text: &str) -> String {
    sha256_hex_bytes(text.as_bytes())
}

pub fn sha256_hex_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A proxy config under construction (builder style).
pub struct TestProxy {
    dir: tempfile::TempDir,
    servers: Vec<String>,
    extra: String,
    listen: String,
    /// `[proxy] tool_refusals`: `"error"` unless
    /// [`TestProxy::with_refusals_as_results`]. The tests assert on the
    /// JSON-RPC error a refusal is (its code, `data.interceptor`); the
    /// default form, a tool result, has `tests/refusals.rs` of its own.
    tool_refusals: &'static str,
}

impl Default for TestProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl TestProxy {
    pub fn new() -> Self {
        // reqwest (the tests' HTTP clients) is built without a bundled
        // crypto provider; the proxy uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            servers: Vec::new(),
            extra: String::new(),
            listen: "127.0.0.1:0".into(),
            tool_refusals: "error",
        }
    }

    /// The example server (rmcp) as a process upstream.
    pub fn with_example_server(self, name: &str) -> Self {
        self.with_example_server_opts(name, "")
    }

    /// The example server with extra `[[servers]]` keys (e.g. `timeout = "1s"`).
    pub fn with_example_server_opts(self, name: &str, extra: &str) -> Self {
        let snippet = format!(
            "[[servers]]\nname = \"{name}\"\nprocess = {{ command = {cmd:?}, args = [\"--name\", \"{name}\"] }}\n{extra}\n",
            cmd = example_server_bin()
        );
        self.with_server_toml(&snippet)
    }

    /// `mcp-server-time` from PyPI, through the test virtualenv.
    pub fn with_time_server(self, name: &str) -> Self {
        let python = python();
        let snippet = format!(
            "[[servers]]\nname = \"{name}\"\nprocess = {{ command = {python:?}, args = [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"] }}\n"
        );
        self.with_server_toml(&snippet)
    }

    /// The example server as a `container` upstream; `container_keys` and
    /// `sandbox` are extra TOML for `container = { … }` and `[servers.sandbox]`.
    pub fn with_container_server(self, name: &str, container_keys: &str, sandbox: &str) -> Self {
        let image = test_image();
        let snippet = format!(
            "[[servers]]\nname = \"{name}\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"{name}\"]{container_keys} }}\n[servers.sandbox]\n{sandbox}\n"
        );
        self.with_server_toml(&snippet)
    }

    /// The raw Python fixture server (`tests/fixtures/raw_upstream.py`).
    pub fn with_raw_server(self, name: &str) -> Self {
        let script = repo_root().join("tests/fixtures/raw_upstream.py");
        let snippet = format!(
            "[[servers]]\nname = \"{name}\"\nprocess = {{ command = \"python3\", args = [{script:?}] }}\n"
        );
        self.with_server_toml(&snippet)
    }

    /// The raw fixture server with `--extras` (logging, resources,
    /// `reply_then_log`).
    pub fn with_raw_server_extras(self, name: &str) -> Self {
        let script = repo_root().join("tests/fixtures/raw_upstream.py");
        let snippet = format!(
            "[[servers]]\nname = \"{name}\"\nprocess = {{ command = \"python3\", args = [{script:?}, \"--extras\"] }}\n"
        );
        self.with_server_toml(&snippet)
    }

    /// The `[[servers]]` snippets so far (to change one between runs).
    pub fn servers_mut(&mut self) -> &mut Vec<String> {
        &mut self.servers
    }

    pub fn with_server_toml(mut self, snippet: &str) -> Self {
        self.servers.push(snippet.to_owned());
        self
    }

    /// Extra top-level config text (e.g. a `[limits]` table).
    pub fn with_config(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// A refused `tools/call` answered as the proxy does by default: a
    /// tool result with `isError`.
    pub fn with_refusals_as_results(mut self) -> Self {
        self.tool_refusals = "result";
        self
    }

    /// Listens on `addr` instead of a port the system picks.
    pub fn with_listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A Cedar policy folder `policies/` in the proxy's directory: the
    /// repository's schema and `main.cedar` (written atomically).
    pub fn policy_folder(&self, policies: &str) -> PathBuf {
        let dir = self.dir.path().join("policies");
        std::fs::create_dir_all(&dir).expect("create the policy folder");
        std::fs::copy(
            repo_root().join("policies/schema.cedarschema"),
            dir.join("schema.cedarschema"),
        )
        .expect("copy the schema");
        let temporary = dir.join("main.cedar.tmp");
        std::fs::write(&temporary, policies).expect("write main.cedar");
        std::fs::rename(&temporary, dir.join("main.cedar")).expect("rename main.cedar");
        dir
    }

    /// Writes the config; `listen` is `127.0.0.1:0` (the proxy logs its
    /// port) unless [`TestProxy::with_listen`].
    pub fn write_config(&self) -> PathBuf {
        let mut text = format!(
            "[proxy]\nlisten = \"{}\"\nstartup_timeout = \"20s\"\ntool_refusals = \"{}\"\n",
            self.listen, self.tool_refusals
        );
        text.push_str(&self.extra);
        text.push_str(&format!(
            "\n[[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\ngroups = [\"dev\"]\n\n[[clients]]\nname = \"other\"\ntoken_sha256 = \"{}\"\n\n[[auditors]]\nname = \"auditors\"\ntoken_sha256 = \"{}\"\n\n",
            sha256_hex(TOKEN),
            sha256_hex(OTHER_TOKEN),
            sha256_hex(AUDITOR_TOKEN)
        ));
        for server in &self.servers {
            text.push_str(server);
            text.push('\n');
        }
        let path = self.dir.path().join("portcullis.toml");
        // Whole or not at all: a running proxy watching the file must never
        // read it half written (a prefix can be a config too).
        let temporary = self.dir.path().join("portcullis.toml.tmp");
        std::fs::write(&temporary, text).expect("write config");
        std::fs::rename(&temporary, &path).expect("rename config");
        path
    }

    /// `portcullis stdio` as a child process, for rmcp's child-process transport.
    pub fn stdio_command(&self) -> Command {
        let config = self.write_config();
        let mut command = Command::new(portcullis_bin());
        command
            .args(["stdio", "--config"])
            .arg(&config)
            .args(["--client", "tester"])
            .env("PORTCULLIS_LOG", "info")
            .kill_on_drop(true);
        command
    }

    /// `portcullis stdio` with raw line access.
    pub async fn raw_stdio(&self) -> RawClient {
        self.raw_stdio_with_env(&[]).await
    }

    /// `portcullis stdio` with raw line access, extra environment, and its
    /// log kept for [`RawClient::log`].
    pub async fn raw_stdio_with_env(&self, env: &[(&str, &str)]) -> RawClient {
        let mut command = self.stdio_command();
        command
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        RawClient::spawn(command)
    }

    /// `portcullis serve` on a free port; returns once it listens.
    pub async fn serve_http(&self) -> HttpProxy {
        serve_config(&self.write_config()).await
    }
}

/// `portcullis serve --config CONFIG` (whose `listen` port is 0); returns
/// once it listens.
pub async fn serve_config(config: &Path) -> HttpProxy {
    serve_config_with(config, &[]).await
}

/// [`serve_config`] with more arguments (`--profile NAME`).
pub async fn serve_config_with(config: &Path, more: &[&str]) -> HttpProxy {
    serve_config_env(config, more, &[]).await
}

/// [`serve_config_with`] and more environment variables.
pub async fn serve_config_env(config: &Path, more: &[&str], env: &[(&str, &str)]) -> HttpProxy {
    // The tests' HTTP clients (reqwest) need a crypto provider: ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Command::new(portcullis_bin())
        .args(["serve", "--config"])
        .arg(config)
        .args(more)
        .env("PORTCULLIS_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn portcullis serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Every line, those of the start included.
    let log = ProxyLog::default();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[proxy] {line}");
            log.push(line.clone());
            if line.contains("listening for MCP")
                && let Some(addr) = line.split("addr=").nth(1)
            {
                return addr.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the proxy did not report its address");
    // Keep draining the log so the proxy never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[proxy] {line}");
            kept.push(line);
        }
    });
    HttpProxy {
        child,
        url: format!("http://{addr}/mcp"),
        base: format!("http://{addr}"),
        log,
    }
}

/// A proxy's log as it is read (its stderr), for waiting on what it says
/// instead of waiting for time to pass.
#[derive(Clone, Default)]
pub struct ProxyLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ProxyLog {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// The log so far, one line each.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until a line contains all of `parts`.
    pub async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self
                .lines()
                .into_iter()
                .find(|line| parts.iter().all(|part| line.contains(part)))
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct HttpProxy {
    pub child: Child,
    pub url: String,
    pub base: String,
    /// Its log since it reported its address.
    pub log: ProxyLog,
}

impl HttpProxy {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("pid")
    }

    /// Sends `signal` (`TERM`, `KILL`, …) to the proxy.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the proxy exits after SIGTERM")
            .expect("wait for the proxy");
        assert!(status.success(), "the proxy exited with {status}");
    }
}

/// A line-level client of `portcullis stdio`, for protocol edge cases.
pub struct RawClient {
    pub child: Child,
    /// The proxy's log lines so far (when its stderr was piped).
    log: ProxyLog,
    stdin: Option<ChildStdin>,
    incoming: mpsc::UnboundedReceiver<Value>,
    /// Messages read while waiting for something else.
    backlog: Vec<Value>,
}

impl RawClient {
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("spawn portcullis");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let log = ProxyLog::default();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[proxy] {line}");
                    log.push(line);
                }
            });
        }
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("the proxy wrote a line that is not JSON ({err}): {line}")
                });
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            log,
            stdin: Some(stdin),
            incoming,
            backlog: Vec::new(),
        }
    }

    pub async fn send_line(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(line).await.expect("write");
        stdin.write_all(b"\n").await.expect("write");
        stdin.flush().await.expect("flush");
    }

    /// Closes stdin, as a client that is done does, and waits for the proxy
    /// to shut down cleanly.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the proxy exits after its stdin closes")
            .expect("wait for the proxy");
        assert!(status.success(), "the proxy exited with {status}");
    }

    pub async fn send(&mut self, message: Value) {
        let line = serde_json::to_vec(&message).expect("serialize");
        self.send_line(&line).await;
    }

    /// Waits for the first message that `matches`, keeping the others.
    pub async fn recv_matching(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {:?}", self.backlog))
                .unwrap_or_else(|| panic!("the proxy closed stdout while waiting for {what}"));
            if matches(&message) {
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// The response with this id.
    pub async fn response(&mut self, id: Value) -> Value {
        let what = format!("the response to id {id}");
        self.recv_matching(&what, |m| {
            m.get("id") == Some(&id) && m.get("method").is_none()
        })
        .await
    }

    /// Sends a request and waits for its response.
    pub async fn call(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
            .await;
        self.response(Value::from(id)).await
    }

    /// Sends a whole request (its id its own) and waits for its response.
    pub async fn call_raw(&mut self, request: Value) -> Value {
        let id = request["id"].clone();
        self.send(request).await;
        self.response(id).await
    }

    /// `tools/call` with `params` (ids from `first_id` + 1 on) until a call
    /// has a result, e.g. while a crashed server is started again; panics
    /// after `within`.
    pub async fn call_until_served(
        &mut self,
        first_id: i64,
        params: Value,
        within: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        let mut id = first_id;
        loop {
            id += 1;
            let reply = self.call(id, "tools/call", params.clone()).await;
            if reply.get("result").is_some() {
                return reply;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not served within {within:?}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn initialize(&mut self) -> Value {
        let reply = self
            .call(
                0,
                "initialize",
                serde_json::json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"sampling": {}},
                    "clientInfo": {"name": "raw-test", "version": "0"}
                }),
            )
            .await;
        self.send(serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        reply
    }

    /// The proxy's log so far, one line each.
    pub fn log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Waits (up to 60 s) until a log line contains all of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        self.log.wait_for(parts).await
    }

    /// Messages that arrived but were not asked for yet.
    pub fn backlog(&self) -> &[Value] {
        &self.backlog
    }
}

/// The text of the first content item of a `tools/call` result message.
/// A GitHub token (the redaction rules know its shape).
pub const GITHUB_TOKEN: &str = "ghp_R8xT2mQ9vL4nK7pW3sZ6yB1cD5fG0hJ8aE2u";

/// The example server over streamable HTTP (with `extra` arguments), as a
/// `remote` upstream: the process and its URL.
pub async fn start_remote_example(name: &str, extra: &[&str]) -> (Child, String) {
    let mut command = Command::new(example_server_bin());
    command
        .args(["--http", "127.0.0.1:0", "--name", name])
        .args(extra);
    start_http_server(command, "the example server").await
}

/// Runs `command`, an MCP server over HTTP that writes `listening on
/// HOST:PORT` to stderr: it and its `/mcp` URL (its stderr drained after).
pub async fn start_http_server(mut command: Command, what: &str) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {what}: {err}"));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("{what} did not report its address"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}/mcp"))
}

/// A proxy with the example server as `example`, Cedar `policies` and
/// redaction toward the client.
pub fn redacting_proxy(policies: &str) -> TestProxy {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"\n[redact]\nresponses = \"redact\"")
        .with_example_server("example");
    proxy.policy_folder(policies);
    proxy
}

/// Through an rmcp client of a [`redacting_proxy`] whose policies forbid
/// `add`: the example server's tools as `server` lists them (`echo` there,
/// `add` hidden), its echo of a GitHub token redacted, `add` refused by
/// Cedar, and its greeting read.
pub async fn rmcp_enforced(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    server: &str,
) {
    use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams};
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(
        names.contains(&format!("{server}__echo").as_str()),
        "{names:?}"
    );
    let add = format!("{server}__add");
    assert!(!names.contains(&add.as_str()), "Cedar hides it: {names:?}");
    let arguments = serde_json::json!({ "text": format!("use {GITHUB_TOKEN}") });
    let echoed = client
        .call_tool(
            CallToolRequestParams::new(format!("{server}__echo"))
                .with_arguments(arguments.as_object().unwrap().clone()),
        )
        .await
        .expect("tools/call");
    let echoed = serde_json::to_value(&echoed).unwrap();
    assert_eq!(
        echoed["content"][0]["text"],
        format!("{server}: use [REDACTED:github-pat-classic]"),
        "{echoed}"
    );
    let arguments = serde_json::json!({ "a": 1, "b": 2 });
    let denied = client
        .call_tool(
            CallToolRequestParams::new(add).with_arguments(arguments.as_object().unwrap().clone()),
        )
        .await;
    let denied = format!("{:?}", denied.expect_err("Cedar denies it"));
    assert!(
        denied.contains("-32010") || denied.contains("denied by authz"),
        "{denied}"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new("example://greeting"))
        .await
        .expect("resources/read");
    let read = serde_json::to_value(&read).unwrap();
    assert_eq!(
        read["contents"][0]["text"],
        format!("hello from {server}"),
        "{read}"
    );
}

/// The result of the op named `name` in a document of
/// `tests/python/mcp_client.py`'s.
pub fn client_op<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .expect("the client's results")
        .iter()
        .find(|r| r["op"] == name)
        .unwrap_or_else(|| panic!("no result for {name} in {doc}"))
}

pub fn first_text(response: &Value) -> String {
    response
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text content in {response}"))
        .to_owned()
}

/// Sends `initialize` to the streamable HTTP endpoint `url` as the client
/// whose bearer token is `token`, named `client_name` in its `clientInfo`;
/// the session id the proxy gave. (`notifications/initialized` is the
/// caller's to send.)
pub async fn initialize_http(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    client_name: &str,
) -> String {
    initialize_http_with(
        http,
        url,
        token,
        serde_json::json!({"protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":client_name,"version":"0"}}),
    )
    .await
}

/// [`initialize_http`] with these `initialize` params.
pub async fn initialize_http_with(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    params: Value,
) -> String {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":params}))
        .send()
        .await
        .expect("initialize over HTTP");
    assert!(
        response.status().is_success(),
        "initialize: {}",
        response.status()
    );
    response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A streamable HTTP session of the `tester` client that asks for JSON replies.
pub struct HttpSession {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
}

impl HttpSession {
    pub async fn connect(url: &str) -> Self {
        Self::connect_as(url, TOKEN).await
    }

    /// A session of the client whose bearer token is `token`.
    pub async fn connect_as(url: &str, token: &str) -> Self {
        Self::connect_declaring(
            url,
            token,
            serde_json::json!({"protocolVersion":"2025-06-18","capabilities":{},
                "clientInfo":{"name":"http-test","version":"0"}}),
        )
        .await
    }

    /// A session of the client whose bearer token is `token`, begun with
    /// these `initialize` params (a revision, capabilities).
    pub async fn connect_declaring(url: &str, token: &str, params: Value) -> Self {
        let http = reqwest::Client::new();
        let session = initialize_http_with(&http, url, token, params).await;
        let this = Self {
            http,
            url: url.to_owned(),
            token: token.to_owned(),
            session,
        };
        this.post(serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        this
    }

    /// The session's id (`Mcp-Session-Id`).
    pub fn id(&self) -> String {
        self.session.clone()
    }

    async fn post(&self, message: Value) -> reqwest::Response {
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json")
            .header("mcp-session-id", &self.session)
            .json(&message)
            .send()
            .await
            .expect("POST /mcp")
    }

    /// Opens the session's GET stream (what the proxy sends on its own):
    /// the messages it carries, in order, as they come. Returns once the
    /// stream is open.
    pub async fn events(&self) -> mpsc::UnboundedReceiver<Value> {
        use futures_util::StreamExt as _;
        let response = self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &self.session)
            .send()
            .await
            .expect("GET /mcp");
        assert!(
            response.status().is_success(),
            "GET /mcp: {}",
            response.status()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = response.bytes_stream();
        tokio::spawn(async move {
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                        if let Ok(message) = serde_json::from_str::<Value>(data.trim()) {
                            let _ = tx.send(message);
                        }
                    }
                }
            }
        });
        rx
    }

    /// Sends a request and returns its JSON-RPC reply.
    pub async fn call(&self, id: i64, method: &str, params: Value) -> Value {
        let response = self
            .post(serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}))
            .await;
        response.json().await.expect("a JSON reply")
    }
}

/// Calls the raw fixture server's `raw__mirror` through `session` and
/// checks the answer: the proxy still serves a real client.
pub async fn assert_mirrored(session: &HttpSession, id: i64) {
    let reply = session
        .call(
            id,
            "tools/call",
            serde_json::json!({"name":"raw__mirror","arguments":{"id":id}}),
        )
        .await;
    assert_eq!(first_text(&reply), "mirrored", "{reply}");
}

/// The running proxy's `GET /healthz` (public: no token).
pub async fn healthz(base: &str) -> Value {
    reqwest::get(format!("{base}/healthz"))
        .await
        .expect("GET /healthz")
        .json()
        .await
        .expect("/healthz is JSON")
}

/// The running proxy's `GET /metrics` text, read with the auditors' token.
pub async fn metrics_text(base: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(AUDITOR_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text")
}

/// A console page (`/admin/…`) as the auditors see it once logged in:
/// the login form posted with their token, the page read with its cookie
/// (the login's own answer carries it: no redirect followed).
pub async fn console_page(base: &str, path: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let login = http
        .post(format!("{base}/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={AUDITOR_TOKEN}"))
        .send()
        .await
        .expect("POST /admin/login");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .expect("a cookie")
        .split(';')
        .next()
        .expect("a cookie's value")
        .to_owned();
    let page = http
        .get(format!("{base}{path}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.expect("the page")
}

/// The running proxy's audit records matching `query` (`tool=echo&kind=exchange`),
/// read over the admin API with `token`.
pub async fn admin_records(base: &str, query: &str, token: &str) -> Vec<Value> {
    admin_records_with(&reqwest::Client::new(), base, query, token).await
}

/// [`admin_records`] through `http` (an https client, say).
pub async fn admin_records_with(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    token: &str,
) -> Vec<Value> {
    admin_list(http, &format!("{base}/admin/audit?{query}"), token).await
}

/// The `records` an admin API `url` (`/admin/audit…`) answers `token` with.
pub async fn admin_list(http: &reqwest::Client, url: &str, token: &str) -> Vec<Value> {
    let answer: Value = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .expect("a JSON answer");
    answer["records"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no records in {answer}"))
}

/// The tool names of a `tools/list` reply.
pub fn tool_names(reply: &Value) -> Vec<String> {
    reply["result"]["tools"]
        .as_array()
        .expect("a tool list")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

/// `portcullis audit … --config CONFIG`: (success, stdout, stderr).
pub fn audit(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = vec!["audit".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    all.push("--config".as_ref());
    all.push(config.as_os_str());
    run_portcullis(all)
}

/// `audit query --format jsonl` with `filters`: the records.
pub fn records(config: &Path, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["query", "--format", "jsonl"];
    args.extend_from_slice(filters);
    let (ok, stdout, stderr) = audit(config, &args);
    assert!(ok, "{stderr}");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The example plugins, built from their sources by
/// `scripts/build-plugins.sh` when the wasm32-wasip2 target is installed —
/// and then the checked-in builds must be exactly what the sources build to
/// — or the checked-in builds when it is not.
pub fn example_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let sysroot = std::process::Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .expect("rustc runs");
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        if !sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
            eprintln!(
                "the wasm32-wasip2 target is missing: the tests use the checked-in plugin builds"
            );
            return None;
        }
        let out = repo_root().join("target/test-plugins");
        let status = std::process::Command::new(repo_root().join("scripts/build-plugins.sh"))
            .arg(&out)
            .env("PLUGINS_TARGET_DIR", repo_root().join("target/plugins"))
            .status()
            .expect("scripts/build-plugins.sh runs");
        assert!(status.success(), "scripts/build-plugins.sh failed");
        for crate_dir in ["noop", "deny-pattern", "add-notice", "mask-pii"] {
            let file = format!("{}.wasm", crate_dir.replace('-', "_"));
            let fresh = std::fs::read(out.join(&file)).expect("a fresh build");
            let checked_in = repo_root().join("plugins/examples").join(crate_dir).join(&file);
            let checked_in = std::fs::read(&checked_in).unwrap_or_default();
            assert!(
                fresh == checked_in,
                "plugins/examples/{crate_dir}/{file} is not what its sources build to: run scripts/build-plugins.sh and commit the result"
            );
        }
        Some(out)
    });
    let file = format!("{}.wasm", name.replace('-', "_"));
    match built {
        Some(out) => out.join(file),
        None => repo_root().join("plugins/examples").join(name).join(file),
    }
}

/// Runs `script` with `sh -c` as the user `uid` (group `uid`, no other
/// groups), as another local user of this host would: (success, stderr).
pub fn as_other_user(uid: u32, script: &str) -> (bool, String) {
    let output = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
            "timeout".to_owned(),
            "10".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The permission bits, owner and group of `path` (not following a link).
pub fn mode_of(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

/// One HTTP client that calls `echo` until the proxy goes away; the
/// (session, request id) of every reply it received.
pub async fn call_until_refused(url: String, worker: u64) -> Vec<(String, u64)> {
    call_until_refused_telling(url, worker, &std::sync::atomic::AtomicU64::new(0)).await
}

/// [`call_until_refused`], adding one to `settled` once it has had two
/// replies, or when it stops before that.
async fn call_until_refused_settling(
    url: String,
    worker: u64,
    settled: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Vec<(String, u64)> {
    let received = call_until_refused_telling(url, worker, &settled).await;
    if received.len() < 2 {
        settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    received
}

/// [`call_until_refused`], adding one to `warmed` at its second reply.
async fn call_until_refused_telling(
    url: String,
    worker: u64,
    warmed: &std::sync::atomic::AtomicU64,
) -> Vec<(String, u64)> {
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, body: Value| {
        let mut request = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let Ok(response) = post(
        None,
        serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"load","version":"0"}}}),
    )
    .await
    else {
        return Vec::new();
    };
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = post(
        Some(&session),
        serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    let mut received = Vec::new();
    for id in 1.. {
        let text = format!("worker {worker} call {id}");
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"example__echo","arguments":{"text":text}}});
        let Ok(response) = post(Some(&session), body).await else {
            break;
        };
        let Ok(reply) = response.json::<Value>().await else {
            break;
        };
        if first_text(&reply) != format!("example: {text}") {
            break;
        }
        received.push((session.clone(), id));
        if received.len() == 2 {
            warmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    received
}

/// `workers` HTTP clients call `echo` until each has had two replies, then
/// the proxy is SIGKILLed while they run (no shutdown, no flush): the
/// (session, request id) of every reply they received.
pub async fn calls_then_kill(served: &mut HttpProxy, workers: u64) -> Vec<(String, u64)> {
    let settled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let running: Vec<_> = (0..workers)
        .map(|worker| {
            let url = served.url.clone();
            tokio::spawn(call_until_refused_settling(url, worker, settled.clone()))
        })
        .collect();
    // Counted, not timed: every worker is calling when the kill comes,
    // however slowly the machine serves them (a worker that stopped
    // before its second reply is waited for no longer, and the count
    // below says so).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while settled.load(std::sync::atomic::Ordering::Relaxed) < workers
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.child.start_kill().unwrap();
    let _ = served.child.wait().await;
    let mut received = Vec::new();
    for worker in running {
        received.extend(worker.await.unwrap());
    }
    assert!(
        received.len() as u64 >= 2 * workers,
        "the load ran: {} replies",
        received.len()
    );
    received
}

/// A listener on loopback that takes connections and keeps every byte
/// sent to it: what a redirect followed would have delivered.
pub async fn trap() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            kept.lock().unwrap().extend_from_slice(b"<connection>");
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await {
                    if read == 0 {
                        break;
                    }
                    kept.lock().unwrap().extend_from_slice(&buffer[..read]);
                }
            });
        }
    });
    (url, received)
}
