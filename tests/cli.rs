//! The command line through the real binary: config errors, `servers list`,
//! `tools list`.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::TestProxy;
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String, String) {
    common::run_portcullis(args)
}

#[test]
fn invalid_configs_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        (
            "[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 1\n",
            ":3:1",
            "unknown field `listen_typo`",
        ),
        (
            "[[servers]]\nname = \"a\"\nprocess = { command = \"x\", comand = \"y\" }\n",
            ":3:",
            "servers[0].process",
        ),
        (
            "[[servers]]\nname = \"UPPER\"\nprocess = { command = \"x\" }\n",
            ":1:1",
            "servers[0].name",
        ),
        (
            "[[servers]]\nname = \"a\"\n",
            ":1:1",
            "needs one of `container`, `process`, `remote` or `from`",
        ),
        (
            "[[servers]]\nname = \"a\"\nremote = { url = \"ftp://x\" }\n",
            ":1:1",
            "not an http:// or https:// URL",
        ),
        (
            "[proxy]\ncall_timeout = \"soon\"\n",
            ":2:",
            "not a duration",
        ),
        (
            "[[chain]]\nkind = \"firewall\"\n",
            ":2:8",
            "unknown variant `firewall`, expected one of `limits`, `ratelimit`, `authz`, `pinning`, `schema`, `redact`, `wasm`",
        ),
        (
            "[[servers]]\nname = \"a\"\nprocess = { command = \"x\" }\n[[servers]]\nname = \"a\"\nprocess = { command = \"y\" }\n",
            ":4:1",
            "defined twice",
        ),
        ("[limits]\nmax_depth = 1000\n", ":2:", "between 4 and 128"),
        ("this is not toml", ":1:", ""),
    ];
    for (text, location, message) in cases {
        std::fs::write(&path, text).unwrap();
        let (ok, _, stderr) = run(&["servers", "list", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{text:?} should be refused");
        let expected = format!("{}{location}", path.display());
        assert!(
            stderr.contains(&expected),
            "{text:?}: expected `{expected}` in {stderr}"
        );
        assert!(
            stderr.contains(message),
            "{text:?}: expected `{message}` in {stderr}"
        );
    }
    let (ok, _, stderr) = run(&[
        "servers",
        "list",
        "--config",
        "/nonexistent/portcullis.toml",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/portcullis.toml: cannot read the config"),
        "{stderr}"
    );
}

#[test]
fn servers_list_shows_secret_names_never_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "super-secret-value\n").unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[[servers]]\nname = \"remote-one\"\nremote = { url = \"https://user:pw@example.com/mcp?token=abc\", headers = { Authorization = \"Bearer secret:KEY\" } }\nsecrets = { KEY = \"file:key\" }\n\n[[servers]]\nname = \"local\"\nprocess = { command = \"my-server\" }\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(&[
        "servers",
        "list",
        "--config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[0]["name"], "remote-one");
    assert_eq!(rows[0]["target"], "https://example.com/mcp");
    assert_eq!(rows[0]["secrets"], serde_json::json!(["KEY"]));
    assert_eq!(rows[1]["sandbox"], "UNSANDBOXED");
    for secret in ["super-secret-value", "pw", "token=abc"] {
        assert!(!stdout.contains(secret), "`{secret}` leaked: {stdout}");
    }
    let (ok, table, _) = run(&["servers", "list", "--config", path.to_str().unwrap()]);
    assert!(ok);
    assert!(
        table.contains("local") && table.contains("UNSANDBOXED"),
        "{table}"
    );
}

#[test]
fn tools_list_shows_what_a_client_would_see() {
    let proxy = TestProxy::new().with_raw_server("raw");
    let config = proxy.write_config();
    let (ok, stdout, stderr) = run(&[
        "tools",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--client",
        "tester",
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let tools: Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["raw__mirror", "raw__hang", "raw__notify", "raw__shaped"]
    );
    assert!(
        stderr.contains("withheld: `raw__broken`: its input schema does not compile"),
        "{stderr}"
    );

    let (ok, _, stderr) = run(&[
        "tools",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--client",
        "nobody",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("client `nobody` is not defined"),
        "{stderr}"
    );
}

#[test]
fn serve_without_a_listener_or_stdio_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[[clients]]\nname = \"c\"\n").unwrap();
    let (ok, _, stderr) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("nothing to serve"), "{stderr}");
}

#[test]
fn every_example_config_loads() {
    let dir = common::repo_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let (ok, _, stderr) = run(&["servers", "list", "--config", path.to_str().unwrap()]);
        assert!(ok, "{}: {stderr}", path.display());
        checked += 1;
    }
    assert!(checked >= 2, "found {checked} example configs");
}

