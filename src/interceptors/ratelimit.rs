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

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use serde_json::Value;

use crate::chain::{Denial, Exchange, Interceptor, Phase, Verdict};
use crate::config::{RateRule, RateScope, RatelimitConfig};
use crate::protocol::code;

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

pub struct Ratelimit {
    rules: Vec<RateRule>,
    limiters: Vec<DefaultKeyedRateLimiter<Arc<str>>>,
    clients: Level,
    servers: HashMap<String, Level>,
    /// server → tool → rules.
    tools: HashMap<String, HashMap<String, Level>>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl Ratelimit {
    pub fn new(config: &RatelimitConfig) -> Self {
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
            limiters.push(RateLimiter::keyed(quota(rule)));
        }
        Self {
            rules: config.rules.clone(),
            limiters,
            clients,
            servers,
            tools,
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// The rules that apply to a request, most specific level first.
    fn applicable(&self, exchange: &Exchange) -> [Option<usize>; 3] {
        let context = &exchange.context;
        let client = &*context.client.name;
        let server = context.server.as_deref();
        let tool = match (&*context.method, server, &context.target) {
            ("tools/call", Some(server), Some(tool)) => self
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

impl Interceptor for Ratelimit {
    fn name(&self) -> &str {
        "ratelimit"
    }

    fn on_request(&self, exchange: &mut Exchange) -> Verdict {
        if exchange.phase != Phase::Request
            || !exchange.toward_server()
            || matches!(&*exchange.context.method, "initialize" | "ping")
        {
            return Verdict::Continue;
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        let client = &exchange.context.client.name;
        for index in self.applicable(exchange).into_iter().flatten() {
            if let Err(not_until) = self.limiters[index].check_key(client) {
                let wait = not_until.wait_time_from(self.clock.now());
                let rule = &self.rules[index];
                let retry_after_ms = wait.as_millis().max(1) as u64;
                return Verdict::Deny(
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
                    .with("scope", Value::from(rule.scope.level())),
                );
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{ClientIdentity, Context, Direction, Transport};
    use crate::config::Quota;
    use serde_json::json;

    fn rule(client: Option<&str>, scope: RateScope, quota: &str) -> RateRule {
        RateRule {
            client: client.map(str::to_owned),
            scope,
            quota: match quota.parse::<Quota>() {
                Ok(quota) => quota,
                Err(err) => panic!("{err}"),
            },
            key: "test".into(),
        }
    }

    fn call(client: &str, server: &str, tool: &str) -> Exchange {
        let mut context = Context::new(
            "s".into(),
            ClientIdentity::new(client, &[]),
            Transport::Http,
            "tools/call",
        );
        context.server = Some(server.into());
        context.target = Some(tool.into());
        Exchange::new(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": format!("{server}__{tool}")}}),
            Direction::ClientToServer,
            Phase::Request,
            context,
        )
    }

    fn allowed(limit: &Ratelimit, exchange: &mut Exchange) -> bool {
        match limit.on_request(exchange) {
            Verdict::Continue => true,
            Verdict::Deny(denial) => {
                assert_eq!(denial.code, code::RATE_LIMITED);
                assert!(denial.data["retry_after_ms"].as_u64().unwrap_or(0) >= 1);
                false
            }
            Verdict::Modify(_) => panic!("ratelimit never rewrites"),
        }
    }

    #[test]
    fn the_most_specific_rule_of_each_level_applies_and_every_level_is_checked() {
        let limit = Ratelimit::new(&RatelimitConfig {
            concurrency: Vec::new(),
            rules: vec![
                rule(None, RateScope::Client, "100/min"),
                rule(Some("bot"), RateScope::Client, "4/min"),
                rule(
                    None,
                    RateScope::Tool {
                        server: "gh".into(),
                        tool: "issue".into(),
                    },
                    "2/min",
                ),
                rule(
                    Some("vip"),
                    RateScope::Tool {
                        server: "gh".into(),
                        tool: "issue".into(),
                    },
                    "3/min",
                ),
            ],
        });
        // Everyone else: two issues a minute, each their own budget.
        for client in ["ann", "bob"] {
            assert!(allowed(&limit, &mut call(client, "gh", "issue")));
            assert!(allowed(&limit, &mut call(client, "gh", "issue")));
            assert!(!allowed(&limit, &mut call(client, "gh", "issue")));
            assert!(allowed(&limit, &mut call(client, "gh", "search")));
        }
        // The named client's tool rule beats the one for everyone.
        for _ in 0..3 {
            assert!(allowed(&limit, &mut call("vip", "gh", "issue")));
        }
        assert!(!allowed(&limit, &mut call("vip", "gh", "issue")));
        // The client level is checked too: `bot` has four calls in all.
        assert!(allowed(&limit, &mut call("bot", "gh", "issue")));
        assert!(allowed(&limit, &mut call("bot", "gh", "issue")));
        assert!(
            !allowed(&limit, &mut call("bot", "gh", "issue")),
            "tool quota"
        );
        assert!(allowed(&limit, &mut call("bot", "gh", "search")));
        assert!(allowed(&limit, &mut call("bot", "fs", "read")));
        assert!(
            !allowed(&limit, &mut call("bot", "fs", "read")),
            "client quota: the refused issue call did not use it up"
        );
    }

    #[test]
    fn a_refusal_says_when_to_retry_and_names_the_limit() {
        let limit = Ratelimit::new(&RatelimitConfig {
            concurrency: Vec::new(),
            rules: vec![rule(None, RateScope::Server("gh".into()), "1/h")],
        });
        assert!(allowed(&limit, &mut call("ann", "gh", "issue")));
        let Verdict::Deny(denial) = limit.on_request(&mut call("ann", "gh", "issue")) else {
            panic!("the second call in an hour is refused");
        };
        let wait = denial.data["retry_after_ms"].as_u64().unwrap_or(0);
        assert!(wait > 3_500_000 && wait <= 3_600_000, "{wait}");
        assert_eq!(denial.data["limit"], json!("1/h"));
        assert_eq!(denial.data["scope"], json!("server"));
        assert!(denial.reason.contains("server quota of 1/h"));
    }

    #[test]
    fn initialize_ping_and_responses_are_not_counted() {
        let limit = Ratelimit::new(&RatelimitConfig {
            concurrency: Vec::new(),
            rules: vec![rule(None, RateScope::Client, "1/h")],
        });
        for method in ["initialize", "ping"] {
            let mut exchange = call("ann", "gh", "issue");
            exchange.context.method = method.into();
            assert!(allowed(&limit, &mut exchange));
            assert!(allowed(&limit, &mut exchange));
        }
        let mut response = call("ann", "gh", "issue");
        response.phase = Phase::Response;
        assert_eq!(limit.on_request(&mut response), Verdict::Continue);
        assert!(allowed(&limit, &mut call("ann", "gh", "issue")));
        assert!(!allowed(&limit, &mut call("ann", "gh", "issue")));
    }

    #[test]
    fn idle_keys_are_pruned() {
        let limit = Ratelimit::new(&RatelimitConfig {
            concurrency: Vec::new(),
            rules: vec![rule(None, RateScope::Client, "1000/s")],
        });
        for n in 0..100 {
            assert!(allowed(&limit, &mut call(&format!("c{n}"), "gh", "x")));
        }
        assert_eq!(limit.keys(), 100);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limit.prune();
        assert_eq!(limit.keys(), 0, "budgets full again are forgotten");
    }
}
