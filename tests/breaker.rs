//! A server's breaker, on the real proxy with a remote server that fails as
//! told (`tests/fixtures/failing_http_upstream.py`). A client's calls that
//! time out while the server answers the proxy's own question (a slow tool)
//! do not open it: other calls still reach the server. A server that stops
//! answering, then one that answers HTTP 503, opens it: calls are refused at
//! once and the server gets none of them; the proxy asks it again after each
//! cool-down, and its answer closes the breaker. Each change is one audit
//! record (none per refused call), and the state is in the metrics and
//! `/healthz`. A per-client container frozen under one client opens that
//! instance's breaker alone; the server counts as failing on `/healthz`,
//! the metrics and the console until the instance answers again.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::{Duration, Instant};

use common::{HttpSession, TestProxy};
use serde_json::{Value, json};
use tokio::process::Command;

/// The fixture's own address (its `/mcp` URL without the path).
struct Fixture {
    base: String,
}

impl Fixture {
    async fn set(&self, mode: &str) {
        let answer = reqwest::Client::new()
            .post(format!("{}/mode", self.base))
            .body(mode.to_owned())
            .send()
            .await
            .expect("POST /mode");
        assert!(answer.status().is_success(), "{}", answer.status());
    }

    /// The `tools/call` and `server/discover` requests that reached the
    /// server so far.
    async fn seen(&self) -> (u64, u64) {
        let answer: Value = reqwest::get(format!("{}/calls", self.base))
            .await
            .expect("GET /calls")
            .json()
            .await
            .expect("a JSON answer");
        (
            answer["calls"].as_u64().expect("a count"),
            answer["discovers"].as_u64().expect("a count"),
        )
    }
}

async fn breaker_open(base: &str) -> bool {
    let text = common::metrics_text(base).await;
    let line = text
        .lines()
        .find(|line| line.starts_with("portcullis_upstream_breaker_open{server=\"f\"}"))
        .unwrap_or_else(|| panic!("no breaker line in the metrics:\n{text}"));
    line.ends_with(" 1")
}

