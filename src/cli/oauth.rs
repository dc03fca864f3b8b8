//! `portcullis oauth`: signing users in to the servers behind the proxy.
//! `oauth discover SERVER` asks a remote server what it needs (its 401,
//! its protected resource metadata, its authorization server's metadata)
//! and shows what was learned, or why it cannot be used.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use crate::config::{Config, UpstreamSpec};
use crate::signin;

#[derive(Subcommand)]
pub(super) enum OauthCommand {
    /// What a remote server asks for: whether it wants its users to sign
    /// in, the resource to ask a token for, its scopes, and its
    /// authorization server's endpoints, each checked as the MCP
    /// authorization specification says.
    Discover {
        #[arg(long, short)]
        config: PathBuf,
        /// A `remote` server of the config.
        server: String,
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
}

pub(super) async fn run(command: OauthCommand) -> anyhow::Result<()> {
    match command {
        OauthCommand::Discover {
            config,
            server,
            format,
        } => discover(&config, &server, format).await,
    }
}

async fn discover(config: &Path, server: &str, format: super::Format) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let Some(found) = config.servers.iter().find(|s| s.name == server) else {
        bail!("no server `{server}` in the config");
    };
    let UpstreamSpec::Remote(remote) = &found.kind else {
        bail!("server `{server}` is not a `remote` server: only those sign users in over OAuth");
    };
    let http = signin::discovery_client(&config.egress, &remote.url)?;
    let learned = signin::discover(&http, &remote.url)
        .await
        .with_context(|| format!("server `{server}`"))?;
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "(none)".into());
    let rows = [
        ("server", learned.url.clone()),
        ("resource", learned.resource.clone()),
        ("resource metadata", learned.resource_metadata.clone()),
        ("scopes", learned.scopes.join(" ")),
        ("authorization server", learned.issuer.clone()),
        ("its metadata", learned.issuer_metadata.clone()),
        (
            "authorization endpoint",
            learned.authorization_endpoint.clone(),
        ),
        ("token endpoint", learned.token_endpoint.clone()),
        ("registration", optional(&learned.registration_endpoint)),
        ("revocation", optional(&learned.revocation_endpoint)),
        (
            "client id metadata documents",
            if learned.client_id_metadata_documents {
                "supported".into()
            } else {
                "not supported".into()
            },
        ),
    ];
    match format {
        super::Format::Json => {
            let object: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(name, value)| (name.replace(' ', "_"), json!(value)))
                .collect();
            println!("{}", serde_json::Value::Object(object));
        }
        super::Format::Table => {
            for (name, value) in rows {
                println!("{name:<30} {value}");
            }
        }
    }
    Ok(())
}
