//! A real OCI registry on loopback (Debian's `docker-registry`, installed
//! when missing): a catalog pushed in Docker's artifact format and pulled
//! into a config (the proxy refuses to start until it is, and refuses a
//! pulled file that was changed or a pin it does not match); an artifact
//! that is not a catalog refused; and an image pulled from it with `pull =
//! "missing"`, its digest pin enforced. Fails, never skips.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::registry::Registry;
use common::{TestProxy, first_text, run_portcullis};
use serde_json::{Value, json};

fn catalog(image: &str) -> String {
    format!(
        "registry:\n  example:\n    image: {image}\n    title: Example\n    description: pulled from a registry\n    command: [\"--name\", \"from-the-registry\"]\n    tools:\n      - name: echo\n"
    )
}

/// `portcullis ARGS…`: its stdout, or a panic with its stderr.
fn portcullis_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_portcullis(args);
    assert!(ok, "portcullis {args:?}: {stderr}");
    stdout
}

/// The manifest the registry holds for `repository:tag`.
async fn manifest(registry: &Registry, repository: &str, tag: &str) -> Value {
    reqwest::Client::new()
        .get(format!(
            "http://{}/v2/{repository}/manifests/{tag}",
            registry.address
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_pushed_to_a_registry_is_pulled_into_a_config_and_served() {
    let registry = Registry::start().await;
    let image = common::test_image();
    let proxy = TestProxy::new();
    let file = proxy.dir().join("team.yaml");
    std::fs::write(&file, catalog(&image)).unwrap();
    let reference = format!("{}/catalogs/team:v1", registry.address);

    // Pushed in Docker's format: its artifact type, the empty config, one
    // JSON layer.
    let pushed = portcullis_ok(&[
        "catalog",
        "push",
        "--file",
        file.to_str().unwrap(),
        &reference,
    ]);
    let digest = pushed
        .trim()
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_owned())
        .unwrap_or_else(|| panic!("a digest in {pushed}"));
    let held = manifest(&registry, "catalogs/team", "v1").await;
    assert_eq!(
        held["artifactType"], "application/vnd.docker.mcp.catalog.v1+json",
        "{held}"
    );
    assert_eq!(
        held["config"]["mediaType"], "application/vnd.oci.empty.v1+json",
        "{held}"
    );
    assert_eq!(held["layers"].as_array().unwrap().len(), 1, "{held}");
    assert_eq!(held["layers"][0]["mediaType"], "application/json", "{held}");

    // Named by the config, pinned: the proxy refuses to start until it is
    // pulled.
    let proxy = proxy
        .with_config(&format!(
            "[[catalogs]]\nname = \"pulled\"\noci = \"{reference}@{digest}\"\n"
        ))
        .with_server_toml("[[servers]]\nname = \"listed\"\nfrom = \"catalog://pulled/example\"\n");
    let config = proxy.write_config();
    let config_arg = config.to_str().unwrap();
    let refused = common::serve_refused(&config);
    assert!(refused.contains("has not been pulled"), "{refused}");
    let listed: Value = serde_json::from_str(&portcullis_ok(&[
        "catalog", "ls", "--config", config_arg, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(listed[0]["pulled"], false, "{listed}");

    let pulled = portcullis_ok(&["catalog", "pull", "--config", config_arg]);
    assert!(
        pulled.contains("1 server(s)") && pulled.contains(&digest),
        "{pulled}"
    );
    let listed: Value = serde_json::from_str(&portcullis_ok(&[
        "catalog", "ls", "--config", config_arg, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(listed[0]["pulled"], true, "{listed}");
    assert_eq!(listed[0]["digest"], json!(digest), "{listed}");
    assert_eq!(listed[0]["servers"], 1, "{listed}");
    let shown = portcullis_ok(&["catalog", "show", "pulled", "--config", config_arg]);
    assert!(
        shown.contains("example") && shown.contains("pulled from a registry"),
        "{shown}"
    );
    let kept = proxy.dir().join("catalogs/pulled.json");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the pulled catalog is the owner's alone: {mode:o}"
    );

    // Served from what was pulled.
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({ "name": "listed__echo", "arguments": { "text": "hi" } }),
        )
        .await;
    assert_eq!(first_text(&reply), "from-the-registry: hi", "{reply}");
    client.finish().await;

    // A pulled file changed since: refused at start.
    let original = std::fs::read(&kept).unwrap();
    let changed = String::from_utf8(original.clone())
        .unwrap()
        .replace("from-the-registry", "from-elsewhere");
    std::fs::write(&kept, changed).unwrap();
    let refused = common::serve_refused(&config);
    assert!(refused.contains("SHA-256"), "{refused}");
    std::fs::write(&kept, original).unwrap();

    // A pin the registry does not serve: nothing is pulled.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let other = TestProxy::new().with_config(&format!(
        "[[catalogs]]\nname = \"pinned\"\noci = \"{reference}@{wrong}\"\n"
    ));
    let other_config = other.write_config();
    let (ok, _, stderr) = run_portcullis([
        "catalog",
        "pull",
        "--config",
        other_config.to_str().unwrap(),
    ]);
    assert!(!ok, "a pin the registry does not serve must fail");
    assert!(stderr.contains("catalog `pinned`"), "{stderr}");
    assert!(!other.dir().join("catalogs/pinned.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_that_is_not_a_catalog_is_not_pulled() {
    let registry = Registry::start().await;
    // An artifact of another type, pushed with the same client library.
    let reference: oci_client::Reference = format!("{}/other/thing:v1", registry.address)
        .parse()
        .unwrap();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let layers = [oci_client::client::ImageLayer::new(
        br#"{"registry":{}}"#.to_vec(),
        "application/json".to_owned(),
        None,
    )];
    let config = oci_client::client::Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.empty.v1+json".to_owned(),
        None,
    );
    let mut manifest = oci_client::manifest::OciImageManifest::build(&layers, &config, None);
    manifest.artifact_type = Some("application/vnd.example.other+json".to_owned());
    client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await
        .unwrap();
    let proxy = TestProxy::new().with_config(&format!(
        "[[catalogs]]\nname = \"other\"\noci = \"{}/other/thing:v1\"\n",
        registry.address
    ));
    let config = proxy.write_config();
    let (ok, _, stderr) = run_portcullis(["catalog", "pull", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("is not an MCP catalog"), "{stderr}");
    assert!(!proxy.dir().join("catalogs/other.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_pulled_from_the_registry_when_missing_and_its_pin_holds() {
    let _docker = common::docker().await;
    let registry = Registry::start().await;
    let image = common::test_image();
    let remote = format!("{}/example:pulled", registry.address);
    let docker = |args: &[&str]| {
        let output = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    docker(&["tag", &image, &remote]);
    let pushed = docker(&["push", &remote]);
    let digest = pushed
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("a digest in {pushed}"))
        .to_owned();
    // Gone from the engine: only a pull brings it back.
    docker(&["rmi", &remote]);
    let server = |name: &str, pin: &str| {
        format!(
            "[[servers]]\nname = \"{name}\"\ncontainer = {{ image = \"{remote}\", args = [\"--name\", \"{name}\"], pull = \"missing\"{pin} }}\n"
        )
    };
    let proxy =
        TestProxy::new().with_server_toml(&server("pulled", &format!(", digest = \"{digest}\"")));
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({ "name": "pulled__echo", "arguments": { "text": "hi" } }),
        )
        .await;
    assert_eq!(first_text(&reply), "pulled: hi", "{reply}");
    client.finish().await;
    // Another pin: the pulled image is not that one, and does not start.
    let wrong = format!("sha256:{}", "1".repeat(64));
    let proxy =
        TestProxy::new().with_server_toml(&server("pinned", &format!(", digest = \"{wrong}\"")));
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({ "name": "pinned__echo", "arguments": { "text": "hi" } }),
        )
        .await;
    assert!(reply.get("error").is_some(), "{reply}");
    client.wait_for_log(&["not the pinned digest"]).await;
    client.finish().await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", &remote])
        .output();
}
