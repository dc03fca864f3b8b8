//! The token vault: what each user got by signing in to each remote
//! server, sealed at rest.
//!
//! One file per user and server under `DATA_DIR/vault/`, named by the
//! SHA-256 of the pair (no name a user chose becomes a path), written whole
//! or not at all (a temporary file renamed into place), owner-only. What it
//! holds is sealed with AES-256-GCM under the first of `[vault] keys`; the
//! associated data binds the format, the key's id, the server and the user,
//! so a sealed entry copied to another user's or server's place does not
//! open there. The server and the user are readable (for `oauth status`),
//! the tokens never are: not in the file, not in an error, not in a debug
//! form.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, VaultConfig};
use crate::sealing::{self, SealingKey};

/// The format, bound into every seal.
const FORMAT: &str = "pcv1";
/// The most of an entry's file that is read.
const MAX_FILE: u64 = 64 * 1024;
/// The longest token kept (a provider's JWT with many claims fits).
pub const MAX_TOKEN: usize = 16 * 1024;
/// The longest server name, user name, issuer, client id or scope list
/// kept (an entry stays well under [`MAX_FILE`]).
pub const MAX_NAME: usize = 1024;

/// Why the vault cannot do what was asked. No variant carries a token.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no `[vault] keys`: users' tokens cannot be kept (see docs/signin.md)")]
    NoKeys,
    #[error("`vault.keys[{index}]`: {message}")]
    Key { index: usize, message: String },
    #[error("the vault at {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("the vault's entry for `{}` at `{}` does not open: {why}", user.escape_debug(), server.escape_debug())]
    Unsealable {
        server: String,
        user: String,
        why: &'static str,
    },
    #[error(
        "a token longer than {MAX_TOKEN} bytes, or a name or scope list longer than {MAX_NAME}, is not kept"
    )]
    TooLong,
    #[error("the system's random source failed")]
    Random,
    #[error("the tokens could not be sealed")]
    Seal,
    #[error(
        "`vault.keys[{index}]` is also one of `[proxy] session_keys`: give the vault a key of its own (a session key is shared with every replica's clients' ids)"
    )]
    SharedKey { index: usize },
}

/// What one user got by signing in to one server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (seconds since the epoch), if said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The authorization server that issued them, and the client the
    /// proxy was to it.
    pub issuer: String,
    pub client_id: String,
    /// The resource they were issued for (RFC 8707): they are sent only
    /// to a server it covers.
    #[serde(default)]
    pub resource: String,
    /// Where the issuer's metadata was read, where that was not the
    /// issuer itself but an alias the operator named
    /// (`sign_in.issuer_alias`): where it is read to refresh or revoke
    /// them, never at the issuer's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_alias: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_at", &self.expires_at)
            .field("refresh", &self.refresh_token.is_some())
            .field("scopes", &self.scopes)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// An entry as listed: whose, where, and until when (never its tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub server: String,
    pub user: String,
    pub expires_at: Option<u64>,
    pub refreshable: bool,
    /// The authorization server that issued the tokens, and the proxy's
    /// client there they were issued to (public names, not secrets).
    pub issuer: String,
    pub client_id: String,
}

/// What an entry holds: a user's tokens at a server, or the client the
/// proxy registered with a server's authorization server (for one
/// redirect URI, named in place of a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Tokens,
    Client,
    /// A sign-in waiting for its user's browser, where replicas share the
    /// vault (`src/signin/pending_shared.rs`), kept under `pending/`.
    Pending,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Client => "client",
            Self::Pending => "pending",
        }
    }
}

/// The `sign_in` servers one config named (not secret: names only).
#[derive(Serialize, Deserialize)]
struct NamedServers {
    /// The config's path, for whoever reads the folder.
    config: String,
    servers: std::collections::BTreeSet<String>,
}

/// An entry's file.
#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    kind: Kind,
    server: String,
    user: String,
    /// The id of the key that sealed it (hex of 4 bytes of its SHA-256).
    key: String,
    /// The nonce, then the sealed JSON and its tag, in base64.
    sealed: String,
}

/// How long [`Vault::hold`] waits for another change of the entry (a
/// refresh at a slow token endpoint takes at most its 15 s deadline).
pub const HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

