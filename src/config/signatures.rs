//! `[signatures]`: the operator's public keys, and which container servers'
//! images must carry a cosign signature by one of them (`require` for
//! all; `require_signature` on a server's `container` or on a catalog).
//! What the keys must sign is checked when a container starts
//! (`upstream::container::signature`); here the keys are read and checked
//! to be keys, and the servers that need them are given them.

use std::path::PathBuf;
use std::sync::Arc;

use p256::pkcs8::DecodePublicKey as _;
use schemars::JsonSchema;
use serde::Deserialize;

use super::values::PathText;
use super::{ConfigError, DiscoveryConfig, ServerConfig, UpstreamSpec, Validator};

/// `[signatures]` as written.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignatures {
    /// PEM public keys (ECDSA P-256, as `cosign generate-key-pair` makes):
    /// an image's signature must be by one of them. Relative to this file.
    #[serde(default)]
    #[schemars(with = "Vec<PathText>")]
    keys: Vec<PathBuf>,
    /// Every container server's image must be signed (otherwise only those
    /// with `require_signature`, theirs or their catalog's).
    #[serde(default)]
    require: bool,
}

/// One of the operator's keys: where it was read from, and its PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureKey {
    pub path: PathBuf,
    pub pem: String,
}

/// The keys a signed image's signature must be by.
pub type SignatureKeys = Arc<Vec<SignatureKey>>;

impl RawSignatures {
    /// Reads the keys, and gives them to every container server that must
    /// be signed (configured, or offered by `[discovery]`).
    pub(super) fn apply(
        self,
        validator: &Validator<'_>,
        servers: &mut [ServerConfig],
        discovery: Option<&mut DiscoveryConfig>,
    ) -> Result<(), ConfigError> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for (index, path) in self.keys.into_iter().enumerate() {
            let path = validator.resolve(path);
            let key = format!("signatures.keys[{index}]");
            let pem = super::values::read_regular(&path, 64 * 1024).map_err(|err| {
                validator.error(
                    None,
                    &key,
                    format!("cannot read `{}`: {err}", path.display()),
                )
            })?;
            if p256::PublicKey::from_public_key_pem(&pem).is_err() {
                return Err(validator.error(
                    None,
                    &key,
                    format!(
                        "`{}` is not a PEM public key of ECDSA P-256 (`cosign generate-key-pair` makes one)",
                        path.display()
                    ),
                ));
            }
            keys.push(SignatureKey { path, pem });
        }
        let keys: SignatureKeys = Arc::new(keys);
        let mut needing = Vec::new();
        let configured = servers.iter_mut();
        let offered = discovery
            .into_iter()
            .flat_map(|discovery| discovery.servers.iter_mut())
            .filter_map(|found| found.server.as_mut().ok());
        for server in configured.chain(offered) {
            let UpstreamSpec::Container(spec) = &mut server.kind else {
                continue;
            };
            if self.require || spec.require_signature {
                spec.require_signature = true;
                spec.signature_keys = keys.clone();
                needing.push(server.name.clone());
            }
        }
        if keys.is_empty()
            && let Some(first) = needing.first()
        {
            return Err(validator.error(
                None,
                "signatures.keys",
                format!(
                    "server `{first}` must run a signed image, but `[signatures] keys` names no key to check it with"
                ),
            ));
        }
        Ok(())
    }
}
