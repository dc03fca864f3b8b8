//! `portcullis doctor`: what the Docker engine, the images, the servers
//! and the plugins look like from here, one check after the other, each
//! result line printed as it comes.

use bollard::Docker;

use super::progress::Progress;
use super::servers::as_text;
use crate::config::{Config, ContainerSpec, ServerConfig, UpstreamSpec};
use crate::upstream::container::{self, describe, engine, engine_address};
use crate::upstream::oci::shown;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
    /// The check under way, on a terminal.
    progress: Progress,
}

impl Report {
    /// Says which check runs now (on a terminal, until its result line).
    fn checking(&self, what: &str) {
        self.progress.relabel(format!("checking {what}"));
    }

    fn line(&mut self, level: Level, what: &str, detail: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        // Details quote the engine, registries, images and plugins: each
        // is one line, with nothing a terminal acts on.
        self.progress.println(&format!(
            "{tag}  {what}: {}",
            crate::protocol::shown(detail.as_ref())
        ));
    }
}

/// Checks the engine and every server; returns whether everything needed is
/// in place (warnings do not count against it).
pub async fn doctor(config: &Config) -> bool {
    let mut report = Report {
        failed: false,
        progress: Progress::step("checking the config"),
    };
    report.line(
        Level::Ok,
        "config",
        format!(
            "{} ({} servers, {} clients)",
            config.file.display(),
            config.servers.len(),
            config.clients.len()
        ),
    );
    let containers: Vec<_> = config
        .servers
        .iter()
        .filter_map(|server| match &server.kind {
            UpstreamSpec::Container(spec) => Some((server.name.as_str(), &**spec)),
            _ => None,
        })
        .collect();
    // The engine only matters, and is only asked, when a server needs it.
    if !containers.is_empty()
        && let Some(docker) = check_engine(&mut report).await
    {
        check_engine_info(docker, &mut report).await;
        check_images(docker, &containers, &mut report).await;
    }
    check_bridge(config, &mut report);
    check_session_keys(config, &mut report);
    check_vault_keys(config, &mut report);
    for server in &config.servers {
        check_server(server, &mut report);
    }
    check_plugins(config, &mut report);
    !report.failed
}

/// The engine answers, and which one it is.
async fn check_engine(report: &mut Report) -> Option<&'static Docker> {
    report.checking("the docker engine");
    let docker = match engine().await {
        Ok(docker) => docker,
        Err(err) => {
            report.line(Level::Fail, "docker engine", err);
            return None;
        }
    };
    match docker.version().await {
        Ok(version) => report.line(
            Level::Ok,
            "docker engine",
            format!(
                "{} (API {}) at {}",
                version.version.unwrap_or_default(),
                version.api_version.unwrap_or_default(),
                engine_address()
            ),
        ),
        Err(err) => report.line(Level::Fail, "docker engine", describe(&err)),
    }
    Some(docker)
}

/// What the engine offers the sandbox: cgroups, seccomp, user namespaces.
async fn check_engine_info(docker: &Docker, report: &mut Report) {
    let info = match docker.info().await {
        Ok(info) => info,
        Err(err) => {
            report.line(Level::Warn, "docker engine info", describe(&err));
            return;
        }
    };
    report.line(
        Level::Ok,
        "cgroups",
        format!(
            "v{} ({} driver)",
            as_text(&info.cgroup_version),
            as_text(&info.cgroup_driver)
        ),
    );
    let security = info.security_options.unwrap_or_default();
    if security.iter().any(|o| o.contains("name=seccomp")) {
        report.line(
            Level::Ok,
            "seccomp",
            "supported; containers keep Docker's default profile",
        );
    } else {
        report.line(
            Level::Warn,
            "seccomp",
            "the engine reports no seccomp support: containers run without a syscall filter",
        );
    }
    if security.iter().any(|o| o.contains("name=userns")) {
        report.line(
            Level::Ok,
            "user namespaces",
            "the engine remaps container users",
        );
    } else {
        let kernel = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
        report.line(
            Level::Warn,
            "user namespaces",
            if kernel {
                "supported by the kernel but not enabled in the engine (userns-remap): uid 65534 in a container is 65534 on the host"
            } else {
                "not available: uid 65534 in a container is 65534 on the host"
            },
        );
    }
}

