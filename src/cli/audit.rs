//! `portcullis audit query|tail|export|verify`: the auditors' tools.
//!
//! Each proxy role keeps its own store under `{data_dir}/audit` (`serve`,
//! `stdio-<client>`). A store no proxy holds is opened directly; the store
//! of a running `serve` is read over its admin API with an auditor token
//! (`--token-file`, or `PORTCULLIS_AUDITOR_TOKEN`). A store held by a
//! running stdio proxy cannot be read until it stops (sled allows one
//! process per store), and is named on stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::audit::{AuditError, AuditRecord, FilterParams, SledStorage, Verification};
use crate::config::{Config, EgressConfig};
use crate::egress::{self, HttpClient};

use super::audit_print::{OutputFormat, print_records};
use super::progress::Progress;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, oldest first (the newest `--limit`).
    Query {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Follow the log of the running proxy: the newest records, then each
    /// one as it is committed, until interrupted.
    Tail {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: FilterArgs,
        /// Records shown before following (at most 10).
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Every matching record as JSON lines, oldest first (for a SIEM).
    Export {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only records after this sequence number (resume an export).
        #[arg(long)]
        after: Option<u64>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Then keep exporting each record as the running proxy commits it
        /// (signed checkpoints among them: ship them off the host), each
        /// line flushed as it comes, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Walk the hash chain; name the first record that was changed, removed
    /// or reordered.
    Verify {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        keys: VerifyKeys,
    },
    /// Ship stores to the fleet's PostgreSQL database, each record once
    /// and in order (a running proxy ships its own with `[audit.ship]`):
    /// the stores of the config's data_dir that no proxy holds.
    Ship {
        #[arg(long, short)]
        config: PathBuf,
        /// `postgres://USER@HOST/DATABASE` (default: `[audit.ship] to`);
        /// the password from `PGPASSWORD` or `[audit.ship] password`.
        #[arg(long)]
        to: Option<String>,
        /// Only this store (`serve`, `stdio-<client>`, …).
        #[arg(long)]
        store: Option<String>,
        /// The replica's name in the fleet's log (default: `[audit.ship]
        /// replica`, or the host name).
        #[arg(long)]
        replica: Option<String>,
    },
    /// Make a chain key and a checkpoint signing key (with its public key)
    /// in DIR: the keys `[audit] key` and `signing_key` name.
    Keygen {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Where the log is: the config's data_dir, or a running proxy.
#[derive(Args)]
pub struct Source {
    #[arg(long, short)]
    pub(super) config: PathBuf,
    /// Only this store (`serve`, `stdio-<client>`, …), or the fleet's
    /// database (`postgres://USER@HOST/DATABASE`, for `query` and
    /// `verify`; the password from `PGPASSWORD` or `[audit.ship] password`).
    #[arg(long)]
    store: Option<String>,
    /// A file holding an auditor's token, for reading a running proxy's log.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The running proxy's base URL (default: from `[proxy] listen`).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
pub struct FilterArgs {
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
    /// exchange, session_start, session_end, … (docs/audit.md).
    #[arg(long)]
    kind: Option<String>,
    /// The identity provider (`[[oauth.providers]]` name) that vouched for
    /// the client.
    #[arg(long)]
    provider: Option<String>,
    /// The subject (`sub`) of the client's access token.
    #[arg(long)]
    subject: Option<String>,
    /// `YYYY-MM-DDThh:mm:ssZ`, or a duration ago such as `15m`, `2h`.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Only where the shadow policy set decided otherwise than the
    /// enforced one (`[proxy] shadow_policies`).
    #[arg(long)]
    shadow_differs: bool,
}

impl FilterArgs {
    fn params(&self, limit: Option<usize>, after: Option<u64>) -> FilterParams {
        FilterParams {
            client: self.client.clone(),
            server: self.server.clone(),
            tool: self.tool.clone(),
            decision: self.decision.clone(),
            kind: self.kind.clone(),
            provider: self.provider.clone(),
            subject: self.subject.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            shadow: self.shadow_differs.then(|| "differs".to_owned()),
            after: after.map(|a| a.to_string()),
            limit: limit.map(|l| l.to_string()),
        }
    }
}

/// One store to read: opened here, or behind a running proxy.
enum Store {
    Local { name: String, store: SledStorage },
    Remote { name: String, api: Api },
}

impl Store {
    fn name(&self) -> &str {
        match self {
            Store::Local { name, .. } | Store::Remote { name, .. } => name,
        }
    }
}

/// A running proxy's admin API.
struct Api {
    base: String,
    token: String,
    http: HttpClient,
}

impl Api {
    fn new(base: &str, token_file: Option<&Path>, egress: &EgressConfig) -> anyhow::Result<Self> {
        let token = match (token_file, std::env::var("PORTCULLIS_AUDITOR_TOKEN")) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => bail!(
                "the proxy at {base} holds the audit log: give an auditor's token with --token-file FILE or PORTCULLIS_AUDITOR_TOKEN"
            ),
        };
        let timeouts = egress::Timeouts {
            connect: std::time::Duration::from_secs(5),
            total: None,
        };
        let http = HttpClient::new(egress, egress::Trust::Written, &[], timeouts)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// GET `path` with a filter; errors carry the proxy's own message.
    async fn get(&self, path: &str, params: &FilterParams) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .request_to(reqwest::Method::GET, &url)?
            .bearer_auth(&self.token)
            .query(params);
        let response = egress::send(request)
            .await
            .with_context(|| format!("cannot reach the proxy at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        let message = crate::protocol::shown(&message);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the proxy refused the token: {message}");
        }
        bail!("the proxy answered {status}: {message}")
    }
}

/// The stores a command reads: every store under the data_dir (or the one
/// `--store` names); a running `serve` proxy's store through its admin API.
async fn open_stores(source: &Source) -> anyhow::Result<(Config, Vec<Store>)> {
    if super::audit_fleet::is_database(source.store.as_deref()) {
        bail!(
            "--store postgres://… is for `audit query` and `audit verify`: the others read one replica's store"
        );
    }
    let config = Config::load(&source.config)?;
    let base = source.url.clone().or_else(|| {
        config
            .proxy
            .listen
            .filter(|addr| addr.port() != 0)
            .map(|addr| {
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    addr.ip().to_string()
                };
                let host = if addr.is_ipv6() && !addr.ip().is_unspecified() {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("http://{host}:{}", addr.port())
            })
    });
    if source.url.is_some() {
        let api = Api::new(
            base.as_deref().unwrap_or_default(),
            source.token_file.as_deref(),
            &config.egress,
        )?;
        let name = source.store.clone().unwrap_or_else(|| "serve".into());
        return Ok((config, vec![Store::Remote { name, api }]));
    }
    let dir = config.proxy.data_dir.join("audit");
    let paths = SledStorage::stores(&dir);
    let mut stores = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if source.store.as_ref().is_some_and(|wanted| *wanted != name) {
            continue;
        }
        match SledStorage::open(&path) {
            Ok(store) => stores.push(Store::Local { name, store }),
            Err(AuditError::InUse { .. }) if name == "serve" && base.is_some() => {
                let api = Api::new(
                    base.as_deref().unwrap_or_default(),
                    source.token_file.as_deref(),
                    &config.egress,
                )?;
                stores.push(Store::Remote { name, api });
            }
            Err(err @ AuditError::InUse { .. }) if name == "serve" => bail!(
                "{err}; its `listen` does not say where it answers: give its address with --url http://HOST:PORT"
            ),
            Err(err @ AuditError::InUse { .. }) => {
                eprintln!("skipped {name}: {err} (a stdio proxy's log is readable once it stops)");
            }
            Err(err) => return Err(err.into()),
        }
    }
    if stores.is_empty() {
        match &source.store {
            Some(wanted) => bail!("{}: no readable audit store `{wanted}`", dir.display()),
            None => bail!(
                "{}: no readable audit log (nothing has been served with this data_dir, or every store is held by a running stdio proxy)",
                dir.display()
            ),
        }
    }
    Ok((config, stores))
}

/// The fleet's database `--store` names, if it names one (without a
/// proxy's `--url`).
fn fleet_url(source: &Source) -> anyhow::Result<Option<&str>> {
    let store = source.store.as_deref();
    if !super::audit_fleet::is_database(store) {
        return Ok(None);
    }
    if source.url.is_some() || source.token_file.is_some() {
        bail!(
            "--store postgres://… reads the fleet's database itself: --url and --token-file are for a running proxy"
        );
    }
    Ok(store)
}

pub(super) fn check(params: &FilterParams) -> anyhow::Result<()> {
    params
        .to_filter(std::time::SystemTime::now(), None)
        .map(|_| ())
        .map_err(|err| anyhow::anyhow!("--{err}"))
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { source, keys } => verify(&source, &keys).await,
        AuditCommand::Keygen { dir } => super::audit_keys::keygen(&dir),
        AuditCommand::Ship {
            config,
            to,
            store,
            replica,
        } => {
            super::audit_fleet::ship(&config, to.as_deref(), store.as_deref(), replica.as_deref())
                .await
        }
        AuditCommand::Query {
            source,
            filter,
            limit,
            format,
        } => query(&source, &filter, limit, format).await,
        AuditCommand::Export {
            source,
            filter,
            after,
            output,
            follow,
        } => export(&source, &filter, after, output.as_deref(), follow).await,
        AuditCommand::Tail {
            source,
            filter,
            limit,
            format,
        } => tail(&source, &filter, limit, format).await,
    }
}

/// `audit query`: the records of every store that match, merged by time,
/// the newest `limit` kept.
async fn query(
    source: &Source,
    filter: &FilterArgs,
    limit: usize,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let params = filter.params(Some(limit), None);
    check(&params)?;
    if let Some(url) = fleet_url(source)? {
        let config = Config::load(&source.config)?;
        let filter = params.to_filter(std::time::SystemTime::now(), None)?;
        let found = super::audit_fleet::query(&config, url, &filter).await?;
        if format != OutputFormat::Table {
            return super::audit_print::print_json(&found, format == OutputFormat::Jsonl);
        }
        let records: Vec<(String, AuditRecord)> = found
            .into_iter()
            .map(|found| (format!("{}/{}", found.replica, found.store), found.record))
            .collect();
        return print_records(&records, format, true, true);
    }
    let (records, several) = read_records(source, &params, limit).await?;
    print_records(&records, format, several, true)
}

/// The records of `source`'s stores that `params` asks for, each with its
/// store's name, merged by time, the newest `limit` kept; and whether
/// there were several stores.
pub(super) async fn read_records(
    source: &Source,
    params: &FilterParams,
    limit: usize,
) -> anyhow::Result<(Vec<(String, AuditRecord)>, bool)> {
    let (config, stores) = open_stores(source).await?;
    let several = stores.len() > 1;
    let mut records = Vec::new();
    for store in &stores {
        let found = match store {
            Store::Local { store, .. } => {
                let filter = params.to_filter(std::time::SystemTime::now(), None)?;
                store.query(&filter, &config.proxy.namespace_separator)?
            }
            Store::Remote { api, .. } => {
                let answer: serde_json::Value =
                    api.get("/admin/audit", params).await?.json().await?;
                serde_json::from_value(answer.get("records").cloned().unwrap_or_default())
                    .context("the proxy's answer does not parse")?
            }
        };
        records.extend(found.into_iter().map(|r| (store.name().to_owned(), r)));
    }
    // Several stores: merged by time, the newest `limit` kept.
    records.sort_by(|(_, a), (_, b)| a.time.cmp(&b.time).then(a.seq.cmp(&b.seq)));
    let excess = records.len().saturating_sub(limit);
    records.drain(..excess);
    Ok((records, several))
}

/// `audit export`: one store's records as JSON lines, to a file or stdout
/// (or, with `follow`, the running proxy's records as they come).
async fn export(
    source: &Source,
    filter: &FilterArgs,
    after: Option<u64>,
    output: Option<&Path>,
    follow: bool,
) -> anyhow::Result<()> {
    let params = filter.params(None, Some(after.unwrap_or(0)));
    check(&params)?;
    let (config, stores) = open_stores(source).await?;
    if follow {
        return export_following(&stores, &params, output).await;
    }
    if stores.len() > 1 && source.store.is_none() {
        let names: Vec<&str> = stores.iter().map(Store::name).collect();
        bail!(
            "this data_dir has {} stores ({}), each with its own sequence numbers: pick one with --store",
            names.len(),
            names.join(", ")
        );
    }
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut count = 0u64;
    let progress = Progress::counted("exporting", None, "records");
    for store in &stores {
        progress.relabel(format!("exporting `{}`", store.name()));
        match store {
            Store::Local { store, .. } => {
                let mut filter = params.to_filter(std::time::SystemTime::now(), None)?;
                let separator = &config.proxy.namespace_separator;
                loop {
                    let page = store.reader().next_page(&mut filter, separator, 1_000)?;
                    for record in &page {
                        // The same JSON value, with nothing a terminal
                        // acts on (what clients and servers wrote).
                        let line = serde_json::to_string(record)?;
                        writeln!(out, "{}", crate::protocol::shown_json(&line))?;
                    }
                    count += page.len() as u64;
                    progress.set(count);
                    if page.len() < 1_000 {
                        break;
                    }
                }
            }
            Store::Remote { api, .. } => {
                let mut response = api.get("/admin/audit/export", &params).await?;
                while let Some(chunk) = response.chunk().await? {
                    count += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                    progress.set(count);
                    out.write_all(&chunk)?;
                }
            }
        }
    }
    out.flush()?;
    drop(progress);
    if output.is_some() {
        eprintln!("exported {count} records");
    }
    Ok(())
}

/// `audit tail`: the running proxy's newest records, then each as it is
/// committed.
async fn tail(
    source: &Source,
    filter: &FilterArgs,
    limit: usize,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let params = filter.params(Some(limit.min(10)), None);
    check(&params)?;
    let (_, stores) = open_stores(source).await?;
    let Some(api) = running_proxy(&stores) else {
        bail!(
            "no proxy is serving this config: there is nothing to follow (`audit query` reads the log)"
        );
    };
    let mut response = api.get("/admin/audit/tail", &params).await?;
    let mut pending = Vec::new();
    let mut header = true;
    while let Some(chunk) = response.chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: AuditRecord = serde_json::from_slice(&line)
                .context("the proxy sent a line that is not a record")?;
            print_records(&[(String::new(), record)], format, false, header)?;
            header = false;
        }
    }
    bail!("the proxy closed the stream (it stopped?)")
}

