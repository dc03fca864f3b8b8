//! `portcullis doctor` and `portcullis servers status`: what the Docker
//! engine and the configured servers look like from here.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Format;
use super::progress::Progress;
use crate::config::{Config, UpstreamSpec};
use crate::upstream::container::{
    self, LABEL_CLIENT, LABEL_OWNER, LABEL_RESTARTS, LABEL_SERVER, describe, engine, engine_address,
};

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
        self.progress
            .println(&format!("{tag}  {what}: {}", detail.as_ref()));
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
            UpstreamSpec::Container(spec) => Some((server.name.as_str(), spec)),
            _ => None,
        })
        .collect();

    let engine = if containers.is_empty() {
        None
    } else {
        report.checking("the docker engine");
        match engine().await {
            Ok(docker) => Some(docker),
            Err(err) => {
                report.line(Level::Fail, "docker engine", err);
                None
            }
        }
    };
    if let Some(docker) = engine {
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
        match docker.info().await {
            Ok(info) => {
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
            Err(err) => report.line(Level::Warn, "docker engine info", describe(&err)),
        }
        for (name, spec) in &containers {
            let what = format!("server `{name}`");
            report.checking(&format!("the image of `{name}` ({})", spec.image));
            match container::ensure_image_present(docker, spec).await {
                Ok(image) => report.line(
                    Level::Ok,
                    &what,
                    format!(
                        "image `{}` present ({})",
                        spec.image,
                        image.id.unwrap_or_default()
                    ),
                ),
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

    if let Some(bridge) = &config.proxy.bridge {
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
    for server in &config.servers {
        let what = format!("server `{}`", server.name);
        report.checking(&what);
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
    check_plugins(config, &mut report);
    !report.failed
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

/// An engine enum as the engine spells it.
fn as_text<T: serde::Serialize>(value: &Option<T>) -> String {
    value
        .as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A command with a `/` is a path; a bare name is looked up in `PATH`.
fn command_exists(command: &str) -> bool {
    if command.contains('/') {
        return std::path::Path::new(command).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Every server, and for container servers each of their containers: id,
/// state, uptime, restarts, and the proxy that owns it.
pub async fn servers_status(config: &Config, format: Format) -> anyhow::Result<()> {
    let any_container = config
        .servers
        .iter()
        .any(|s| matches!(s.kind, UpstreamSpec::Container(_)));
    let docker = if any_container {
        Some(engine().await.map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let mut rows = Vec::new();
    for server in &config.servers {
        let (UpstreamSpec::Container(_), Some(docker)) = (&server.kind, docker) else {
            rows.push(json!({
                "name": server.name,
                "kind": server.kind.kind_name(),
                "state": "n/a",
                "note": "runs inside a proxy process; ask that proxy",
            }));
            continue;
        };
        let found = container::labelled(docker, &format!("{LABEL_SERVER}={}", server.name))
            .await
            .map_err(anyhow::Error::msg)?;
        if found.is_empty() {
            rows.push(json!({
                "name": server.name,
                "kind": "container",
                "state": "stopped",
                "note": "no container: not started yet (lazy), stopped when idle, or no proxy runs",
            }));
        }
        for summary in found {
            let labels = summary.labels.unwrap_or_default();
            let state = as_text(&summary.state);
            rows.push(json!({
                "name": server.name,
                "kind": "container",
                "state": state,
                "container": summary.id.as_deref().map(container::short),
                "uptime_s": summary.created.map(|created| (now - created).max(0)),
                "restarts": labels.get(LABEL_RESTARTS).and_then(|r| r.parse::<u64>().ok()),
                "owner": labels.get(LABEL_OWNER),
                "client": labels.get(LABEL_CLIENT),
            }));
        }
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            println!(
                "{:<20} {:<10} {:<10} {:<13} {:>9} {:>8}  {:<12} OWNER",
                "NAME", "KIND", "STATE", "CONTAINER", "UPTIME", "RESTARTS", "CLIENT"
            );
            for row in &rows {
                let text = |key: &str| match &row[key] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => "-".into(),
                };
                let uptime = row["uptime_s"]
                    .as_i64()
                    .map_or_else(|| "-".into(), humanize_seconds);
                let client = match &row["client"] {
                    Value::String(client) => client.clone(),
                    _ if row["kind"] == "container" && row.get("note").is_none() => "(all)".into(),
                    _ => "-".into(),
                };
                println!(
                    "{:<20} {:<10} {:<10} {:<13} {:>9} {:>8}  {:<12} {}",
                    text("name"),
                    text("kind"),
                    text("state"),
                    text("container"),
                    uptime,
                    text("restarts"),
                    client,
                    if row.get("note").is_some() {
                        text("note")
                    } else {
                        text("owner")
                    }
                );
            }
        }
    }
    Ok(())
}

fn humanize_seconds(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
