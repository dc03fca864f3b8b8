//! Where records live: sled, keyed by big-endian sequence numbers, behind a
//! small trait (sled 0.34 is the last stable release; the trait keeps it
//! replaceable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AuditError;

use super::query::{
    BLOCK_BITS, Filter, Reader, Verification, add_postings, block_key, decode, index_keys, key_seq,
};
use super::record::AuditRecord;
use crate::config::Retention;

/// The index layout's version (a store with another is re-indexed at open).
const INDEX_VERSION: &[u8] = b"3";
/// Where the index keeps its version: a key no index entry can have.
const INDEX_VERSION_KEY: &[u8] = b"\xffversion";

/// Where the kept chain starts once retention removed older records: the
/// first kept record and its `prev_hash` (the removed record's hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    pub first_seq: u64,
    pub prev_hash: String,
}

/// The `meta` key of the anchor.
pub(super) const ANCHOR_KEY: &[u8] = b"anchor";

/// Records whose index keys are written again at open.
const REINDEX_AT_OPEN: usize = 10_000;

/// The end of the chain: where the next record attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnd {
    pub seq: u64,
    pub hash: String,
    pub time: String,
}

/// The storage the writer appends to.
pub trait Storage: Send + 'static {
    /// The last record, if any.
    fn last(&self) -> Result<Option<ChainEnd>, AuditError>;
    /// A read handle for queries while the writer runs, if the storage has one.
    fn reader(&self) -> Option<Reader> {
        None
    }
    /// Where the kept chain would start under `retention` at `now`, if
    /// records are to be removed.
    fn prune_point(
        &self,
        _retention: &Retention,
        _now: std::time::SystemTime,
    ) -> Result<Option<Anchor>, AuditError> {
        Ok(None)
    }
    /// Stores the anchor, then removes the records before it; returns how
    /// many were removed.
    fn prune(&mut self, _anchor: &Anchor) -> Result<u64, AuditError> {
        Ok(0)
    }
    /// Appends sealed records as one batch, durably (flushed) before it returns.
    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError>;
    /// Makes sealed records durable, as `append`, but may leave the work
    /// that makes them readable (indexes, queries) to [`Storage::apply`];
    /// whether it did. `values` are the records as stored, each as
    /// [`AuditRecord::to_json`] writes it (sealing wrote them already).
    fn log(&mut self, records: Vec<AuditRecord>, values: Vec<Vec<u8>>) -> Result<bool, AuditError> {
        let _ = values;
        self.append(&records).map(|()| false)
    }
    /// Makes everything `log` left readable. Until it succeeds what was
    /// logged stays durable (replayed at open) and waits here.
    fn apply(&mut self) -> Result<(), AuditError> {
        Ok(())
    }
    /// A handle that does what [`Storage::apply`] does from another thread
    /// while the writer goes on logging, if the storage has one: the
    /// writer's callers then never wait for the work that makes records
    /// readable.
    fn applier(&self) -> Option<Arc<dyn Apply>> {
        None
    }
    /// Makes everything appended so far durable.
    fn flush(&mut self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// Makes logged records readable, from a thread of its own: shared between
/// the storage (which drains it when it must, at a checkpoint or a flush)
/// and the applier thread. `log` must queue records and `apply` take them
/// under one lock: the applier thread's way to sleep without missing a
/// batch relies on it.
pub trait Apply: Send + Sync {
    /// Makes everything logged so far readable, in order; the sequence
    /// number of the last readable record. What fails stays waiting, to be
    /// tried again.
    fn apply(&self) -> Result<u64, AuditError>;
}

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

/// Logged records waiting for their sled inserts.
#[derive(Default)]
struct Unapplied {
    records: Vec<AuditRecord>,
    values: Vec<Vec<u8>>,
}

/// Writes records and their postings into sled (not flushed).
struct Inserter {
    records: sled::Tree,
    index: sled::Tree,
}

/// Logged records on their way into sled: `log` queues them, the applier
/// thread (or the writer, when it must drain) inserts them.
struct SledApplier {
    inserter: Inserter,
    queue: std::sync::Mutex<Unapplied>,
    /// Held while records are inserted, so that two drains never
    /// interleave (the queue itself is locked only to push or take).
    applying: std::sync::Mutex<()>,
    /// The sequence number of the last record in sled.
    applied: AtomicU64,
}

/// At most this many logged records wait for sled: past it, `log` refuses
/// (sled has been failing for a while; the proxy fails closed).
const MAX_UNAPPLIED: usize = 100_000;

/// A postings key and its whole new value.
type Posting = (Vec<u8>, Vec<u8>);

/// The write-ahead log's file in a store's folder.
const WAL_FILE: &str = "portcullis.wal";
/// Past this many bytes the log is checkpointed: sled flushed, the log
/// emptied.
const WAL_LIMIT: u64 = 8 << 20;
/// The log's file is this long from the start (zeros past the last frame):
/// an append overwrites blocks the file already has, so its `fdatasync`
/// flushes the data alone, with no change of size to journal (about a
/// fifth cheaper than an append that grows the file, on ext4 here).
const WAL_PREALLOCATED: u64 = WAL_LIMIT + (1 << 20);

/// A durable mode's write-ahead log: frames of `[len: u32 LE][crc32: u32
/// LE][record JSON]`, one synchronous write per batch. One flush of sled
/// costs several fsyncs; this costs one. At open, records the log holds
/// past sled's last are written into sled (a torn tail — a crash
/// mid-append, never acknowledged — is dropped).
///
/// Where the file system takes it, the log is written with direct I/O and
/// `O_DSYNC`: each append is one write of whole blocks that returns once
/// the blocks are on stable storage (the kernel follows the write with the
/// device's cache flush, or writes through with FUA where the device has
/// it), skipping the page cache and the file system's `fdatasync` path.
/// Elsewhere (some FUSE file systems, and tmpfs before Linux 6.6, refuse
/// `O_DIRECT`) it is a buffered write and an `fdatasync`. Durability is the
/// same.
struct Wal {
    file: std::fs::File,
    path: PathBuf,
    bytes: u64,
    /// Direct mode's state; `None`: buffered writes and `fdatasync`.
    direct: Option<Direct>,
}

/// Direct I/O writes whole blocks from a buffer aligned to them.
const BLOCK: usize = 4096;

/// A direct log's last partial block and the aligned buffer appends are
/// built in.
struct Direct {
    /// The bytes of the block the log ends in, before its end: written
    /// again, unchanged, in front of the next frames.
    tail: Vec<u8>,
    /// Over-allocated so that a block-aligned run of it can be found
    /// (without `unsafe` allocation); reused across appends.
    raw: Vec<u8>,
}

impl Direct {
    /// A zeroed, block-aligned buffer of `len` bytes (a multiple of
    /// [`BLOCK`]); `None` if no aligned run could be found (the
    /// platform's `align_offset` may decline).
    fn buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        let mut offset = self.raw.as_ptr().align_offset(BLOCK);
        if offset >= BLOCK || self.raw.len() < offset + len {
            self.raw = vec![0; len + BLOCK];
            offset = self.raw.as_ptr().align_offset(BLOCK);
        }
        let buffer = self.raw.get_mut(offset..offset + len)?;
        buffer.fill(0);
        Some(buffer)
    }

    /// Writes `frames` after the tail at `end` (the log's end), with zeros
    /// after them to the end of the block (at least a zero header), as one
    /// synchronous write; the new tail.
    fn append(&mut self, file: &std::fs::File, end: u64, frames: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let start = end - end % BLOCK as u64;
        if end - start != self.tail.len() as u64 {
            return Err(std::io::Error::other("the log's last block is out of step"));
        }
        let used = self.tail.len() + frames.len();
        let len = (used + 8).div_ceil(BLOCK) * BLOCK;
        let tail = std::mem::take(&mut self.tail);
        let Some(buffer) = self.buffer(len) else {
            self.tail = tail;
            return Err(std::io::Error::other("no block-aligned buffer"));
        };
        buffer[..tail.len()].copy_from_slice(&tail);
        buffer[tail.len()..used].copy_from_slice(frames);
        let result = file.write_all_at(buffer, start);
        let kept = if result.is_ok() {
            // The new end's partial block.
            &buffer[used - used % BLOCK..used]
        } else {
            &tail[..]
        };
        self.tail = kept.to_vec();
        result
    }
}

