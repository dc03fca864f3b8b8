//! Detection rules: the built-in set (`rules.toml`, compiled into the
//! binary) and custom rule files in the same format, validated once at load.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::bytes::Regex;
use regex_syntax::hir::{Class, Hir, HirKind};
use serde::Deserialize;
use toml::Spanned;

use crate::config::line_col;

use super::rule_regex::capture_index;
pub use super::rule_regex::{Compile, RuleRegex};

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
    pub regex: RuleRegex,
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
    /// `max_len`): a smaller lead means a smaller window to search. Zero
    /// (declared, or found when every match of the regex starts with a
    /// keyword): the regex runs anchored at each keyword.
    pub lead: usize,
    /// Every match starts with one of these byte-set sequences (the first
    /// bytes of the regex, at most 16): a cheap test before the regex runs
    /// at a keyword. Empty when the regex starts too many ways to list.
    pub head: Vec<Vec<Bytes>>,
    /// Where the rule was defined (built-in or a file).
    pub origin: Arc<str>,
    /// The ids of the rules of gitleaks' default configuration this rule
    /// implements, in whole or in part (provenance; no effect on scanning).
    pub gitleaks: Vec<String>,
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
        Self::parse_with(BUILTIN, Path::new(BUILTIN_NAME), Compile::Lazily)
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

    /// Validates a rule file's text, its regexes compiled; `path` names it
    /// in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RuleError> {
        Self::parse_with(text, path, Compile::Now)
    }

    /// Validates a rule file's text, its regexes compiled when `compile`
    /// says; `path` names it in errors.
    pub fn parse_with(text: &str, path: &Path, compile: Compile) -> Result<Self, RuleError> {
        let error = |span: Option<Range<usize>>, message: String| RuleError {
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
            rules.push(build_rule(
                raw_rule, index, &mut seen, &origin, compile, &error,
            )?);
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

/// The `index`th rule of a file, checked and compiled; its id must not be
/// in `seen` (it is added). `error` places a message in the file.
fn build_rule(
    raw_rule: Spanned<RawRule>,
    index: usize,
    seen: &mut HashSet<String>,
    origin: &Arc<str>,
    when: Compile,
    error: &dyn Fn(Option<Range<usize>>, String) -> RuleError,
) -> Result<Rule, RuleError> {
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
            "an id is lowercase letters and digits in dash-separated words, e.g. `acme-api-token`"
                .into(),
        ));
    }
    if !seen.insert(raw_rule.id.clone()) {
        return Err(at("id", "this id is used twice".into()));
    }
    if let Some(bad) = raw_rule.gitleaks.iter().find(|id| !valid_id(id)) {
        return Err(at(
            "gitleaks",
            format!(
                "`{bad}` is not a rule id (lowercase letters and digits in dash-separated words)"
            ),
        ));
    }
    for keyword in &raw_rule.keywords {
        if keyword.len() < 2 || !keyword.is_ascii() {
            return Err(at(
                "keywords",
                format!("`{keyword}`: a keyword is at least 2 ASCII characters"),
            ));
        }
    }
    let (hir, regex) = RuleRegex::of(raw_rule.regex.get_ref(), when).map_err(|err| {
        error(
            Some(raw_rule.regex.span()),
            format!("`rule[{index}].regex` (rule `{}`): {err}", raw_rule.id),
        )
    })?;
    let secret_group = capture_index(&hir, "secret");
    let Some(severity) = severity_of(&raw_rule.severity) else {
        return Err(at(
            "severity",
            format!(
                "`{}` is not `critical`, `high`, `medium` or `low`",
                raw_rule.severity
            ),
        ));
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
    let lead = match raw_rule.lead {
        Some(lead) => lead,
        None if starts_with_keyword(&hir, &raw_rule.keywords) => 0,
        None => max_len,
    };
    if lead > max_len {
        return Err(at(
            "lead",
            format!("{lead} is more than `max_len` ({max_len})"),
        ));
    }
    let head = match starts(&hir, 16, &[]) {
        Some(starts) if starts.iter().all(|start| !start.bytes.is_empty()) => {
            starts.into_iter().map(|start| start.bytes).collect()
        }
        _ => Vec::new(),
    };
    let allow_regex = raw_rule
        .allow_regex
        .iter()
        .map(|pattern| compile(pattern).map_err(|err| at("allow_regex", format!("{err}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
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
        head,
        origin: origin.clone(),
        gitleaks: raw_rule.gitleaks,
    })
}

/// A severity as a rule file writes it.
fn severity_of(text: &str) -> Option<Severity> {
    match text {
        "critical" => Some(Severity::Critical),
        "high" => Some(Severity::High),
        "medium" => Some(Severity::Medium),
        "low" => Some(Severity::Low),
        _ => None,
    }
}

/// A set of bytes.
pub type Bytes = [u64; 4];

/// Adds `b` to a byte set.
pub fn add_byte(set: &mut Bytes, b: u8) {
    if let Some(word) = set.get_mut(usize::from(b / 64)) {
        *word |= 1 << (b % 64);
    }
}

/// Whether a byte set holds `b`.
pub fn has_byte(set: &Bytes, b: u8) -> bool {
    set.get(usize::from(b / 64))
        .is_some_and(|word| word >> (b % 64) & 1 == 1)
}

/// The most ways a regex may start that are followed.
const MOST: usize = 64;

/// The start of some matches of a regex: the set of bytes each of its
/// first positions can hold; `open` while the regex goes on predictably
/// (no repetition seen yet).
#[derive(Clone)]
struct Start {
    bytes: Vec<Bytes>,
    open: bool,
}

/// Whether every match of `hir` begins with one of `keywords` (ASCII
/// case-insensitive). Answers no when unsure: then the rule's windows
/// reach back `max_len` bytes, slower but never wrong.
fn starts_with_keyword(hir: &Hir, keywords: &[String]) -> bool {
    let longest = keywords.iter().map(String::len).max().unwrap_or(0);
    if longest == 0 {
        return false;
    }
    let Some(starts) = starts(hir, longest, keywords) else {
        return false;
    };
    starts.iter().all(|start| start.begins_with_any(keywords))
}

impl Start {
    /// Whether this start is grown no further.
    fn done(&self, depth: usize, keywords: &[String]) -> bool {
        !self.open || self.bytes.len() >= depth || self.begins_with_any(keywords)
    }

    /// Whether every string this start stands for begins with one of
    /// `keywords` (ASCII case-insensitive).
    fn begins_with_any(&self, keywords: &[String]) -> bool {
        keywords.iter().any(|keyword| {
            self.bytes.len() >= keyword.len()
                && keyword.bytes().zip(&self.bytes).all(|(k, set)| {
                    let mut allowed = [0u64; 4];
                    for b in [k.to_ascii_lowercase(), k.to_ascii_uppercase()] {
                        add_byte(&mut allowed, b);
                    }
                    set.iter().zip(allowed).all(|(s, a)| s & !a == 0)
                })
        })
    }
}

/// The ways matches of `hir` can start, up to `depth` bytes or until they
/// begin with one of `keywords`; `None` when there are too many to list.
fn starts(hir: &Hir, depth: usize, keywords: &[String]) -> Option<Vec<Start>> {
    let single = |bytes: Vec<Bytes>, open: bool| Some(vec![Start { bytes, open }]);
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => single(Vec::new(), true),
        HirKind::Literal(literal) => single(
            literal
                .0
                .iter()
                .take(depth)
                .map(|&b| {
                    let mut set = [0u64; 4];
                    add_byte(&mut set, b);
                    set
                })
                .collect(),
            true,
        ),
        HirKind::Class(Class::Bytes(class)) => {
            // A small class (`[_.-]`) is a few alternatives, one per byte
            // and its other case, so each can meet its own keyword.
            let mut sets: Vec<Bytes> = Vec::new();
            for range in class.ranges() {
                for b in range.start()..=range.end() {
                    let lower = b.to_ascii_lowercase();
                    let index = sets
                        .iter()
                        .position(|set| has_byte(set, lower))
                        .unwrap_or_else(|| {
                            sets.push([0u64; 4]);
                            sets.len() - 1
                        });
                    if let Some(set) = sets.get_mut(index) {
                        add_byte(set, b);
                        add_byte(set, lower);
                    }
                }
            }
            if sets.len() > 4 {
                let mut all = [0u64; 4];
                for set in &sets {
                    for (word, bits) in all.iter_mut().zip(set) {
                        *word |= bits;
                    }
                }
                sets = vec![all];
            }
            Some(
                sets.into_iter()
                    .map(|set| Start {
                        bytes: vec![set],
                        open: true,
                    })
                    .collect(),
            )
        }
        HirKind::Class(Class::Unicode(_)) => None,
        HirKind::Capture(capture) => starts(&capture.sub, depth, keywords),
        HirKind::Repetition(repetition) => {
            let sub = starts(&repetition.sub, depth, keywords)?;
            let min = repetition.min as usize;
            let mut out = vec![Start {
                bytes: Vec::new(),
                open: true,
            }];
            // The copies that must be there are followed; past them the
            // count is not, except for `x?`: `x` or nothing.
            for _ in 0..min.min(depth) {
                out = then(out, &sub, depth, keywords)?;
            }
            if repetition.max != Some(repetition.min) {
                if min == 0 {
                    let once = repetition.max == Some(1);
                    out.extend(sub.into_iter().map(|start| Start {
                        open: once && start.open,
                        ..start
                    }));
                } else {
                    for start in &mut out {
                        start.open = false;
                    }
                }
            }
            Some(out)
        }
        HirKind::Alternation(subs) => {
            let mut out = Vec::new();
            for sub in subs {
                out.extend(starts(sub, depth, keywords)?);
                if out.len() > MOST {
                    return None;
                }
            }
            Some(out)
        }
        HirKind::Concat(subs) => {
            let mut out = vec![Start {
                bytes: Vec::new(),
                open: true,
            }];
            for sub in subs {
                if out.iter().all(|start| start.done(depth, keywords)) {
                    break;
                }
                out = then(out, &starts(sub, depth, keywords)?, depth, keywords)?;
            }
            Some(out)
        }
    }
}

/// `starts` followed by `next`; `None` past [`MOST`] ways.
fn then(
    starts: Vec<Start>,
    next: &[Start],
    depth: usize,
    keywords: &[String],
) -> Option<Vec<Start>> {
    let mut grown = Vec::new();
    for start in starts {
        if start.done(depth, keywords) {
            grown.push(start);
            continue;
        }
        for more in next {
            let mut bytes = start.bytes.clone();
            bytes.extend(more.bytes.iter().take(depth - bytes.len().min(depth)));
            grown.push(Start {
                bytes,
                open: more.open,
            });
        }
        if grown.len() > MOST {
            return None;
        }
    }
    Some(grown)
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
    gitleaks: Vec<String>,
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
gitleaks = ["acme-api-token"]
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
        assert_eq!(set.rules[0].gitleaks, ["acme-api-token"]);
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
            (
                "[[rule]]\nid = \"a\"\ndescription = \"d\"\ngitleaks = [\"Generic API Key\"]\nregex = \"x\"\nseverity = \"high\"\n",
                "`rule[0].gitleaks` (rule `a`): `Generic API Key` is not a rule id",
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

    /// The built-in regexes are compiled at first use, so each must
    /// compile here, and its secret group be the one the compiled regex
    /// numbers.
    #[test]
    fn every_builtin_regex_compiles_when_first_used() {
        let set = match RuleSet::builtin() {
            Ok(set) => set,
            Err(err) => panic!("{err}"),
        };
        assert!(
            set.rules.iter().all(|rule| !rule.regex.is_compiled()),
            "nothing compiled at load"
        );
        for rule in &set.rules {
            match rule.regex.get() {
                Ok(regex) => assert_eq!(
                    rule.secret_group,
                    regex
                        .group_info()
                        .to_index(regex_automata::PatternID::ZERO, "secret"),
                    "rule `{}`",
                    rule.id
                ),
                Err(err) => panic!("rule `{}`: {err}", rule.id),
            }
        }
        assert!(set.rules.iter().all(|rule| rule.regex.is_compiled()));
    }

    #[test]
    fn a_custom_files_regexes_are_compiled_as_it_loads() {
        // Parses, but its automaton is past the size limit: refused at
        // load, never at a scan.
        let text = "[[rule]]\nid = \"big\"\ndescription = \"d\"\nregex = \"(?:[a-z]{1000}){1000}\"\nseverity = \"high\"\n";
        match parse(text) {
            Ok(_) => panic!("accepted an automaton past the limit"),
            Err(err) => assert!(
                err.to_string().contains("`rule[0].regex` (rule `big`)"),
                "{err}"
            ),
        }
        match parse(
            "[[rule]]\nid = \"a\"\ndescription = \"d\"\nregex = \"x(?P<secret>y)\"\nseverity = \"high\"\n",
        ) {
            Ok(set) => assert!(set.rules.iter().all(|rule| rule.regex.is_compiled())),
            Err(err) => panic!("{err}"),
        }
    }

    fn anchored(pattern: &str, keywords: &[&str]) -> bool {
        let keywords: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        match crate::interceptors::redact::rule_regex::parse(pattern) {
            Ok(hir) => starts_with_keyword(&hir, &keywords),
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn a_regex_that_starts_with_its_keyword_is_run_anchored() {
        assert!(anchored(r"\bghp_[A-Za-z0-9]{36}\b", &["ghp_"]));
        assert!(anchored(r"(?i:\bbearer)[ \t]+\S+", &["bearer"]), "any case");
        assert!(anchored(
            r"(?i:password|passwd|pwd)\s*=",
            &["password", "passwd", "pwd"]
        ));
        assert!(
            anchored(
                r"(?:api|app)[_.-]?key=",
                &[
                    "api_key", "api.key", "api-key", "apikey", "app_key", "app.key", "app-key",
                    "appkey"
                ]
            ),
            "each way through `[_.-]?` meets its own keyword"
        );
        assert!(
            !anchored(r"[a-z]*_?key=", &["key"]),
            "the keyword is not at the start"
        );
        assert!(
            !anchored(r"(?:api|app)_?key=", &["api_key"]),
            "`appkey` starts otherwise"
        );
        assert!(!anchored(r"x?ghp_", &["ghp_"]));
        assert!(
            !anchored(r"g.p_", &["ghp_"]),
            "`.` is more than the keyword's byte"
        );
        assert!(!anchored(r"ghp_", &[]), "no keyword");
    }

    #[test]
    fn the_head_of_a_regex_lists_its_first_bytes() {
        let text = r#"
[[rule]]
id = "a"
description = "d"
keywords = ["pat"]
regex = '''\bpat[A-Za-z0-9]{3}\.x+'''
severity = "high"
"#;
        let rule = match parse(text) {
            Ok(set) => set.rules.into_iter().next(),
            Err(err) => panic!("{err}"),
        };
        let Some(rule) = rule else { panic!("no rule") };
        assert_eq!(rule.lead, 0, "found to start with its keyword");
        // p, a, t, three of [A-Za-z0-9], `.`, x: one way, eight bytes.
        assert_eq!(rule.head.len(), 1);
        assert_eq!(rule.head[0].len(), 8);
        let holds = |at: usize, b: u8| rule.head[0][at][usize::from(b) / 64] >> (b % 64) & 1 == 1;
        assert!(holds(0, b'p') && !holds(0, b'P'));
        assert!(holds(3, b'Q') && holds(5, b'7') && !holds(4, b'/'));
        assert!(holds(6, b'.') && !holds(6, b'a') && holds(7, b'x'));
    }
}
