//! Where records live: sled, keyed by big-endian sequence numbers, behind a
//! small trait (sled 0.34 is the last stable release; the trait keeps it
//! replaceable).

use std::path::{Path, PathBuf};

use super::AuditError;
use super::record::{AuditRecord, GENESIS};

/// The storage the writer appends to.
pub trait Storage: Send + 'static {
    /// The last record's (seq, hash), if any.
    fn last(&self) -> Result<Option<(u64, String)>, AuditError>;
    /// Appends sealed records as one batch, durably (flushed) before it returns.
    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError>;
    /// Makes everything appended so far durable.
    fn flush(&mut self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// The sled store under `{data_dir}/audit`.
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    /// Flush on every append (durable), or leave it to a background flush.
    flush_each: bool,
}

/// Which records a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub client: Option<String>,
    pub server: Option<String>,
    /// A tool, prompt or resource: the unprefixed name, the namespaced one
    /// (`server__tool`) or the URI.
    pub target: Option<String>,
    pub decision: Option<String>,
    /// Timestamps in the records' own format (`YYYY-MM-DDThh:mm:ss.mmmZ`).
    pub since: Option<String>,
    pub until: Option<String>,
    /// The newest this many (all when `None`).
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, record: &AuditRecord, separator: &str) -> bool {
        let target_matches = |wanted: &str| {
            record.target.as_deref() == Some(wanted)
                || match (&record.server, &record.target) {
                    (Some(server), Some(target)) => {
                        wanted
                            .strip_prefix(server.as_str())
                            .and_then(|rest| rest.strip_prefix(separator))
                            == Some(target.as_str())
                    }
                    _ => false,
                }
        };
        self.client.as_ref().is_none_or(|c| *c == record.client)
            && self
                .server
                .as_ref()
                .is_none_or(|s| Some(s) == record.server.as_ref())
            && self.target.as_deref().is_none_or(target_matches)
            && self.decision.as_ref().is_none_or(|d| *d == record.decision)
            && self.since.as_ref().is_none_or(|t| record.time >= *t)
            && self.until.as_ref().is_none_or(|t| record.time < *t)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every record is intact and in order.
    Intact { records: u64, last_hash: String },
    /// The first record that breaks the chain, and how.
    Broken { seq: u64, problem: String },
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`, durable: every append is
    /// flushed before it returns.
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
        Ok(Self {
            path: dir.to_owned(),
            db,
            records,
            flush_each: flush_every.is_none(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// The records a filter wants, oldest first.
    pub fn query(&self, filter: &Filter, separator: &str) -> Result<Vec<AuditRecord>, AuditError> {
        let mut found = Vec::new();
        for entry in self.records.iter().rev() {
            let (_, record) = decode(entry)?;
            if filter.matches(&record, separator) {
                found.push(record);
                if filter.limit.is_some_and(|limit| found.len() >= limit) {
                    break;
                }
            }
        }
        found.reverse();
        Ok(found)
    }

    /// Walks the chain: each key equals its record's `seq`, sequence numbers
    /// follow each other, each `prev_hash` is the previous record's `hash`,
    /// and each `hash` is the record's own.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        let mut expected_prev = GENESIS.to_owned();
        let mut expected_seq = None;
        let mut count = 0;
        for entry in self.records.iter() {
            let (key, value) = entry.map_err(|e| AuditError::Read(e.to_string()))?;
            let seq = key_seq(&key);
            let broken = |problem: String| Ok(Verification::Broken { seq, problem });
            let record: AuditRecord = match serde_json::from_slice(&value) {
                Ok(record) => record,
                Err(err) => return broken(format!("the record does not parse: {err}")),
            };
            if record.seq != seq {
                return broken(format!(
                    "the record stored under {seq} says it is {} (moved or reordered)",
                    record.seq
                ));
            }
            if let Some(expected) = expected_seq
                && seq != expected
            {
                return Ok(Verification::Broken {
                    seq: expected,
                    problem: format!("missing: the next record is {seq} (removed)"),
                });
            }
            if record.prev_hash != expected_prev {
                return broken(
                    "its prev_hash is not the previous record's hash (a record before it was removed, changed or reordered)"
                        .into(),
                );
            }
            if record.compute_hash() != record.hash {
                return broken("its hash does not match its content (changed)".into());
            }
            expected_prev = record.hash;
            expected_seq = Some(seq + 1);
            count += 1;
        }
        Ok(Verification::Intact {
            records: count,
            last_hash: expected_prev,
        })
    }
}

fn key_seq(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

fn decode(
    entry: Result<(sled::IVec, sled::IVec), sled::Error>,
) -> Result<(u64, AuditRecord), AuditError> {
    let (key, value) = entry.map_err(|e| AuditError::Read(e.to_string()))?;
    let seq = key_seq(&key);
    let record = serde_json::from_slice(&value)
        .map_err(|e| AuditError::Read(format!("record {seq} does not parse: {e}")))?;
    Ok((seq, record))
}

impl Storage for SledStorage {
    fn last(&self) -> Result<Option<(u64, String)>, AuditError> {
        match self
            .records
            .last()
            .map_err(|e| AuditError::Read(e.to_string()))?
        {
            None => Ok(None),
            Some(entry) => {
                let (seq, record) = decode(Ok(entry))?;
                Ok(Some((seq, record.hash)))
            }
        }
    }

    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let mut batch = sled::Batch::default();
        for record in records {
            let value = serde_json::to_vec(record).map_err(|e| AuditError::Write(e.to_string()))?;
            batch.insert(&record.seq.to_be_bytes(), value);
        }
        self.records
            .apply_batch(batch)
            .map_err(|e| AuditError::Write(e.to_string()))?;
        if self.flush_each {
            self.db
                .flush()
                .map_err(|e| AuditError::Write(e.to_string()))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AuditError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| AuditError::Write(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn verify_names_the_first_changed_removed_or_reordered_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        store.append(&sealed(5)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.verify(),
            Ok(Verification::Intact { records: 5, .. })
        ));
        assert_eq!(store.last().ok().flatten().map(|(s, _)| s), Some(5));

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
