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

mod batch;
pub mod poison;
pub mod review;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::chain::{Annotation, Definition, Denial, Direction, Exchange, Interceptor, Verdict};
use crate::config::{FirstUse, OnChange, PinningConfig, Poisoning};
use crate::protocol::code;
use batch::{Batch, server_of};
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
    definition: Definition,
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
    events: broadcast::Sender<PinEvent>,
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

    /// Pin events, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<PinEvent> {
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

    /// The judgement of a tool or prompt's listed definition, from the
    /// cache when that very definition was judged under the pins in force.
    fn judgement(
        &self,
        key: &str,
        own_name: &str,
        definition: &Definition,
        prompt: bool,
        batch: &mut Batch,
    ) -> Arc<Judgement> {
        let (pins, seen, generation) = self.current();
        if let Ok(judged) = self.judged.read()
            && let Some(cached) = judged.get(key)
            && cached.generation == generation
            && cached.definition.same_as(definition)
        {
            return cached.judgement.clone();
        }
        let Some(value) = definition.get() else {
            return Arc::new(Judgement {
                sha256: String::new(),
                state: None,
                findings: Vec::new(),
                withheld: Some("its definition is not known".into()),
            });
        };
        let judgement = Arc::new(if prompt {
            self.judge_prompt(key, own_name, value, batch)
        } else {
            self.judge_tool(key, own_name, value, &pins, &seen, batch)
        });
        if let Ok(mut judged) = self.judged.write() {
            if judged.len() >= MOST_CACHED {
                judged.clear();
            }
            judged.insert(
                key.to_owned(),
                Cached {
                    definition: definition.clone(),
                    generation,
                    judgement: judgement.clone(),
                },
            );
        }
        judgement
    }

    /// Whether (name, sha256, what) is new to this process (then it is
    /// logged and announced).
    fn first_report(&self, name: &str, sha256: &str, what: &'static str) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.len() >= MOST_CACHED {
            reported.clear();
        }
        reported.insert((name.to_owned(), sha256.to_owned(), what))
    }

    fn judge_tool(
        &self,
        name: &str,
        own_name: &str,
        value: &Value,
        pins: &PinFile,
        seen: &SeenFile,
        batch: &mut Batch,
    ) -> Judgement {
        let canonical = store::canonical(own_name, value);
        let sha256 = store::sha256(&canonical);
        let server = (server_of(name, &self.separator), self.separator.as_str());
        let findings = self.scan(&canonical);
        let pin = pins.tools.get(name);
        let state = match pin {
            Some(pin) if pin.sha256.eq_ignore_ascii_case(&sha256) => {
                if pin.approved() {
                    PinState::Approved
                } else {
                    PinState::Pinned
                }
            }
            Some(_) => PinState::Changed,
            None if self.first_use == FirstUse::Pin
                && batch.counts(server, pins, seen).0 < self.most_pins =>
            {
                batch.counts(server, pins, seen).0 += 1;
                tracing::debug!(tool = name, sha256 = %short(&sha256), "tool pinned on first use");
                batch.pins.push((
                    name.to_owned(),
                    Pin {
                        sha256: sha256.clone(),
                        pinned_at: store::now(),
                        by: store::FIRST_USE.into(),
                        definition: canonical.clone(),
                    },
                ));
                batch.events.push(PinEvent::Added {
                    tool: name.to_owned(),
                    sha256: sha256.clone(),
                });
                PinState::Pinned
            }
            None => {
                if self.first_use == FirstUse::Pin && self.first_report(name, "", "pin file full") {
                    tracing::warn!(
                        tool = name,
                        most = self.most_pins,
                        "the pin file is full: a new tool is not pinned on first use but withheld until a person reviews it"
                    );
                }
                PinState::Unpinned
            }
        };
        let approve = format!("approve it with `portcullis tools approve {name}`");
        let mut withheld = match state {
            PinState::Changed if self.on_change == OnChange::Deny => Some(format!(
                "the tool's definition changed since it was pinned; it is withheld until a person reviews it ({approve})"
            )),
            PinState::Unpinned => Some(format!(
                "the tool is not in the pin file; it is withheld until a person reviews it ({approve})"
            )),
            _ => None,
        };
        let rule_ids = rule_ids(&findings);
        if withheld.is_none()
            && !findings.is_empty()
            && self.poisoning == Poisoning::Deny
            && state != PinState::Approved
        {
            withheld = Some(format!(
                "the tool's definition is flagged by poisoning rules ({}); it is withheld until a person reviews it ({approve})",
                rule_ids.join(", ")
            ));
        }

        // What awaits a person is written down for `tools pins` and
        // `tools approve`; what no longer does is taken out.
        let awaits = withheld.is_some() || matches!(state, PinState::Changed | PinState::Unpinned);
        let noted = seen.tools.get(name);
        // Past its cap, what awaits a person is not written down for names
        // not already there (the tool is withheld all the same): a server
        // that renames its tools on and on cannot grow the file for good.
        if awaits {
            let room = noted.is_some() || batch.counts(server, pins, seen).1 < self.most_pins;
            if room && noted.is_none_or(|noted| noted.sha256 != sha256) {
                if noted.is_none() {
                    batch.counts(server, pins, seen).1 += 1;
                }
                batch.seen.push((
                    name.to_owned(),
                    Some(Seen {
                        sha256: sha256.clone(),
                        seen_at: store::now(),
                        definition: canonical,
                        findings: findings.clone(),
                    }),
                ));
            }
        } else if noted.is_some() {
            batch.seen.push((name.to_owned(), None));
        }

        self.report_state(name, state, pin, &sha256, withheld.is_some(), batch);
        self.report_flagged(
            "tool",
            name,
            name,
            &sha256,
            rule_ids,
            withheld.is_some(),
            batch,
        );
        Judgement {
            sha256,
            state: Some(state),
            findings,
            withheld,
        }
    }

    /// Logs and announces, once per process, a tool whose definition is not
    /// its pin, or that has none.
    fn report_state(
        &self,
        name: &str,
        state: PinState,
        pin: Option<&Pin>,
        sha256: &str,
        withheld: bool,
        batch: &mut Batch,
    ) {
        if state == PinState::Changed && self.first_report(name, sha256, "changed") {
            let pinned = pin.map(|pin| pin.sha256.clone()).unwrap_or_default();
            tracing::warn!(
                tool = name,
                pinned = %short(&pinned),
                seen = %short(sha256),
                withheld,
                "RUG PULL? a tool's definition is not the pinned one (`portcullis tools pins` shows the difference)"
            );
            batch.events.push(PinEvent::Changed {
                tool: name.to_owned(),
                pinned,
                seen: sha256.to_owned(),
                withheld,
            });
        }
        if state == PinState::Unpinned && self.first_report(name, sha256, "unpinned") {
            tracing::warn!(tool = name, sha256 = %short(sha256), "a tool that is not in the pin file is withheld");
            batch.events.push(PinEvent::Unpinned {
                tool: name.to_owned(),
                sha256: sha256.to_owned(),
            });
        }
    }

    /// The poisoning findings in a canonical definition (none when the
    /// scan is off).
    fn scan(&self, canonical: &Value) -> Vec<Finding> {
        self.rules
            .as_ref()
            .map(|rules| rules.scan(canonical))
            .unwrap_or_default()
    }

    /// Logs and announces a flagged definition, once per definition per
    /// process (`key` tells tools and prompts of the same name apart).
    #[allow(clippy::too_many_arguments)]
    fn report_flagged(
        &self,
        kind: &'static str,
        key: &str,
        name: &str,
        sha256: &str,
        rules: Vec<String>,
        withheld: bool,
        batch: &mut Batch,
    ) {
        if rules.is_empty() || !self.first_report(key, sha256, "flagged") {
            return;
        }
        tracing::warn!(
            kind,
            name,
            rules = %rules.join(","),
            withheld,
            "TOOL POISONING? a definition is flagged"
        );
        batch.events.push(PinEvent::Flagged {
            kind,
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            rules,
            withheld,
        });
    }

    fn judge_prompt(
        &self,
        key: &str,
        own_name: &str,
        value: &Value,
        batch: &mut Batch,
    ) -> Judgement {
        let name = key.strip_prefix("prompt:").unwrap_or(key);
        let canonical = store::canonical(own_name, value);
        let sha256 = store::sha256(&canonical);
        let findings = self.scan(&canonical);
        let rule_ids = rule_ids(&findings);
        let withheld = (!findings.is_empty() && self.poisoning == Poisoning::Deny).then(|| {
            format!(
                "the prompt's definition is flagged by poisoning rules ({})",
                rule_ids.join(", ")
            )
        });
        self.report_flagged(
            "prompt",
            key,
            name,
            &sha256,
            rule_ids,
            withheld.is_some(),
            batch,
        );
        Judgement {
            sha256,
            state: None,
            findings,
            withheld,
        }
    }

    /// Writes a pass's new pins and notes (one locked write each), and
    /// announces its events.
    fn commit(&self, batch: Batch) {
        let Batch {
            pins, seen, events, ..
        } = batch;
        if !pins.is_empty() {
            tracing::info!(tools = pins.len(), file = %self.files.pins.display(), "tools pinned on first use");
        }
        let mut events = events;
        if !pins.is_empty() || !seen.is_empty() {
            match self.write(pins, seen) {
                Ok(Some(reloaded)) => events.push(reloaded),
                Ok(None) => {}
                Err(err) => tracing::error!(
                    error = %err,
                    "the pins cannot be written; they hold until the proxy stops"
                ),
            }
        }
        for event in events {
            let _ = self.events.send(event);
        }
    }

    /// Writes pins and notes under the lock. Returns a `Reloaded` event
    /// when the pin file held changes this proxy had not loaded yet
    /// (another writer's, such as an approval).
    fn write(
        &self,
        pins: Vec<(String, Pin)>,
        seen: Vec<(String, Option<Seen>)>,
    ) -> Result<Option<PinEvent>, PinError> {
        // Memory first: what this pass decided holds even if the disk fails.
        let (held_pins, held_seen, _) = self.current();
        let expected = with_first_pins((*held_pins).clone(), &pins);
        // Another pass pinned a different first definition of the same
        // tool: that one holds, and this pass's judgements are redone.
        let lost = |file: &PinFile| {
            pins.iter().any(|(name, pin)| {
                file.tools
                    .get(name)
                    .is_some_and(|kept| kept.sha256 != pin.sha256)
            })
        };
        let mut noted = (*held_seen).clone();
        apply_seen(&mut noted, &seen);
        {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            if lost(&expected) {
                snapshot.generation += 1;
            }
            snapshot.pins = Arc::new(expected.clone());
            snapshot.seen = Arc::new(noted);
        }
        let _lock = self.files.lock()?;
        let mut event = None;
        if !pins.is_empty() {
            let merged = with_first_pins(self.files.load_pins()?, &pins);
            self.files.save_pins(&merged)?;
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            if merged != expected || lost(&merged) {
                // Someone else wrote pins meanwhile: judge again, and say
                // what changed (as a reload would have).
                snapshot.generation += 1;
                let (changed, removed) = differences(&expected, &merged);
                if !changed.is_empty() || !removed.is_empty() {
                    event = Some(PinEvent::Reloaded { changed, removed });
                }
            }
            snapshot.pins = Arc::new(merged);
            snapshot.stamp = self.files.stamp();
        }
        if !seen.is_empty() {
            let mut on_disk = self.files.load_seen()?;
            apply_seen(&mut on_disk, &seen);
            self.files.save_seen(&on_disk)?;
            let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            snapshot.seen = Arc::new(on_disk);
        }
        Ok(event)
    }

    /// Re-reads the pin file if it changed on disk; `None` when nothing
    /// changed. A file that does not load leaves the pins in force.
    pub fn reload(&self) -> Option<PinEvent> {
        // Under the lock: never an older file over a newer write.
        let _lock = self.files.lock().ok();
        let stamp = self.files.stamp();
        {
            let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            if snapshot.stamp == stamp {
                return None;
            }
        }
        let loaded = self
            .files
            .load_pins()
            .and_then(|pins| Ok((pins, self.files.load_seen()?)));
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        snapshot.stamp = stamp;
        let (pins, seen) = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                let message = err.to_string();
                let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
                if rejected.as_deref() == Some(message.as_str()) {
                    return None;
                }
                tracing::error!(error = %message, "the pin file changed and does not load; the pins in force stay");
                *rejected = Some(message.clone());
                return Some(PinEvent::Rejected { message });
            }
        };
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
        snapshot.seen = Arc::new(seen);
        if pins == *snapshot.pins {
            return None;
        }
        let (changed, removed) = differences(&snapshot.pins, &pins);
        snapshot.pins = Arc::new(pins);
        snapshot.generation += 1;
        tracing::info!(
            changed = changed.len(),
            removed = removed.len(),
            "pin file reloaded"
        );
        Some(PinEvent::Reloaded { changed, removed })
    }

    /// Polls the pin file every `every` until shut down; each reload is
    /// announced to [`Pinning::subscribe`]rs.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let pinning = self.clone();
            let Ok(event) = tokio::task::spawn_blocking(move || pinning.reload()).await else {
                continue;
            };
            if let Some(event) = event {
                let _ = self.events.send(event);
            }
        }
    }

    /// The server and own name of a namespaced tool or prompt.
    fn split<'a>(&self, namespaced: &'a str, server: &str) -> Option<&'a str> {
        namespaced
            .strip_prefix(server)
            .and_then(|rest| rest.strip_prefix(self.separator.as_str()))
    }

    fn check(&self, exchange: &mut Exchange, prompt: bool) -> Verdict {
        let context = &exchange.context;
        let (Some(server), Some(own), Some(definition)) =
            (&context.server, &context.target, &context.definition)
        else {
            return Verdict::Continue;
        };
        let namespaced = format!("{server}{}{own}", self.separator);
        let key = if prompt {
            format!("prompt:{namespaced}")
        } else {
            namespaced
        };
        let mut batch = Batch::default();
        let judgement = self.judgement(&key, own, definition, prompt, &mut batch);
        self.commit(batch);
        if let Some(reason) = &judgement.withheld {
            let mut denial = Denial::new(code::DENIED, reason.clone());
            if let Some(state) = judgement.state {
                denial = denial.with("pin", state.as_str());
            }
            if !judgement.findings.is_empty() {
                denial = denial.with("poisoning", rule_ids(&judgement.findings));
            }
            return Verdict::Deny(denial);
        }
        if judgement.state == Some(PinState::Changed) {
            exchange.annotations.push(annotation(
                "pin",
                "changed (served: `on_change = \"warn\"`)".into(),
            ));
        }
        if !judgement.findings.is_empty() {
            exchange.annotations.push(annotation(
                "poisoning",
                rule_ids(&judgement.findings).join(","),
            ));
        }
        Verdict::Continue
    }

    fn filter(&self, exchange: &mut Exchange, prompt: bool) -> Verdict {
        let Some(directory) = exchange.context.directory.clone() else {
            return Verdict::Continue;
        };
        let pointer = if prompt {
            "/result/prompts"
        } else {
            "/result/tools"
        };
        let Some(items) = exchange
            .message
            .pointer_mut(pointer)
            .and_then(Value::as_array_mut)
        else {
            return Verdict::Continue;
        };
        let mut batch = Batch::default();
        items.retain_mut(|item| {
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                return false;
            };
            let found = if prompt {
                directory
                    .prompt_server(name)
                    .zip(directory.prompt_definition(name))
            } else {
                directory
                    .tool_server(name)
                    .zip(directory.tool_definition(name))
            };
            let Some((server, definition)) = found else {
                return false; // listed by no server: not served
            };
            let Some(own) = self.split(name, server) else {
                return false;
            };
            let key = if prompt {
                format!("prompt:{name}")
            } else {
                name.to_owned()
            };
            let judgement = self.judgement(&key, own, &definition, prompt, &mut batch);
            if judgement.withheld.is_some() {
                return false;
            }
            let flag_pin = judgement.state == Some(PinState::Changed);
            let Some(object) = item.as_object_mut() else {
                return false;
            };
            // The proxy's flags are the proxy's: a server's own
            // `dev.portcullis/…` keys are dropped, and a `_meta` that is not
            // an object cannot hide them.
            strip_flags(object);
            if flag_pin || !judgement.findings.is_empty() {
                let meta = object
                    .entry("_meta")
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if let Some(meta) = meta.as_object_mut() {
                    if flag_pin {
                        meta.insert(META_PIN.into(), Value::from("changed"));
                    }
                    if !judgement.findings.is_empty() {
                        meta.insert(META_POISONING.into(), json!(judgement.findings));
                    }
                }
            }
            true
        });
        self.commit(batch);
        Verdict::Continue
    }
}

