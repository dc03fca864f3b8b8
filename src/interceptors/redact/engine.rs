//! The scanner: one Aho-Corasick pass over a string finds the rules whose
//! keywords occur in it; only those rules' regexes run, and only on windows
//! around the keyword hits (a match must contain one of its rule's keywords,
//! and is at most the rule's `max_len` long, so nothing outside the window
//! can be part of it).
//!
//! ```text
//!   text ──► Aho-Corasick (all keywords, one pass) ──► hits (rule, offset)
//!        ──► per rule: merged windows around its hits ──► regex ──► filters
//!            (keyword inside, allowlists, entropy, stopwords, placeholder)
//!        ──► overlaps: highest priority, then longest match, wins
//! ```

use std::cell::RefCell;
use std::collections::HashSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use regex::bytes::Regex;
use regex_automata::meta::{self, Cache};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input};

use super::keywords::Keywords;
use super::rules::{Rule, RuleSet, has_byte};

/// What a redacted secret is replaced with: `[REDACTED:<rule-id>]`.
pub const PLACEHOLDER_PREFIX: &[u8] = b"[REDACTED:";

/// A scanner that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error("cannot build the keyword automaton: {0}")]
    Keywords(#[from] aho_corasick::BuildError),
}

pub use super::finding::Finding;

/// Values that are never reported, whatever the rule (from the config).
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub exact: HashSet<Vec<u8>>,
    pub patterns: Vec<Regex>,
}

/// The compiled rule set.
#[derive(Debug)]
pub struct Scanner {
    rules: Vec<Rule>,
    keywords: Keywords,
    /// Keyword pattern → the rules that listed it.
    keyword_rules: Vec<Vec<u32>>,
    /// Rules with no keywords: they run on every string.
    unkeyed: Vec<u32>,
    stopwords: Option<AhoCorasick>,
    allow: Allowlist,
    /// This scanner's number, unique in the process.
    id: u64,
}

/// Reused buffers, one per thread.
#[derive(Default)]
struct Scratch {
    /// Per rule: its keyword hits, (rule, keyword start, keyword end).
    hits: Vec<Vec<(u32, usize, usize)>>,
    /// The rules with hits, in the order first hit.
    touched: Vec<u32>,
    found: Vec<Finding>,
    /// Per rule of the scanner `owner`: a regex's cache serves that regex
    /// only, so another scanner on this thread starts them afresh.
    captures: Vec<Option<(Captures, Cache)>>,
    owner: u64,
}

