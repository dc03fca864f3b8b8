//! A detection rule's regex, compiled when it is first needed.

use std::sync::{Arc, OnceLock};

use regex_automata::meta;
use regex_syntax::hir::{Hir, HirKind};

/// A rule's regex, compiled when a scan first needs it. The built-in set's
/// 314 automata held some 13 MiB from start-up, most of them for rules no
/// message ever meets. Its patterns are part of the binary and a test
/// compiles each of them; a custom file's are compiled as it loads, so a
/// pattern the compiler refuses is refused there, never at a scan.
#[derive(Debug, Clone)]
pub struct RuleRegex {
    pattern: Arc<str>,
    /// Shared by the clones of the rule: each compiles it once at most.
    compiled: Arc<OnceLock<Result<meta::Regex, String>>>,
}

impl RuleRegex {
    /// A rule's pattern parsed (an error if it does not parse) and,
    /// when `when` says so, compiled.
    pub(super) fn of(pattern: &str, when: Compile) -> Result<(Hir, Self), String> {
        let hir = parse(pattern)?;
        let regex = match when {
            Compile::Now => Self::now(pattern, &hir)?,
            Compile::Lazily => Self::lazy(pattern),
        };
        Ok((hir, regex))
    }

    /// Compiled on first use.
    fn lazy(pattern: &str) -> Self {
        Self {
            pattern: Arc::from(pattern),
            compiled: Arc::new(OnceLock::new()),
        }
    }

    /// Compiled now, from its parsed form; an error if it cannot be.
    fn now(pattern: &str, hir: &Hir) -> Result<Self, String> {
        let regex = scanner_regex(hir)?;
        Ok(Self {
            pattern: Arc::from(pattern),
            compiled: Arc::new(OnceLock::from(Ok(regex))),
        })
    }

    /// The compiled regex (compiling it if no scan has yet), or why it
    /// cannot be compiled.
    pub fn get(&self) -> Result<&meta::Regex, &str> {
        self.compiled
            .get_or_init(|| parse(&self.pattern).and_then(|hir| scanner_regex(&hir)))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Whether it has been compiled yet.
    #[cfg(test)]
    pub(super) fn is_compiled(&self) -> bool {
        self.compiled.get().is_some()
    }
}

/// When a rule file's regexes are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compile {
    /// As the file loads: a custom file, whose patterns no test has seen.
    Now,
    /// At first use: the built-in set.
    Lazily,
}

/// The index of the capture group called `name` (as the compiled regex
/// numbers its groups: the whole match is 0).
pub(super) fn capture_index(hir: &Hir, name: &str) -> Option<usize> {
    match hir.kind() {
        HirKind::Capture(capture) => {
            if capture.name.as_deref() == Some(name) {
                usize::try_from(capture.index).ok()
            } else {
                capture_index(&capture.sub, name)
            }
        }
        HirKind::Repetition(repetition) => capture_index(&repetition.sub, name),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().find_map(|sub| capture_index(sub, name))
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => None,
    }
}

/// A rule's parsed regex, built for the scanner (its automaton bounded).
fn scanner_regex(hir: &Hir) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(1 << 22))
                .utf8_empty(false),
        )
        .build_from_hir(hir)
        .map_err(|err| err.to_string())
}

/// A rule's regex parsed: bytes, ASCII classes (as `rules::compile` builds a rule's allow patterns).
pub(super) fn parse(pattern: &str) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(|err| err.to_string())
}
