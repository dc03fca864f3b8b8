//! The durable mode's write-ahead log: one synchronous write per batch of
//! records, replayed into sled at open (see [`Wal`]).

use std::path::{Path, PathBuf};

use super::AuditError;
use super::record::AuditRecord;

/// The write-ahead log's file in a store's folder.
pub(super) const WAL_FILE: &str = "portcullis.wal";
/// Past this many bytes the log is checkpointed: sled flushed, the log
/// emptied.
pub(super) const WAL_LIMIT: u64 = 8 << 20;
/// The log's file is this long from the start (zeros past the last frame):
/// an append overwrites blocks the file already has, so its `fdatasync`
/// flushes the data alone, with no change of size to journal (about a
/// fifth cheaper than an append that grows the file, on ext4 here).
pub(super) const WAL_PREALLOCATED: u64 = WAL_LIMIT + (1 << 20);

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
pub(super) struct Wal {
    file: std::fs::File,
    path: PathBuf,
    /// Where the log ends: the bytes of its frames.
    pub(super) bytes: u64,
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
        // `len` > `used` = the tail and the frames: both fit.
        let (old, new) = buffer.split_at_mut(tail.len());
        old.copy_from_slice(&tail);
        for (to, from) in new.iter_mut().zip(frames) {
            *to = *from;
        }
        let result = file.write_all_at(buffer, start);
        let kept = match buffer.get(used - used % BLOCK..used) {
            // The new end's partial block.
            Some(partial) if result.is_ok() => partial,
            _ => &tail[..],
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
    pub(super) fn read(path: &Path) -> Result<(Vec<AuditRecord>, u64), AuditError> {
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
            let (Some(len), Some(crc)) = (header.first_chunk::<4>(), header.last_chunk::<4>())
            else {
                break;
            };
            let (len, crc) = (u32::from_le_bytes(*len) as usize, u32::from_le_bytes(*crc));
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
    pub(super) fn open(path: &Path, end: u64, preallocate: bool) -> Result<Self, AuditError> {
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
                file.write_all_at(zeros.get(..chunk).unwrap_or(&zeros), at)
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
    pub(super) fn try_direct(&mut self) {
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
    pub(super) fn append(&mut self, frames: &[u8]) -> Result<(), AuditError> {
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
    pub(super) fn clear(&mut self) -> Result<(), AuditError> {
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
pub(super) fn frame(value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::super::GENESIS;
    use super::super::inserts::serialize;
    use super::super::query::Filter;
    use super::super::sled_store::SledStorage;
    use super::super::storage::Storage;
    use super::super::tests::{sample, sealed};
    use super::super::verify::Verification;
    use super::*;

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
            let direct = store.wal().is_some_and(|w| w.direct.is_some());
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
                let end = store.wal().map_or(0, |w| w.bytes);
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
            assert!(store.wal().is_some_and(|w| w.direct.is_none()));
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
}
