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
pub mod seal;
mod store;

pub use query::{Filter, FilterError, FilterParams, Keys, Reader, Verification};
pub use record::{AuditRecord, GENESIS, Redaction, sha256_canonical};
pub use seal::{Checkpoint, MacCheck, Seal, SealError, Signer, Statement, Verifier};
pub use store::{Anchor, Apply, ChainEnd, SledStorage, Storage};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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
    /// Durable commits under way.
    committing: Arc<AtomicUsize>,
}

/// A durable commit under way, counted while it lasts: a caller writes its
/// record itself only when it is the only one. Callers that arrive while
/// others are still being answered go through the writer thread's queue
/// and share its next write, rather than the first of them taking the
/// writer for a write of one record while the rest wait behind it.
struct Committing<'a>(&'a AtomicUsize);

impl<'a> Committing<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }

    fn alone(&self) -> bool {
        self.0.load(Ordering::Acquire) == 1
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Route {
    /// Writes a record on the caller's thread when the writer is idle
    /// (nothing queued, nobody writing): one synchronous write, no hand-off
    /// to the writer thread and back. `None` (the record left) when the writer is
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
    failing: Arc<Failing>,
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
    /// What verification of this store checks with: the writer's keys.
    keys: Keys,
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
        Self::start_sealed(storage, durable, retention, Sealing::default())
    }

    /// Starts the writer with a retention and a way of sealing records
    /// (a chain key, a checkpoint signer).
    pub fn start_sealed(
        storage: impl Storage,
        durable: bool,
        retention: Retention,
        sealing: Sealing,
    ) -> Result<Self, AuditError> {
        let failing = Arc::new(Failing::default());
        let keys = Keys {
            seal: sealing.seal.clone(),
            checkpoints: sealing.signer.as_ref().map(Signer::verifier),
        };
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
        let tell = Arc::new(tell);
        let logged = Arc::new(AtomicU64::new(tip.seq));
        let applier = storage
            .applier()
            .map(|apply| ApplierThread::spawn(apply, tell.clone(), failing.clone()))
            .transpose()?;
        let mut writer = Writer {
            unapplied: false,
            logged_since: 0,
            logged: logged.clone(),
            storage: Box::new(storage),
            tip,
            pruning: Pruning::new(retention),
            tell,
            failing: failing.clone(),
            applier,
            signing: Signing::new(sealing),
        };
        writer.prune();
        let writer = Arc::new(std::sync::Mutex::new(writer));
        let route = Route {
            jobs: Writer::spawn(writer.clone())?,
            writer,
            committing: Arc::default(),
        };
        Ok(Self {
            route,
            failing,
            durable,
            written,
            logged,
            reader,
            keys,
        })
    }

    /// The keys the writer seals and signs with, as verification needs
    /// them.
    pub fn keys(&self) -> &Keys {
        &self.keys
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
        let committing = Committing::enter(&route.committing);
        let mut record = Some(record);
        if committing.alone()
            && let Some(written) = route.write_if_idle(&mut record)
        {
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

    /// Whether the store is failing (the last records could not be
    /// logged, or logged records cannot be made readable): calls are
    /// refused until it is not.
    pub fn is_failing(&self) -> bool {
        self.failing.any()
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

/// How long the applier waits before it tries records sled refused again.
const APPLY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// While records arrive, the applier looks for more this often, woken by a
/// timer of its own: no caller pays for waking it (waking a sleeping thread
/// costs the waker about 8 µs on our 2-core VM, an inter-processor
/// interrupt, against a commit of about 200 µs).
const APPLY_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// After this many looks that found nothing, the applier sleeps until the
/// next logged batch wakes it.
const IDLE_POLLS: u32 = 100;

/// The thread that makes logged records readable (the storage's
/// [`Apply`]), so that no caller waits for sled: a lone caller's commit is
/// the write-ahead log's write alone. It applies at once after an apply
/// that found records, every [`APPLY_POLL`] while records keep coming, and
/// sleeps when they stop; queries wait for it ([`Audit::caught_up`]).
/// Dropped, it applies what is left and ends.
struct ApplierThread {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Set while the thread sleeps with no timer: the next logged batch
    /// wakes it.
    asleep: Arc<AtomicBool>,
}

impl ApplierThread {
    fn spawn(
        apply: Arc<dyn Apply>,
        tell: Arc<watch::Sender<u64>>,
        failing: Arc<Failing>,
    ) -> Result<Self, AuditError> {
        let stop = Arc::new(AtomicBool::new(false));
        let asleep = Arc::new(AtomicBool::new(false));
        let (stopping, sleeping) = (stop.clone(), asleep.clone());
        let thread = std::thread::Builder::new()
            .name("audit-applier".into())
            .spawn(move || Self::run(&*apply, &tell, &failing, &stopping, &sleeping))
            .map_err(|err| AuditError::Write(format!("cannot start the applier: {err}")))?;
        Ok(Self {
            thread: Some(thread),
            stop,
            asleep,
        })
    }

    fn run(
        apply: &dyn Apply,
        tell: &watch::Sender<u64>,
        failing: &Failing,
        stop: &AtomicBool,
        asleep: &AtomicBool,
    ) {
        let (mut last, mut idle) = (0, 0);
        loop {
            let last_round = stop.load(Ordering::Acquire);
            // Said before the look, not after: a batch queued after this
            // look began is queued after the look took the queue's lock,
            // so its writer then sees `asleep` and wakes the thread.
            let sleepy = idle >= IDLE_POLLS;
            if sleepy {
                asleep.store(true, Ordering::Release);
            }
            let applied = apply.apply();
            match &applied {
                Ok(seq) => {
                    failing.applied();
                    tell_readable(tell, *seq);
                }
                Err(err) => failing.applying(err),
            }
            if last_round {
                return;
            }
            match applied {
                Ok(seq) if seq > last => {
                    // Found records: look again at once.
                    last = seq;
                    idle = 0;
                    asleep.store(false, Ordering::Release);
                }
                Ok(_) if sleepy => {
                    std::thread::park();
                    asleep.store(false, Ordering::Release);
                    idle = 0;
                }
                Ok(_) => {
                    idle += 1;
                    std::thread::park_timeout(APPLY_POLL);
                }
                Err(_) => {
                    idle = 0;
                    asleep.store(false, Ordering::Release);
                    std::thread::park_timeout(APPLY_RETRY);
                }
            }
        }
    }

    /// Tells the thread records were logged: a system call only if it
    /// sleeps with no timer.
    fn wake(&self) {
        if self.asleep.load(Ordering::Acquire)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
    }
}

impl Drop for ApplierThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The writing end of the chain: the storage, its tip, retention.
struct Writer {
    storage: Box<dyn Storage>,
    tip: Tip,
    pruning: Pruning,
    /// Tells followers the last sequence number readable.
    tell: Arc<watch::Sender<u64>>,
    failing: Arc<Failing>,
    /// Whether the storage left logged records to apply and has no applier
    /// thread to do it: [`Writer::settle`] applies them.
    unapplied: bool,
    /// Records logged since the last [`Writer::settle`].
    logged_since: u64,
    /// The last sequence number logged.
    logged: Arc<AtomicU64>,
    /// Makes logged records readable off the callers' path, when the
    /// storage has an applier.
    applier: Option<ApplierThread>,
    /// The seal, and when the head is next signed.
    signing: Signing,
}

/// How the writer seals records and signs the chain's head.
#[derive(Debug, Clone)]
pub struct Sealing {
    pub seal: Seal,
    pub signer: Option<Signer>,
    /// The store's name in signed statements (its folder's name).
    pub store: String,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or once this long has passed since the last (at the next write,
    /// and when the writer flushes at stop).
    pub checkpoint_interval: std::time::Duration,
}

impl Default for Sealing {
    fn default() -> Self {
        Self {
            seal: Seal::Plain,
            signer: None,
            store: String::new(),
            checkpoint_every: crate::config::CHECKPOINT_EVERY,
            checkpoint_interval: crate::config::CHECKPOINT_INTERVAL,
        }
    }
}

struct Signing {
    sealing: Sealing,
    since: u64,
    last: std::time::Instant,
}

impl Signing {
    fn new(sealing: Sealing) -> Self {
        Self {
            sealing,
            since: 0,
            last: std::time::Instant::now(),
        }
    }

    /// Whether the head is due a signed checkpoint (`at_stop`: whatever
    /// was written since the last one is vouched for before the store
    /// closes).
    fn due(&self, at_stop: bool) -> bool {
        self.sealing.signer.is_some()
            && self.since > 0
            && (at_stop
                || self.since >= self.sealing.checkpoint_every
                || self.last.elapsed() >= self.sealing.checkpoint_interval)
    }
}

impl Writer {
    /// Seals the records onto the chain and stores them with one flush; the
    /// sequence numbers they got. A failure stores none of them.
    fn write(&mut self, mut records: Vec<AuditRecord>) -> Result<Vec<u64>, AuditError> {
        let (mut next_seq, mut prev) = (self.tip.seq, self.tip.hash.clone());
        let mut time = self.tip.time.clone();
        let mut values = Vec::with_capacity(records.len());
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
            values.push(record.seal_to_json(next_seq, &prev, &self.signing.sealing.seal));
            prev.clone_from(&record.hash);
        }
        let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
        match self.storage.log(records, values) {
            Ok(pending) => {
                self.failing.log.store(false, Ordering::Relaxed);
                self.tip = Tip {
                    seq: next_seq,
                    hash: prev,
                    time,
                };
                self.logged.store(next_seq, Ordering::Release);
                self.logged_since += seqs.len() as u64;
                self.signing.since += seqs.len() as u64;
                match (&self.applier, pending) {
                    (_, false) => tell_readable(&self.tell, next_seq),
                    (Some(applier), true) => applier.wake(),
                    (None, true) => self.unapplied = true,
                }
                Ok(seqs)
            }
            Err(err) => {
                self.failing.logging(&err);
                Err(err)
            }
        }
    }

    /// After a batch's callers were answered: applies what the storage
    /// left when no applier thread does, and prunes when due.
    fn settle(&mut self) {
        let logged = std::mem::take(&mut self.logged_since);
        let prune = logged > 0 && self.pruning.due(logged);
        if self.unapplied || prune {
            self.drain();
        }
        if prune {
            self.prune();
        }
        self.sign_if_due(false);
    }

    /// Appends a `signed_checkpoint` record vouching for the head as it
    /// is, when one is due. A failure is logged (the writer's failure
    /// state refuses calls as for any record).
    fn sign_if_due(&mut self, at_stop: bool) {
        if !self.signing.due(at_stop) {
            return;
        }
        let Some(signer) = &self.signing.sealing.signer else {
            return;
        };
        let checkpoint = signer.sign(Statement {
            store: self.signing.sealing.store.clone(),
            seq: self.tip.seq,
            hash: self.tip.hash.clone(),
            time: timestamp(std::time::SystemTime::now()),
        });
        let mut record = AuditRecord::event("signed_checkpoint", "allow");
        record.detail = serde_json::to_value(&checkpoint).ok();
        match self.write(vec![record]) {
            Ok(_) => {
                self.signing.since = 0;
                self.signing.last = std::time::Instant::now();
            }
            Err(err) => tracing::error!(error = %err, "AUDIT: cannot write a signed checkpoint"),
        }
    }

    /// Makes everything logged readable now (the storage's `apply`) and
    /// tells followers. A failure is logged loudly; the records stay in the
    /// write-ahead log (replayed at open) and are tried again.
    fn drain(&mut self) {
        match self.storage.apply() {
            Ok(()) => {
                self.unapplied = false;
                self.failing.applied();
                tell_readable(&self.tell, self.tip.seq);
            }
            Err(err) => self.failing.applying(&err),
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

    /// Applies and flushes everything logged.
    fn flush(&mut self) -> Result<u64, AuditError> {
        self.sign_if_due(true);
        self.storage.flush()?;
        self.unapplied = false;
        self.failing.applied();
        tell_readable(&self.tell, self.tip.seq);
        Ok(self.tip.seq)
    }

    fn prune(&mut self) {
        self.pruning.run(
            &mut *self.storage,
            &mut self.tip,
            &self.tell,
            &self.signing.sealing.seal,
        );
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
    fn run(
        &mut self,
        storage: &mut dyn Storage,
        tip: &mut Tip,
        tell: &watch::Sender<u64>,
        seal: &Seal,
    ) {
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
            let value = checkpoint.seal_to_json(tip.seq + 1, &tip.hash, seal);
            let (seq, hash, time) = (
                checkpoint.seq,
                checkpoint.hash.clone(),
                checkpoint.time.clone(),
            );
            storage.log(vec![checkpoint], vec![value])?;
            // Logged is durable: the chain goes on from the checkpoint even
            // if making it readable fails now (the next batch retries that;
            // reusing its number would put two records with one number in
            // the write-ahead log).
            tip.seq = seq;
            tip.hash = hash;
            tip.time = time;
            storage.flush()?;
            tell_readable(tell, tip.seq);
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
            hash: String::new(),
            mac: None,
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

    /// Waits (at most 5 s) until `done`.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
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
            assert!(audit.caught_up(std::time::Duration::from_secs(5)).await);
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
