//! Reading the fleet's log: queries across every replica's chain, and the
//! walk that verifies each chain as the database holds it.

use tokio_postgres::Client;

use super::{FleetError, database};
use crate::audit::query::Filter;
use crate::audit::reader::Anchor;
use crate::audit::record::{AuditRecord, GENESIS};
use crate::audit::verify::{ChainWalk, Keys, Verification};

/// A record of the fleet's log, with the chain it belongs to.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FleetRecord {
    pub replica: String,
    pub store: String,
    pub record: AuditRecord,
}

/// Rows read per round trip.
const PAGE: i64 = 2_000;

/// The records `filter` wants, from every chain, oldest first (by time,
/// then chain and sequence number): the newest `filter.limit`. The
/// database narrows by what each hashed record says (its kind, client,
/// server, decision and time, read from the record's JSON: never from the
/// side columns, which an `UPDATE` can change without breaking the chain),
/// and only among the records its chain's shipping covers; every row is
/// then checked against the whole filter, as a store's query does.
/// `filter.after` (a store's sequence number) means nothing across chains
/// and is not used.
pub async fn query(
    client: &Client,
    filter: &Filter,
    separator: &str,
) -> Result<Vec<FleetRecord>, FleetError> {
    let filter = Filter {
        after: None,
        ..filter.clone()
    };
    let mut found = Vec::new();
    if filter.limit == Some(0) {
        return Ok(found);
    }
    let statement = client
        .prepare(
            "SELECT r.replica, r.store, r.seq, r.record \
             FROM portcullis_records r JOIN portcullis_chains c \
             ON c.replica = r.replica AND c.store = r.store \
             AND r.seq BETWEEN c.first_seq AND c.shipped_seq \
             WHERE ($1::text IS NULL OR r.record::json ->> 'kind' = $1) \
             AND ($2::text IS NULL OR r.record::json ->> 'client' = $2) \
             AND ($3::text IS NULL OR r.record::json ->> 'server' = $3) \
             AND ($4::text IS NULL OR r.record::json ->> 'decision' = $4) \
             AND ($5::text IS NULL OR (r.record::json ->> 'time') COLLATE \"C\" >= $5) \
             AND ($6::text IS NULL OR (r.record::json ->> 'time') COLLATE \"C\" < $6) \
             AND ($7::text IS NULL OR ((r.record::json ->> 'time') COLLATE \"C\", r.replica, r.store, r.seq) \
                 < ($7, $8, $9, $10)) \
             ORDER BY (r.record::json ->> 'time') COLLATE \"C\" DESC, r.replica DESC, r.store DESC, r.seq DESC \
             LIMIT $11",
        )
        .await
        .map_err(database)?;
    // Where the last page ended: (time, replica, store, seq).
    let mut before: (Option<String>, String, String, i64) = (None, String::new(), String::new(), 0);
    'pages: loop {
        let rows = client
            .query(
                &statement,
                &[
                    &filter.kind,
                    &filter.client,
                    &filter.server,
                    &filter.decision,
                    &filter.since,
                    &filter.until,
                    &before.0,
                    &before.1,
                    &before.2,
                    &before.3,
                    &PAGE,
                ],
            )
            .await
            .map_err(database)?;
        let last_page = (rows.len() as i64) < PAGE;
        for row in rows {
            let (replica, store, seq): (String, String, i64) = (
                row.try_get(0).map_err(database)?,
                row.try_get(1).map_err(database)?,
                row.try_get(2).map_err(database)?,
            );
            let text: String = row.try_get(3).map_err(database)?;
            let record: AuditRecord =
                serde_json::from_str(&text).map_err(|err| FleetError::Diverged {
                    replica: replica.clone(),
                    store: store.clone(),
                    problem: format!("its record {seq} in the database does not parse: {err}"),
                })?;
            before = (
                Some(record.time.clone()),
                replica.clone(),
                store.clone(),
                seq,
            );
            if filter.matches(&record, separator) {
                found.push(FleetRecord {
                    replica,
                    store,
                    record,
                });
                if filter.limit.is_some_and(|limit| found.len() >= limit) {
                    break 'pages;
                }
            }
        }
        if last_page {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// One chain's verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainVerification {
    pub replica: String,
    pub store: String,
    pub verification: Verification,
}

/// Walks every chain the database holds, as a store's chain is walked
/// (with the keys there are), and checks that it ends where its shipping
/// says it does.
pub async fn verify(client: &Client, keys: &Keys) -> Result<Vec<ChainVerification>, FleetError> {
    let chains = client
        .query(
            "SELECT replica, store, first_seq, first_prev_hash, shipped_seq, last_hash \
             FROM portcullis_chains ORDER BY replica, store",
            &[],
        )
        .await
        .map_err(database)?;
    let page = client
        .prepare(
            "SELECT seq, record, time, kind, client, server, decision FROM portcullis_records \
             WHERE replica = $1 AND store = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .await
        .map_err(database)?;
    // Rows of a chain that its shipping does not cover: a query must never
    // show one, and verify says they are there.
    let strays = client
        .prepare(
            "SELECT min(seq), count(*) FROM portcullis_records \
             WHERE replica = $1 AND store = $2 AND (seq < $3 OR seq > $4)",
        )
        .await
        .map_err(database)?;
    let mut verified = Vec::new();
    for chain in chains {
        let (replica, store): (String, String) = (
            chain.try_get(0).map_err(database)?,
            chain.try_get(1).map_err(database)?,
        );
        let (first_seq, first_prev): (i64, String) = (
            chain.try_get(2).map_err(database)?,
            chain.try_get(3).map_err(database)?,
        );
        let (shipped, last_hash): (i64, String) = (
            chain.try_get(4).map_err(database)?,
            chain.try_get(5).map_err(database)?,
        );
        let anchor = (first_seq != 1 || first_prev != GENESIS).then(|| Anchor {
            first_seq: first_seq.max(0) as u64,
            prev_hash: first_prev,
        });
        let mut walk = ChainWalk::new(keys, &store, anchor);
        let mut at = first_seq.saturating_sub(1);
        let mut broken = None;
        let stray = client
            .query_one(&strays, &[&replica, &store, &first_seq, &shipped])
            .await
            .map_err(database)?;
        let (stray_seq, stray_count): (Option<i64>, i64) = (
            stray.try_get(0).map_err(database)?,
            stray.try_get(1).map_err(database)?,
        );
        if let Some(seq) = stray_seq.filter(|_| stray_count > 0) {
            broken = Some(Verification::Broken {
                seq: seq.max(0) as u64,
                problem: format!(
                    "{stray_count} rows lie outside the chain its shipping recorded ({first_seq} to {shipped}): added in the database"
                ),
            });
        }
        'walk: while broken.is_none() {
            let rows = client
                .query(&page, &[&replica, &store, &at, &PAGE])
                .await
                .map_err(database)?;
            let last_page = (rows.len() as i64) < PAGE;
            for row in rows {
                let seq: i64 = row.try_get(0).map_err(database)?;
                let text: String = row.try_get(1).map_err(database)?;
                at = seq;
                match walk.step(seq.max(0) as u64, text.as_bytes(), &|_| None) {
                    Ok(record) => {
                        if let Some(found) = columns_problem(&row, 2, &record)? {
                            broken = Some(found);
                            break 'walk;
                        }
                    }
                    Err(found) => {
                        broken = Some(found);
                        break 'walk;
                    }
                }
            }
            if last_page {
                break;
            }
        }
        let verification = broken.unwrap_or_else(|| match walk.finish() {
            Verification::Intact { records, .. } if at != shipped => Verification::Broken {
                seq: at.saturating_add(1).max(0) as u64,
                problem: format!(
                    "the database holds {records} records up to {at}, but its shipping says records up to {shipped} were shipped (records removed or added outside shipping)"
                ),
            },
            Verification::Intact { last_hash: held, .. } if held != last_hash && shipped > 0 => {
                Verification::Broken {
                    seq: shipped.max(0) as u64,
                    problem: "its hash is not the one shipping recorded (changed in the database)"
                        .into(),
                }
            }
            verification => verification,
        });
        verified.push(ChainVerification {
            replica,
            store,
            verification,
        });
    }
    Ok(verified)
}

/// Where a row's side columns (those `query` filters on: `time, kind,
/// client, server, decision`, from column `first` on) are not what its
/// hashed record says, how: a changed column hides the record from a
/// filtered query while the chain itself stays intact.
fn columns_problem(
    row: &tokio_postgres::Row,
    first: usize,
    record: &AuditRecord,
) -> Result<Option<Verification>, FleetError> {
    let text =
        |at: usize| -> Result<String, FleetError> { row.try_get(first + at).map_err(database) };
    let server: Option<String> = row.try_get(first + 3).map_err(database)?;
    let changed = [
        ("time", text(0)? == record.time),
        ("kind", text(1)? == record.kind),
        ("client", text(2)? == record.client),
        ("server", server == record.server),
        ("decision", text(4)? == record.decision),
    ]
    .into_iter()
    .find(|(_, same)| !same);
    Ok(changed.map(|(column, _)| Verification::Broken {
        seq: record.seq,
        problem: format!(
            "its `{column}` column is not what the record says (changed in the database): a query filtered by it would miss or misplace the record"
        ),
    }))
}