/// Waits (a minute at most) until the breaker is `open`, as the metrics say.
async fn until_breaker(base: &str, open: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while breaker_open(base).await != open {
        assert!(
            Instant::now() < deadline,
            "the breaker never became open={open}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused_for_failing(reply: &Value) {
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("server `f` is failing: its calls are refused until it answers"),
        "{reply}"
    );
    assert_eq!(reply["error"]["code"], -32011, "{reply}");
    assert!(message.contains("2 calls in a row failed"), "{reply}");
    // Why the last call failed was another call's: not told here.
    assert!(!message.contains("within 2s"), "{reply}");
    assert!(!message.contains("503"), "{reply}");
}

fn failed_with(reply: &Value, says: &str) {
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(says) && !m.contains("is failing")),
        "not `{says}`: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_server_is_refused_at_once_until_it_answers_the_proxy_again() {
    let mut command = Command::new("python3");
    command.arg(common::repo_root().join("tests/fixtures/failing_http_upstream.py"));
    let (_server, url) = common::start_http_server(command, "the failing HTTP server").await;
    let fixture = Fixture {
        base: url.trim_end_matches("/mcp").to_owned(),
    };
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"f\"\nprotocol = \"2026-07-28\"\ntimeout = \"2s\"\n\
         breaker = {{ failures = 2, cool_down = \"1s\" }}\nremote = {{ url = {url:?} }}\n"
    ));
    let served = proxy.serve_http().await;
    let session = HttpSession::connect(&served.url).await;
    let call = |id: i64| session.call(id, "tools/call", json!({ "name": "f__echo" }));
    let echoed = |reply: &Value| {
        assert_eq!(
            reply["result"]["content"][0]["text"], "echoed",
            "not answered: {reply}"
        );
    };

    echoed(&call(1).await);
    assert!(!breaker_open(&served.base).await);

    // A slow tool: the calls time out, but the server answers the proxy's
    // own question. The next call still reaches it.
    fixture.set("slow").await;
    for id in [2, 3] {
        failed_with(&call(id).await, "within 2s");
    }
    let (reached, _) = fixture.seen().await;
    failed_with(&call(4).await, "within 2s");
    assert_eq!(fixture.seen().await.0, reached + 1, "the call was refused");
    assert!(!breaker_open(&served.base).await);

    // A server that answers nothing: two calls time out, the proxy's
    // question too, and the breaker opens.
    fixture.set("hang").await;
    for id in [5, 6] {
        failed_with(&call(id).await, "within 2s");
    }
    until_breaker(&served.base, true).await;
    let (reached, _) = fixture.seen().await;
    let asked = Instant::now();
    let refused = call(7).await;
    let took = asked.elapsed();
    refused_for_failing(&refused);
    assert_eq!(fixture.seen().await.0, reached, "the server got the call");
    // Measured, not asserted (the machine may be busy): the refusal against
    // the call timeout it no longer waits for.
    eprintln!(
        "refused while open in {took:?}: {:.3}% of the 2s call timeout",
        took.as_secs_f64() * 100.0 / 2.0
    );
    assert_eq!(common::healthz(&served.base).await["servers_failing"], 1);

    // It answers 503 now: the proxy asks again after the cool-down, is
    // answered 503, and the breaker stays open; calls still reach nothing.
    fixture.set("503").await;
    let (_, discovers) = fixture.seen().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fixture.seen().await.1 < discovers + 2 {
        assert!(Instant::now() < deadline, "the proxy never asked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(breaker_open(&served.base).await);
    refused_for_failing(&call(8).await);
    assert_eq!(fixture.seen().await.0, reached, "a call reached the server");

    // Answering again: the proxy's next question closes it.
    fixture.set("ok").await;
    until_breaker(&served.base, false).await;
    echoed(&call(9).await);
    assert_eq!(common::healthz(&served.base).await["servers_failing"], 0);

    // From closed, two 503s and the proxy's answered-503 question open it.
    fixture.set("503").await;
    for id in [10, 11] {
        failed_with(&call(id).await, "HTTP 503");
    }
    until_breaker(&served.base, true).await;
    refused_for_failing(&call(12).await);
    served.terminate().await;

    // One record per change: opened (not answering), closed, opened
    // (503); none for the slow tool, none for the refused calls, which each
    // have their exchange's record.
    let config = proxy.dir().join("portcullis.toml");
    let mut changes = common::records(&config, &["--kind", "server_circuit_open"]);
    changes.extend(common::records(
        &config,
        &["--kind", "server_circuit_closed"],
    ));
    changes.sort_by_key(|r| r["seq"].as_u64());
    let kinds: Vec<&str> = changes
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "server_circuit_open",
            "server_circuit_closed",
            "server_circuit_open"
        ],
        "{changes:?}"
    );
    for record in changes
        .iter()
        .filter(|r| r["kind"] == "server_circuit_open")
    {
        assert_eq!(record["server"], "f", "{record}");
        assert_eq!(record["decision"], "error", "{record}");
    }
    let reason = |at: usize| changes[at]["reason"].as_str().unwrap().to_owned();
    assert!(reason(0).contains("within 2s"), "{changes:?}");
    assert!(reason(2).contains("HTTP 503"), "{changes:?}");
    // Each refused call is an exchange of its own, recorded as failed.
    let exchanges = common::records(&config, &["--kind", "exchange", "--tool", "echo"]);
    let refusals = exchanges
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|m| m.contains("is failing"))
        })
        .count();
    assert_eq!(refusals, 3, "{exchanges:?}");
}

