//! How records are sealed onto the chain, and the signed checkpoints of
//! its head.
//!
//! A plain chain (`hash` = SHA-256 over the record, `prev_hash` included)
//! shows a record changed, removed or reordered in place, but whoever can
//! write the store can rewrite every hash after the change too. A keyed
//! chain also gives each record a `mac`: HMAC-SHA256 of its `hash` under a
//! key kept outside `data_dir`. Without the key nobody can give a rewritten
//! record a `mac` that verifies, and a record without one after a record
//! with one is itself the sign of a rewrite (anyone can see that). `hash`
//! stays SHA-256, so anyone can check each record's content, and a signed
//! checkpoint of a head pins everything before it.
//!
//! Neither shows a cut tail (the last records removed, the chain still
//! whole). A signed checkpoint does: every so many records or seconds the
//! writer signs the chain's head (sequence number and hash) with an
//! Ed25519 key kept outside `data_dir`, and appends the statement to the
//! log as a `signed_checkpoint` record, which `audit export --follow`
//! ships elsewhere as it is written. A checkpoint kept elsewhere vouches
//! that the log reached that head: a log that ends before it, or holds
//! another record there, was cut or rewritten.

use std::sync::Arc;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The shortest chain key accepted (bytes).
const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the audit key must be at least {MIN_KEY_BYTES} bytes written as hex (`portcullis audit keygen` makes one)"
    )]
    ShortKey,
    #[error(
        "the signing key is not an Ed25519 key in PKCS#8 written as hex (`portcullis audit keygen` makes one)"
    )]
    SigningKey,
    #[error("the public key is not an Ed25519 public key written as 64 hex characters")]
    PublicKey,
    #[error("cannot make a key: {0}")]
    Random(String),
}

/// How the writer seals records, and how verification checks them.
#[derive(Clone, Default)]
pub enum Seal {
    /// SHA-256: shows in-place edits only.
    #[default]
    Plain,
    /// HMAC-SHA256 under the chain key.
    Keyed(Arc<ring::hmac::Key>),
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Seal::Plain",
            Self::Keyed(_) => "Seal::Keyed",
        })
    }
}

/// What a record's `mac` says of it, under a seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    /// The record has no `mac`: sealed without a key.
    Unkeyed,
    /// Its `mac` matches its `hash` under the key.
    Valid,
    /// It has a `mac`, but this check has no key to test it with.
    Unchecked,
    /// Its `mac` does not match its `hash` under the key.
    Bad,
}

impl Seal {
    /// The key from its text: hex of at least 32 bytes.
    pub fn keyed(text: &str) -> Result<Self, SealError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::ShortKey)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SealError::ShortKey);
        }
        Ok(Self::Keyed(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        ))))
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, Self::Keyed(_))
    }

    /// The `mac` of a record whose `hash` is `hash`, under a key.
    pub fn mac(&self, hash: &str) -> Option<String> {
        match self {
            Self::Plain => None,
            Self::Keyed(key) => Some(hex::encode(ring::hmac::sign(key, hash.as_bytes()))),
        }
    }

    /// Checks a record's `mac` against its (already checked) `hash`.
    pub fn check(&self, hash: &str, mac: Option<&str>) -> MacCheck {
        match (mac, self) {
            (None, _) => MacCheck::Unkeyed,
            (Some(_), Self::Plain) => MacCheck::Unchecked,
            (Some(mac), Self::Keyed(key)) => match hex::decode(mac) {
                // Compared in constant time by ring.
                Ok(tag) if ring::hmac::verify(key, hash.as_bytes(), &tag).is_ok() => {
                    MacCheck::Valid
                }
                _ => MacCheck::Bad,
            },
        }
    }
}

/// What a signed checkpoint vouches for: the chain of `store` reached
/// `seq`, whose record's hash is `hash`, at `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub store: String,
    pub seq: u64,
    pub hash: String,
    pub time: String,
}

