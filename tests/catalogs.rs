//! Servers described in Docker's catalog format, on the real engine:
//! `docker://` (an image's own `io.docker.server.metadata` label, and
//! nothing else), `catalog://` (an entry of a catalog file) and `file://`
//! (one server's YAML); what their metadata asks beyond the hardened profile
//! is refused, and a secret it needs comes from the operator's references
//! only. These tests fail, never skip, when the engine is missing.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::sync::OnceLock;

use bollard::Docker;
use common::{RawClient, TestProxy, first_text};
use portcullis::upstream::container::{self, LABEL_SERVER};
use serde_json::{Value, json};

/// The tests start containers named by their servers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The example server's image with `label` as its metadata label, tagged
/// `tag` (built once per tag and run).
fn labelled_image(tag: &str, label: &str) -> String {
    let base = common::test_image();
    let mut build = std::process::Command::new("docker")
        .args(["build", "--quiet", "-t", tag, "--label"])
        .arg(format!("io.docker.server.metadata={label}"))
        .arg("-")
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker build");
    build
        .stdin
        .take()
        .unwrap()
        .write_all(format!("FROM {base}\n").as_bytes())
        .unwrap();
    let output = build.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    tag.to_owned()
}

const LABEL: &str = r#"name: labelled
title: Example
description: The example server, described by its own label alone
command: ["--name", "{{labelled.greeting}}"]
env:
  - name: MODE
    value: "{{labelled.mode|or:plain}}"
secrets:
  - name: labelled.api_key
    env: EXAMPLE_API_KEY
tools:
  - name: echo
"#;

fn good_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| labelled_image("portcullis/example-labelled:test", LABEL))
        .clone()
}

async fn initialized(proxy: &TestProxy, env: &[(&str, &str)]) -> RawClient {
    let mut client = proxy.raw_stdio_with_env(env).await;
    client.initialize().await;
    client
}

async fn echo(client: &mut RawClient, id: i64, tool: &str) -> Value {
    client
        .call(
            id,
            "tools/call",
            json!({ "name": tool, "arguments": { "text": "hi" } }),
        )
        .await
}

