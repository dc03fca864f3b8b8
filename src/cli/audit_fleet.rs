//! `portcullis audit ship`, and `audit query|verify --store postgres://…`:
//! the fleet's log in PostgreSQL (see `audit::fleet`).

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::audit::fleet::{self, Database};
use crate::audit::{AuditError, Filter, SledStorage, Verification};
use crate::config::Config;
use crate::protocol::shown;

/// Whether `--store` names the fleet's database rather than a store.
pub(super) fn is_database(store: Option<&str>) -> bool {
    store
        .is_some_and(|store| store.starts_with("postgres://") || store.starts_with("postgresql://"))
}

/// The database at `url`: its password from `PGPASSWORD`, or else the
/// config's `[audit.ship] password`; TLS roots from `[audit.ship] ca`.
async fn connect(config: &Config, url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let ship = config.audit.ship.as_ref();
    let password = match std::env::var("PGPASSWORD") {
        Ok(password) if !password.is_empty() => Some(password),
        // The config's password goes only to the database it is for.
        _ => ship
            .filter(|ship| ship.to == url)
            .and_then(|ship| ship.password.as_ref())
            .map(|reference| reference.resolve())
            .transpose()
            .map_err(|err| anyhow::anyhow!("`audit.ship.password`: {err}"))?,
    };
    let ca = ship.and_then(|ship| ship.ca.clone());
    let database = Database::new(url, password, ca).context("--store")?;
    Ok(database.connect().await?)
}

/// `audit query --store postgres://…`: every replica's records that
/// match, the newest `filter.limit`, oldest first.
pub(super) async fn query(
    config: &Config,
    url: &str,
    filter: &Filter,
) -> anyhow::Result<Vec<fleet::FleetRecord>> {
    let client = connect(config, url).await?;
    Ok(fleet::query(&client, filter, &config.proxy.namespace_separator).await?)
}

/// `audit verify --store postgres://…`: every chain the database holds;
/// an error if one is broken.
pub(super) async fn verify(
    config: &Config,
    url: &str,
    keys: &crate::audit::Keys,
) -> anyhow::Result<()> {
    let client = connect(config, url).await?;
    let _progress = super::progress::Progress::step("verifying the fleet's chains");
    let chains = fleet::verify(&client, keys).await?;
    drop(_progress);
    if chains.is_empty() {
        bail!("the database holds no shipped chain");
    }
    let mut broken = 0;
    for chain in chains {
        let name = format!("{}/{}", chain.replica, chain.store);
        if !report(&name, chain.verification, None) {
            broken += 1;
        }
    }
    if broken > 0 {
        bail!("{broken} audit chain(s) broken");
    }
    Ok(())
}

/// Prints what a chain's verification found (and the newest kept
/// checkpoint it reaches); whether it is intact.
pub(super) fn report(name: &str, verification: Verification, reaches: Option<u64>) -> bool {
    // A store's name (a replica's, from the database) and a problem (which
    // may quote the log being checked) are printed escaped.
    let name = shown(name);
    match verification {
        Verification::Intact {
            records,
            first_seq,
            last_hash,
            keyed,
            macs_checked,
            signed_checkpoints,
        } => {
            let from = if first_seq > 1 {
                format!(" from {first_seq} (older ones removed by retention, behind a checkpoint)")
            } else {
                String::new()
            };
            let keyed = match (keyed, macs_checked) {
                (0, _) => String::new(),
                (n, true) => format!("; {n} keyed, their MACs checked"),
                (n, false) => format!("; {n} keyed, their MACs NOT checked (give --key)"),
            };
            let signed = if signed_checkpoints > 0 {
                format!("; {signed_checkpoints} signed checkpoints verified")
            } else {
                String::new()
            };
            let reaches = reaches.map_or(String::new(), |seq| {
                format!("; reaches the kept checkpoint at record {seq}")
            });
            println!(
                "{name}: intact: {records} records{from}{keyed}{signed}{reaches}; last hash {last_hash}"
            );
            true
        }
        Verification::Broken { seq, problem } => {
            println!("{name}: BROKEN at record {seq}: {}", shown(&problem));
            false
        }
    }
}

/// `audit ship`: ships the stores of a config's data_dir that no proxy
/// holds (a running proxy ships its own with `[audit.ship]`), each as
/// chain (replica, store).
pub(super) async fn ship(
    config_path: &Path,
    to: Option<&str>,
    store: Option<&str>,
    replica: Option<&str>,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let ship = config.audit.ship.as_ref();
    let Some(url) = to.or(ship.map(|ship| ship.to.as_str())) else {
        bail!("where to? give --to postgres://USER@HOST/DATABASE, or set `[audit.ship] to`");
    };
    let replica = match replica
        .map(str::to_owned)
        .or(ship.map(|s| s.replica.clone()))
    {
        Some(replica) => replica,
        None => crate::config::host_name(),
    };
    if replica.is_empty() {
        bail!("this machine has no host name: give --replica NAME");
    }
    let batch = ship.map_or(crate::config::SHIP_BATCH, |ship| ship.batch);
    let mut client = connect(&config, url).await?;
    fleet::ensure_schema(&mut client).await?;
    let dir = config.proxy.data_dir.join("audit");
    let mut shipped_any = false;
    for path in SledStorage::stores(&dir) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if store.is_some_and(|wanted| wanted != name) {
            continue;
        }
        let opened = match SledStorage::open(&path) {
            Ok(opened) => opened,
            Err(err @ AuditError::InUse { .. }) => bail!(
                "{err}: a running proxy ships its own log (`[audit.ship]`); `audit ship` ships a store no proxy holds"
            ),
            Err(err) => return Err(err.into()),
        };
        let shipped = fleet::ship_once(&mut client, &opened.reader(), (&replica, &name), batch)
            .await
            .with_context(|| format!("shipping store `{name}`"))?;
        println!(
            "{replica}/{name}: {} records shipped; the database holds records up to {}",
            shipped.records, shipped.last
        );
        shipped_any = true;
    }
    if !shipped_any {
        match store {
            Some(wanted) => bail!("{}: no audit store `{wanted}`", dir.display()),
            None => bail!("{}: no audit store to ship", dir.display()),
        }
    }
    Ok(())
}