/// Tells scanners apart for [`Scratch::owner`].
static SCANNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Scanner {
    pub fn new(set: RuleSet, allow: Allowlist) -> Result<Self, ScannerError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<u32>> = Vec::new();
        let mut unkeyed = Vec::new();
        for (index, rule) in set.rules.iter().enumerate() {
            let index = index as u32;
            if rule.keywords.is_empty() {
                unkeyed.push(index);
            }
            for keyword in &rule.keywords {
                let lower = keyword.to_ascii_lowercase();
                match patterns.iter().position(|p| *p == lower) {
                    Some(at) => {
                        if let Some(rules) = keyword_rules.get_mut(at)
                            && !rules.contains(&index)
                        {
                            rules.push(index);
                        }
                    }
                    None => {
                        patterns.push(lower);
                        keyword_rules.push(vec![index]);
                    }
                }
            }
        }
        let keywords = Keywords::new(&patterns)?;
        let stopwords = if set.stopwords.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .build(&set.stopwords)?,
            )
        };
        Ok(Self {
            rules: set.rules,
            keywords,
            keyword_rules,
            unkeyed,
            stopwords,
            allow,
            id: SCANNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule a finding names (`None` for an index no rule of this
    /// scanner has).
    pub fn rule(&self, index: u32) -> Option<&Rule> {
        self.rules.get(index as usize)
    }

    /// The id of the rule a finding names, as placeholders show it.
    pub fn rule_id(&self, index: u32) -> &str {
        if index == super::vault_tokens::USER_TOKEN {
            return super::vault_tokens::USER_TOKEN_ID;
        }
        self.rule(index).map_or("secret", |rule| &rule.id)
    }

    /// Whether any keyword occurs in `text` (or some rule has none).
    pub fn may_match(&self, text: &[u8]) -> bool {
        !self.unkeyed.is_empty() || self.keywords.any(text)
    }

    /// The secrets in `text`, in order, not overlapping.
    pub fn scan(&self, text: &[u8], out: &mut Vec<Finding>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => self.scan_with(text, &mut scratch, out),
            // Re-entered on this thread (cannot happen today): fresh buffers.
            Err(_) => self.scan_with(text, &mut Scratch::default(), out),
        });
        super::vault_tokens::known_tokens(text, out);
    }

    fn scan_with(&self, text: &[u8], scratch: &mut Scratch, out: &mut Vec<Finding>) {
        let Scratch {
            hits,
            touched,
            found,
            captures,
            owner,
        } = scratch;
        if *owner != self.id {
            captures.clear();
            *owner = self.id;
        }
        for &rule in touched.iter() {
            if let Some(list) = hits.get_mut(rule as usize) {
                list.clear();
            }
        }
        touched.clear();
        found.clear();
        if hits.len() < self.rules.len() {
            hits.resize_with(self.rules.len(), Vec::new);
        }
        if captures.len() < self.rules.len() {
            captures.resize(self.rules.len(), None);
        }
        // Hits gathered per rule as they come: no sort of them all.
        self.keywords.each(text, |word, start| {
            let end = start + self.keywords.len_of(word);
            let rules = self
                .keyword_rules
                .get(word as usize)
                .map_or(&[][..], Vec::as_slice);
            for &rule in rules {
                let Some(list) = hits.get_mut(rule as usize) else {
                    continue;
                };
                if list.is_empty() {
                    touched.push(rule);
                }
                list.push((rule, start, end));
            }
        });
        if touched.is_empty() && self.unkeyed.is_empty() {
            return;
        }
        touched.sort_unstable();
        for &rule in touched.iter() {
            let (Some(list), Some(captures)) =
                (hits.get_mut(rule as usize), captures.get_mut(rule as usize))
            else {
                continue;
            };
            // In order but where two keywords' anchors sit differently.
            if !list.is_sorted() {
                list.sort_unstable();
            }
            self.run_rule(rule, text, list, captures, found);
        }
        for &rule in &self.unkeyed {
            let whole = [(rule, 0, text.len())];
            if let Some(captures) = captures.get_mut(rule as usize) {
                self.run_rule(rule, text, &whole, captures, found);
            }
        }
        resolve_overlaps(&self.rules, found, out);
    }

    /// Runs one rule's regex around its keyword hits (sorted by start).
    fn run_rule(
        &self,
        index: u32,
        text: &[u8],
        hits: &[(u32, usize, usize)],
        captures: &mut Option<(Captures, Cache)>,
        found: &mut Vec<Finding>,
    ) {
        let Some(rule) = self.rule(index) else {
            return;
        };
        let regex = match rule.regex.get() {
            Ok(regex) => regex,
            Err(err) => {
                // Cannot happen for a pattern a test compiled; were it to,
                // the text around each hit is taken as the secret (fail
                // closed), never passed unscanned.
                tracing::error!(rule = %rule.id, error = %err, "a secret rule's regex cannot be compiled; the text around its keywords is treated as a secret");
                found.extend(hits.iter().map(|&(_, start, end)| {
                    let from = start.saturating_sub(rule.lead);
                    let to = (start + rule.max_len).min(text.len()).max(end);
                    Finding {
                        rule: index,
                        start: from,
                        end: to,
                        match_start: from,
                        match_end: to,
                    }
                }));
                return;
            }
        };
        let state = captures.get_or_insert_with(|| (regex.create_captures(), regex.create_cache()));
        if rule.lead == 0 && !rule.keywords.is_empty() {
            self.run_anchored(index, regex, text, hits, state, found);
        } else {
            self.run_windows(index, regex, text, hits, state, found);
        }
    }

    /// A rule whose matches start with a keyword: the regex runs anchored
    /// at each hit, and gives up as soon as the text cannot match, a few
    /// bytes in for most hits.
    fn run_anchored(
        &self,
        index: u32,
        regex: &meta::Regex,
        text: &[u8],
        hits: &[(u32, usize, usize)],
        (captures, cache): &mut (Captures, Cache),
        found: &mut Vec<Finding>,
    ) {
        let Some(rule) = self.rule(index) else {
            return;
        };
        // Where the last match found ended: a hit inside it is part of it.
        let mut covered = 0;
        let mut previous = None;
        for &(_, at, _) in hits {
            if at < covered || previous == Some(at) {
                continue;
            }
            previous = Some(at);
            if !rule.head.is_empty()
                && !rule.head.iter().any(|head| {
                    text.len() - at >= head.len()
                        && head
                            .iter()
                            .zip(text.get(at..).unwrap_or_default())
                            .all(|(set, &b)| has_byte(set, b))
                })
            {
                continue;
            }
            // One byte more than the longest match: a match that reaches
            // it is too long and refused whole, never cut short.
            let end = (at + rule.max_len + 1).min(text.len());
            regex.search_captures_with(
                cache,
                &Input::new(text).range(at..end).anchored(Anchored::Yes),
                captures,
            );
            let Some(matched) = captures.get_match() else {
                continue;
            };
            if matched.len() > rule.max_len {
                continue;
            }
            if let Some(finding) = self.candidate(index, text, captures) {
                found.push(finding);
                covered = matched.end();
            }
        }
    }

    /// Any other rule: the regex runs on the merged windows around its
    /// hits; a match contains a keyword, is at most `max_len` long and
    /// starts at most `lead` before the keyword.
    fn run_windows(
        &self,
        index: u32,
        regex: &meta::Regex,
        text: &[u8],
        hits: &[(u32, usize, usize)],
        (captures, cache): &mut (Captures, Cache),
        found: &mut Vec<Finding>,
    ) {
        let Some(rule) = self.rule(index) else {
            return;
        };
        let span = rule.max_len;
        let unkeyed = rule.keywords.is_empty();
        // Where the regex has looked already: windows never rescan.
        let mut scanned = 0;
        let mut next = 0;
        while let Some(&(_, first_start, first_end)) = hits.get(next) {
            let window_start = first_end
                .saturating_sub(span)
                .max(first_start.saturating_sub(rule.lead))
                .max(scanned);
            let mut window_end = (first_start + span).min(text.len());
            next += 1;
            // Merge the windows of the hits that follow.
            while let Some(&(_, start, end)) = hits.get(next)
                && end
                    .saturating_sub(span)
                    .max(start.saturating_sub(rule.lead))
                    <= window_end
            {
                window_end = window_end.max((start + span).min(text.len()));
                next += 1;
            }
            let mut at = window_start;
            while at <= window_end {
                regex.search_captures_with(
                    cache,
                    &Input::new(text).range(at..window_end),
                    captures,
                );
                let Some(matched) = captures.get_match() else {
                    break;
                };
                let (match_start, match_end) = (matched.start(), matched.end());
                // A match that reaches the window's end may go on past it:
                // widen the window and look again from the same place.
                if match_end == window_end && window_end < text.len() {
                    window_end = (window_end + span).min(text.len());
                    continue;
                }
                let contains_keyword = unkeyed
                    || (hits.get(hits.partition_point(|hit| hit.1 < match_start)..))
                        .unwrap_or_default()
                        .iter()
                        .take_while(|hit| hit.1 <= match_start + rule.lead)
                        .any(|hit| hit.2 <= match_end);
                let finding = if match_end - match_start <= span && contains_keyword {
                    self.candidate(index, text, captures)
                } else {
                    None
                };
                match finding {
                    // From the secret's end, not the match's: what the match
                    // took after it (a line feed, a space) may begin the
                    // next one (`--token A\n--token B`).
                    Some(finding) => {
                        at = finding.end.max(match_start + 1);
                        found.push(finding);
                    }
                    // A rejected candidate may hide a real one that starts
                    // inside it (`password: DB_PASSWORD=…`): look again
                    // from the next byte, not from its end.
                    None => at = match_start + 1,
                }
            }
            scanned = window_end.max(at.min(text.len()));
        }
    }

    /// The match in `captures` as a finding, if its secret passes the
    /// filters.
    fn candidate(&self, index: u32, text: &[u8], captures: &Captures) -> Option<Finding> {
        let rule = self.rule(index)?;
        let matched = captures.get_match()?;
        let secret = match rule.secret_group {
            Some(group) => captures.get_group(group)?,
            None => matched.span(),
        };
        let bytes = text.get(secret.start..secret.end)?;
        (secret.start < secret.end && self.reportable(rule, bytes)).then(|| Finding {
            rule: index,
            start: secret.start,
            end: secret.end,
            match_start: matched.start(),
            match_end: matched.end(),
        })
    }

    /// The filters a candidate secret must pass.
    fn reportable(&self, rule: &Rule, secret: &[u8]) -> bool {
        if memchr::memmem::find(secret, PLACEHOLDER_PREFIX).is_some() {
            return false;
        }
        if rule.allow.contains(secret) || self.allow.exact.contains(secret) {
            return false;
        }
        if rule.allow_regex.iter().any(|r| r.is_match(secret))
            || self.allow.patterns.iter().any(|r| r.is_match(secret))
        {
            return false;
        }
        if let Some(minimum) = rule.entropy
            && entropy(secret) < minimum
        {
            return false;
        }
        if rule.stopwords
            && let Some(stopwords) = &self.stopwords
            && stopwords.is_match(secret)
        {
            return false;
        }
        true
    }

    /// The keyword pass alone (for the benchmarks): how many keyword hits
    /// `text` has.
    #[doc(hidden)]
    pub fn keyword_hits(&self, text: &[u8]) -> usize {
        let mut count = 0;
        self.keywords.each(text, |_, _| count += 1);
        count
    }

    /// Every rule's regex over the whole text, with the same filters: the
    /// baseline the benchmarks compare the keyword prefilter against.
    #[doc(hidden)]
    pub fn scan_every_rule(&self, text: &[u8], out: &mut Vec<Finding>) {
        out.clear();
        let mut found = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let index = index as u32;
            let Ok(regex) = rule.regex.get() else {
                continue;
            };
            let mut captures = regex.create_captures();
            let mut at = 0;
            while at <= text.len() {
                regex.search_captures(&Input::new(text).range(at..), &mut captures);
                let Some(m) = captures.get_match() else {
                    break;
                };
                let matched = text.get(m.start()..m.end()).unwrap_or_default();
                let contains_keyword = rule.keywords.is_empty()
                    || rule.keywords.iter().any(|k| {
                        matched
                            .windows(k.len())
                            .take(rule.lead + 1)
                            .any(|w| w.eq_ignore_ascii_case(k.as_bytes()))
                    });
                let finding = if m.len() <= rule.max_len && contains_keyword {
                    self.candidate(index, text, &captures)
                } else {
                    None
                };
                match finding {
                    Some(finding) => {
                        at = finding.end.max(m.start() + 1);
                        found.push(finding);
                    }
                    None => at = m.start() + 1,
                }
            }
        }
        resolve_overlaps(&self.rules, &mut found, out);
    }

    /// `text` with every finding's secret replaced by its placeholder.
    /// `findings` are in order and do not overlap (as [`Scanner::scan`]
    /// returns them).
    pub fn redact(&self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        for finding in findings {
            // Secret spans come from byte regexes: widen them to character
            // boundaries so the result stays valid UTF-8.
            let mut start = finding.start.max(copied);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = finding.end.min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if start < copied || end <= start {
                continue;
            }
            out.push_str(text.get(copied..start).unwrap_or_default());
            out.push_str("[REDACTED:");
            out.push_str(self.rule_id(finding.rule));
            out.push(']');
            copied = end;
        }
        out.push_str(text.get(copied..).unwrap_or_default());
        out
    }
}

