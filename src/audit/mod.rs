//! The audit log: one hash-chained record per exchange, committed before the
//! client gets the reply.
//!
//! A [`Writer`] seals records into the chain (sequence number, `prev_hash`,
//! `hash`) and writes each batch it finds waiting with one flush (group
//! commit): under load, many records share one fsync. Records reach it
//! through a writer thread's queue; in durable mode a caller that finds the
//! writer idle writes its record itself, so a lone caller pays one fsync and
//! no hand-off between threads. A commit that fails is
//! reported to every waiting caller, and the gateway refuses calls while the
//! store cannot be written (fail closed).

mod query;
mod record;
mod store;

pub use query::{Filter, FilterError, FilterParams, Reader, Verification};
pub use record::{AuditRecord, GENESIS, Redaction, sha256_canonical};
pub use store::{Anchor, ChainEnd, SledStorage, Storage};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Retention;

/// Records a batch holds at most.
const MAX_BATCH: usize = 4096;

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

struct Job {
    /// `None`: flush what was written so far (at shutdown).
    record: Option<AuditRecord>,
    /// Told when the record is stored (durable mode) or the flush done.
    done: Option<Done>,
}

/// A durable commit's answer: the record's sequence number once stored.
type Done = oneshot::Sender<Result<u64, AuditError>>;

/// How records reach the store: the writer thread's queue, and the writer
/// itself (which the thread locks per batch, and an idle writer's caller
/// may take).
#[derive(Clone)]
struct Route {
    jobs: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Writer>>,
}

impl Route {
    /// Writes a record on the caller's thread when the writer is idle
    /// (nothing queued, nobody writing): one fsync, no hand-off to the
    /// writer thread and back. `None` (the record left) when the writer is
    /// busy.
    fn write_if_idle(&self, record: &mut Option<AuditRecord>) -> Option<Result<u64, AuditError>> {
        if self.jobs.capacity() != self.jobs.max_capacity() {
            return None;
        }
        let mut writer = self.writer.try_lock().ok()?;
        let record = record.take()?;
        Some(blocking(|| {
            let result = writer.write(vec![record]);
            writer.settle();
            result.and_then(|seqs| seqs.first().copied().ok_or(AuditError::Stopped))
        }))
    }
}

/// The handle the gateway commits records through.
#[derive(Clone)]
pub struct Audit {
    route: Route,
    failing: Arc<AtomicBool>,
    /// Durable: `commit` returns once the record is flushed. Buffered: once
    /// the writer has it in its queue.
    durable: bool,
    /// The sequence number of the last record written and readable (for
    /// followers).
    written: watch::Receiver<u64>,
    /// The sequence number of the last record made durable (it may not be
    /// readable yet: see [`Audit::caught_up`]).
    logged: Arc<AtomicU64>,
    reader: Option<Reader>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("failing", &self.is_failing())
            .finish()
    }
}

impl Audit {
    /// Starts the writer thread on a storage; `durable` as on [`Audit`].
    pub fn start(storage: impl Storage, durable: bool) -> Result<Self, AuditError> {
        Self::start_with(storage, durable, Retention::default())
    }

    /// Starts the writer with a retention: at start, then at most every
    /// [`PRUNE_EVERY`] (and whenever `max_records` is passed by a tenth),
    /// the records it no longer keeps are removed behind a checkpoint.
    pub fn start_with(
        storage: impl Storage,
        durable: bool,
        retention: Retention,
    ) -> Result<Self, AuditError> {
        let failing = Arc::new(AtomicBool::new(false));
        let tip = match storage.last()? {
            Some(end) => Tip {
                seq: end.seq,
                hash: end.hash,
                time: end.time,
            },
            None => Tip {
                seq: 0,
                hash: GENESIS.to_owned(),
                time: String::new(),
            },
        };
        let reader = storage.reader();
        let (tell, written) = watch::channel(tip.seq);
        let logged = Arc::new(AtomicU64::new(tip.seq));
        let mut writer = Writer {
            unapplied: 0,
            logged: logged.clone(),
            storage: Box::new(storage),
            tip,
            pruning: Pruning::new(retention),
            tell,
            failing: failing.clone(),
        };
        writer.prune();
        let writer = Arc::new(std::sync::Mutex::new(writer));
        let route = Route {
            jobs: Writer::spawn(writer.clone())?,
            writer,
        };
        Ok(Self {
            route,
            failing,
            durable,
            written,
            logged,
            reader,
        })
    }

