//! Shipping one store's chain: a batch per transaction, from the record
//! after the last one the database holds.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{Database, FleetError, database, ensure_schema};
use crate::audit::reader::{Reader, decode};
use crate::audit::record::AuditRecord;
use crate::audit::{index::key_seq, read_error};

/// One chain's place in the database.
struct Chain<'a> {
    replica: &'a str,
    store: &'a str,
}

/// The columns of a batch, one array each (inserted with `UNNEST`).
#[derive(Default)]
struct Batch {
    seq: Vec<i64>,
    time: Vec<String>,
    kind: Vec<String>,
    client: Vec<String>,
    server: Vec<Option<String>>,
    decision: Vec<String>,
    record: Vec<String>,
    last_hash: String,
}

impl Batch {
    fn push(&mut self, record: AuditRecord, text: String) {
        self.seq.push(record.seq as i64);
        self.time.push(record.time);
        self.kind.push(record.kind);
        self.client.push(record.client);
        self.server.push(record.server);
        self.decision.push(record.decision);
        self.record.push(text);
        self.last_hash = record.hash;
    }
}

impl Chain<'_> {
    fn diverged(&self, problem: String) -> FleetError {
        FleetError::Diverged {
            replica: self.replica.to_owned(),
            store: self.store.to_owned(),
            problem,
        }
    }

    /// Reads up to `limit` records after `shipped` (whose hash the
    /// database holds as `last_hash`), checking they follow it.
    fn read_after(
        &self,
        reader: &Reader,
        (shipped, last_hash): (u64, &str),
        limit: u32,
    ) -> Result<Batch, FleetError> {
        let last = reader.last_seq()?;
        if last < shipped {
            return Err(self.diverged(format!(
                "its store ends at record {last}, but records up to {shipped} were shipped: is this another store under the same replica's name?"
            )));
        }
        if shipped > 0
            && let Some(record) = reader.get(shipped)?
            && record.hash != last_hash
        {
            return Err(self.diverged(format!(
                "its record {shipped} is not the one shipped (another hash): the store was rewritten, or another store has this replica's name"
            )));
        }
        let mut batch = Batch {
            last_hash: last_hash.to_owned(),
            ..Batch::default()
        };
        let from = shipped + 1;
        for entry in reader.records.range(from.to_be_bytes()..) {
            if batch.seq.len() >= limit as usize {
                break;
            }
            let (key, value) = entry.map_err(read_error)?;
            let expected = shipped + 1 + batch.seq.len() as u64;
            let seq = key_seq(&key);
            if seq != expected {
                return Err(self.diverged(format!(
                    "records {expected} to {} are not in its store (removed by retention before they were shipped?): shipping stops here",
                    seq - 1
                )));
            }
            let (_, record) = decode(&key, &value)?;
            // What goes out is what the store's own walk would accept.
            if record.seq != seq || record.compute_hash() != record.hash {
                return Err(self.diverged(format!(
                    "its record {seq} is not intact in its store (`audit verify` names what is wrong): shipping stops here"
                )));
            }
            if record.prev_hash != batch.last_hash {
                return Err(self.diverged(format!(
                    "its record {seq} does not follow the last record shipped (its prev_hash is another)"
                )));
            }
            let text = String::from_utf8(value.to_vec())
                .map_err(|_| self.diverged(format!("its record {seq} is not UTF-8")))?;
            batch.push(record, text);
        }
        Ok(batch)
    }

    /// Ships the next batch (at most `limit` records) in one transaction:
    /// how many it shipped, and the last record the database holds.
    async fn ship_batch(
        &self,
        client: &mut Client,
        reader: &Reader,
        limit: u32,
    ) -> Result<(u64, u64), FleetError> {
        // Where the store's chain starts: retention's anchor (records
        // below it may still be being removed), or its first record.
        let (first, first_prev) = match reader.anchor()? {
            Some(anchor) => (anchor.first_seq, anchor.prev_hash),
            None => match reader.get(reader.first_seq()?)? {
                Some(start) => (start.seq, start.prev_hash),
                None => return Ok((0, 0)),
            },
        };
        let transaction = client.transaction().await.map_err(database)?;
        // A chain shipped for the first time starts where its store does
        // (a store retention pruned starts at its anchor).
        transaction
            .execute(
                "INSERT INTO portcullis_chains (replica, store, first_seq, first_prev_hash, shipped_seq, last_hash) \
                 VALUES ($1, $2, $3::bigint, $4::text, $3::bigint - 1, $4::text) ON CONFLICT DO NOTHING",
                &[&self.replica, &self.store, &(first as i64), &first_prev],
            )
            .await
            .map_err(database)?;
        let row = transaction
            .query_one(
                "SELECT shipped_seq, last_hash FROM portcullis_chains \
                 WHERE replica = $1 AND store = $2 FOR UPDATE",
                &[&self.replica, &self.store],
            )
            .await
            .map_err(database)?;
        let shipped: i64 = row.try_get(0).map_err(database)?;
        let last_hash: String = row.try_get(1).map_err(database)?;
        let shipped = shipped.max(0) as u64;
        let batch = self.read_after(reader, (shipped, &last_hash), limit)?;
        let Some(&last) = batch.seq.last() else {
            return Ok((0, shipped));
        };
        transaction
            .execute(
                "INSERT INTO portcullis_records (replica, store, seq, time, kind, client, server, decision, record) \
                 SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])",
                &[
                    &self.replica,
                    &self.store,
                    &batch.seq,
                    &batch.time,
                    &batch.kind,
                    &batch.client,
                    &batch.server,
                    &batch.decision,
                    &batch.record,
                ],
            )
            .await
            .map_err(database)?;
        transaction
            .execute(
                "UPDATE portcullis_chains SET shipped_seq = $3, last_hash = $4, shipped_at = now() \
                 WHERE replica = $1 AND store = $2",
                &[&self.replica, &self.store, &last, &batch.last_hash],
            )
            .await
            .map_err(database)?;
        transaction.commit().await.map_err(database)?;
        Ok((batch.seq.len() as u64, last as u64))
    }
}

