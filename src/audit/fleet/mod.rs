//! The fleet's log in PostgreSQL: each replica keeps its own hash-chained
//! store (the reply still waits for its record there) and ships it, in
//! order and exactly once, to one database that auditors query for the
//! whole fleet (`audit query --store postgres://…`) and whose chains they
//! verify (`audit verify --store postgres://…`).
//!
//! Two tables. `portcullis_chains` holds one row per shipped chain
//! (replica, store): where the shipped chain starts, and the last record
//! shipped with its hash. `portcullis_records` holds the records, keyed by
//! (replica, store, seq), each as the exact JSON text its store holds
//! (`record::jsonb` in SQL reads into it) beside the columns queries
//! filter on. A batch is shipped in one transaction that locks the
//! chain's row, checks that the store's records follow the last one
//! shipped (same sequence, same hash), inserts them and moves the row: a
//! batch is in the database whole or not at all, and a shipper that
//! restarts (or a second one) starts where the database says. Nothing is
//! kept on the replica's side.

mod read;
mod ship;

use std::path::PathBuf;
use std::sync::Arc;

pub use read::{ChainVerification, FleetRecord, query, verify};
pub use ship::{Shipped, Shipper, ship_once};

use super::AuditError;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the database: {0}")]
    Connect(String),
    #[error("the database refused: {0}")]
    Database(String),
    #[error("replica `{replica}`, store `{store}`: {problem}")]
    Diverged {
        replica: String,
        store: String,
        problem: String,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn database(err: tokio_postgres::Error) -> FleetError {
    // The server's own message (`db error: ERROR: …`), with its detail.
    let message = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    };
    FleetError::Database(message)
}

/// Where the fleet's log is, and how to reach it.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    ca: Option<PathBuf>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The driver's config holds the password: never printed.
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The database at `url` (checked as `[audit.ship] to` is: no password
    /// in it, TLS unless it is on this machine), with `password`.
    pub fn new(
        url: &str,
        password: Option<String>,
        ca: Option<PathBuf>,
    ) -> Result<Self, FleetError> {
        let mut config = crate::config::check_database_url(url).map_err(FleetError::Config)?;
        if let Some(password) = password {
            config.password(password);
        }
        config.application_name("portcullis");
        config.connect_timeout(std::time::Duration::from_secs(10));
        // A database that stops answering is noticed, not waited on.
        config.keepalives(true);
        config.keepalives_idle(std::time::Duration::from_secs(30));
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
        // No statement waits long on a lock (an auditor's open transaction)
        // or runs away: shipping tries again later.
        config.options("-c lock_timeout=10000 -c statement_timeout=60000");
        Ok(Self { config, ca })
    }

    /// The database of `[audit.ship]`, its password read now.
    pub fn of(ship: &crate::config::ShipConfig) -> Result<Self, FleetError> {
        let password = ship
            .password
            .as_ref()
            .map(|reference| reference.resolve())
            .transpose()
            .map_err(|err| FleetError::Config(format!("`audit.ship.password`: {err}")))?;
        Self::new(&ship.to, password, ship.ca.clone())
    }

    /// A connection, over TLS (its certificate verified against `ca` or
    /// the system's roots) when the URL asks for it; its driver runs on
    /// the runtime until the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, FleetError> {
        use tokio_postgres::config::SslMode;
        let connect_error = |err: tokio_postgres::Error| FleetError::Connect(err.to_string());
        if self.config.get_ssl_mode() != SslMode::Require {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(connect_error)?;
            tokio::spawn(drive(connection));
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls()?);
        let (client, connection) = self.config.connect(tls).await.map_err(connect_error)?;
        tokio::spawn(drive(connection));
        Ok(client)
    }

    fn tls(&self) -> Result<rustls::ClientConfig, FleetError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let certificates = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|err| {
                        FleetError::Config(format!("`{}`: no PEM roots: {err}", path.display()))
                    })?;
                for certificate in certificates {
                    roots.add(certificate).map_err(|err| {
                        FleetError::Config(format!("`{}`: {err}", path.display()))
                    })?;
                }
            }
            None => {
                for certificate in rustls_native_certs::load_native_certs().certs {
                    // A root the system has but rustls cannot read is left.
                    let _ = roots.add(certificate);
                }
            }
        }
        if roots.is_empty() {
            return Err(FleetError::Config(
                "no root certificate to verify the database's TLS certificate against".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| FleetError::Config(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "the connection to the fleet's database ended");
    }
}

/// The tables, made if missing (under a lock: replicas starting together
/// do not race to make them).
pub async fn ensure_schema(client: &mut tokio_postgres::Client) -> Result<(), FleetError> {
    // Made already: nothing is locked (a `CREATE INDEX IF NOT EXISTS`
    // would hold every replica's inserts for a moment).
    let made = client
        .query_one(
            "SELECT to_regclass('portcullis_chains') IS NOT NULL \
             AND to_regclass('portcullis_records') IS NOT NULL \
             AND to_regclass('portcullis_records_time') IS NOT NULL \
             AND to_regclass('portcullis_records_by_record_time') IS NOT NULL",
            &[],
        )
        .await
        .map_err(database)?;
    if made.try_get::<_, bool>(0).map_err(database)? {
        return Ok(());
    }
    let transaction = client.transaction().await.map_err(database)?;
    transaction.batch_execute(SCHEMA).await.map_err(database)?;
    transaction.commit().await.map_err(database)
}

const SCHEMA: &str = "
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(7306517305129412400);
CREATE TABLE IF NOT EXISTS portcullis_chains (
    replica text NOT NULL,
    store text NOT NULL,
    first_seq bigint NOT NULL,
    first_prev_hash text NOT NULL,
    shipped_seq bigint NOT NULL,
    last_hash text NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, store)
);
CREATE TABLE IF NOT EXISTS portcullis_records (
    replica text COLLATE \"C\" NOT NULL,
    store text COLLATE \"C\" NOT NULL,
    seq bigint NOT NULL,
    time text COLLATE \"C\" NOT NULL,
    kind text NOT NULL,
    client text NOT NULL,
    server text,
    decision text NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (replica, store, seq),
    FOREIGN KEY (replica, store) REFERENCES portcullis_chains (replica, store)
);
CREATE INDEX IF NOT EXISTS portcullis_records_time
    ON portcullis_records (time, replica, store, seq);
-- What queries filter and order by is read from the hashed record itself,
-- never from the side columns above (which anyone who may UPDATE a row can
-- change without touching the chain): these indexes are of the record.
CREATE INDEX IF NOT EXISTS portcullis_records_by_record_time
    ON portcullis_records (((record::json ->> 'time') COLLATE \"C\"), replica, store, seq);
CREATE INDEX IF NOT EXISTS portcullis_records_by_record_client
    ON portcullis_records ((record::json ->> 'client'));
CREATE INDEX IF NOT EXISTS portcullis_records_by_record_server
    ON portcullis_records ((record::json ->> 'server'));
";
