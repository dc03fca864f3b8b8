//! `portcullis oauth`: signing users in to the servers behind the proxy.
//! `oauth discover SERVER` asks a remote server what it needs (its 401,
//! its protected resource metadata, its authorization server's metadata)
//! and shows what was learned, or why it cannot be used; `oauth login`
//! signs a client in from a desktop and `oauth revoke` undoes it
//! (`oauth_login.rs`); `oauth status` lists the sign-ins the vault keeps.

use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use crate::config::Config;

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
    /// Signs a client of the proxy in to a remote server, from a desktop:
    /// prints a link to open in a browser, and waits for the answer on a
    /// loopback port; the tokens are kept in the vault.
    Login {
        #[arg(long, short)]
        config: PathBuf,
        /// A `remote` server of the config that asks for sign-in.
        server: String,
        /// The client of the proxy the sign-in is for.
        #[arg(long)]
        client: String,
        /// How long to wait for the answer, in seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// The loopback port to take the answer on
        /// (`http://127.0.0.1:PORT/callback`), for an authorization server
        /// that matches a hand-registered redirect URI exactly, port and
        /// all. Unset: the port of the last sign-in if free, else any.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Revokes a client's sign-in at the server's authorization server
    /// (RFC 7009) and forgets it.
    Revoke {
        #[arg(long, short)]
        config: PathBuf,
        server: String,
        #[arg(long)]
        client: String,
        /// Forget the tokens without asking the authorization server to
        /// revoke them (when it is gone, or the client was unregistered).
        #[arg(long)]
        local_only: bool,
    },
    /// The sign-ins the vault keeps: each user's at each server, until
    /// when, and whether it can be refreshed (never a token).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
}

pub(super) async fn run(command: OauthCommand) -> anyhow::Result<()> {
    match command {
        OauthCommand::Status { config, format } => status(&config, format),
        OauthCommand::Login {
            config,
            server,
            client,
            wait,
            port,
        } => {
            super::oauth_login::login(&config, &server, &client, (Duration::from_secs(wait), port))
                .await
        }
        OauthCommand::Revoke {
            config,
            server,
            client,
            local_only,
        } => super::oauth_login::revoke(&config, &server, &client, local_only).await,
        OauthCommand::Discover {
            config,
            server,
            format,
        } => discover(&config, &server, format).await,
    }
}

async fn discover(config: &Path, server: &str, format: super::Format) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let remote = super::oauth_login::remote(&config, server)?;
    let (_, learned) = super::oauth_login::discovered(remote, server).await?;
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
                println!("{name:<30} {}", value.escape_debug());
            }
        }
    }
    Ok(())
}

/// `oauth status`: the vault's entries.
fn status(config: &Path, format: super::Format) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let vault = crate::signin::vault::Vault::of(&config)?;
    let entries = vault.list()?;
    let expires = |at: Option<u64>| {
        at.map(|at| {
            i64::try_from(at)
                .ok()
                .and_then(|at| jiff::Timestamp::from_second(at).ok())
                .map_or_else(|| at.to_string(), |t| t.to_string())
        })
    };
    match format {
        super::Format::Json => {
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| match entry {
                    Ok(listed) => json!({
                        "server": listed.server,
                        "user": listed.user,
                        "expires": expires(listed.expires_at),
                        "refreshable": listed.refreshable,
                        "issuer": listed.issuer,
                        "client_id": listed.client_id,
                    }),
                    Err(error) => json!({ "error": error.to_string() }),
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        super::Format::Table => {
            if entries.is_empty() {
                println!("(no sign-ins kept)");
            }
            for entry in entries {
                match entry {
                    Ok(listed) => println!(
                        "{:<20} {:<20} expires {:<22} {:<15} issuer {} client {}",
                        listed.server.escape_debug().to_string(),
                        listed.user.escape_debug().to_string(),
                        expires(listed.expires_at).unwrap_or_else(|| "(not said)".into()),
                        if listed.refreshable {
                            "refreshable"
                        } else {
                            "not refreshable"
                        },
                        listed.issuer.escape_debug(),
                        listed.client_id.escape_debug(),
                    ),
                    Err(error) => println!("{error}"),
                }
            }
        }
    }
    Ok(())
}
