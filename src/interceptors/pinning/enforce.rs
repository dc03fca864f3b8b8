//! What pinning does to messages: a call or prompt whose definition is
//! withheld is refused, lists lose what is withheld and carry the proxy's
//! flags, and resources, templates and a server's instructions are scanned.

use std::sync::Arc;

use serde_json::{Value, json};

use super::batch::Batch;
use super::store;
use super::{META_PIN, META_POISONING, META_PREFIX, PinState, Pinning, rule_ids};
use crate::chain::{Annotation, Denial, Exchange, Verdict};
use crate::config::Poisoning;
use crate::protocol::code;

impl Pinning {
    /// The server and own name of a namespaced tool or prompt.
    fn split<'a>(&self, namespaced: &'a str, server: &str) -> Option<&'a str> {
        namespaced
            .strip_prefix(server)
            .and_then(|rest| rest.strip_prefix(self.separator.as_str()))
    }

    pub(super) fn check(&self, exchange: &mut Exchange, prompt: bool) -> Verdict {
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

    pub(super) fn filter(&self, exchange: &mut Exchange, prompt: bool) -> Verdict {
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

    /// Resources and templates: not pinned, but scanned like tools and
    /// prompts (their descriptions reach the model too): flagged, or
    /// withheld under `poisoning = "deny"`.
    pub(super) fn scan_list(&self, exchange: &mut Exchange, key: &str) -> Verdict {
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
    pub(super) fn scan_instructions(&self, exchange: &mut Exchange) -> Verdict {
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

fn annotation(key: &str, value: String) -> Annotation {
    Annotation {
        interceptor: Arc::from("pinning"),
        key: key.into(),
        value,
    }
}
