//! A circuit breaker per upstream (each server, and each client's instance
//! of a per-client server). When `failures` clients' calls in a row fail
//! (timed out, the server unreachable or answering an HTTP error other than
//! 401 and 403, which refuse a credential, not the server's failing; a failed
//! start), the proxy asks the server something of its own (`ping`, or
//! `server/discover` for a 2026-07-28 server) within the call timeout:
//! only if that fails too does the breaker open. While it is open, calls
//! are refused at once; after each `cool_down` the proxy asks again, and an
//! answer closes it. A reply of any kind to a client's call, a JSON-RPC
//! error included, is an answer and resets the count.
//!
//! Why the proxy's own question decides, not the calls: a client can make
//! its own calls fail (a slow tool, a body the server refuses), and a
//! breaker those failures opened, or a probe such a client took, would shut
//! the server off for every other client. A server that answers the proxy
//! is not failing, whatever one client's calls do.
//!
//! The breaker only keeps the state ([`Breaker::admit`], [`Admitted`]'s
//! settle, [`Breaker::checked`], [`Breaker::probed`]); `client.rs` asks the
//! server and reports each change (opened, closed) once.

use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::UpstreamError;
use super::calls::Shared;
use super::events::{Status, UpstreamEvent};
use crate::config::BreakerConfig;
use crate::protocol::{self, Method};

/// The breaker of one upstream.
#[derive(Debug)]
pub(super) struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// Calls go through; `failures` in a row so far, of the calls let
    /// through since it last closed (`generation`). `checking`: the proxy
    /// is asking the server whether it answers.
    Closed {
        failures: u32,
        generation: u64,
        checking: bool,
    },
    /// Calls are refused; at `until` the proxy asks the server again.
    Open { until: Instant, generation: u64 },
}

/// Whether the breaker is open, for metrics, health and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Refusing calls until the server answers the proxy again.
    Open,
}

/// A change of the breaker's, to be recorded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerChange {
    /// Opened: `failures` calls in a row failed, the last as `last` says,
    /// and the server did not answer the proxy either.
    Opened { failures: u32, last: String },
    /// Closed again: the server answered the proxy.
    Closed,
}

/// What the caller does after a call was settled.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Nothing,
    /// The failures reached the threshold: ask the server whether it
    /// answers, and tell [`Breaker::checked`].
    Check {
        failures: u32,
        last: String,
    },
}

/// A call the breaker let through; settled with how it went. Dropped
/// without being settled (its client cancelled it), it counts for nothing.
#[must_use = "settle it with how the call went"]
#[derive(Debug)]
pub struct Admitted {
    /// `None`: the breaker is off.
    generation: Option<u64>,
}

impl Breaker {
    pub(super) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed {
                failures: 0,
                generation: 0,
                checking: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether it is open.
    pub(super) fn current(&self) -> BreakerState {
        match *self.state() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
        }
    }

    /// When the proxy asks an open breaker's server again (`None`: closed).
    pub(super) fn next_probe(&self) -> Option<Instant> {
        match *self.state() {
            State::Open { until, .. } => Some(until),
            State::Closed { .. } => None,
        }
    }

    /// A call to `server` let through, or refused at once while the
    /// breaker is open (the refusal says for how long).
    pub(super) fn admit(&self, server: &str) -> Result<Admitted, UpstreamError> {
        if self.config.failures == 0 {
            return Ok(Admitted { generation: None });
        }
        match *self.state() {
            State::Closed { generation, .. } => Ok(Admitted {
                generation: Some(generation),
            }),
            State::Open { until, .. } => Err(UpstreamError::BreakerOpen {
                server: server.to_owned(),
                left: until.saturating_duration_since(Instant::now()),
                failures: self.config.failures,
            }),
        }
    }

    /// How a call it let through went: `Some(error)` if it failed.
    fn settle(&self, generation: u64, failed: Option<&UpstreamError>) -> Next {
        let mut state = self.state();
        let State::Closed {
            failures,
            generation: now,
            checking,
        } = &mut *state
        else {
            // Let through before it opened: the proxy's question decides.
            return Next::Nothing;
        };
        // Let through before it last opened: counts for nothing now.
        if *now != generation {
            return Next::Nothing;
        }
        match failed {
            None => {
                *failures = 0;
                Next::Nothing
            }
            // Neither an answer nor the server's failure: nothing learnt.
            Some(error) if !counts(error) => Next::Nothing,
            Some(error) => {
                *failures = failures.saturating_add(1);
                if *failures < self.config.failures || *checking {
                    return Next::Nothing;
                }
                *checking = true;
                Next::Check {
                    failures: *failures,
                    last: error.to_string(),
                }
            }
        }
    }

