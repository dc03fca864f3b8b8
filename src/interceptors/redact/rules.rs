//! Detection rules: the built-in set (`rules.toml`, compiled into the
//! binary) and custom rule files in the same format, validated once at load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::bytes::Regex;
use serde::Deserialize;
use toml::Spanned;

/// The built-in rules, in the format custom rule files use.
pub const BUILTIN: &str = include_str!("rules.toml");

/// The name the built-in set goes by in errors.
pub const BUILTIN_NAME: &str = "<built-in rules>";

/// The longest match a rule may declare: a rule's regex runs on windows of
/// this size around its keywords.
const MAX_MATCH_LEN: usize = 1 << 16;

/// A rule file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct RuleError {
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// One detection rule, ready to run.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Arc<str>,
    pub description: String,
    /// ASCII, matched case-insensitively; a match counts only if it contains
    /// one. Empty: the rule runs on every string (costly, so rare).
    pub keywords: Vec<String>,
    pub regex: Regex,
    /// The capture group holding the secret (`(?P<secret>…)`); the whole
    /// match when absent.
    pub secret_group: Option<usize>,
    /// Minimum Shannon entropy of the secret, in bits per byte.
    pub entropy: Option<f64>,
    pub severity: Severity,
    /// Among overlapping matches the highest priority wins.
    pub priority: i32,
    /// Whether the stopword list applies to the secret.
    pub stopwords: bool,
    pub allow: HashSet<Vec<u8>>,
    pub allow_regex: Vec<Regex>,
    /// The longest match in bytes.
    pub max_len: usize,
    /// How far before the start of its keyword a match can start (at most
    /// `max_len`): a smaller lead means a smaller window to search.
    pub lead: usize,
    /// Where the rule was defined (built-in or a file).
    pub origin: Arc<str>,
}

/// Rules and the stopwords of the files they came from.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Lowercase.
    pub stopwords: Vec<String>,
}

impl RuleSet {
    /// The built-in rules.
    pub fn builtin() -> Result<Self, RuleError> {
        Self::parse(BUILTIN, Path::new(BUILTIN_NAME))
    }

