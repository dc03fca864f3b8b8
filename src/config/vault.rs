//! `[vault]`: the keys that seal the tokens users got by signing in to
//! remote servers (`src/signin/vault.rs`).

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, SecretRef, ServerConfig, UpstreamSpec, Validator};

/// `[vault]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultConfig {
    /// The keys: the first seals, every one opens (a key being rotated
    /// out stays listed until what it sealed was sealed again).
    pub keys: Vec<SecretRef>,
}

/// `[vault]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    /// Secret references (`file:PATH`, `env:NAME`, `dotenv:PATH#KEY`) to
    /// 32-byte keys written as 64 hex digits (`portcullis session-key
    /// --out FILE` makes one): the first seals each user's tokens with
    /// AES-256-GCM, every one opens. A `file:` key must be outside
    /// `[proxy] data_dir`, which holds what it seals. Without keys, no
    /// user can sign in to a server.
    #[serde(default)]
    #[schemars(with = "Vec<String>", extend("default" = []))]
    keys: Vec<Spanned<String>>,
}

impl RawVault {
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        data_dir: &std::path::Path,
    ) -> Result<VaultConfig, ConfigError> {
        let keys = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let located = |message: String| {
                    v.error(Some(key.span()), &format!("vault.keys[{i}]"), message)
                };
                let secret = v.secret_ref(key.get_ref()).map_err(located)?;
                if let SecretRef::File(path) | SecretRef::DotEnv { file: path, .. } = &secret
                    && inside(path, data_dir)
                {
                    return Err(located(format!(
                        "`{}` is inside `[proxy] data_dir` ({}), beside the tokens it seals: keep the key elsewhere",
                        path.display(),
                        data_dir.display()
                    )));
                }
                Ok(secret)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VaultConfig { keys })
    }
}

/// A server whose users sign in needs somewhere to keep their tokens.
pub(super) fn check_sign_in(
    v: &Validator<'_>,
    servers: &[ServerConfig],
    vault: &VaultConfig,
) -> Result<(), ConfigError> {
    let signing_in = servers.iter().find(
        |server| matches!(&server.kind, UpstreamSpec::Remote(remote) if remote.sign_in.is_some()),
    );
    match signing_in {
        Some(server) if vault.keys.is_empty() => Err(v.error(
            None,
            &format!("servers.{}.remote.sign_in", server.name),
            "users' tokens are kept sealed in the vault: set `[vault] keys` (docs/signin.md)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `path` is in `dir`: as written, as its folder resolves, or as
/// it resolves itself (a link to a file in `dir`).
fn inside(path: &std::path::Path, dir: &std::path::Path) -> bool {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let written = dir;
    let dir = canonical(dir);
    path.starts_with(written)
        || path.starts_with(&dir)
        || path
            .parent()
            .map(canonical)
            .is_some_and(|parent| parent.starts_with(&dir))
        || canonical(path).starts_with(&dir)
}