impl Pinning {
    /// Resources and templates: not pinned, but scanned like tools and
    /// prompts (their descriptions reach the model too): flagged, or
    /// withheld under `poisoning = "deny"`.
    fn scan_list(&self, exchange: &mut Exchange, key: &str) -> Verdict {
        let directory = exchange.context.directory.clone();
        let Some(items) = exchange
            .message
            .pointer_mut(&format!("/result/{key}"))
            .and_then(Value::as_array_mut)
        else {
            return Verdict::Continue;
        };
        let mut batch = Batch::default();
        items.retain_mut(|item| {
            // What the model reads: everything but `_meta`.
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            let canonical = store::canonical(name, item);
            let Some(object) = item.as_object_mut() else {
                return false;
            };
            strip_flags(object);
            let findings = self.scan(&canonical);
            if findings.is_empty() {
                return true;
            }
            let uri = object
                .get("uri")
                .or_else(|| object.get("uriTemplate"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let server = directory.as_ref().and_then(|d| {
                d.resource_server(&uri)
                    .or_else(|| d.template_server(&uri))
                    .map(str::to_owned)
            });
            let name = match server {
                Some(server) => format!("{server}{}{uri}", self.separator),
                None => uri,
            };
            let withhold = self.poisoning == Poisoning::Deny;
            let sha256 = store::sha256(&canonical);
            let kind = if key == "resources" {
                "resource"
            } else {
                "resource template"
            };
            self.report_flagged(
                kind,
                &format!("{kind}:{name}"),
                &name,
                &sha256,
                rule_ids(&findings),
                withhold,
                &mut batch,
            );
            if withhold {
                return false;
            }
            object
                .entry("_meta")
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
                .as_object_mut()
                .map(|meta| meta.insert(META_POISONING.into(), json!(findings)));
            true
        });
        self.commit(batch);
        Verdict::Continue
    }

    /// The `initialize` result's `instructions` (the proxy's own, then one
    /// "## Server `NAME`" section per server): a server's section that the
    /// poisoning rules flag is reported, and left out under `deny`.
    fn scan_instructions(&self, exchange: &mut Exchange) -> Verdict {
        let Some(text) = exchange.message.pointer_mut("/result/instructions") else {
            return Verdict::Continue;
        };
        let Some(instructions) = text.as_str() else {
            return Verdict::Continue;
        };
        const SECTION: &str = "\n\n## Server `";
        let mut parts = instructions.split(SECTION);
        let mut kept = parts.next().unwrap_or_default().to_owned();
        let mut batch = Batch::default();
        let mut changed = false;
        for part in parts {
            let server = part.split('`').next().unwrap_or_default().to_owned();
            let section = Value::from(part);
            let findings = self.scan(&section);
            if !findings.is_empty() {
                let withhold = self.poisoning == Poisoning::Deny;
                let sha256 = store::sha256(&section);
                self.report_flagged(
                    "instructions",
                    &format!("instructions:{server}"),
                    &server,
                    &sha256,
                    rule_ids(&findings),
                    withhold,
                    &mut batch,
                );
                if withhold {
                    changed = true;
                    continue;
                }
            }
            kept.push_str(SECTION);
            kept.push_str(part);
        }
        if changed {
            *text = Value::from(kept);
        }
        self.commit(batch);
        Verdict::Continue
    }
}

/// `file` with a pass's first-use pins added where it has none (the first
/// definition pinned holds).
fn with_first_pins(mut file: PinFile, pins: &[(String, Pin)]) -> PinFile {
    for (name, pin) in pins {
        file.tools
            .entry(name.clone())
            .or_insert_with(|| pin.clone());
    }
    file
}

/// From `old` to `new`: the tools whose pin is new or different, and those
/// no longer pinned.
fn differences(old: &PinFile, new: &PinFile) -> (Vec<String>, Vec<String>) {
    let changed = new
        .tools
        .iter()
        .filter(|(name, pin)| old.tools.get(*name) != Some(*pin))
        .map(|(name, _)| name.clone())
        .collect();
    let removed = old
        .tools
        .keys()
        .filter(|name| !new.tools.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed)
}

/// Drops a server's own `dev.portcullis/…` keys from an item's `_meta`,
/// and a `_meta` that is not an object (it could not carry the proxy's
/// flags).
fn strip_flags(object: &mut serde_json::Map<String, Value>) {
    if let Some(meta) = object.get_mut("_meta") {
        match meta.as_object_mut() {
            Some(meta) => meta.retain(|key, _| !key.starts_with(META_PREFIX)),
            None => *meta = Value::Object(serde_json::Map::new()),
        }
    }
}

fn apply_seen(file: &mut SeenFile, changes: &[(String, Option<Seen>)]) {
    for (name, entry) in changes {
        match entry {
            Some(entry) => {
                file.tools.insert(name.clone(), entry.clone());
            }
            None => {
                file.tools.remove(name);
            }
        }
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

fn annotation(key: &str, value: String) -> Annotation {
    Annotation {
        interceptor: Arc::from("pinning"),
        key: key.into(),
        value,
    }
}

impl Interceptor for Pinning {
    fn name(&self) -> &str {
        "pinning"
    }

    fn on_request(&self, exchange: &mut Exchange) -> Verdict {
        if exchange.direction != Direction::ClientToServer {
            return Verdict::Continue;
        }
        match &*exchange.context.method {
            "tools/call" => self.check(exchange, false),
            "prompts/get" if self.rules.is_some() => self.check(exchange, true),
            _ => Verdict::Continue,
        }
    }

    fn on_response(&self, exchange: &mut Exchange) -> Verdict {
        if exchange.direction != Direction::ClientToServer {
            return Verdict::Continue;
        }
        match &*exchange.context.method {
            "tools/list" => self.filter(exchange, false),
            "prompts/list" if self.rules.is_some() => self.filter(exchange, true),
            "resources/list" if self.rules.is_some() => self.scan_list(exchange, "resources"),
            "resources/templates/list" if self.rules.is_some() => {
                self.scan_list(exchange, "resourceTemplates")
            }
            "initialize" if self.rules.is_some() => self.scan_instructions(exchange),
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests;
