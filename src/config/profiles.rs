//! Profiles: named sets of the config's servers, each with the tools it
//! lets through, in `profiles/NAME.toml` beside the config. `serve
//! --profile NAME` runs the config narrowed to one: the other servers do not
//! start, a tool outside its list is neither listed nor callable (refused
//! as unknown, before any policy is asked), and every record names the
//! profile. A profile only narrows; the policies still decide. It may give
//! its servers template values and secret references of its own
//! (`[config.SERVER]`, `[secrets.SERVER]`), over the config's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// A profile in force.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its name (the file's, without `.toml`).
    #[serde(skip)]
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The config's servers it runs, by name.
    pub servers: Vec<String>,
    /// Per server, the only tools it lets through (by the server's own
    /// names); a server not here lets every tool through.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, BTreeSet<String>>,
    /// Per server, `{{server.key}}` template values over the config's (a
    /// server described by `from` only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, BTreeMap<String, String>>,
    /// Per server, secret references (`file:`, `env:`, `dotenv:`) over
    /// the config's, by the variable the server reads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Profile {
    /// Whether `server`'s tool `tool` (its own name) is let through.
    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        self.tools
            .get(server)
            .is_none_or(|allowed| allowed.contains(tool))
    }
}

/// The folder of a config's profiles.
pub fn folder(config: &Config) -> PathBuf {
    config.base_dir().join("profiles")
}

/// A profile's name: 1-63 characters of `a-z`, `0-9` and `-`.
pub fn valid_name(name: &str) -> bool {
    super::names::valid_server_name(name)
}

fn error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        location: None,
        key: None,
        message,
    }
}

/// Reads profile `name` of `config`, checked against its servers.
pub fn load(config: &Config, name: &str) -> Result<Profile, ConfigError> {
    let profile = read(&folder(config), name)?;
    check(config, &profile).map_err(|message| error(&path(config, name), message))?;
    Ok(profile)
}

/// The file of `config`'s profile `name`.
pub fn path(config: &Config, name: &str) -> PathBuf {
    path_of(&folder(config), name)
}

fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Reads profile `name` from the folder `dir`, not checked yet.
fn read(dir: &Path, name: &str) -> Result<Profile, ConfigError> {
    if !valid_name(name) {
        return Err(error(
            dir,
            format!("profile name `{name}` must be 1-63 characters of a-z, 0-9 and `-`"),
        ));
    }
    let path = path_of(dir, name);
    let text = super::values::read_regular(&path, 1024 * 1024)
        .map_err(|err| error(&path, format!("cannot read profile `{name}`: {err}")))?;
    let mut profile: Profile = toml::from_str(&text)
        .map_err(|err| error(&path, format!("not a profile: {}", err.message())))?;
    profile.name = name.to_owned();
    Ok(profile)
}

/// A profile names only servers the config has, each once; its tool lists
/// only servers it runs.
pub fn check(config: &Config, profile: &Profile) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for server in &profile.servers {
        if config.server(server).is_none() {
            return Err(format!(
                "names server `{server}`, which the config does not define"
            ));
        }
        if !seen.insert(server) {
            return Err(format!("names server `{server}` twice"));
        }
    }
    if let Some(server) = profile.tools.keys().find(|s| !seen.contains(s)) {
        return Err(format!(
            "lists tools of server `{server}`, which it does not run (add it to `servers`)"
        ));
    }
    let valued = profile.config.keys().chain(profile.secrets.keys());
    if let Some(server) = valued.clone().find(|s| !seen.contains(s)) {
        return Err(format!(
            "gives values or secrets to server `{server}`, which it does not run (add it to `servers`)"
        ));
    }
    Ok(())
}

/// Writes `profile` to its file (atomically).
pub fn save(config: &Config, profile: &Profile) -> Result<PathBuf, String> {
    check(config, profile)?;
    let dir = folder(config);
    std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let path = dir.join(format!("{}.toml", profile.name));
    let text = toml::to_string_pretty(profile).map_err(|err| err.to_string())?;
    // A fresh temporary file (never one a link points at), on disk before
    // it replaces the profile.
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        profile.name,
        uuid::Uuid::new_v4().simple()
    ));
    let failed = |err: std::io::Error| format!("{}: {err}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(failed)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, &path).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(path)
}

/// The names of the config's profiles.
pub fn names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder(config))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".toml")
                .filter(|stem| valid_name(stem))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

impl Config {
    /// The config at `path`, under profile `name` when one is named: only
    /// its servers, with its template values and secret references over
    /// the config's (checked as the config's are).
    pub fn load_with_profile(path: &Path, name: Option<&str>) -> Result<Self, ConfigError> {
        let Some(name) = name else {
            return Self::load(path);
        };
        let dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("profiles");
        let profile = read(&dir, name)?;
        let text = super::read_config(path)?;
        let mut raw = Self::parse_raw(&text, path)?;
        // Only onto the servers it runs (values for another are refused
        // by `check`, naming the profile).
        for server in &mut raw.servers {
            let server = server.get_mut();
            let name = server.name().to_owned();
            if profile.servers.contains(&name) {
                server.overlay(profile.config.get(&name), profile.secrets.get(&name));
            }
        }
        let own = !profile.config.is_empty() || !profile.secrets.is_empty();
        let mut config =
            super::Validator { text: &text, path }
                .config(raw)
                .map_err(|mut err| {
                    if own {
                        err.message
                            .push_str(&format!(" (with the values of profile `{name}`)"));
                    }
                    err
                })?;
        check(&config, &profile).map_err(|message| error(&path_of(&dir, name), message))?;
        config
            .servers
            .retain(|server| profile.servers.contains(&server.name));
        config.profile = Some(profile);
        Ok(config)
    }
}
