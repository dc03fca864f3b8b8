//! Every example config in `examples/` loads and builds its whole chain
//! (policies, secret-scanning rules, pins, plugins) as `serve` would, with
//! the example policy folder switched on too, and its policies pass their
//! tests; container servers and the compose file name only images this
//! repository builds, and the compose file publishes the proxy alone; the
//! replicas' compose file runs three of one config behind the balancer.
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use std::path::{Path, PathBuf};

use portcullis::config::{Config, UpstreamSpec};

/// The images the repository builds: each image script's default tag.
fn images_built_here() -> Vec<String> {
    ["build-test-image.sh", "build-proxy-image.sh"]
        .iter()
        .map(|script| {
            let text =
                std::fs::read_to_string(common::repo_root().join("scripts").join(script)).unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix("TAG=\"${1:-"))
                .and_then(|rest| rest.strip_suffix("}\""))
                .unwrap_or_else(|| panic!("no default tag in {script}"))
                .to_owned()
        })
        .collect()
}

/// The configs: `examples/*.toml` and each example folder's `portcullis.toml`.
fn example_configs() -> Vec<PathBuf> {
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(common::repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            configs.push(path);
        } else if path.join("portcullis.toml").is_file() {
            configs.push(path.join("portcullis.toml"));
        }
    }
    configs.sort();
    assert!(configs.len() >= 3, "{configs:?}");
    configs
}

/// Builds the chain of `config` with its data folder moved to `scratch`
/// (the pins and locks of a test stay out of the repository).
fn build(mut config: Config, scratch: &Path) {
    config.proxy.data_dir = scratch.to_owned();
    config.pinning.data_dir = scratch.to_owned();
    config.pinning.file = scratch.join("pins.json");
    // Secrets the chain reads as it is built (Redis's password) are the
    // deployment's: a stand-in here.
    if let Some(shared) = &mut config.ratelimit.shared
        && shared.password.is_some()
    {
        let password = scratch.join("redis-password");
        std::fs::write(&password, "stand-in").unwrap();
        shared.password = Some(portcullis::config::SecretRef::File(password));
    }
    let file = config.file.display().to_string();
    if let Err(err) = portcullis::interceptors::build_chain(&config) {
        panic!("{file}: the chain does not build: {err}");
    }
}

#[test]
fn every_example_config_loads_and_builds_its_chain() {
    let built_here = images_built_here();
    for path in example_configs() {
        let scratch = tempfile::tempdir().unwrap();
        let config = Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
        for server in &config.servers {
            if let UpstreamSpec::Container(spec) = &server.kind {
                assert!(
                    built_here.contains(&spec.image),
                    "{}: server `{}` runs image `{}`, which this repository does not build",
                    path.display(),
                    server.name,
                    spec.image
                );
            }
        }
        build(config, scratch.path());

        // The quickstart's `policies` line pointed at the example set: that
        // set loads under the quickstart's config too.
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("policies = \"quickstart-policies\"") {
            let enabled = path.with_file_name(format!(
                ".{}-with-policies.toml",
                path.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(
                &enabled,
                text.replace(
                    "policies = \"quickstart-policies\"",
                    "policies = \"../policies\"",
                ),
            )
            .unwrap();
            let loaded = Config::load(&enabled);
            let _ = std::fs::remove_file(&enabled);
            let config = loaded.unwrap_or_else(|err| panic!("{err}"));
            assert!(config.proxy.policies.is_some());
            build(config, scratch.path());
        }
    }
}

#[test]
fn example_policy_folders_pass_their_tests() {
    for config in example_configs() {
        let loaded = Config::load(&config).unwrap();
        let Some(policies) = loaded.proxy.policies else {
            continue;
        };
        let folder = policies.to_str().unwrap();
        for command in ["check", "test"] {
            let (ok, stdout, stderr) =
                common::run_portcullis(["policy", command, "--policies", folder]);
            assert!(ok, "{folder}: policy {command}: {stdout}{stderr}");
        }
        // A copied schema is the project's own, not a drifting fork.
        assert_eq!(
            std::fs::read_to_string(policies.join("schema.cedarschema")).unwrap(),
            std::fs::read_to_string(common::repo_root().join("policies/schema.cedarschema"))
                .unwrap(),
            "{folder}/schema.cedarschema"
        );
    }
}

/// The services of a compose file that publish ports (services are the
/// two-space-indented keys under `services:`).
fn publishing(compose: &str) -> Vec<String> {
    let mut service = "";
    let mut publishing = Vec::new();
    let mut in_services = false;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_services = line.starts_with("services:");
        } else if in_services && line.starts_with("  ") && !line.starts_with("   ") {
            service = line.trim().trim_end_matches(':');
        } else if in_services && line.trim() == "ports:" {
            publishing.push(service.to_owned());
        }
    }
    publishing
}

#[test]
fn the_compose_file_runs_images_built_here_and_publishes_the_proxy_alone() {
    let compose =
        std::fs::read_to_string(common::repo_root().join("examples/compose/compose.yaml")).unwrap();
    let built_here = images_built_here();
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|line| line.trim().strip_prefix("image:"))
        .map(str::trim)
        .collect();
    assert!(images.len() >= 3, "{images:?}");
    for image in &images {
        assert!(
            built_here.iter().any(|built| built == image),
            "compose.yaml runs `{image}`, which this repository does not build ({built_here:?})"
        );
    }
    // Only the proxy publishes ports, and the servers' network is internal.
    assert_eq!(publishing(&compose), ["portcullis"], "{compose}");
    assert!(compose.contains("tools:\n    internal: true"), "{compose}");
    assert!(
        compose.contains("\"127.0.0.1:8811:8811\""),
        "published on loopback only"
    );
    assert!(
        !compose.contains("docker.sock"),
        "no engine socket in the toolbox"
    );
}

