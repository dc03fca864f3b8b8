//! An in-process gateway for fast tests: no binary, no sockets, no
//! processes. It records what the chain saw end (`on_outcome`), keeps the
//! audit log in memory (and can make it fail), and opens sessions whose
//! outlet collects what the client would receive.
//!
//! ```ignore
//! let harness = Harness::new("[[clients]]\nname = \"alice\"\n");
//! let (session, mut received) = harness.session("alice");
//! let reply = harness.gateway.handle(&session, json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
//! assert_eq!(harness.records().await[0].method, "ping");
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::audit::{Audit, AuditError, AuditRecord, ChainEnd, Storage};
use crate::chain::{
    Chain, ClientIdentity, Exchange, Interceptor, Outcome, Phase, Transport, Verdict,
};
use crate::config::Config;

use super::{Gateway, Outlet, Session};

type Shared<T> = Arc<Mutex<Vec<T>>>;

fn take<T: Clone>(shared: &Shared<T>) -> Vec<T> {
    shared.lock().map(|v| v.clone()).unwrap_or_default()
}

/// An audit storage in memory that fails while `broken` is set.
struct Memory {
    broken: Arc<AtomicBool>,
    written: Shared<AuditRecord>,
}

impl Storage for Memory {
    fn last(&self) -> Result<Option<ChainEnd>, AuditError> {
        Ok(None)
    }

    fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(AuditError::Write("disk full".into()));
        }
        if let Ok(mut written) = self.written.lock() {
            written.extend_from_slice(records);
        }
        Ok(())
    }
}

/// An interceptor that lets everything through and notes every end it is
/// told of: (method, phase at the end, outcome).
struct Ends(Shared<(String, Phase, Outcome)>);

impl Interceptor for Ends {
    fn name(&self) -> &str {
        "ends"
    }

    fn on_request(&self, _: &mut Exchange) -> Verdict {
        Verdict::Continue
    }

    fn on_outcome(&self, exchange: &Exchange, outcome: &Outcome) {
        if let Ok(mut ends) = self.0.lock() {
            ends.push((
                exchange.context.method.to_string(),
                exchange.phase,
                outcome.clone(),
            ));
        }
    }
}

/// Collects what a session's client would receive.
struct Inbox(mpsc::UnboundedSender<Value>);

impl Outlet for Inbox {
    fn deliver(&self, message: Value, _related: Option<&Value>) -> bool {
        self.0.send(message).is_ok()
    }
}

pub(super) struct Harness {
    pub(super) gateway: Arc<Gateway>,
    /// While set, the audit log cannot be written.
    pub(super) audit_broken: Arc<AtomicBool>,
    written: Shared<AuditRecord>,
    ends: Shared<(String, Phase, Outcome)>,
}

impl Harness {
    /// A gateway on `config` (TOML text) whose chain is the recording
    /// interceptor alone.
    pub(super) fn new(config: &str) -> Self {
        let config = match Config::parse(config, std::path::Path::new("portcullis.toml")) {
            Ok(config) => Arc::new(config),
            Err(err) => panic!("the test config loads: {err}"),
        };
        let ends = Shared::default();
        let chain = Chain::new(vec![Arc::new(Ends(ends.clone()))]);
        let audit_broken = Arc::new(AtomicBool::new(false));
        let written = Shared::default();
        let storage = Memory {
            broken: audit_broken.clone(),
            written: written.clone(),
        };
        let audit = match Audit::start(storage, true) {
            Ok(audit) => audit,
            Err(err) => panic!("the audit writer starts: {err}"),
        };
        let (gateway, _events) = Gateway::new(config, chain, Some(audit));
        Self {
            gateway,
            audit_broken,
            written,
            ends,
        }
    }

    /// Opens a session of `client` over HTTP; its receiver gets what the
    /// client would.
    pub(super) fn session(&self, client: &str) -> (Arc<Session>, mpsc::UnboundedReceiver<Value>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let session = self.gateway.open_session(
            format!("session-of-{client}").into(),
            ClientIdentity::new(client, &[]),
            Transport::Http,
            Arc::new(Inbox(sender)),
        );
        (session, receiver)
    }

    /// Every record committed so far (after the background ones landed).
    pub(super) async fn records(&self) -> Vec<AuditRecord> {
        self.gateway.event_records.close();
        self.gateway.event_records.wait().await;
        self.gateway.event_records.reopen();
        if let Some(audit) = &self.gateway.audit {
            let _ = audit.flush().await;
        }
        take(&self.written)
    }

    /// The records of exchanges (events left out).
    pub(super) async fn exchanges(&self) -> Vec<AuditRecord> {
        let mut records = self.records().await;
        records.retain(|record| record.kind == "exchange");
        records
    }

    /// Every end the chain was told of: (method, phase, outcome).
    pub(super) fn ends(&self) -> Vec<(String, Phase, Outcome)> {
        take(&self.ends)
    }
}
