//! `portcullis policy check|test|explain|replay`: the security team's tools.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::policy_replay::load;
use crate::config::{ClientConfig, Config, FlowConfig, Label};
use crate::interceptors::authz::fixtures::{self, Case};
use crate::interceptors::authz::{Decision, PolicyStore, Query};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Parse and strictly validate every policy against the schema; print
    /// every problem with file:line:col.
    Check {
        #[command(flatten)]
        source: Source,
    },
    /// Run the fixtures (`<policies>/tests/*.toml`) and print a pass/fail table.
    Test {
        #[command(flatten)]
        source: Source,
        /// The fixture folder (default: `tests/` in the policy folder).
        #[arg(long)]
        fixtures: Option<PathBuf>,
    },
    /// Decide one request and show the policies that determined it.
    Explain(Box<ExplainArgs>),
    /// Run a candidate policy set over the decisions the log recorded in a
    /// period, and list what would change.
    Replay(Box<super::policy_replay::ReplayArgs>),
}

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    source: Source,
    /// The client (principal).
    #[arg(long)]
    client: String,
    /// Its groups, comma-separated (default: its groups in the config).
    #[arg(long, value_delimiter = ',')]
    groups: Option<Vec<String>>,
    /// call_tool, list_tools, read_resource, list_resources,
    /// subscribe_resource, get_prompt, list_prompts, complete, sampling,
    /// elicitation or roots.
    #[arg(long)]
    action: String,
    /// A tool as clients see it: `<server>__<tool>`.
    #[arg(long)]
    tool: Option<String>,
    #[arg(long)]
    prompt: Option<String>,
    /// A resource URI (needs --server).
    #[arg(long)]
    resource: Option<String>,
    #[arg(long)]
    server: Option<String>,
    /// Call arguments as a JSON object.
    #[arg(long)]
    arguments: Option<String>,
    /// Tool annotations as a JSON object, e.g. '{"destructive": false}'.
    #[arg(long)]
    annotations: Option<String>,
    #[arg(long)]
    transport: Option<String>,
    /// The MCP revision the client speaks (default 2025-11-25).
    #[arg(long)]
    protocol: Option<String>,
    /// `YYYY-MM-DDThh:mm:ssZ` (default: now).
    #[arg(long)]
    time: Option<String>,
    /// The target's labels, comma-separated: untrusted, private, sink
    /// (default: the config's `[flow]`, else the defaults).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// What the client was given before (`context.flow`), as a JSON object:
    /// '{"untrusted": ["web__fetch"], "private": ["git__git_log"]}'.
    #[arg(long)]
    flow: Option<String>,
}

/// Where the policies are: a config's `[proxy] policies`, or a folder.
#[derive(Args)]
pub struct Source {
    /// Use the `[proxy] policies` folder (and the clients' groups) of this config.
    #[arg(long, short, conflicts_with = "policies")]
    config: Option<PathBuf>,
    /// The policy folder (default: `policies`).
    #[arg(long)]
    policies: Option<PathBuf>,
}

struct Setup {
    dir: PathBuf,
    /// The config's clients (empty without `--config`).
    configured: Vec<ClientConfig>,
    clients: fixtures::Known,
    separator: String,
    /// The config's `[flow]` (the defaults without `--config`).
    flow: FlowConfig,
}

impl Source {
    fn setup(&self) -> anyhow::Result<Setup> {
        match (&self.config, &self.policies) {
            (Some(path), _) => {
                let config = Config::load(path)?;
                let dir = config.proxy.policies.clone().with_context(|| {
                    format!("{}: no `[proxy] policies` folder is set", path.display())
                })?;
                Ok(Setup {
                    dir,
                    clients: fixtures::known(&config.clients),
                    configured: config.clients.clone(),
                    separator: config.proxy.namespace_separator.clone(),
                    flow: config.flow.clone(),
                })
            }
            (None, dir) => Ok(Setup {
                dir: dir.clone().unwrap_or_else(|| PathBuf::from("policies")),
                clients: fixtures::Known::new(),
                configured: Vec::new(),
                separator: "__".into(),
                flow: FlowConfig::default(),
            }),
        }
    }
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { source } => check(&source),
        PolicyCommand::Test { source, fixtures } => test(&source, fixtures),
        PolicyCommand::Explain(args) => explain(*args),
        PolicyCommand::Replay(args) => super::policy_replay::replay(*args).await,
    }
}

/// `policy check`: the policies load, validated strictly against the schema
/// and the config's clients.
fn check(source: &Source) -> anyhow::Result<()> {
    let setup = source.setup()?;
    let store = load(&setup.dir)?;
    store.check_clients(&setup.configured)?;
    for warning in &store.warnings {
        eprintln!("{warning}");
    }
    println!(
        "{}: OK: {} policies in {} files, validated strictly against {}; policy set {}",
        setup.dir.display(),
        store.policy_count(),
        store.files.len().saturating_sub(1),
        store
            .files
            .first()
            .map_or("the schema".into(), |p| p.display().to_string()),
        store.id
    );
    Ok(())
}