/// Runs `docker ARGS` and fails when it does.
fn docker(args: &[&str]) {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A line of the metrics, by its name and labels: its value.
async fn metric(base: &str, series: &str) -> Option<String> {
    let text = common::metrics_text(base).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

/// Waits (a minute at most) until `series` reads `value`.
async fn until_metric(base: &str, series: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(base, series).await.as_deref() != Some(value) {
        assert!(
            Instant::now() < deadline,
            "{series} never read {value}: {:?}",
            metric(base, series).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The breaker field of the console's servers page, for server `name`.
async fn console_breaker(base: &str, name: &str) -> String {
    let html = common::console_page(base, "/admin/servers").await;
    let section = html
        .split("<section")
        .find(|part| part.contains(&format!("data-server=\"{name}\"")))
        .unwrap_or_else(|| panic!("no section for {name}: {html}"));
    let field = section
        .split("class=\"field-breaker\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no breaker field: {section}"));
    field.split('<').next().unwrap().to_owned()
}

/// The container of `client`'s instance of server `server`.
fn container_of(server: &str, client: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=dev.portcullis.server={server}"))
        .arg("--filter")
        .arg(format!("label=dev.portcullis.client={client}"))
        .output()
        .expect("run docker ps");
    let ids = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        !ids.is_empty() && !ids.contains('\n'),
        "one container: {ids:?}"
    );
    ids
}

/// Each per-client instance of a server has its own breaker: one client's
/// instance that stops answering (its container frozen) opens its
/// breaker, and that client's calls are refused at once while the other
/// client's still reach its own instance. `/healthz`, the metrics and the
/// console's servers page count the server as failing; once the container
/// runs again, the proxy's question after the cool-down is answered and
/// closes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_client_instance_that_stops_answering_opens_its_own_breaker() {
    let image = common::test_image();
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"breaker-pc\"\ntimeout = \"2s\"\n\
         breaker = {{ failures = 1, cool_down = \"1s\" }}\n\
         container = {{ image = {image:?}, args = [\"--name\", \"breaker-pc\"], isolation = \"per-client\" }}\n"
    ));
    let served = proxy.serve_http().await;
    let base = served.base.clone();
    let tester = HttpSession::connect(&served.url).await;
    let other = HttpSession::connect_as(&served.url, common::OTHER_TOKEN).await;
    let echo = |text: &str| json!({ "name": "breaker-pc__echo", "arguments": { "text": text } });
    let echoed = |reply: &Value, text: &str| {
        assert_eq!(
            reply["result"]["content"][0]["text"],
            format!("breaker-pc: {text}"),
            "not answered: {reply}"
        );
    };
    echoed(&tester.call(1, "tools/call", echo("first")).await, "first");
    echoed(&other.call(1, "tools/call", echo("first")).await, "first");
    assert_eq!(
        console_breaker(&base, "breaker-pc").await,
        "closed (each per-client instance has its own; 2 kept now)"
    );

    // The tester's container stops answering: its call times out, the
    // proxy's question too, and its instance's breaker opens.
    let frozen = container_of("breaker-pc", "tester");
    docker(&["pause", &frozen]);
    let failed = tester.call(2, "tools/call", echo("lost")).await;
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("within 2s")),
        "{failed}"
    );
    let open = "portcullis_upstream_instances{server=\"breaker-pc\",breaker=\"open\"}";
    until_metric(&base, open, "1").await;
    let refused = tester.call(3, "tools/call", echo("refused")).await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("server `breaker-pc` is failing")),
        "{refused}"
    );
    // The other client's instance is not failing: its calls go through.
    echoed(&other.call(2, "tools/call", echo("still")).await, "still");
    let closed = "portcullis_upstream_instances{server=\"breaker-pc\",breaker=\"closed\"}";
    assert_eq!(metric(&base, closed).await.as_deref(), Some("1"));
    let server_open = "portcullis_upstream_breaker_open{server=\"breaker-pc\"}";
    assert_eq!(metric(&base, server_open).await.as_deref(), Some("1"));
    assert_eq!(common::healthz(&base).await["servers_failing"], 1);
    let shown = console_breaker(&base, "breaker-pc").await;
    assert!(
        shown.starts_with("OPEN for 1 of 2 per-client instances"),
        "{shown}"
    );

    // It runs again: the proxy's question after the cool-down is answered,
    // and the breaker closes.
    docker(&["unpause", &frozen]);
    until_metric(&base, open, "0").await;
    echoed(&tester.call(4, "tools/call", echo("back")).await, "back");
    assert_eq!(common::healthz(&base).await["servers_failing"], 0);
    assert_eq!(metric(&base, server_open).await.as_deref(), Some("0"));
    assert_eq!(
        console_breaker(&base, "breaker-pc").await,
        "closed (each per-client instance has its own; 2 kept now)"
    );
    served.terminate().await;
}