    /// Reads a custom rule file.
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|err| RuleError {
            file: path.to_owned(),
            location: None,
            message: format!("cannot read the rule file: {err}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates a rule file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RuleError> {
        let error = |span: Option<std::ops::Range<usize>>, message: String| RuleError {
            file: path.to_owned(),
            location: span.map(|span| line_col(text, span.start)),
            message,
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|err| error(err.span(), err.message().to_owned()))?;
        let origin: Arc<str> = Arc::from(path.display().to_string());
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut seen = HashSet::new();
        for (index, raw_rule) in raw.rule.into_iter().enumerate() {
            let span = raw_rule.span();
            let raw_rule = raw_rule.into_inner();
            let at = |field: &str, message: String| {
                error(
                    Some(span.clone()),
                    format!(
                        "`rule[{index}].{field}` (rule `{}`): {message}",
                        raw_rule.id
                    ),
                )
            };
            if !valid_id(&raw_rule.id) {
                return Err(at(
                    "id",
                    "an id is lowercase letters and digits in dash-separated words, e.g. `acme-api-token`".into(),
                ));
            }
            if !seen.insert(raw_rule.id.clone()) {
                return Err(at("id", "this id is used twice".into()));
            }
            for keyword in &raw_rule.keywords {
                if keyword.len() < 2 || !keyword.is_ascii() {
                    return Err(at(
                        "keywords",
                        format!("`{keyword}`: a keyword is at least 2 ASCII characters"),
                    ));
                }
            }
            let regex = compile(raw_rule.regex.get_ref()).map_err(|err| {
                error(
                    Some(raw_rule.regex.span()),
                    format!("`rule[{index}].regex` (rule `{}`): {err}", raw_rule.id),
                )
            })?;
            let secret_group = regex
                .capture_names()
                .position(|name| name == Some("secret"));
            let severity = match raw_rule.severity.as_str() {
                "critical" => Severity::Critical,
                "high" => Severity::High,
                "medium" => Severity::Medium,
                "low" => Severity::Low,
                other => {
                    return Err(at(
                        "severity",
                        format!("`{other}` is not `critical`, `high`, `medium` or `low`"),
                    ));
                }
            };
            if let Some(entropy) = raw_rule.entropy
                && !(0.0..=8.0).contains(&entropy)
            {
                return Err(at(
                    "entropy",
                    format!("{entropy} is not between 0 and 8 bits per byte"),
                ));
            }
            let max_len = raw_rule.max_len.unwrap_or(256);
            if max_len == 0 || max_len > MAX_MATCH_LEN {
                return Err(at(
                    "max_len",
                    format!("{max_len} is not between 1 and {MAX_MATCH_LEN}"),
                ));
            }
            let lead = raw_rule.lead.unwrap_or(max_len);
            if lead > max_len {
                return Err(at(
                    "lead",
                    format!("{lead} is more than `max_len` ({max_len})"),
                ));
            }
            let allow_regex = raw_rule
                .allow_regex
                .iter()
                .map(|pattern| compile(pattern).map_err(|err| at("allow_regex", format!("{err}"))))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule {
                id: Arc::from(raw_rule.id.as_str()),
                description: raw_rule.description,
                keywords: raw_rule.keywords,
                regex,
                secret_group,
                entropy: raw_rule.entropy,
                severity,
                priority: raw_rule.priority,
                stopwords: raw_rule.stopwords,
                allow: raw_rule.allow.into_iter().map(String::into_bytes).collect(),
                allow_regex,
                max_len,
                lead,
                origin: origin.clone(),
            });
        }
        Ok(Self {
            rules,
            stopwords: raw
                .stopwords
                .iter()
                .map(|word| word.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Adds another file's rules; an id defined twice is refused.
    pub fn extend(&mut self, other: RuleSet) -> Result<(), String> {
        for rule in &other.rules {
            if let Some(existing) = self.rules.iter().find(|r| r.id == rule.id) {
                return Err(format!(
                    "rule `{}` in {} is already defined in {}",
                    rule.id, rule.origin, existing.origin
                ));
            }
        }
        self.rules.extend(other.rules);
        for word in other.stopwords {
            if !self.stopwords.contains(&word) {
                self.stopwords.push(word);
            }
        }
        Ok(())
    }
}

/// Rule regexes match bytes with ASCII semantics (`\\b`, `\\w`, `\\s`,
/// `(?i)` are ASCII-only): secrets are ASCII, and without Unicode word
/// boundaries the fast DFA engines run on every haystack.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(1 << 22)
        .build()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.split('-').all(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    description: String,
    #[serde(default)]
    keywords: Vec<String>,
    regex: Spanned<String>,
    entropy: Option<f64>,
    severity: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    stopwords: bool,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    allow_regex: Vec<String>,
    max_len: Option<usize>,
    lead: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleSet, RuleError> {
        RuleSet::parse(text, Path::new("extra.toml"))
    }

    #[test]
    fn a_rule_file_loads_with_its_secret_group() {
        let set = parse(
            r#"
stopwords = ["Example"]
[[rule]]
id = "acme-token"
description = "ACME API token"
keywords = ["acme_"]
regex = '''token=(?P<secret>acme_[a-z0-9]{16})'''
entropy = 3.0
severity = "high"
stopwords = true
"#,
        );
        let Ok(set) = set else {
            panic!("{:?}", set.err());
        };
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].secret_group, Some(1));
        assert_eq!(set.stopwords, ["example"]);
    }

    #[test]
    fn bad_rules_name_the_file_line_and_field() {
        let cases = [
            (
                "[[rule]]\nid = \"Bad Id\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"high\"\n",
                "extra.toml:1:1: `rule[0].id`",
            ),
            (
                "\n\n[[rule]]\nid = \"a\"\ndescription = \"d\"\nkeywords = [\"ab\"]\nregex = \"(unclosed\"\nseverity = \"high\"\n",
                "extra.toml:7:9: `rule[0].regex` (rule `a`): regex parse error",
            ),
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"urgent\"\n",
                "`urgent` is not",
            ),
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"high\"\ncolour = 1\n",
                "extra.toml:6:1: unknown field `colour`",
            ),
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"high\"\n[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"high\"\n",
                "extra.toml:6:1: `rule[1].id` (rule `a`): this id is used twice",
            ),
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x\"\nseverity = \"high\"\nentropy = 9.5\n",
                "9.5 is not between 0 and 8",
            ),
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\nkeywords = [\"é\"]\nregex = \"x\"\nseverity = \"high\"\n",
                "at least 2 ASCII characters",
            ),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(err) => assert!(
                    err.to_string().contains(expected),
                    "`{err}` does not contain `{expected}`"
                ),
            }
        }
    }

    #[test]
    fn the_builtin_rules_load() {
        match RuleSet::builtin() {
            Ok(set) => assert!(set.rules.len() >= 80, "{} built-in rules", set.rules.len()),
            Err(err) => panic!("{err}"),
        }
    }
}
