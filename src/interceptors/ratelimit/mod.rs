//! `ratelimit`: quotas per client, per client and server, and per client and
//! tool (`[ratelimit]`), on the `governor` crate's GCRA limiters.
//!
//! A request is checked against at most one rule of each level — the tool
//! level (`tools/call` of that tool), the server level (anything routed to
//! that server), the client level (every request) — and must pass all of
//! them. At each level the most specific rule wins: one that names the client
//! over one for every client. The levels are checked from the tool up, and
//! the first refusal stops: a call refused by its tool's quota does not use
//! up the client's broader budget.
//!
//! Budgets are keyed by the client's configured name (never by a string a
//! peer chose), one limiter per rule, and keys idle for longer than the
//! rule's period are pruned as calls go by, so memory stays bounded.
//!
//! The limiter is generic over its clock: the proxy runs on governor's
//! default (monotonic) clock, tests on a clock they move by hand
//! (`Ratelimit::for_test`). A type parameter rather than a `dyn Clock`:
//! the check is on every request's path, and a generic costs nothing there.

mod places;
mod shared;

pub use places::{Lease, SharedPlaces};
pub use shared::SharedError;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use serde_json::Value;

use crate::chain::{Admitting, Denial, Exchange, Interceptor, Phase, Verdict};
use crate::config::{RateRule, RateScope, RatelimitConfig, Unavailable};
use crate::protocol::{Method, code};

/// Prune idle keys once per this many checks.
const PRUNE_EVERY: u64 = 4096;

/// The rules of one level for one target: the rule for a named client, and
/// the rule for every client.
#[derive(Default)]
struct Level {
    by_client: HashMap<Arc<str>, usize>,
    anyone: Option<usize>,
}

impl Level {
    fn add(&mut self, client: &Option<String>, index: usize) {
        match client {
            Some(client) => {
                self.by_client.insert(Arc::from(client.as_str()), index);
            }
            None => self.anyone = Some(index),
        }
    }

    fn rule_for(&self, client: &str) -> Option<usize> {
        self.by_client.get(client).copied().or(self.anyone)
    }
}

/// One rule's budgets, a GCRA state per client, on the clock `C`.
type Limiter<C> = RateLimiter<
    Arc<str>,
    DefaultKeyedStateStore<Arc<str>>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

pub struct Ratelimit<C: Clock = DefaultClock> {
    rules: Vec<RateRule>,
    limiters: Vec<Limiter<C>>,
    clients: Level,
    servers: HashMap<String, Level>,
    /// server → tool → rules.
    tools: HashMap<String, HashMap<String, Level>>,
    /// The limiters' clock, for the wait a refusal reports.
    clock: C,
    checks: AtomicU64,
    /// `[ratelimit.shared]`: the budgets in Redis (checked as the chain's
    /// admission, see [`Interceptor::admit`]), and what to do while
    /// Redis does not answer.
    shared: Option<(shared::Shared, Unavailable)>,
    /// Whether Redis did not answer the last check (logged once).
    unavailable: std::sync::atomic::AtomicBool,
}

impl Ratelimit {
    /// The limiter of `config`; with `[ratelimit.shared]`, its budgets in
    /// Redis (the password read now).
    pub fn new(config: &RatelimitConfig) -> Result<Self, String> {
        let mut limit = Self::with_clock(config, DefaultClock::default());
        if let Some(shared) = &config.shared {
            limit.shared = Some((
                shared::Shared::new(shared, &config.rules)?,
                shared.on_unavailable,
            ));
        }
        Ok(limit)
    }

    /// Whether its budgets are in Redis (checked as an admission).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
}

#[cfg(test)]
impl Ratelimit<governor::clock::FakeRelativeClock> {
    /// On a clock the test moves (`clock.advance(…)`); its clones share
    /// the time, so the test keeps one and the limiters read it.
    pub(crate) fn for_test(
        config: &RatelimitConfig,
        clock: &governor::clock::FakeRelativeClock,
    ) -> Self {
        Self::with_clock(config, clock.clone())
    }
}