    /// Commits a record: durable, returns its sequence number once it is
    /// flushed; buffered, returns `None` once the writer has it (a failure
    /// then shows in [`Audit::is_failing`], and the calls after it are
    /// refused).
    pub async fn commit(&self, record: AuditRecord) -> Result<Option<u64>, AuditError> {
        if self.is_failing() && !self.durable {
            return Err(AuditError::Write(
                "the last records could not be written".into(),
            ));
        }
        let route = &self.route;
        if !self.durable {
            route
                .jobs
                .send(Job {
                    record: Some(record),
                    done: None,
                })
                .await
                .map_err(|_| AuditError::Stopped)?;
            return Ok(None);
        }
        let mut record = Some(record);
        if let Some(written) = route.write_if_idle(&mut record) {
            return written.map(Some);
        }
        let (done, result) = oneshot::channel();
        route
            .jobs
            .send(Job {
                record,
                done: Some(done),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        result.await.map_err(|_| AuditError::Stopped)?.map(Some)
    }

    /// Flushes every record queued so far (at shutdown, for buffered mode).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, result) = oneshot::channel();
        self.route
            .jobs
            .send(Job {
                record: None,
                done: Some(done),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        result.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    /// A read handle on the store being written, if it has one.
    pub fn reader(&self) -> Option<&Reader> {
        self.reader.as_ref()
    }

    /// Follows the sequence number of the last record written.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// Waits (at most `limit`) until every record committed so far is
    /// readable: a durable commit returns once its record is in the
    /// write-ahead log, and its sled inserts follow on the writer thread.
    /// Whether they all are.
    pub async fn caught_up(&self, limit: std::time::Duration) -> bool {
        let logged = self.logged.load(Ordering::Acquire);
        let mut written = self.written.clone();
        matches!(
            tokio::time::timeout(limit, written.wait_for(|seq| *seq >= logged)).await,
            Ok(Ok(_))
        )
    }

    /// Whether the last commit failed: calls are refused until one succeeds.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

/// How often retention looks for records to remove (at most).
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The end of the chain, as the writer extends it.
struct Tip {
    seq: u64,
    hash: String,
    time: String,
}

/// The writing end of the chain: the storage, its tip, retention.
struct Writer {
    storage: Box<dyn Storage>,
    tip: Tip,
    pruning: Pruning,
    /// Tells followers the last sequence number written.
    tell: watch::Sender<u64>,
    /// Set while the store cannot be written.
    failing: Arc<AtomicBool>,
    /// Records logged (durable) and not yet applied (readable).
    unapplied: u64,
    /// The last sequence number logged.
    logged: Arc<AtomicU64>,
}

impl Writer {
    /// Seals the records onto the chain and stores them with one flush; the
    /// sequence numbers they got. A failure stores none of them.
    fn write(&mut self, mut records: Vec<AuditRecord>) -> Result<Vec<u64>, AuditError> {
        let (mut next_seq, mut prev) = (self.tip.seq, self.tip.hash.clone());
        let mut time = self.tip.time.clone();
        for record in &mut records {
            next_seq += 1;
            // Times never go backwards along the chain (queries find a time
            // range by binary search): a record that finished earlier than
            // the one before it in the chain takes that one's time.
            if record.time < time {
                record.time.clone_from(&time);
            } else {
                time.clone_from(&record.time);
            }
            record.seal(next_seq, &prev);
            prev.clone_from(&record.hash);
        }
        let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
        match self.storage.log(records) {
            Ok(pending) => {
                // `failing` is cleared once the records are readable too
                // (`settle`): a store whose sled cannot take records keeps
                // refusing calls, not every other one.
                self.tip = Tip {
                    seq: next_seq,
                    hash: prev,
                    time,
                };
                self.logged.store(next_seq, Ordering::Release);
                self.unapplied += seqs.len() as u64;
                if !pending {
                    self.settle();
                }
                Ok(seqs)
            }
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %err, "AUDIT STORE FAILING: calls are refused until records can be written again");
                }
                Err(err)
            }
        }
    }

    /// Makes what was logged readable (the storage's `apply`), tells
    /// followers, and prunes when due. A failure is logged loudly; the
    /// records stay in the write-ahead log (replayed at open) and are
    /// applied with the next batch.
    fn settle(&mut self) {
        if self.unapplied == 0 {
            return;
        }
        match self.storage.apply() {
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                let applied = std::mem::take(&mut self.unapplied);
                self.tell.send_replace(self.tip.seq);
                if self.pruning.due(applied) {
                    self.prune();
                }
            }
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %err, "AUDIT STORE FAILING: logged records cannot be written into the store (they are kept in its write-ahead log)");
                }
            }
        }
    }

    /// Writes a batch, tells each waiting caller its sequence number (or
    /// the failure), then makes the batch readable.
    fn write_and_tell(&mut self, batch: Vec<(AuditRecord, Option<Done>)>) {
        let (records, done): (Vec<AuditRecord>, Vec<Option<Done>>) = batch.into_iter().unzip();
        match self.write(records) {
            Ok(seqs) => {
                for (done, seq) in done.into_iter().zip(seqs) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(seq));
                    }
                }
            }
            Err(err) => {
                for done in done.into_iter().flatten() {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
        self.settle();
    }

    fn flush(&mut self) -> Result<u64, AuditError> {
        self.settle();
        self.storage.flush().map(|()| self.tip.seq)
    }

    fn prune(&mut self) {
        self.pruning
            .run(&mut *self.storage, &mut self.tip, &self.tell);
    }

    /// The writer thread: it writes each batch it finds waiting in its
    /// queue.
    fn spawn(writer: Arc<std::sync::Mutex<Writer>>) -> Result<mpsc::Sender<Job>, AuditError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(MAX_BATCH * 4);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut flush = None;
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(job) = next.take() {
                        match job.record {
                            Some(record) => batch.push((record, job.done)),
                            None => flush = Some(job.done),
                        }
                        if flush.is_none() && batch.len() < MAX_BATCH {
                            next = queue.try_recv().ok();
                        }
                    }
                    let mut this = writer.lock().unwrap_or_else(|p| p.into_inner());
                    if !batch.is_empty() {
                        this.write_and_tell(batch);
                    }
                    if let Some(done) = flush {
                        let result = this.flush();
                        if let Some(done) = done {
                            let _ = done.send(result);
                        }
                    }
                }
            })
            .map_err(|err| AuditError::Write(format!("cannot start the writer: {err}")))?;
        Ok(jobs)
    }
}