impl Statement {
    /// The bytes signed: the statement's fields in a fixed order.
    fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "portcullis-checkpoint-v1\n{}\n{}\n{}\n{}",
            self.store, self.seq, self.hash, self.time
        )
        .into_bytes()
    }
}

/// A statement with its signature, as a `signed_checkpoint` record's
/// `detail` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub statement: Statement,
    /// The first 16 hex characters of the SHA-256 of the public key.
    pub key_id: String,
    /// Ed25519 over the statement, hex.
    pub signature: String,
}

impl Checkpoint {
    /// What this checkpoint, kept elsewhere, says of a log whose chain
    /// starts at `first_seq` (retention), ends at `last_seq`, and holds
    /// `hash_at_seq` at the checkpoint's sequence number: `Err` with the
    /// record and the problem when the log was cut or rewritten since.
    pub fn judge(
        &self,
        first_seq: u64,
        last_seq: u64,
        hash_at_seq: Option<&str>,
    ) -> Result<(), (u64, String)> {
        let Statement {
            seq, hash, time, ..
        } = &self.statement;
        if last_seq < *seq {
            return Err((
                last_seq + 1,
                format!(
                    "the log ends at record {last_seq}, but a checkpoint signed at {time} vouches for records up to {seq}: its tail was cut"
                ),
            ));
        }
        match hash_at_seq {
            Some(held) if held == hash => Ok(()),
            // Removed by retention since: nothing left to compare.
            None if *seq < first_seq => Ok(()),
            _ => Err((
                *seq,
                format!(
                    "it holds another record than the one the checkpoint signed at {time} vouches for: the chain was rewritten"
                ),
            )),
        }
    }
}

/// Signs checkpoints: the Ed25519 key pair.
#[derive(Clone)]
pub struct Signer {
    pair: Arc<Ed25519KeyPair>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id())
    }
}

impl Signer {
    /// The key from its text: PKCS#8 (as `audit keygen` writes it), hex.
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        let der = hex::decode(text.trim()).map_err(|_| SealError::SigningKey)?;
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| SealError::SigningKey)?;
        Ok(Self {
            pair: Arc::new(pair),
        })
    }

    pub fn verifier(&self) -> Verifier {
        Verifier {
            public: self.pair.public_key().as_ref().to_vec(),
        }
    }

    pub fn key_id(&self) -> String {
        self.verifier().key_id()
    }

    pub fn sign(&self, statement: Statement) -> Checkpoint {
        let signature = self.pair.sign(&statement.signed_bytes());
        Checkpoint {
            statement,
            key_id: self.key_id(),
            signature: hex::encode(signature.as_ref()),
        }
    }
}

/// Checks checkpoints: the Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    public: Vec<u8>,
}

impl Verifier {
    /// The public key from its text: 32 bytes, hex (as `audit keygen`
    /// writes it).
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        let public = hex::decode(text.trim()).map_err(|_| SealError::PublicKey)?;
        if public.len() != 32 {
            return Err(SealError::PublicKey);
        }
        Ok(Self { public })
    }

    pub fn to_text(&self) -> String {
        hex::encode(&self.public)
    }

    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(&self.public))[..16].to_owned()
    }

    /// Whether `checkpoint` was signed with this key's private half.
    pub fn verifies(&self, checkpoint: &Checkpoint) -> bool {
        let Ok(signature) = hex::decode(&checkpoint.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(&checkpoint.statement.signed_bytes(), &signature)
            .is_ok()
    }
}

