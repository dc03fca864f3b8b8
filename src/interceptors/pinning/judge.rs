//! Judging a tool's or prompt's listed definition against its pin and the
//! poisoning rules, with the cache of judgements, and reporting what a
//! person must hear about (once per process).

use std::sync::Arc;

use serde_json::Value;

use super::batch::{Batch, server_of};
use super::store::{self, Finding, Pin, PinFile, Seen, SeenFile};
use super::{Cached, Judgement, MOST_CACHED, PinEvent, PinState, Pinning, rule_ids, short};
use crate::chain::Definition;
use crate::config::{FirstUse, OnChange, Poisoning};

impl Pinning {
    /// The judgement of a tool or prompt's listed definition, from the
    /// cache when that very definition was judged under the pins in force.
    pub(super) fn judgement(
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
            && cached.definition.is(definition)
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
                // Those of lists no longer listed first, then all.
                judged.retain(|_, cached| !cached.definition.is_gone());
                if judged.len() >= MOST_CACHED {
                    judged.clear();
                }
            }
            judged.insert(
                key.to_owned(),
                Cached {
                    definition: definition.downgrade(),
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
    pub(super) fn scan(&self, canonical: &Value) -> Vec<Finding> {
        self.rules
            .as_ref()
            .map(|rules| rules.scan(canonical))
            .unwrap_or_default()
    }

    /// Logs and announces a flagged definition, once per definition per
    /// process (`key` tells tools and prompts of the same name apart).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report_flagged(
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
}
