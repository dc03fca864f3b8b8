//! Every example config in `examples/` loads and builds its whole chain
//! (policies, secret-scanning rules, pins, plugins) as `serve` would, with
//! the example policy folder switched on too; container servers name only
//! images this repository builds.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use portcullis::config::{Config, UpstreamSpec};

/// The images the repository builds (`scripts/build-test-image.sh`'s tag).
fn images_built_here() -> Vec<String> {
    let script =
        std::fs::read_to_string(common::repo_root().join("scripts/build-test-image.sh")).unwrap();
    let tag = script
        .lines()
        .find_map(|line| line.strip_prefix("TAG=\"${1:-"))
        .and_then(|rest| rest.strip_suffix("}\""))
        .expect("the script's default tag");
    vec![tag.to_owned()]
}

fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(common::repo_root().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 2, "{configs:?}");
    configs
}

/// Builds the chain of `config` with its data folder moved to `scratch`
/// (the pins and locks of a test stay out of the repository).
fn build(mut config: Config, scratch: &Path) {
    config.proxy.data_dir = scratch.to_owned();
    config.pinning.data_dir = scratch.to_owned();
    config.pinning.file = scratch.join("pins.json");
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

        // The quickstart's commented `policies` line, switched on: the
        // example policy set loads under that config too.
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("# policies = \"../policies\"") {
            let enabled = path.with_file_name(format!(
                ".{}-with-policies.toml",
                path.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(
                &enabled,
                text.replace("# policies = \"../policies\"", "policies = \"../policies\""),
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
