//! The audit log: one hash-chained record per exchange, committed before the
//! client gets the reply.
//!
//! A writer seals records into the chain (sequence number, `prev_hash`,
//! `hash`) and writes each batch it finds waiting with one flush (group
//! commit): under load, many records share one fsync. Records reach it
//! through a writer thread's queue; in durable mode a caller that finds the
//! writer idle writes its record itself, so a lone caller pays one fsync and
//! no hand-off between threads. A commit that fails is
//! reported to every waiting caller, and the gateway refuses calls while the
//! store cannot be written (fail closed).
//!
//! The files, in the order a record goes through them: `commit` (the
//! [`Audit`] handle and how a record reaches the writer), `writer` (sealing
//! and group commit), `storage` (the trait it writes to), `sled_store` with
//! its `wal` (the write-ahead log) and `inserts` (records and postings into
//! sled, drained by the `applier` thread), `retention` (pruning behind a
//! checkpoint). Reading: `reader` (records by number, the retention
//! anchor), `index` (the secondary index's keys), `query` (filters and the
//! indexed walk), `verify` (the chain walk). `record` is the record and its
//! hash, `seal` the chain key and signed checkpoints.

mod applier;
mod commit;
pub mod fleet;
mod index;
mod inserts;
mod query;
mod reader;
mod record;
mod retention;
pub mod seal;
mod sled_store;
mod storage;
mod verify;
mod wal;
mod writer;

pub use commit::Audit;
pub use query::{Filter, FilterError, FilterParams, shadow_differences};
pub use reader::{Anchor, Reader};
pub use record::{AuditRecord, GENESIS, Redaction, TokenIdentity, sha256_canonical};
pub use retention::PRUNE_EVERY;
pub use seal::{Checkpoint, MacCheck, Seal, SealError, Signer, Statement, Verifier};
pub use sled_store::SledStorage;
pub use storage::{Apply, ChainEnd, Storage};
pub use verify::{ChainWalk, Keys, Verification};
pub use writer::Sealing;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store at `{path}` cannot be opened: {message}")]
    Open { path: String, message: String },
    #[error("the audit store at `{path}` is in use by a running proxy")]
    InUse { path: String },
    #[error("the audit store cannot commit: {0}")]
    Write(String),
    #[error("the audit store cannot be read: {0}")]
    Read(String),
    #[error("the audit writer has stopped")]
    Stopped,
}

fn read_error(err: sled::Error) -> AuditError {
    AuditError::Read(err.to_string())
}

fn write_error(err: sled::Error) -> AuditError {
    AuditError::Write(err.to_string())
}

/// Why the store is failing; calls are refused while either holds.
#[derive(Default)]
struct Failing {
    /// The last records could not be logged (made durable).
    log: AtomicBool,
    /// Logged records cannot be made readable (they wait in the
    /// write-ahead log, replayed at open).
    apply: AtomicBool,
}

impl Failing {
    fn any(&self) -> bool {
        self.log.load(Ordering::Relaxed) || self.apply.load(Ordering::Relaxed)
    }

    /// Records that logging failed; logged loudly the first time.
    fn logging(&self, err: &AuditError) {
        if !self.log.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "AUDIT STORE FAILING: calls are refused until records can be written again");
        }
    }

    /// Records that applying failed; logged loudly the first time.
    fn applying(&self, err: &AuditError) {
        if !self.apply.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "AUDIT STORE FAILING: logged records cannot be written into the store (they are kept in its write-ahead log)");
        }
    }

    /// Records that everything logged is readable.
    fn applied(&self) {
        if self.apply.swap(false, Ordering::Relaxed) {
            tracing::info!("audit: the logged records are in the store again");
        }
    }
}

/// Tells followers that records up to `seq` are readable (never a lower
/// number than it told before: a drain and the applier thread may answer
/// out of order).
fn tell_readable(tell: &watch::Sender<u64>, seq: u64) {
    tell.send_if_modified(|told| {
        let newer = seq > *told;
        if newer {
            *told = seq;
        }
        newer
    });
}

