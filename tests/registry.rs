//! A real OCI registry on loopback (Debian's `docker-registry`, installed
//! when missing): a catalog pushed in Docker's artifact format and pulled
//! into a config (the proxy refuses to start until it is, and refuses a
//! pulled file that was changed or a pin it does not match); an artifact
//! that is not a catalog refused; and an image pulled from it with `pull =
//! "missing"`, its digest pin enforced. Fails, never skips.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

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
    // Pinned by digest, the reference names it once.
    assert_eq!(pulled.matches(&digest).count(), 1, "{pulled}");
    assert!(
        pulled.contains(&format!("{reference}@{digest}")),
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
    let digest = push_image(&registry, "example");
    let remote = format!("{}/example:v1", registry.address);
    // Gone from the engine: only a pull brings it back.
    docker_cli(&["rmi", &remote]);
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

/// A key of the test's own (a fixed scalar: the test signs what it needs).
fn signing_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn public_pem(key: &p256::ecdsa::SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey as _;
    key.verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
}

/// Pushes, as cosign does, a signature by `key` of a payload naming
/// `signed_digest`, at the signature tag of `repository`'s image `digest`.
async fn sign(
    registry: &Registry,
    repository: &str,
    digest: &str,
    signed_digest: &str,
    key: &p256::ecdsa::SigningKey,
) {
    sign_for(
        registry,
        (repository, repository),
        digest,
        signed_digest,
        key,
    )
    .await;
}

/// [`sign`], the payload naming `identity`'s repository while the
/// signature is pushed to `repository`'s tag.
async fn sign_for(
    registry: &Registry,
    (repository, identity): (&str, &str),
    digest: &str,
    signed_digest: &str,
    key: &p256::ecdsa::SigningKey,
) {
    use p256::ecdsa::signature::Signer as _;
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": format!("{}/{identity}", registry.address) },
            "image": { "docker-manifest-digest": signed_digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let signature: p256::ecdsa::Signature = key.sign(&payload);
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        signature.to_der().as_bytes(),
    );
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let reference: oci_client::Reference = format!("{}/{repository}:{tag}", registry.address)
        .parse()
        .unwrap();
    let layers = [oci_client::client::ImageLayer::new(
        payload,
        "application/vnd.dev.cosign.simplesigning.v1+json".to_owned(),
        Some(std::collections::BTreeMap::from([(
            "dev.cosignproject.cosign/signature".to_owned(),
            encoded,
        )])),
    )];
    let config = oci_client::client::Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.image.config.v1+json".to_owned(),
        None,
    );
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
    .push(
        &reference,
        &layers,
        config,
        &oci_client::secrets::RegistryAuth::Anonymous,
        None,
    )
    .await
    .unwrap();
}

/// `docker ARGS…`: its stdout, or a panic with its stderr.
fn docker_cli(args: &[&str]) -> String {
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
}

/// Tags the test image as `repository:v1` in the registry and pushes it;
/// its digest there.
fn push_image(registry: &Registry, repository: &str) -> String {
    let remote = format!("{}/{repository}:v1", registry.address);
    docker_cli(&["tag", &common::test_image(), &remote]);
    let pushed = docker_cli(&["push", &remote]);
    pushed
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("a digest in {pushed}"))
        .to_owned()
}

