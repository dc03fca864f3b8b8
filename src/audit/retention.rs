//! Retention: when the writer looks for records it no longer keeps, and
//! how it removes them behind a checkpoint that the chain vouches for.

use tokio::sync::watch;

use super::reader::Anchor;
use super::record::AuditRecord;
use super::seal::Seal;
use super::storage::{ChainEnd, Storage};
use super::{AuditError, tell_readable};
use crate::config::Retention;

/// How often retention looks for records to remove (at most).
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// When the writer prunes, and how.
pub(super) struct Pruning {
    retention: Retention,
    last_run: std::time::Instant,
    written_since: u64,
    /// The last record shipped (`[audit.ship]`): none after it is removed.
    shipped: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Pruning {
    pub(super) fn new(
        retention: Retention,
        shipped: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        Self {
            retention,
            last_run: std::time::Instant::now(),
            written_since: 0,
            shipped,
        }
    }

    /// Whether to look again, after `written` more records.
    pub(super) fn due(&mut self, written: u64) -> bool {
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
    pub(super) fn run(
        &mut self,
        storage: &mut dyn Storage,
        tip: &mut ChainEnd,
        tell: &watch::Sender<u64>,
        seal: &Seal,
    ) {
        self.last_run = std::time::Instant::now();
        self.written_since = 0;
        if self.retention.keeps_everything() {
            return;
        }
        let result = (|| -> Result<Option<(Anchor, u64)>, AuditError> {
            let Some(mut anchor) =
                storage.prune_point(&self.retention, std::time::SystemTime::now())?
            else {
                return Ok(None);
            };
            // Records not yet in the fleet's database wait for it: removed
            // now, they would never be shipped. The chain is kept from the
            // first of them.
            if let Some(shipped) = &self.shipped {
                let shipped = shipped.load(std::sync::atomic::Ordering::Relaxed);
                if anchor.first_seq > shipped.saturating_add(1) {
                    tracing::warn!(
                        shipped,
                        would_keep_from = anchor.first_seq,
                        "audit retention waits for shipping: records not yet in the fleet's database are kept"
                    );
                    let Some(reader) = storage.reader() else {
                        return Ok(None);
                    };
                    let Some(last_shipped) = reader.get(shipped)? else {
                        return Ok(None);
                    };
                    if shipped < reader.first_seq()? {
                        return Ok(None);
                    }
                    anchor = Anchor {
                        first_seq: shipped + 1,
                        prev_hash: last_shipped.hash,
                    };
                }
            }
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
