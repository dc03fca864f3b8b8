//! `redact`: secret scanning of every string in every message, both ways.
//!
//! Every member of a message but `id` and `method` is walked
//! (see [`walk`]): every string and every key is scanned (see [`engine`]);
//! a string that is the value of an object member is also scanned as
//! `key: value` when the key holds a keyword, so `{"api_key": "…"}` is
//! caught like `api_key: …`; percent-escapes and base64 runs in text are
//! decoded once and scanned; adjacent text blocks are scanned across their
//! joins. No member is skipped by its name: the base64 fields of the MCP
//! schema (image and audio `data`, resource `blob`, in their positions) are
//! decoded and their bytes scanned, and a message whose field does not
//! decode is refused.
//!
//! What happens to a finding depends on where the message goes (`requests`:
//! toward a server; `responses`: toward the client) and on the rule:
//! `redact` replaces the secret with `[REDACTED:<rule-id>]`, `deny` refuses
//! the message naming the rule, `log` only counts. Counts per rule and
//! direction become annotations (`redaction` = `"<direction> <rule> <count>"`)
//! that the audit record keeps; the secret itself goes nowhere.

mod encoded;
mod engine;
mod finding;
mod keywords;
mod rule_regex;
pub mod rules;
mod vault_tokens;
mod walk;

use std::sync::Arc;

use serde_json::Value;

pub use engine::{Allowlist, Finding, PLACEHOLDER_PREFIX, Scanner, ScannerError, entropy};
pub use rules::{Rule, RuleError, RuleSet, Severity};

use crate::chain::{Annotation, Denial, Direction, Exchange, Interceptor, Phase, Verdict};
use crate::config::{ConfigError, RedactAction, RedactConfig};
use crate::protocol::code;

/// The annotation key redaction counts go under.
pub const ANNOTATION: &str = "redaction";

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
        walk::Pass::new(self, 0, true, None, Phase::Notification).value(value);
    }

    /// `text` with every secret any rule finds replaced by its placeholder,
    /// whatever the configured actions (for what is stored, traced or
    /// logged: targets, reasons, method names).
    pub fn scrubbed(&self, text: &str) -> String {
        let mut text = text.to_owned();
        walk::Pass::new(self, 0, true, None, Phase::Notification).string(&mut text, None);
        text
    }

    /// The findings in one string as the walk makes them: the text, its
    /// percent-decoded words and its base64 runs decoded (for `redact scan`
    /// and the benchmarks).
    pub fn scan_text(&self, text: &[u8], out: &mut Vec<Finding>) {
        let mut pass = walk::Pass::new(self, 0, true, None, Phase::Notification);
        pass.collect(text, None);
        pass.take_found(out);
    }

    /// `toward_server`: the message goes to a server (the phase says so).
    fn inspect(&self, exchange: &mut Exchange, toward_server: bool) -> Verdict {
        let side = usize::from(!toward_server);
        // Users' tokens from the vault are redacted whatever the actions.
        if (self.actions.iter()).all(|a| a.get(side) == Some(&RedactAction::Off))
            && crate::signin::known::known().is_empty()
        {
            return Verdict::Continue;
        }
        let method = exchange.context.method.clone();
        let mut pass = walk::Pass::new(self, side, false, Some(&method), exchange.phase);
        pass.message(&mut exchange.message);
        if let Some(reason) = pass.refused {
            tracing::info!(
                session = %exchange.context.session,
                method = %exchange.context.method,
                reason,
                "message refused: it cannot be scanned"
            );
            return Verdict::Deny(Denial::new(
                code::DENIED,
                format!("the message cannot be scanned: {reason}"),
            ));
        }
        if pass.counts.is_empty() {
            return Verdict::Continue;
        }
        let direction = if toward_server { "request" } else { "response" };
        for (rule, count) in &pass.counts {
            exchange.annotations.push(Annotation {
                interceptor: self.name.clone(),
                key: ANNOTATION.to_owned(),
                value: format!("{direction} {} {count}", self.scanner.rule_id(*rule)),
            });
        }
        let summary = || {
            pass.counts
                .iter()
                .map(|(rule, count)| format!("{}×{count}", self.scanner.rule_id(*rule)))
                .collect::<Vec<_>>()
                .join(",")
        };
        match pass.denied_by {
            Some(rule) => {
                let id = self.scanner.rule_id(rule);
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

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange, true)
    }

    fn on_server_response(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange, false)
    }

    fn on_server_request(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange, false)
    }

    fn on_client_response(&self, exchange: &mut Exchange) -> Verdict {
        self.inspect(exchange, true)
    }

    fn on_notification(&self, exchange: &mut Exchange) -> Verdict {
        let toward_server = exchange.direction == Direction::ClientToServer;
        self.inspect(exchange, toward_server)
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
