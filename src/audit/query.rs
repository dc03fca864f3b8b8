//! Reading the log: filters, and the walk that answers a query without
//! scanning every record.
//!
//! A query intersects the postings ranges of its filters (see `index`) by
//! leapfrogging (each range seeks to the candidate of the others), bounds
//! the walk by sequence numbers found by binary search on time (record
//! times never go backwards along the chain), and checks every candidate
//! against the whole filter: the index only narrows the search, it never
//! decides an answer.

use super::index::{
    BLOCK_BITS, CLIENT, DECISION, KIND, SERVER, TARGET, index_prefix, key_seq, postings,
};
use super::reader::Reader;
use super::record::AuditRecord;
use super::{AuditError, read_error};

/// Which records a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub client: Option<String>,
    pub server: Option<String>,
    /// A tool, prompt or resource: the unprefixed name, the namespaced one
    /// (`server__tool`) or the URI.
    pub target: Option<String>,
    pub decision: Option<String>,
    /// `exchange`, `session_start`, … (DESIGN.md, "Audit record").
    pub kind: Option<String>,
    /// The identity provider that vouched for the client (`[[oauth.providers]]`
    /// name), and the token's subject.
    pub provider: Option<String>,
    pub subject: Option<String>,
    /// Timestamps in the records' own format (`YYYY-MM-DDThh:mm:ss.mmmZ`).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only records whose shadow policy set decided otherwise than the
    /// enforced one (`detail.shadow.differs`, or an answer's,
    /// `detail.answer.shadow.differs`).
    pub shadow_differs: bool,
    /// Only records after this sequence number, oldest first: the first
    /// `limit` of them (paging forward, following the log). Without it, the
    /// newest `limit` records, returned oldest first.
    pub after: Option<u64>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, record: &AuditRecord, separator: &str) -> bool {
        let target_matches = |wanted: &str| {
            record.target.as_deref() == Some(wanted)
                || match (&record.server, &record.target) {
                    (Some(server), Some(target)) => {
                        wanted
                            .strip_prefix(server.as_str())
                            .and_then(|rest| rest.strip_prefix(separator))
                            == Some(target.as_str())
                    }
                    _ => false,
                }
        };
        self.client.as_ref().is_none_or(|c| *c == record.client)
            && self
                .server
                .as_ref()
                .is_none_or(|s| Some(s) == record.server.as_ref())
            && self.target.as_deref().is_none_or(target_matches)
            && self.decision.as_ref().is_none_or(|d| *d == record.decision)
            && self.kind.as_ref().is_none_or(|k| *k == record.kind)
            && self
                .provider
                .as_ref()
                .is_none_or(|p| record.identity.as_ref().map(|i| &i.provider) == Some(p))
            && self.subject.as_ref().is_none_or(|s| {
                record.identity.as_ref().and_then(|i| i.subject.as_ref()) == Some(s)
            })
            && self.since.as_ref().is_none_or(|t| record.time >= *t)
            && self.until.as_ref().is_none_or(|t| record.time < *t)
            && self.after.is_none_or(|after| record.seq > after)
            && (!self.shadow_differs || shadow_differences(record).next().is_some())
    }
}

/// The shadow policy set's decisions a record keeps that differ from the
/// enforced one: its request's (`detail.shadow`), then that of the answer
/// to a server's question it keeps (`detail.answer.shadow`), each with
/// whether it is the answer's.
pub fn shadow_differences(
    record: &AuditRecord,
) -> impl Iterator<Item = (&serde_json::Value, bool)> {
    let detail = record.detail.as_ref();
    [("/shadow", false), ("/answer/shadow", true)]
        .into_iter()
        .filter_map(move |(at, answer)| {
            let shadow = detail?.pointer(at)?;
            (shadow.get("differs")? == &serde_json::Value::Bool(true)).then_some((shadow, answer))
        })
}