impl Scanner {
    /// `bytes` with every finding's secret replaced by its placeholder (for
    /// decoded binary fields; no character boundaries to keep).
    pub fn redact_bytes(&self, bytes: &[u8], findings: &[Finding]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        for finding in findings {
            let (start, end) = (finding.start.max(copied), finding.end.min(bytes.len()));
            if end <= start {
                continue;
            }
            out.extend_from_slice(bytes.get(copied..start).unwrap_or_default());
            out.extend_from_slice(PLACEHOLDER_PREFIX);
            out.extend_from_slice(self.rule_id(finding.rule).as_bytes());
            out.push(b']');
            copied = end;
        }
        out.extend_from_slice(bytes.get(copied..).unwrap_or_default());
        out
    }
}

/// Keeps the best of findings whose secrets overlap: highest priority, then
/// longest match, then the rule defined first. `out` ends up in text order.
fn resolve_overlaps(rules: &[Rule], found: &mut Vec<Finding>, out: &mut Vec<Finding>) {
    out.clear();
    if found.len() <= 1 {
        out.append(found);
        return;
    }
    found.sort_unstable_by(|a, b| {
        let priority = |f: &Finding| rules.get(f.rule as usize).map(|rule| rule.priority);
        priority(b)
            .cmp(&priority(a))
            .then((b.match_end - b.match_start).cmp(&(a.match_end - a.match_start)))
            .then(a.rule.cmp(&b.rule))
            .then(a.match_start.cmp(&b.match_start))
    });
    // Secrets compete, not their context: two matches that overlap only in
    // context (`password: Server=…;Password=…`) both stand, so whatever a
    // first pass leaves is what a second pass would find too.
    for finding in found.drain(..) {
        let overlaps = out
            .iter()
            .any(|kept: &Finding| finding.start < kept.end && kept.start < finding.end);
        if !overlaps {
            out.push(finding);
        }
    }
    out.sort_unstable_by_key(|f| f.start);
}