#[test]
fn the_readmes_config_examples_load() {
    // The README and every page under docs/: the reference moved there, and
    // its examples must keep loading.
    let root = common::repo_root();
    let mut pages = vec![root.join("README.md")];
    // The provider pages too (docs/providers/).
    let mut docs: Vec<_> = ["docs", "docs/providers"]
        .iter()
        .flat_map(|folder| std::fs::read_dir(root.join(folder)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for page in &pages {
        let name = page.strip_prefix(&root).unwrap().display().to_string();
        let page_text = std::fs::read_to_string(page).unwrap();
        // The files a page's configs name (`# team.yaml` on a YAML block's
        // first line) are written beside them.
        for block in page_text.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            if let Some(file) = block
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("# "))
                .filter(|file| file.ends_with(".yaml") && !file.contains('/'))
            {
                std::fs::write(dir.path().join(file), block).unwrap();
            }
        }
        // A page's `[signatures]` example names this key file.
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        {
            use p256::pkcs8::EncodePublicKey as _;
            let key = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
            let pem = key
                .verifying_key()
                .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                .unwrap();
            std::fs::write(keys.join("cosign.pub"), pem).unwrap();
        }
        for (index, block) in page_text.split("```toml\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap_or_default();
            // The docs write placeholders where a real value is the user's.
            let text = block
                .replace(
                    "token_sha256 = \"…\"",
                    &format!("token_sha256 = \"{}\"", "b".repeat(64)),
                )
                .replace("sha256:…", &format!("sha256:{}", "a".repeat(64)));
            let path = dir.path().join(format!("block-{checked}.toml"));
            std::fs::write(&path, &text).unwrap();
            if text.contains("[[rule]]") {
                // A secret-scanning rule file: loaded as `extra_rules`.
                let config = dir.path().join(format!("block-{checked}-config.toml"));
                std::fs::write(
                    &config,
                    format!("[redact]\nextra_rules = {:?}\n", path.display().to_string()),
                )
                .unwrap();
                let (ok, stdout, stderr) =
                    run(&["redact", "rules", "--config", config.to_str().unwrap()]);
                assert!(
                    ok,
                    "{name} rule block {index} does not load: {stderr}\n{block}"
                );
                assert!(stdout.contains("acme-api-token"), "{stdout}");
                checked += 1;
                continue;
            }
            // A config with an OCI catalog loads once it is pulled: before,
            // only its catalogs do.
            // So does one with a registry server: before, only its
            // registries and references do.
            let (check, verb) = if text.contains("\noci = ") {
                ("catalog", "ls")
            } else if text.contains("\"registry://") {
                ("registry", "ls")
            } else {
                ("servers", "list")
            };
            let (ok, _, stderr) = run(&[check, verb, "--config", path.to_str().unwrap()]);
            assert!(
                ok,
                "{name} toml block {index} does not load: {stderr}\n{block}"
            );
            checked += 1;
        }
    }
    // Six when the reference moved out of the README: a page that loses its
    // examples (or a test that stops finding them) shows here.
    assert!(checked >= 6, "found {checked} toml blocks");
}

#[test]
fn tools_call_goes_through_the_chain_as_the_client_and_is_recorded() {
    let proxy = TestProxy::new()
        .with_config("policies = \"policies\"")
        .with_example_server("example");
    proxy.policy_folder(
        r#"@id("echo-only") permit(principal == Client::"tester", action, resource == Tool::"example__echo");"#,
    );
    let config = proxy.write_config();
    let config = config.to_str().unwrap();
    let call = |tool: &str, args: &str, client: &str| {
        run(&[
            "tools", "call", tool, "--args", args, "--client", client, "--config", config,
        ])
    };
    let (ok, stdout, stderr) = call("example__echo", r#"{"text":"from the cli"}"#, "tester");
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        result["content"][0]["text"], "example: from the cli",
        "{stdout}"
    );
    // The policies decide, as for any client.
    let (ok, _, stderr) = call("example__add", r#"{"a":1,"b":2}"#, "tester");
    assert!(
        !ok && stderr.contains("was not called") && stderr.contains("-32010"),
        "{stderr}"
    );
    let (ok, _, stderr) = call("example__echo", r#"{"text":"x"}"#, "other");
    assert!(!ok && stderr.contains("-32010"), "{stderr}");
    // Bad input is named, and nothing is called.
    let (ok, _, stderr) = call("example__echo", "[1]", "tester");
    assert!(!ok && stderr.contains("must be a JSON object"), "{stderr}");
    let (ok, _, stderr) = call("example__echo", r#"{"text":"x"}"#, "nobody");
    assert!(
        !ok && stderr.contains("client `nobody` is not defined"),
        "{stderr}"
    );

    // Recorded as the client's, over the CLI, each decision as made.
    let records = common::records(
        proxy.dir().join("portcullis.toml").as_path(),
        &["--limit", "1000"],
    );
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "exchange" && r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for record in &calls {
        assert_eq!(record["transport"], "cli", "{record}");
    }
    let allowed: Vec<_> = calls
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| {
            (
                r["client"].as_str().unwrap(),
                r["target"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(allowed, [("tester", "echo")], "{calls:?}");

    // Each run recorded as a proxy's is: its start, as the CLI's.
    let starts = records
        .iter()
        .filter(|r| r["kind"] == "proxy_start" && r["detail"]["role"] == "cli-tools")
        .count();
    assert!(starts >= 3, "{records:?}");
    // `--args -`: the arguments from stdin, off the command line.
    let mut child = std::process::Command::new(common::portcullis_bin())
        .args([
            "tools",
            "call",
            "example__echo",
            "--args",
            "-",
            "--client",
            "tester",
        ])
        .args(["--config", config])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        br#"{"text":"from stdin"}"#,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("example: from stdin"), "{stdout}");

    // `tools inspect`: the definition as that client sees it listed.
    let (ok, stdout, stderr) = run(&[
        "tools",
        "inspect",
        "example__echo",
        "--client",
        "tester",
        "--config",
        config,
    ]);
    assert!(ok, "{stderr}");
    let tool: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(tool["name"], "example__echo");
    assert!(
        tool["inputSchema"]["properties"]["text"].is_object(),
        "{tool}"
    );
    let (ok, _, stderr) = run(&[
        "tools",
        "inspect",
        "example__add",
        "--client",
        "tester",
        "--config",
        config,
    ]);
    assert!(
        !ok && stderr.contains("is not listed to client `tester`"),
        "{stderr}"
    );
}