    /// Whether the server answered the proxy's question after the failures
    /// reached the threshold: not answered, the breaker opens.
    pub(super) fn checked(
        &self,
        answered: bool,
        (failures, last): (u32, String),
    ) -> Option<BreakerChange> {
        let mut state = self.state();
        let State::Closed {
            failures: count,
            generation,
            checking,
        } = &mut *state
        else {
            return None;
        };
        *checking = false;
        // Answered, or a call was answered while the proxy asked (a server
        // that serves one request at a time answers the proxy only after
        // the slow calls before it): the calls failed, not the server.
        if answered || *count == 0 {
            *count = 0;
            return None;
        }
        *state = State::Open {
            until: Instant::now() + self.config.cool_down,
            generation: *generation,
        };
        Some(BreakerChange::Opened { failures, last })
    }

    /// Whether the server answered the proxy's question while the breaker
    /// was open: answered, it closes; not, it stays open a cool-down more.
    pub(super) fn probed(&self, answered: bool) -> Option<BreakerChange> {
        let mut state = self.state();
        let State::Open { generation, .. } = *state else {
            return None;
        };
        if answered {
            *state = State::Closed {
                failures: 0,
                generation: generation.wrapping_add(1),
                checking: false,
            };
            return Some(BreakerChange::Closed);
        }
        *state = State::Open {
            until: Instant::now() + self.config.cool_down,
            generation,
        };
        None
    }
}

/// What follows a check the failures asked for, on a task of its own: the
/// server asked whether it answers; not answered, the breaker opens, and
/// the server is asked again after each cool-down until it answers. Each
/// change is told to the gateway once (an [`UpstreamEvent::Breaker`]).
/// Holds neither the breaker nor the server: one that is gone (a reload
/// replaced it) ends it.
pub(super) async fn watch(
    breaker: Weak<Breaker>,
    shared: Weak<Shared>,
    timeout: Duration,
    failed: (u32, String),
) {
    let answered = answers(&shared, timeout).await;
    let Some(change) = breaker
        .upgrade()
        .and_then(|breaker| breaker.checked(answered, failed))
    else {
        return;
    };
    tell(&shared, change).await;
    loop {
        let Some(until) = breaker.upgrade().and_then(|breaker| breaker.next_probe()) else {
            return;
        };
        tokio::time::sleep_until(until).await;
        // Stopped by the proxy (idle, or a reload took it out): not started
        // again to be asked; its next call starts it afresh, closed.
        if stopped(&shared) {
            if let Some(change) = breaker.upgrade().and_then(|breaker| breaker.probed(true)) {
                tell(&shared, change).await;
            }
            return;
        }
        let answered = answers(&shared, timeout).await;
        let Some(breaker) = breaker.upgrade() else {
            return;
        };
        if let Some(change) = breaker.probed(answered) {
            tell(&shared, change).await;
            return;
        }
    }
}

/// Whether the server answers a question of the proxy's own within
/// `timeout` (all of it, a wait for the server to run included): `ping`, or `server/discover` for a 2026-07-28 server (which
/// has no `ping`). An error it answers with is an answer.
async fn answers(shared: &Weak<Shared>, timeout: Duration) -> bool {
    let Some(shared) = shared.upgrade() else {
        return false;
    };
    let method = if shared.era.stateless() {
        Method::ServerDiscover
    } else {
        Method::Ping
    };
    let request = protocol::request(Value::Null, method.as_str(), json!({}));
    let asked = shared.begin(request, None).send_and_wait(timeout);
    matches!(tokio::time::timeout(timeout, asked).await, Ok(Ok(_)))
}

/// Whether the proxy stopped the server on purpose (idle, or taken out by
/// a reload); gone counts as stopped.
fn stopped(shared: &Weak<Shared>) -> bool {
    shared
        .upgrade()
        .is_none_or(|shared| matches!(*shared.status.borrow(), Status::Stopped))
}

async fn tell(shared: &Weak<Shared>, change: BreakerChange) {
    if let Some(shared) = shared.upgrade() {
        let source = shared.source();
        let _ = shared
            .events
            .send(UpstreamEvent::Breaker { source, change })
            .await;
    }
}

/// Whether an error is the server's failure (what counts towards the
/// threshold): it timed out, could not be reached or answered an HTTP
/// error, did not start, or refused the handshake. Not the proxy's own
/// refusals, nor a client's missing token.
fn counts(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Timeout { .. }
        | UpstreamError::Unavailable { .. }
        | UpstreamError::Start { .. }
        | UpstreamError::Handshake { .. } => true,
        UpstreamError::NeedsClient { .. }
        | UpstreamError::SignInNeeded { .. }
        | UpstreamError::Rejected { .. }
        | UpstreamError::Refused { .. }
        | UpstreamError::NotGranted { .. }
        | UpstreamError::BreakerOpen { .. } => false,
    }
}

