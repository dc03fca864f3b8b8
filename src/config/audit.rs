//! `[audit]`: the audit log, its retention, durability and keys.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, SecretRef, Validator, inside, parse_secret_ref};

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
        }
    }
}

/// `[audit] arguments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Flushed before the reply is sent (the default).
    #[default]
    Durable,
    /// Written before the reply, flushed within 10 ms: a crash of the
    /// machine (not of the proxy) can lose the last 10 ms of records.
    Buffered,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) durability: Option<Durability>,
    pub(super) arguments: Option<AuditArguments>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) max_records: Option<Spanned<i64>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) signing_key: Option<Spanned<String>>,
    pub(super) checkpoint_every: Option<Spanned<i64>>,
    pub(super) checkpoint_interval: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// `[audit]` with its keys: references to files outside `data_dir`
    /// (whoever can write the store must not be able to read them there),
    /// or environment variables.
    pub(super) fn audit_keys(
        &self,
        raw: &RawAudit,
        data_dir: &Path,
        durability: Durability,
        retention: Retention,
        arguments: AuditArguments,
    ) -> Result<AuditConfig, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let key_ref = |value: &Option<Spanned<String>>,
                       key: &str|
         -> Result<Option<SecretRef>, ConfigError> {
            let Some(value) = value else {
                return Ok(None);
            };
            let fail = |message: String| self.error(Some(value.span()), key, message);
            let reference = parse_secret_ref(value.get_ref(), base).map_err(fail)?;
            if let SecretRef::File(path) = &reference
                && inside(path, data_dir)
            {
                return Err(fail(format!(
                    "`{}` is inside `proxy.data_dir`: keep the key where whoever can write the audit store cannot read it",
                    path.display()
                )));
            }
            Ok(Some(reference))
        };
        let checkpoint_every = match &raw.checkpoint_every {
            None => CHECKPOINT_EVERY,
            Some(value) if *value.get_ref() >= 1 => *value.get_ref() as u64,
            Some(value) => {
                return Err(self.error(
                    Some(value.span()),
                    "audit.checkpoint_every",
                    "must be at least 1".into(),
                ));
            }
        };
        Ok(AuditConfig {
            durability,
            retention,
            arguments,
            key: key_ref(&raw.key, "audit.key")?,
            signing_key: key_ref(&raw.signing_key, "audit.signing_key")?,
            checkpoint_every,
            checkpoint_interval: self.duration(
                raw.checkpoint_interval.clone(),
                "audit.checkpoint_interval",
                CHECKPOINT_INTERVAL,
            )?,
        })
    }
}
