//! `portcullis catalog pull|push|ls|show`: the config's `[[catalogs]]`, and
//! catalogs in OCI registries in Docker's format (`docker mcp catalog
//! push|pull`). Only what the config names is pulled, to where it says;
//! the proxy reads what was pulled and never pulls at start.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::catalog::{self, MAX_CATALOG_BYTES};
use crate::config::pulled::{self, PulledRecord};
use crate::config::{CatalogConfig, Config};
use crate::upstream::oci;

#[derive(Subcommand)]
pub(super) enum CatalogCommand {
    /// Pulls the config's OCI catalogs (`[[catalogs]] oci`), or those named.
    Pull {
        #[arg(long, short)]
        config: PathBuf,
        /// Catalogs to pull (every OCI catalog of the config when none).
        names: Vec<String>,
    },
    /// Pushes a catalog to a registry as Docker's catalog artifact: one of
    /// the config's (by name) or a file (`--file`).
    Push {
        #[arg(long, short, required_unless_present = "file")]
        config: Option<PathBuf>,
        /// A catalog file in Docker's format, instead of a configured one.
        #[arg(long, conflicts_with = "name")]
        file: Option<PathBuf>,
        /// The configured catalog to push.
        #[arg(long)]
        name: Option<String>,
        /// Where: `REGISTRY/REPOSITORY:TAG`.
        reference: String,
    },
    /// The config's catalogs: where each comes from, and how many servers.
    Ls {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
    /// One catalog's servers: name, image, title, description, tools.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
}

pub(super) async fn run(command: CatalogCommand) -> anyhow::Result<()> {
    match command {
        CatalogCommand::Pull { config, names } => pull(&config, &names).await,
        CatalogCommand::Push {
            config,
            file,
            name,
            reference,
        } => {
            let (source, text) = match (file, name, config) {
                (Some(file), _, _) => {
                    let text = read_file(&file)?;
                    (file.display().to_string(), text)
                }
                (None, Some(name), Some(config)) => {
                    let found = configured(&config, &name)?;
                    if found.unpulled {
                        bail!("catalog `{name}` has not been pulled: nothing to push");
                    }
                    (format!("catalog `{name}`"), read_file(&found.path)?)
                }
                _ => {
                    bail!("name the catalog to push: `--name NAME --config FILE` or `--file PATH`")
                }
            };
            let json = catalog::to_json(&text).map_err(|m| anyhow::anyhow!("{source}: {m}"))?;
            let digest = tokio::time::timeout(oci::DEADLINE, oci::push_catalog(&reference, json))
                .await
                .map_err(|_| anyhow::anyhow!("the push took over {:?}", oci::DEADLINE))??;
            println!("pushed {source} to {reference}@{digest}");
            Ok(())
        }
        CatalogCommand::Ls { config, format } => {
            let catalogs = Config::catalogs_only(&config)?;
            let rows: Vec<Value> = catalogs.iter().map(row).collect();
            match format {
                super::Format::Json => println!(
                    "{}",
                    crate::protocol::shown_json(&Value::Array(rows).to_string())
                ),
                super::Format::Table => {
                    for catalog in &catalogs {
                        let source = match &catalog.oci {
                            Some(reference) if catalog.unpulled => {
                                format!("{reference} (not pulled)")
                            }
                            Some(reference) => format!("{reference} ({})", pulled_digest(catalog)),
                            None => catalog.path.display().to_string(),
                        };
                        println!(
                            "{:<20} {:>5} server(s)  {source}",
                            catalog.name,
                            catalog.servers.len()
                        );
                    }
                }
            }
            Ok(())
        }
        CatalogCommand::Show {
            config,
            name,
            format,
        } => {
            let found = configured(&config, &name)?;
            if found.unpulled {
                bail!("catalog `{name}` has not been pulled: run `portcullis catalog pull`");
            }
            match format {
                super::Format::Json => {
                    let servers: Vec<Value> = found
                        .servers
                        .iter()
                        .map(|(server, meta)| {
                            json!({
                                "name": server,
                                "image": meta.image,
                                "title": meta.title,
                                "description": meta.description,
                                "tools": meta.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    let shown = json!({ "catalog": row(&found), "servers": servers });
                    println!("{}", crate::protocol::shown_json(&shown.to_string()));
                }
                super::Format::Table => {
                    for (server, meta) in &found.servers {
                        println!(
                            "{:<24} {:<40} {}",
                            clean(server),
                            clean(meta.image.as_deref().unwrap_or("-")),
                            clean(meta.description.as_deref().unwrap_or_default())
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

/// A catalog's entry in `ls`.
fn row(catalog: &CatalogConfig) -> Value {
    json!({
        "name": catalog.name,
        "path": catalog.path,
        "oci": catalog.oci,
        "pulled": catalog.oci.as_ref().map(|_| !catalog.unpulled),
        "digest": catalog.oci.as_ref().filter(|_| !catalog.unpulled).map(|_| pulled_digest(catalog)),
        "servers": catalog.servers.len(),
    })
}

/// The manifest digest a pulled catalog's record gives.
fn pulled_digest(catalog: &CatalogConfig) -> String {
    std::fs::read_to_string(pulled::record_path(&catalog.path))
        .ok()
        .and_then(|text| serde_json::from_str::<PulledRecord>(&text).ok())
        .map(|record| record.digest)
        .unwrap_or_else(|| "?".into())
}

/// What a catalog says, on one terminal line: no control characters.
/// A catalog's text (its author's) for the table: cut, then escaped.
fn clean(text: &str) -> String {
    crate::protocol::shown(crate::protocol::cut(text, 120)).into_owned()
}

fn configured(config: &std::path::Path, name: &str) -> anyhow::Result<CatalogConfig> {
    Config::catalogs_only(config)?
        .into_iter()
        .find(|catalog| catalog.name == name)
        .with_context(|| format!("{}: no `[[catalogs]]` is named `{name}`", config.display()))
}

fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    crate::config::read_regular(path, MAX_CATALOG_BYTES)
        .with_context(|| format!("cannot read `{}`", path.display()))
}

/// Pulls the OCI catalogs of the config named in `names` (all when
/// empty), each checked before it is kept: Docker's catalog artifact,
/// the pinned digest if the config pins one, a catalog Portcullis reads.
/// `reference` at the manifest digest it was pulled at: `REF@DIGEST`, once
/// (a reference pinned by digest already names one: it is replaced, not
/// repeated).
fn at_digest(reference: &str, digest: &str) -> String {
    let name = reference
        .split_once('@')
        .map_or(reference, |(name, _)| name);
    format!("{name}@{digest}")
}

async fn pull(config: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    let catalogs = Config::catalogs_only(config)?;
    for name in names {
        if !catalogs.iter().any(|catalog| &catalog.name == name) {
            bail!("{}: no `[[catalogs]]` is named `{name}`", config.display());
        }
    }
    let chosen: Vec<&CatalogConfig> = catalogs
        .iter()
        .filter(|catalog| names.is_empty() || names.contains(&catalog.name))
        .collect();
    let mut pulled_any = false;
    for catalog in chosen {
        let Some(reference) = &catalog.oci else {
            if !names.is_empty() {
                bail!(
                    "catalog `{}` is a file (`path`), not an OCI catalog",
                    catalog.name
                );
            }
            continue;
        };
        let got = tokio::time::timeout(
            oci::DEADLINE,
            oci::pull_catalog(reference, MAX_CATALOG_BYTES as u64),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "catalog `{}`: the pull took over {:?}",
                catalog.name,
                oci::DEADLINE
            )
        })?
        .with_context(|| format!("catalog `{}`", catalog.name))?;
        let text = std::str::from_utf8(&got.json)
            .map_err(|_| anyhow::anyhow!("catalog `{}`: its layer is not UTF-8", catalog.name))?;
        let parsed = catalog::parse_catalog(text)
            .map_err(|m| anyhow::anyhow!("catalog `{}` ({reference}): {m}", catalog.name))?;
        let record = PulledRecord {
            reference: reference.clone(),
            digest: got.digest.clone(),
            layer: got.layer_digest.clone(),
        };
        pulled::write(&catalog.path, &record, &got.json)
            .with_context(|| format!("cannot write `{}`", catalog.path.display()))?;
        println!(
            "pulled {} ({}): {} server(s) into {}",
            catalog.name,
            crate::protocol::shown(&at_digest(reference, &got.digest)),
            parsed.registry.len(),
            catalog.path.display()
        );
        pulled_any = true;
    }
    if !pulled_any {
        bail!(
            "{}: no `[[catalogs]]` has `oci`: nothing to pull",
            config.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::at_digest;

    #[test]
    fn a_pulled_reference_names_its_digest_once() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            at_digest("127.0.0.1:5000/catalogs/team:v1", &digest),
            format!("127.0.0.1:5000/catalogs/team:v1@{digest}")
        );
        assert_eq!(
            at_digest(&format!("127.0.0.1:5000/catalogs/team@{digest}"), &digest),
            format!("127.0.0.1:5000/catalogs/team@{digest}")
        );
        assert_eq!(
            at_digest(&format!("registry.example/c:v2@{digest}"), &digest),
            format!("registry.example/c:v2@{digest}")
        );
    }
}
