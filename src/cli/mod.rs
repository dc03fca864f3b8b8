//! The `portcullis` command line.

mod audit;
mod audit_keys;
mod containers;
mod init;
mod pins;
mod plugin;
mod policy;
mod progress;
mod redact;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::audit::{Audit, SledStorage};
use crate::chain::{ClientIdentity, Transport};
use crate::config::{ChainEntry, Config, Durability, UpstreamSpec};
use crate::downstream;
use crate::gateway::{Gateway, Outlet};
use crate::interceptors;
use crate::upstream::Status;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A policy-enforcing security proxy for MCP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the proxy's log (on stderr) is written: `text` for people,
    /// `json` (one object per line) for log collectors. Also
    /// `PORTCULLIS_LOG_FORMAT`.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PORTCULLIS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over streamable HTTP on `[proxy] listen` (and stdio with --stdio).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Also serve one client on stdin/stdout.
        #[arg(long, requires = "client")]
        stdio: bool,
        /// The client served on stdio (a `[[clients]]` name).
        #[arg(long)]
        client: Option<String>,
    },
    /// Serve one client over stdin/stdout (for Claude Desktop, Cursor, VS Code, …).
    Stdio {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's name from `[[clients]]`.
        #[arg(long)]
        client: String,
    },
    /// Check the Docker engine, the images, the servers and their sandboxes.
    Doctor {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The configured servers.
    Servers {
        #[command(subcommand)]
        command: ServersCommand,
    },
    /// The tools clients see through the proxy.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Check, test and explain Cedar policies.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Run the secret-scanning rules over a file, list the rules.
    Redact {
        #[command(subcommand)]
        command: redact::RedactCommand,
    },
    /// Check a WASM plugin before it goes into a chain.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Query and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: Box<audit::AuditCommand>,
    },
    /// Write a commented config, a policy folder with the schema, a starter
    /// policy set and its tests (never over existing files).
    Init {
        /// The folder (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the JSON an MCP client (Claude, Cursor, VS Code) needs to
    /// connect through the proxy.
    ClientConfig {
        #[arg(value_enum)]
        app: init::ClientApp,
        /// The client's name from `[[clients]]`.
        #[arg(long)]
        client: String,
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
        /// `stdio`: the client starts `portcullis stdio`; `http`: it
        /// connects to a running `portcullis serve` with its token.
        #[arg(long, value_enum, default_value = "stdio")]
        transport: init::Via,
    },
}