/// A proxy whose server `name` runs `repository:v1` from the registry and
/// must be signed by `key`; the reply to a call of its `echo`, and the
/// proxy's log.
async fn call_signed(
    registry: &Registry,
    name: &str,
    repository: &str,
    key: &str,
) -> (Value, Vec<String>) {
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("cosign.pub"), key).unwrap();
    let proxy = proxy
        .with_config("[signatures]\nkeys = [\"cosign.pub\"]\n")
        .with_server_toml(&format!(
            "[[servers]]\nname = \"{name}\"\ncontainer = {{ image = \"{}/{repository}:v1\", args = [\"--name\", \"{name}\"], require_signature = true }}\n",
            registry.address
        ));
    let mut client = proxy.raw_stdio().await;
    client.initialize().await;
    let reply = client
        .call(
            1,
            "tools/call",
            json!({ "name": format!("{name}__echo"), "arguments": { "text": "hi" } }),
        )
        .await;
    let log = client.log();
    client.finish().await;
    // The run's records: a refused start is one (`server_down`, why).
    let config = proxy.write_config();
    let (ok, records, stderr) = run_portcullis([
        "audit",
        "query",
        "--config",
        config.to_str().unwrap(),
        "--kind",
        "server_down",
        "--format",
        "jsonl",
    ]);
    assert!(ok, "{stderr}");
    let mut log = log;
    log.extend(records.lines().map(|line| format!("record: {line}")));
    (reply, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_image_starts_and_an_unsigned_or_wrongly_signed_one_does_not() {
    let _docker = common::docker().await;
    let registry = Registry::start().await;
    let ours = signing_key(7);
    let theirs = signing_key(9);
    let ours_pem = public_pem(&ours);

    // Signed by our key, for its own digest: it runs.
    let digest = push_image(&registry, "signed");
    sign(&registry, "signed", &digest, &digest, &ours).await;
    let (reply, _) = call_signed(&registry, "signed", "signed", &ours_pem).await;
    assert_eq!(first_text(&reply), "signed: hi", "{reply}");

    // Not signed at all (the same image under a repository with no signature).
    let unsigned = push_image(&registry, "unsigned");
    let (reply, log) = call_signed(&registry, "unsigned", "unsigned", &ours_pem).await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert!(
        log.iter().any(|line| line.contains("is not signed")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|line| line.starts_with("record: ") && line.contains("is not signed")),
        "the refusal is recorded: {log:?}"
    );

    // Signed, but by another key.
    let other = push_image(&registry, "other-key");
    sign(&registry, "other-key", &other, &other, &theirs).await;
    let (reply, log) = call_signed(&registry, "other", "other-key", &ours_pem).await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert!(
        log.iter()
            .any(|line| line.contains("not signed by any key")),
        "{log:?}"
    );

    // Signed by our key, but the payload names another image.
    let moved = push_image(&registry, "moved");
    let elsewhere = format!("sha256:{}", "e".repeat(64));
    sign(&registry, "moved", &moved, &elsewhere, &ours).await;
    let (reply, log) = call_signed(&registry, "moved", "moved", &ours_pem).await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert!(
        log.iter().any(|line| line.contains("is for another image")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|line| line.starts_with("record: ") && line.contains("is for another image")),
        "{log:?}"
    );
    assert_eq!(unsigned, digest, "one image under several repositories");

    // Our signature of the same digest, made for another repository and
    // copied to this one's signature tag: refused.
    let copied = push_image(&registry, "copied");
    sign_for(&registry, ("copied", "signed"), &copied, &copied, &ours).await;
    let (reply, log) = call_signed(&registry, "copied", "copied", &ours_pem).await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert!(
        log.iter()
            .any(|line| line.contains("is for another image") && line.contains("repository")),
        "{log:?}"
    );

    // A key file that is not a key stops the proxy at start.
    let proxy = TestProxy::new();
    std::fs::write(proxy.dir().join("cosign.pub"), "not a key").unwrap();
    let refused = common::serve_refused(
        &proxy
            .with_config("[signatures]\nkeys = [\"cosign.pub\"]\nrequire = true\n")
            .write_config(),
    );
    assert!(refused.contains("is not a PEM public key"), "{refused}");
    // Signatures required, no key to check them with: refused too.
    let refused = common::serve_refused(
        &TestProxy::new()
            .with_config("[signatures]\nrequire = true\n")
            .with_container_server("c", "", "")
            .write_config(),
    );
    assert!(refused.contains("names no key"), "{refused}");
}
