//! `pinning`: defence against rug pulls and tool poisoning.
//!
//! - Each tool's canonical definition (its own name, title, description,
//!   input and output schema, annotations) is hashed with SHA-256. The first
//!   definition seen is pinned in the pin file (`first_use = "pin"`), or only
//!   the pin file's tools are served (`first_use = "deny"`).
//! - A tool whose definition is not its pin is withheld from lists and its
//!   calls refused (`on_change = "deny"`), or served with a warning
//!   (`"warn"`), until `portcullis tools approve` pins what was seen.
//! - Every string of tool and prompt definitions is scanned with the
//!   poisoning rules ([`poison`]): findings are flagged in lists
//!   (`_meta["dev.portcullis/poisoning"]`), the log and the audit log, and
//!   withheld under `poisoning = "deny"` unless a person approved that very
//!   definition.
//!
//! Judgements are cached per listed definition (like `schema`): a call costs
//! a map lookup. The pin file is re-read when it changes on disk (an
//! approval made while the proxy runs), and each change is announced as an
//! event (for the audit log and `tools/list_changed`).
//!
//! Here the types and the interceptor; `judge` measures a definition
//! against its pin and the rules (and caches the judgement), `enforce`
//! applies judgements to calls and lists, `persist` writes what a pass
//! decided and reloads the pin file, [`store`] holds the files' formats.

mod batch;
mod enforce;
mod judge;
mod persist;
pub mod poison;
pub mod review;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::chain::{DefinitionRef, Exchange, Interceptor, Verdict};
use crate::config::{FirstUse, OnChange, PinningConfig, Poisoning};
use crate::protocol::{List, Method};
use poison::Rules;
pub use review::{ReviewState, ToolReview};
pub use store::{Files, Finding, Pin, PinError, PinFile, Seen, SeenFile};

/// Tools the pin file, and the file of tools awaiting review, hold at most.
/// Names are never taken out by themselves, so a server that renames its
/// tools at every `list_changed` could grow them for good; past this, a new
/// name is withheld (as if unpinned) and not written down.
const MOST_PINS: usize = 10_000;

/// Where flags go in a listed item.
const META_PREFIX: &str = "dev.portcullis/";
pub const META_POISONING: &str = "dev.portcullis/poisoning";
pub const META_PIN: &str = "dev.portcullis/pin";
/// Cached judgements past this many are dropped and made again as used.
const MOST_CACHED: usize = 10_000;

/// (Each message is whole: no error here has a `source`, so a chain
/// printed with `{:#}` says each thing once.)
#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    #[error("the pin file: {0}")]
    Pins(PinError),
    #[error("the poisoning rules: {0}")]
    Rules(poison::PoisonError),
}

impl From<PinError> for PinningError {
    fn from(err: PinError) -> Self {
        Self::Pins(err)
    }
}

impl From<poison::PoisonError> for PinningError {
    fn from(err: poison::PoisonError) -> Self {
        Self::Rules(err)
    }
}

/// A tool's definition measured against its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// The pinned definition, pinned on first use.
    Pinned,
    /// The pinned definition, approved by a person.
    Approved,
    /// Not the pinned definition.
    Changed,
    /// Not in the pin file (`first_use = "deny"`).
    Unpinned,
}

impl PinState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Approved => "approved",
            Self::Changed => "changed",
            Self::Unpinned => "unpinned",
        }
    }
}

/// What pinning and the poisoning rules make of one definition.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub sha256: String,
    /// For prompts (never pinned): `None`.
    pub state: Option<PinState>,
    pub findings: Vec<Finding>,
    /// Why it is withheld, if it is (safe to show a client).
    pub withheld: Option<String>,
}

/// Something the audit log and the sessions hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum PinEvent {
    /// A tool pinned on first use.
    Added { tool: String, sha256: String },
    /// A tool seen with a definition that is not its pin.
    Changed {
        tool: String,
        pinned: String,
        seen: String,
        withheld: bool,
    },
    /// A tool the pin file does not name (`first_use = "deny"`).
    Unpinned { tool: String, sha256: String },
    /// A tool or prompt flagged by the poisoning rules.
    Flagged {
        kind: &'static str,
        name: String,
        sha256: String,
        rules: Vec<String>,
        withheld: bool,
    },
    /// The pin file changed on disk and was loaded.
    Reloaded {
        changed: Vec<String>,
        removed: Vec<String>,
    },
    /// The pin file changed on disk and does not load: the pins in force stay.
    Rejected { message: String },
}

