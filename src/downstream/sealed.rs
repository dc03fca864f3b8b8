//! Session ids any replica can serve (`[proxy] session_keys`).
//!
//! A handshake session's id carries what the session is: the client it
//! belongs to (a digest of its whole identity), the revision and client
//! capabilities its `initialize` settled, the agent's name, and when it
//! began — sealed with AES-256-GCM under a key the replicas share. A
//! replica that does not hold the session opens the id, checks that the
//! same client presents it and that it is not older than
//! `session_max_age`, and resumes it: no store is asked, so a replica's
//! death or a Redis outage loses no session.
//!
//! The format: `pcs1_` and, in unpadded base64url, the key's id (4 bytes
//! of the SHA-256 of the key), a random 96-bit nonce, then the sealed
//! JSON and its tag. The prefix and the key's id are bound as associated
//! data.
//!
//! What is not in the id is the replica's: the log level a client set,
//! its resource subscriptions, servers it added through discovery, and
//! calls in flight. A resumed session starts without them, and the client
//! is not told (docs/replicas.md says so).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::chain::ClientIdentity;
use crate::config::SecretRef;
use crate::sealing::{KEY_ID_LEN, SealingKey};

/// What every sealed id begins with (and is bound to).
const PREFIX: &str = "pcs1_";
const TAG_LEN: usize = 16;
/// The longest id opened (a longer one is not ours).
const MAX_ID_LEN: usize = 4096;
/// The client capabilities sealed: what the proxy reads of them (whether
/// a server may ask the client something, and the tasks extension).
const SEALED_CAPABILITIES: [&str; 4] = ["sampling", "elicitation", "roots", "extensions"];
/// Past this many bytes, the sealed capabilities keep only which ones the
/// client declared (each as `{}`), so that an id fits any header limit.
const MAX_CAPABILITY_BYTES: usize = 1024;
/// The longest agent name kept in an id.
const MAX_AGENT_CHARS: usize = 64;
/// Ended sessions this replica refuses to resume, the newest kept (by
/// their record ids: 36 bytes each).
const ENDED_KEPT: usize = 4096;

/// Why the session keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("`proxy.session_keys[{index}]`: {message}")]
    Key { index: usize, message: String },
    #[error("the system's random source failed")]
    Random,
    #[error("the session's state could not be sealed: {0}")]
    Seal(String),
}

/// A session as its id carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    /// The client's name (readable in a record of a resumed session).
    #[serde(rename = "c")]
    pub(super) client: String,
    /// A digest of the client's whole identity ([`identity_digest`]).
    #[serde(rename = "d")]
    digest: String,
    /// The revision its `initialize` settled.
    #[serde(rename = "v")]
    pub(super) version: String,
    /// The capabilities the client declared (those the proxy reads).
    #[serde(rename = "k")]
    pub(super) capabilities: Value,
    /// The agent's name, from `clientInfo`.
    #[serde(rename = "a")]
    pub(super) agent: String,
    /// When the session began (seconds since the epoch).
    #[serde(rename = "t")]
    issued: u64,
}

/// The replicas' shared keys, and the ids this replica saw ended.
pub struct Sealer {
    keys: Vec<SealingKey>,
    max_age: Duration,
    random: SystemRandom,
    ended: Mutex<Ended>,
}

