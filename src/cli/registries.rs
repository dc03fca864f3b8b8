//! `portcullis registry pull`: the `server.json` of each of the config's
//! `registry://` servers, fetched from its registry's API and kept beside
//! the config with a record of its SHA-256. Only what the config names is
//! pulled; the proxy reads what was pulled and never reaches a registry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::config::pulled::{self, PulledRecord};
use crate::config::registry::{self, MAX_SERVER_JSON_BYTES};
use crate::config::{Config, EgressConfig, RegistryConfig, RegistryRef};
use crate::egress::{self, HttpClient, Timeouts, Trust};

/// How long one registry request may take, whole.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub(super) enum RegistryCommand {
    /// Pulls the `server.json` of the config's `registry://` servers, or of
    /// those named; a pinned one (`#sha256:…`) must be what the registry
    /// serves.
    Pull {
        #[arg(long, short)]
        config: PathBuf,
        /// Servers to pull (every `registry://` server of the config when
        /// none).
        names: Vec<String>,
    },
    /// The config's `registry://` servers: the reference, the registry, and
    /// what was pulled (its SHA-256), or that it was not.
    Ls {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
}

pub(super) async fn run(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Pull { config, names } => pull(&config, &names).await,
        RegistryCommand::Ls { config, format } => list(&config, format),
    }
}

/// `registry ls`: each `registry://` server and what was pulled for it.
fn list(config: &Path, format: super::Format) -> anyhow::Result<()> {
    let registry::RegistryServers {
        registries,
        servers,
    } = Config::registry_servers(config)?;
    let rows: Vec<serde_json::Value> = servers
        .iter()
        .filter_map(|(name, reference)| {
            let registry = registries.iter().find(|r| r.name == reference.registry)?;
            let record = std::fs::read_to_string(pulled::record_path(&reference.file(registry)))
                .ok()
                .and_then(|text| serde_json::from_str::<PulledRecord>(&text).ok())
                .filter(|record| record.reference == reference.unpinned());
            let pulled = record.map(|record| record.digest);
            // What the proxy will refuse is said so here.
            let matches = match (&reference.pin, &pulled) {
                (Some(pin), Some(pulled)) => pin == pulled,
                _ => true,
            };
            Some(serde_json::json!({
                "server": name,
                "reference": reference.unpinned(),
                "pin": reference.pin,
                "registry": registry.url,
                "pulled": pulled,
                "pin_matches": matches,
            }))
        })
        .collect();
    match format {
        super::Format::Json => println!(
            "{}",
            crate::protocol::shown_json(&serde_json::Value::Array(rows).to_string())
        ),
        super::Format::Table => {
            for row in &rows {
                let pulled = match (row["pulled"].as_str(), row["pin_matches"].as_bool()) {
                    (None, _) => "(not pulled)".to_owned(),
                    (Some(digest), Some(false)) => {
                        format!("{digest} (not the pinned one: pull again)")
                    }
                    (Some(digest), _) => digest.to_owned(),
                };
                let line = format!(
                    "{:<20} {}  {pulled}",
                    row["server"].as_str().unwrap_or_default(),
                    row["reference"].as_str().unwrap_or_default(),
                );
                println!("{}", crate::protocol::shown(&line));
            }
        }
    }
    Ok(())
}

