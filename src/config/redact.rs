//! `[redact]`: secret scanning, its rules and what each does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Located, Validator, line_col};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactAction {
    /// The secret is replaced by `[REDACTED:<rule-id>]`.
    Redact,
    /// The message is refused with an error naming the rule.
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

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "redact" => Ok(Self::Redact),
            "deny" => Ok(Self::Deny),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(format!("`{other}` is not `redact`, `deny`, `log` or `off`")),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedact {
    pub(super) enabled: Option<bool>,
    pub(super) requests: Option<Spanned<String>>,
    pub(super) responses: Option<Spanned<String>>,
    pub(super) extra_rules: Option<PathBuf>,
    #[serde(default)]
    pub(super) disable: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) allow_regex: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) rules: BTreeMap<String, Spanned<RawRuleActions>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleActions {
    pub(super) action: Option<Spanned<String>>,
    pub(super) requests: Option<Spanned<String>>,
    pub(super) responses: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn redact(
        &self,
        raw: Option<RawRedact>,
        resolve: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<RedactConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(RedactConfig::default());
        };
        let action = |value: &Option<Spanned<String>>,
                      key: &str|
         -> Result<Option<RedactAction>, ConfigError> {
            match value {
                None => Ok(None),
                Some(value) => RedactAction::parse(value.get_ref())
                    .map(Some)
                    .map_err(|message| self.error(Some(value.span()), key, message)),
            }
        };
        let located = |value: &Spanned<String>, key: String| Located {
            value: value.get_ref().clone(),
            file: self.path.to_owned(),
            location: Some(line_col(self.text, value.span().start)),
            key,
        };
        let mut rules = Vec::new();
        for (id, entry) in &raw.rules {
            let key = format!("redact.rules.{id}");
            let span = entry.span();
            let entry = entry.get_ref();
            let both = action(&entry.action, &format!("{key}.action"))?;
            if both.is_some() && (entry.requests.is_some() || entry.responses.is_some()) {
                return Err(self.error(
                    Some(span),
                    &key,
                    "set `action` (both directions) or `requests`/`responses`, not both".into(),
                ));
            }
            rules.push(RuleActions {
                id: Located {
                    value: id.clone(),
                    file: self.path.to_owned(),
                    location: Some(line_col(self.text, span.start)),
                    key: key.clone(),
                },
                requests: both.or(action(&entry.requests, &format!("{key}.requests"))?),
                responses: both.or(action(&entry.responses, &format!("{key}.responses"))?),
            });
        }
        let allow_regex = raw
            .allow_regex
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                regex::bytes::Regex::new(pattern.get_ref()).map_err(|err| {
                    self.error(
                        Some(pattern.span()),
                        &format!("redact.allow_regex[{i}]"),
                        err.to_string(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedactConfig {
            enabled: raw.enabled.unwrap_or(true),
            requests: action(&raw.requests, "redact.requests")?.unwrap_or(RedactAction::Redact),
            responses: action(&raw.responses, "redact.responses")?.unwrap_or(RedactAction::Redact),
            extra_rules: raw.extra_rules.map(resolve),
            disable: raw
                .disable
                .iter()
                .enumerate()
                .map(|(i, id)| located(id, format!("redact.disable[{i}]")))
                .collect(),
            allow: raw.allow,
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
                "p.toml:2:12: `redact.requests`: `mask` is not `redact`, `deny`, `log` or `off`",
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
