//! `container` upstreams against the real Docker engine: the example server's
//! image (`FROM scratch`, built by `scripts/build-test-image.sh`) behind the
//! proxy, over stdio and HTTP, under the hardened profile; restarts, clean
//! shutdown, orphans of a killed proxy, and bad input. These tests fail, never
//! skip, when the engine is missing.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerSummary;
use common::{HttpSession, RawClient, TestProxy, first_text};
use portcullis::upstream::container::{self, LABEL_SERVER};
use serde_json::{Value, json};

/// The tests here start and kill proxies whose start-up removes the
/// containers of dead proxies: one at a time, so that an orphan one test
/// leaves on purpose is not removed by another test's proxy first.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn docker() -> Docker {
    common::docker().await
}

/// Every container (running or not) of the server `name`.
async fn containers(docker: &Docker, server: &str) -> Vec<ContainerSummary> {
    container::labelled(docker, &format!("{LABEL_SERVER}={server}"))
        .await
        .unwrap()
}

/// Waits until `server` has exactly `count` containers and returns them.
async fn wait_for_containers(docker: &Docker, server: &str, count: usize) -> Vec<ContainerSummary> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = containers(docker, server).await;
        if found.len() == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "server `{server}`: expected {count} containers, found {}: {found:?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A proxy with one eager `container` server `name` whose stdio goes
/// through FIFOs (the bridge of `scripts/build-test-image.sh`).
fn fifo_proxy(name: &str) -> TestProxy {
    common::test_image();
    let bridge = common::repo_root().join("target/static/portcullis-bridge");
    TestProxy::new()
        .with_config(&format!("bridge = {:?}", bridge.display().to_string()))
        .with_container_server(name, ", stdio = \"fifo\", start = \"eager\"", "")
}

async fn initialized(proxy: &TestProxy) -> RawClient {
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    client
}

fn probe_of(reply: &Value) -> Value {
    reply["result"]["structuredContent"].clone()
}

