//! A read handle on a store: records by sequence number (the `records`
//! tree, keyed by big-endian sequence numbers), the retention anchor (in
//! `meta`), and the search for a time (record times never go backwards
//! along the chain). Queries (`query`) and verification (`verify`) build on
//! it.

use std::path::{Path, PathBuf};

use super::index::key_seq;
use super::record::AuditRecord;
use super::{AuditError, read_error};

/// Where the kept chain starts once retention removed older records: the
/// first kept record and its `prev_hash` (the removed record's hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    pub first_seq: u64,
    pub prev_hash: String,
}

/// The `meta` key of the anchor.
pub(super) const ANCHOR_KEY: &[u8] = b"anchor";

/// A read handle on a store; cheap to clone, usable while the writer writes.
#[derive(Clone)]
pub struct Reader {
    pub(super) path: PathBuf,
    pub(super) records: sled::Tree,
    pub(super) index: sled::Tree,
    pub(super) meta: sled::Tree,
}

/// A record as stored under its key, with the sequence number the key names.
pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<(u64, AuditRecord), AuditError> {
    let seq = key_seq(key);
    let record = serde_json::from_slice(value)
        .map_err(|e| AuditError::Read(format!("record {seq} does not parse: {e}")))?;
    Ok((seq, record))
}

impl Reader {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's name: its folder's (`serve`, `stdio-NAME-2`), which its
    /// signed checkpoints name too.
    pub fn store_name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The last record's sequence number (0 for an empty log).
    pub fn last_seq(&self) -> Result<u64, AuditError> {
        Ok(self
            .records
            .last()
            .map_err(read_error)?
            .map_or(0, |(key, _)| key_seq(&key)))
    }

    /// Where the kept chain starts, once retention removed older records.
    pub fn anchor(&self) -> Result<Option<Anchor>, AuditError> {
        match self.meta.get(ANCHOR_KEY).map_err(read_error)? {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| AuditError::Read(format!("the retention anchor does not parse: {e}"))),
            None => Ok(None),
        }
    }

    pub fn first_seq(&self) -> Result<u64, AuditError> {
        Ok(self
            .records
            .first()
            .map_err(read_error)?
            .map_or(1, |(key, _)| key_seq(&key)))
    }

    /// The record stored under `seq`, if any.
    pub fn get(&self, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
        match self.records.get(seq.to_be_bytes()).map_err(read_error)? {
            Some(value) => Ok(Some(decode(&seq.to_be_bytes(), &value)?.1)),
            None => Ok(None),
        }
    }

    /// The time of the record at `seq`, or of the nearest one before it.
    fn time_at(&self, seq: u64) -> Result<Option<String>, AuditError> {
        match self
            .records
            .range(..=seq.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(read_error)?
        {
            Some((key, value)) => Ok(Some(decode(&key, &value)?.1.time)),
            None => Ok(None),
        }
    }

    /// The first sequence number in `[lo, hi]` whose record's time is at
    /// least `time` (`hi + 1` when none): a binary search, since times never
    /// go backwards along the chain.
    pub(super) fn first_at_or_after(
        &self,
        time: &str,
        lo: u64,
        hi: u64,
    ) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (lo, hi.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.time_at(mid)? {
                Some(found) if found.as_str() >= time => hi = mid,
                _ => lo = mid + 1,
            }
        }
        Ok(lo)
    }
}
