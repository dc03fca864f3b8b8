//! `[redact]`: secret scanning, its rules and what each does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::values::PathText;
use super::{ConfigError, Located, Validator};

/// `[redact]`: secret scanning. On unless `enabled = false`.
#[derive(Debug, Clone)]
pub struct RedactConfig {
    pub enabled: bool,
    /// For messages on their way to a server.
    pub requests: RedactAction,
    /// For messages on their way to the client.
    pub responses: RedactAction,
    /// A custom rule file, in the built-in rules' format.
    pub extra_rules: Option<PathBuf>,
    /// Rule ids that do not run at all.
    pub disable: Vec<Located<String>>,
    /// Values never reported, whatever the rule.
    pub allow: Vec<String>,
    /// Values never reported when one of these matches them.
    pub allow_regex: Vec<regex::bytes::Regex>,
    /// `[redact.rules.<id>]`: one rule's actions.
    pub rules: Vec<RuleActions>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests: RedactAction::Redact,
            responses: RedactAction::Redact,
            extra_rules: None,
            disable: Vec::new(),
            allow: Vec::new(),
            allow_regex: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One rule's actions, overriding `[redact] requests` / `responses`.
#[derive(Debug, Clone)]
pub struct RuleActions {
    pub id: Located<String>,
    pub requests: Option<RedactAction>,
    pub responses: Option<RedactAction>,
}

/// What happens to a message carrying a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RedactAction {
    /// The secret is replaced by `[REDACTED:<rule-id>]`; the context around
    /// it stays.
    Redact,
    /// The message is refused with an error naming the rule, never the
    /// secret.
    Deny,
    /// Counted (audit record, log) and passed on unchanged.
    Log,
    /// Not looked for.
    Off,
}

impl RedactAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redact => "redact",
            Self::Deny => "deny",
            Self::Log => "log",
            Self::Off => "off",
        }
    }
}

/// `[redact]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedact {
    /// Whether the `redact` interceptor runs.
    #[schemars(extend("default" = true))]
    enabled: Option<bool>,
    /// Messages on their way to a server: the client's requests and
    /// notifications, its answers to sampling or elicitation.
    #[schemars(extend("default" = "redact"))]
    requests: Option<RedactAction>,
    /// Messages on their way to the client: results, errors, notifications,
    /// and server requests such as sampling.
    #[schemars(extend("default" = "redact"))]
    responses: Option<RedactAction>,
    /// Rules of your own, in the built-in rules' format, checked at start.
    #[schemars(with = "Option<PathText>")]
    extra_rules: Option<PathBuf>,
    /// Ids of rules that do not run.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    disable: Vec<Spanned<String>>,
    /// Values never reported, whatever the rule.
    #[serde(default)]
    allow: Vec<String>,
    /// Values matching one of these regular expressions are never reported.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    allow_regex: Vec<Spanned<String>>,
    /// One rule's actions, by its id, in place of `requests` and `responses`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawRuleActions>")]
    rules: BTreeMap<String, Spanned<RawRuleActions>>,
}

/// `[redact.rules.ID]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRuleActions {
    /// The rule's action in both directions (or set `requests` and
    /// `responses`).
    #[schemars(extend("x-default" = "`[redact] requests` and `responses`"))]
    action: Option<RedactAction>,
    /// The rule's action on messages to a server.
    #[schemars(extend("x-default" = "`[redact] requests`"))]
    requests: Option<RedactAction>,
    /// The rule's action on messages to the client.
    #[schemars(extend("x-default" = "`[redact] responses`"))]
    responses: Option<RedactAction>,
}

