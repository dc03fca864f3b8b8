//! Brute-force defence for the HTTP listener: authentication failures are
//! counted per source (an IPv4 address or an IPv6 /64) and per presented
//! credential prefix, and a source or prefix past its quota is refused with
//! 429 before its token is even looked at; and the failures reach the
//! audit log as one record per source, endpoint and reason per interval,
//! with their count, so that no flood of them can push real records out.
//!
//! Every count lives in a bounded map: a flood from more sources than it
//! holds evicts the quietest, and its failures are recorded under `*`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::audit::AuditRecord;
use crate::config::Quota;

/// The characters of a presented token that key its per-credential count.
const CREDENTIAL_PREFIX: usize = 8;
/// How many sources (or prefixes) each count remembers.
const MAX_KEYS: usize = 16_384;
/// How many distinct (source, endpoint, reason, who) entries one interval's
/// records may have; past it, failures are counted under source `*` (and
/// no owner), so that an interval writes at most this many records plus one
/// per endpoint and reason, however many sources a flood comes from.
const MAX_ENTRIES: usize = 64;

/// Where an attempt comes from, as throttling groups it: an IPv4 address,
/// or the /64 of an IPv6 one (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    Self(IpAddr::V6(octets.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The key of a presented token's per-credential count: a hash of its
/// first characters (the token itself is never kept). A JWT's is a hash of
/// all of it: every JWT begins alike (`eyJhbGciOi…`), so a prefix would
/// put every access token in one count, which a few bad tokens would
/// close to everyone; and a JWT is not guessed character by character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credential([u8; 32]);

impl Credential {
    pub fn of(token: &str) -> Self {
        if token.starts_with("eyJ") && token.contains('.') {
            return Self::whole(token);
        }
        let end = token
            .char_indices()
            .nth(CREDENTIAL_PREFIX)
            .map_or(token.len(), |(at, _)| at);
        Self(Sha256::digest(token.as_bytes().get(..end).unwrap_or_default()).into())
    }