/// Each container server's image is in the engine (with its pinned digest),
/// or will be pulled at start.
async fn check_images(docker: &Docker, containers: &[(&str, &ContainerSpec)], report: &mut Report) {
    for (name, spec) in containers {
        let what = format!("server `{name}`");
        report.checking(&format!("the image of `{name}` ({})", spec.image));
        match container::ensure_image_present(docker, spec).await {
            Ok(image) => {
                report.line(
                    Level::Ok,
                    &what,
                    format!(
                        "image `{}` present ({})",
                        spec.image,
                        image.id.as_deref().unwrap_or_default()
                    ),
                );
                if spec.label.is_some() {
                    check_label(spec, &image, &what, report);
                }
            }
            Err(container::Missing::No(message))
                if spec.pull == crate::config::PullPolicy::Missing =>
            {
                report.line(
                    Level::Warn,
                    &what,
                    format!("{message}; it will be pulled at start (`pull = \"missing\"`)"),
                )
            }
            Err(err) => report.line(Level::Fail, &what, err.into_message()),
        }
    }
}

/// What the label of a `docker://` server's image asks, read as its first
/// start will read it: the command and environment it runs with, or why
/// it would be refused (root, a network, a secret not given, no label).
/// The label is the image author's text: shown escaped.
fn check_label(
    spec: &ContainerSpec,
    image: &bollard::models::ImageInspect,
    what: &str,
    report: &mut Report,
) {
    let label = image
        .config
        .as_ref()
        .and_then(|config| config.labels.as_ref())
        .and_then(|labels| labels.get(crate::config::catalog::METADATA_LABEL));
    match crate::config::from_label(spec, label.map(String::as_str)) {
        Ok(resolved) => {
            let env: Vec<&str> = resolved.env.keys().map(String::as_str).collect();
            report.line(
                Level::Ok,
                what,
                shown(&format!(
                    "its label runs it with arguments {:?} and environment {env:?}, under the hardened profile",
                    resolved.args
                )),
            );
        }
        Err(message) => report.line(Level::Fail, what, shown(&message)),
    }
}

/// The bridge binary that FIFO servers run, if one is configured.
fn check_bridge(config: &Config, report: &mut Report) {
    let Some(bridge) = &config.proxy.bridge else {
        return;
    };
    match std::fs::metadata(bridge) {
        Ok(meta) if meta.is_file() => report.line(
            Level::Ok,
            "bridge",
            format!("{} (stdio through FIFOs)", bridge.display()),
        ),
        _ => report.line(
            Level::Fail,
            "bridge",
            format!(
                "{} is missing: build it with scripts/build-test-image.sh (target/static/portcullis-bridge)",
                bridge.display()
            ),
        ),
    }
}

/// The keys that seal session ids (`[proxy] session_keys`) can be read and
/// are keys, as `serve` will need them.
fn check_session_keys(config: &Config, report: &mut Report) {
    let keys = &config.proxy.session_keys;
    match crate::downstream::sealed::Sealer::load(keys, config.proxy.session_max_age) {
        Ok(None) => {}
        Ok(Some(_)) => report.line(
            Level::Ok,
            "session keys",
            format!(
                "{} key{} (the first seals new sessions): any replica with one of them serves this one's sessions",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" }
            ),
        ),
        Err(error) => report.line(Level::Fail, "session keys", error.to_string()),
    }
}