fn assert_hardened_probe(probe: &Value) {
    assert_eq!(probe["uid"], 65534, "{probe}");
    assert_eq!(probe["gid"], 65534, "{probe}");
    assert_eq!(probe["cap_eff"], "0000000000000000", "{probe}");
    assert_eq!(probe["root_read_only"], true, "{probe}");
    assert_eq!(probe["tmp_noexec"], true, "{probe}");
    assert_eq!(probe["network_interfaces"], json!(["lo"]), "{probe}");
    assert_eq!(probe["pids_max"], 256, "{probe}");
    assert_eq!(probe["memory_max"], 512 * 1024 * 1024, "{probe}");
    assert_eq!(probe["no_new_privs"], true, "{probe}");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_reach_a_hardened_container_over_stdio_and_http() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy = TestProxy::new().with_container_server("box-calls", "", "");

    // stdio
    let mut client = initialized(&proxy).await;
    let echoed = client
        .call(
            1,
            "tools/call",
            json!({"name":"box-calls__echo","arguments":{"text":"from a box"}}),
        )
        .await;
    assert_eq!(first_text(&echoed), "box-calls: from a box");
    let probe = client
        .call(
            2,
            "tools/call",
            json!({"name":"box-calls__sandbox_probe","arguments":{}}),
        )
        .await;
    assert_hardened_probe(&probe_of(&probe));

    // What the engine was asked for, as it reports it.
    let running = wait_for_containers(&docker, "box-calls", 1).await;
    let id = running[0].id.clone().unwrap();
    let inspected = docker.inspect_container(&id, None).await.unwrap();
    let host = inspected.host_config.clone().unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    let security = host.security_opt.clone().unwrap_or_default();
    assert!(
        security.contains(&"no-new-privileges:true".to_owned()),
        "{security:?}"
    );
    assert!(
        !security.iter().any(|o| o.contains("seccomp")),
        "Docker's default seccomp profile stays: {security:?}"
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(
        host.tmpfs
            .as_ref()
            .and_then(|t| t.get("/tmp"))
            .map(String::as_str),
        Some("rw,noexec,nosuid,nodev,size=67108864")
    );
    assert_eq!(host.memory, Some(512 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(512 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.privileged, Some(false));
    assert!(host.pid_mode.as_deref().unwrap_or_default().is_empty());
    assert_eq!(host.ipc_mode.as_deref(), Some("private"));
    assert_eq!(host.init, Some(true));
    assert!(host.binds.unwrap_or_default().is_empty());
    assert!(host.mounts.unwrap_or_default().is_empty());
    assert_eq!(
        host.log_config.and_then(|l| l.typ).as_deref(),
        Some("none"),
        "MCP traffic stays out of Docker's logs"
    );
    let config = inspected.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    assert_eq!(config.tty, Some(false));
    let labels = config.labels.unwrap();
    assert_eq!(labels["dev.portcullis.managed"], "true");
    assert_eq!(labels["dev.portcullis.server"], "box-calls");

    // HTTP, through another proxy process with its own container.
    let server = proxy.serve_http().await;
    let session = HttpSession::connect(&server.url).await;
    let echoed = session
        .call(
            3,
            "tools/call",
            json!({"name":"box-calls__echo","arguments":{"text":"over http"}}),
        )
        .await;
    assert_eq!(first_text(&echoed), "box-calls: over http");
    let probe = session
        .call(
            4,
            "tools/call",
            json!({"name":"box-calls__sandbox_probe","arguments":{}}),
        )
        .await;
    assert_hardened_probe(&probe_of(&probe));
    wait_for_containers(&docker, "box-calls", 2).await;

    // Ending the proxies removes their containers.
    client.finish().await;
    server.terminate().await;
    assert!(containers(&docker, "box-calls").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn relaxations_apply_and_secrets_reach_only_the_container() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("note.txt"), "hello").unwrap();
    let secret = "s3cr3t-value-for-the-container";
    let image = common::test_image();
    let proxy = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"box-relaxed\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"box-relaxed\"], env = {{ LOG_LEVEL = \"debug\" }} }}\nsecrets = {{ API_KEY = \"env:PORTCULLIS_TEST_CONTAINER_SECRET\" }}\n[servers.sandbox]\nmemory = \"256m\"\npids = 64\nuser = \"1000:1000\"\nmounts = [{{ source = {:?}, target = \"/data\" }}]\n",
        data.path()
    ));
    let config_path = proxy.write_config();
    let mut command = proxy.stdio_command();
    command
        // Even asked for, the Docker client's request bodies stay out.
        .env("PORTCULLIS_LOG", "debug,bollard::docker=trace,rmcp=trace")
        .env("PORTCULLIS_TEST_CONTAINER_SECRET", secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut client = RawClient::spawn(command);
    client.initialize().await;
    let probe = client
        .call(
            1,
            "tools/call",
            json!({"name":"box-relaxed__sandbox_probe","arguments":{}}),
        )
        .await;
    let probe = probe_of(&probe);
    assert_eq!(probe["uid"], 1000, "{probe}");
    assert_eq!(probe["pids_max"], 64, "{probe}");
    assert_eq!(probe["memory_max"], 256 * 1024 * 1024, "{probe}");
    assert_eq!(probe["cap_eff"], "0000000000000000", "{probe}");

    let running = wait_for_containers(&docker, "box-relaxed", 1).await;
    let inspected = docker
        .inspect_container(running[0].id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let env = inspected.config.unwrap().env.unwrap_or_default();
    assert!(
        env.contains(&format!("API_KEY={secret}")),
        "the container gets the secret"
    );
    assert!(env.contains(&"LOG_LEVEL=debug".to_owned()));
    let mounts = inspected.host_config.unwrap().mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(mounts[0].target.as_deref(), Some("/data"));

    // Each relaxation is announced; the secret is in no log line, not even
    // at debug level, and not in `servers list`.
    for relaxation in [
        "user `1000:1000`",
        "memory 268435456 bytes",
        "pids 64",
        "read-only bind mount",
    ] {
        client
            .wait_for_log(&["container sandbox relaxed", "box-relaxed", relaxation])
            .await;
    }
    assert!(
        client.log().iter().all(|line| !line.contains(secret)),
        "the secret leaked into the log"
    );
    let listed = std::process::Command::new(common::portcullis_bin())
        .args(["servers", "list", "--format", "json", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("API_KEY") && !listed.contains(secret),
        "{listed}"
    );
    assert!(listed.contains("relaxed(4)"), "{listed}");
    client.finish().await;
    assert!(containers(&docker, "box-relaxed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_container_is_replaced_by_a_fresh_one() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy = TestProxy::new().with_container_server("box-crash", "", "");
    let mut client = initialized(&proxy).await;
    let first = wait_for_containers(&docker, "box-crash", 1).await;
    let first_id = first[0].id.clone().unwrap();

    let crashed = client
        .call(
            1,
            "tools/call",
            json!({"name":"box-crash__crash","arguments":{"code":7}}),
        )
        .await;
    assert_eq!(crashed["error"]["code"], -32011, "{crashed}");
    client
        .wait_for_log(&["container exited", "box-crash", "exit_code=7"])
        .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    loop {
        id += 1;
        let reply = client
            .call(
                id,
                "tools/call",
                json!({"name":"box-crash__echo","arguments":{"text":"again"}}),
            )
            .await;
        if reply.get("result").is_some() {
            assert_eq!(first_text(&reply), "box-crash: again");
            break;
        }
        assert_eq!(reply["error"]["code"], -32011, "{reply}");
        assert!(Instant::now() < deadline, "the server did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = wait_for_containers(&docker, "box-crash", 1).await;
    assert_ne!(now[0].id.clone().unwrap(), first_id, "a new container");
    assert_eq!(
        now[0].labels.as_ref().unwrap()["dev.portcullis.restarts"],
        "1"
    );
    client.finish().await;
    assert!(containers(&docker, "box-crash").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_removes_every_container_and_a_killed_proxys_are_removed_at_next_start() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    // `a` starts with the proxy, `b` (lazy, the default) at the first session.
    let proxy = TestProxy::new()
        .with_container_server("box-term-a", ", start = \"eager\"", "")
        .with_container_server("box-term-b", "", "");

    // SIGTERM: a clean shutdown leaves nothing behind.
    let server = proxy.serve_http().await;
    wait_for_containers(&docker, "box-term-a", 1).await;
    assert!(containers(&docker, "box-term-b").await.is_empty(), "lazy");
    let _session = HttpSession::connect(&server.url).await;
    wait_for_containers(&docker, "box-term-b", 1).await;
    server.terminate().await;
    assert!(containers(&docker, "box-term-a").await.is_empty());
    assert!(containers(&docker, "box-term-b").await.is_empty());

    // SIGKILL: the containers stay (stopped, once their stdin closed) …
    let mut server = proxy.serve_http().await;
    let _session = HttpSession::connect(&server.url).await;
    wait_for_containers(&docker, "box-term-a", 1).await;
    wait_for_containers(&docker, "box-term-b", 1).await;
    server.signal("KILL");
    let _ = server.child.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        containers(&docker, "box-term-a").await.len(),
        1,
        "left behind"
    );
    assert_eq!(
        containers(&docker, "box-term-b").await.len(),
        1,
        "left behind"
    );

    // … until the next proxy starts, removes them, and runs its own.
    let server = proxy.serve_http().await;
    let session = HttpSession::connect(&server.url).await;
    let echoed = session
        .call(
            1,
            "tools/call",
            json!({"name":"box-term-a__echo","arguments":{"text":"fresh"}}),
        )
        .await;
    assert_eq!(first_text(&echoed), "box-term-a: fresh");
    let now = wait_for_containers(&docker, "box-term-a", 1).await;
    let owner = &now[0].labels.as_ref().unwrap()["dev.portcullis.owner"];
    assert!(
        owner.contains(&format!("/{}/", server.pid())),
        "only the new proxy's container remains: {owner}"
    );
    wait_for_containers(&docker, "box-term-b", 1).await;
    server.terminate().await;
    assert!(containers(&docker, "box-term-a").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lazy_servers_start_at_first_use_and_stop_when_idle() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    // Idle for ten seconds before it stops: time enough, on a loaded
    // machine, to see the container it started running.
    let proxy = TestProxy::new().with_container_server("box-lazy", ", idle_timeout = \"10s\"", "");
    let mut client = proxy.raw_stdio_with_env(&[]).await;
    // The proxy is up (it answers ping) but nobody used the server yet.
    let pong = client.call(1, "ping", json!({})).await;
    assert_eq!(pong["result"], json!({}));
    assert!(
        containers(&docker, "box-lazy").await.is_empty(),
        "nothing runs before first use"
    );

    // The first session starts it, and its first list is complete.
    client.initialize().await;
    let tools = client.call(2, "tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"box-lazy__echo"), "{names:?}");
    wait_for_containers(&docker, "box-lazy", 1).await;

    // Idle for its ten seconds: stopped and removed, its tools still listed.
    client
        .wait_for_log(&["box-lazy", "stopping the server: idle"])
        .await;
    wait_for_containers(&docker, "box-lazy", 0).await;
    let tools = client.call(3, "tools/list", json!({})).await;
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "box-lazy__echo"),
        "{tools}"
    );

    // A call wakes it: a cold start, then the answer.
    let echoed = client
        .call(
            4,
            "tools/call",
            json!({"name":"box-lazy__echo","arguments":{"text":"woken"}}),
        )
        .await;
    assert_eq!(first_text(&echoed), "box-lazy: woken");
    assert_eq!(containers(&docker, "box-lazy").await.len(), 1);

    // A subscription lives in the server: it is not stopped while one is held…
    let subscribed = client
        .call(
            5,
            "resources/subscribe",
            json!({"uri":"example://greeting"}),
        )
        .await;
    assert_eq!(subscribed["result"], json!({}), "{subscribed}");
    // Past its idle timeout: not stopped (the proxy did not decide to, nor
    // did the container go).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let idle_stops = client
        .log()
        .iter()
        .filter(|line| line.contains("box-lazy") && line.contains("stopping the server: idle"))
        .count();
    assert_eq!(idle_stops, 1, "held by the subscription");
    assert_eq!(
        containers(&docker, "box-lazy").await.len(),
        1,
        "held by the subscription"
    );
    // … and is, idle again, once it is gone.
    client
        .call(
            6,
            "resources/unsubscribe",
            json!({"uri":"example://greeting"}),
        )
        .await;
    wait_for_containers(&docker, "box-lazy", 0).await;
    client.finish().await;
    assert!(containers(&docker, "box-lazy").await.is_empty());

    // The audit log has each start and each idle stop of the container.
    let (ok, stdout, stderr) = common::run_portcullis([
        "audit".as_ref(),
        "query".as_ref(),
        "--server".as_ref(),
        "box-lazy".as_ref(),
        "--format".as_ref(),
        "jsonl".as_ref(),
        "--config".as_ref(),
        proxy.write_config().as_os_str(),
    ]);
    assert!(ok, "{stderr}");
    let events: Vec<(String, Option<String>)> = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.starts_with("server_")))
        .map(|r| {
            assert_eq!(r["detail"]["upstream"], "container", "{r}");
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let ready = (String::from("server_ready"), None);
    let idle = (String::from("server_stopped"), Some(String::from("idle")));
    assert_eq!(
        events,
        [ready.clone(), idle.clone(), ready, idle],
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_client_isolation_gives_each_client_its_own_container() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy =
        TestProxy::new().with_container_server("box-tenant", ", isolation = \"per-client\"", "");
    let server = proxy.serve_http().await;
    let tester = HttpSession::connect(&server.url).await;
    let other = HttpSession::connect_as(&server.url, common::OTHER_TOKEN).await;

    let probe = |reply: Value| probe_of(&reply)["hostname"].as_str().unwrap().to_owned();
    let tester_host = probe(
        tester
            .call(
                1,
                "tools/call",
                json!({"name":"box-tenant__sandbox_probe","arguments":{}}),
            )
            .await,
    );
    let other_host = probe(
        other
            .call(
                1,
                "tools/call",
                json!({"name":"box-tenant__sandbox_probe","arguments":{}}),
            )
            .await,
    );
    assert_ne!(tester_host, other_host, "two clients, two processes");
    // Again: each client stays with its own container.
    let again = probe(
        tester
            .call(
                2,
                "tools/call",
                json!({"name":"box-tenant__sandbox_probe","arguments":{}}),
            )
            .await,
    );
    assert_eq!(again, tester_host);

    // One container per client (labelled with it), and the server's own one,
    // which only lists.
    let all = wait_for_containers(&docker, "box-tenant", 3).await;
    let owner_of = |host: &str| {
        all.iter()
            .find(|c| c.id.as_deref().unwrap_or_default().starts_with(host))
            .and_then(|c| c.labels.as_ref()?.get("dev.portcullis.client").cloned())
    };
    assert_eq!(owner_of(&tester_host).as_deref(), Some("tester"));
    assert_eq!(owner_of(&other_host).as_deref(), Some("other"));
    assert_eq!(
        all.iter()
            .filter(|c| c
                .labels
                .as_ref()
                .unwrap()
                .get("dev.portcullis.client")
                .is_none())
            .count(),
        1
    );
    server.terminate().await;
    assert!(containers(&docker, "box-tenant").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifo_stdio_bypasses_the_engine_and_keeps_the_profile() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy = fifo_proxy("box-fifo");
    let mut client = initialized(&proxy).await;
    let echoed = client
        .call(
            1,
            "tools/call",
            json!({"name":"box-fifo__echo","arguments":{"text":"through fifos"}}),
        )
        .await;
    assert_eq!(first_text(&echoed), "box-fifo: through fifos");
    let probe = client
        .call(
            2,
            "tools/call",
            json!({"name":"box-fifo__sandbox_probe","arguments":{}}),
        )
        .await;
    assert_hardened_probe(&probe_of(&probe));

    let running = wait_for_containers(&docker, "box-fifo", 1).await;
    let inspected = docker
        .inspect_container(running[0].id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let config = inspected.config.unwrap();
    assert_eq!(
        config
            .entrypoint
            .as_ref()
            .and_then(|e| e.first())
            .map(String::as_str),
        Some("/run/portcullis-bridge")
    );
    assert_eq!(
        config.open_stdin,
        Some(false),
        "no stdin through the engine"
    );
    let mounts = inspected.host_config.unwrap().mounts.unwrap_or_default();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert!(
        mounts.iter().all(|m| m.read_only == Some(true)),
        "{mounts:?}"
    );

    // The server's exit is seen (through the attached stderr) and it comes back.
    let crashed = client
        .call(
            3,
            "tools/call",
            json!({"name":"box-fifo__crash","arguments":{"code":5}}),
        )
        .await;
    assert_eq!(crashed["error"]["code"], -32011, "{crashed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    loop {
        id += 1;
        let reply = client
            .call(
                id,
                "tools/call",
                json!({"name":"box-fifo__echo","arguments":{"text":"back"}}),
            )
            .await;
        if reply.get("result").is_some() {
            assert_eq!(first_text(&reply), "box-fifo: back");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not come back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.finish().await;
    assert!(containers(&docker, "box-fifo").await.is_empty());
    let run = proxy.dir().join(".portcullis/run");
    let left: Vec<_> = std::fs::read_dir(&run)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "FIFO folders left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_and_an_unreachable_engine_are_clear_errors_naming_the_server() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy = TestProxy::new()
        .with_server_toml(
            "[[servers]]\nname = \"ghost-image\"\ncontainer = { image = \"portcullis/no-such-image:1\" }\n",
        )
        .with_example_server("fine");
    let mut client = proxy.raw_stdio_with_env(&[]).await;
    client.initialize().await;
    let line = client
        .wait_for_log(&[
            "ghost-image",
            "image `portcullis/no-such-image:1` is not in the Docker engine",
        ])
        .await;
    assert!(line.contains("docker build"), "says how to get it: {line}");
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name":"ghost-image__echo","arguments":{}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32011, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ghost-image"),
        "{reply}"
    );
    // The other server is unaffected, and nothing was left behind.
    let fine = client
        .call(
            2,
            "tools/call",
            json!({"name":"fine__echo","arguments":{"text":"ok"}}),
        )
        .await;
    assert_eq!(first_text(&fine), "fine: ok");
    assert!(containers(&docker, "ghost-image").await.is_empty());
    client.finish().await;

    let proxy = TestProxy::new().with_container_server("no-engine", "", "");
    let mut client = proxy
        .raw_stdio_with_env(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")])
        .await;
    client.initialize().await;
    client
        .wait_for_log(&[
            "no-engine",
            "the Docker engine at `unix:///nonexistent/docker.sock` is not reachable",
        ])
        .await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name":"no-engine__echo","arguments":{}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32011, "{reply}");
    assert!(containers(&docker, "no-engine").await.is_empty());
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_and_status_report_the_engine_images_pins_and_containers() {
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let image = common::test_image();
    let id = docker.inspect_image(&image).await.unwrap().id.unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let proxy = TestProxy::new()
        .with_container_server("box-doc", &format!(", start = \"eager\", digest = {id:?}"), "")
        .with_container_server("box-pinned-wrong", &format!(", digest = {wrong:?}"), "")
        .with_server_toml(
            "[[servers]]\nname = \"ghost-doc\"\ncontainer = { image = \"portcullis/no-such-image:2\" }\n\n[[servers]]\nname = \"local-doc\"\nprocess = { command = \"no-such-command-for-doctor\" }\n",
        );
    let config = proxy.write_config();
    let run = |args: &[&str]| {
        std::process::Command::new(common::portcullis_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };

    let doctor = run(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !doctor.status.success(),
        "a FAIL makes doctor fail:\n{report}"
    );
    for expected in [
        "ok    docker engine: ",
        "cgroups: v",
        "seccomp: ",
        "user namespaces: ",
        &format!("ok    server `box-doc`: image `{image}` present ({id})"),
        "ok    server `box-doc`: hardened profile, no relaxations",
        &format!(
            "FAIL  server `box-pinned-wrong`: image `{image}` is `{id}`, not the pinned digest `{wrong}`"
        ),
        "FAIL  server `ghost-doc`: image `portcullis/no-such-image:2` is not in the Docker engine",
        "warn  server `local-doc`: UNSANDBOXED",
        "FAIL  server `local-doc`: command `no-such-command-for-doctor` not found",
    ] {
        assert!(
            report.contains(expected),
            "missing `{expected}` in:\n{report}"
        );
    }

    // A wrong pin refuses the start; the right one starts.
    let server = proxy.serve_http().await;
    let session = HttpSession::connect(&server.url).await;
    let pinned = session
        .call(
            1,
            "tools/call",
            json!({"name":"box-doc__echo","arguments":{"text":"pinned"}}),
        )
        .await;
    assert_eq!(first_text(&pinned), "box-doc: pinned");
    let refused = session
        .call(
            2,
            "tools/call",
            json!({"name":"box-pinned-wrong__echo","arguments":{"text":"x"}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32011, "{refused}");
    assert!(containers(&docker, "box-pinned-wrong").await.is_empty());

    let status = run(&["servers", "status", "--format", "json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "box-doc")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["restarts"], 0, "{row}");
    assert_eq!(row["container"].as_str().unwrap().len(), 12, "{row}");
    assert!(
        row["owner"]
            .as_str()
            .unwrap()
            .contains(&format!("/{}/", server.pid())),
        "{row}"
    );
    let local = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "local-doc")
        .unwrap();
    assert_eq!(local["kind"], "process");
    let table = run(&["servers", "status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("box-doc") && table.contains("running"),
        "{table}"
    );
    server.terminate().await;
}

#[test]
fn dangerous_relaxations_and_literal_secrets_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let image = "portcullis/example-server:dev";
    for (sandbox, expected) in [
        (
            "user = \"0:0\"",
            "asks for the root user (`user = \"0:0\"`); refused",
        ),
        ("privileged = true", "privileged mode"),
        ("network = \"host\"", "host's network namespace"),
        ("host_pid = true", "host's PID namespace"),
        (
            "mounts = [{ source = \"/etc\", target = \"/etc2\", writable = true }]",
            "writable host mount",
        ),
    ] {
        std::fs::write(
            &path,
            format!("[[servers]]\nname = \"risky\"\ncontainer = {{ image = {image:?} }}\n[servers.sandbox]\n{sandbox}\n"),
        )
        .unwrap();
        let output = std::process::Command::new(common::portcullis_bin())
            .args(["servers", "list", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{sandbox} must be refused");
        assert!(stderr.contains("servers[0].sandbox"), "{stderr}");
        assert!(stderr.contains("`risky`"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("allow_dangerous = true"), "{stderr}");

        // Allowed when the operator says so, and then flagged.
        std::fs::write(
            &path,
            format!("[[servers]]\nname = \"risky\"\ncontainer = {{ image = {image:?} }}\n[servers.sandbox]\n{sandbox}\nallow_dangerous = true\n"),
        )
        .unwrap();
        let output = std::process::Command::new(common::portcullis_bin())
            .args(["servers", "list", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("DANGEROUS"));
    }

    std::fs::write(
        &path,
        format!("[[servers]]\nname = \"leaky\"\ncontainer = {{ image = {image:?}, env = {{ GITHUB_TOKEN = \"ghp_abcdefghijklmnop\" }} }}\n"),
    )
    .unwrap();
    let output = std::process::Command::new(common::portcullis_bin())
        .args(["servers", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("servers[0].container.env.GITHUB_TOKEN"),
        "{stderr}"
    );
    assert!(stderr.contains("literal secret"), "{stderr}");
    assert!(
        !stderr.contains("ghp_abcdefghijklmnop"),
        "never echoed: {stderr}"
    );
}

/// The one FIFO folder under the proxy's `run/`.
fn fifo_folder(data: &std::path::Path) -> std::path::PathBuf {
    let folders: Vec<_> = std::fs::read_dir(data.join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders[0].clone()
}

/// What another local user (uid 4242, in no group of the proxy's) may do
/// with a FIFO folder, with every folder above it opened to them: nothing.
fn another_user_cannot_reach(folder: &std::path::Path) {
    let data = folder.parent().and_then(|run| run.parent()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for open in [data.to_path_buf(), data.join("run")] {
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let folder = folder.display();
    for (what, script) in [
        ("list the folder", format!("ls {folder}")),
        (
            "write a call into the server's stdin",
            format!(
                "printf '%s\\n' '{{\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"tools/call\",\"params\":{{\"name\":\"crash\",\"arguments\":{{}}}}}}' > {folder}/in"
            ),
        ),
        (
            "read the server's stdout",
            format!("head -c1 < {folder}/out"),
        ),
    ] {
        let (ok, stderr) = common::as_other_user(4242, &script);
        assert!(!ok, "another user could {what}");
        assert!(stderr.contains("Permission denied"), "{what}: {stderr}");
    }
    for close in [data.to_path_buf(), data.join("run")] {
        std::fs::set_permissions(&close, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_are_the_container_users_and_closed_to_every_other_local_user() {
    let _serial = SERIAL.lock().await;
    let proxy = fifo_proxy("box-private");
    let mut client = initialized(&proxy).await;
    let echo = json!({"name":"box-private__echo","arguments":{"text":"private"}});
    let reply = client.call(1, "tools/call", echo.clone()).await;
    assert_eq!(first_text(&reply), "box-private: private");

    // The proxy runs as root: the folder and FIFOs are given to the
    // container's user (65534), closed to everyone else.
    let data = proxy.dir().join(".portcullis");
    assert_eq!(common::mode_of(&data).0, 0o700);
    assert_eq!(common::mode_of(&data.join("run")).0, 0o700);
    let folder = fifo_folder(&data);
    assert_eq!(common::mode_of(&folder), (0o700, 65534, 65534));
    for fifo in ["in", "out"] {
        assert_eq!(common::mode_of(&folder.join(fifo)), (0o600, 65534, 65534));
    }
    another_user_cannot_reach(&folder);

    // Nothing reached the server: the next call is answered as ever.
    let reply = client.call(2, "tools/call", echo).await;
    assert_eq!(first_text(&reply), "box-private: private");
    client.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_is_not_root_shares_the_fifos_with_its_container_through_its_group() {
    use std::os::unix::fs::MetadataExt as _;
    let _serial = SERIAL.lock().await;
    let docker = docker().await;
    let proxy = fifo_proxy("box-user");
    let config = proxy.write_config();
    // The proxy's folder belongs to its user, uid 4243, who may use the
    // Docker socket through its group.
    const PROXY_UID: u32 = 4243;
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{PROXY_UID}:{PROXY_UID}")])
        .arg(proxy.dir())
        .status()
        .unwrap();
    assert!(status.success());
    let socket_group = std::fs::metadata("/var/run/docker.sock").unwrap().gid();
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args([
            format!("--reuid={PROXY_UID}"),
            format!("--regid={PROXY_UID}"),
            format!("--groups={socket_group}"),
            "--".to_owned(),
        ])
        .arg(common::portcullis_bin())
        .args(["stdio", "--config"])
        .arg(&config)
        .args(["--client", "tester"])
        .env("PORTCULLIS_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut client = RawClient::spawn(command);
    client.initialize().await;
    let echo = json!({"name":"box-user__echo","arguments":{"text":"shared"}});
    let reply = client.call(1, "tools/call", echo.clone()).await;
    assert_eq!(first_text(&reply), "box-user: shared");

    // The proxy keeps the FIFOs and shares them through its own group,
    // which the container has as a supplementary group.
    let data = proxy.dir().join(".portcullis");
    assert_eq!(common::mode_of(&data), (0o700, PROXY_UID, PROXY_UID));
    let folder = fifo_folder(&data);
    assert_eq!(common::mode_of(&folder), (0o710, PROXY_UID, PROXY_UID));
    for fifo in ["in", "out"] {
        assert_eq!(
            common::mode_of(&folder.join(fifo)),
            (0o660, PROXY_UID, PROXY_UID)
        );
    }
    let running = wait_for_containers(&docker, "box-user", 1).await;
    let inspected = docker
        .inspect_container(running[0].id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let groups = inspected.host_config.unwrap().group_add.unwrap_or_default();
    assert_eq!(groups, vec![PROXY_UID.to_string()]);
    another_user_cannot_reach(&folder);

    let reply = client.call(2, "tools/call", echo).await;
    assert_eq!(first_text(&reply), "box-user: shared");
    client.finish().await;
    assert!(containers(&docker, "box-user").await.is_empty());
}
