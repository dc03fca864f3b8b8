//! `redact`: secret scanning of every string in every message, both ways.
//!
//! Each string value under `params`, `result` or `error` is scanned (see
//! [`engine`]); a string that is the value of an object member is also
//! scanned as `key: value` when the key holds a keyword, so
//! `{"api_key": "…"}` is caught like `api_key: …`. Base64 payloads are
//! skipped by type: the `data` of `image` and `audio` content and every
//! resource `blob`.
//!
//! What happens to a finding depends on where the message goes (`requests`:
//! toward a server; `responses`: toward the client) and on the rule:
//! `redact` replaces the secret with `[REDACTED:<rule-id>]`, `deny` refuses
//! the message naming the rule, `log` only counts. Counts per rule and
//! direction become annotations (`redaction` = `"<direction> <rule> <count>"`)
//! that the audit record keeps; the secret itself goes nowhere.

mod engine;
mod keywords;
pub mod rules;

use std::sync::Arc;

use serde_json::Value;

pub use engine::{Allowlist, Finding, PLACEHOLDER_PREFIX, Scanner, ScannerError, entropy};
pub use rules::{Rule, RuleError, RuleSet, Severity};

use crate::chain::{Annotation, Denial, Exchange, Interceptor, Verdict};
use crate::config::{ConfigError, RedactAction, RedactConfig};
use crate::protocol::code;

/// The annotation key redaction counts go under.
pub const ANNOTATION: &str = "redaction";

/// Deeper than this, a message is not walked further (parsed messages nest
/// at most 128 levels; `limits` refuses far less).
const MAX_WALK_DEPTH: usize = 256;

/// Secret scanning that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Config(#[from] Box<ConfigError>),
    #[error(transparent)]
    Scanner(#[from] ScannerError),
}

/// The rule set a config asks for: the built-in rules, its extra rules,
/// minus the disabled ones.
pub fn rule_set(config: &RedactConfig) -> Result<RuleSet, RedactError> {
    let mut set = RuleSet::builtin()?;
    if let Some(path) = &config.extra_rules {
        let extra = RuleSet::load(path)?;
        set.extend(extra).map_err(|message| RuleError {
            file: path.clone(),
            location: None,
            message,
        })?;
    }
    for id in &config.disable {
        if !set.rules.iter().any(|rule| *rule.id == id.value) {
            return Err(Box::new(id.error(unknown_rule(&id.value))).into());
        }
    }
    for actions in &config.rules {
        if !set.rules.iter().any(|rule| *rule.id == actions.id.value) {
            return Err(Box::new(actions.id.error(unknown_rule(&actions.id.value))).into());
        }
    }
    set.rules
        .retain(|rule| !config.disable.iter().any(|id| *rule.id == id.value));
    Ok(set)
}

fn unknown_rule(id: &str) -> String {
    format!("no rule is called `{id}` (`portcullis redact rules` lists them)")
}

/// The scanner a config asks for.
pub fn scanner(config: &RedactConfig) -> Result<Scanner, RedactError> {
    let allow = Allowlist {
        exact: config
            .allow
            .iter()
            .map(|value| value.as_bytes().to_vec())
            .collect(),
        patterns: config.allow_regex.clone(),
    };
    Ok(Scanner::new(rule_set(config)?, allow)?)
}

/// The interceptor.
pub struct Redact {
    name: Arc<str>,
    scanner: Arc<Scanner>,
    /// Per rule: the action toward servers, toward the client.
    actions: Vec<[RedactAction; 2]>,
}

impl Redact {
    pub fn new(config: &RedactConfig) -> Result<Self, RedactError> {
        Ok(Self::with_scanner(scanner(config)?, config))
    }

    /// The interceptor over a scanner already built; `config` gives the
    /// actions.
    pub fn with_scanner(scanner: Scanner, config: &RedactConfig) -> Self {
        let actions = scanner
            .rules()
            .iter()
            .map(|rule| {
                let own = config.rules.iter().find(|r| *rule.id == r.id.value);
                [
                    own.and_then(|r| r.requests).unwrap_or(config.requests),
                    own.and_then(|r| r.responses).unwrap_or(config.responses),
                ]
            })
            .collect();
        Self {
            name: Arc::from("redact"),
            scanner: Arc::new(scanner),
            actions,
        }
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Replaces every secret any rule finds in `value` by its placeholder,
    /// whatever the configured actions (for what the audit log keeps).
    pub fn redact_all(&self, value: &mut Value) {
        let mut pass = Pass {
            redact: self,
            side: 0,
            all: true,
            counts: Vec::new(),
            denied_by: None,
            found: Vec::new(),
            keyed: Vec::new(),
        };
        pass.walk(value, 0);
    }

    fn inspect(&self, exchange: &mut Exchange) -> Verdict {
        let toward_server = exchange.toward_server();
        let side = usize::from(!toward_server);
        if self.actions.iter().all(|a| a[side] == RedactAction::Off) {
            return Verdict::Continue;
        }
        let mut pass = Pass {
            redact: self,
            side,
            all: false,
            counts: Vec::new(),
            denied_by: None,
            found: Vec::new(),
            keyed: Vec::new(),
        };
        if let Value::Object(message) = &mut exchange.message {
            for part in ["params", "result", "error"] {
                if let Some(value) = message.get_mut(part) {
                    pass.walk(value, 0);
                }
            }
        }
        if pass.counts.is_empty() {
            return Verdict::Continue;
        }
        let direction = if toward_server { "request" } else { "response" };
        for (rule, count) in &pass.counts {
            exchange.annotations.push(Annotation {
                interceptor: self.name.clone(),
                key: ANNOTATION.to_owned(),
                value: format!("{direction} {} {count}", self.scanner.rule(*rule).id),
            });
        }
        let summary = || {
            pass.counts
                .iter()
                .map(|(rule, count)| format!("{}×{count}", self.scanner.rule(*rule).id))
                .collect::<Vec<_>>()
                .join(",")
        };
        match pass.denied_by {
            Some(rule) => {
                let id = &self.scanner.rule(rule).id;
                tracing::info!(
                    session = %exchange.context.session,
                    method = %exchange.context.method,
                    direction,
                    rules = %summary(),
                    "secret found: message refused"
                );
                Verdict::Deny(
                    Denial::new(
                        code::DENIED,
                        format!("the message carries a secret (rule `{id}`)"),
                    )
                    .with("rule", id.to_string()),
                )
            }
            None => {
                tracing::debug!(
                    session = %exchange.context.session,
                    method = %exchange.context.method,
                    direction,
                    rules = %summary(),
                    "secrets found"
                );
                Verdict::Continue
            }
        }
    }
}

impl Interceptor for Redact {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange)
    }

    fn on_response(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange)
    }

    fn on_notification(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange)
    }
}