/// The admin API of the proxy that serves this config, if one runs.
fn running_proxy(stores: &[Store]) -> Option<&Api> {
    stores.iter().find_map(|store| match store {
        Store::Remote { api, .. } => Some(api),
        Store::Local { .. } => None,
    })
}

/// `audit export --follow`: the running proxy's records from `params`'
/// `after` on, then each as it is committed, every line written through.
async fn export_following(
    stores: &[Store],
    params: &FilterParams,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(api) = running_proxy(stores) else {
        bail!(
            "no proxy is serving this config: there is nothing to follow (`audit export` without --follow reads the log)"
        );
    };
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut response = api.get("/admin/audit/tail", params).await?;
    // Whole lines, each the same JSON value with nothing a terminal acts
    // on; a chunk may end inside a line (or a character).
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            out.write_all(crate::protocol::shown_json(&text).as_bytes())?;
        }
        out.flush()?;
    }
    bail!("the proxy closed the stream (it stopped?)")
}

/// Where a verification's keys and kept checkpoints come from.
#[derive(Args)]
pub struct VerifyKeys {
    /// The chain key (hex, as `audit keygen` writes it): every keyed
    /// record's MAC is checked. Default: the config's `[audit] key`, when
    /// it can be read here.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Checkpoints kept elsewhere (`audit export` lines, or bare signed
    /// checkpoints): a log that ends before the newest, or holds another
    /// record where it points, was cut or rewritten.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The checkpoint signer's public key (hex, `checkpoint.pub`). Default:
    /// derived from the config's `[audit] signing_key`, when it can be read.
    #[arg(long)]
    public_key: Option<PathBuf>,
}