/// Runs disk work from async code: on a multi-threaded runtime the worker
/// hands its other tasks on while this one waits for the disk.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// When the writer prunes, and how.
struct Pruning {
    retention: Retention,
    last_run: std::time::Instant,
    written_since: u64,
}

impl Pruning {
    fn new(retention: Retention) -> Self {
        Self {
            retention,
            last_run: std::time::Instant::now(),
            written_since: 0,
        }
    }

    /// Whether to look again, after `written` more records.
    fn due(&mut self, written: u64) -> bool {
        if self.retention.keeps_everything() {
            return false;
        }
        self.written_since += written;
        let by_count = self
            .retention
            .max_records
            .is_some_and(|max| self.written_since >= (max / 10).max(1));
        let by_age = self.retention.max_age.is_some_and(|age| {
            self.last_run.elapsed()
                >= (age / 4).clamp(std::time::Duration::from_secs(1), PRUNE_EVERY)
        });
        by_count || by_age
    }

    /// Removes what retention no longer keeps: first a `checkpoint` record
    /// joins the chain (where the kept chain starts, and the hash it starts
    /// from), then the anchor is stored and the older records removed. A
    /// failure is logged; the log keeps growing and calls go on.
    fn run(&mut self, storage: &mut dyn Storage, tip: &mut Tip, tell: &watch::Sender<u64>) {
        self.last_run = std::time::Instant::now();
        self.written_since = 0;
        if self.retention.keeps_everything() {
            return;
        }
        let result = (|| -> Result<Option<(Anchor, u64)>, AuditError> {
            let Some(anchor) =
                storage.prune_point(&self.retention, std::time::SystemTime::now())?
            else {
                return Ok(None);
            };
            let mut checkpoint = AuditRecord::event("checkpoint", "allow");
            if checkpoint.time < tip.time {
                checkpoint.time.clone_from(&tip.time);
            }
            checkpoint.detail = Some(serde_json::json!({
                "first_seq": anchor.first_seq,
                "prev_hash": anchor.prev_hash,
                "max_age_s": self.retention.max_age.map(|age| age.as_secs()),
                "max_records": self.retention.max_records,
            }));
            checkpoint.seal(tip.seq + 1, &tip.hash);
            let (seq, hash, time) = (
                checkpoint.seq,
                checkpoint.hash.clone(),
                checkpoint.time.clone(),
            );
            storage.log(vec![checkpoint])?;
            // Logged is durable: the chain goes on from the checkpoint even
            // if making it readable fails now (the next batch retries that;
            // reusing its number would put two records with one number in
            // the write-ahead log).
            tip.seq = seq;
            tip.hash = hash;
            tip.time = time;
            storage.flush()?;
            tell.send_replace(tip.seq);
            let removed = storage.prune(&anchor)?;
            Ok(Some((anchor, removed)))
        })();
        match result {
            Ok(None) => {}
            Ok(Some((anchor, removed))) => tracing::info!(
                removed,
                first_seq = anchor.first_seq,
                "audit retention: older records removed behind a checkpoint"
            ),
            Err(err) => {
                tracing::error!(error = %err, "AUDIT: retention could not remove old records")
            }
        }
    }
}