/// What a round of shipping did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// Records shipped now.
    pub records: u64,
    /// The last record the database holds of this chain.
    pub last: u64,
}

/// Ships every record of `reader`'s store the database does not hold yet,
/// as chain (`replica`, `store`).
pub async fn ship_once(
    client: &mut Client,
    reader: &Reader,
    (replica, store): (&str, &str),
    batch: u32,
) -> Result<Shipped, FleetError> {
    let chain = Chain { replica, store };
    let mut records = 0;
    loop {
        let (count, last) = chain.ship_batch(client, reader, batch).await?;
        records += count;
        if count < u64::from(batch) {
            return Ok(Shipped { records, last });
        }
    }
}

/// Ships a running proxy's store as its records are written: after each
/// write it sees (and every few seconds), until the proxy stops; a failure
/// is logged (once until it clears) and tried again later.
pub struct Shipper {
    pub database: Database,
    pub reader: Reader,
    pub replica: String,
    pub store: String,
    pub batch: u32,
    /// The last record written (the audit handle's `written`).
    pub written: tokio::sync::watch::Receiver<u64>,
    /// The last record shipped, for metrics.
    pub shipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether shipping fails now, for metrics.
    pub failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a failed shipper waits before it tries again (doubling up to
/// [`RETRY_MAX`]).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long one round of shipping may take before it is given up (and
/// tried again on a new connection).
const ROUND_LIMIT: Duration = Duration::from_secs(120);

impl Shipper {
    /// Runs until `stop`, then ships what is left (within `last_call`).
    pub async fn run(mut self, stop: CancellationToken, last_call: Duration) {
        use std::sync::atomic::Ordering;
        let mut client: Option<Client> = None;
        let mut wait = RETRY_FIRST;
        loop {
            let round = tokio::select! {
                result = tokio::time::timeout(ROUND_LIMIT, self.round(&mut client)) => {
                    result.unwrap_or_else(|_| Err(FleetError::Connect(
                        "the database did not answer in time".into(),
                    )))
                }
                () = stop.cancelled() => break,
            };
            match round {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(replica = %self.replica, "audit shipping: the fleet's database takes records again");
                    }
                    wait = RETRY_FIRST;
                    // Once the log's writer is gone, nothing more is
                    // written: only the stop is waited for.
                    let written = async {
                        if self.written.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        () = written => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = stop.cancelled() => break,
                    }
                }
                Err(err) => {
                    client = None;
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(replica = %self.replica, error = %err, "AUDIT SHIPPING FAILING: records wait in this replica's store until the fleet's database takes them");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => break,
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
        // The proxy stops: what it wrote last (its `proxy_stop`) goes too,
        // if the database answers in time.
        let _ = tokio::time::timeout(last_call, self.round(&mut client)).await;
    }

    /// Connects if needed, then ships everything readable.
    async fn round(&self, client: &mut Option<Client>) -> Result<(), FleetError> {
        if client.as_ref().is_none_or(Client::is_closed) {
            let mut fresh = self.database.connect().await?;
            ensure_schema(&mut fresh).await?;
            *client = Some(fresh);
        }
        let Some(connected) = client.as_mut() else {
            return Ok(());
        };
        let shipped = ship_once(
            connected,
            &self.reader,
            (&self.replica, &self.store),
            self.batch,
        )
        .await?;
        self.shipped
            .store(shipped.last, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