#[test]
fn the_replicas_compose_file_runs_three_replicas_of_one_config_behind_the_balancer_alone() {
    let dir = common::repo_root().join("examples/replicas");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    // The balancer alone publishes a port, on loopback; the replicas'
    // network and the back end's are internal.
    assert_eq!(publishing(&compose), ["balancer"], "{compose}");
    assert!(compose.contains("\"127.0.0.1:8811:8811\""));
    for network in ["front", "back"] {
        assert!(
            compose.contains(&format!("  {network}:\n    internal: true")),
            "{network}"
        );
    }
    // Three replicas: one image built here, one config, one session key,
    // each its own data volume and host name (its name in the fleet's log).
    let built_here = images_built_here();
    assert!(
        compose.contains("image: portcullis/proxy:dev")
            && built_here.iter().any(|i| i == "portcullis/proxy:dev")
    );
    for n in 1..=3 {
        assert!(
            compose.contains(&format!(
                "  replica-{n}:\n    <<: *replica\n    hostname: replica-{n}\n"
            )),
            "replica-{n}"
        );
        assert!(
            compose.contains(&format!("- replica-{n}-data:/data")),
            "replica-{n}"
        );
    }
    assert!(compose.contains("secrets: [session_key, redis_password, db_password]"));
    // HAProxy's configuration is the one the fleet test runs.
    assert!(compose.contains("./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"));
    let haproxy = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
    for n in 1..=3 {
        assert!(haproxy.contains(&format!("server replica-{n} replica-{n}:8811 check")));
    }
    // The replicas' config seals sessions with the shared key, and reaches
    // Redis and PostgreSQL over TLS only.
    let config = Config::load(&dir.join("portcullis.toml")).unwrap();
    assert_eq!(config.proxy.session_keys.len(), 1);
    let shared = config
        .ratelimit
        .shared
        .as_ref()
        .expect("[ratelimit.shared]");
    assert!(shared.redis.starts_with("rediss://"), "{}", shared.redis);
    let ship = config.audit.ship.as_ref().expect("[audit.ship]");
    assert!(ship.to.ends_with("?sslmode=require"), "{}", ship.to);
    assert!(ship.ca.is_some());
}

/// The README's first success, run as written: the three lines under "A
/// first call, and a refused one", each with the binary built here and
/// the quickstart's config (its example server the one built here, its
/// data in a scratch folder). The call goes through, the refused one is
/// refused by the quickstart's policy, and the log shows both.
#[test]
fn the_readmes_first_call_goes_through_and_its_refused_call_is_refused() {
    let root = common::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## A first call, and a refused one")
        .nth(1)
        .expect("the README's first-call section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("its commands");
    let lines: Vec<&str> = block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "three lines: {lines:?}");

    let scratch = tempfile::tempdir().unwrap();
    let quickstart = std::fs::read_to_string(root.join("examples/quickstart.toml")).unwrap();
    let policies = root.join("examples/quickstart-policies");
    let extra_rules = root.join("policies/redact-extra.toml");
    let config_text = quickstart
        .replace(
            "\"../target/release/portcullis-example-server\"",
            &format!("{:?}", common::example_server_bin()),
        )
        .replace(
            "data_dir = \"../.portcullis\"",
            &format!("data_dir = {:?}", scratch.path().join("data")),
        )
        .replace(
            "policies = \"quickstart-policies\"",
            &format!("policies = {policies:?}"),
        )
        .replace(
            "\"../policies/redact-extra.toml\"",
            &format!("{extra_rules:?}"),
        );
    assert!(!config_text.contains("\"../"), "{config_text}");
    let config = scratch.path().join("quickstart.toml");
    std::fs::write(&config, config_text).unwrap();

    let run = |line: &str| {
        let args = shell_words(line);
        assert_eq!(args[0], "./target/release/portcullis", "{line}");
        let args: Vec<String> = args[1..]
            .iter()
            .map(|arg| {
                if arg == "examples/quickstart.toml" {
                    config.to_string_lossy().into_owned()
                } else {
                    arg.clone()
                }
            })
            .collect();
        common::run_portcullis(args)
    };
    let (ok, stdout, stderr) = run(lines[0]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("example: hello"), "{stdout}");
    let (ok, stdout, stderr) = run(lines[1]);
    assert!(!ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("`example__add` was not called: denied by authz")
            && stderr.contains("policies=quickstart-no-add"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run(lines[2]);
    assert!(ok, "{stdout}{stderr}");
    let calls: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("tools/call"))
        .collect();
    assert_eq!(calls.len(), 2, "{stdout}");
    assert!(
        calls[0].contains("example:echo") && calls[0].contains("allow"),
        "{stdout}"
    );
    assert!(
        calls[1].contains("example:add") && calls[1].contains("deny"),
        "{stdout}"
    );
}

/// A shell line's words: spaces split them, single quotes keep theirs.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}