async fn verify(source: &Source, with: &VerifyKeys) -> anyhow::Result<()> {
    if let Some(url) = fleet_url(source)? {
        let config = Config::load(&source.config)?;
        let keys = super::audit_keys::verify_keys(
            &config,
            with.key.as_deref(),
            with.public_key.as_deref(),
        )?;
        if with.checkpoint.is_some() {
            bail!("--checkpoint is for a store's log, not the fleet's database");
        }
        return super::audit_fleet::verify(&config, url, &keys).await;
    }
    let (config, stores) = open_stores(source).await?;
    let keys =
        super::audit_keys::verify_keys(&config, with.key.as_deref(), with.public_key.as_deref())?;
    let kept = match &with.checkpoint {
        None => Vec::new(),
        Some(file) => {
            let Some(verifier) = &keys.checkpoints else {
                bail!(
                    "--checkpoint needs the signer's public key: give --public-key FILE (checkpoint.pub)"
                );
            };
            super::audit_keys::kept_checkpoints(file, verifier)?
        }
    };
    // A kept checkpoint of a store that is not here: the store was removed
    // (or renamed) — as much a cut as a missing tail.
    for checkpoint in &kept {
        let store = &checkpoint.statement.store;
        if !stores.iter().any(|s| s.name() == store) {
            bail!(
                "a kept checkpoint vouches for {} records of store `{store}`, which is not here: it was removed or renamed",
                checkpoint.statement.seq
            );
        }
    }
    let mut broken = 0;
    for store in &stores {
        let name = store.name();
        let mut verification = match store {
            Store::Local { store, .. } => {
                let progress = Progress::counted(format!("verifying `{name}`"), None, "records");
                store.verify_with(&keys, &mut |checked, total| {
                    progress.set_total(total);
                    progress.set(checked);
                })?
            }
            Store::Remote { api, .. } => {
                // The proxy checks with its own keys.
                let _progress = Progress::step(format!("the proxy verifies `{name}`"));
                let answer: serde_json::Value = api
                    .get("/admin/audit/verify", &FilterParams::default())
                    .await?
                    .json()
                    .await?;
                serde_json::from_value(answer.clone())
                    .with_context(|| format!("the proxy's answer does not parse: {answer}"))?
            }
        };
        // The newest checkpoint kept for this store, against its log.
        let newest = kept
            .iter()
            .filter(|c| c.statement.store == name)
            .max_by_key(|c| c.statement.seq);
        if let (Some(checkpoint), Verification::Intact { .. }) = (newest, &verification)
            && let Err((seq, problem)) = judge(store, checkpoint).await?
        {
            verification = Verification::Broken { seq, problem };
        }
        if !super::audit_fleet::report(name, verification, newest.map(|c| c.statement.seq)) {
            broken += 1;
        }
    }
    if broken > 0 {
        bail!("{broken} audit chain(s) broken");
    }
    Ok(())
}