/// A filter as auditors write it (CLI flags, the admin API's query
/// string): every field text, checked by [`FilterParams::to_filter`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `YYYY-MM-DDThh:mm:ss[.mmm]Z`, or a duration ago (`15m`, `2h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `differs`: only where the shadow policy set decided otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// A filter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} `{value}`: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub value: String,
    pub message: String,
}

impl FilterParams {
    /// The filter, with times resolved against `now`; `max_limit` caps
    /// `limit` (which defaults to it).
    pub fn to_filter(
        &self,
        now: std::time::SystemTime,
        max_limit: Option<usize>,
    ) -> Result<Filter, FilterError> {
        let error = |field: &'static str, value: &str, message: String| FilterError {
            field,
            value: value.to_owned(),
            message,
        };
        let one_of = |field: &'static str, value: &Option<String>, allowed: &[&str]| match value {
            Some(text) if !allowed.contains(&text.as_str()) => Err(error(
                field,
                text,
                format!("must be one of {}", allowed.join(", ")),
            )),
            _ => Ok(value.clone()),
        };
        let time =
            |field: &'static str, value: &Option<String>| -> Result<Option<String>, FilterError> {
                let Some(text) = value else { return Ok(None) };
                if let Some(time) = crate::protocol::parse_datetime(text) {
                    return Ok(Some(super::timestamp(time)));
                }
                let ago = crate::config::parse_duration(text).map_err(|_| {
                    error(
                    field,
                    text,
                    "is neither a time like `2026-11-23T09:00:00Z` nor a duration ago like `15m`"
                        .into(),
                )
                })?;
                let time = now
                    .checked_sub(ago)
                    .ok_or_else(|| error(field, text, "reaches before 1970".into()))?;
                Ok(Some(super::timestamp(time)))
            };
        let number =
            |field: &'static str, value: &Option<String>| -> Result<Option<u64>, FilterError> {
                value
                    .as_deref()
                    .map(|text| {
                        text.parse::<u64>()
                            .map_err(|_| error(field, text, "must be a whole number".into()))
                    })
                    .transpose()
            };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(since), Some(until)) = (&since, &until)
            && since >= until
        {
            return Err(error(
                "since",
                since,
                format!("must be before until ({until})"),
            ));
        }
        let mut limit = number("limit", &self.limit)?.map(|n| n as usize);
        if let Some(max) = max_limit {
            limit = Some(limit.unwrap_or(max).min(max));
        }
        let empty = |field: &'static str, value: &Option<String>| match value {
            Some(text) if text.is_empty() => Err(error(field, text, "is empty".into())),
            _ => Ok(value.clone()),
        };
        Ok(Filter {
            client: empty("client", &self.client)?,
            server: empty("server", &self.server)?,
            target: empty("tool", &self.tool)?,
            decision: one_of("decision", &self.decision, &["allow", "deny", "error"])?,
            kind: one_of("kind", &self.kind, super::record::KINDS)?,
            provider: empty("provider", &self.provider)?,
            subject: empty("subject", &self.subject)?,
            since,
            until,
            shadow_differs: one_of("shadow", &self.shadow, &["differs"])?.is_some(),
            after: number("after", &self.after)?,
            limit,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Newest first.
    Down,
    /// Oldest first.
    Up,
}

/// The sequence numbers one filter field allows: one index range, or the
/// union of several (a target given as `server__tool` may be stored as
/// `tool` of `server`).
struct Stream {
    cursors: Vec<Cursor>,
}

impl Stream {
    /// Index postings of these prefixes (a union).
    fn postings(tree: &sled::Tree, prefixes: Vec<Vec<u8>>) -> Self {
        Self {
            cursors: prefixes
                .into_iter()
                .map(|prefix| Cursor::new(tree, prefix, true))
                .collect(),
        }
    }

    /// Every record.
    fn every(records: &sled::Tree) -> Self {
        Self {
            cursors: vec![Cursor::new(records, Vec::new(), false)],
        }
    }

    /// The nearest sequence number to `from` the stream holds (at or below
    /// it walking down, at or above it walking up).
    fn seek(&mut self, from: u64, walk: Walk) -> Result<Option<u64>, AuditError> {
        let mut best: Option<u64> = None;
        for cursor in &mut self.cursors {
            if let Some(seq) = cursor.seek(from, walk)? {
                best = Some(match (best, walk) {
                    (None, _) => seq,
                    (Some(b), Walk::Down) => b.max(seq),
                    (Some(b), Walk::Up) => b.min(seq),
                });
            }
        }
        Ok(best)
    }
}

/// A position in one key range `prefix · n`, moving one way: the records
/// tree (`n` the sequence number), or one value's postings (`n` the block,
/// each key holding many sequence numbers). Targets only move in the
/// walk's direction, so a near target is reached by stepping the open
/// iterator, a far one by a fresh seek.
struct Cursor {
    tree: sled::Tree,
    prefix: Vec<u8>,
    postings: bool,
    iter: Option<sled::Iter>,
    /// The sequence numbers of the key last read, ascending (one, for the
    /// records tree), and that key's `n`.
    current: Vec<u64>,
    current_key: Option<u64>,
    done: bool,
}

/// Keys stepped over on the open iterator before seeking afresh (1 in unit
/// tests, so that small stores exercise both).
const STEPS: u64 = if cfg!(test) { 1 } else { 16 };

impl Cursor {
    fn new(tree: &sled::Tree, prefix: Vec<u8>, postings: bool) -> Self {
        Self {
            tree: tree.clone(),
            prefix,
            postings,
            iter: None,
            current: Vec::new(),
            current_key: None,
            done: false,
        }
    }

    fn key(&self, n: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(&n.to_be_bytes());
        key
    }

    /// The `n` of the key that holds `seq`.
    fn key_of(&self, seq: u64) -> u64 {
        if self.postings {
            seq >> BLOCK_BITS
        } else {
            seq
        }
    }

    /// Reads the next key in the walk's direction into `current`.
    fn step(&mut self, walk: Walk) -> Result<bool, AuditError> {
        let Some(iter) = self.iter.as_mut() else {
            return Ok(false);
        };
        let next = match walk {
            Walk::Down => iter.next_back(),
            Walk::Up => iter.next(),
        };
        match next.transpose().map_err(read_error)? {
            Some((key, value)) => {
                self.current_key = Some(key_seq(&key));
                self.current = if self.postings {
                    postings(&key, &value)
                } else {
                    vec![key_seq(&key)]
                };
                Ok(true)
            }
            None => {
                self.done = true;
                self.current.clear();
                self.current_key = None;
                Ok(false)
            }
        }
    }

    /// In `current`, the nearest sequence number to `from`.
    fn within(&self, from: u64, walk: Walk) -> Option<u64> {
        match walk {
            Walk::Down => {
                let at = self.current.partition_point(|seq| *seq <= from);
                at.checked_sub(1).and_then(|i| self.current.get(i).copied())
            }
            Walk::Up => {
                let at = self.current.partition_point(|seq| *seq < from);
                self.current.get(at).copied()
            }
        }
    }

    fn seek(&mut self, from: u64, walk: Walk) -> Result<Option<u64>, AuditError> {
        let target = self.key_of(from);
        loop {
            if let Some(found) = self.within(from, walk) {
                return Ok(Some(found));
            }
            if self.done {
                return Ok(None);
            }
            // Past the current key: step to the next one if it is near,
            // else seek.
            let near = self
                .current_key
                .is_some_and(|key| key.abs_diff(target) <= STEPS);
            if self.iter.is_none() || !near {
                self.iter = Some(match walk {
                    Walk::Down => self.tree.range(self.key(0)..=self.key(target)),
                    Walk::Up => self.tree.range(self.key(target)..=self.key(u64::MAX)),
                });
            }
            if !self.step(walk)? {
                return Ok(None);
            }
        }
    }
}

impl Reader {
    /// The streams a filter walks (none: every record is a candidate).
    fn streams(&self, filter: &Filter, separator: &str) -> Vec<Stream> {
        let mut streams = Vec::new();
        let mut single = |tag: u8, value: &Option<String>| {
            if let Some(value) = value {
                streams.push(Stream::postings(
                    &self.index,
                    vec![index_prefix(tag, value)],
                ));
            }
        };
        single(CLIENT, &filter.client);
        single(SERVER, &filter.server);
        // `allow` is most records and is not indexed: it is checked.
        if filter.decision.as_deref() != Some("allow") {
            single(DECISION, &filter.decision);
        }
        if filter.kind.as_deref() != Some("exchange") {
            single(KIND, &filter.kind);
        }
        if let Some(wanted) = &filter.target {
            let mut prefixes = vec![index_prefix(TARGET, wanted)];
            if !separator.is_empty() {
                for (at, _) in wanted.match_indices(separator) {
                    let rest = &wanted[at + separator.len()..];
                    if !rest.is_empty() {
                        prefixes.push(index_prefix(TARGET, rest));
                    }
                }
            }
            streams.push(Stream::postings(&self.index, prefixes));
        }
        if streams.is_empty() {
            // Every record is a candidate.
            streams.push(Stream::every(&self.records));
        }
        streams
    }

    /// The next candidate from `from` that every stream holds (leapfrog).
    fn candidate(streams: &mut [Stream], from: u64, walk: Walk) -> Result<Option<u64>, AuditError> {
        let mut at = from;
        loop {
            let mut agreed = true;
            for stream in streams.iter_mut() {
                match stream.seek(at, walk)? {
                    None => return Ok(None),
                    Some(seq) if seq != at => {
                        at = seq;
                        agreed = false;
                    }
                    Some(_) => {}
                }
            }
            if agreed {
                return Ok(Some(at));
            }
        }
    }

    /// The records a filter wants, oldest first.
    pub fn query(&self, filter: &Filter, separator: &str) -> Result<Vec<AuditRecord>, AuditError> {
        let mut found = Vec::new();
        if filter.limit == Some(0) {
            return Ok(found);
        }
        let mut lo = self.first_seq()?;
        let mut hi = self.last_seq()?;
        if let Some(after) = filter.after {
            lo = lo.max(after.saturating_add(1));
        }
        if let Some(since) = &filter.since {
            lo = lo.max(self.first_at_or_after(since, lo, hi)?);
        }
        if let Some(until) = &filter.until {
            hi = hi.min(self.first_at_or_after(until, lo, hi)?.saturating_sub(1));
        }
        if lo > hi || hi == 0 {
            return Ok(found);
        }
        let walk = if filter.after.is_some() {
            Walk::Up
        } else {
            Walk::Down
        };
        let mut streams = self.streams(filter, separator);
        let mut at = if walk == Walk::Down { hi } else { lo };
        while let Some(seq) = Self::candidate(&mut streams, at, walk)? {
            if seq < lo || seq > hi {
                break;
            }
            if let Some(record) = self.get(seq)?
                && filter.matches(&record, separator)
            {
                found.push(record);
                if filter.limit.is_some_and(|limit| found.len() >= limit) {
                    break;
                }
            }
            at = match walk {
                Walk::Down if seq > 0 => seq - 1,
                Walk::Up if seq < u64::MAX => seq + 1,
                _ => break,
            };
        }
        if walk == Walk::Down {
            found.reverse();
        }
        Ok(found)
    }

    /// Pages forward through a filter: the next matches after
    /// `filter.after` (from the start when unset), at most `step`, and moves
    /// `after` past what was read. A page shorter than `step` is the last
    /// one for now (records committed later come in the next page).
    pub fn next_page(
        &self,
        filter: &mut Filter,
        separator: &str,
        step: usize,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let after = filter.after.unwrap_or(0);
        // Read first: every record up to it is checked by the query below.
        let last = self.last_seq()?;
        let page = self.query(
            &Filter {
                after: Some(after),
                limit: Some(step),
                ..filter.clone()
            },
            separator,
        )?;
        let newest = page.last().map_or(after, |record| record.seq);
        filter.after = Some(if page.len() == step {
            newest
        } else {
            newest.max(last)
        });
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::record::GENESIS;
    use super::super::tests::sample;
    use super::super::{SledStorage, Storage};
    use super::*;

    /// A record from small choices, so that filters hit and miss.
    fn record(pick: [u8; 6], second: u32) -> AuditRecord {
        let mut record = sample();
        record.client = ["alice", "bob", "carol"][pick[0] as usize % 3].into();
        record.server = [Some("fs"), Some("git"), None][pick[1] as usize % 3].map(Into::into);
        record.target = [Some("read"), Some("write"), Some("fs__read"), None][pick[2] as usize % 4]
            .map(Into::into);
        record.decision = ["allow", "allow", "deny", "error"][pick[3] as usize % 4].into();
        record.kind =
            ["exchange", "exchange", "exchange", "session_start"][pick[4] as usize % 4].into();
        record.time = format!("2026-11-23T10:{:02}:{:02}.000Z", second / 60, second % 60);
        record
    }

    fn filter(pick: [u8; 8], limit: usize) -> Filter {
        let choose = |n: u8, options: &[&str]| {
            let i = n as usize % (options.len() + 1);
            options.get(i).map(|s| (*s).to_owned())
        };
        Filter {
            client: choose(pick[0], &["alice", "bob", "nobody"]),
            server: choose(pick[1], &["fs", "git"]),
            target: choose(pick[2], &["read", "fs__read", "git__write", "write"]),
            decision: choose(pick[3], &["allow", "deny", "error"]),
            kind: choose(pick[4], &["exchange", "session_start"]),
            since: choose(
                pick[5],
                &["2026-11-23T10:00:20.000Z", "2026-11-23T10:01:00.000Z"],
            ),
            until: choose(
                pick[6],
                &["2026-11-23T10:00:40.000Z", "2026-11-23T10:05:00.000Z"],
            ),
            after: match pick[7] % 3 {
                0 => None,
                1 => Some(0),
                _ => Some(u64::from(pick[7] / 3)),
            },
            limit: Some(limit),
            ..Filter::default()
        }
    }

    /// The answer without the index: every record checked, in order.
    fn brute_force(records: &[AuditRecord], filter: &Filter) -> Vec<u64> {
        let matching: Vec<u64> = records
            .iter()
            .filter(|r| filter.matches(r, "__"))
            .map(|r| r.seq)
            .collect();
        let limit = filter.limit.unwrap_or(usize::MAX);
        if filter.after.is_some() {
            matching.into_iter().take(limit).collect()
        } else {
            let skip = matching.len().saturating_sub(limit);
            matching.into_iter().skip(skip).collect()
        }
    }

    fn stored(picks: &[([u8; 6], u32)]) -> (tempfile::TempDir, SledStorage, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut store = SledStorage::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut prev = GENESIS.to_owned();
        let mut second = 0;
        let records: Vec<AuditRecord> = picks
            .iter()
            .enumerate()
            .map(|(i, (pick, step))| {
                // Times never go backwards along the chain.
                second += step % 3;
                let mut record = record(*pick, second);
                record.seal(i as u64 + 1, &prev);
                prev.clone_from(&record.hash);
                record
            })
            .collect();
        for chunk in records.chunks(7) {
            store.append(chunk).unwrap_or_else(|e| panic!("{e}"));
        }
        (dir, store, records)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The index and the time search only narrow the walk: every
        /// query answers what checking every record would.
        #[test]
        fn indexed_queries_answer_what_a_full_scan_would(
            picks in proptest::collection::vec((any::<[u8; 6]>(), any::<u32>()), 0..300),
            filters in proptest::collection::vec((any::<[u8; 8]>(), 1usize..40), 12),
        ) {
            let (_dir, store, records) = stored(&picks);
            for (pick, limit) in filters {
                let filter = filter(pick, limit);
                let found: Vec<u64> = store
                    .query(&filter, "__")
                    .unwrap_or_else(|e| panic!("{e}"))
                    .iter()
                    .map(|r| r.seq)
                    .collect();
                prop_assert_eq!(found, brute_force(&records, &filter), "{:?}", filter);
                // Paging forward through every match gives them all, in order.
                let mut paging = Filter { limit: None, ..filter.clone() };
                let mut paged = Vec::new();
                loop {
                    let page = store
                        .reader()
                        .next_page(&mut paging, "__", 7)
                        .unwrap_or_else(|e| panic!("{e}"));
                    paged.extend(page.iter().map(|r| r.seq));
                    if page.len() < 7 {
                        break;
                    }
                }
                let everything = Filter {
                    limit: None,
                    after: Some(filter.after.unwrap_or(0)),
                    ..filter.clone()
                };
                prop_assert_eq!(paged, brute_force(&records, &everything), "{:?}", filter);
            }
        }
    }

    #[test]
    fn a_store_without_the_index_is_indexed_when_opened() {
        let picks: Vec<([u8; 6], u32)> = (0u8..50)
            .map(|i| ([i, i / 2, i / 3, i, i / 5, 0], 1))
            .collect();
        let (dir, store, records) = stored(&picks);
        store
            .reader()
            .index
            .clear()
            .unwrap_or_else(|e| panic!("{e}"));
        drop(store);
        let store = SledStorage::reopen(dir.path());
        let filter = Filter {
            client: Some("bob".into()),
            decision: Some("deny".into()),
            ..Filter::default()
        };
        let found: Vec<u64> = store
            .query(&filter, "__")
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| r.seq)
            .collect();
        assert!(!found.is_empty());
        assert_eq!(found, brute_force(&records, &filter));
    }

    #[test]
    fn filter_params_name_the_field_that_is_wrong() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let params = |f: fn(&mut FilterParams)| {
            let mut params = FilterParams::default();
            f(&mut params);
            params.to_filter(now, Some(100))
        };
        let error = |f: fn(&mut FilterParams)| match params(f) {
            Err(err) => (err.field, err.message),
            Ok(filter) => panic!("accepted {filter:?}"),
        };
        assert_eq!(error(|p| p.limit = Some("ten".into())).0, "limit");
        assert_eq!(error(|p| p.after = Some("-3".into())).0, "after");
        assert_eq!(error(|p| p.decision = Some("denied".into())).0, "decision");
        assert_eq!(error(|p| p.since = Some("last week".into())).0, "since");
        // A day the calendar does not have is no time (it was 3 March).
        let (field, message) = error(|p| p.until = Some("2026-02-31T00:00:00Z".into()));
        assert_eq!(field, "until");
        assert!(message.contains("neither a time"), "{message}");
        assert_eq!(error(|p| p.tool = Some(String::new())).0, "tool");
        let until_first = error(|p| {
            p.since = Some("1h".into());
            p.until = Some("2h".into());
        });
        assert!(until_first.1.contains("must be before"), "{until_first:?}");
        // A duration is that long before now; the limit is capped.
        let filter = params(|p| {
            p.since = Some("90s".into());
            p.until = Some("2026-11-18T21:00:00.5Z".into());
            p.limit = Some("1000000".into());
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            filter.since.as_deref(),
            Some(super::super::timestamp(now - std::time::Duration::from_secs(90)).as_str())
        );
        assert_eq!(filter.until.as_deref(), Some("2026-11-18T21:00:00.500Z"));
        assert_eq!(filter.limit, Some(100));
    }
}