/// `policy test`: every fixture case decided, in a pass/fail table.
fn test(source: &Source, fixtures: Option<PathBuf>) -> anyhow::Result<()> {
    let setup = source.setup()?;
    let store = load(&setup.dir)?;
    let folder = fixtures.unwrap_or_else(|| setup.dir.join("tests"));
    let outcomes = fixtures::run(
        &store,
        &folder,
        &setup.clients,
        (&setup.separator, &setup.flow),
    )?;
    if outcomes.is_empty() {
        bail!(
            "{}: no fixture cases (`[[case]]` in *.toml)",
            folder.display()
        );
    }
    println!("{:<6} {:<64} {:<6} DECIDED BY", "RESULT", "CASE", "GOT");
    let mut failed = 0;
    for outcome in &outcomes {
        let (got, by) = match &outcome.decision {
            Some(d) => (d.verdict(), decided_by(d)),
            None => ("-", String::new()),
        };
        let result = if outcome.failure.is_some() {
            "FAIL"
        } else {
            "pass"
        };
        println!(
            "{result:<6} {:<64} {got:<6} {by}",
            truncate(&outcome.name, 64)
        );
        if let Some(failure) = &outcome.failure {
            failed += 1;
            println!(
                "       {}:{}: {failure}",
                outcome.file.display(),
                outcome.line
            );
        }
    }
    println!(
        "{} cases: {} passed, {failed} failed (policy set {})",
        outcomes.len(),
        outcomes.len() - failed,
        store.id
    );
    if failed > 0 {
        bail!("{failed} policy test case(s) failed");
    }
    Ok(())
}

/// `policy explain`: one request decided, and what decided it.
fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let setup = args.source.setup()?;
    let store = load(&setup.dir)?;
    let case = args.into_case()?;
    let prepared = case
        .prepare(&setup.clients, (&setup.separator, &setup.flow))
        .map_err(anyhow::Error::msg)?;
    let query = prepared.query();
    let decision = store.decide(&query);
    print_explanation(&store, &query, &decision);
    Ok(())
}

impl ExplainArgs {
    /// The request as a fixture case (its JSON options parsed).
    fn into_case(self) -> anyhow::Result<Case> {
        let ExplainArgs {
            source: _,
            client,
            groups,
            action,
            tool,
            prompt,
            resource,
            server,
            arguments,
            annotations,
            transport,
            protocol,
            time,
            labels,
            flow,
        } = self;
        let arguments = match arguments {
            None => None,
            Some(text) => Some(
                serde_json::from_str::<toml::Table>(&text)
                    .context("--arguments must be a JSON object")?,
            ),
        };
        let annotations = match annotations {
            None => Default::default(),
            Some(text) => serde_json::from_str(&text).context(
                "--annotations must be a JSON object of read_only, destructive, idempotent, open_world",
            )?,
        };
        let labels = match labels {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        Label::parse(name.trim()).with_context(|| {
                            format!("--labels: `{name}` is not untrusted, private or sink")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        let flow = match flow {
            None => Default::default(),
            Some(text) => serde_json::from_str(&text).context(
                "--flow must be a JSON object of untrusted and private, each a list of names",
            )?,
        };
        Ok(Case {
            labels,
            flow,
            client,
            groups,
            action,
            tool,
            prompt,
            resource,
            server,
            annotations,
            arguments,
            transport,
            protocol,
            time,
            ..Case::default()
        })
    }
}

/// The decision, the request as Cedar saw it, and the policies (with their
/// file and line) that decided it.
fn print_explanation(store: &PolicyStore, query: &Query<'_>, decision: &Decision) {
    let (kind, id) = query.target.entity();
    println!(
        "decision:   {}",
        if decision.allowed { "ALLOW" } else { "DENY" }
    );
    println!(
        "request:    Client::{:?} (groups: {}) {} {kind}::{id:?} in Server::{:?}",
        query.client,
        if query.groups.is_empty() {
            "none".to_owned()
        } else {
            query.groups.join(", ")
        },
        query.action.name(),
        query.target.server()
    );
    println!(
        "policy set: {} ({} policies; {} can match this request's scope)",
        store.id,
        store.policy_count(),
        store.slice_size(query)
    );
    if decision.policies.is_empty() {
        println!("decided by: no permit applies (default deny)");
    } else {
        println!("decided by:");
        for id in &decision.policies {
            match store.origin(id) {
                Some(origin) => println!(
                    "  {:<7} {id:<40} {}:{}",
                    origin.effect,
                    origin.file.display(),
                    origin.line
                ),
                None => println!("  {id}"),
            }
        }
    }
    if let Some(ask) = &decision.ask {
        println!("ask:        the person may let it through when asked: {ask}");
    }
    if decision.read_flow
        && let Some(flow) = query.flow
    {
        println!(
            "flow:       the target is labelled [{}]; what the client was given before carries:",
            query.target.labels().names().join(", ")
        );
        for label in crate::flow::Flow::CARRIED {
            let names: Vec<&str> = flow.sources(label).map(|s| &*s.name).collect();
            if !names.is_empty() {
                println!("  {:<9} from {}", label.name(), names.join(", "));
            }
        }
    }
    for error in &decision.errors {
        println!("error:      {error} (an evaluation error denies)");
    }
    if !decision.dropped_arguments.is_empty() {
        println!(
            "left out of context.arguments (undeclared in the schema or of another type): {}",
            decision.dropped_arguments.join(", ")
        );
    }
}

fn decided_by(decision: &Decision) -> String {
    if decision.policies.is_empty() {
        "(default deny)".into()
    } else {
        decision.policies.join(", ")
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