/// The environment the engine gave the container of `server`.
async fn container_env(docker: &Docker, server: &str) -> Vec<String> {
    let found = container::labelled(docker, &format!("{LABEL_SERVER}={server}"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let id = found[0].id.clone().unwrap();
    let inspected = docker
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    inspected.config.unwrap().env.unwrap_or_default()
}

/// `portcullis doctor` on the proxy's config: (success, stdout, stderr).
fn doctor(proxy: &TestProxy) -> (bool, String, String) {
    let config = proxy.dir().join("portcullis.toml");
    common::run_portcullis([
        std::ffi::OsStr::new("doctor"),
        "--config".as_ref(),
        config.as_os_str(),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_served_from_its_label_alone_hardened() {
    let _serial = SERIAL.lock().await;
    let docker = common::docker().await;
    let image = good_image();
    // The secret from a `.env` file, as Docker's `--secrets` reads them.
    let proxy = TestProxy::new();
    std::fs::write(
        proxy.dir().join(".env"),
        "# keys\nLABEL_TEST_KEY=\"k-123\"\n",
    )
    .unwrap();
    let proxy = proxy.with_server_toml(&format!(
        "[[servers]]\nname = \"described\"\nfrom = \"docker://{image}\"\nconfig = {{ greeting = \"from-the-label\" }}\nsecrets = {{ EXAMPLE_API_KEY = \"dotenv:.env#LABEL_TEST_KEY\" }}\n"
    ));
    let mut client = initialized(&proxy, &[]).await;
    // The label's command, with the operator's value in its template.
    let reply = echo(&mut client, 1, "described__echo").await;
    assert_eq!(first_text(&reply), "from-the-label: hi", "{reply}");
    // The label's environment (its default) and the operator's secret.
    let env = container_env(&docker, "described").await;
    assert!(env.contains(&"MODE=plain".to_owned()), "{env:?}");
    assert!(env.contains(&"EXAMPLE_API_KEY=k-123".to_owned()), "{env:?}");
    // Under the hardened profile, whatever the label says.
    let probe = client
        .call(
            2,
            "tools/call",
            json!({ "name": "described__sandbox_probe", "arguments": {} }),
        )
        .await;
    let probe = &probe["result"]["structuredContent"];
    assert_eq!(probe["uid"], 65534, "{probe}");
    assert_eq!(probe["network_interfaces"], json!(["lo"]), "{probe}");
    client.finish().await;
    // A profile's own value fills the label's template over the config's.
    let profiles = proxy.dir().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("loud.toml"),
        "servers = [\"described\"]\n[config.described]\ngreeting = \"from-the-profile\"\n",
    )
    .unwrap();
    let mut command = proxy.stdio_command();
    command
        .args(["--profile", "loud"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = RawClient::spawn(command);
    client.initialize().await;
    let reply = echo(&mut client, 3, "described__echo").await;
    assert_eq!(first_text(&reply), "from-the-profile: hi", "{reply}");
    client.finish().await;
    // Pinned by digest without a tag (`repo@sha256:ID`): found at that
    // digest, not looked up as `repo:latest`.
    let id = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .expect("docker image inspect");
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    let repo = image
        .split_once(':')
        .map_or(image.as_str(), |(repo, _)| repo);
    let pinned = TestProxy::new().with_server_toml(&format!(
        "[[servers]]\nname = \"pinned\"\nfrom = \"docker://{repo}@{id}\"\nconfig = {{ greeting = \"pinned\" }}\nsecrets = {{ EXAMPLE_API_KEY = \"env:LABEL_TEST_KEY\" }}\n"
    ));
    let mut client = initialized(&pinned, &[("LABEL_TEST_KEY", "k-9")]).await;
    let reply = echo(&mut client, 4, "pinned__echo").await;
    assert_eq!(first_text(&reply), "pinned: hi", "{reply}");
    client.finish().await;
    // `doctor` shows what the label asks before anything runs.
    let (ok, stdout, stderr) = doctor(&proxy);
    let said = format!("{stdout}{stderr}");
    assert!(ok, "{said}");
    assert!(
        said.contains("server `described`: its label runs it with arguments")
            && said.contains("from-the-label")
            && said.contains("MODE"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_asking_for_root_or_the_host_network_is_refused() {
    let _serial = SERIAL.lock().await;
    let docker = common::docker().await;
    let root = labelled_image(
        "portcullis/example-labelled-root:test",
        "name: rooted\nuser: root\n",
    );
    let host = labelled_image(
        "portcullis/example-labelled-host:test",
        "name: hosted\nnetwork: host\n",
    );
    // A credential its publisher left in a tool's description.
    let leaky = labelled_image(
        "portcullis/example-labelled-leaky:test",
        &format!(
            "name: leaky\ntools:\n  - name: echo\n    description: \"signs in as {}\"\n",
            common::GITHUB_TOKEN
        ),
    );
    let unlabelled = common::test_image();
    let proxy = TestProxy::new()
        .with_server_toml(&format!(
            "[[servers]]\nname = \"rooted\"\nfrom = \"docker://{root}\"\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"leaky\"\nfrom = \"docker://{leaky}\"\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"hosted\"\nfrom = \"docker://{host}\"\n[servers.sandbox]\nnetwork = \"bridge\"\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"silent\"\nfrom = \"docker://{unlabelled}\"\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"nosecret\"\nfrom = \"docker://{}\"\nconfig = {{ greeting = \"x\" }}\n",
            good_image()
        ));
    let mut client = initialized(&proxy, &[]).await;
    let listed = client.call(1, "tools/list", json!({})).await;
    let tools = listed["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(tools.is_empty(), "no refused server lists tools: {listed}");
    for (id, server) in [
        (2, "rooted"),
        (3, "hosted"),
        (4, "silent"),
        (5, "nosecret"),
        (6, "leaky"),
    ] {
        let reply = echo(&mut client, id, &format!("{server}__echo")).await;
        assert!(reply.get("error").is_some(), "{server}: {reply}");
        // Nothing of it ran.
        let found = container::labelled(&docker, &format!("{LABEL_SERVER}={server}"))
            .await
            .unwrap();
        assert!(found.is_empty(), "{server}: {found:?}");
    }
    client
        .wait_for_log(&[
            "rooted",
            "asks to run as user `root`",
            "[servers.sandbox] user",
        ])
        .await;
    client.wait_for_log(&["hosted", "asks for `network`"]).await;
    client
        .wait_for_log(&["leaky", "looks like a credential at `tools[0].description`"])
        .await;
    let log = client.log().join("\n");
    assert!(!log.contains(common::GITHUB_TOKEN), "{log}");
    client
        .wait_for_log(&[
            "silent",
            "io.docker.server.metadata",
            "does not describe itself",
        ])
        .await;
    client
        .wait_for_log(&[
            "nosecret",
            "needs the secret `labelled.api_key`",
            "EXAMPLE_API_KEY",
        ])
        .await;
    client.finish().await;
    // `doctor` refuses each as its start would, before anything runs.
    let (ok, stdout, stderr) = doctor(&proxy);
    let said = format!("{stdout}{stderr}");
    assert!(!ok, "{said}");
    for (server, reason) in [
        ("rooted", "asks to run as user `root`"),
        ("hosted", "asks for `network`"),
        ("silent", "does not describe itself"),
        ("nosecret", "needs the secret `labelled.api_key`"),
        ("leaky", "looks like a credential"),
    ] {
        assert!(
            said.lines()
                .any(|line| line.starts_with(&format!("FAIL  server `{server}`"))
                    && line.contains(reason)),
            "{server}: {said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_and_file_entries_run_as_described() {
    let _serial = SERIAL.lock().await;
    let image = common::test_image();
    let proxy = TestProxy::new();
    std::fs::write(
        proxy.dir().join("team.yaml"),
        format!(
            "version: 2\nname: team\nregistry:\n  example:\n    type: server\n    image: {image}\n    title: Example\n    command: [\"--name\", \"{{{{example.who}}}}\"]\n  other:\n    image: {image}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        proxy.dir().join("one.yaml"),
        format!("name: single\nimage: {image}\ncommand: [\"--name\", \"from-a-file\"]\n"),
    )
    .unwrap();
    let proxy = proxy
        .with_config("[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n")
        .with_server_toml(
            "[[servers]]\nname = \"listed\"\nfrom = \"catalog://team/example\"\nconfig = { who = \"from-the-catalog\" }\n",
        )
        .with_server_toml("[[servers]]\nname = \"filed\"\nfrom = \"file://one.yaml\"\n");
    let mut client = initialized(&proxy, &[]).await;
    let reply = echo(&mut client, 1, "listed__echo").await;
    assert_eq!(first_text(&reply), "from-the-catalog: hi", "{reply}");
    let reply = echo(&mut client, 2, "filed__echo").await;
    assert_eq!(first_text(&reply), "from-a-file: hi", "{reply}");
    client.finish().await;
}

/// `serve`'s refusal of a config with catalog `team` (`catalog`, its text)
/// and server `bad` from its entry `example` (`extra`: more of its keys).
fn refused_with_catalog(catalog: &str, extra: &str) -> String {
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("team.yaml"), catalog).unwrap();
    let proxy = proxy
        .with_config("[[catalogs]]\nname = \"team\"\npath = \"team.yaml\"\n")
        .with_server_toml(&format!(
            "[[servers]]\nname = \"bad\"\nfrom = \"catalog://team/example\"\n{extra}"
        ));
    common::serve_refused(&proxy.write_config())
}

#[test]
fn a_catalog_server_missing_a_value_or_secret_or_asking_too_much_is_a_config_error() {
    let image = "portcullis/example-server:dev";
    let cases = [
        (
            format!("    image: {image}\n    command: [\"{{{{example.who}}}}\"]\n"),
            "has no value",
        ),
        (
            format!(
                "    image: {image}\n    secrets:\n      - name: example.token\n        env: EXAMPLE_TOKEN\n"
            ),
            "needs the secret `example.token`",
        ),
        (
            format!(
                "    image: {image}\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"
            ),
            "asks for the volume",
        ),
        (
            format!("    image: {image}\n    allowHosts: [\"api.example.com:443\"]\n"),
            "asks for network access",
        ),
        ("    type: poci\n    image: x\n".to_owned(), "not supported"),
        // A credential anywhere in the description, before anything runs.
        (
            format!(
                "    image: {image}\n    description: \"Try it with {}\"\n",
                common::GITHUB_TOKEN
            ),
            "looks like a credential at `description`",
        ),
        (
            format!(
                "    image: {image}\n    env:\n      - name: DB\n        value: \"postgres://app:hunter22@db/app\"\n"
            ),
            "looks like a credential at `env[0].value`",
        ),
    ];
    for (entry, expected) in cases {
        let stderr = refused_with_catalog(&format!("registry:\n  example:\n{entry}"), "");
        assert!(
            stderr.contains(expected) && stderr.contains("server `bad`"),
            "{expected}: {stderr}"
        );
        assert!(!stderr.contains(common::GITHUB_TOKEN), "{stderr}");
        assert!(!stderr.contains("hunter22"), "{stderr}");
    }
    // A catalog that is not one.
    let stderr = refused_with_catalog("registry: [1, 2]\n", "");
    assert!(stderr.contains("not a catalog"), "{stderr}");
    let proxy = TestProxy::new()
        .with_server_toml("[[servers]]\nname = \"bad\"\nfrom = \"catalog://nowhere/x\"\n");
    let stderr = common::serve_refused(&proxy.write_config());
    assert!(
        stderr.contains("no `[[catalogs]]` is named `nowhere`"),
        "{stderr}"
    );
    // The operator's pin and the description's must agree.
    let stderr = refused_with_catalog(
        &format!(
            "registry:\n  example:\n    image: x@sha256:{}\n",
            "a".repeat(64)
        ),
        &format!("container = {{ digest = \"sha256:{}\" }}\n", "b".repeat(64)),
    );
    assert!(stderr.contains("but the description pins"), "{stderr}");
    // A catalog that is not a regular file, or names no image reference.
    let stderr = refused_with_catalog("registry:\n  example:\n    image: \"x\\e[2J\"\n", "");
    assert!(
        stderr.contains("is not an image reference") && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
    let proxy =
        TestProxy::new().with_config("[[catalogs]]\nname = \"team\"\npath = \"/dev/zero\"\n");
    let stderr = common::serve_refused(&proxy.write_config());
    assert!(stderr.contains("is not a regular file"), "{stderr}");
    // The metadata's image and command are not the operator's to restate.
    let proxy = TestProxy::new().with_server_toml(
        "[[servers]]\nname = \"bad\"\nfrom = \"docker://x\"\ncontainer = { image = \"y\" }\n",
    );
    let stderr = common::serve_refused(&proxy.write_config());
    assert!(
        stderr.contains("takes its image and command from its metadata"),
        "{stderr}"
    );
    // Nor a sign-in: whose token goes into which variable is the
    // operator's to write, for an image the operator names.
    let proxy = TestProxy::new().with_server_toml(
        "[[servers]]\nname = \"bad\"\nfrom = \"docker://x\"\ncontainer = { isolation = \"per-client\", sign_in = { env = \"T\", issuer = \"https://id.example\", resource = \"https://api.example\", list_as = \"tester\" } }\n",
    );
    let stderr = common::serve_refused(&proxy.write_config());
    assert!(
        stderr.contains(".container.sign_in") && stderr.contains("may set only"),
        "{stderr}"
    );
}