/// The time now as an audit timestamp, `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn timestamp(time: std::time::SystemTime) -> String {
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let seconds = crate::protocol::datetime_literal(time);
    format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while written.lock().map(|w| w.len()).unwrap_or_default() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the record must be written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        broken.store(true, Ordering::Relaxed);
        assert!(
            audit.commit(sample()).await.is_ok(),
            "queued, not yet written"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !audit.is_failing() {
            assert!(
                std::time::Instant::now() < deadline,
                "the failure must show"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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
            hash: String::new(),
        }
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
    /// while `broken` is set.
    struct Unappliable {
        broken: Arc<AtomicBool>,
        pending: Vec<AuditRecord>,
        applied: Written,
    }

    impl Storage for Unappliable {
        fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
            Ok(None)
        }
        fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
            self.log(records.to_vec())?;
            self.apply()
        }
        fn log(&mut self, records: Vec<AuditRecord>) -> Result<bool, AuditError> {
            self.pending.extend(records);
            Ok(true)
        }
        fn apply(&mut self) -> Result<(), AuditError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(AuditError::Write("sled is failing".into()));
            }
            self.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&mut self.pending);
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_logged_but_not_applied_keep_the_store_failing_until_they_are() {
        let broken = Arc::new(AtomicBool::new(true));
        let applied: Written = Arc::default();
        let storage = Unappliable {
            broken: broken.clone(),
            pending: Vec::new(),
            applied: applied.clone(),
        };
        let audit = Audit::start(storage, true).unwrap_or_else(|e| panic!("{e}"));
        // Durable in the log: the commits succeed, but the store stays
        // failing (calls are refused) for as long as sled cannot take them,
        // not every other call.
        for expected in 1..=3 {
            let seq = audit
                .commit(sample())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(seq, Some(expected));
            assert!(audit.is_failing(), "after record {expected}");
        }
        assert!(!audit.caught_up(std::time::Duration::from_millis(50)).await);
        assert_eq!(*audit.written().borrow(), 0);
        broken.store(false, Ordering::Relaxed);
        assert_eq!(audit.commit(sample()).await.ok().flatten(), Some(4));
        assert!(!audit.is_failing());
        assert!(audit.caught_up(std::time::Duration::from_secs(5)).await);
        let seqs: Vec<u64> = applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
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
        assert!(audit.caught_up(std::time::Duration::from_secs(5)).await);
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
            store::ANCHOR_KEY,
            serde_json::to_vec(&forged).unwrap_or_default(),
        );
        match reader.verify() {
            Ok(Verification::Broken { problem, .. }) => {
                assert!(problem.contains("checkpoint"), "{problem}");
            }
            other => panic!("a forged anchor must break verification: {other:?}"),
        }
        // Without an anchor, the removed start shows.
        let _ = reader.meta.remove(store::ANCHOR_KEY);
        match reader.verify() {
            Ok(Verification::Broken { seq, problem }) => {
                assert_eq!(seq, 1);
                assert!(problem.contains("missing"), "{problem}");
            }
            other => panic!("a removed start must break verification: {other:?}"),
        }
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
