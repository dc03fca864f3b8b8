//! Profiles: named sets of the config's servers, each with the tools it
//! lets through, in `profiles/NAME.toml` beside the config. `serve
//! --profile NAME` runs the config narrowed to one: the other servers do not
//! start, a tool outside its list is neither listed nor callable (refused
//! as unknown, before any policy is asked), and every record names the
//! profile. A profile only narrows; the policies still decide.

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
    let dir = folder(config);
    if !valid_name(name) {
        return Err(error(
            &dir,
            format!("profile name `{name}` must be 1-63 characters of a-z, 0-9 and `-`"),
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    let text = super::values::read_regular(&path, 1024 * 1024)
        .map_err(|err| error(&path, format!("cannot read profile `{name}`: {err}")))?;
    let mut profile: Profile = toml::from_str(&text)
        .map_err(|err| error(&path, format!("not a profile: {}", err.message())))?;
    profile.name = name.to_owned();
    check(config, &profile).map_err(|message| error(&path, message))?;
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
    /// The config narrowed to profile `name`: only its servers.
    pub fn with_profile(mut self, name: &str) -> Result<Self, ConfigError> {
        let profile = load(&self, name)?;
        self.servers
            .retain(|server| profile.servers.contains(&server.name));
        self.profile = Some(profile);
        Ok(self)
    }
}
