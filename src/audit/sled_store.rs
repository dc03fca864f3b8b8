//! Where records live: sled, keyed by big-endian sequence numbers, with
//! the secondary index (`index`) and the retention anchor beside them, and
//! in durable mode a write-ahead log (`wal`) in front.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::index::{BLOCK_BITS, INDEX_VERSION, INDEX_VERSION_KEY, key_seq};
use super::inserts::{MAX_UNAPPLIED, SledApplier, serialize};
use super::query::Filter;
use super::reader::{ANCHOR_KEY, Anchor, Reader, decode};
use super::record::AuditRecord;
use super::storage::{Apply, ChainEnd, Storage};
use super::verify::{Keys, Verification};
use super::wal::{WAL_FILE, WAL_LIMIT, Wal, frame};
use super::{AuditError, write_error};
use crate::config::Retention;

/// Records whose index keys are written again at open.
const REINDEX_AT_OPEN: usize = 10_000;

/// The sled store under `{data_dir}/audit`.
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    /// Secondary indexes (see `query`), written before their records.
    index: sled::Tree,
    /// The anchor of a pruned chain ([`Anchor`]).
    meta: sled::Tree,
    /// Durable mode: each batch is appended to this log and fdatasync'ed
    /// before `append` returns; sled is flushed (and the log emptied) only
    /// when the log grows past [`WAL_LIMIT`]. Buffered mode: none (sled
    /// flushes in the background).
    wal: Option<Wal>,
    /// Records in the write-ahead log on their way into sled (see
    /// [`Storage::log`]), shared with the applier thread.
    pending: Arc<SledApplier>,
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`, durable: every append is on
    /// disk (in the write-ahead log) before it returns.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(dir, None)
    }

    /// Opens the store; with `flush_every`, appends return once written and
    /// sled flushes in the background at that period (the loss window if
    /// the machine crashes; a crash of the proxy alone loses nothing sled
    /// has taken).
    pub fn open_with(
        dir: &Path,
        flush_every: Option<std::time::Duration>,
    ) -> Result<Self, AuditError> {
        Self::open_log(dir, flush_every, true)
    }

    /// A durable store whose log never uses direct I/O (as on a file system
    /// that refuses it).
    #[cfg(test)]
    pub(super) fn open_buffered_log(dir: &Path) -> Result<Self, AuditError> {
        Self::open_log(dir, None, false)
    }

    /// The write-ahead log, for tests of what it holds.
    #[cfg(test)]
    pub(super) fn wal(&self) -> Option<&Wal> {
        self.wal.as_ref()
    }

    /// Opens the store; `direct_io`: a durable log tries direct I/O.
    fn open_log(
        dir: &Path,
        flush_every: Option<std::time::Duration>,
        direct_io: bool,
    ) -> Result<Self, AuditError> {
        let open_error = |message: String| AuditError::Open {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(flush_every.map(|d| d.as_millis().max(1) as u64))
            .open()
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("lock") || text.contains("WouldBlock") {
                    AuditError::InUse {
                        path: dir.display().to_string(),
                    }
                } else {
                    open_error(text)
                }
            })?;
        let records = db
            .open_tree("records")
            .map_err(|e| open_error(e.to_string()))?;
        let index = db
            .open_tree("index")
            .map_err(|e| open_error(e.to_string()))?;
        let meta = db
            .open_tree("meta")
            .map_err(|e| open_error(e.to_string()))?;
        let pending = Arc::new(SledApplier::new(records.clone(), index.clone()));
        let mut store = Self {
            path: dir.to_owned(),
            db,
            records,
            index,
            meta,
            wal: None,
            pending,
        };
        store.check_index()?;
        // What a crash left in the write-ahead log goes into sled first.
        let wal_path = dir.join(WAL_FILE);
        let (logged, logged_end) = Wal::read(&wal_path)?;
        let last = store.last()?.map_or(0, |end| end.seq);
        let missing: Vec<AuditRecord> = logged.into_iter().filter(|r| r.seq > last).collect();
        if !missing.is_empty() {
            tracing::info!(
                records = missing.len(),
                "audit records recovered from the write-ahead log"
            );
            store.pending.inserter.insert(&missing)?;
        }
        // The log is emptied once sled holds what it held (not at every
        // open: an empty log costs no flush).
        if flush_every.is_none() || wal_path.exists() {
            let mut wal = Wal::open(&wal_path, logged_end, flush_every.is_none())?;
            if flush_every.is_none() && direct_io {
                wal.try_direct();
            }
            if wal.bytes > 0 {
                store.db.flush().map_err(write_error)?;
                wal.clear()?;
            }
            if flush_every.is_none() {
                store.wal = Some(wal);
            }
        }
        // A prune that a crash interrupted is finished.
        if let Some(anchor) = store.reader().anchor()? {
            store.prune(&anchor)?;
        }
        let last = store.last()?.map_or(0, |end| end.seq);
        store.pending.applied.store(last, Ordering::Release);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a store a test just dropped: sled's flusher thread may still
    /// hold its lock for a moment (longer on a loaded machine: the deadline
    /// is far past it, and the first open that works ends the wait).
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Self {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match Self::open(dir) {
                Err(AuditError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(AuditError::InUse { .. }) => panic!("{} stayed locked", dir.display()),
                other => return other.unwrap_or_else(|e| panic!("{e}")),
            }
        }
    }

    /// Opens the store of a proxy role (`serve`, `stdio-<client>`) under
    /// `audit_dir`: `<role>`, or `<role>-2`, `-3`, … while the one before is
    /// held by a running proxy (two stdio proxies of the same client).
    pub fn open_for(
        audit_dir: &Path,
        role: &str,
        flush_every: Option<std::time::Duration>,
    ) -> Result<Self, AuditError> {
        let mut last = None;
        for n in 1..=16 {
            let name = if n == 1 {
                role.to_owned()
            } else {
                format!("{role}-{n}")
            };
            match Self::open_with(&audit_dir.join(name), flush_every) {
                Err(err @ AuditError::InUse { .. }) => last = Some(err),
                other => return other,
            }
        }
        Err(last.unwrap_or(AuditError::InUse {
            path: audit_dir.display().to_string(),
        }))
    }

    /// The stores under an audit folder (one per proxy role), by name.
    pub fn stores(audit_dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(audit_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join("conf").is_file())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// A read handle (queries, verification) usable while the writer writes.
    pub fn reader(&self) -> Reader {
        Reader {
            path: self.path.clone(),
            records: self.records.clone(),
            index: self.index.clone(),
            meta: self.meta.clone(),
        }
    }

    /// The records a filter wants, oldest first.
    pub fn query(&self, filter: &Filter, separator: &str) -> Result<Vec<AuditRecord>, AuditError> {
        self.reader().query(filter, separator)
    }

    /// Walks the chain (see [`Reader::verify`]).
    pub fn verify(&self) -> Result<Verification, AuditError> {
        self.reader().verify()
    }

    /// [`Reader::verify_with`] on this store.
    pub fn verify_with(
        &self,
        keys: &Keys,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Verification, AuditError> {
        self.reader().verify_with(keys, progress)
    }

    /// Rebuilds the index when it was written by another index version (or
    /// by none: a store from before the index).
    fn check_index(&self) -> Result<(), AuditError> {
        let current = self.index.get(INDEX_VERSION_KEY).map_err(write_error)?;
        if current.as_deref() == Some(INDEX_VERSION) {
            // Postings are written before their records; should a crash
            // ever keep a record and lose its postings, the newest records
            // are indexed again (adding what is there changes nothing).
            let mut tail = Vec::new();
            for entry in self.records.iter().rev().take(REINDEX_AT_OPEN) {
                let (key, value) = entry.map_err(|e| AuditError::Read(e.to_string()))?;
                if let Ok((_, record)) = decode(&key, &value) {
                    tail.push(record);
                }
            }
            let batch = self.pending.inserter.index_batch(&tail)?;
            return self.index.apply_batch(batch).map_err(write_error);
        }
        self.index.clear().map_err(write_error)?;
        let mut records = Vec::with_capacity(10_000);
        let mut entries = self.records.iter();
        loop {
            let entry = entries.next();
            if let Some(entry) = &entry {
                let (key, value) = entry
                    .as_ref()
                    .map_err(|e| AuditError::Read(e.to_string()))?;
                // One that does not parse: `verify` names it, the index
                // skips it.
                if let Ok((_, record)) = decode(key, value) {
                    records.push(record);
                }
            }
            if records.len() == 10_000 || (entry.is_none() && !records.is_empty()) {
                let batch = self.pending.inserter.index_batch(&records)?;
                self.index.apply_batch(batch).map_err(write_error)?;
                records.clear();
            }
            if entry.is_none() {
                break;
            }
        }
        self.index
            .insert(INDEX_VERSION_KEY, INDEX_VERSION)
            .map_err(write_error)?;
        self.db.flush().map_err(write_error)?;
        Ok(())
    }
}

impl Storage for SledStorage {
    fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
        match self
            .records
            .last()
            .map_err(|e| AuditError::Read(e.to_string()))?
        {
            None => Ok(None),
            Some((key, value)) => {
                let (seq, record) = decode(&key, &value)?;
                Ok(Some(ChainEnd {
                    seq,
                    hash: record.hash,
                    time: record.time,
                }))
            }
        }
    }

    fn reader(&self) -> Option<Reader> {
        Some(SledStorage::reader(self))
    }

    fn prune_point(
        &self,
        retention: &Retention,
        now: std::time::SystemTime,
    ) -> Result<Option<Anchor>, AuditError> {
        let reader = SledStorage::reader(self);
        let last = reader.last_seq()?;
        if last == 0 {
            return Ok(None);
        }
        let first = match reader.anchor()? {
            Some(anchor) => anchor.first_seq,
            None => reader.first_seq()?,
        };
        let mut keep_from = first;
        if let Some(max) = retention.max_records
            && last >= max
        {
            keep_from = keep_from.max(last - max + 1);
        }
        if let Some(age) = retention.max_age
            && let Some(cutoff) = now.checked_sub(age)
        {
            let cutoff = super::timestamp(cutoff);
            keep_from = keep_from.max(reader.first_at_or_after(&cutoff, first, last)?);
        }
        if keep_from <= first {
            return Ok(None);
        }
        let prev_hash = if keep_from > last {
            // Everything is older: the next record (the checkpoint) is the
            // first kept one.
            self.last()?.map(|end| end.hash).unwrap_or_default()
        } else {
            match reader.get(keep_from)? {
                Some(record) => record.prev_hash,
                None => {
                    return Err(AuditError::Read(format!(
                        "record {keep_from} is missing: retention waits until `audit verify` passes"
                    )));
                }
            }
        };
        Ok(Some(Anchor {
            first_seq: keep_from,
            prev_hash,
        }))
    }

    fn prune(&mut self, anchor: &Anchor) -> Result<u64, AuditError> {
        let value = serde_json::to_vec(anchor).map_err(|e| AuditError::Write(e.to_string()))?;
        self.meta.insert(ANCHOR_KEY, value).map_err(write_error)?;
        self.db.flush().map_err(write_error)?;
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut count = 0;
            for entry in self
                .records
                .range(..anchor.first_seq.to_be_bytes())
                .take(10_000)
            {
                let (key, _) = entry.map_err(|e| AuditError::Read(e.to_string()))?;
                batch.remove(key);
                count += 1;
            }
            if count == 0 {
                break;
            }
            self.records.apply_batch(batch).map_err(write_error)?;
            removed += count;
        }
        // Postings blocks wholly before the anchor go too (a block it cuts
        // through stays: its removed entries point at nothing).
        let first_block = anchor.first_seq >> BLOCK_BITS;
        let mut batch = sled::Batch::default();
        for entry in self.index.iter() {
            let (key, _) = entry.map_err(|e| AuditError::Read(e.to_string()))?;
            if key.as_ref() != INDEX_VERSION_KEY && key_seq(&key) < first_block {
                batch.remove(key);
            }
        }
        self.index.apply_batch(batch).map_err(write_error)?;
        self.db.flush().map_err(write_error)?;
        Ok(removed)
    }

    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.apply()?;
        if self.log(records.to_vec(), serialize(records))? {
            self.apply()?;
        }
        Ok(())
    }

    /// Durable mode: the records' frames are appended to the write-ahead
    /// log (one synchronous write) and their sled inserts wait for the
    /// applier, off the caller's path; past [`WAL_LIMIT`] the log is
    /// checkpointed. Buffered mode: inserted at once.
    fn log(&mut self, records: Vec<AuditRecord>, values: Vec<Vec<u8>>) -> Result<bool, AuditError> {
        let Some(wal) = &mut self.wal else {
            self.pending.insert_now(&records, &values)?;
            return Ok(false);
        };
        if self.pending.queued() >= MAX_UNAPPLIED {
            return Err(AuditError::Write(format!(
                "{MAX_UNAPPLIED} logged records could not be written into the store"
            )));
        }
        let mut frames = Vec::with_capacity(values.iter().map(|v| v.len() + 8).sum());
        for value in &values {
            frame(value, &mut frames);
        }
        wal.append(&frames)?;
        let full = wal.bytes > WAL_LIMIT;
        self.pending.push(records, values);
        // Logged is durable whatever follows: a checkpoint that fails
        // leaves the log growing (and is tried again with the next batch),
        // it does not fail the records.
        if full && let Err(err) = self.flush() {
            tracing::error!(error = %err, "AUDIT: the write-ahead log cannot be checkpointed into the store; it keeps growing");
        }
        Ok(true)
    }

    fn apply(&mut self) -> Result<(), AuditError> {
        self.pending.apply().map(drop)
    }

    fn applier(&self) -> Option<Arc<dyn Apply>> {
        self.wal
            .is_some()
            .then(|| self.pending.clone() as Arc<dyn Apply>)
    }

    /// Applies what is logged, flushes sled and empties the log.
    fn flush(&mut self) -> Result<(), AuditError> {
        self.pending.apply()?;
        self.db.flush().map_err(write_error)?;
        if let Some(wal) = &mut self.wal {
            wal.clear()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sealed;
    use super::*;

    #[test]
    fn verify_names_the_first_changed_removed_or_reordered_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        store.append(&sealed(5)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.verify(),
            Ok(Verification::Intact { records: 5, .. })
        ));
        assert_eq!(store.last().ok().flatten().map(|end| end.seq), Some(5));

        let put = |store: &SledStorage, seq: u64, record: &AuditRecord| {
            let value = serde_json::to_vec(record).unwrap_or_default();
            let _ = store.records.insert(seq.to_be_bytes(), value);
        };
        let get = |store: &SledStorage, seq: u64| -> AuditRecord {
            let value = store
                .records
                .get(seq.to_be_bytes())
                .ok()
                .flatten()
                .unwrap_or_default();
            serde_json::from_slice(&value).unwrap_or_else(|e| panic!("{e}"))
        };
        let broken_at = |store: &SledStorage| match store.verify() {
            Ok(Verification::Broken { seq, problem }) => (seq, problem),
            other => panic!("expected a broken chain, got {other:?}"),
        };

        // Changed.
        let original = get(&store, 3);
        let mut changed = original.clone();
        changed.decision = "deny".into();
        put(&store, 3, &changed);
        let (seq, problem) = broken_at(&store);
        assert_eq!(seq, 3);
        assert!(problem.contains("changed"), "{problem}");
        put(&store, 3, &original);

        // Reordered: 2 and 4 swapped.
        let (two, four) = (get(&store, 2), get(&store, 4));
        put(&store, 2, &four);
        put(&store, 4, &two);
        assert_eq!(broken_at(&store).0, 2);
        put(&store, 2, &two);
        put(&store, 4, &four);

        // Removed.
        let _ = store.records.remove(4u64.to_be_bytes());
        let (seq, problem) = broken_at(&store);
        assert_eq!(seq, 4);
        assert!(problem.contains("removed"), "{problem}");
        put(&store, 4, &four);
        assert!(matches!(store.verify(), Ok(Verification::Intact { .. })));

        // A filtered query, newest first limited, returned oldest first.
        let filter = Filter {
            limit: Some(2),
            ..Filter::default()
        };
        let found = store.query(&filter, "__").unwrap_or_default();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        let filter = Filter {
            target: Some("example__tool3".into()),
            ..Filter::default()
        };
        let found = store.query(&filter, "__").unwrap_or_default();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    }
}

#[cfg(test)]
mod index_tests {
    use super::super::index::{CLIENT, TARGET, block_key, index_prefix};
    use super::super::tests::sealed;
    use super::*;

    /// A posting removed (or rewritten without a record) hides that record
    /// from a filtered query while the chain stays intact: verify says so.
    #[test]
    fn verify_finds_a_record_the_index_no_longer_lists() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        // Several postings blocks (16 records each in tests).
        let records = sealed(40);
        store.append(&records).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(store.verify(), Ok(Verification::Intact { .. })));
        let hidden = &records[20];
        let target = hidden.target.clone().unwrap_or_default();
        let filter = Filter {
            target: Some(target.clone()),
            ..Filter::default()
        };
        assert_eq!(
            store.query(&filter, "__").unwrap_or_default().len(),
            1,
            "found by its target"
        );
        // Its posting under its target, taken out of the block's value.
        let key = block_key(&index_prefix(TARGET, &target), hidden.seq);
        let _ = store.index.remove(&key);
        assert!(store.query(&filter, "__").unwrap_or_default().is_empty());
        match store.verify() {
            Ok(Verification::Broken { seq, problem }) => {
                assert_eq!(seq, hidden.seq);
                assert!(
                    problem.contains(&format!("does not list it under its target `{target}`")),
                    "{problem}"
                );
            }
            other => panic!("expected the index's gap to be found, got {other:?}"),
        }
        // A posting kept but another record's offset dropped from it.
        let _ = store.index.insert(&key, Vec::<u8>::new());
        let client = index_prefix(CLIENT, &records[35].client);
        let block = block_key(&client, records[35].seq);
        let value = store.index.get(&block).ok().flatten().unwrap_or_default();
        let offset = u16::try_from(records[35].seq % 16)
            .unwrap_or_default()
            .to_be_bytes();
        let kept: Vec<u8> = value
            .chunks_exact(2)
            .filter(|pair| *pair != offset)
            .flatten()
            .copied()
            .collect();
        let _ = store.index.insert(&block, kept);
        // The first gap found is the earlier one.
        assert!(matches!(
            store.verify(),
            Ok(Verification::Broken { seq: 21, .. })
        ));
        // Postings out of order: a query walking them as sorted skips some.
        let _ = store.index.insert(&key, vec![0, 5]);
        let reversed: Vec<u8> = value.chunks_exact(2).rev().flatten().copied().collect();
        let _ = store.index.insert(&block, reversed);
        match store.verify() {
            Ok(Verification::Broken { problem, .. }) => {
                assert!(problem.contains("not in order"), "{problem}");
            }
            other => panic!("expected postings out of order to be found, got {other:?}"),
        }
    }
}
