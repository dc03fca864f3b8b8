//! Users' tokens the proxy read from its vault (`crate::signin::known`),
//! found among a scan's findings: always redacted, whatever the rules.

use super::finding::Finding;

/// The finding's rule for a user's token the proxy read from its vault
/// (`crate::signin::known`): no rule of the set, always redacted.
pub const USER_TOKEN: u32 = u32::MAX;
/// Its id, as placeholders and records show it.
pub const USER_TOKEN_ID: &str = "user-token";

/// The users' tokens the proxy knows, found in `text`, put among the
/// findings `out` (in order): each wins over any finding it overlaps,
/// whatever that rule's priority or action, and takes in the whole of
/// what it overlaps (no part of a wider secret is left in clear).
pub(super) fn known_tokens(text: &[u8], out: &mut Vec<Finding>) {
    let known = crate::signin::known::known();
    if known.is_empty() {
        return;
    }
    let spans = known.find(text);
    if spans.is_empty() {
        return;
    }
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (mut start, mut end) in spans {
        out.retain(|finding| {
            let overlaps = finding.start < end && start < finding.end;
            if overlaps {
                start = start.min(finding.start);
                end = end.max(finding.end);
            }
            !overlaps
        });
        // Widened, it may now meet the one before.
        match merged.last_mut() {
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    out.retain(|finding| {
        !merged
            .iter()
            .any(|&(start, end)| finding.start < end && start < finding.end)
    });
    out.extend(merged.into_iter().map(|(start, end)| Finding {
        rule: USER_TOKEN,
        start,
        end,
        match_start: start,
        match_end: end,
    }));
    out.sort_unstable_by_key(|finding| finding.start);
}