#[derive(Default)]
struct Ended {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Sealer {
    /// The keys from their references (each 32 bytes as hex).
    pub fn load(keys: &[SecretRef], max_age: Duration) -> Result<Option<Self>, SealError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let texts = keys
            .iter()
            .enumerate()
            .map(|(index, reference)| {
                reference
                    .resolve()
                    .map_err(|message| SealError::Key { index, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_hex(&texts, max_age).map(Some)
    }

    /// The keys from their hex texts.
    pub fn from_hex(texts: &[String], max_age: Duration) -> Result<Self, SealError> {
        let keys = crate::sealing::keys_from_hex(texts).map_err(|(index, err)| SealError::Key {
            index,
            message: err.to_string(),
        })?;
        Ok(Self {
            keys,
            max_age,
            random: SystemRandom::new(),
            ended: Mutex::new(Ended::default()),
        })
    }

    /// The id of a session `initialize` (`message`) begins for `client`.
    pub fn seal(&self, client: &ClientIdentity, message: &Value) -> Result<String, SealError> {
        let params = crate::protocol::params(message);
        let requested = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let agent: String = params
            .and_then(|p| p.get("clientInfo"))
            .and_then(|info| info.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .chars()
            .take(MAX_AGENT_CHARS)
            .collect();
        let sealed = Sealed {
            client: client.name.to_string(),
            digest: identity_digest(client),
            version: crate::protocol::negotiated_version(requested).to_owned(),
            capabilities: kept_capabilities(params.and_then(|p| p.get("capabilities"))),
            agent,
            issued: now_secs(),
        };
        self.seal_state(&sealed)
    }

    fn seal_state(&self, sealed: &Sealed) -> Result<String, SealError> {
        let Some(key) = self.keys.first() else {
            return Err(SealError::Key {
                index: 0,
                message: "no key".into(),
            });
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed_bytes =
            serde_json::to_vec(sealed).map_err(|err| SealError::Seal(err.to_string()))?;
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(&key.id)),
                &mut sealed_bytes,
            )
            .map_err(|_| SealError::Seal("AES-256-GCM refused it".into()))?;
        let mut raw = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed_bytes.len());
        raw.extend_from_slice(&key.id);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed_bytes);
        let id = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        if id.len() > MAX_ID_LEN {
            return Err(SealError::Seal(format!(
                "{} characters, past {MAX_ID_LEN}",
                id.len()
            )));
        }
        Ok(id)
    }

    /// The session `id` seals, if one of the keys sealed it, `client` is
    /// the client it belongs to (the same identity: name, groups,
    /// attributes, and what its access token said), it is not older than
    /// `session_max_age`, and this replica did not see it ended.
    pub fn open(&self, id: &str, client: &ClientIdentity) -> Option<Sealed> {
        let sealed = self.open_any(id)?;
        let age = now_secs().saturating_sub(sealed.issued);
        let fresh = Duration::from_secs(age) <= self.max_age;
        let same = sealed.digest == identity_digest(client) && *sealed.client == *client.name;
        (fresh && same && !self.was_ended(id)).then_some(sealed)
    }

    /// What `id` seals, whoever presents it.
    fn open_any(&self, id: &str) -> Option<Sealed> {
        if id.len() > MAX_ID_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(id.strip_prefix(PREFIX)?).ok()?;
        if raw.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (key_id, rest) = raw.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|key| key.id == key_id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(associated(&key.id)), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    /// The client ended session `id` here (`DELETE`): this replica no
    /// longer resumes it.
    pub(super) fn ended(&self, id: &str) {
        let id = record_id(id);
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.ids.insert(id.clone()) {
            ended.order.push_back(id);
        }
        while ended.order.len() > ENDED_KEPT {
            if let Some(oldest) = ended.order.pop_front() {
                ended.ids.remove(&oldest);
            }
        }
    }

    /// Whether this replica saw session `id` ended.
    pub(super) fn was_ended(&self, id: &str) -> bool {
        let id = record_id(id);
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.ids.contains(&id)
    }
}

/// What a sealed id's ciphertext is bound to besides itself: the format
/// and the key that sealed it.
fn associated(key_id: &[u8; KEY_ID_LEN]) -> [u8; PREFIX.len() + KEY_ID_LEN] {
    let mut bound = [0u8; PREFIX.len() + KEY_ID_LEN];
    let from = PREFIX.as_bytes().iter().chain(key_id);
    bound
        .iter_mut()
        .zip(from)
        .for_each(|(to, from)| *to = *from);
    bound
}

/// The id a sealed session's records and logs name it by: a UUID
/// (version 8) of the SHA-256 of its sealed id, the same on every replica
/// (the sealed id itself is long, and is the client's to present).
pub fn record_id(sealed_id: &str) -> String {
    let digest = Sha256::digest(sealed_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes
        .iter_mut()
        .zip(digest)
        .for_each(|(to, from)| *to = from);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A digest (hex) of everything that makes a client who it is: a
/// session resumes only for the identity it began with (a token that now
/// says other groups or scopes starts another, as on one replica).
fn identity_digest(client: &ClientIdentity) -> String {
    let token = client.token.as_ref().map(|token| {
        json!([
            &*token.provider,
            token.subject,
            token.client_id,
            token.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
        ])
    });
    let identity = json!([
        &*client.name,
        client.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
        &*client.attributes,
        token,
    ]);
    // 128 bits: the id is sealed, so this need only tell identities apart.
    hex::encode(
        Sha256::digest(identity.to_string())
            .get(..16)
            .unwrap_or_default(),
    )
}

/// The client capabilities an id keeps: those the proxy reads, whole if
/// they are small, else only which were declared.
fn kept_capabilities(declared: Option<&Value>) -> Value {
    let mut kept = Map::new();
    if let Some(declared) = declared.and_then(Value::as_object) {
        for name in SEALED_CAPABILITIES {
            if let Some(value) = declared.get(name).filter(|v| !v.is_null()) {
                kept.insert(name.to_owned(), value.clone());
            }
        }
    }
    if Value::Object(kept.clone()).to_string().len() > MAX_CAPABILITY_BYTES {
        for value in kept.values_mut() {
            *value = json!({});
        }
    }
    Value::Object(kept)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
