//! gitleaks' default rules (`tests/redact/gitleaks/`): every rule id is
//! implemented by rules of ours (`gitleaks = [...]` in `rules.toml`) or
//! excluded with a reason (`exclusions.toml`), and gitleaks' own true and
//! false positives are run through the rules mapped to them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use portcullis::interceptors::redact::{Allowlist, RuleSet, Scanner};
use serde::Deserialize;

/// Recall gitleaks' true positives must reach, over every mapped rule.
const MIN_RECALL: f64 = 0.99;

fn dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redact/gitleaks")
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// gitleaks' configuration: only its rule ids matter here.
#[derive(Deserialize)]
struct Config {
    rules: Vec<ConfigRule>,
}

#[derive(Deserialize)]
struct ConfigRule {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exclusions {
    #[serde(default)]
    rule: Vec<RuleExclusion>,
    #[serde(default)]
    sample: Vec<SampleExclusion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleExclusion {
    id: String,
    reason: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Tp,
    Fp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleExclusion {
    rule: String,
    kind: Kind,
    contains: String,
    path: Option<String>,
    reason: String,
}

impl SampleExclusion {
    fn covers(&self, rule: &str, kind: Kind, sample: &Sample) -> bool {
        self.rule == rule
            && self.kind == kind
            && sample.text.contains(&self.contains)
            && self
                .path
                .as_ref()
                .is_none_or(|path| sample.path.as_ref() == Some(path))
    }
}

/// One gitleaks rule's samples, as its generator validates them.
#[derive(Deserialize)]
struct Record {
    rule: String,
    tps: Vec<Sample>,
    fps: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    text: String,
    /// For gitleaks' path-scoped rules: the file the text is in.
    path: Option<String>,
}

fn gitleaks_ids() -> Vec<String> {
    let config: Config = toml::from_str(&read("gitleaks.toml")).unwrap();
    config.rules.into_iter().map(|rule| rule.id).collect()
}

fn exclusions() -> Exclusions {
    toml::from_str(&read("exclusions.toml")).unwrap_or_else(|err| panic!("exclusions.toml: {err}"))
}

/// The built-in rules, parsed once for this file's tests.
fn builtin() -> &'static RuleSet {
    static SET: std::sync::LazyLock<RuleSet> =
        std::sync::LazyLock::new(|| RuleSet::builtin().unwrap());
    &SET
}

/// gitleaks id → the indices of the built-in rules that name it.
fn mapping(set: &RuleSet) -> BTreeMap<&str, Vec<usize>> {
    let mut map: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, rule) in set.rules.iter().enumerate() {
        for id in &rule.gitleaks {
            map.entry(id.as_str()).or_default().push(index);
        }
    }
    map
}

fn short(text: &str) -> String {
    let mut out: String = text.chars().take(140).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    format!("{out:?}")
}

#[test]
fn every_gitleaks_rule_is_mapped_or_excluded_with_a_reason() {
    let ids = gitleaks_ids();
    assert!(ids.len() >= 200, "{} gitleaks rules", ids.len());
    let known: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let set = builtin();
    let mapped = mapping(set);
    let exclusions = exclusions();
    let excluded: BTreeMap<&str, &str> = exclusions
        .rule
        .iter()
        .map(|e| (e.id.as_str(), e.reason.as_str()))
        .collect();
    let mut failures = Vec::new();
    for id in &ids {
        match (mapped.get(id.as_str()), excluded.get(id.as_str())) {
            (Some(_), Some(_)) => failures.push(format!(
                "gitleaks rule `{id}` is both mapped and excluded in exclusions.toml"
            )),
            (None, None) => failures.push(format!(
                "gitleaks rule `{id}` is neither named by a rule's `gitleaks = [...]` in \
                 rules.toml nor excluded with a reason in tests/redact/gitleaks/exclusions.toml"
            )),
            _ => {}
        }
    }
    for (id, rules) in &mapped {
        if !known.contains(id) {
            let names: Vec<&str> = rules.iter().map(|&i| &*set.rules[i].id).collect();
            failures.push(format!(
                "{names:?} name gitleaks rule `{id}`, which gitleaks' default configuration does not have"
            ));
        }
    }
    for exclusion in &exclusions.rule {
        if !known.contains(exclusion.id.as_str()) {
            failures.push(format!(
                "exclusions.toml excludes `{}`, which gitleaks does not have",
                exclusion.id
            ));
        }
        if exclusion.reason.trim().len() < 20 {
            failures.push(format!(
                "the exclusion of `{}` needs a reason",
                exclusion.id
            ));
        }
    }
    for exclusion in &exclusions.sample {
        if !mapped.contains_key(exclusion.rule.as_str()) {
            failures.push(format!(
                "exclusions.toml excludes samples of `{}`, which no rule of ours implements",
                exclusion.rule
            ));
        }
        if exclusion.reason.trim().len() < 20 {
            failures.push(format!(
                "the exclusion of {:?} samples of `{}` needs a reason",
                exclusion.kind, exclusion.rule
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Per gitleaks rule: measured, caught, excluded (true positives), measured,
/// flagged, excluded (false positives), and what went wrong.
#[derive(Default)]
struct Tally {
    tps: usize,
    caught: usize,
    tps_excluded: usize,
    caught_by_all: usize,
    fps: usize,
    flagged: usize,
    fps_excluded: usize,
    misses: Vec<String>,
}

#[test]
fn gitleaks_samples_are_caught_by_the_rules_mapped_to_them() {
    let set = builtin();
    let mapped = mapping(set);
    let exclusions = exclusions();
    let excluded_rules: BTreeSet<&str> = exclusions.rule.iter().map(|e| e.id.as_str()).collect();
    let records: Vec<Record> = serde_json::from_str(&read("samples.json")).unwrap();
    let everything = super::builtin_scanner();
    let mut used = vec![false; exclusions.sample.len()];
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut found = Vec::new();
    // The true positives measured, scanned again by every rule at the end
    // (a scanner's regex caches are per thread: alternating scanners would
    // rebuild them at every sample).
    let mut measured: Vec<(&String, &String)> = Vec::new();
    for record in &records {
        if excluded_rules.contains(record.rule.as_str()) {
            continue;
        }
        let Some(indices) = mapped.get(record.rule.as_str()) else {
            failures.push(format!(
                "samples of gitleaks rule `{}`, which no rule of ours implements",
                record.rule
            ));
            continue;
        };
        // The mapped rules alone, as gitleaks validates each rule alone.
        let scanner = Scanner::new(
            RuleSet {
                rules: indices.iter().map(|&i| set.rules[i].clone()).collect(),
                stopwords: set.stopwords.clone(),
            },
            Allowlist::default(),
        )
        .unwrap();
        let names: Vec<&str> = indices.iter().map(|&i| &*set.rules[i].id).collect();
        let tally = tallies.entry(record.rule.clone()).or_default();
        let mut exclusion = |kind: Kind, sample: &Sample| {
            let hit = exclusions
                .sample
                .iter()
                .position(|e| e.covers(&record.rule, kind, sample));
            if let Some(at) = hit {
                used[at] = true;
            }
            hit.is_some()
        };
        for sample in &record.tps {
            if exclusion(Kind::Tp, sample) {
                tally.tps_excluded += 1;
                continue;
            }
            tally.tps += 1;
            scanner.scan(sample.text.as_bytes(), &mut found);
            if found.is_empty() {
                tally
                    .misses
                    .push(format!("missed by {names:?}: {}", short(&sample.text)));
            } else {
                tally.caught += 1;
            }
            measured.push((&record.rule, &sample.text));
        }
        for sample in &record.fps {
            if exclusion(Kind::Fp, sample) {
                tally.fps_excluded += 1;
                continue;
            }
            tally.fps += 1;
            scanner.scan(sample.text.as_bytes(), &mut found);
            if let Some(finding) = found.first() {
                tally.flagged += 1;
                let message = format!(
                    "false positive flagged by `{}`: {}",
                    scanner.rule_id(finding.rule),
                    short(&sample.text)
                );
                failures.push(format!("{}: {message}", record.rule));
                tally.misses.push(message);
            }
        }
    }
    for (rule, text) in measured {
        everything.scan(text.as_bytes(), &mut found);
        if !found.is_empty()
            && let Some(tally) = tallies.get_mut(rule)
        {
            tally.caught_by_all += 1;
        }
    }
    for (exclusion, used) in exclusions.sample.iter().zip(&used) {
        if !used {
            failures.push(format!(
                "exclusions.toml: no {:?} sample of `{}` contains {:?}",
                exclusion.kind, exclusion.rule, exclusion.contains
            ));
        }
    }

    let total = |f: fn(&Tally) -> usize| tallies.values().map(f).sum::<usize>();
    let (tps, caught, caught_by_all) = (
        total(|t| t.tps),
        total(|t| t.caught),
        total(|t| t.caught_by_all),
    );
    let (fps, flagged) = (total(|t| t.fps), total(|t| t.flagged));
    let recall = caught as f64 / tps.max(1) as f64;
    let config = read("gitleaks.toml");
    let commit = config
        .split_once("gitleaks/blob/")
        .map_or("?", |(_, rest)| &rest[..rest.len().min(12)]);
    let mut table = format!(
        "gitleaks' samples (gitleaks {commit}) through the rules mapped to each gitleaks rule\n\
         {:<46} {:>9} {:>9} {:>9} {:>9}\n",
        "gitleaks rule", "caught", "excl.", "fp", "excl."
    );
    for (rule, t) in &tallies {
        let _ = writeln!(
            table,
            "{rule:<46} {:>4}/{:<4} {:>9} {:>4}/{:<4} {:>9}",
            t.caught, t.tps, t.tps_excluded, t.flagged, t.fps, t.fps_excluded
        );
    }
    let _ = writeln!(
        table,
        "{:<46} {caught:>4}/{tps:<4} {:>9} {flagged:>4}/{fps:<4} {:>9}\n\n\
         recall {recall:.4} (at least {MIN_RECALL}); false positives {flagged}/{fps}; \
         true positives redacted by the whole rule set {caught_by_all}/{tps}\n\
         excluded rules: {}\n",
        "total",
        total(|t| t.tps_excluded),
        total(|t| t.fps_excluded),
        excluded_rules
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (rule, t) in &tallies {
        for miss in &t.misses {
            let _ = writeln!(table, "{rule}: {miss}");
        }
    }
    let _ = writeln!(
        table,
        "\nexcluded samples (tests/redact/gitleaks/exclusions.toml):"
    );
    for exclusion in &exclusions.sample {
        let _ = writeln!(
            table,
            "{} {:?} containing {:?}: {}",
            exclusion.rule,
            exclusion.kind,
            exclusion.contains,
            exclusion
                .reason
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    super::report("redact-gitleaks-report.txt", &table);
    assert!(
        recall >= MIN_RECALL,
        "recall {recall:.4} on gitleaks' true positives is below {MIN_RECALL}: \
         see target/redact-gitleaks-report.txt"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
