//! Servers from an MCP registry: a registry on loopback speaking the
//! official API (`tests/fixtures/mcp_registry.py`) serves `server.json`
//! entries shaped as published ones; `portcullis registry pull` keeps them,
//! and the proxy runs an OCI package as a hardened container on the real
//! engine and reaches a remote over streamable HTTP (the Python SDK's own
//! server). A version that does not exist, an entry asking for the host
//! network, a credential in a description, a moved pin, a redirect and an
//! oversized answer are each refused with a clear error. Fails, never
//! skips, when the engine or Python is missing.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::{Path, PathBuf};

use bollard::Docker;
use common::{RawClient, TestProxy, first_text};
use portcullis::upstream::container::{self, LABEL_SERVER};
use serde_json::{Value, json};

const NAMESPACE: &str = "io.github.portcullis-test";

/// The registry fixture serving `entries`: the process, its API's URL, and
/// the log of the paths it was asked.
async fn registry(dir: &Path, entries: &Value) -> (tokio::process::Child, String, PathBuf) {
    let path = dir.join("entries.json");
    std::fs::write(&path, entries.to_string()).unwrap();
    let mut command = tokio::process::Command::new(common::python());
    command
        .arg(common::repo_root().join("tests/fixtures/mcp_registry.py"))
        .arg(&path);
    let (child, url) = common::start_http_server(command, "the registry fixture").await;
    let mut log = path.into_os_string();
    log.push(".log");
    (child, url.replace("/mcp", "/v0.1"), PathBuf::from(log))
}

/// An OCI package's entry, as GitHub publishes its own: the token set by
/// `-e` from a secret variable, an argument the operator fills, a plain
/// variable with a default.
fn packaged(image: &str) -> Value {
    json!({"server": {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": format!("{NAMESPACE}/example"),
        "title": "Example",
        "description": "The example server, published as an OCI image",
        "version": "1.2.0",
        "repository": {"url": "https://github.com/portcullis-test/example", "source": "github"},
        "packages": [{
            "registryType": "oci",
            "identifier": image,
            "transport": {"type": "stdio"},
            "runtimeArguments": [
                {"type": "named", "name": "-i"},
                {"type": "named", "name": "--rm"},
                {"type": "named", "name": "-e", "value": "EXAMPLE_API_KEY={api_key}",
                 "isRequired": true,
                 "variables": {"api_key": {"isRequired": true, "isSecret": true}}}
            ],
            "packageArguments": [
                {"type": "named", "name": "--name", "valueHint": "who", "isRequired": true}
            ],
            "environmentVariables": [
                {"name": "EXAMPLE_API_KEY", "description": "The API key", "isRequired": true, "isSecret": true},
                {"name": "MODE", "description": "How it answers", "default": "plain"}
            ]
        }]
    }})
}

/// A remote's entry: streamable HTTP with a bearer header from a secret.
fn remote(url: &str) -> Value {
    json!({"server": {
        "name": format!("{NAMESPACE}/remote"),
        "description": "A hosted server",
        "version": "0.3.0",
        "remotes": [{
            "type": "streamable-http",
            "url": url,
            "headers": [{"name": "Authorization", "value": "Bearer {token}", "isRequired": true,
                         "variables": {"token": {"isSecret": true}}}]
        }]
    }})
}

fn pull(config: &Path, names: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "registry".to_owned(),
        "pull".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    args.extend(names.iter().map(|name| (*name).to_owned()));
    common::run_portcullis(args)
}

