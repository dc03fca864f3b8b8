//! The `portcullis` command line: the clap definitions and the dispatch
//! here; each command (or family of commands: `audit`, `policy`, …) in a
//! file of its own.

mod audit;
mod audit_fleet;
mod audit_keys;
mod audit_print;
mod catalogs;
mod doctor;
mod init;
mod launch;
mod oauth;
mod oauth_login;
mod pins;
mod plugin;
mod policy;
mod policy_replay;
mod profiles;
mod progress;
mod records;
mod redact;
mod registries;
mod reload;
mod serve;
mod servers;
mod tools;
mod tools_call;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::chain::ClientIdentity;
use crate::config::Config;

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
        /// Run under a profile (`profiles/NAME.toml`): its servers and tools
        /// only.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
    /// Serve one client over stdin/stdout (for Claude Desktop, Cursor, VS Code, …).
    Stdio {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's name from `[[clients]]`.
        #[arg(long)]
        client: String,
        /// Run under a profile (`profiles/NAME.toml`).
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
    /// Catalogs: the config's, and those in OCI registries (pull, push).
    Catalog {
        #[command(subcommand)]
        command: catalogs::CatalogCommand,
    },
    /// Signing users in to the remote servers behind the proxy: `oauth
    /// discover SERVER` shows what a server asks for.
    Oauth {
        #[command(subcommand)]
        command: oauth::OauthCommand,
    },
    /// Servers from MCP registries: pull the `server.json` of the config's
    /// `registry://` servers.
    Registry {
        #[command(subcommand)]
        command: registries::RegistryCommand,
    },
    /// Profiles: named sets of servers and their tools (`profiles/*.toml`).
    Profile {
        #[command(subcommand)]
        command: profiles::ProfileCommand,
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
    /// Check, test, explain and replay Cedar policies.
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
    /// Write a new key that seals session ids, so that replicas behind one
    /// balancer serve each other's sessions (`[proxy] session_keys`).
    SessionKey {
        /// The new file (never overwritten), readable by its owner only.
        #[arg(long)]
        out: PathBuf,
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
        /// The client's name from `[[clients]]` (not with `--transport
        /// oauth`, where the identity provider says who it is).
        #[arg(long)]
        client: Option<String>,
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
        /// `stdio`: the client starts `portcullis stdio`; `http`: it
        /// connects to a running `portcullis serve` with its token;
        /// `oauth`: it connects to `[oauth] resource` and signs in with the
        /// organisation's identity provider.
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
    /// Call one tool (SERVER__TOOL) through the whole chain, as a client
    /// would; the call is recorded (transport `cli`, store `cli-tools`).
    Call {
        #[arg(long, short)]
        config: PathBuf,
        /// The tool, by its namespaced name.
        tool: String,
        /// Its arguments, a JSON object (`-`: read from stdin, off the
        /// command line).
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        /// Call as this `[[clients]]` entry, under the policies (without it:
        /// as the operator, with no policy, recorded as `(operator)`).
        #[arg(long)]
        client: Option<String>,
    },
    /// Show one tool's definition as a client (or the operator) sees it.
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
        /// The tool, by its namespaced name.
        tool: String,
        #[arg(long)]
        client: Option<String>,
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
        // Each line escaped: an error may quote what a server, a plugin
        // or a database said. Lines of its own making stay lines, the
        // ones after the first indented.
        Err(err) => {
            let text = format!("{err:#}");
            for (at, line) in text.lines().enumerate() {
                let lead = if at == 0 { "error: " } else { "  " };
                eprintln!("{lead}{}", crate::protocol::shown(line));
            }
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
            .fmt_fields(text_fields())
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

/// How text logs write a message and its fields: each escaped
/// (`protocol::shown`), since they carry what servers, clients and plugins
/// wrote (a server's stderr line, its error, a tool's name); a record is
/// one line whatever they hold, with nothing a terminal acts on.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    ShownFields
}

/// [`text_fields`]: a message as itself, a string field quoted (its quotes
/// and backslashes escaped, as Debug would), any other field as its Debug
/// or Display form; each then escaped once.
struct ShownFields;

impl<'w> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'w>>
    for ShownFields
{
    type Visitor = ShownVisitor<'w>;

    fn make_visitor(&self, writer: tracing_subscriber::fmt::format::Writer<'w>) -> Self::Visitor {
        ShownVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

struct ShownVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl ShownVisitor<'_> {
    /// Writes `text` (escaped already) as the field's value.
    fn write(&mut self, field: &tracing::field::Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let gap = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{gap}{text}"),
            name => write!(self.writer, "{gap}{name}={text}"),
        };
    }
}

impl tracing::field::Visit for ShownVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let shown = crate::protocol::shown(value);
        if field.name() == "message" {
            self.write(field, &shown);
        } else {
            // Quoted: a value with spaces or `=` is still one field.
            self.write(field, &format!("\"{}\"", shown.replace('"', "\\\"")));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.write(field, &crate::protocol::shown(&format!("{value:?}")));
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for ShownVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for ShownVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            stdio,
            client,
            profile,
        } => {
            let before = reload::stamp_of(&config);
            let config = load_with(&config, profile.as_deref())?;
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
            serve::serve((config, before), stdio_client).await
        }
        Command::Profile { command } => profiles::run(command),
        Command::Catalog { command } => catalogs::run(command).await,
        Command::Registry { command } => registries::run(command).await,
        Command::Oauth { command } => oauth::run(command).await,
        Command::Stdio {
            config,
            client,
            profile,
        } => {
            let before = reload::stamp_of(&config);
            let mut config = load_with(&config, profile.as_deref())?;
            let identity = client_identity(&config, &client)?;
            // `stdio` serves exactly one client; HTTP stays off.
            config.proxy.listen = None;
            serve::serve((config, before), Some(identity)).await
        }
        Command::Doctor { config } => {
            let config = load(&config)?;
            if doctor::doctor(&config).await {
                Ok(())
            } else {
                bail!("some checks failed (FAIL above)")
            }
        }
        Command::Servers {
            command: ServersCommand::List { config, format },
        } => {
            let config = load(&config)?;
            servers::servers_list(&config, format);
            Ok(())
        }
        Command::Servers {
            command: ServersCommand::Status { config, format },
        } => {
            let config = load(&config)?;
            servers::servers_status(&config, format).await
        }
        Command::Tools { command } => run_tools(command).await,
        Command::Policy { command } => policy::run(command).await,
        Command::Redact { command } => redact::run(command),
        Command::Plugin { command } => plugin::run(command),
        Command::Audit { command } => audit::run(*command).await,
        Command::SessionKey { out } => audit_keys::session_key(&out),
        Command::Init { dir } => init::init(&dir),
        Command::ClientConfig {
            app,
            client,
            config,
            transport,
        } => {
            let snippet = init::client_config(&load(&config)?, app, client.as_deref(), transport)?;
            println!("{}", serde_json::to_string_pretty(&snippet)?);
            Ok(())
        }
    }
}

/// SHA-256 in hex (of a config file, of a token).
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// The SHA-256 of the config file as it is now, for the records of a run
/// and of a reload (`None` if it cannot be read).
fn config_sha256(file: &Path) -> Option<String> {
    std::fs::read(file).map(|bytes| sha256_hex(&bytes)).ok()
}

/// `portcullis tools …`.
async fn run_tools(command: ToolsCommand) -> anyhow::Result<()> {
    match command {
        ToolsCommand::List {
            config,
            client,
            format,
        } => {
            let config = load(&config)?;
            tools::tools_list(config, client.as_deref(), format).await
        }
        ToolsCommand::Call {
            config,
            tool,
            args,
            client,
        } => {
            let config = load(&config)?;
            tools_call::tools_call(config, &tool, &args, client.as_deref()).await
        }
        ToolsCommand::Inspect {
            config,
            tool,
            client,
        } => {
            let config = load(&config)?;
            tools_call::tools_inspect(config, &tool, client.as_deref()).await
        }
        ToolsCommand::Pins { config, format } => pins::list(&load(&config)?, format),
        ToolsCommand::Approve {
            config,
            tools,
            all,
            by,
            sha256,
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
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// The config, narrowed to a profile when one is named.
fn load_with(path: &Path, profile: Option<&str>) -> anyhow::Result<Config> {
    Ok(Config::load_with_profile(path, profile)?)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// What a text log record looks like with hostile fields.
    #[test]
    fn a_text_log_record_of_hostile_fields_is_one_line_with_no_control() {
        #[derive(Clone, Default)]
        struct Kept(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Kept {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let kept = Kept::default();
        let writer = kept.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(super::text_fields())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let hostile = "x\u{1b}]0;pwned\u{7}\r\n2026-01-01T00:00:00Z  INFO forged\u{9b}2J\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(server = "s", error = %hostile, tool = hostile, "{hostile}");
        });
        let text = String::from_utf8(kept.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(crate::protocol::nothing_hidden(&text), "{text:?}");
        assert!(text.contains("error=x\\u{001B}]0;pwned"), "{text}");
        assert!(text.contains("server=\"s\""), "{text}");
    }
}