#[derive(Subcommand)]
enum ServersCommand {
    /// List the configured servers, how they run, and their sandboxing.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Each server's containers: id, state, uptime, restarts, owning proxy.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// Start the servers and list the tools a client would see.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Show what this `[[clients]]` entry would see under the policies
        /// (without it: every tool the servers offer).
        #[arg(long)]
        client: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The pinned tool definitions, those awaiting approval, and what changed.
    Pins {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Pin what the proxy saw of these tools (SERVER__TOOL), after review.
    Approve {
        #[arg(long, short)]
        config: PathBuf,
        /// The tools, by their namespaced names.
        tools: Vec<String>,
        /// Every tool of this server that awaits approval.
        #[arg(long, value_name = "SERVER")]
        all: Option<String>,
        /// Who approves (recorded in the pin file and the audit log;
        /// default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        /// The definition reviewed, by (a prefix of) its SHA-256 as `tools
        /// pins` shows it: refused if the server changed it since.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

/// Entry point of the binary: errors are printed once, here.
pub fn main() -> ExitCode {
    // Before anything is written: whatever this process creates (the
    // audit store, pins, FIFO folders, a scaffolded config) is private.
    crate::private_dir::restrict_umask();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let format = cli.log_format;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // In JSON mode the reason the proxy stopped is a JSON line too.
        Err(err) if format == LogFormat::Json => {
            tracing::error!(error = %format!("{err:#}"), "portcullis stopped");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // rmcp logs whole messages at debug, and bollard whole request bodies
    // (container environments, secrets included): both are capped at warn
    // whatever PORTCULLIS_LOG says, even for a more specific directive such
    // as `bollard::docker=trace`, so arguments and secrets never reach the log.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let cap = tracing_subscriber::filter::filter_fn(|meta| {
        let chatty = ["rmcp", "bollard"].iter().any(|name| {
            meta.target()
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
        !chatty || *meta.level() <= tracing::Level::WARN
    });
    // Without a hint the cap would let every `log` record of a dependency
    // (cranelift logs each compiled function at trace) through to the
    // filters: seconds per plugin at startup.
    let most =
        tracing_subscriber::layer::Filter::<tracing_subscriber::Registry>::max_level_hint(&filter)
            .unwrap_or(tracing::level_filters::LevelFilter::TRACE);
    let cap = cap.with_max_level_hint(most);
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .boxed(),
        // One JSON object per line: time, level, message and fields flat
        // at the top level, the span path under `spans`.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_target(true)
            .boxed(),
    };
    let layer = layer.with_filter(filter).with_filter(cap);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            stdio,
            client,
        } => {
            let config = load(&config)?;
            let stdio_client = match (stdio, client) {
                (true, Some(name)) => Some(client_identity(&config, &name)?),
                _ => None,
            };
            if config.proxy.listen.is_none() && stdio_client.is_none() {
                bail!(
                    "{}: nothing to serve: set `[proxy] listen` for HTTP, or pass `--stdio --client NAME`",
                    config.file.display()
                );
            }
            serve(config, stdio_client).await
        }
        Command::Stdio { config, client } => {
            let mut config = load(&config)?;
            let identity = client_identity(&config, &client)?;
            // `stdio` serves exactly one client; HTTP stays off.
            config.proxy.listen = None;
            serve(config, Some(identity)).await
        }
        Command::Doctor { config } => {
            let config = load(&config)?;
            if containers::doctor(&config).await {
                Ok(())
            } else {
                bail!("some checks failed (FAIL above)")
            }
        }
        Command::Servers {
            command: ServersCommand::List { config, format },
        } => {
            let config = load(&config)?;
            servers_list(&config, format);
            Ok(())
        }
        Command::Servers {
            command: ServersCommand::Status { config, format },
        } => {
            let config = load(&config)?;
            containers::servers_status(&config, format).await
        }
        Command::Tools {
            command:
                ToolsCommand::List {
                    config,
                    client,
                    format,
                },
        } => {
            let config = load(&config)?;
            tools_list(config, client.as_deref(), format).await
        }
        Command::Tools {
            command: ToolsCommand::Pins { config, format },
        } => pins::list(&load(&config)?, format),
        Command::Tools {
            command:
                ToolsCommand::Approve {
                    config,
                    tools,
                    all,
                    by,
                    sha256,
                },
        } => {
            let config = load(&config)?;
            pins::approve(
                &config,
                &tools,
                all.as_deref(),
                by.as_deref(),
                sha256.as_deref(),
            )
            .await
        }
        Command::Policy { command } => policy::run(command),
        Command::Redact { command } => redact::run(command),
        Command::Plugin { command } => plugin::run(command),
        Command::Audit { command } => audit::run(*command).await,
        Command::Init { dir } => init::init(&dir),
        Command::ClientConfig {
            app,
            client,
            config,
            transport,
        } => {
            let snippet = init::client_config(&load(&config)?, app, &client, transport)?;
            println!("{}", serde_json::to_string_pretty(&snippet)?);
            Ok(())
        }
    }
}

/// SHA-256 in hex (of a config file, of a token).
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn client_identity(config: &Config, name: &str) -> anyhow::Result<ClientIdentity> {
    let client = config.client(name).with_context(|| {
        format!(
            "{}: client `{name}` is not defined; add a `[[clients]]` entry with that name",
            config.file.display()
        )
    })?;
    Ok(
        ClientIdentity::new(&client.name, &client.groups)
            .with_attributes(client.attributes.clone()),
    )
}

/// The `proxy_start` record (what runs: version, role, the config's digest,
/// the policy set in force) and a `sandbox_relaxed` record per server that
/// runs with less than the hardened profile.
fn record_start(
    gateway: &Gateway,
    role: &str,
    config_sha256: Option<String>,
    policies: Option<&crate::interceptors::authz::PolicyEngine>,
    plugins: &[Arc<interceptors::Plugin>],
) {
    let mut start = crate::audit::AuditRecord::event("proxy_start", "allow");
    let store = policies.map(|engine| engine.current());
    start.policy_set = store.as_ref().map(|s| s.id.to_string());
    let config = gateway.config();
    start.detail = Some(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": role,
        "config_sha256": config_sha256,
        "policies": store.as_ref().map(|s| s.policy_count()),
        "servers": config.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
    }));
    // One task commits them all, so `proxy_start` is first.
    let mut records = vec![start];
    for server in &config.servers {
        let (relaxations, dangers): (Vec<String>, Vec<String>) = match &server.kind {
            UpstreamSpec::Process(_) => (
                vec!["unsandboxed: a process server runs with the proxy's own rights".into()],
                Vec::new(),
            ),
            UpstreamSpec::Container(spec) => (
                spec.sandbox
                    .relaxations()
                    .into_iter()
                    .map(|r| r.to_string())
                    .collect(),
                spec.sandbox
                    .dangers()
                    .into_iter()
                    .map(|d| d.to_string())
                    .collect(),
            ),
            UpstreamSpec::Remote(_) => (Vec::new(), Vec::new()),
        };
        if relaxations.is_empty() && dangers.is_empty() {
            continue;
        }
        let mut record = crate::audit::AuditRecord::event("sandbox_relaxed", "allow");
        record.server = Some(server.name.clone());
        record.detail = Some(serde_json::json!({
            "relaxations": relaxations,
            "dangers": dangers,
        }));
        records.push(record);
    }
    for plugin in plugins {
        let config = plugin.config();
        let mut record = crate::audit::AuditRecord::event("plugin_loaded", "allow");
        record.target = Some(config.name.clone());
        record.detail = Some(serde_json::json!({
            "path": config.path.display().to_string(),
            "sha256": plugin.sha256(),
            "methods": config.methods,
            "tools": config.tools,
            "on_error": match config.on_error {
                crate::config::OnError::Deny => "deny",
                crate::config::OnError::Continue => "continue",
            },
            "instance": match config.instance {
                crate::config::InstanceMode::Pooled => "pooled",
                crate::config::InstanceMode::PerCall => "per-call",
            },
            "timeout_ms": config.timeout.as_millis() as u64,
            "fuel": config.fuel,
            "memory_bytes": config.memory,
        }));
        records.push(record);
    }
    gateway.record_events(records);
}