impl Wal {
    fn io(path: &Path, err: std::io::Error) -> AuditError {
        AuditError::Write(format!("{}: {err}", path.display()))
    }

    /// The records of the valid prefix of the log at `path`, and where that
    /// prefix ends. The log ends at a zero header (every append writes one
    /// after its frames); a torn or corrupt frame (a crash mid-append, never
    /// acknowledged) ends it too, and so does a frame older than the one
    /// before it (left from before the log was emptied).
    fn read(path: &Path) -> Result<(Vec<AuditRecord>, u64), AuditError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), 0));
            }
            Err(err) => return Err(AuditError::Read(format!("{}: {err}", path.display()))),
        };
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut at = 0;
        let mut torn = false;
        while let Some(header) = bytes.get(at..at + 8) {
            if header == [0; 8] {
                break;
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
                torn = true; // the append never finished
                break;
            };
            if crc32fast::hash(payload) != crc {
                torn = true;
                break;
            }
            match serde_json::from_slice::<AuditRecord>(payload) {
                Ok(record) if records.last().is_none_or(|last| record.seq > last.seq) => {
                    records.push(record);
                }
                Ok(_) => break,
                Err(_) => {
                    torn = true;
                    break;
                }
            }
            at += 8 + len;
        }
        if torn {
            tracing::warn!(
                path = %path.display(),
                "the audit write-ahead log ends in a torn append (a crash while writing; that batch was never acknowledged)"
            );
        }
        Ok((records, at as u64))
    }

    /// Opens the log with its valid prefix ending at `end`; `preallocate`
    /// extends the file with zeros to [`WAL_PREALLOCATED`] (for a log that
    /// is written to).
    fn open(path: &Path, end: u64, preallocate: bool) -> Result<Self, AuditError> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Self::io(path, e))?;
        let len = file.metadata().map_err(|e| Self::io(path, e))?.len();
        if preallocate && len < WAL_PREALLOCATED {
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < WAL_PREALLOCATED {
                let chunk = (WAL_PREALLOCATED - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..chunk], at)
                    .map_err(|e| Self::io(path, e))?;
                at += chunk as u64;
            }
            file.sync_all().map_err(|e| Self::io(path, e))?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            bytes: end,
            direct: None,
        })
    }

    /// Switches to direct I/O if the file system takes it: the log's last
    /// block is written again as it is (zeros after its end), through a
    /// handle opened with `O_DIRECT | O_DSYNC`. Otherwise the log stays
    /// buffered (and says so at debug level).
    fn try_direct(&mut self) {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let opened = std::fs::File::options()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_DIRECT | OFlag::O_DSYNC).bits())
            .open(&self.path);
        let start = self.bytes - self.bytes % BLOCK as u64;
        let mut tail = vec![0; (self.bytes - start) as usize];
        let probed = opened.and_then(|file| {
            self.file.read_exact_at(&mut tail, start)?;
            let mut direct = Direct {
                tail,
                raw: Vec::new(),
            };
            direct.append(&file, self.bytes, &[])?;
            Ok((file, direct))
        });
        match probed {
            Ok((file, direct)) => {
                self.file = file;
                self.direct = Some(direct);
            }
            Err(err) => tracing::debug!(
                path = %self.path.display(),
                error = %err,
                "the audit write-ahead log is written through the page cache and fdatasync (no direct I/O here)"
            ),
        }
    }

    /// Writes the frames (and a zero header after them) where the log ends,
    /// and waits for the disk.
    fn append(&mut self, frames: &[u8]) -> Result<(), AuditError> {
        use std::os::unix::fs::FileExt;
        match &mut self.direct {
            Some(direct) => direct.append(&self.file, self.bytes, frames),
            None => {
                let mut out = Vec::with_capacity(frames.len() + 8);
                out.extend_from_slice(frames);
                out.extend_from_slice(&[0; 8]);
                self.file
                    .write_all_at(&out, self.bytes)
                    .and_then(|()| self.file.sync_data())
            }
        }
        .map_err(|e| Self::io(&self.path, e))?;
        self.bytes += frames.len() as u64;
        Ok(())
    }

    /// Empties the log (what it held is flushed in sled): a zero header at
    /// the start; the file keeps its length.
    fn clear(&mut self) -> Result<(), AuditError> {
        use std::os::unix::fs::FileExt;
        match &mut self.direct {
            Some(direct) => {
                let tail = std::mem::take(&mut direct.tail);
                let cleared = direct.append(&self.file, 0, &[]);
                if cleared.is_err() {
                    direct.tail = tail;
                }
                cleared
            }
            None => self
                .file
                .write_all_at(&[0; 8], 0)
                .and_then(|()| self.file.sync_data()),
        }
        .map_err(|e| Self::io(&self.path, e))?;
        self.bytes = 0;
        Ok(())
    }
}