/// One message's walk.
struct Pass<'a> {
    redact: &'a Redact,
    /// Redact every finding, whatever the actions (and count none).
    all: bool,
    /// 0: toward servers, 1: toward the client.
    side: usize,
    counts: Vec<(u32, u64)>,
    denied_by: Option<u32>,
    found: Vec<Finding>,
    keyed: Vec<Finding>,
}

impl Pass<'_> {
    fn walk(&mut self, value: &mut Value, depth: usize) {
        if depth > MAX_WALK_DEPTH {
            return;
        }
        match value {
            Value::String(text) => self.string(text, None),
            Value::Array(items) => {
                for item in items {
                    self.walk(item, depth + 1);
                }
            }
            Value::Object(members) => {
                let binary = matches!(
                    members.get("type").and_then(Value::as_str),
                    Some("image" | "audio")
                );
                for (key, member) in members.iter_mut() {
                    if key == "blob" || (binary && key == "data") {
                        continue;
                    }
                    match member {
                        Value::String(text) => self.string(text, Some(key)),
                        other => self.walk(other, depth + 1),
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn string(&mut self, text: &mut String, key: Option<&str>) {
        let scanner = &*self.redact.scanner;
        scanner.scan(text.as_bytes(), &mut self.found);
        if let Some(key) = key
            && scanner.may_match(key.as_bytes())
        {
            // The member's key as context: `key: value`.
            let mut keyed_text = String::with_capacity(key.len() + 2 + text.len());
            keyed_text.push_str(key);
            keyed_text.push_str(": ");
            keyed_text.push_str(text);
            let offset = key.len() + 2;
            scanner.scan(keyed_text.as_bytes(), &mut self.keyed);
            let before = self.found.len();
            for finding in &self.keyed {
                if finding.start < offset {
                    continue;
                }
                let shifted = Finding {
                    start: finding.start - offset,
                    end: finding.end - offset,
                    match_start: finding.match_start.saturating_sub(offset),
                    match_end: finding.match_end - offset,
                    ..*finding
                };
                let overlaps = self.found[..before]
                    .iter()
                    .any(|f| shifted.start < f.end && f.start < shifted.end);
                if !overlaps {
                    self.found.push(shifted);
                }
            }
            if self.found.len() > before {
                self.found.sort_unstable_by_key(|f| f.start);
            }
        }
        if self.found.is_empty() {
            return;
        }
        if self.all {
            *text = scanner.redact(text, &self.found);
            return;
        }
        let mut rewrite = false;
        let mut index = 0;
        while index < self.found.len() {
            let rule = self.found[index].rule;
            let action = self.redact.actions[rule as usize][self.side];
            if action == RedactAction::Off {
                self.found.remove(index);
                continue;
            }
            match self.counts.iter_mut().find(|(r, _)| *r == rule) {
                Some((_, count)) => *count += 1,
                None => self.counts.push((rule, 1)),
            }
            match action {
                RedactAction::Deny => {
                    self.denied_by.get_or_insert(rule);
                    // The refused message is never forwarded, but what is
                    // derived from it (the audit's hash of the arguments)
                    // must not be derived from the secret either.
                    rewrite = true;
                }
                RedactAction::Redact => rewrite = true,
                RedactAction::Log | RedactAction::Off => {}
            }
            index += 1;
        }
        if rewrite {
            let side = self.side;
            let actions = &self.redact.actions;
            self.found.retain(|f| {
                matches!(
                    actions[f.rule as usize][side],
                    RedactAction::Redact | RedactAction::Deny
                )
            });
            *text = scanner.redact(text, &self.found);
        }
    }
}

/// The redaction counts an exchange's annotations hold:
/// (rule, direction, count).
pub fn counts(annotations: &[Annotation]) -> Vec<(String, String, u64)> {
    annotations
        .iter()
        .filter(|a| &*a.interceptor == "redact" && a.key == ANNOTATION)
        .filter_map(|a| {
            let mut parts = a.value.split(' ');
            let direction = parts.next()?;
            let rule = parts.next()?;
            let count = parts.next()?.parse().ok()?;
            Some((rule.to_owned(), direction.to_owned(), count))
        })
        .collect()
}

#[cfg(test)]
mod tests;