/// The keys that seal users' tokens (`[vault] keys`) can be read and are
/// keys, and what the vault holds opens under them.
fn check_vault_keys(config: &Config, report: &mut Report) {
    if config.vault.keys.is_empty() {
        return;
    }
    let vault = match crate::signin::vault::Vault::of(config) {
        Ok(vault) => vault,
        Err(error) => return report.line(Level::Fail, "vault keys", error.to_string()),
    };
    match vault.list() {
        Ok(entries) => {
            let unopened = entries.iter().filter(|entry| entry.is_err()).count();
            let level = if unopened == 0 {
                Level::Ok
            } else {
                Level::Warn
            };
            report.line(
                level,
                "vault keys",
                format!(
                    "{} key{}; {} sign-in{} kept, {unopened} of them not opening under these keys",
                    config.vault.keys.len(),
                    if config.vault.keys.len() == 1 {
                        ""
                    } else {
                        "s"
                    },
                    entries.len(),
                    if entries.len() == 1 { "" } else { "s" },
                ),
            );
        }
        Err(error) => report.line(Level::Fail, "vault keys", error.to_string()),
    }
}

/// A server's sandbox (or the lack of one), its command, its secrets.
fn check_server(server: &ServerConfig, report: &mut Report) {
    let what = format!("server `{}`", server.name);
    report.checking(&what);
    if let Some(resolved) = &server.resolved {
        report.line(Level::Ok, &what, format!("resolves {}", resolved.summary));
    }
    match &server.kind {
        UpstreamSpec::Container(spec) => {
            let relaxations = spec.sandbox.relaxations();
            let dangers = spec.sandbox.dangers();
            if relaxations.is_empty() {
                report.line(Level::Ok, &what, "hardened profile, no relaxations");
            } else {
                let level = if dangers.is_empty() {
                    Level::Ok
                } else {
                    Level::Warn
                };
                report.line(level, &what, format!("relaxed: {}", relaxations.join(", ")));
            }
            for danger in dangers {
                report.line(Level::Warn, &what, format!("DANGEROUS (allowed): {danger}"));
            }
        }
        UpstreamSpec::Process(spec) => {
            report.line(
                Level::Warn,
                &what,
                format!(
                    "UNSANDBOXED: `{}` runs with the proxy's own rights",
                    spec.command
                ),
            );
            if !command_exists(&spec.command) {
                report.line(
                    Level::Fail,
                    &what,
                    format!("command `{}` not found", spec.command),
                );
            }
        }
        UpstreamSpec::Remote(_) => report.line(Level::Ok, &what, "remote server over HTTP"),
    }
    for (key, reference) in &server.secrets {
        if let Err(err) = reference.resolve() {
            report.line(Level::Fail, &what, format!("secret `{key}`: {err}"));
        }
    }
}

/// Each WASM plugin loads, speaks our interface version and accepts its
/// config, as at start-up.
fn check_plugins(config: &Config, report: &mut Report) {
    let plugins: Vec<&crate::config::PluginConfig> = config
        .chain
        .iter()
        .filter_map(|entry| match entry {
            crate::config::ChainEntry::Wasm(plugin) => Some(&**plugin),
            _ => None,
        })
        .collect();
    if plugins.is_empty() {
        return;
    }
    let runtime = match crate::interceptors::wasm::Runtime::new(&plugins) {
        Ok(runtime) => runtime,
        Err(err) => {
            report.line(Level::Fail, "plugins", err.to_string());
            return;
        }
    };
    for plugin in plugins {
        let what = format!("plugin {}", plugin.name);
        report.checking(&format!("{what} (compiling it)"));
        match crate::interceptors::wasm::Plugin::load(
            runtime.clone(),
            plugin,
            config.limits.max_message_bytes,
            &config.proxy.namespace_separator,
        ) {
            Ok(loaded) => report.line(
                Level::Ok,
                &what,
                format!(
                    "{} (sha256 {}…) speaks {} and accepts its config; {} ms per call, {} MiB",
                    plugin.path.display(),
                    &loaded.sha256()[..12],
                    crate::interceptors::wasm::INTERFACE,
                    plugin.timeout.as_millis(),
                    plugin.memory / (1024 * 1024)
                ),
            ),
            Err(err) => report.line(Level::Fail, &what, err.to_string()),
        }
    }
}

/// A command with a `/` is a path; a bare name is looked up in `PATH`.
fn command_exists(command: &str) -> bool {
    if command.contains('/') {
        return std::path::Path::new(command).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}
