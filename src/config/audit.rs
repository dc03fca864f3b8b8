//! `[audit]`: the audit log, its retention, durability and keys.

use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::values::{DurationText, SecretText};
use super::{ConfigError, SecretRef, Validator, parse_duration};

/// `[audit] checkpoint_every` and `checkpoint_interval` by default.
pub const CHECKPOINT_EVERY: u64 = 1000;

pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub durability: Durability,
    pub retention: Retention,
    /// Whether exchange records keep the call's arguments.
    pub arguments: AuditArguments,
    /// The chain key (hex): records are sealed with HMAC-SHA256 under it.
    pub key: Option<SecretRef>,
    /// The Ed25519 key (PKCS#8, hex) that signs checkpoints of the head.
    pub signing_key: Option<SecretRef>,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one (at the next write, and at stop).
    pub checkpoint_interval: Duration,
    /// `[audit.ship]`: the log shipped to the fleet's PostgreSQL.
    pub ship: Option<ShipConfig>,
}

/// `[audit.ship]`: where the log is shipped, in order and exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipConfig {
    /// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=require]`, without
    /// a password.
    pub to: String,
    /// The database user's password.
    pub password: Option<SecretRef>,
    /// This replica's name in the fleet's log (one chain per replica and
    /// store).
    pub replica: String,
    /// PEM roots that the database's TLS certificate must chain to
    /// (the system's roots when unset).
    pub ca: Option<std::path::PathBuf>,
    /// Records per transaction.
    pub batch: u32,
}

/// `[audit.ship] batch` by default.
pub const SHIP_BATCH: u32 = 500;

/// This machine's host name (`[audit.ship] replica` by default; a
/// Kubernetes pod's name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            retention: Retention::default(),
            arguments: AuditArguments::default(),
            key: None,
            signing_key: None,
            checkpoint_every: CHECKPOINT_EVERY,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            ship: None,
        }
    }
}

/// `[audit] arguments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditArguments {
    /// Only their SHA-256.
    #[default]
    None,
    /// Kept after every secret-scanning rule has redacted them (whatever
    /// `[redact]` does to the forwarded message).
    Redacted,
}

/// `[audit] max_age` and `max_records`: how much of the log is kept (all of
/// it when neither is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_records: Option<u64>,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        self.max_age.is_none() && self.max_records.is_none()
    }
}

/// When a record is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Flushed before the reply is sent (the default).
    #[default]
    Durable,
    /// Written before the reply, flushed within 10 ms: a crash of the
    /// machine (not of the proxy) can lose the last 10 ms of records.
    Buffered,
}

/// `[audit]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// When a record is on disk.
    #[schemars(extend("default" = "durable"))]
    durability: Option<Durability>,
    /// What an exchange's record keeps of the call's arguments.
    #[schemars(extend("default" = "none"))]
    arguments: Option<AuditArguments>,
    /// Retention: records older than this are dropped.
    #[schemars(
        with = "Option<DurationText>",
        extend("x-default" = "none: kept whatever their age")
    )]
    max_age: Option<Spanned<String>>,
    /// Retention: at most this many records are kept (at least 100).
    #[schemars(with = "Option<i64>", extend("x-default" = "none: no limit"))]
    max_records: Option<Spanned<i64>>,
    /// The chain key (hex, 32 bytes or more; `portcullis audit keygen` makes
    /// one): every record gets a `mac`, HMAC-SHA256 of its hash under it.
    /// A file must lie outside `[proxy] data_dir`.
    #[schemars(with = "Option<SecretText>")]
    key: Option<Spanned<String>>,
    /// The Ed25519 key (PKCS#8, hex) that signs checkpoints of the chain's
    /// head, appended as `signed_checkpoint` records. A file must lie
    /// outside `[proxy] data_dir`.
    #[schemars(with = "Option<SecretText>")]
    signing_key: Option<Spanned<String>>,
    /// With `signing_key`: a signed checkpoint after this many records (at
    /// least 1)…
    #[schemars(with = "Option<i64>", extend("default" = CHECKPOINT_EVERY))]
    checkpoint_every: Option<Spanned<i64>>,
    /// …or this long after the last one (at the next write, and at stop).
    #[schemars(with = "Option<DurationText>", extend("default" = "1m"))]
    checkpoint_interval: Option<Spanned<String>>,
    /// Ship the log to PostgreSQL, where the fleet's replicas' logs are
    /// read together (`audit query --store postgres://…`).
    ship: Option<RawShip>,
}

/// `[audit.ship]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShip {
    /// The database: `postgres://USER@HOST[:PORT]/DATABASE`, with
    /// `?sslmode=require` (TLS, its certificate verified) for any host but
    /// this machine's own. No password here: see `password`.
    #[schemars(with = "String")]
    to: Spanned<String>,
    /// The database user's password (`env:VAR`, `file:PATH`).
    #[schemars(with = "Option<SecretText>")]
    password: Option<Spanned<String>>,
    /// This replica's name in the fleet's log: unique in the fleet, the
    /// same across restarts.
    #[schemars(with = "Option<String>", extend("x-default" = "the host name"))]
    replica: Option<Spanned<String>>,
    /// PEM roots the database's certificate must chain to.
    #[schemars(with = "Option<String>", extend("x-default" = "the system's roots"))]
    ca: Option<Spanned<std::path::PathBuf>>,
    /// Records per transaction (1 to 10000).
    #[schemars(with = "Option<i64>", extend("default" = SHIP_BATCH))]
    batch: Option<Spanned<i64>>,
}

