//! The handle the gateway commits records through ([`Audit`]), and how a
//! record reaches the writer: through the writer thread's queue, or, in
//! durable mode, written by a lone caller that finds the writer idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use super::reader::Reader;
use super::record::AuditRecord;
use super::seal::Signer;
use super::storage::{ChainEnd, Storage};
use super::verify::Keys;
use super::writer::{Job, Sealing, Writer};
use super::{AuditError, Failing};
use crate::config::Retention;

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
        Some(blocking(|| writer.write_one(record)))
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
    /// The profile every record of this proxy names (`serve --profile`).
    profile: Option<Arc<str>>,
    /// With `[audit.ship]`: the last record shipped (retention keeps
    /// every record after it).
    shipped: Option<Arc<AtomicU64>>,
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
    /// [`PRUNE_EVERY`](super::PRUNE_EVERY) (and whenever `max_records` is
    /// passed by a tenth), the records it no longer keeps are removed
    /// behind a checkpoint.
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
        let tip = storage.last()?.unwrap_or_else(ChainEnd::genesis);
        let reader = storage.reader();
        let (tell, written) = watch::channel(tip.seq);
        let logged = Arc::new(AtomicU64::new(tip.seq));
        let writer = Writer::open(
            storage,
            tip,
            retention,
            sealing,
            Arc::new(tell),
            logged.clone(),
            failing.clone(),
        )?;
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
            profile: None,
            shipped: None,
        })
    }

    /// With `[audit.ship]`: the last record the fleet's database holds,
    /// as retention reads it (see [`Sealing::shipped`]).
    pub fn shipping_to(mut self, shipped: Option<Arc<AtomicU64>>) -> Self {
        self.shipped = shipped;
        self
    }

    /// The shipped watermark, for the shipper to move.
    pub fn shipped(&self) -> Option<Arc<AtomicU64>> {
        self.shipped.clone()
    }

    /// Every record committed from now on names `profile`.
    pub fn with_profile(mut self, profile: Option<&str>) -> Self {
        self.profile = profile.map(Arc::from);
        self
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
    pub async fn commit(&self, mut record: AuditRecord) -> Result<Option<u64>, AuditError> {
        if let Some(profile) = &self.profile {
            record.profile = Some(profile.to_string());
        }
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
