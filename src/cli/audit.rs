//! `portcullis audit query|verify`: the auditors' tools, on the store
//! itself (the proxy holds the store while it runs; these commands then say
//! so — reading a running proxy's log over its admin API comes next).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::audit::{Filter, SledStorage, Verification};
use crate::config::{Config, parse_duration};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, oldest first (the newest `--limit`).
    Query {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        server: Option<String>,
        /// A tool (`server__tool` or its own name), prompt or resource URI.
        #[arg(long)]
        tool: Option<String>,
        /// allow, deny or error.
        #[arg(long)]
        decision: Option<String>,
        /// `YYYY-MM-DDThh:mm:ssZ`, or a duration ago such as `15m`, `2h`.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Walk the hash chain; name the first record that was changed, removed
    /// or reordered.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
    Jsonl,
}

/// Every store under the config's data_dir (one per proxy role), opened;
/// stores held by a running proxy are named on stderr and skipped.
fn open_all(config: &Config) -> anyhow::Result<Vec<SledStorage>> {
    let dir = config.proxy.data_dir.join("audit");
    let paths = SledStorage::stores(&dir);
    if paths.is_empty() {
        bail!(
            "{}: no audit log yet (nothing has been served with this data_dir)",
            dir.display()
        );
    }
    let mut stores = Vec::new();
    for path in paths {
        match SledStorage::open(&path) {
            Ok(store) => stores.push(store),
            Err(err @ crate::audit::AuditError::InUse { .. }) => {
                eprintln!("skipped: {err} (stop it to read this log offline)");
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(stores)
}

/// A `--since`/`--until` value as a record timestamp.
fn time_bound(flag: &str, text: &str) -> anyhow::Result<String> {
    if let Some(time) = crate::interceptors::authz::fixtures::parse_datetime(text) {
        return Ok(crate::audit::timestamp(time));
    }
    let ago = parse_duration(text).map_err(|_| {
        anyhow::anyhow!(
            "--{flag} `{text}` is neither a time like `2026-11-23T09:00:00Z` nor a duration like `15m`"
        )
    })?;
    let time = std::time::SystemTime::now()
        .checked_sub(ago)
        .with_context(|| format!("--{flag} `{text}` reaches before 1970"))?;
    Ok(crate::audit::timestamp(time))
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { config } => {
            let config = Config::load(&config)?;
            let mut broken = 0;
            let stores = open_all(&config)?;
            for store in &stores {
                let name = store.path().display();
                match store.verify()? {
                    Verification::Intact { records, last_hash } => {
                        println!("{name}: intact: {records} records; last hash {last_hash}");
                    }
                    Verification::Broken { seq, problem } => {
                        broken += 1;
                        println!("{name}: BROKEN at record {seq}: {problem}");
                    }
                }
            }
            if broken > 0 {
                bail!("{broken} audit chain(s) broken");
            }
            if stores.is_empty() {
                bail!("no audit store could be read");
            }
            Ok(())
        }
        AuditCommand::Query {
            config,
            client,
            server,
            tool,
            decision,
            since,
            until,
            limit,
            format,
        } => {
            let config = Config::load(&config)?;
            if let Some(decision) = &decision
                && !["allow", "deny", "error"].contains(&decision.as_str())
            {
                bail!("--decision `{decision}` must be allow, deny or error");
            }
            let filter = Filter {
                client,
                server,
                target: tool,
                decision,
                since: since
                    .as_deref()
                    .map(|t| time_bound("since", t))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|t| time_bound("until", t))
                    .transpose()?,
                limit: Some(limit),
            };
            if let (Some(since), Some(until)) = (&filter.since, &filter.until)
                && since >= until
            {
                bail!("--since ({since}) must be before --until ({until})");
            }
            let mut records = Vec::new();
            for store in open_all(&config)? {
                records.extend(store.query(&filter, &config.proxy.namespace_separator)?);
            }
            // Several stores: merged by time, the newest `--limit` kept.
            records.sort_by(|a, b| a.time.cmp(&b.time).then(a.seq.cmp(&b.seq)));
            let excess = records.len().saturating_sub(limit);
            records.drain(..excess);
            match format {
                OutputFormat::Jsonl => {
                    for record in &records {
                        println!("{}", serde_json::to_string(record)?);
                    }
                }
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&records)?),
                OutputFormat::Table => {
                    println!(
                        "{:>6} {:<24} {:<14} {:<18} {:<30} {:<6} {:>8} REASON",
                        "SEQ", "TIME", "CLIENT", "METHOD", "TARGET", "RESULT", "TOTAL µs"
                    );
                    for r in &records {
                        let target = match (&r.server, &r.target) {
                            (Some(server), Some(target)) => format!("{server}:{target}"),
                            (Some(server), None) => server.clone(),
                            _ => String::new(),
                        };
                        println!(
                            "{:>6} {:<24} {:<14} {:<18} {:<30} {:<6} {:>8} {}",
                            r.seq,
                            r.time,
                            r.client,
                            r.method,
                            target,
                            r.decision,
                            r.total_us,
                            r.reason.as_deref().unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