    /// The key of a token counted on its own: an identity provider's
    /// tokens (opaque ones share prefixes like `ory_at_` as JWTs share
    /// `eyJ`) are not guessed character by character, and a prefix's count
    /// would lock out every token that shares it.
    pub fn whole(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// A leaky bucket per key: each failure adds one; the level drains at the
/// quota's rate; a key is refused while one more failure would take its
/// level past the burst. A refused attempt adds nothing, so a source that
/// keeps trying gets exactly the quota's rate of guesses.
struct Buckets<K> {
    quota: Quota,
    levels: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn new(quota: Quota) -> Self {
        Self {
            quota,
            levels: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds for one failure to drain.
    fn interval(&self) -> f64 {
        self.quota.period.as_secs_f64() / f64::from(self.quota.count)
    }

    fn drained(&self, level: f64, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        (level - elapsed / self.interval()).max(0.0)
    }

    /// How long `key` must wait, if it is throttled now.
    fn retry_after(&self, key: &K, now: Instant) -> Option<Duration> {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        let &(level, since) = levels.get(key)?;
        let level = self.drained(level, since, now);
        // Refused when one more failure would pass the burst: the level
        // has drained a little since the last failure, and a burst's worth
        // of failures must not make room for one more.
        let over = level + 1.0 - f64::from(self.quota.burst);
        (over > 0.0).then(|| Duration::from_secs_f64((over * self.interval()).max(0.001)))
    }

    fn fail(&self, key: K, now: Instant) {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if levels.len() >= MAX_KEYS && !levels.contains_key(&key) {
            // Full: the quieter half goes (at least), drained keys first,
            // in one pass, so that a flood of new keys costs one scan per
            // MAX_KEYS / 2 of them, not one per key.
            let mut drained: Vec<f64> = levels
                .values()
                .map(|&(level, since)| self.drained(level, since, now))
                .collect();
            let middle = drained.len() / 2;
            let (_, &mut median, _) = drained.select_nth_unstable_by(middle, f64::total_cmp);
            levels.retain(|_, &mut (level, since)| self.drained(level, since, now) > median);
        }
        let entry = levels.entry(key).or_insert((0.0, now));
        entry.0 = self.drained(entry.0, entry.1, now) + 1.0;
        entry.1 = now;
    }
}

/// Why an attempt failed, for its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Failure {
    pub endpoint: &'static str,
    pub reason: &'static str,
    /// Whose token it was, when it was somebody's (`""` otherwise).
    pub who: String,
}

struct Tally {
    count: u64,
    first: SystemTime,
    last: SystemTime,
}

/// The listener's brute-force state.
pub struct Throttle {
    sources: Buckets<Source>,
    credentials: Buckets<Credential>,
    tallies: Mutex<HashMap<(String, Failure), Tally>>,
}

impl Throttle {
    pub fn new(per_source: Quota, per_credential: Quota) -> Self {
        Self {
            sources: Buckets::new(per_source),
            credentials: Buckets::new(per_credential),
            tallies: Mutex::new(HashMap::new()),
        }
    }

    /// How long an attempt from `source` with `credential` must wait, when
    /// either has used up its failures.
    pub fn retry_after(
        &self,
        source: Source,
        credential: Option<Credential>,
        now: Instant,
    ) -> Option<Duration> {
        let by_source = self.sources.retry_after(&source, now);
        let by_credential = credential.and_then(|c| self.credentials.retry_after(&c, now));
        by_source.max(by_credential)
    }

    /// Counts a failure against the source and the credential, and tallies
    /// it for the next records. A request that presented no credential
    /// guessed nothing: it is tallied, not counted (a client that first
    /// tries without a token does not use up its host's failures).
    pub fn failed(
        &self,
        source: Source,
        credential: Option<Credential>,
        failure: Failure,
        now: Instant,
    ) {
        if let Some(credential) = credential {
            self.sources.fail(source, now);
            self.credentials.fail(credential, now);
        }
        self.tally(source, failure);
    }

    /// Tallies an attempt refused without being counted (a throttled one).
    pub fn tally(&self, source: Source, failure: Failure) {
        let now = SystemTime::now();
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (source.to_string(), failure);
        if tallies.len() >= MAX_ENTRIES && !tallies.contains_key(&key) {
            key.0 = "*".into();
            key.1.who = String::new();
        }
        let tally = tallies.entry(key).or_insert(Tally {
            count: 0,
            first: now,
            last: now,
        });
        tally.count += 1;
        tally.last = now;
    }

    /// The `auth_failure` records of the interval that just ended, one per
    /// source, endpoint, reason and token owner, each with its count.
    pub fn take_records(&self) -> Vec<AuditRecord> {
        let tallies = std::mem::take(&mut *self.tallies.lock().unwrap_or_else(|p| p.into_inner()));
        let mut records: Vec<(SystemTime, AuditRecord)> = tallies
            .into_iter()
            .map(|((source, failure), tally)| {
                let mut record = AuditRecord::event("auth_failure", "deny");
                record.client = failure.who;
                record.transport = "http".into();
                record.method = failure.endpoint.to_owned();
                record.reason = Some(failure.reason.to_owned());
                record.detail = Some(serde_json::json!({
                    "source": source,
                    "count": tally.count,
                    "first": crate::audit::timestamp(tally.first),
                    "last": crate::audit::timestamp(tally.last),
                }));
                (tally.first, record)
            })
            .collect();
        records.sort_by_key(|(first, _)| *first);
        records.into_iter().map(|(_, record)| record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(count: u32, secs: u64, burst: u32) -> Quota {
        Quota {
            count,
            period: Duration::from_secs(secs),
            burst,
        }
    }

    fn failure(reason: &'static str) -> Failure {
        Failure {
            endpoint: "/mcp",
            reason,
            who: String::new(),
        }
    }

    /// A presented token (only a presented one is a guess that counts).
    fn guess() -> Option<Credential> {
        Some(Credential::of(&uuid::Uuid::new_v4().to_string()))
    }

    fn source(text: &str) -> Source {
        Source::of(text.parse().unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    #[test]
    fn a_source_is_throttled_after_its_burst_and_drains_at_the_quota_rate() {
        let throttle = Throttle::new(quota(6, 60, 3), quota(100, 60, 100));
        let start = Instant::now();
        let here = source("192.0.2.7");
        for _ in 0..3 {
            assert_eq!(throttle.retry_after(here, None, start), None);
            throttle.failed(here, guess(), failure("unknown token"), start);
        }
        // One failure drains in 10 s.
        let wait = throttle.retry_after(here, None, start);
        assert_eq!(wait.map(|w| w.as_secs()), Some(10));
        assert_eq!(
            throttle
                .retry_after(here, None, start + Duration::from_secs(4))
                .map(|w| w.as_secs()),
            Some(6)
        );
        assert_eq!(
            throttle.retry_after(here, None, start + Duration::from_secs(10)),
            None
        );
        // Another source is not affected.
        assert_eq!(throttle.retry_after(source("192.0.2.8"), None, start), None);
    }

    #[test]
    fn a_credential_prefix_is_throttled_across_sources() {
        let throttle = Throttle::new(quota(100, 60, 100), quota(2, 60, 2));
        let now = Instant::now();
        let guess = |n: u8| format!("pc_live_guess{n}");
        throttle.failed(
            source("192.0.2.1"),
            Some(Credential::of(&guess(1))),
            failure("x"),
            now,
        );
        throttle.failed(
            source("192.0.2.2"),
            Some(Credential::of(&guess(2))),
            failure("x"),
            now,
        );
        let third = Some(Credential::of(&guess(3)));
        assert!(
            throttle
                .retry_after(source("192.0.2.3"), third, now)
                .is_some()
        );
        // Another prefix from the same new source passes.
        let other = Some(Credential::of("other-token"));
        assert_eq!(throttle.retry_after(source("192.0.2.3"), other, now), None);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_their_64_and_mapped_v4_is_v4() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.1"), source("192.0.2.1"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn failures_become_one_record_per_source_and_reason_with_a_count() {
        let throttle = Throttle::new(quota(1000, 60, 1000), quota(1000, 60, 1000));
        let now = Instant::now();
        for _ in 0..300 {
            throttle.failed(source("192.0.2.1"), guess(), failure("unknown token"), now);
        }
        throttle.failed(source("192.0.2.1"), None, failure("no bearer token"), now);
        throttle.tally(source("192.0.2.2"), failure("throttled"));
        let records = throttle.take_records();
        assert_eq!(records.len(), 3);
        let count = |reason: &str| {
            records
                .iter()
                .find(|r| r.reason.as_deref() == Some(reason))
                .and_then(|r| r.detail.as_ref())
                .map(|d| (d["source"].clone(), d["count"].clone()))
        };
        assert_eq!(
            count("unknown token"),
            Some(("192.0.2.1".into(), 300.into()))
        );
        assert_eq!(count("throttled"), Some(("192.0.2.2".into(), 1.into())));
        assert!(
            throttle.take_records().is_empty(),
            "an interval is recorded once"
        );
    }

    #[test]
    fn a_flood_from_many_sources_is_bounded_in_records_and_memory() {
        let throttle = Throttle::new(quota(10, 60, 10), quota(10, 60, 10));
        let now = Instant::now();
        for n in 0..(MAX_KEYS as u32 + 500) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
            let who = format!("client-{}", n % 7);
            let failure = Failure {
                who,
                ..failure("unknown token")
            };
            throttle.failed(Source::of(ip.into()), guess(), failure, now);
        }
        assert!(throttle.sources.levels.lock().map(|l| l.len()).unwrap_or(0) <= MAX_KEYS);
        let records = throttle.take_records();
        assert_eq!(records.len(), MAX_ENTRIES + 1);
        let total: u64 = records
            .iter()
            .filter_map(|r| r.detail.as_ref()?["count"].as_u64())
            .sum();
        assert_eq!(total, u64::from(MAX_KEYS as u32 + 500));
        assert!(
            records
                .iter()
                .any(|r| r.detail.as_ref().is_some_and(|d| d["source"] == "*")
                    && r.client.is_empty())
        );
    }

    #[test]
    fn a_request_without_a_token_is_recorded_but_not_counted() {
        let throttle = Throttle::new(quota(1, 60, 1), quota(1, 60, 1));
        let now = Instant::now();
        let here = source("192.0.2.9");
        for _ in 0..5 {
            throttle.failed(here, None, failure("no bearer token"), now);
        }
        assert_eq!(throttle.retry_after(here, guess(), now), None);
        let records = throttle.take_records();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].detail.as_ref().map(|d| d["count"].clone()),
            Some(5.into())
        );
        throttle.failed(here, guess(), failure("unknown token"), now);
        assert!(throttle.retry_after(here, guess(), now).is_some());
    }

    #[test]
    fn a_full_map_sheds_its_quieter_half_at_once() {
        let buckets = Buckets::new(quota(1, 3600, 100));
        let start = Instant::now();
        for n in 0..MAX_KEYS as u32 {
            buckets.fail(n, start);
        }
        // The first thousand are louder: they stay.
        for n in 0..1000 {
            buckets.fail(n, start);
        }
        buckets.fail(u32::MAX, start);
        let levels = buckets.levels.lock().unwrap_or_else(|p| p.into_inner());
        assert!(levels.len() <= MAX_KEYS / 2 + 1, "{}", levels.len());
        assert!((0..1000).all(|n| levels.contains_key(&n)));
        assert!(levels.contains_key(&u32::MAX));
    }
}
