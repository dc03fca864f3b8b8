use super::*;
use crate::chain::{ClientIdentity, Context, Denial, Direction, Transport};
use crate::config::Quota;
use governor::clock::FakeRelativeClock;
use serde_json::json;
use std::time::Duration;

/// The limiter of `config` (no shared budgets: nothing can fail).
fn limiter(config: &RatelimitConfig) -> Ratelimit {
    match Ratelimit::new(config) {
        Ok(limit) => limit,
        Err(err) => panic!("{err}"),
    }
}

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

/// A limiter of `rules` on a fake clock, and the clock.
fn on_fake_clock(rules: Vec<RateRule>) -> (Ratelimit<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let config = RatelimitConfig {
        concurrency: Vec::new(),
        shared: None,
        rules,
    };
    (Ratelimit::for_test(&config, &clock), clock)
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

fn allowed<C: Clock + Send + Sync + 'static>(
    limit: &Ratelimit<C>,
    exchange: &mut Exchange,
) -> bool {
    match limit.see(exchange) {
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
    let limit = limiter(&RatelimitConfig {
        concurrency: Vec::new(),
        shared: None,
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
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Server("gh".into()), "1/h")]);
    assert!(allowed(&limit, &mut call("ann", "gh", "issue")));
    let denial = refused(&limit, &mut call("ann", "gh", "issue"));
    let wait = retry_after(&denial);
    assert!(wait > 3_500_000 && wait <= 3_600_000, "{wait}");
    assert_eq!(wait, 3_600_000, "no time passed: the whole hour");
    clock.advance(Duration::from_secs(600));
    let later = retry_after(&refused(&limit, &mut call("ann", "gh", "issue")));
    assert_eq!(later, 3_000_000, "ten minutes on, fifty to go");
    assert_eq!(denial.data["limit"], json!("1/h"));
    assert_eq!(denial.data["scope"], json!("server"));
    assert!(denial.reason.contains("server quota of 1/h"));
}

#[test]
fn initialize_ping_and_responses_are_not_counted() {
    let limit = limiter(&RatelimitConfig {
        concurrency: Vec::new(),
        shared: None,
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
    assert_eq!(limit.see(&mut response), Verdict::Continue);
    assert!(allowed(&limit, &mut call("ann", "gh", "issue")));
    assert!(!allowed(&limit, &mut call("ann", "gh", "issue")));
}

#[test]
fn idle_keys_are_pruned() {
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Client, "1000/s")]);
    for n in 0..100 {
        assert!(allowed(&limit, &mut call(&format!("c{n}"), "gh", "x")));
    }
    assert_eq!(limit.keys(), 100);
    limit.prune();
    assert_eq!(limit.keys(), 100, "budgets in use are kept");
    clock.advance(Duration::from_millis(20));
    limit.prune();
    assert_eq!(limit.keys(), 0, "budgets full again are forgotten");
}

/// The proxy's own clock moves: what it prunes and refills is real
/// time (every other test here runs on the fake clock).
#[test]
fn on_the_proxys_clock_idle_keys_are_pruned() {
    let limit = limiter(&RatelimitConfig {
        concurrency: Vec::new(),
        shared: None,
        rules: vec![rule(None, RateScope::Client, "1000/s")],
    });
    assert!(allowed(&limit, &mut call("ann", "gh", "x")));
    assert_eq!(limit.keys(), 1);
    std::thread::sleep(Duration::from_millis(20));
    limit.prune();
    assert_eq!(limit.keys(), 0, "budgets full again are forgotten");
}

#[test]
fn a_pruned_limiter_keeps_the_budgets_still_in_use() {
    // 10 a second: a call takes 100 ms of budget.
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Client, "10/s")]);
    for n in 0..100 {
        assert!(allowed(&limit, &mut call(&format!("c{n}"), "gh", "x")));
    }
    for _ in 0..10 {
        assert!(allowed(&limit, &mut call("busy", "gh", "x")));
    }
    assert_eq!(limit.keys(), 101);
    // Half a second on, the one-call budgets are full again; `busy`
    // has won back five calls of ten.
    clock.advance(Duration::from_millis(500));
    limit.prune();
    assert_eq!(limit.keys(), 1, "only `busy` is kept");
    for _ in 0..5 {
        assert!(allowed(&limit, &mut call("busy", "gh", "x")));
    }
    assert!(
        !allowed(&limit, &mut call("busy", "gh", "x")),
        "what `busy` used is remembered across the pruning"
    );
    // A pruned client starts afresh: its whole burst.
    for _ in 0..10 {
        assert!(allowed(&limit, &mut call("c0", "gh", "x")));
    }
    clock.advance(Duration::from_secs(3));
    limit.prune();
    assert_eq!(limit.keys(), 0);
}

#[test]
fn idle_keys_are_pruned_as_calls_go_by() {
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Client, "1000/s")]);
    for n in 0..100 {
        assert!(allowed(&limit, &mut call(&format!("c{n}"), "gh", "x")));
    }
    clock.advance(Duration::from_secs(1));
    // Every PRUNE_EVERY-th check prunes; 100 checks are made already.
    let mut exchange = call("ann", "gh", "x");
    for _ in 100..PRUNE_EVERY - 1 {
        limit.see(&mut exchange);
    }
    assert_eq!(limit.keys(), 101, "not pruned yet");
    limit.see(&mut exchange);
    assert_eq!(limit.keys(), 1, "pruned: only `ann`, just checked, is kept");
}