impl RawRedact {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<RedactConfig, ConfigError> {
        let mut rules = Vec::new();
        for (id, entry) in self.rules {
            let key = format!("redact.rules.{id}");
            let span = entry.span();
            let entry = entry.into_inner();
            if entry.action.is_some() && (entry.requests.is_some() || entry.responses.is_some()) {
                return Err(v.error(
                    Some(span),
                    &key,
                    "set `action` (both directions) or `requests`/`responses`, not both".into(),
                ));
            }
            rules.push(RuleActions {
                id: v.located(id, span, key),
                requests: entry.action.or(entry.requests),
                responses: entry.action.or(entry.responses),
            });
        }
        let allow_regex = self
            .allow_regex
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                regex::bytes::Regex::new(pattern.get_ref()).map_err(|err| {
                    v.error(
                        Some(pattern.span()),
                        &format!("redact.allow_regex[{i}]"),
                        err.to_string(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedactConfig {
            enabled: self.enabled.unwrap_or(true),
            requests: self.requests.unwrap_or(RedactAction::Redact),
            responses: self.responses.unwrap_or(RedactAction::Redact),
            extra_rules: self.extra_rules.map(|file| v.resolve(file)),
            disable: self
                .disable
                .into_iter()
                .enumerate()
                .map(|(i, id)| {
                    let span = id.span();
                    v.located(id.into_inner(), span, format!("redact.disable[{i}]"))
                })
                .collect(),
            allow: self.allow,
            allow_regex,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_redact_section_is_read_with_per_rule_actions() {
        let config = parse(
            "[redact]\nrequests = \"deny\"\nresponses = \"log\"\nallow = [\"x\"]\nallow_regex = ['^sk_test_']\n[redact.rules.jwt]\naction = \"off\"\n[redact.rules.aws-access-key-id]\nresponses = \"deny\"\n",
        );
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        let redact = &config.redact;
        assert_eq!(
            (redact.requests, redact.responses),
            (RedactAction::Deny, RedactAction::Log)
        );
        assert_eq!(redact.allow_regex.len(), 1);
        let jwt = redact.rules.iter().find(|r| r.id.value == "jwt");
        assert_eq!(
            jwt.map(|r| (r.requests, r.responses)),
            Some((Some(RedactAction::Off), Some(RedactAction::Off)))
        );
        let aws = redact
            .rules
            .iter()
            .find(|r| r.id.value == "aws-access-key-id");
        assert_eq!(
            aws.map(|r| (r.requests, r.responses)),
            Some((None, Some(RedactAction::Deny)))
        );
    }

    #[test]
    fn schema_validation_is_placed_or_switched_off_explicitly() {
        let placed = parse(
            "[pinning]\nenabled = false\n[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"limits\"\n",
        );
        assert_eq!(
            placed.map(|c| c.chain),
            Ok(vec![
                ChainEntry::Schema,
                ChainEntry::Redact,
                ChainEntry::Limits
            ])
        );
        let missing = parse("[pinning]\nenabled = false\n[[chain]]\nkind = \"redact\"\n");
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:3:1: `chain`: schema validation is on")),
            "{missing:?}"
        );
        let off = parse(
            "[schema]\nenabled = false\n[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"pinning\"\n",
        );
        assert_eq!(
            off.map(|c| c.chain),
            Ok(vec![
                ChainEntry::Limits,
                ChainEntry::Redact,
                ChainEntry::Pinning
            ])
        );
        let no_pinning = parse("[[chain]]\nkind = \"schema\"\n[[chain]]\nkind = \"redact\"\n");
        assert!(
            no_pinning
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:1:1: `chain`: tool pinning is on")),
            "{no_pinning:?}"
        );
        let pinning = parse(
            "[proxy]\ndata_dir = \"state\"\n[pinning]\nfile = \"repo/pins.json\"\nfirst_use = \"deny\"\non_change = \"warn\"\npoisoning = \"deny\"\n",
        )
        .map(|c| c.pinning);
        let Ok(pinning) = pinning else {
            panic!("{pinning:?}");
        };
        assert!(pinning.file.ends_with("repo/pins.json") && pinning.data_dir.ends_with("state"));
        assert_eq!(
            (pinning.first_use, pinning.on_change, pinning.poisoning),
            (FirstUse::Deny, OnChange::Warn, Poisoning::Deny)
        );
        let bad = parse("[pinning]\npoisoning = \"loud\"\n");
        assert!(
            bad.as_ref().is_err_and(|e| e
                == "p.toml:2:13: `pinning.poisoning`: unknown variant `loud`, expected one of `flag`, `deny`, `off`"),
            "{bad:?}"
        );
        let bad = parse("[schema]\noutput = \"maybe\"\n");
        assert!(
            bad.as_ref()
                .is_err_and(|e| e == "p.toml:2:10: `schema.output`: unknown variant `maybe`, expected `deny` or `log`"),
            "{bad:?}"
        );
        assert_eq!(
            parse("[schema]\noutput = \"log\"\n").map(|c| c.schema.output),
            Ok(OutputAction::Log)
        );
    }

    #[test]
    fn secret_scanning_is_placed_or_switched_off_explicitly() {
        let off = parse(
            "[redact]\nenabled = false\n[schema]\nenabled = false\n[pinning]\nenabled = false\n",
        );
        assert_eq!(off.map(|c| c.chain), Ok(vec![ChainEntry::Limits]));
        let placed = parse(
            "[schema]\nenabled = false\n[pinning]\nenabled = false\n[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"limits\"\n",
        );
        assert_eq!(
            placed.map(|c| c.chain),
            Ok(vec![ChainEntry::Redact, ChainEntry::Limits])
        );
        let missing = parse(
            "[schema]\nenabled = false\n[pinning]\nenabled = false\n[[chain]]\nkind = \"limits\"\n",
        );
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("p.toml:5:1: `chain`: secret scanning is on")),
            "{missing:?}"
        );
    }

    #[test]
    fn bad_redact_values_name_their_line() {
        for (text, expected) in [
            (
                "[redact]\nrequests = \"mask\"\n",
                "p.toml:2:12: `redact.requests`: unknown variant `mask`, expected one of `redact`, `deny`, `log`, `off`",
            ),
            (
                "[redact]\nallow_regex = ['(']\n",
                "p.toml:2:16: `redact.allow_regex[0]`: regex parse error",
            ),
            (
                "[redact.rules.jwt]\naction = \"log\"\nrequests = \"deny\"\n",
                "p.toml:1:1: `redact.rules.jwt`: set `action`",
            ),
            (
                "[redact]\ncolour = 1\n",
                "p.toml:2:1: `redact.colour`: unknown field `colour`",
            ),
        ] {
            match parse(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(err) => assert!(
                    err.starts_with(expected),
                    "`{err}` does not start with `{expected}`"
                ),
            }
        }
    }
}