/// The time now as an audit timestamp, `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn timestamp(time: std::time::SystemTime) -> String {
    crate::protocol::datetime_millis(time)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Retention;

    /// A storage that fails while `broken` is set.
    struct Flaky {
        broken: Arc<AtomicBool>,
        written: Arc<std::sync::Mutex<Vec<AuditRecord>>>,
    }

    impl Storage for Flaky {
        fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
            Ok(None)
        }
        fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(AuditError::Write("disk full".into()));
            }
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(records);
            Ok(())
        }
    }

    type Written = Arc<std::sync::Mutex<Vec<AuditRecord>>>;

    /// An audit writer on a [`Flaky`] storage, with its switch and records.
    fn flaky(durable: bool) -> (Audit, Arc<AtomicBool>, Written) {
        let broken = Arc::new(AtomicBool::new(false));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let storage = Flaky {
            broken: broken.clone(),
            written: written.clone(),
        };
        let audit = Audit::start(storage, durable).unwrap_or_else(|e| panic!("{e}"));
        (audit, broken, written)
    }

    #[tokio::test]
    async fn buffered_commits_return_at_once_and_a_failure_refuses_what_follows() {
        let (audit, broken, written) = flaky(false);
        assert_eq!(audit.commit(sample()).await.ok(), Some(None));
        eventually("the record must be written", || {
            written.lock().map(|w| w.len()).unwrap_or_default() > 0
        })
        .await;
        broken.store(true, Ordering::Relaxed);
        assert!(
            audit.commit(sample()).await.is_ok(),
            "queued, not yet written"
        );
        eventually("the failure must show", || audit.is_failing()).await;
        assert!(
            audit.commit(sample()).await.is_err(),
            "refused while failing"
        );
        let written = written.lock().map(|w| w.len()).unwrap_or_default();
        assert_eq!(written, 1);
    }

    pub(crate) fn sample() -> AuditRecord {
        AuditRecord {
            seq: 0,
            time: "2026-11-23T07:00:00.000Z".into(),
            kind: "exchange".into(),
            session: "s".into(),
            client: "c".into(),
            transport: "stdio".into(),
            server: Some("example".into()),
            method: "tools/call".into(),
            target: Some("echo".into()),
            request_id: Some(serde_json::json!(1)),
            decision: "allow".into(),
            decided_by: None,
            policy_ids: vec![],
            decision_id: None,
            policy_set: None,
            reason: None,
            redactions: vec![],
            arguments_sha256: None,
            result_bytes: 10,
            is_error: false,
            upstream_us: Some(100),
            total_us: 150,
            detail: None,
            prev_hash: String::new(),
            protocol: None,
            identity: None,
            profile: None,
            hash: String::new(),
            mac: None,
        }
    }

    /// `count` records sealed into a chain from the start.
    pub(crate) fn sealed(count: u64) -> Vec<AuditRecord> {
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

    #[tokio::test]
    async fn a_failing_store_fails_commits_and_recovers_without_breaking_the_chain() {
        let (audit, broken, written) = flaky(true);
        assert_eq!(audit.commit(sample()).await.ok(), Some(Some(1)));
        broken.store(true, Ordering::Relaxed);
        assert!(matches!(
            audit.commit(sample()).await,
            Err(AuditError::Write(_))
        ));
        assert!(audit.is_failing());
        broken.store(false, Ordering::Relaxed);
        assert_eq!(audit.commit(sample()).await.ok(), Some(Some(2)), "no gap");
        assert!(!audit.is_failing());
        let written = written.lock().map(|w| w.clone()).unwrap_or_default();
        assert_eq!(written.len(), 2);
        assert_eq!(written[1].prev_hash, written[0].hash);
        assert_eq!(written[0].prev_hash, GENESIS);
        assert_eq!(written[1].hash, written[1].compute_hash());
    }

    /// A durable writer on a sled store (waiting for the last one on the
    /// folder to let go of it).
    fn sled_audit(dir: &std::path::Path, retention: Retention) -> (Audit, Reader) {
        let storage = SledStorage::reopen(dir);
        let reader = storage.reader();
        let audit = Audit::start_with(storage, true, retention).unwrap_or_else(|e| panic!("{e}"));
        (audit, reader)
    }

    fn intact(reader: &Reader) -> (u64, u64) {
        match reader.verify() {
            Ok(Verification::Intact {
                records, first_seq, ..
            }) => (records, first_seq),
            other => panic!("expected an intact chain, got {other:?}"),
        }
    }

    /// A storage whose log always takes records and whose `apply` fails
    /// while `broken` is set; with or without an applier of its own.
    struct Unappliable {
        shared: Arc<UnappliableShared>,
        with_applier: bool,
    }

    #[derive(Default)]
    struct UnappliableShared {
        broken: AtomicBool,
        pending: std::sync::Mutex<Vec<AuditRecord>>,
        applied: Written,
    }

    impl Apply for UnappliableShared {
        fn apply(&self) -> Result<u64, AuditError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(AuditError::Write("sled is failing".into()));
            }
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            applied.append(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            Ok(applied.last().map_or(0, |r| r.seq))
        }
    }

    impl Storage for Unappliable {
        fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
            Ok(None)
        }
        fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
            self.log(records.to_vec(), Vec::new())?;
            self.apply()
        }
        fn log(&mut self, records: Vec<AuditRecord>, _: Vec<Vec<u8>>) -> Result<bool, AuditError> {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(records);
            Ok(true)
        }
        fn apply(&mut self) -> Result<(), AuditError> {
            self.shared.apply().map(drop)
        }
        fn applier(&self) -> Option<Arc<dyn Apply>> {
            self.with_applier
                .then(|| self.shared.clone() as Arc<dyn Apply>)
        }
    }

    /// Waits until `done`: at most a minute, far past what a loaded
    /// machine takes, since the wait ends as soon as it is.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Durable in the log, the commits succeed; but the store is failing
    /// (calls are refused) for as long as the logged records cannot be
    /// made readable, whether an applier thread or the writer applies
    /// them.
    #[tokio::test(flavor = "multi_thread")]
    async fn records_logged_but_not_applied_keep_the_store_failing_until_they_are() {
        for with_applier in [true, false] {
            let shared = Arc::new(UnappliableShared::default());
            shared.broken.store(true, Ordering::Relaxed);
            let storage = Unappliable {
                shared: shared.clone(),
                with_applier,
            };
            let audit = Audit::start(storage, true).unwrap_or_else(|e| panic!("{e}"));
            for expected in 1..=3 {
                let seq = audit
                    .commit(sample())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(seq, Some(expected));
            }
            eventually("the failure must show", || audit.is_failing()).await;
            // A record that is logged does not clear it, while the records
            // still cannot be applied.
            assert_eq!(audit.commit(sample()).await.ok().flatten(), Some(4));
            assert!(audit.is_failing(), "with_applier {with_applier}");
            assert!(!audit.caught_up(std::time::Duration::from_millis(50)).await);
            assert_eq!(*audit.written().borrow(), 0);
            shared.broken.store(false, Ordering::Relaxed);
            assert_eq!(audit.commit(sample()).await.ok().flatten(), Some(5));
            assert!(audit.caught_up(std::time::Duration::from_secs(60)).await);
            eventually("the store recovers", || !audit.is_failing()).await;
            let seqs: Vec<u64> = shared
                .applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(seqs, [1, 2, 3, 4, 5], "with_applier {with_applier}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_committed_concurrently_are_readable_once_caught_up_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (audit, reader) = sled_audit(dir.path(), Retention::default());
        // Many callers at once: the writer thread group-commits, answers
        // after the log's fsync and inserts into sled after answering.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let audit = audit.clone();
            tasks.spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..20 {
                    match audit.commit(sample()).await {
                        Ok(Some(seq)) => seqs.push(seq),
                        other => panic!("a durable commit answered {other:?}"),
                    }
                }
                seqs
            });
        }
        let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1280).collect::<Vec<u64>>());
        assert!(audit.caught_up(std::time::Duration::from_secs(60)).await);
        assert_eq!(*audit.written().borrow(), 1280);
        assert_eq!(intact(&reader), (1280, 1));
        drop((audit, reader));
        let (audit, reader) = sled_audit(dir.path(), Retention::default());
        assert_eq!(intact(&reader), (1280, 1));
        assert_eq!(*audit.written().borrow(), 1280);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_keeps_the_newest_records_behind_a_checkpoint_that_verify_checks() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let retention = Retention {
            max_age: None,
            max_records: Some(100),
        };
        let (audit, reader) = sled_audit(dir.path(), retention);
        for _ in 0..350 {
            audit
                .commit(sample())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // The writer prunes after a batch: a flush comes after it.
        audit.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let (kept, first) = intact(&reader);
        assert!(first > 200, "older records were removed: first {first}");
        assert!((100..=125).contains(&kept), "kept {kept}");
        let last = reader.last_seq().unwrap_or_default();
        assert_eq!(last - first + 1, kept);
        let checkpoints = reader
            .query(
                &Filter {
                    kind: Some("checkpoint".into()),
                    ..Filter::default()
                },
                "__",
            )
            .unwrap_or_default();
        assert!(!checkpoints.is_empty());
        assert!(reader.get(first - 1).ok().flatten().is_none());
        // Queries see the kept records only.
        let all = reader.query(&Filter::default(), "__").unwrap_or_default();
        assert_eq!(all.len() as u64, kept);
        drop((audit, reader));

        // Reopened, the chain goes on from where it was.
        let (audit, reader) = sled_audit(dir.path(), retention);
        audit
            .commit(sample())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, first_again) = intact(&reader);
        assert!(first_again >= first);

        // The anchor is believed only if the chain's checkpoint agrees.
        let anchor = reader
            .anchor()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("an anchor"));
        let forged = Anchor {
            first_seq: anchor.first_seq + 5,
            prev_hash: reader
                .get(anchor.first_seq + 5)
                .ok()
                .flatten()
                .map(|r| r.prev_hash)
                .unwrap_or_default(),
        };
        let _ = reader.meta.insert(
            reader::ANCHOR_KEY,
            serde_json::to_vec(&forged).unwrap_or_default(),
        );
        match reader.verify() {
            Ok(Verification::Broken { problem, .. }) => {
                assert!(problem.contains("checkpoint"), "{problem}");
            }
            other => panic!("a forged anchor must break verification: {other:?}"),
        }
        // Without an anchor, the removed start shows.
        let _ = reader.meta.remove(reader::ANCHOR_KEY);
        match reader.verify() {
            Ok(Verification::Broken { seq, problem }) => {
                assert_eq!(seq, 1);
                assert!(problem.contains("missing"), "{problem}");
            }
            other => panic!("a removed start must break verification: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_keeps_every_record_the_fleet_database_does_not_hold_yet() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let retention = Retention {
            max_age: None,
            max_records: Some(100),
        };
        let shipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let storage = SledStorage::reopen(dir.path());
        let reader = storage.reader();
        let sealing = Sealing {
            shipped: Some(shipped.clone()),
            ..Sealing::default()
        };
        let audit = Audit::start_sealed(storage, true, retention, sealing)
            .unwrap_or_else(|e| panic!("{e}"));
        let commit = |count: usize| {
            let audit = &audit;
            async move {
                for _ in 0..count {
                    audit
                        .commit(sample())
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                audit.flush().await.unwrap_or_else(|e| panic!("{e}"));
            }
        };
        // Nothing shipped: nothing removed, however far past `max_records`.
        commit(350).await;
        assert_eq!(intact(&reader), (350, 1));
        // Shipped up to 150: retention removes up to there, no further.
        shipped.store(150, Ordering::Relaxed);
        commit(40).await;
        let (_, first) = intact(&reader);
        assert!(first <= 151, "kept from {first}: record 151 is not shipped");
        assert!(first > 1, "shipped records were removed");
        // All shipped: retention keeps what it keeps without shipping.
        shipped.store(u64::MAX - 1, Ordering::Relaxed);
        commit(40).await;
        let (kept, _) = intact(&reader);
        assert!((100..=140).contains(&kept), "kept {kept}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_by_age_removes_old_records_at_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (audit, reader) = sled_audit(dir.path(), Retention::default());
        drop(reader);
        for _ in 0..20 {
            let mut old = sample();
            old.time = "2020-01-01T00:00:00.000Z".into();
            audit.commit(old).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let mut recent = sample();
        recent.time = timestamp(std::time::SystemTime::now());
        audit.commit(recent).await.unwrap_or_else(|e| panic!("{e}"));
        drop(audit);
        let week = Retention {
            max_age: Some(std::time::Duration::from_secs(7 * 86_400)),
            max_records: None,
        };
        let (_audit, reader) = sled_audit(dir.path(), week);
        let (kept, first) = intact(&reader);
        assert_eq!(first, 21, "the 20 old records went");
        assert_eq!(kept, 2, "the recent record and the checkpoint");
    }
}