/// The environment the engine gave the container of `server`.
async fn container_env(docker: &Docker, server: &str) -> Vec<String> {
    let found = container::labelled(docker, &format!("{LABEL_SERVER}={server}"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let inspected = docker
        .inspect_container(
            found[0].id.as_deref().unwrap(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    inspected.config.unwrap().env.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_servers_run_as_published_hardened_and_over_streamable_http() {
    let docker = common::docker().await;
    let image = common::test_image();
    let mut hosted = tokio::process::Command::new(common::python());
    hosted
        .arg(common::repo_root().join("tests/fixtures/sse_server.py"))
        .arg("--streamable");
    let (_hosted, hosted_url) = common::start_http_server(hosted, "the SDK's server").await;
    let proxy = TestProxy::new();
    let (_registry, url, _) =
        registry(proxy.dir(), &json!([packaged(&image), remote(&hosted_url)])).await;
    std::fs::write(proxy.dir().join("api-key"), "k-registry-1").unwrap();
    std::fs::write(proxy.dir().join("remote-token"), "t-remote-1").unwrap();
    let proxy = proxy
        // The remote's URL is the publisher's: a loopback one is reached
        // only where the operator allows it.
        .with_config(&format!(
            "[egress]\nallow = [\"127.0.0.1/32\"]\n\n[[registries]]\nname = \"local\"\nurl = \"{url}\"\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"registered\"\nfrom = \"registry://local/{NAMESPACE}/example@1.2.0\"\n\
             config = {{ who = \"from-the-registry\" }}\nsecrets = {{ EXAMPLE_API_KEY = \"file:api-key\" }}\n"
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"reg-hosted\"\nfrom = \"registry://local/{NAMESPACE}/remote@0.3.0\"\n\
             secrets = {{ token = \"file:remote-token\" }}\n"
        ));
    let config = proxy.write_config();
    // Before the pull, the proxy refuses to start, and says what to run.
    let refused = common::serve_refused(&config);
    assert!(
        refused.contains("has not been pulled: run `portcullis registry pull"),
        "{refused}"
    );
    let listed = |config: &Path| {
        let (ok, stdout, stderr) = common::run_portcullis([
            std::ffi::OsStr::new("registry"),
            "ls".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ]);
        assert!(ok, "{stderr}");
        stdout
    };
    let before = listed(&config);
    assert!(
        before.lines().any(|line| line.starts_with("registered ")
            && line.contains(&format!("registry://local/{NAMESPACE}/example@1.2.0"))
            && line.ends_with("(not pulled)")),
        "{before}"
    );
    let (ok, stdout, stderr) = pull(&config, &[]);
    assert!(ok, "{stderr}");
    let after = listed(&config);
    assert!(
        after
            .lines()
            .any(|line| line.starts_with("registered ") && line.contains("sha256:")),
        "{after}"
    );
    assert!(
        stdout.contains(&format!(
            "pulled registered: registry://local/{NAMESPACE}/example@1.2.0 (sha256:"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("pulled reg-hosted"), "{stdout}");
    assert!(!stderr.contains("does not load"), "{stderr}");
    let kept = proxy
        .dir()
        .join(format!("registries/local/{NAMESPACE}/example@1.2.0.json"));
    assert!(kept.is_file(), "{}", kept.display());

    // The package: the published image, its argument filled from the
    // operator's config, the operator's secret, under the hardened profile.
    let mut client: RawClient = proxy.raw_stdio_with_env(&[]).await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({"name": "registered__echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(first_text(&reply), "from-the-registry: hi", "{reply}");
    let env = container_env(&docker, "registered").await;
    assert!(
        env.contains(&"EXAMPLE_API_KEY=k-registry-1".to_owned()),
        "{env:?}"
    );
    assert!(env.contains(&"MODE=plain".to_owned()), "{env:?}");
    let probe = client
        .call(
            2,
            "tools/call",
            json!({"name": "registered__sandbox_probe", "arguments": {}}),
        )
        .await;
    let probe = &probe["result"]["structuredContent"];
    assert_eq!(probe["uid"], 65534, "{probe}");
    assert_eq!(probe["network_interfaces"], json!(["lo"]), "{probe}");

    // The remote, over streamable HTTP, with the operator's token.
    let reply = client
        .call(
            3,
            "tools/call",
            json!({"name": "reg-hosted__echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(first_text(&reply), "streamable: hi", "{reply}");
    let reply = client
        .call(
            4,
            "tools/call",
            json!({"name": "reg-hosted__headers", "arguments": {}}),
        )
        .await;
    assert!(first_text(&reply).contains("authorization=True"), "{reply}");
    client.finish().await;

    // `doctor` says what each resolved to.
    let (_, said, _) = common::run_portcullis([
        std::ffi::OsStr::new("doctor"),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        said.lines().any(|line| line.contains("server `registered`")
            && line.contains(&format!(
                "resolves registry://local/{NAMESPACE}/example@1.2.0 (sha256:"
            ))
            && line.contains(&format!("image {image}"))
            && line.contains("secrets EXAMPLE_API_KEY")),
        "{said}"
    );
    assert!(
        said.lines().any(|line| line.contains("server `reg-hosted`")
            && line.contains(&format!(
                "remote {hosted_url} (streamable HTTP), headers Authorization"
            ))),
        "{said}"
    );
    assert!(
        !said.contains("t-remote-1") && !said.contains("k-registry-1"),
        "{said}"
    );

    // What was pulled, changed on disk, is refused.
    let text = std::fs::read_to_string(&kept).unwrap();
    std::fs::write(&kept, text.replace("plain", "loud")).unwrap();
    let refused = common::serve_refused(&config);
    assert!(refused.contains("SHA-256 differs"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_version_the_host_network_a_credential_a_moved_pin_and_a_redirect_are_refused() {
    let image = "portcullis/example-server:dev";
    let (trap, received) = common::trap().await;
    // A credential in a published description, built here so that the
    // source holds none.
    let credential = ["gh", "p_R8xT2mQ9vL4nK7pW3sZ6yB1cD5fG0hJ8aE2u"].concat();
    let mut host_network = packaged(image);
    host_network["server"]["name"] = json!(format!("{NAMESPACE}/host-network"));
    host_network["server"]["packages"][0]["runtimeArguments"] =
        json!([{"type": "named", "name": "--network", "value": "host"}]);
    let mut leaky = packaged(image);
    leaky["server"]["name"] = json!(format!("{NAMESPACE}/leaky"));
    leaky["server"]["description"] = json!(format!("Try it with {credential}"));
    let mut moved = packaged(image);
    moved["server"]["name"] = json!(format!("{NAMESPACE}/redirected"));
    moved["redirect"] = json!(trap);
    let mut huge = packaged(image);
    huge["server"]["name"] = json!(format!("{NAMESPACE}/huge"));
    huge["pad"] = json!(2 * 1024 * 1024);
    let proxy = TestProxy::new();
    // A remote the publisher put on loopback (where the proxy's own
    // services listen).
    let inward = remote("http://127.0.0.1:9/mcp");
    let (_registry, url, log) = registry(
        proxy.dir(),
        &json!([packaged(image), host_network, leaky, moved, huge, inward]),
    )
    .await;
    std::fs::write(proxy.dir().join("api-key"), "k").unwrap();
    let server = |name: &str, reference: &str| {
        format!(
            "[[servers]]\nname = \"{name}\"\nfrom = \"registry://local/{NAMESPACE}/{reference}\"\n\
             config = {{ who = \"x\" }}\nsecrets = {{ EXAMPLE_API_KEY = \"file:api-key\" }}\n"
        )
    };
    let pin = format!("sha256:{}", "0".repeat(64));
    let proxy = proxy
        .with_config(&format!(
            "[[registries]]\nname = \"local\"\nurl = \"{url}\"\n"
        ))
        .with_server_toml(&server("missing", "example@9.9.9"))
        .with_server_toml(&server("pinned", &format!("example@1.2.0#{pin}")))
        .with_server_toml(&server("host", "host-network@1.2.0"))
        .with_server_toml(&server("leaky", "leaky@1.2.0"))
        .with_server_toml(&server("moved", "redirected@1.2.0"))
        .with_server_toml(&server("huge", "huge@1.2.0"))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"inward\"\nfrom = \"registry://local/{NAMESPACE}/remote@0.3.0\"\n\
             secrets = {{ token = \"file:api-key\" }}\n"
        ));
    let config = proxy.write_config();
    let kept = |reference: &str| {
        proxy
            .dir()
            .join(format!("registries/local/{NAMESPACE}/{reference}.json"))
    };

    // A version the registry does not have: nothing kept.
    let (ok, _, stderr) = pull(&config, &["missing"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "registry `local` has no version `9.9.9` of `{NAMESPACE}/example` (404)"
        )),
        "{stderr}"
    );
    assert!(!kept("example@9.9.9").exists());
    assert!(
        std::fs::read_to_string(&log).unwrap().contains(&format!(
            "/v0.1/servers/{}%2Fexample/versions/9.9.9",
            NAMESPACE
        )),
        "the name is encoded as the API asks"
    );

    // A pin the registry's entry does not match: nothing kept.
    let (ok, _, stderr) = pull(&config, &["pinned"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("not the pinned {pin}: nothing was kept")),
        "{stderr}"
    );
    assert!(!kept("example@1.2.0").exists());

    // A redirect is not followed: the trap gets nothing.
    let (ok, _, stderr) = pull(&config, &["moved"]);
    assert!(!ok);
    assert!(stderr.contains("redirect (307"), "{stderr}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(received.lock().unwrap().is_empty(), "the trap was reached");

    // An answer past the size limit.
    let (ok, _, stderr) = pull(&config, &["huge"]);
    assert!(!ok);
    assert!(stderr.contains("answered over 1024 KiB"), "{stderr}");
    assert!(!kept("huge@1.2.0").exists());

    // The host network: pulled, but the config will not load, and says why.
    let (ok, _, stderr) = pull(&config, &["host"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("the config does not load yet"), "{stderr}");
    let (ok, _, stderr) = pull(&config, &["leaky"]);
    assert!(ok, "{stderr}");
    let alone = |name: &str| {
        let proxy = TestProxy::new()
            .with_config(&format!(
                "[[registries]]\nname = \"local\"\nurl = \"{url}\"\npath = \"{}\"\n",
                config.parent().unwrap().join("registries/local").display()
            ))
            .with_server_toml(&server(
                name,
                &format!(
                    "{}@1.2.0",
                    match name {
                        "host" => "host-network",
                        other => other,
                    }
                ),
            ));
        std::fs::write(proxy.dir().join("api-key"), "k").unwrap();
        common::serve_refused(&proxy.write_config())
    };
    // A publisher's loopback URL is not reached without the operator's
    // `[egress] allow`.
    let (ok, _, stderr) = pull(&config, &["inward"]);
    assert!(ok, "{stderr}");
    let inward = TestProxy::new()
        .with_config(&format!(
            "[[registries]]\nname = \"local\"\nurl = \"{url}\"\npath = \"{}\"\n",
            config.parent().unwrap().join("registries/local").display()
        ))
        .with_server_toml(&format!(
            "[[servers]]\nname = \"inward\"\nfrom = \"registry://local/{NAMESPACE}/remote@0.3.0\"\n\
             secrets = {{ token = \"file:token\" }}\n"
        ));
    std::fs::write(inward.dir().join("token"), "t").unwrap();
    let (ok, _, stderr) = common::run_portcullis([
        std::ffi::OsStr::new("tools"),
        "call".as_ref(),
        "--config".as_ref(),
        inward.write_config().as_os_str(),
        "inward__echo".as_ref(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("a loopback address, which the proxy does not connect to"),
        "{stderr}"
    );
    let refused = alone("host");
    assert!(
        refused.contains("asks the container engine for `--network host`"),
        "{refused}"
    );
    // A credential in the description is found before any start, and
    // named by where it is, never by itself.
    let refused = alone("leaky");
    assert!(
        refused.contains("its server.json holds what looks like a credential at `description`"),
        "{refused}"
    );
    assert!(!refused.contains(&credential), "{refused}");
}
