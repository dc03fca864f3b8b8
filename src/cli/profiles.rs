//! `portcullis profile ls|show|create|tools`: the profiles of a config
//! (`profiles/NAME.toml` beside it), each a set of its servers and the
//! tools they let through. `serve --profile NAME` runs under one.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::config::profiles::{self, Profile};

#[derive(Subcommand)]
pub(super) enum ProfileCommand {
    /// The config's profiles.
    Ls {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// One profile: its servers and the tools each lets through.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
    },
    /// A new profile of these servers (every tool of each, until `tools`
    /// narrows them).
    Create {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        /// A server of the config (repeatable).
        #[arg(long = "server", value_name = "SERVER", required = true)]
        servers: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Let tools through (`--enable SERVER__TOOL`) or stop them
    /// (`--disable SERVER__TOOL`); a server's first `--enable` makes its
    /// list an allowlist of what is enabled.
    Tools {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        #[arg(long, value_name = "SERVER__TOOL")]
        enable: Vec<String>,
        #[arg(long, value_name = "SERVER__TOOL")]
        disable: Vec<String>,
    },
}

pub(super) fn run(command: ProfileCommand) -> anyhow::Result<()> {
    match command {
        ProfileCommand::Ls { config } => {
            let config = super::load(&config)?;
            for name in profiles::names(&config) {
                match profiles::load(&config, &name) {
                    Ok(profile) => println!(
                        "{name:<24} {} server(s)  {}",
                        profile.servers.len(),
                        profile.description
                    ),
                    Err(err) => println!("{name:<24} BROKEN: {}", err.message),
                }
            }
            Ok(())
        }
        ProfileCommand::Show { config, name } => {
            let config = super::load(&config)?;
            let profile = profiles::load(&config, &name)?;
            print(&profile);
            Ok(())
        }
        ProfileCommand::Create {
            config,
            name,
            servers,
            description,
        } => {
            let config = super::load(&config)?;
            if !profiles::valid_name(&name) {
                bail!("profile name `{name}` must be 1-63 characters of a-z, 0-9 and `-`");
            }
            if profiles::names(&config).contains(&name) {
                bail!("profile `{name}` exists: `portcullis profile tools` changes it");
            }
            let profile = Profile {
                name,
                description: description.unwrap_or_default(),
                servers,
                ..Profile::default()
            };
            let path = profiles::save(&config, &profile).map_err(anyhow::Error::msg)?;
            println!("wrote {}", path.display());
            Ok(())
        }
        ProfileCommand::Tools {
            config,
            name,
            enable,
            disable,
        } => {
            let config = super::load(&config)?;
            let mut profile = profiles::load(&config, &name)?;
            let separator = &config.proxy.namespace_separator;
            for (tools, on) in [(&enable, true), (&disable, false)] {
                for namespaced in tools {
                    let (server, tool) = namespaced
                        .split_once(separator.as_str())
                        .with_context(|| format!("`{namespaced}` is not SERVER{separator}TOOL"))?;
                    if !profile.servers.iter().any(|s| s == server) {
                        bail!("profile `{name}` does not run server `{server}`");
                    }
                    if on {
                        let allowed = profile.tools.entry(server.to_owned()).or_default();
                        allowed.insert(tool.to_owned());
                    } else {
                        // A profile lists what it lets through: a server
                        // with every tool has no list to take one from.
                        let Some(allowed) = profile.tools.get_mut(server) else {
                            bail!(
                                "profile `{name}` lets every tool of `{server}` through: `--enable` the ones it should keep (the others are then left out)"
                            );
                        };
                        allowed.remove(tool);
                    }
                }
            }
            let path = profiles::save(&config, &profile).map_err(anyhow::Error::msg)?;
            print(&profile);
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

fn print(profile: &Profile) {
    println!("profile {}", profile.name);
    if !profile.description.is_empty() {
        println!("  {}", profile.description);
    }
    for server in &profile.servers {
        match profile.tools.get(server) {
            None => println!("  {server}: every tool"),
            Some(tools) if tools.is_empty() => println!("  {server}: no tool"),
            Some(tools) => {
                let tools: Vec<&str> = tools.iter().map(String::as_str).collect();
                println!("  {server}: {}", tools.join(", "));
            }
        }
        // Its own values and secrets, by key (a secret's reference is no
        // secret, but the list says only what is set).
        for (what, keys) in [
            ("values", profile.config.get(server)),
            ("secrets", profile.secrets.get(server)),
        ] {
            if let Some(keys) = keys.filter(|keys| !keys.is_empty()) {
                let keys: Vec<&str> = keys.keys().map(String::as_str).collect();
                println!("    its own {what}: {}", keys.join(", "));
            }
        }
    }
}