/// A call the limiter must refuse: its denial.
fn refused<C: Clock + Send + Sync + 'static>(
    limit: &Ratelimit<C>,
    exchange: &mut Exchange,
) -> Denial {
    match limit.see(exchange) {
        Verdict::Deny(denial) => {
            assert_eq!(denial.code, code::RATE_LIMITED);
            denial
        }
        other => panic!("not refused: {other:?}"),
    }
}

fn retry_after(denial: &Denial) -> u64 {
    match denial.data["retry_after_ms"].as_u64() {
        Some(wait) => wait,
        None => panic!("no retry_after_ms in {denial:?}"),
    }
}

/// Under a quota of `count` calls per `period`, on the fake clock, for
/// the calls `call` makes: exactly `count` pass and the next is refused
/// with the wait for one call's refill (`period / count`) as its
/// retry-after; a millisecond before that refill it is still refused,
/// at it one more call passes (and the next is refused); after a whole
/// period the whole quota is back, and no more.
fn trips_and_refills(
    limit: &Ratelimit<FakeRelativeClock>,
    clock: &FakeRelativeClock,
    call: &dyn Fn() -> Exchange,
    count: u32,
    period: Duration,
) {
    let refill = period / count;
    let refill_ms = refill.as_nanos().div_ceil(1_000_000) as u64;
    for n in 0..count {
        assert!(allowed(limit, &mut call()), "call {n} of {count}");
    }
    let denial = refused(limit, &mut call());
    assert_eq!(retry_after(&denial), refill_ms, "call {count}: {denial:?}");
    clock.advance(refill - Duration::from_millis(1));
    assert_eq!(retry_after(&refused(limit, &mut call())), 1);
    clock.advance(Duration::from_millis(1));
    assert!(allowed(limit, &mut call()), "one call's refill");
    assert_eq!(retry_after(&refused(limit, &mut call())), refill_ms);
    clock.advance(period);
    for n in 0..count {
        assert!(allowed(limit, &mut call()), "after the period, call {n}");
    }
    assert_eq!(retry_after(&refused(limit, &mut call())), refill_ms);
}

#[test]
fn a_client_that_waits_its_retry_after_is_let_in() {
    // 7 a second: one call's refill is 142.857… ms, told as 143.
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Client, "7/s")]);
    for n in 0..7 {
        assert!(allowed(&limit, &mut call("ann", "gh", "issue")), "call {n}");
    }
    let wait = retry_after(&refused(&limit, &mut call("ann", "gh", "issue")));
    assert_eq!(wait, 143);
    clock.advance(Duration::from_millis(wait));
    assert!(allowed(&limit, &mut call("ann", "gh", "issue")));
}

#[test]
fn a_client_quota_lets_its_count_through_and_refills_on_the_clock() {
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Client, "4/min")]);
    trips_and_refills(
        &limit,
        &clock,
        &|| call("ann", "gh", "issue"),
        4,
        Duration::from_secs(60),
    );
    // Each client its own budget.
    assert!(allowed(&limit, &mut call("bob", "fs", "read")));
}

#[test]
fn a_named_clients_quota_lets_its_count_through_and_refills_on_the_clock() {
    let (limit, clock) = on_fake_clock(vec![
        rule(None, RateScope::Client, "100/min"),
        rule(Some("bot"), RateScope::Client, "2/min"),
    ]);
    trips_and_refills(
        &limit,
        &clock,
        &|| call("bot", "gh", "issue"),
        2,
        Duration::from_secs(60),
    );
    for n in 0..10 {
        assert!(
            allowed(&limit, &mut call("ann", "gh", "issue")),
            "everyone else's rule: call {n}"
        );
    }
}

#[test]
fn a_server_quota_lets_its_count_through_and_refills_on_the_clock() {
    let (limit, clock) = on_fake_clock(vec![rule(None, RateScope::Server("gh".into()), "5/h")]);
    trips_and_refills(
        &limit,
        &clock,
        &|| call("ann", "gh", "issue"),
        5,
        Duration::from_secs(3600),
    );
    assert!(
        allowed(&limit, &mut call("ann", "fs", "read")),
        "another server is not under that quota"
    );
}

/// What `a_tool_quota_trips_at_exactly_its_count` (tests/guards.rs)
/// showed by waiting a second: after its period a tool's whole quota is
/// back, and no more.
#[test]
fn a_tool_quota_lets_its_count_through_and_refills_on_the_clock() {
    let (limit, clock) = on_fake_clock(vec![
        rule(
            None,
            RateScope::Tool {
                server: "example".into(),
                tool: "add".into(),
            },
            "3/s",
        ),
        rule(Some("tester"), RateScope::Client, "1000/min"),
    ]);
    trips_and_refills(
        &limit,
        &clock,
        &|| call("tester", "example", "add"),
        3,
        Duration::from_secs(1),
    );
    assert!(
        allowed(&limit, &mut call("tester", "example", "echo")),
        "another tool is not under that quota"
    );
}

#[test]
fn a_named_clients_tool_quota_lets_its_count_through_and_refills_on_the_clock() {
    let tool = || RateScope::Tool {
        server: "gh".into(),
        tool: "issue".into(),
    };
    let (limit, clock) = on_fake_clock(vec![
        rule(None, tool(), "2/min"),
        rule(Some("vip"), tool(), "3/min"),
    ]);
    trips_and_refills(
        &limit,
        &clock,
        &|| call("vip", "gh", "issue"),
        3,
        Duration::from_secs(60),
    );
    trips_and_refills(
        &limit,
        &clock,
        &|| call("ann", "gh", "issue"),
        2,
        Duration::from_secs(60),
    );
}