/// An entry held by [`Vault::hold`] until dropped.
pub struct Held {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

/// The vault of a config, opened at its first use (a proxy whose servers
/// ask no sign-in needs no `[vault] keys`), then kept.
pub struct Opened {
    config: Option<std::sync::Arc<Config>>,
    vault: std::sync::OnceLock<Result<Vault, String>>,
}

impl Opened {
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        Self {
            config: Some(config),
            vault: std::sync::OnceLock::new(),
        }
    }

    /// `vault`, opened already.
    pub fn given(vault: Vault) -> Self {
        Self {
            config: None,
            vault: std::sync::OnceLock::from(Ok(vault)),
        }
    }

    /// The vault, or why it does not open.
    pub fn get(&self) -> Result<&Vault, &str> {
        self.vault
            .get_or_init(|| match &self.config {
                Some(config) => Vault::of(config).map_err(|err| err.to_string()),
                None => Err("no vault".into()),
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// The vault of one proxy's `data_dir`.
pub struct Vault {
    dir: PathBuf,
    /// Each key with its id; the first seals.
    keys: Vec<SealingKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The vault of `config`'s `data_dir`, with its keys read now; a key
    /// that is also a session key is refused.
    pub fn of(config: &Config) -> Result<Self, VaultError> {
        let vault = Self::open(&config.vault, &config.proxy.data_dir)?;
        let session: Vec<String> = config
            .proxy
            .session_keys
            .iter()
            .filter_map(|key| key.resolve().ok())
            .collect();
        let session: Vec<SealingKey> = session
            .iter()
            .filter_map(|text| sealing::keys_from_hex(std::slice::from_ref(text)).ok())
            .flatten()
            .collect();
        match vault
            .keys
            .iter()
            .position(|key| session.iter().any(|other| other.id == key.id))
        {
            Some(index) => Err(VaultError::SharedKey { index }),
            None => Ok(vault),
        }
    }

    /// The vault under `data_dir`, with `config`'s keys read now.
    pub fn open(config: &VaultConfig, data_dir: &Path) -> Result<Self, VaultError> {
        if config.keys.is_empty() {
            return Err(VaultError::NoKeys);
        }
        let texts = config
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                key.resolve()
                    .map_err(|message| VaultError::Key { index, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = sealing::keys_from_hex(&texts).map_err(|(index, err)| VaultError::Key {
            index,
            message: err.to_string(),
        })?;
        // A folder of the operator's naming (shared by replicas) is held
        // to what `data_dir` is: this user's alone.
        if let Some(dir) = &config.dir {
            crate::private_dir::prepare(dir).map_err(|err| VaultError::Io {
                path: dir.clone(),
                message: format!("`[vault] dir`: {err}"),
            })?;
        }
        Ok(Self {
            dir: config.dir.clone().unwrap_or_else(|| data_dir.join("vault")),
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Keeps `tokens` as `user`'s at `server`, in place of any before.
    pub fn put(&self, server: &str, user: &str, tokens: &Tokens) -> Result<(), VaultError> {
        self.check(server, user, tokens)?;
        self.seal(Kind::Tokens, server, user, tokens)
    }

    /// Keeps `tokens` as a new sign-in of `user` at `server`, the entry
    /// held meanwhile: not in the midst of a refresh or a revoke of the one
    /// it replaces.
    pub async fn put_held(
        &self,
        server: &str,
        user: &str,
        tokens: &Tokens,
    ) -> Result<(), VaultError> {
        let _held = self.hold(server, user).await?;
        self.put(server, user, tokens)
    }

    /// `user`'s tokens at `server`, if they signed in.
    pub fn get(&self, server: &str, user: &str) -> Result<Option<Tokens>, VaultError> {
        self.open_entry(Kind::Tokens, server, user)
    }

    /// Forgets `user`'s tokens at `server`: whether there were any.
    pub fn remove(&self, server: &str, user: &str) -> Result<bool, VaultError> {
        self.remove_entry(Kind::Tokens, server, user)
    }

    /// Keeps `client`, registered for `server`, as `name`.
    pub fn put_client<T: Serialize>(
        &self,
        server: &str,
        name: &str,
        client: &T,
    ) -> Result<(), VaultError> {
        if server.len() > MAX_NAME || name.len() > MAX_NAME {
            return Err(VaultError::TooLong);
        }
        self.seal(Kind::Client, server, name, client)
    }

    /// The client registered for `server` kept as `name`, if any.
    pub fn get_client<T: serde::de::DeserializeOwned>(
        &self,
        server: &str,
        name: &str,
    ) -> Result<Option<T>, VaultError> {
        self.open_entry(Kind::Client, server, name)
    }

    /// Forgets the client registered for `server` kept as `name`.
    pub fn remove_client(&self, server: &str, name: &str) -> Result<bool, VaultError> {
        self.remove_entry(Kind::Client, server, name)
    }

    /// Keeps `value` as the waiting sign-ins' entry (`of`, `name`).
    pub(super) fn put_pending<T: Serialize>(
        &self,
        of: &str,
        name: &str,
        value: &T,
    ) -> Result<(), VaultError> {
        self.seal(Kind::Pending, of, name, value)
    }

    /// The waiting sign-ins' entry (`of`, `name`), if there is one.
    pub(super) fn get_pending<T: serde::de::DeserializeOwned>(
        &self,
        of: &str,
        name: &str,
    ) -> Result<Option<T>, VaultError> {
        self.open_entry(Kind::Pending, of, name)
    }

    /// Whether the waiting sign-ins' entry (`of`, `name`) exists.
    pub(super) fn has_pending(&self, of: &str, name: &str) -> bool {
        std::fs::symlink_metadata(self.path_of(Kind::Pending, of, name)).is_ok()
    }

    /// Forgets the waiting sign-ins' entry (`of`, `name`).
    pub(super) fn remove_pending(&self, of: &str, name: &str) -> Result<bool, VaultError> {
        self.remove_entry(Kind::Pending, of, name)
    }

    /// The folder of the waiting sign-ins' entries.
    pub(super) fn pending_dir(&self) -> PathBuf {
        self.dir.join("pending")
    }

    /// `user`'s entry at `server`, held for one change at a time: a
    /// refresh, a sign-in and a revoke of it (by this proxy, another
    /// process on this `data_dir`, or the CLI) never interleave, so a
    /// revoked entry is not written back by a refresh that began before.
    /// Waits up to [`HOLD_WAIT`]; released when dropped.
    pub async fn hold(&self, server: &str, user: &str) -> Result<Held, VaultError> {
        use nix::fcntl::{Flock, FlockArg};
        std::fs::create_dir_all(&self.dir).map_err(|err| self.io(err.to_string()))?;
        let path = self
            .path_of(Kind::Tokens, server, user)
            .with_extension("lock");
        let open = || lock_file(&path).map_err(|err| self.io(format!("{}: {err}", path.display())));
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        let mut file = open()?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Held { _lock: lock }),
                Err((_, errno)) if errno != nix::errno::Errno::EWOULDBLOCK => {
                    return Err(self.io(format!("{}: {errno}", path.display())));
                }
                Err((back, _)) if tokio::time::Instant::now() < deadline => {
                    file = back;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                Err(_) => {
                    return Err(self.io(format!(
                        "{} is held by another change for over {} s",
                        path.display(),
                        HOLD_WAIT.as_secs()
                    )));
                }
            }
        }
    }

    /// Whether `tokens` fit an entry.
    fn check(&self, server: &str, user: &str, tokens: &Tokens) -> Result<(), VaultError> {
        let long = |text: &str| text.len() > MAX_NAME;
        if tokens.access_token.len() > MAX_TOKEN
            || tokens
                .refresh_token
                .as_ref()
                .is_some_and(|t| t.len() > MAX_TOKEN)
            || long(server)
            || long(user)
            || long(&tokens.issuer)
            || long(&tokens.client_id)
            || long(&tokens.resource)
            || tokens.issuer_alias.as_deref().is_some_and(long)
            || tokens.scopes.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_NAME
        {
            return Err(VaultError::TooLong);
        }
        Ok(())
    }

    /// `value` sealed as the `kind` entry of (`server`, `user`).
    fn seal<T: Serialize>(
        &self,
        kind: Kind,
        server: &str,
        user: &str,
        value: &T,
    ) -> Result<(), VaultError> {
        let key = self.keys.first().ok_or(VaultError::NoKeys)?;
        let key_id = hex::encode(key.id);
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| VaultError::Random)?;
        let mut sealed = serde_json::to_vec(value).map_err(|_| VaultError::Seal)?;
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound(kind, &key_id, server, user)),
                &mut sealed,
            )
            .map_err(|_| VaultError::Seal)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let file = File {
            format: FORMAT.into(),
            kind,
            server: server.into(),
            user: user.into(),
            key: key_id,
            sealed: STANDARD.encode(blob),
        };
        let text = serde_json::to_vec(&file).map_err(|_| VaultError::Seal)?;
        if text.len() as u64 > MAX_FILE {
            return Err(VaultError::TooLong);
        }
        self.write(&self.path_of(kind, server, user), &text)
    }

    /// The `sign_in` servers the config at `file` named when a proxy of it
    /// last wrote them ([`Vault::name_servers`]); `None` if none ever did.
    /// What a proxy revokes at its start is what its own config named
    /// and no longer does: never what another config, sharing this
    /// `data_dir`, names.
    pub fn servers_named_by(
        &self,
        file: &Path,
    ) -> Result<Option<std::collections::BTreeSet<String>>, VaultError> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.named_servers_path(file);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(&path);
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.io(format!("{}: {err}", path.display()))),
        };
        if !opened.metadata().is_ok_and(|meta| meta.is_file()) {
            return Err(self.io(format!("{} is not a regular file", path.display())));
        }
        let mut text = Vec::new();
        opened
            .take(MAX_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|err| self.io(format!("{}: {err}", path.display())))?;
        let named: NamedServers = serde_json::from_slice(&text)
            .ok()
            .filter(|_| text.len() as u64 <= MAX_FILE)
            .ok_or_else(|| self.io(format!("{} is not a list of servers", path.display())))?;
        Ok(Some(named.servers))
    }

    /// Writes the `sign_in` servers the config at `file` names (see
    /// [`Vault::servers_named_by`]).
    pub fn name_servers(
        &self,
        file: &Path,
        servers: &std::collections::BTreeSet<String>,
    ) -> Result<(), VaultError> {
        let named = NamedServers {
            config: std::path::absolute(file)
                .unwrap_or_else(|_| file.to_owned())
                .display()
                .to_string(),
            servers: servers.clone(),
        };
        let text = serde_json::to_vec(&named).map_err(|err| self.io(err.to_string()))?;
        self.write(&self.named_servers_path(file), &text)
    }

    fn named_servers_path(&self, file: &Path) -> PathBuf {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
        self.dir.join(format!(
            "{}.servers",
            hex::encode(digest.get(..16).unwrap_or_default())
        ))
    }

    /// `text` into `path`, whole or not at all: a new file of the
    /// owner's only, synced, renamed into place, the folder synced.
    fn write(&self, path: &Path, text: &[u8]) -> Result<(), VaultError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let folder = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(folder).map_err(|err| self.io(err.to_string()))?;
        let mut suffix = [0u8; 8];
        self.random
            .fill(&mut suffix)
            .map_err(|_| VaultError::Random)?;
        let tmp = path.with_extension(format!("{}.tmp", hex::encode(suffix)));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(text)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| std::fs::File::open(folder)?.sync_all());
        written.map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            self.io(err.to_string())
        })
    }

    /// What the `kind` entry of (`server`, `user`) holds, if there is one.
    fn open_entry<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        server: &str,
        user: &str,
    ) -> Result<Option<T>, VaultError> {
        let Some(file) = self.read(&self.path_of(kind, server, user))? else {
            return Ok(None);
        };
        let fail = |why| VaultError::Unsealable {
            server: server.into(),
            user: user.into(),
            why,
        };
        if file.format != FORMAT || file.kind != kind || file.server != server || file.user != user
        {
            return Err(fail("it is another's entry"));
        }
        let key = self
            .keys
            .iter()
            .find(|key| hex::encode(key.id) == file.key)
            .ok_or_else(|| fail("it was sealed under a key no longer in `[vault] keys`"))?;
        let mut blob = STANDARD
            .decode(file.sealed.as_bytes())
            .map_err(|_| fail("it is not base64"))?;
        if blob.len() < NONCE_LEN {
            return Err(fail("it is cut short"));
        }
        let sealed = blob.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&blob).map_err(|_| fail("it is cut short"))?;
        let mut sealed = sealed;
        let opened = key
            .key
            .open_in_place(
                nonce,
                Aad::from(bound(kind, &file.key, server, user)),
                &mut sealed,
            )
            .map_err(|_| fail("it was changed, or sealed for another user or server"))?;
        serde_json::from_slice(opened)
            .map(Some)
            .map_err(|_| fail("what it holds is not tokens"))
    }

    fn remove_entry(&self, kind: Kind, server: &str, user: &str) -> Result<bool, VaultError> {
        match std::fs::remove_file(self.path_of(kind, server, user)) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(self.io(err.to_string())),
        }
    }

    /// Every user's sign-in, by server then user; one that does not open is listed
    /// as the error it is.
    pub fn list(&self) -> Result<Vec<Result<Listed, VaultError>>, VaultError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(self.io(err.to_string())),
        };
        let mut listed = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(err) => {
                    listed.push(Err(self.io(err.to_string())));
                    continue;
                }
            };
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let file = match self.read(&path) {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(err) => {
                    listed.push(Err(err));
                    continue;
                }
            };
            // A file whose names are not those of its place is no entry
            // of theirs (its place would be elsewhere).
            if path != self.path_of(file.kind, &file.server, &file.user) {
                listed.push(Err(VaultError::Unsealable {
                    server: file.server,
                    user: file.user,
                    why: "it is another's entry",
                }));
                continue;
            }
            // A registered client is the proxy's, not a user's sign-in.
            if file.kind != Kind::Tokens {
                continue;
            }
            listed.push(self.get(&file.server, &file.user).map(|tokens| {
                Listed {
                    expires_at: tokens.as_ref().and_then(|t| t.expires_at),
                    refreshable: tokens.as_ref().is_some_and(|t| t.refresh_token.is_some()),
                    issuer: tokens
                        .as_ref()
                        .map(|t| t.issuer.clone())
                        .unwrap_or_default(),
                    client_id: tokens
                        .as_ref()
                        .map(|t| t.client_id.clone())
                        .unwrap_or_default(),
                    server: file.server,
                    user: file.user,
                }
            }));
        }
        listed.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => (&a.server, &a.user).cmp(&(&b.server, &b.user)),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(a), Err(b)) => a.to_string().cmp(&b.to_string()),
        });
        Ok(listed)
    }

    /// The names the clients registered for `server` are kept under.
    pub fn clients_of(&self, server: &str) -> Result<Vec<String>, VaultError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(self.io(err.to_string())),
        };
        let mut names = Vec::new();
        for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            if let Ok(Some(file)) = self.read(&path)
                && file.kind == Kind::Client
                && file.server == server
                && path == self.path_of(Kind::Client, &file.server, &file.user)
            {
                names.push(file.user);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The entry at `path`, if there is one: a regular file (not a link,
    /// a folder or a pipe), read to at most [`MAX_FILE`] bytes.
    fn read(&self, path: &Path) -> Result<Option<File>, VaultError> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let named = || path.display().to_string().escape_debug().to_string();
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.io(format!("{}: {err}", named()))),
        };
        if !file.metadata().is_ok_and(|meta| meta.is_file()) {
            return Err(self.io(format!("{} is not a regular file", named())));
        }
        let mut text = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|err| self.io(format!("{}: {err}", named())))?;
        if text.len() as u64 > MAX_FILE {
            return Err(self.io(format!("{} is over {MAX_FILE} bytes", named())));
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|_| self.io(format!("{} is not a vault entry", named())))
    }

    fn path_of(&self, kind: Kind, server: &str, user: &str) -> PathBuf {
        let pair = format!("{}\0{}:{server}\0{user}", kind.tag(), server.len());
        let name = hex::encode(Sha256::digest(pair.as_bytes()));
        match kind {
            Kind::Pending => self.pending_dir().join(format!("{name}.json")),
            Kind::Tokens | Kind::Client => self.dir.join(format!("{name}.json")),
        }
    }

    fn io(&self, message: String) -> VaultError {
        VaultError::Io {
            path: self.dir.clone(),
            message,
        }
    }
}

/// The lock file at `path` opened (created the owner's alone, never
/// through a link), to be `flock`ed.
pub(super) fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// The associated data a seal is bound to (the server's length first:
/// no two pairs read the same).
fn bound(kind: Kind, key_id: &str, server: &str, user: &str) -> Vec<u8> {
    format!(
        "{FORMAT}\0{}\0{key_id}\0{}:{server}\0{user}",
        kind.tag(),
        server.len()
    )
    .into_bytes()
}

#[cfg(test)]
#[path = "vault_tests.rs"]
mod tests;
