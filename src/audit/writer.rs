//! The writer: it seals records onto the chain (sequence number,
//! `prev_hash`, `hash`, and the chain key's MAC), writes each batch it finds
//! waiting in its thread's queue with one flush (group commit), signs the
//! chain's head when a checkpoint is due, and prunes what retention no
//! longer keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use super::applier::ApplierThread;
use super::record::AuditRecord;
use super::retention::Pruning;
use super::seal::{Seal, Signer, Statement};
use super::storage::{ChainEnd, Storage};
use super::{AuditError, Failing, tell_readable, timestamp};
use crate::config::Retention;

/// Records a batch holds at most.
const MAX_BATCH: usize = 4096;

/// What the writer thread is handed: a record to write, or a flush.
pub(super) struct Job {
    /// `None`: flush what was written so far (at shutdown).
    pub(super) record: Option<AuditRecord>,
    /// Told when the record is stored (durable mode) or the flush done.
    pub(super) done: Option<Done>,
}

/// A durable commit's answer: the record's sequence number once stored.
pub(super) type Done = oneshot::Sender<Result<u64, AuditError>>;

/// The writing end of the chain: the storage, its tip, retention.
pub(super) struct Writer {
    storage: Box<dyn Storage>,
    tip: ChainEnd,
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
    /// With `[audit.ship]`: the last record the fleet's database holds.
    /// Retention removes none after it (shipping would stop at the gap).
    pub shipped: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Default for Sealing {
    fn default() -> Self {
        Self {
            seal: Seal::Plain,
            signer: None,
            store: String::new(),
            checkpoint_every: crate::config::CHECKPOINT_EVERY,
            checkpoint_interval: crate::config::CHECKPOINT_INTERVAL,
            shipped: None,
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
    /// A writer that extends the chain from `tip`, with an applier thread
    /// when the storage has one; `tell` and `logged` are shared with the
    /// handle (the last sequence number readable, and logged). What
    /// retention no longer keeps is removed before it returns.
    pub(super) fn open(
        storage: impl Storage,
        tip: ChainEnd,
        retention: Retention,
        sealing: Sealing,
        tell: Arc<watch::Sender<u64>>,
        logged: Arc<AtomicU64>,
        failing: Arc<Failing>,
    ) -> Result<Self, AuditError> {
        let applier = storage
            .applier()
            .map(|apply| ApplierThread::spawn(apply, tell.clone(), failing.clone()))
            .transpose()?;
        let mut writer = Writer {
            unapplied: false,
            logged_since: 0,
            logged,
            storage: Box::new(storage),
            tip,
            pruning: Pruning::new(retention, sealing.shipped.clone()),
            tell,
            failing,
            applier,
            signing: Signing::new(sealing),
        };
        writer.prune();
        Ok(writer)
    }

    /// Seals the records onto the chain and stores them with one flush; the
    /// sequence numbers they got. A failure stores none of them.
    pub(super) fn write(&mut self, mut records: Vec<AuditRecord>) -> Result<Vec<u64>, AuditError> {
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
                self.tip = ChainEnd {
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

    /// One record written alone (its caller waits, with nothing queued
    /// behind it): sealed, stored with its flush, then settled; its
    /// sequence number.
    pub(super) fn write_one(&mut self, record: AuditRecord) -> Result<u64, AuditError> {
        let written = self.write(vec![record]);
        self.settle();
        written.and_then(|seqs| seqs.first().copied().ok_or(AuditError::Stopped))
    }

    /// After a batch's callers were answered: applies what the storage
    /// left when no applier thread does, and prunes when due.
    pub(super) fn settle(&mut self) {
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
    pub(super) fn spawn(
        writer: Arc<std::sync::Mutex<Writer>>,
    ) -> Result<mpsc::Sender<Job>, AuditError> {
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