struct Snapshot {
    pins: Arc<PinFile>,
    seen: Arc<SeenFile>,
    /// Bumped whenever `pins` changes other than by this proxy's own
    /// first-use pins: cached judgements of an older generation are redone.
    generation: u64,
    stamp: Option<(u64, SystemTime)>,
}

struct Cached {
    /// The definition judged, not kept alive by the cache.
    definition: DefinitionRef,
    generation: u64,
    judgement: Arc<Judgement>,
}

pub struct Pinning {
    first_use: FirstUse,
    on_change: OnChange,
    poisoning: Poisoning,
    separator: String,
    files: Files,
    rules: Option<Rules>,
    snapshot: RwLock<Snapshot>,
    /// Namespaced tool name → judgement; prompts under `prompt:NAME`.
    judged: RwLock<HashMap<String, Cached>>,
    /// (name, sha256, what) already logged and announced by this process.
    reported: Mutex<HashSet<(String, String, &'static str)>>,
    /// The last rejected pin file's error (reported once).
    rejected: Mutex<Option<String>>,
    /// Events in the batches they happened in: a first listing of ten
    /// thousand tools is one message, never more than the channel holds.
    events: broadcast::Sender<Arc<[PinEvent]>>,
    /// [`MOST_PINS`] (smaller in tests).
    most_pins: usize,
}

impl Pinning {
    /// Loads the pin file and the rules: a pin file that does not parse
    /// stops the proxy.
    pub fn new(config: &PinningConfig, separator: &str) -> Result<Self, PinningError> {
        let files = Files::new(&config.file, &config.data_dir);
        let pins = files.load_pins()?;
        let seen = files.load_seen()?;
        let rules = match config.poisoning {
            Poisoning::Off => None,
            Poisoning::Flag | Poisoning::Deny => Some(Rules::load(config.extra_rules.as_deref())?),
        };
        Ok(Self {
            most_pins: MOST_PINS,
            first_use: config.first_use,
            on_change: config.on_change,
            poisoning: config.poisoning,
            separator: separator.to_owned(),
            snapshot: RwLock::new(Snapshot {
                pins: Arc::new(pins),
                seen: Arc::new(seen),
                generation: 0,
                stamp: files.stamp(),
            }),
            files,
            rules,
            judged: RwLock::default(),
            reported: Mutex::default(),
            rejected: Mutex::default(),
            events: broadcast::channel(256).0,
        })
    }

    /// Pin events, as they happen, a batch at a time.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[PinEvent]>> {
        self.events.subscribe()
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Every pin and every definition awaiting approval, as in force now,
    /// flagged by the rules this proxy scans with.
    pub fn review(&self) -> Vec<ToolReview> {
        let (pins, seen, _) = self.current();
        review::tools(&pins, &seen, self.rules.as_ref())
    }

    /// Why the pin file on disk does not load, if it changed and does not:
    /// the pins in force are the last that loaded.
    pub fn rejected(&self) -> Option<String> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current(&self) -> (Arc<PinFile>, Arc<SeenFile>, u64) {
        let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        (
            snapshot.pins.clone(),
            snapshot.seen.clone(),
            snapshot.generation,
        )
    }
}

/// The distinct rule ids of findings, in order.
pub fn rule_ids(findings: &[Finding]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for finding in findings {
        if !ids.contains(&finding.rule) {
            ids.push(finding.rule.clone());
        }
    }
    ids
}

/// The first 12 hex digits of a hash.
pub fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

impl Interceptor for Pinning {
    fn name(&self) -> &str {
        "pinning"
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        match &exchange.context.method {
            // A task's poll and answers too (2026-07-28): its result and
            // questions come from the tool as it is now.
            Method::ToolsCall | Method::TasksGet | Method::TasksUpdate => {
                self.check(exchange, false)
            }
            Method::PromptsGet if self.rules.is_some() => self.check(exchange, true),
            _ => Verdict::Continue,
        }
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        match &exchange.context.method {
            Method::ToolsList => self.filter(exchange, false),
            Method::PromptsList if self.rules.is_some() => self.filter(exchange, true),
            Method::ResourcesList if self.rules.is_some() => {
                self.scan_list(exchange, List::Resources.result_key())
            }
            Method::ResourceTemplatesList if self.rules.is_some() => {
                self.scan_list(exchange, List::ResourceTemplates.result_key())
            }
            Method::Initialize if self.rules.is_some() => self.scan_instructions(exchange),
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests;
