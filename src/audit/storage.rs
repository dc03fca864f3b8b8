//! The storage the writer appends to, behind a small trait (sled 0.34 is
//! the last stable release; the trait keeps it replaceable): the sled store
//! is one, tests have others.

use std::sync::Arc;

use super::AuditError;
use super::reader::{Anchor, Reader};
use super::record::{AuditRecord, GENESIS};
use crate::config::Retention;

/// The end of the chain: where the next record attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnd {
    pub seq: u64,
    pub hash: String,
    pub time: String,
}

impl ChainEnd {
    /// The end of an empty chain: the first record attaches to [`GENESIS`].
    pub(super) fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
            time: String::new(),
        }
    }
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