impl<C: Clock + Clone> Ratelimit<C> {
    fn with_clock(config: &RatelimitConfig, clock: C) -> Self {
        let mut clients = Level::default();
        let mut servers: HashMap<String, Level> = HashMap::new();
        let mut tools: HashMap<String, HashMap<String, Level>> = HashMap::new();
        let mut limiters = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            match &rule.scope {
                RateScope::Client => clients.add(&rule.client, index),
                RateScope::Server(server) => servers
                    .entry(server.clone())
                    .or_default()
                    .add(&rule.client, index),
                RateScope::Tool { server, tool } => tools
                    .entry(server.clone())
                    .or_default()
                    .entry(tool.clone())
                    .or_default()
                    .add(&rule.client, index),
            }
            limiters.push(RateLimiter::new(
                quota(rule),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ));
        }
        Self {
            rules: config.rules.clone(),
            limiters,
            clients,
            servers,
            tools,
            clock,
            checks: AtomicU64::new(0),
            shared: None,
            unavailable: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<C: Clock> Ratelimit<C> {
    /// The rules that apply to a request, most specific level first.
    fn applicable(&self, exchange: &Exchange) -> [Option<usize>; 3] {
        let context = &exchange.context;
        let client = &*context.client.name;
        let server = context.server.as_deref();
        let tool = match (&context.method, server, &context.target) {
            (Method::ToolsCall, Some(server), Some(tool)) => self
                .tools
                .get(server)
                .and_then(|tools| tools.get(tool.as_str()))
                .and_then(|level| level.rule_for(client)),
            _ => None,
        };
        let server = server
            .and_then(|server| self.servers.get(server))
            .and_then(|level| level.rule_for(client));
        [tool, server, self.clients.rule_for(client)]
    }

    fn prune(&self) {
        for limiter in &self.limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys held across all rules (for tests of pruning).
    #[doc(hidden)]
    pub fn keys(&self) -> usize {
        self.limiters.iter().map(|limiter| limiter.len()).sum()
    }
}

/// The governor quota of a rule: one call per `period / count`, up to
/// `burst` at once.
fn quota(rule: &RateRule) -> governor::Quota {
    let count = rule.quota.count.max(1);
    let interval = rule.quota.period / count;
    let burst = NonZeroU32::new(rule.quota.burst).unwrap_or(NonZeroU32::MIN);
    governor::Quota::with_period(interval)
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

impl<C> Interceptor for Ratelimit<C>
where
    C: Clock + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        "ratelimit"
    }

    /// Shared budgets: checked once the whole chain passed the request.
    fn admit<'a>(&'a self, exchange: &'a Exchange) -> Option<Admitting<'a>> {
        self.shared.as_ref()?;
        Some(self.admit_shared(exchange))
    }

    fn on_client_request(&self, exchange: &mut Exchange) -> Verdict {
        // Shared budgets are checked once the chain passed the request.
        if self.shared.is_some() || !counted(exchange) {
            return Verdict::Continue;
        }
        match self.check_locally(exchange) {
            Some(denial) => Verdict::Deny(denial),
            None => Verdict::Continue,
        }
    }
}

/// Whether a quota counts this exchange: a request toward a server, but
/// `initialize` and `ping`.
fn counted(exchange: &Exchange) -> bool {
    exchange.phase == Phase::Request
        && exchange.toward_server()
        && !exchange.context.method.before_initialize()
}

impl<C: Clock> Ratelimit<C> {
    /// The request checked against this replica's own budgets.
    fn check_locally(&self, exchange: &Exchange) -> Option<Denial> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        let client = &exchange.context.client.name;
        for index in self.applicable(exchange).into_iter().flatten() {
            if let Some(limiter) = self.limiters.get(index)
                && let Err(not_until) = limiter.check_key(client)
            {
                return Some(self.refused(index, not_until.wait_time_from(self.clock.now())));
            }
        }
        None
    }

    /// The refusal of rule `index`'s quota, to be retried after `wait`.
    fn refused(&self, index: usize, wait: std::time::Duration) -> Denial {
        // Rounded up: a client that waits what it is told is let in.
        let retry_after_ms = wait.as_nanos().div_ceil(1_000_000).max(1) as u64;
        let Some(rule) = self.rules.get(index) else {
            // Not a rule of this interceptor (cannot happen): refused all
            // the same.
            return Denial::new(code::RATE_LIMITED, "quota reached".to_owned())
                .with("retry_after_ms", retry_after_ms);
        };
        Denial::new(
            code::RATE_LIMITED,
            format!(
                "{} quota of {} reached; retry in {retry_after_ms} ms",
                rule.scope.level(),
                rule.quota
            ),
        )
        .with("retry_after_ms", retry_after_ms)
        .with("limit", rule.quota.to_string())
        .with("scope", Value::from(rule.scope.level()))
    }
}

impl<C> Ratelimit<C>
where
    C: Clock + Send + Sync + 'static,
{
    /// The request checked against the budgets the replicas share.
    fn admit_shared<'a>(&'a self, exchange: &'a Exchange) -> Admitting<'a> {
        Box::pin(async move {
            let (shared, unavailable) = self.shared.as_ref()?;
            if !counted(exchange) {
                return None;
            }
            let rules: Vec<usize> = self.applicable(exchange).into_iter().flatten().collect();
            if rules.is_empty() {
                return None;
            }
            let client = &exchange.context.client.name;
            match shared.check(client, &rules).await {
                Ok(allowed) => {
                    if self.unavailable.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "rate limits: Redis answers again: budgets are shared again"
                        );
                    }
                    allowed.map(|(index, wait)| self.refused(index, wait))
                }
                Err(err) => {
                    if !self.unavailable.swap(true, Ordering::Relaxed) {
                        match unavailable {
                            Unavailable::Refuse => {
                                tracing::error!(error = %err, "RATE LIMITS UNAVAILABLE: Redis does not answer: requests under a quota are refused (`on_unavailable = \"refuse\"`)")
                            }
                            Unavailable::Local => {
                                tracing::warn!(error = %err, "rate limits: Redis does not answer: each replica checks its own budgets (`on_unavailable = \"local\"`)")
                            }
                        }
                    }
                    match unavailable {
                        Unavailable::Local => self.check_locally(exchange),
                        Unavailable::Refuse => Some(
                            Denial::new(
                                code::RATE_LIMITED,
                                "the shared rate-limit budgets cannot be checked (Redis does not answer): refused until they can",
                            )
                            .with("unavailable", true),
                        ),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
