//! The keys things are sealed under at rest or in transit (session ids,
//! the token vault): 32 bytes for AES-256-GCM, written as 64 hex digits
//! (`portcullis session-key` makes one), each known by an id of 4 bytes
//! of its SHA-256 (what a sealed thing says it was sealed under; the key
//! itself is never written beside it).

use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use sha2::{Digest, Sha256};

/// A key's length: 32 bytes, written as 64 hex digits.
pub const KEY_BYTES: usize = 32;
/// A key's id's length.
pub const KEY_ID_LEN: usize = 4;

/// Why a list of keys cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "a key is 32 bytes written as 64 hex digits (`portcullis session-key --out FILE` makes one)"
    )]
    NotHex,
    #[error("the same key is listed twice")]
    Twice,
}

/// A key, and its id.
pub struct SealingKey {
    pub id: [u8; KEY_ID_LEN],
    pub key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

/// The keys written in `texts` (surrounding white space aside), in order;
/// the index of the first that cannot be used, and why.
pub fn keys_from_hex(texts: &[String]) -> Result<Vec<SealingKey>, (usize, KeyError)> {
    let mut keys: Vec<SealingKey> = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let mut bytes = [0u8; KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| (index, KeyError::NotHex))?;
        let id = key_id(&bytes);
        if keys.iter().any(|key| key.id == id) {
            return Err((index, KeyError::Twice));
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| (index, KeyError::NotHex))?;
        keys.push(SealingKey {
            id,
            key: LessSafeKey::new(unbound),
        });
    }
    Ok(keys)
}

/// A key's id: the first 4 bytes of its SHA-256.
fn key_id(bytes: &[u8; KEY_BYTES]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(bytes);
    let mut id = [0u8; KEY_ID_LEN];
    id.iter_mut().zip(digest).for_each(|(to, from)| *to = from);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn keys_are_read_in_order_with_their_ids() {
        let keys = keys_from_hex(&[format!("{KEY}\n"), "11".repeat(32)]).expect("keys");
        assert_eq!(keys.len(), 2);
        let digest = Sha256::digest(hex::decode(KEY).expect("hex"));
        assert_eq!(keys[0].id[..], digest[..KEY_ID_LEN]);
        assert_ne!(keys[0].id, keys[1].id);
        assert!(!format!("{:?}", keys[0]).contains(KEY));
    }

    #[test]
    fn a_short_a_long_a_non_hex_or_a_repeated_key_is_refused_by_its_index() {
        for (texts, expected) in [
            (vec!["ab".repeat(31)], (0, KeyError::NotHex)),
            (vec![KEY.to_owned(), "ab".repeat(33)], (1, KeyError::NotHex)),
            (vec![KEY.replace('0', "g")], (0, KeyError::NotHex)),
            (
                vec![KEY.to_owned(), KEY.to_uppercase()],
                (1, KeyError::Twice),
            ),
        ] {
            assert_eq!(keys_from_hex(&texts).err(), Some(expected), "{texts:?}");
        }
    }
}