/// One record's frame in the write-ahead log.
fn frame(value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    out.extend_from_slice(value);
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
    fn open_buffered_log(dir: &Path) -> Result<Self, AuditError> {
        Self::open_log(dir, None, false)
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
        let pending = Arc::new(SledApplier {
            inserter: Inserter {
                records: records.clone(),
                index: index.clone(),
            },
            queue: std::sync::Mutex::default(),
            applying: std::sync::Mutex::default(),
            applied: AtomicU64::new(0),
        });
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
    /// hold its lock for a moment.
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Self {
        for _ in 0..100 {
            match Self::open(dir) {
                Err(AuditError::InUse { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap_or_else(|e| panic!("{e}")),
            }
        }
        panic!("{} stayed locked", dir.display())
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
        keys: &super::Keys,
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

impl Inserter {
    /// Writes records and their index keys into sled (not flushed).
    fn insert(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
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
    fn index_batch(&self, records: &[AuditRecord]) -> Result<sled::Batch, AuditError> {
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

fn write_error(err: sled::Error) -> AuditError {
    AuditError::Write(err.to_string())
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SledApplier {
    /// How many logged records wait.
    fn queued(&self) -> usize {
        lock(&self.queue).records.len()
    }

    /// Queues logged records (in chain order) for the applier.
    fn push(&self, records: Vec<AuditRecord>, values: Vec<Vec<u8>>) {
        let mut queue = lock(&self.queue);
        queue.records.extend(records);
        queue.values.extend(values);
    }

    /// Inserts records at once (buffered mode, which has no log).
    fn insert_now(&self, records: &[AuditRecord], values: &[Vec<u8>]) -> Result<(), AuditError> {
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
fn serialize(records: &[AuditRecord]) -> Vec<Vec<u8>> {
    records.iter().map(AuditRecord::to_json).collect()
}

#[cfg(test)]
mod tests {
    use super::super::GENESIS;
    use super::super::tests::sample;
    use super::*;

    fn sealed(count: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=count)
            .map(|seq| {
                let mut record = sample();
                record.target = Some(format!("tool{seq}"));
                record.seal(seq, &prev);
                prev = record.hash.clone();
                record
            })
            .collect()
    }

    /// Records `first..` of varied sizes: some small, one whose frame ends
    /// 4 bytes before a block's end (its zero header spills into the next
    /// block), some larger than two blocks.
    fn varied(first: u64, prev: &str) -> Vec<AuditRecord> {
        let mut prev = prev.to_owned();
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut end = 0usize;
        for (i, size) in [10usize, 0, 9000, 30, 5000, 1].into_iter().enumerate() {
            let seq = first + i as u64;
            let mut record = sample();
            record.detail = Some(serde_json::json!("x".repeat(size)));
            record.seal(seq, &prev);
            if size == 0 {
                // Padded so that this frame ends at BLOCK - 4.
                let frame_len = |r: &AuditRecord| r.to_json().len() + 8;
                let want = (end / BLOCK + 1) * BLOCK - 4 - end;
                let pad = want.saturating_sub(frame_len(&record));
                record.detail = Some(serde_json::json!("y".repeat(pad)));
                record.seal(seq, &prev);
                assert_eq!(end + frame_len(&record), (end / BLOCK + 1) * BLOCK - 4);
            }
            end += record.to_json().len() + 8;
            prev.clone_from(&record.hash);
            out.push(record);
        }
        out
    }

    fn is_fs(path: &Path, kind: nix::sys::statfs::FsType) -> bool {
        nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type() == kind)
    }

    /// Appends of every size, one record at a time and in a batch, read
    /// back whole from the log and from sled after a reopen; where the
    /// file system takes direct I/O (ext4 here), the log uses it, and a
    /// frame that ends within 8 bytes of a block's end still has a zero
    /// header after it.
    #[test]
    fn direct_appends_keep_every_frame_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let wal = dir.path().join(WAL_FILE);
        let first = varied(1, GENESIS);
        let second = varied(7, &first[5].hash);
        {
            let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let direct = store.wal.as_ref().is_some_and(|w| w.direct.is_some());
            if is_fs(dir.path(), nix::sys::statfs::EXT4_SUPER_MAGIC) {
                assert!(direct, "ext4 takes direct I/O");
            }
            for record in &first {
                store
                    .log(
                        vec![record.clone()],
                        serialize(std::slice::from_ref(record)),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                let end = store.wal.as_ref().map_or(0, |w| w.bytes);
                let bytes = std::fs::read(&wal).unwrap_or_default();
                assert_eq!(
                    bytes.get(end as usize..end as usize + 8),
                    Some(&[0u8; 8][..]),
                    "a zero header after the frames"
                );
            }
            store
                .log(second.clone(), serialize(&second))
                .unwrap_or_else(|e| panic!("{e}"));
            let (logged, _) = Wal::read(&wal).unwrap_or_default();
            assert_eq!(logged, [first.clone(), second.clone()].concat());
            // A crash now: sled never got them (nothing applied).
        }
        let store = SledStorage::reopen(dir.path());
        assert!(matches!(
            store.verify(),
            Ok(Verification::Intact { records: 12, .. })
        ));
        assert_eq!(
            store.reader().get(3).ok().flatten().as_ref(),
            Some(&first[2])
        );
    }

    /// A log written through the page cache and `fdatasync` (where the
    /// file system refuses direct I/O) holds and replays the same frames.
    #[test]
    fn a_log_without_direct_io_works_the_same() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let records = varied(1, GENESIS);
        {
            let mut store =
                SledStorage::open_buffered_log(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            assert!(store.wal.as_ref().is_some_and(|w| w.direct.is_none()));
            for record in &records[..3] {
                store
                    .log(
                        vec![record.clone()],
                        serialize(std::slice::from_ref(record)),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            store
                .log(records[3..].to_vec(), serialize(&records[3..]))
                .unwrap_or_else(|e| panic!("{e}"));
            let (logged, _) = Wal::read(&dir.path().join(WAL_FILE)).unwrap_or_default();
            assert_eq!(logged, records);
        }
        let store = SledStorage::reopen(dir.path());
        assert!(matches!(
            store.verify(),
            Ok(Verification::Intact { records: 6, .. })
        ));
    }

    /// Durable appends land in the write-ahead log; what a crash left only
    /// there is written into sled at the next open, a torn last append is
    /// dropped, and the log is emptied.
    #[test]
    fn the_write_ahead_log_is_replayed_at_open_and_a_torn_tail_dropped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let wal = dir.path().join(WAL_FILE);
        let records = sealed(5);
        {
            let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            store
                .append(&records[..3])
                .unwrap_or_else(|e| panic!("{e}"));
            let (logged, _) = Wal::read(&wal).unwrap_or_default();
            assert_eq!(
                logged.len(),
                3,
                "the batch is in the log before append returns"
            );
            store.flush().unwrap_or_else(|e| panic!("{e}"));
            let (logged, end) = Wal::read(&wal).unwrap_or_default();
            assert_eq!((logged.len(), end), (0, 0), "flushed: the log is empty");
            // Preallocated: appends overwrite, the file keeps its length.
            assert_eq!(
                std::fs::metadata(&wal).map(|m| m.len()).ok(),
                Some(WAL_PREALLOCATED)
            );
        }
        // A crash after records 3 to 5 reached the log and before sled
        // had them; then an append torn by the crash.
        let mut frames = Vec::new();
        for record in &records[2..] {
            frame(&serde_json::to_vec(record).unwrap_or_default(), &mut frames);
        }
        frames.extend_from_slice(&200u32.to_le_bytes());
        frames.extend_from_slice(&[0, 0, 0, 0, b'{', b'"']);
        std::fs::write(&wal, &frames).unwrap_or_else(|e| panic!("{e}"));

        let store = SledStorage::reopen(dir.path());
        assert_eq!(store.last().ok().flatten().map(|end| end.seq), Some(5));
        assert!(matches!(
            store.verify(),
            Ok(Verification::Intact { records: 5, .. })
        ));
        let filter = Filter {
            target: Some("tool5".into()),
            ..Filter::default()
        };
        let found = store.query(&filter, "__").unwrap_or_default();
        assert_eq!(found.len(), 1, "recovered records are indexed");
        assert_eq!(
            Wal::read(&wal).map(|(r, end)| (r.len(), end)).ok(),
            Some((0, 0))
        );
        drop(store);

        // Emptied, then written again from the start: frames left from
        // before (older records) are not taken for new ones.
        let more = sealed(8);
        let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        store.append(&more[5..6]).unwrap_or_else(|e| panic!("{e}"));
        let mut stale = Vec::new();
        for record in &more[5..6] {
            frame(&serde_json::to_vec(record).unwrap_or_default(), &mut stale);
        }
        for record in &records[..2] {
            frame(&serde_json::to_vec(record).unwrap_or_default(), &mut stale);
        }
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::options()
                .write(true)
                .open(&wal)
                .unwrap_or_else(|e| panic!("{e}"));
            // What a log emptied after older records and written again
            // looks like, without the zero header after the new frame.
            file.write_all_at(&stale, 0)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (logged, _) = Wal::read(&wal).unwrap_or_default();
        assert_eq!(
            logged.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [6],
            "older frames after the newest are not replayed"
        );
    }

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