/// A kept checkpoint against a store's log (see [`Checkpoint::judge`]).
async fn judge(
    store: &Store,
    checkpoint: &crate::audit::Checkpoint,
) -> anyhow::Result<Result<(), (u64, String)>> {
    let seq = checkpoint.statement.seq;
    let (first, last, hash) = match store {
        Store::Local { store, .. } => {
            let reader = store.reader();
            let hash = reader.get(seq)?.map(|record| record.hash);
            (reader.first_seq()?, reader.last_seq()?, hash)
        }
        Store::Remote { api, .. } => {
            let params = FilterParams {
                after: Some(seq.saturating_sub(1).to_string()),
                limit: Some("1".into()),
                ..FilterParams::default()
            };
            let answer: serde_json::Value = api.get("/admin/audit", &params).await?.json().await?;
            let last = answer
                .get("last_seq")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_default();
            let next: Option<AuditRecord> = (answer.get("records"))
                .and_then(|records| records.get(0))
                .and_then(|r| serde_json::from_value(r.clone()).ok());
            match next {
                Some(record) if record.seq == seq => (1, last, Some(record.hash)),
                // The first record kept is past it: removed by retention.
                Some(record) => (record.seq, last, None),
                None => (1, last, None),
            }
        }
    };
    Ok(checkpoint.judge(first, last, hash.as_deref()))
}