impl Admitted {
    /// How the call went on `breaker`: `Some(error)` if it failed.
    pub(super) fn settle(self, breaker: &Breaker, failed: Option<&UpstreamError>) -> Next {
        match self.generation {
            Some(generation) => breaker.settle(generation, failed),
            None => Next::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            failures,
            cool_down: Duration::from_secs(30),
        })
    }

    fn timeout() -> UpstreamError {
        UpstreamError::Timeout {
            server: "s".into(),
            after: Duration::from_secs(3),
        }
    }

    fn fail(breaker: &Breaker) -> Next {
        breaker
            .admit("s")
            .unwrap()
            .settle(breaker, Some(&timeout()))
    }

    fn opened(breaker: &Breaker) {
        let Next::Check { failures, last } = fail(breaker) else {
            panic!("no check at the threshold")
        };
        assert!(breaker.checked(false, (failures, last)).is_some());
        assert_eq!(breaker.current(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_failures_in_a_row_ask_the_server_and_only_its_silence_opens_it() {
        let b = breaker(3);
        assert_eq!(fail(&b), Next::Nothing);
        assert_eq!(fail(&b), Next::Nothing);
        // An answer between resets the count.
        assert_eq!(b.admit("s").unwrap().settle(&b, None), Next::Nothing);
        assert_eq!(fail(&b), Next::Nothing);
        assert_eq!(fail(&b), Next::Nothing);
        let Next::Check { failures, last } = fail(&b) else {
            panic!("no check at the threshold")
        };
        assert_eq!(failures, 3);
        assert!(last.contains("did not answer within 3s"), "{last}");
        // Asked once while the question is out.
        assert_eq!(fail(&b), Next::Nothing);
        // The server answers the proxy: the calls failed, not the server.
        assert_eq!(b.checked(true, (failures, last.clone())), None);
        // It does not, but a call was answered while the proxy asked (a
        // server that serves one request at a time): not opened either.
        for _ in 0..2 {
            assert_eq!(fail(&b), Next::Nothing);
        }
        let Next::Check { failures, last } = fail(&b) else {
            panic!("no check at the threshold")
        };
        assert_eq!(b.admit("s").unwrap().settle(&b, None), Next::Nothing);
        assert_eq!(b.checked(false, (failures, last)), None);
        assert_eq!(b.current(), BreakerState::Closed);
        assert_eq!(b.current(), BreakerState::Closed);
        assert!(b.admit("s").is_ok());
        // It does not: open, once.
        for _ in 0..2 {
            assert_eq!(fail(&b), Next::Nothing);
        }
        let Next::Check { failures, last } = fail(&b) else {
            panic!("no check at the threshold")
        };
        assert_eq!(
            b.checked(false, (failures, last.clone())),
            Some(BreakerChange::Opened { failures, last })
        );
        let Err(refused) = b.admit("s") else {
            panic!("admitted while open")
        };
        let text = refused.to_string();
        assert!(text.contains("server `s` is failing"), "{text}");
        assert!(text.contains("asked in 30s"), "{text}");
        // Why the calls failed is not told to the next caller.
        assert!(!text.contains("did not answer"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_closes_only_when_the_server_answers_the_proxy() {
        let b = breaker(1);
        opened(&b);
        let first = b.next_probe().unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        // Not answered: open a cool-down more, and not recorded again.
        assert_eq!(b.probed(false), None);
        assert!(b.next_probe().unwrap() > first);
        assert!(b.admit("s").is_err());
        assert_eq!(b.probed(true), Some(BreakerChange::Closed));
        assert_eq!(b.current(), BreakerState::Closed);
        assert_eq!(b.next_probe(), None);
        assert!(b.admit("s").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_let_through_before_it_opened_count_for_nothing_after() {
        let b = breaker(2);
        // Two calls let through while it was closed, hanging.
        let early = [b.admit("s").unwrap(), b.admit("s").unwrap()];
        // Others' failures open it, then it closes again.
        assert_eq!(fail(&b), Next::Nothing);
        let Next::Check { failures, last } = fail(&b) else {
            panic!("no check")
        };
        b.checked(false, (failures, last));
        assert_eq!(b.probed(true), Some(BreakerChange::Closed));
        // The early calls time out now: they do not count towards opening
        // it again.
        for call in early {
            assert_eq!(call.settle(&b, Some(&timeout())), Next::Nothing);
        }
        assert_eq!(fail(&b), Next::Nothing);
    }

    #[tokio::test(start_paused = true)]
    async fn the_proxys_own_refusals_and_a_clients_missing_token_are_not_the_servers_failures() {
        let b = breaker(1);
        for error in [
            UpstreamError::Refused {
                server: "s".into(),
                reason: "too large".into(),
            },
            UpstreamError::NeedsClient {
                server: "s".into(),
                reason: "no token".into(),
                told: None,
            },
            // A credential refused (a user's revoked token): it answered.
            UpstreamError::Rejected {
                server: "s".into(),
                reason: "the server answered HTTP 401 Unauthorized".into(),
            },
        ] {
            assert_eq!(
                b.admit("s").unwrap().settle(&b, Some(&error)),
                Next::Nothing
            );
        }
        assert_eq!(b.current(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_failures_set_it_never_asks_nor_opens() {
        let b = breaker(0);
        for _ in 0..10 {
            assert_eq!(fail(&b), Next::Nothing);
        }
        assert!(b.admit("s").is_ok());
        assert_eq!(b.current(), BreakerState::Closed);
    }
}
