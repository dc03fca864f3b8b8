//! The proxy itself in a container, on the real Docker engine: the image of
//! the repository's Dockerfile (`portcullis` FROM scratch, built by
//! `scripts/build-proxy-image.sh` from the binary under test and the
//! libraries it links) runs read-only as a non-root user with the
//! engine's socket mounted, launches a hardened container server through
//! it, and a client's call goes through; on `docker stop` it removes the
//! server's container. Fails, never skips, without an engine.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// `docker ARGS`: its stdout, trimmed; panics with its stderr on failure.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker command (these tests need the Docker engine)");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The proxy's image (`scripts/build-proxy-image.sh`), made of the proxy
/// binary these tests were built with and the libraries it links (not of a
/// second, static build of the whole proxy: CI's time).
fn proxy_image() -> String {
    // Under a tag of its own: `portcullis/proxy:dev` stays the static
    // image the script builds for users.
    image_from_with(
        "build-proxy-image.sh",
        &[("PORTCULLIS_PROXY_BINARY", env!("CARGO_BIN_EXE_portcullis"))],
        Some("portcullis/proxy:test-dynamic"),
    )
}

/// Removes the container when the test ends, passed or not.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The image's user (65534) owns `dir`: the data volume it writes.
fn owned_by_the_image_user(dir: &std::path::Path) {
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
}

/// The base URL of the proxy container `name` (its port 8811 published on
/// loopback), once its `/healthz` answers.
async fn published_and_healthy(name: &str) -> String {
    let address = docker(&["port", name, "8811/tcp"]);
    let base = format!("http://{}", address.lines().next().unwrap());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let health = reqwest::get(format!("{base}/healthz")).await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return base;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy's container did not come up:\n{}",
            docker(&["logs", name])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn server_containers(server: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=dev.portcullis.server={server}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_image_runs_read_only_as_non_root_and_serves_a_container_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = proxy_image();
    let server_image = test_image();
    // A server name no other test uses: its containers are this test's.
    let server = format!(
        "deployed-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );

    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    // The image's user owns only the data folder; the config is read-only.
    owned_by_the_image_user(&data);
    std::fs::write(
        etc.join("portcullis.toml"),
        format!(
            "[proxy]\nlisten = \"0.0.0.0:8811\"\ndata_dir = \"/data\"\nstartup_timeout = \"30s\"\n\n\
             [listener]\ninsecure_plaintext = true\n\n\
             [[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\n\n\
             [[auditors]]\nname = \"auditors\"\ntoken_sha256 = \"{}\"\n\n\
             [[servers]]\nname = \"{server}\"\ncontainer = {{ image = \"{server_image}\", args = [\"--name\", \"{server}\"] }}\n",
            sha256_hex(TOKEN),
            sha256_hex(AUDITOR_TOKEN),
        ),
    )
    .unwrap();

    let socket_group = std::fs::metadata("/var/run/docker.sock")
        .expect("the engine's socket at /var/run/docker.sock")
        .gid()
        .to_string();
    let name = format!("portcullis-deploy-test-{}", uuid::Uuid::new_v4().simple());
    let _removed = Removed(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--group-add",
        &socket_group,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{}:/etc/portcullis:ro", etc.display()),
        "-v",
        &format!("{}:/data", data.display()),
        "-p",
        "127.0.0.1::8811",
        &image,
    ]);
    // Up once /healthz answers (the server's container started first).
    let base = published_and_healthy(&name).await;

    // The proxy's own container: read-only, the image's non-root user.
    let inspected = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
        &name,
    ]);
    assert_eq!(inspected, "true 65534:65534");

    let session = HttpSession::connect_as(&format!("{base}/mcp"), TOKEN).await;
    let reply = session
        .call(
            1,
            "tools/call",
            json!({"name": format!("{server}__echo"), "arguments": {"text": "from inside"}}),
        )
        .await;
    assert_eq!(
        first_text(&reply),
        format!("{server}: from inside"),
        "{reply}\n{}",
        docker(&["logs", &name])
    );
    // The server runs in a sibling container under the hardened profile.
    let servers = server_containers(&server);
    assert_eq!(servers.len(), 1, "{servers:?}");
    let profile = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.NetworkMode}}",
        &servers[0],
    ]);
    assert_eq!(profile, "true 65534:65534 none");
    // And the call is in the audit log on the data volume.
    let records = admin_records(&base, "kind=exchange", AUDITOR_TOKEN).await;
    assert!(
        records
            .iter()
            .any(|r| r["target"] == "echo" && r["decision"] == "allow"),
        "{records:?}"
    );

    // `docker stop` (SIGTERM to the proxy): its server's container goes too.
    docker(&["stop", "-t", "30", &name]);
    assert!(
        server_containers(&server).is_empty(),
        "the proxy left its server's container behind:\n{}",
        docker(&["logs", &name])
    );
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("shutting down"), "{logs}");
}