/// The `policy_reload` record of a reload: `allow` when applied, `error`
/// when refused (the diagnostics, cut to 4 KiB, as the reason).
fn reload_record(reload: &crate::interceptors::authz::ReloadReport) -> crate::audit::AuditRecord {
    let decision = if reload.rejected.is_some() {
        "error"
    } else {
        "allow"
    };
    let mut record = crate::audit::AuditRecord::event("policy_reload", decision);
    record.policy_set = Some(reload.policy_set.to_string());
    record.reason = reload.rejected.as_ref().map(|text| {
        let mut end = text.len().min(4096);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    });
    record.detail = Some(serde_json::json!({
        "previous": &*reload.previous,
        "policies": reload.policies,
    }));
    record
}

fn announce_sandboxing(config: &Config) {
    for server in &config.servers {
        match &server.kind {
            UpstreamSpec::Process(spec) => tracing::warn!(
                server = %server.name,
                command = %spec.command,
                "UNSANDBOXED: process server runs with the proxy's own rights"
            ),
            UpstreamSpec::Container(spec) => {
                for relaxation in spec.sandbox.relaxations() {
                    tracing::warn!(server = %server.name, relaxation, "container sandbox relaxed");
                }
                for danger in spec.sandbox.dangers() {
                    tracing::warn!(server = %server.name, danger, "DANGEROUS: allowed by `allow_dangerous = true`");
                }
            }
            UpstreamSpec::Remote(_) => {}
        }
    }
}