/// Shannon entropy in bits per byte.
pub fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        if let Some(count) = counts.get_mut(usize::from(b)) {
            *count += 1;
        }
    }
    let len = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn scanner(rules: &str) -> Scanner {
        let set = match RuleSet::parse(rules, Path::new("t.toml")) {
            Ok(set) => set,
            Err(err) => panic!("{err}"),
        };
        match Scanner::new(set, Allowlist::default()) {
            Ok(s) => s,
            Err(err) => panic!("{err}"),
        }
    }

    const RULES: &str = r#"
stopwords = ["example"]
[[rule]]
id = "tok"
description = "a token"
keywords = ["tok_"]
regex = '''\btok_[a-z0-9]{12}\b'''
severity = "high"
[[rule]]
id = "tok-ant"
description = "a more specific token"
keywords = ["tok_ant"]
regex = '''\btok_ant[a-z0-9]{5}\b'''
severity = "high"
priority = 5
[[rule]]
id = "generic"
description = "assignment"
keywords = ["secret"]
regex = '''(?i)secret\s*[:=]\s*(?P<secret>[^\s"'\[\]]{8,})'''
entropy = 2.5
stopwords = true
severity = "medium"
priority = -10
"#;

    fn ids(s: &Scanner, text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        s.scan(text.as_bytes(), &mut out);
        out.iter()
            .map(|f| {
                (
                    s.rule_id(f.rule).to_string(),
                    text[f.start..f.end].to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn scanners_sharing_a_thread_keep_their_own_regexes() {
        // Rule 0 of each is another regex under the same keyword: a cache
        // built for one must never serve the other.
        let rules = |id: &str, tail: &str| {
            format!(
                "[[rule]]\nid = \"{id}\"\ndescription = \"x\"\nkeywords = [\"tok_\"]\n\
                 regex = '''\\btok_{tail}\\b'''\nseverity = \"high\"\n"
            )
        };
        let digits = scanner(&rules("digits", "[0-9]{12}"));
        let letters = scanner(&rules("letters", "(?P<secret>[a-z]{12})(?:_[a-z]{4})?"));
        for _ in 0..3 {
            assert_eq!(
                ids(&digits, "a tok_123456789012 tok_abcdefghijkl"),
                [("digits".into(), "tok_123456789012".into())]
            );
            assert_eq!(
                ids(&letters, "a tok_123456789012 tok_abcdefghijkl_mnop"),
                [("letters".into(), "abcdefghijkl".into())]
            );
        }
    }

    #[test]
    fn finds_filters_and_resolves_overlaps() {
        let s = scanner(RULES);
        assert_eq!(
            ids(&s, "a tok_abc123def456 b TOK_ANTq1w2e"),
            [("tok".into(), "tok_abc123def456".into())],
            "keywords are case-insensitive but the regex decides"
        );
        assert_eq!(
            ids(&s, "tok_antq1w2e"),
            [("tok-ant".into(), "tok_antq1w2e".into())]
        );
        assert_eq!(
            ids(&s, "secret=tok_abc123def456"),
            [("tok".into(), "tok_abc123def456".into())],
            "the specific rule beats the generic one on the same text"
        );
        assert_eq!(
            ids(&s, "secret = Zx9-Qw7!pLm2"),
            [("generic".into(), "Zx9-Qw7!pLm2".into())]
        );
        assert!(ids(&s, "secret = aaaaaaaaaaaa").is_empty(), "entropy gate");
        assert!(ids(&s, "secret = myExample99x").is_empty(), "stopword");
        assert!(ids(&s, "secret = [REDACTED:tok]").is_empty(), "placeholder");
        assert_eq!(
            ids(&s, "secret: an-example-SECRET=Zx9-Qw7!pLm2"),
            [("generic".into(), "Zx9-Qw7!pLm2".into())],
            "a rejected candidate does not hide the real one inside it"
        );
    }

    #[test]
    fn windows_grow_for_long_matches_and_do_not_cut_tokens() {
        let s = scanner(
            r#"
[[rule]]
id = "long"
description = "long"
keywords = ["lng_"]
regex = '''\blng_[a-z]{10,}\b'''
severity = "low"
max_len = 16
"#,
        );
        // A match longer than `max_len` is refused whole, never cut short.
        let long = format!("x lng_{} y", "q".repeat(100));
        assert!(ids(&s, &long).is_empty());
        assert_eq!(
            ids(&s, "x lng_qqqqqqqqqq y"),
            [("long".into(), "lng_qqqqqqqqqq".into())]
        );
        // A keyword far into a long word: the window starts inside the word,
        // and `\b` still sees the letters before it.
        let inside = format!("{}lng_abcdefghijk", "z".repeat(50));
        assert!(ids(&s, &inside).is_empty());
    }

    #[test]
    fn redaction_replaces_only_the_secret() {
        let s = scanner(RULES);
        let text = "use tok_abc123def456 and secret: Zx9-Qw7!pLm2 ok";
        let mut found = Vec::new();
        s.scan(text.as_bytes(), &mut found);
        assert_eq!(
            s.redact(text, &found),
            "use [REDACTED:tok] and secret: [REDACTED:generic] ok"
        );
    }

    #[test]
    fn entropy_is_bits_per_byte() {
        assert_eq!(entropy(b""), 0.0);
        assert_eq!(entropy(b"aaaa"), 0.0);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
