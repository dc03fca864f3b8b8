//! The secondary index: which keys a record adds, and how postings are
//! laid out. `inserts` adds them with each record, `query` walks them, the
//! sled store re-indexes (at open) and prunes them.
//!
//! The index tree holds postings: for each (field, value) and each block of
//! 1024 sequence numbers, one key `tag · len(u16 BE) · value · block(u64
//! BE)` whose value lists the offsets (u16 BE, ascending) of that block's
//! records with that value. The writer rewrites the few keys a batch
//! touches (not one key per record per field), and the records of one value
//! are a key range sorted by sequence number.

use super::record::AuditRecord;

/// The index layout's version (a store with another is re-indexed at open).
pub(super) const INDEX_VERSION: &[u8] = b"3";
/// Where the index keeps its version: a key no index entry can have.
pub(super) const INDEX_VERSION_KEY: &[u8] = b"\xffversion";

/// Index tags.
pub(super) const CLIENT: u8 = b'c';
pub(super) const SERVER: u8 = b's';
pub(super) const TARGET: u8 = b't';
pub(super) const DECISION: u8 = b'd';
/// Records of a kind other than `exchange` (which is most of them).
pub(super) const KIND: u8 = b'k';
/// Index values are cut at this many bytes (long resource URIs): equal cut
/// values are told apart by the check against the whole filter.
const MAX_VALUE: usize = 512;

/// The key prefix of one indexed value.
pub(super) fn index_prefix(tag: u8, value: &str) -> Vec<u8> {
    let mut bytes = value.as_bytes();
    if bytes.len() > MAX_VALUE {
        bytes = bytes.get(..MAX_VALUE).unwrap_or(bytes);
    }
    let mut key = Vec::with_capacity(3 + bytes.len() + 8);
    key.push(tag);
    key.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    key.extend_from_slice(bytes);
    key
}

/// Sequence numbers per postings block: 1024 (16 in unit tests, so that
/// small stores span many blocks).
pub(super) const BLOCK_BITS: u32 = if cfg!(test) { 4 } else { 10 };

/// The postings key of an index prefix and a sequence number's block.
pub(super) fn block_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&(seq >> BLOCK_BITS).to_be_bytes());
    key
}

/// The sequence numbers a postings value lists, ascending.
pub(super) fn postings(key: &[u8], value: &[u8]) -> Vec<u64> {
    let base = key_seq(key) << BLOCK_BITS;
    value
        .as_chunks::<2>()
        .0
        .iter()
        .map(|pair| base + u64::from(u16::from_be_bytes(*pair)))
        .collect()
}

/// Adds offsets to a postings value, keeping it ascending and without
/// duplicates (the index is rewritten for records it already lists at
/// open).
pub(super) fn add_postings(value: &mut Vec<u8>, offsets: &[u16]) {
    let last = value
        .as_rchunks::<2>()
        .1
        .last()
        .map(|pair| u16::from_be_bytes(*pair));
    if offsets
        .first()
        .is_some_and(|first| last.is_none_or(|last| *first > last))
        && offsets.is_sorted_by(|a, b| a < b)
    {
        for offset in offsets {
            value.extend_from_slice(&offset.to_be_bytes());
        }
        return;
    }
    let mut all: Vec<u16> = value
        .as_chunks::<2>()
        .0
        .iter()
        .map(|pair| u16::from_be_bytes(*pair))
        .chain(offsets.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    value.clear();
    for offset in all {
        value.extend_from_slice(&offset.to_be_bytes());
    }
}

/// The index prefixes of a record (one per indexed field it has).
pub(super) fn index_keys(record: &AuditRecord) -> Vec<Vec<u8>> {
    let mut keys = vec![index_prefix(CLIENT, &record.client)];
    if record.decision != "allow" {
        keys.push(index_prefix(DECISION, &record.decision));
    }
    if let Some(server) = &record.server {
        keys.push(index_prefix(SERVER, server));
    }
    if let Some(target) = &record.target {
        keys.push(index_prefix(TARGET, target));
    }
    if record.kind != "exchange" {
        keys.push(index_prefix(KIND, &record.kind));
    }
    keys
}

/// The big-endian number a key ends with: the sequence number of a record's
/// key, the block of a postings key.
pub(super) fn key_seq(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (to, from) in bytes.iter_mut().rev().zip(key.iter().rev()) {
        *to = *from;
    }
    u64::from_be_bytes(bytes)
}