/// Hands each event of a broadcast to `on_event` until the sender is gone;
/// events lost to a full channel are logged loudly (`what`: whose events).
fn forward_events<E: Clone + Send + 'static>(
    mut events: tokio::sync::broadcast::Receiver<E>,
    what: &'static str,
    mut on_event: impl FnMut(E) + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => on_event(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "AUDIT: {what} events were dropped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// The audit record of a plugin's breaker event.
fn plugin_record(event: &interceptors::wasm::PluginEvent) -> crate::audit::AuditRecord {
    use interceptors::wasm::PluginEvent;
    match event {
        PluginEvent::BreakerOpened {
            plugin,
            failures,
            last_error,
            cooldown,
        } => {
            let mut record = crate::audit::AuditRecord::event("plugin_circuit_open", "error");
            record.target = Some(plugin.clone());
            record.decided_by = Some(format!("wasm:{plugin}"));
            record.reason = Some(format!(
                "{failures} failures in a row (last: {last_error}): not called for {} ms",
                cooldown.as_millis()
            ));
            record
        }
        PluginEvent::BreakerClosed { plugin } => {
            let mut record = crate::audit::AuditRecord::event("plugin_circuit_closed", "allow");
            record.target = Some(plugin.clone());
            record.decided_by = Some(format!("wasm:{plugin}"));
            record
        }
    }
}

/// Containers that a killed proxy left on this host are removed before any
/// new one starts.
async fn remove_orphaned_containers(config: &Config) {
    let any = config
        .servers
        .iter()
        .any(|server| matches!(server.kind, UpstreamSpec::Container(_)));
    if !any {
        return;
    }
    let fifos =
        crate::upstream::container::remove_orphaned_fifos(&config.proxy.data_dir.join("run"));
    if fifos > 0 {
        tracing::warn!(
            count = fifos,
            "removed FIFO folders left behind by a proxy that died"
        );
    }
    match crate::upstream::container::remove_orphans().await {
        Ok(0) => {}
        Ok(count) => tracing::warn!(count, "removed containers left behind by a proxy that died"),
        Err(err) => tracing::warn!(error = err, "cannot look for orphaned containers"),
    }
}

async fn start_gateway(config: Config) -> anyhow::Result<Arc<Gateway>> {
    let (gateway, events, _, _, _) = build_gateway(config, None)?;
    start(&gateway, events).await;
    Ok(gateway)
}

type Built = (
    Arc<Gateway>,
    tokio::sync::mpsc::Receiver<crate::upstream::UpstreamEvent>,
    Option<Arc<interceptors::PolicyEngine>>,
    Option<Arc<interceptors::Pinning>>,
    Vec<Arc<interceptors::Plugin>>,
);

/// The gateway and its chain; fails (before any server starts) when an
/// interceptor cannot be built, such as a policy folder with errors.
fn build_gateway(config: Config, audit: Option<Audit>) -> anyhow::Result<Built> {
    let config = Arc::new(config);
    let built = interceptors::build_chain(&config).with_context(|| {
        format!(
            "{}: cannot build the interceptor chain",
            config.file.display()
        )
    })?;
    let (gateway, events) = Gateway::new(config, built.chain, audit);
    gateway.scrub_with(built.scrubber);
    if built.keep_arguments {
        gateway.keep_arguments();
    }
    gateway.limit_access(built.access);
    Ok((
        gateway,
        events,
        built.policies,
        built.pinning,
        built.plugins,
    ))
}

async fn start(
    gateway: &Arc<Gateway>,
    events: tokio::sync::mpsc::Receiver<crate::upstream::UpstreamEvent>,
) {
    remove_orphaned_containers(gateway.config()).await;
    gateway.start(events).await;
}

async fn serve(config: Config, stdio_client: Option<ClientIdentity>) -> anyhow::Result<()> {
    announce_sandboxing(&config);
    let listen = config.proxy.listen;
    // The signal handlers come first: a SIGTERM while servers start must
    // still remove every container that was started.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // The audit log opens first: no exchange happens that it cannot record.
    // One store (and hash chain) per proxy role: several stdio proxies may
    // share a config, each with its own log.
    let role = match (&config.proxy.listen, &stdio_client) {
        (None, Some(client)) => format!("stdio-{}", client.name),
        _ => "serve".to_owned(),
    };
    // The data folder is checked before anything in it is opened: one that
    // another user owns or may write to is refused.
    let narrowed = crate::private_dir::prepare(&config.proxy.data_dir)
        .with_context(|| format!("{}: `proxy.data_dir`", config.file.display()))?;
    if !narrowed.is_empty() {
        tracing::warn!(
            data_dir = %config.proxy.data_dir.display(),
            count = narrowed.len(),
            "closed the data folder to other users (it was readable by them): folders are now 0700, files 0600"
        );
    }
    let audit_dir = config.proxy.data_dir.join("audit");
    let durability = config.audit.durability;
    let flush_every = match durability {
        Durability::Durable => None,
        Durability::Buffered => Some(std::time::Duration::from_millis(10)),
    };
    let cannot = || format!("{}: cannot open the audit log", config.file.display());
    let store = SledStorage::open_for(&audit_dir, &role, flush_every).with_context(cannot)?;
    let sealing = audit_keys::sealing(&config, &store).with_context(cannot)?;
    if sealing.seal.is_keyed() || sealing.signer.is_some() {
        tracing::info!(
            keyed = sealing.seal.is_keyed(),
            signed_checkpoints = sealing.signer.is_some(),
            "the audit chain is keyed and/or its head signed"
        );
    }
    let audit = Audit::start_sealed(
        store,
        durability == Durability::Durable,
        config.audit.retention,
        sealing,
    )
    .with_context(cannot)?;
    let config_sha256 = std::fs::read(&config.file)
        .map(|bytes| sha256_hex(&bytes))
        .ok();
    let (gateway, events, policies, pinning, plugins) = build_gateway(config, Some(audit))?;
    if let Some(traces) = &gateway.config().observability.traces {
        let (tracer, queue) = crate::traces::Tracer::new(traces.sample_ratio);
        let exporter =
            crate::traces::Exporter::new(traces, tracer.counters()).with_context(|| {
                format!("{}: cannot export traces", gateway.config().file.display())
            })?;
        tracing::info!(endpoint = %traces.endpoint, sample_ratio = traces.sample_ratio, "exporting traces over OTLP/HTTP");
        gateway.trace_with(tracer, exporter.spawn(queue));
    }
    record_start(
        &gateway,
        &role,
        config_sha256,
        policies.as_deref(),
        &plugins,
    );
    for plugin in &plugins {
        // Breaker events go to the audit log.
        let recorder = gateway.clone();
        forward_events(plugin.subscribe(), "plugin", move |event| {
            recorder.record_event(plugin_record(&event));
        });
    }
    if let Some(pinning) = &pinning {
        // Pin events go to the audit log; approvals reach the sessions as
        // `tools/list_changed` (a withheld tool may be back).
        let recorder = gateway.clone();
        let separator = recorder.config().proxy.namespace_separator.clone();
        forward_events(pinning.subscribe(), "pin", move |event| {
            if matches!(
                event,
                crate::interceptors::pinning::PinEvent::Reloaded { .. }
            ) {
                recorder.announce(crate::gateway::ListKind::Tools);
            }
            recorder.record_event(pins::record(&event, &separator));
        });
        let poll = gateway.config().proxy.policy_poll;
        tokio::spawn(pinning.clone().watch(poll, gateway.shutdown_token()));
    }
    match &policies {
        Some(engine) => {
            let mut reloads = engine.subscribe();
            let recorder = gateway.clone();
            tokio::spawn(async move {
                while let Ok(reload) = reloads.recv().await {
                    recorder.record_event(reload_record(&reload));
                }
            });
            let store = engine.current();
            tracing::info!(
                dir = %engine.dir().display(),
                policy_set = %store.id,
                policies = store.policy_count(),
                "policies loaded"
            );
            if store.policy_count() == 0 {
                tracing::warn!("the policy folder has no policies: every request is denied");
            }
            let poll = gateway.config().proxy.policy_poll;
            tokio::spawn(engine.clone().watch(poll, gateway.shutdown_token()));
        }
        None => tracing::warn!(
            "no `[proxy] policies`: every client may use every tool, prompt and resource"
        ),
    }
    tokio::select! {
        () = start(&gateway, events) => {}
        () = &mut signal => {
            tracing::info!("shutting down during start-up");
            gateway.stop().await;
            return Ok(());
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listen {
        let gateway = gateway.clone();
        // For the console's pages on policies and pins.
        let enforcement = downstream::http::Enforcement { policies, pinning };
        tasks.spawn(async move { downstream::http::serve(gateway, addr, enforcement).await });
    }
    let stdio_only = listen.is_none();
    if let Some(client) = stdio_client {
        let gateway = gateway.clone();
        tasks.spawn(async move { downstream::stdio::serve(gateway, client).await });
    }
    let result = tokio::select! {
        () = &mut signal => {
            tracing::info!("shutting down");
            Ok(())
        }
        // With stdio only, the end of stdin ends the proxy; with HTTP, a
        // transport ending means it failed.
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) if stdio_only => Ok(()),
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(anyhow::Error::new(err)),
            Err(err) => Err(anyhow::anyhow!("a transport task failed: {err}")),
        },
    };
    gateway.stop().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn servers_list(config: &Config, format: Format) {
    let rows: Vec<Value> = config
        .servers
        .iter()
        .map(|server| {
            let (target, sandbox) = match &server.kind {
                UpstreamSpec::Process(spec) => (spec.command.clone(), "UNSANDBOXED".to_owned()),
                UpstreamSpec::Remote(spec) => (redact_url(&spec.url), "remote".to_owned()),
                UpstreamSpec::Container(spec) => (spec.image.clone(), spec.sandbox.summary()),
            };
            json!({
                "name": server.name,
                "kind": server.kind.kind_name(),
                "target": target,
                "sandbox": sandbox,
                "timeout_ms": server.call_timeout.as_millis() as u64,
                // Names of the secrets only; never their values or sources.
                "secrets": server.secrets.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Format::Table => {
            println!("{:<20} {:<8} {:<12} TARGET", "NAME", "KIND", "SANDBOX");
            for row in &rows {
                println!(
                    "{:<20} {:<8} {:<12} {}",
                    row["name"].as_str().unwrap_or_default(),
                    row["kind"].as_str().unwrap_or_default(),
                    row["sandbox"].as_str().unwrap_or_default(),
                    row["target"].as_str().unwrap_or_default()
                );
            }
        }
    }
}

/// A URL without user info or query, which may carry credentials.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

struct Discard;

impl Outlet for Discard {
    fn deliver(&self, _message: Value, _related: Option<&Value>) -> bool {
        false
    }
}

async fn tools_list(
    mut config: Config,
    client: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let identity = match client {
        Some(name) => client_identity(&config, name)?,
        None => {
            // The operator's view: every tool the servers offer, whatever
            // the policies let any one client see.
            config.chain.retain(|entry| *entry != ChainEntry::Authz);
            config.proxy.policies = None;
            ClientIdentity::new("(operator)", &[])
        }
    };
    let schema_checked = config.chain.contains(&ChainEntry::Schema);
    let gateway = start_gateway(config).await?;
    let session = gateway.open_session(
        Arc::from("tools-list"),
        identity,
        Transport::Stdio,
        Arc::new(Discard),
    );
    let init = crate::protocol::request(
        json!(0),
        "initialize",
        json!({ "protocolVersion": crate::protocol::LATEST_VERSION, "capabilities": {}, "clientInfo": { "name": "portcullis-cli", "version": env!("CARGO_PKG_VERSION") } }),
    );
    let _ = gateway.handle(&session, init).await;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = cursor
            .as_ref()
            .map_or(json!({}), |c| json!({ "cursor": c }));
        let reply = gateway
            .handle(
                &session,
                crate::protocol::request(json!(1), "tools/list", params),
            )
            .await
            .unwrap_or(Value::Null);
        if let Some(error) = reply.get("error") {
            // Stopped first: no container may outlive the command.
            gateway.close_session(&session);
            gateway.stop().await;
            bail!(
                "tools/list failed: {}",
                error["message"].as_str().unwrap_or("unknown error")
            );
        }
        if let Some(page) = reply.pointer("/result/tools").and_then(Value::as_array) {
            tools.extend(page.iter().cloned());
        }
        match reply.pointer("/result/nextCursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let down: Vec<String> = gateway
        .upstreams()
        .iter()
        .filter_map(|u| match u.status() {
            Status::Ready(_) => None,
            other => Some(format!("{} ({other:?})", u.name())),
        })
        .collect();
    // Tools the `schema` interceptor withholds: their schemas do not
    // compile (the log says so too).
    let withheld: Vec<(String, String)> = if schema_checked {
        gateway
            .catalog()
            .tools
            .iter()
            .filter_map(|tool| {
                let problem = crate::interceptors::schema::problem_of(tool)?;
                Some((
                    tool["name"].as_str().unwrap_or_default().to_owned(),
                    problem,
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    // Tools pinning withholds (changed or unpinned definitions, poisoning
    // under `deny`); in the operator's view, whatever else is missing.
    let pin_withheld: Vec<String> = if client.is_none() {
        gateway
            .catalog()
            .tools
            .iter()
            .filter_map(|tool| tool["name"].as_str())
            .filter(|name| {
                !tools.iter().any(|t| t["name"] == *name)
                    && !withheld.iter().any(|(w, _)| w == name)
            })
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    gateway.close_session(&session);
    gateway.stop().await;
    for (name, problem) in &withheld {
        eprintln!("withheld: `{name}`: {problem}");
    }
    for name in &pin_withheld {
        eprintln!("withheld: `{name}`: its definition awaits approval (`portcullis tools pins`)");
    }
    for tool in &tools {
        if let Some(flags) = tool
            .pointer("/_meta/dev.portcullis~1poisoning")
            .and_then(Value::as_array)
        {
            let rules: Vec<&str> = flags.iter().filter_map(|f| f["rule"].as_str()).collect();
            eprintln!(
                "flagged: `{}`: poisoning rules {}",
                tool["name"].as_str().unwrap_or_default(),
                rules.join(", ")
            );
        }
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&tools).unwrap_or_default()
        ),
        Format::Table => {
            println!("{:<40} DESCRIPTION", "TOOL");
            for tool in &tools {
                let description: String = tool["description"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect();
                println!(
                    "{:<40} {description}",
                    tool["name"].as_str().unwrap_or_default()
                );
            }
        }
    }
    for server in down {
        eprintln!("warning: server {server} is not running; its tools are missing");
    }
    Ok(())
}