/// New keys, as `audit keygen` writes them: the chain key (hex), the
/// signing key (PKCS#8, hex) and its public key (hex).
pub fn generate() -> Result<(String, String, String), SealError> {
    let random = ring::rand::SystemRandom::new();
    let mut chain = [0u8; 32];
    ring::rand::SecureRandom::fill(&random, &mut chain)
        .map_err(|_| SealError::Random("the system's random source failed".into()))?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random)
        .map_err(|_| SealError::Random("the system's random source failed".into()))?;
    let signer = Signer::from_text(&hex::encode(pkcs8.as_ref()))?;
    Ok((
        hex::encode(chain),
        hex::encode(pkcs8.as_ref()),
        signer.verifier().to_text(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Seal, Signer) {
        let (chain, signing, _) = generate().unwrap_or_else(|e| panic!("{e}"));
        (
            Seal::keyed(&chain).unwrap_or_else(|e| panic!("{e}")),
            Signer::from_text(&signing).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn a_mac_checks_only_under_its_key_and_its_hash() {
        let (seal, _) = keys();
        let (other, _) = keys();
        let mac = seal.mac("abc").unwrap_or_default();
        assert_eq!(mac.len(), 64);
        assert_eq!(seal.check("abc", Some(&mac)), MacCheck::Valid);
        assert_eq!(seal.check("abd", Some(&mac)), MacCheck::Bad);
        assert_eq!(other.check("abc", Some(&mac)), MacCheck::Bad);
        assert_eq!(seal.check("abc", Some("zz")), MacCheck::Bad);
        assert_eq!(Seal::Plain.check("abc", Some(&mac)), MacCheck::Unchecked);
        assert_eq!(seal.check("abc", None), MacCheck::Unkeyed);
        assert_eq!(Seal::Plain.mac("abc"), None);
    }

    #[test]
    fn short_or_malformed_keys_are_refused() {
        assert_eq!(Seal::keyed("abcd").err(), Some(SealError::ShortKey));
        assert_eq!(
            Seal::keyed(&"x".repeat(64)).err(),
            Some(SealError::ShortKey)
        );
        assert_eq!(Signer::from_text("00").err(), Some(SealError::SigningKey));
        assert_eq!(
            Verifier::from_text("abcd").err(),
            Some(SealError::PublicKey)
        );
    }

    #[test]
    fn a_kept_checkpoint_shows_a_cut_tail_and_a_rewritten_record() {
        let (_, signer) = keys();
        let checkpoint = signer.sign(Statement {
            store: "serve".into(),
            seq: 10,
            hash: "abc".into(),
            time: "t".into(),
        });
        assert_eq!(checkpoint.judge(1, 12, Some("abc")), Ok(()));
        let cut = checkpoint.judge(1, 7, None).err().unwrap_or_default();
        assert_eq!(cut.0, 8);
        assert!(cut.1.contains("its tail was cut"), "{}", cut.1);
        let rewritten = checkpoint
            .judge(1, 12, Some("abd"))
            .err()
            .unwrap_or_default();
        assert_eq!(rewritten.0, 10);
        assert!(rewritten.1.contains("rewritten"), "{}", rewritten.1);
        assert!(checkpoint.judge(1, 12, None).is_err(), "a missing record");
        assert_eq!(checkpoint.judge(11, 30, None), Ok(()), "pruned since");
    }

    #[test]
    fn a_checkpoint_verifies_under_its_public_key_only() {
        let (_, signer) = keys();
        let (_, other) = keys();
        let statement = Statement {
            store: "serve".into(),
            seq: 42,
            hash: "00".into(),
            time: "2026-11-25T10:00:00.000Z".into(),
        };
        let checkpoint = signer.sign(statement);
        let verifier = signer.verifier();
        assert!(verifier.verifies(&checkpoint));
        assert_eq!(checkpoint.key_id, verifier.key_id());
        assert!(!other.verifier().verifies(&checkpoint));
        for forge in [
            |c: &mut Checkpoint| c.statement.seq = 43,
            |c: &mut Checkpoint| c.statement.hash.push('1'),
            |c: &mut Checkpoint| c.statement.store = "stdio-x".into(),
            |c: &mut Checkpoint| c.signature = "00".into(),
        ] {
            let mut forged = checkpoint.clone();
            forge(&mut forged);
            assert!(!verifier.verifies(&forged), "{forged:?}");
        }
        let public = Verifier::from_text(&verifier.to_text()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(public, verifier);
    }
}