async fn pull(config: &Path, names: &[String]) -> anyhow::Result<()> {
    let registry::RegistryServers {
        registries,
        servers,
    } = Config::registry_servers(config)?;
    for name in names {
        if !servers.iter().any(|(server, _)| server == name) {
            bail!(
                "{}: no server `{}` is `from = \"registry://…\"`",
                config.display(),
                crate::protocol::shown(name)
            );
        }
    }
    let chosen: Vec<&(String, RegistryRef)> = servers
        .iter()
        .filter(|(server, _)| names.is_empty() || names.contains(server))
        .collect();
    if chosen.is_empty() {
        bail!(
            "{}: no server is `from = \"registry://…\"`: nothing to pull",
            config.display()
        );
    }
    // What a registry serves decides what runs: no redirect is followed
    // (to another host, or from https:// to http://); the operator wrote
    // its URL.
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        total: Some(DEADLINE),
    };
    let client = HttpClient::new(&EgressConfig::default(), Trust::Written, &[], timeouts)
        .context("cannot make an HTTP client")?;
    for (name, reference) in chosen {
        let Some(registry) = registries.iter().find(|r| r.name == reference.registry) else {
            bail!("server `{name}`: no registry `{}`", reference.registry);
        };
        let json = fetch(&client, registry, reference)
            .await
            .with_context(|| format!("server `{name}` ({})", reference.unpinned()))?;
        // Its canonical form is what the proxy reads, under the same limit.
        if json.json.len() > MAX_SERVER_JSON_BYTES {
            bail!(
                "server `{name}`: its server.json is over {} KiB in canonical form: not kept",
                MAX_SERVER_JSON_BYTES / 1024
            );
        }
        let digest = pulled::sha256_digest(&json.json);
        if let Some(pin) = &reference.pin
            && pin != &digest
        {
            bail!(
                "server `{name}`: registry `{}` serves {} as {digest}, not the pinned {pin}: nothing was kept",
                registry.name,
                reference.unpinned()
            );
        }
        let path = reference.file(registry);
        let record = PulledRecord {
            reference: reference.unpinned(),
            digest: digest.clone(),
            layer: digest.clone(),
        };
        pulled::write(&path, &record, &json.json)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        println!(
            "pulled {name}: {} ({digest}) into {}",
            reference.unpinned(),
            path.display()
        );
        if let Some(status) = json.status.filter(|status| status != "active") {
            eprintln!(
                "warning: server `{name}`: registry `{}` marks {} `{}`",
                registry.name,
                reference.unpinned(),
                crate::protocol::shown(&status)
            );
        }
    }
    // What was pulled is read as the proxy will: say now if it will not.
    if let Err(err) = Config::load(config) {
        let said = err.to_string();
        for line in said.lines() {
            eprintln!(
                "warning: the config does not load yet: {}",
                crate::protocol::shown(line)
            );
        }
    }
    Ok(())
}

/// One version's `server.json` from `registry`, checked.
async fn fetch(
    client: &HttpClient,
    registry: &RegistryConfig,
    reference: &RegistryRef,
) -> anyhow::Result<registry::Pulled> {
    let url = reference.api_url(registry);
    let mut response = client
        .request_to(reqwest::Method::GET, &url)
        .map_err(|err| anyhow::anyhow!("registry `{}`: {err}", registry.name))?
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot reach registry `{}` at {}: {}",
                registry.name,
                registry.url,
                crate::protocol::shown(&egress::without_url(&err))
            )
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        bail!(
            "registry `{}` has no version `{}` of `{}` (404)",
            registry.name,
            reference.version,
            reference.server
        );
    }
    if status.is_redirection() {
        bail!(
            "registry `{}` answered a redirect ({status}), which is not followed: name the registry's own API in `[[registries]] url`",
            registry.name
        );
    }
    if !status.is_success() {
        bail!("registry `{}` answered {status}", registry.name);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| {
        anyhow::anyhow!(
            "registry `{}`: its answer broke off: {}",
            registry.name,
            crate::protocol::shown(&egress::without_url(&err))
        )
    })? {
        if body.len() + chunk.len() > MAX_SERVER_JSON_BYTES {
            bail!(
                "registry `{}` answered over {} KiB: not a server.json",
                registry.name,
                MAX_SERVER_JSON_BYTES / 1024
            );
        }
        body.extend_from_slice(&chunk);
    }
    registry::from_response(&body, reference)
        .map_err(|message| anyhow::anyhow!("registry `{}`: {message}", registry.name))
}