/// Removes a network when the test ends.
struct RemovedNetwork(String);

impl Drop for RemovedNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The topology of `examples/compose/` run with `docker run` (compose itself
/// is not needed): the two example servers on an internal network, the
/// proxy on it and on an edge network with its port published on loopback,
/// everything read-only, non-root, without capabilities, no socket. The
/// proxy reaches each server by its name and calls go through to both.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_topology_serves_both_servers_over_the_internal_network() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = proxy_image();
    let server_image = test_image();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tools = format!("portcullis-tools-{run}");
    let edge = format!("portcullis-edge-{run}");
    // Dropped last: the containers go first, then their networks.
    let _networks = (RemovedNetwork(tools.clone()), RemovedNetwork(edge.clone()));
    docker(&["network", "create", "--internal", &tools]);
    docker(&["network", "create", &edge]);

    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    owned_by_the_image_user(&data);
    // The example's own config and policies, with the servers' names made
    // unique to this run.
    let example = repo_root().join("examples/compose");
    std::fs::create_dir_all(etc.join("policies/tests")).unwrap();
    for file in ["policies/schema.cedarschema", "policies/toolbox.cedar"] {
        std::fs::copy(example.join(file), etc.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(example.join("portcullis.toml"))
        .unwrap()
        .replace("http://notes:8000", &format!("http://notes-{run}:8000"))
        .replace("http://calc:8000", &format!("http://calc-{run}:8000"));
    std::fs::write(etc.join("portcullis.toml"), config).unwrap();

    let hardened = [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "65534:65534",
    ];
    let mut removed = Vec::new();
    for server in ["notes", "calc"] {
        let name = format!("{server}-{run}");
        removed.push(Removed(name.clone()));
        let mut args = vec!["run", "-d", "--name", &name, "--network", &tools];
        args.extend(hardened);
        args.extend([
            &server_image as &str,
            "--name",
            server,
            "--http",
            "0.0.0.0:8000",
        ]);
        docker(&args);
    }
    let proxy = format!("portcullis-compose-test-{run}");
    removed.push(Removed(proxy.clone()));
    let etc_mount = format!("{}:/etc/portcullis:ro", etc.display());
    let data_mount = format!("{}:/data", data.display());
    let mut args = vec!["create", "--name", &proxy, "--network", &edge];
    args.extend(hardened);
    args.extend([
        "-v",
        &etc_mount,
        "-v",
        &data_mount,
        "-p",
        "127.0.0.1::8811",
        &image,
    ]);
    docker(&args);
    docker(&["network", "connect", &tools, &proxy]);
    docker(&["start", &proxy]);
    let base = published_and_healthy(&proxy).await;
    // The example's demo client and token, as its README says.
    let session = HttpSession::connect_as(&format!("{base}/mcp"), "quickstart-token").await;
    for (id, server) in [(1, "notes"), (2, "calc")] {
        let mut reply = json!(null);
        // A remote server is listed once the proxy reached it.
        for _ in 0..60 {
            reply = session
                .call(
                    id,
                    "tools/call",
                    json!({"name": format!("{server}__echo"), "arguments": {"text": "inside"}}),
                )
                .await;
            if reply.get("result").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            first_text(&reply),
            format!("{server}: inside"),
            "{reply}\n{}",
            docker(&["logs", &proxy])
        );
    }
    // The example's policies hold: nobody calls `crash`. The refusal is a
    // tool result the agent's model reads (the proxy's default).
    let crash = session
        .call(
            3,
            "tools/call",
            json!({"name": "calc__crash", "arguments": {"code": 1}}),
        )
        .await;
    assert_eq!(crash["result"]["isError"], true, "{crash}");
    assert_eq!(
        crash["result"]["_meta"]["dev.portcullis/refusal"]["interceptor"], "authz",
        "{crash}"
    );
    // The servers have no published port and no way out.
    for server in ["notes", "calc"] {
        let ports = docker(&["port", &format!("{server}-{run}")]);
        assert!(ports.is_empty(), "{server} publishes {ports}");
    }
    assert_eq!(
        docker(&["network", "inspect", "--format", "{{.Internal}}", &tools]),
        "true"
    );
    drop(removed);
}
