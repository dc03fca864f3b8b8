//! Making logged records readable: their sled inserts (the record and its
//! postings), and the queue of logged records waiting for them, which the
//! applier thread drains (or the writer, when it must).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::index::{BLOCK_BITS, add_postings, block_key, index_keys};
use super::record::AuditRecord;
use super::storage::Apply;
use super::{AuditError, write_error};

/// Logged records waiting for their sled inserts.
#[derive(Default)]
struct Unapplied {
    records: Vec<AuditRecord>,
    values: Vec<Vec<u8>>,
}

/// Writes records and their postings into sled (not flushed).
pub(super) struct Inserter {
    records: sled::Tree,
    index: sled::Tree,
}

/// Logged records on their way into sled: `log` queues them, the applier
/// thread (or the writer, when it must drain) inserts them.
pub(super) struct SledApplier {
    pub(super) inserter: Inserter,
    queue: std::sync::Mutex<Unapplied>,
    /// Held while records are inserted, so that two drains never
    /// interleave (the queue itself is locked only to push or take).
    applying: std::sync::Mutex<()>,
    /// The sequence number of the last record in sled.
    pub(super) applied: AtomicU64,
}

/// At most this many logged records wait for sled: past it, `log` refuses
/// (sled has been failing for a while; the proxy fails closed).
pub(super) const MAX_UNAPPLIED: usize = 100_000;

/// A postings key and its whole new value.
type Posting = (Vec<u8>, Vec<u8>);

impl Inserter {
    /// Writes records and their index keys into sled (not flushed).
    pub(super) fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.insert_values(records, &serialize(records))
    }

    /// Writes records (as serialized) and their index keys into sled.
    fn insert_values(&self, records: &[AuditRecord], values: &[Vec<u8>]) -> Result<(), AuditError> {
        // The index keys first: a record is never stored without them (a
        // key whose record was lost in a crash points at nothing, or at a
        // later record with that number, which the query's check rejects).
        // Plain inserts, not sled batches: a batch makes sled write its
        // buffer out and wait for the disk (`sync_file_range`) before it
        // returns, which costs as much as the fsync of the write-ahead log
        // and buys nothing that log and the re-indexing at open do not
        // already give.
        for (key, value) in self.index_postings(records)? {
            self.index.insert(key, value).map_err(write_error)?;
        }
        for (record, value) in records.iter().zip(values) {
            self.records
                .insert(record.seq.to_be_bytes(), value.as_slice())
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// The postings a batch of records adds: each key it touches, read,
    /// extended and written whole.
    pub(super) fn index_batch(&self, records: &[AuditRecord]) -> Result<sled::Batch, AuditError> {
        let mut batch = sled::Batch::default();
        for (key, value) in self.index_postings(records)? {
            batch.insert(key, value);
        }
        Ok(batch)
    }

    /// The postings keys a batch of records touches, each with its whole
    /// new value.
    fn index_postings(&self, records: &[AuditRecord]) -> Result<Vec<Posting>, AuditError> {
        let mut touched: BTreeMap<Vec<u8>, Vec<u16>> = BTreeMap::new();
        for record in records {
            let offset = (record.seq & ((1 << BLOCK_BITS) - 1)) as u16;
            for prefix in index_keys(record) {
                touched
                    .entry(block_key(&prefix, record.seq))
                    .or_default()
                    .push(offset);
            }
        }
        let mut postings = Vec::with_capacity(touched.len());
        for (key, mut offsets) in touched {
            offsets.sort_unstable();
            let mut value = self
                .index
                .get(&key)
                .map_err(write_error)?
                .map(|v| v.to_vec())
                .unwrap_or_default();
            add_postings(&mut value, &offsets);
            postings.push((key, value));
        }
        Ok(postings)
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SledApplier {
    /// An empty queue in front of the store's trees.
    pub(super) fn new(records: sled::Tree, index: sled::Tree) -> Self {
        Self {
            inserter: Inserter { records, index },
            queue: std::sync::Mutex::default(),
            applying: std::sync::Mutex::default(),
            applied: AtomicU64::new(0),
        }
    }

    /// How many logged records wait.
    pub(super) fn queued(&self) -> usize {
        lock(&self.queue).records.len()
    }

    /// Queues logged records (in chain order) for the applier.
    pub(super) fn push(&self, records: Vec<AuditRecord>, values: Vec<Vec<u8>>) {
        let mut queue = lock(&self.queue);
        queue.records.extend(records);
        queue.values.extend(values);
    }

    /// Inserts records at once (buffered mode, which has no log).
    pub(super) fn insert_now(
        &self,
        records: &[AuditRecord],
        values: &[Vec<u8>],
    ) -> Result<(), AuditError> {
        let _one = lock(&self.applying);
        self.inserter.insert_values(records, values)?;
        if let Some(last) = records.last() {
            self.applied.store(last.seq, Ordering::Release);
        }
        Ok(())
    }
}

impl Apply for SledApplier {
    fn apply(&self) -> Result<u64, AuditError> {
        let _one = lock(&self.applying);
        let Unapplied { records, values } = std::mem::take(&mut *lock(&self.queue));
        if let Some(last) = records.last().map(|record| record.seq) {
            if let Err(err) = self.inserter.insert_values(&records, &values) {
                // Back in front of what was queued meanwhile: tried again
                // next time (inserting a record or a posting twice changes
                // nothing).
                let mut queue = lock(&self.queue);
                let later = std::mem::take(&mut *queue);
                *queue = Unapplied { records, values };
                queue.records.extend(later.records);
                queue.values.extend(later.values);
                return Err(err);
            }
            self.applied.store(last, Ordering::Release);
        }
        Ok(self.applied.load(Ordering::Acquire))
    }
}

/// Records as sled and the log keep them.
pub(super) fn serialize(records: &[AuditRecord]) -> Vec<Vec<u8>> {
    records.iter().map(AuditRecord::to_json).collect()
}
