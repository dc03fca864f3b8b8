//! What a scan finds.

/// One secret found in a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Index of the rule in the scanner.
    pub rule: u32,
    /// The secret's byte span (what redaction replaces).
    pub start: usize,
    pub end: usize,
    /// The whole match's byte span (what overlap resolution compares).
    pub match_start: usize,
    pub match_end: usize,
}