impl RawShip {
    fn validate(self, v: &Validator<'_>) -> Result<ShipConfig, ConfigError> {
        let to = self.to.get_ref();
        check_database_url(to)
            .map_err(|message| v.error(Some(self.to.span()), "audit.ship.to", message))?;
        let password =
            match &self.password {
                None => None,
                Some(value) => Some(v.secret_ref(value.get_ref()).map_err(|message| {
                    v.error(Some(value.span()), "audit.ship.password", message)
                })?),
            };
        let replica = match self.replica {
            Some(name) => {
                let valid = !name.get_ref().is_empty()
                    && name.get_ref().len() <= 128
                    && name
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
                if !valid {
                    return Err(v.error(
                        Some(name.span()),
                        "audit.ship.replica",
                        "a replica's name is 1 to 128 letters, digits, `-`, `_`, `.` or `:`".into(),
                    ));
                }
                name.into_inner()
            }
            None => match host_name() {
                name if name.is_empty() => {
                    return Err(v.error(
                        None,
                        "audit.ship.replica",
                        "this machine has no host name: name the replica".into(),
                    ));
                }
                name => name,
            },
        };
        let batch = match &self.batch {
            None => SHIP_BATCH,
            Some(value) if (1..=10_000).contains(value.get_ref()) => *value.get_ref() as u32,
            Some(value) => {
                return Err(v.error(
                    Some(value.span()),
                    "audit.ship.batch",
                    format!("{} is not between 1 and 10000", value.get_ref()),
                ));
            }
        };
        Ok(ShipConfig {
            to: to.clone(),
            password,
            replica,
            ca: self.ca.map(|ca| v.resolve(ca.into_inner())),
            batch,
        })
    }
}

/// A database URL the proxy may ship to: `postgres://` or
/// `postgresql://`, without a password (it would sit in the config and in
/// every error that quotes it), and with TLS (`sslmode=require`) unless
/// every host it names is on this machine (a loopback address, not the
/// name `localhost`, or a socket). Read as the driver reads it, query parameters (`host=`,
/// `hostaddr=`, a later `sslmode=`) included.
pub fn check_database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    use tokio_postgres::config::{Host, SslMode};
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("not a `postgres://` URL".into());
    }
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|err| format!("not a database URL the driver reads: {err}"))?;
    if config.get_password().is_some() {
        return Err(
            "the URL carries a password: give it as `password` (`env:VAR` or `file:PATH`)".into(),
        );
    }
    let hosts_local = config.get_hosts().iter().all(|host| match host {
        Host::Tcp(name) => loopback_address(name),
        Host::Unix(_) => true,
    });
    let addrs_local = config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    let local = !config.get_hosts().is_empty() && hosts_local && addrs_local;
    if !local && config.get_ssl_mode() != SslMode::Require {
        return Err(
            "the database is not on this machine: ship over TLS with `?sslmode=require`".into(),
        );
    }
    Ok(config)
}

impl RawAudit {
    /// `[audit]`; key files must lie outside `data_dir` (whoever can write
    /// the store must not be able to read them there).
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        data_dir: &Path,
    ) -> Result<AuditConfig, ConfigError> {
        let max_age = v.parsed(self.max_age.as_ref(), "audit.max_age", parse_duration)?;
        let max_records = match &self.max_records {
            None => None,
            Some(value) if *value.get_ref() >= 100 => Some(*value.get_ref() as u64),
            Some(value) => {
                return Err(v.error(
                    Some(value.span()),
                    "audit.max_records",
                    format!("{} is too few: keep at least 100 records", value.get_ref()),
                ));
            }
        };
        let key_ref = |value: &Option<Spanned<String>>,
                       key: &str|
         -> Result<Option<SecretRef>, ConfigError> {
            let Some(value) = value else {
                return Ok(None);
            };
            let fail = |message: String| v.error(Some(value.span()), key, message);
            let reference = v.secret_ref(value.get_ref()).map_err(fail)?;
            if let SecretRef::File(path) | SecretRef::DotEnv { file: path, .. } = &reference
                && inside(path, data_dir)
            {
                return Err(fail(format!(
                    "`{}` is inside `proxy.data_dir`: keep the key where whoever can write the audit store cannot read it",
                    path.display()
                )));
            }
            Ok(Some(reference))
        };
        Ok(AuditConfig {
            durability: self.durability.unwrap_or_default(),
            retention: Retention {
                max_age,
                max_records,
            },
            arguments: self.arguments.unwrap_or_default(),
            key: key_ref(&self.key, "audit.key")?,
            signing_key: key_ref(&self.signing_key, "audit.signing_key")?,
            checkpoint_every: v
                .at_least(self.checkpoint_every, "audit.checkpoint_every", 1)?
                .map_or(CHECKPOINT_EVERY, |every| every as u64),
            checkpoint_interval: v
                .parsed(
                    self.checkpoint_interval.as_ref(),
                    "audit.checkpoint_interval",
                    parse_duration,
                )?
                .unwrap_or(CHECKPOINT_INTERVAL),
            ship: self.ship.map(|ship| ship.validate(v)).transpose()?,
        })
    }
}

/// Whether `path` lies in `dir` (both made absolute and, where they exist,
/// resolved through links).
fn inside(path: &Path, dir: &Path) -> bool {
    let real = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|cwd| cwd.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    let dir = real(dir);
    // A key file that does not exist yet: its folder decides.
    let path = match path.parent() {
        Some(parent) if !path.exists() => real(parent).join(path.file_name().unwrap_or_default()),
        _ => real(path),
    };
    path.starts_with(&dir)
}

/// Whether `host` is a loopback address (`127.0.0.1`, `[::1]`): an
/// address, not a name (`localhost` is whatever the resolver says).
pub fn loopback_address(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}
