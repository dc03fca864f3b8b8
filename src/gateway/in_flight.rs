//! Per-server limits on requests in flight (`[ratelimit] concurrency`): a
//! semaphore, and a bounded count of requests waiting for it. With
//! `[ratelimit.shared]`, the places are the fleet's, in Redis
//! (`interceptors::ratelimit::SharedPlaces`): the limit holds across
//! replicas, and this replica's queue is its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chain::{Denial, Refusal};
use crate::config::{Concurrency, Unavailable};
use crate::interceptors::ratelimit::{Lease, SharedPlaces};
use crate::protocol::code;

/// How often a request waiting for a shared place asks again.
const SHARED_POLL: Duration = Duration::from_millis(20);

pub struct InFlight {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    queue: usize,
    waiting: AtomicUsize,
    /// Whether Redis answered the last time it was asked.
    shared_down: std::sync::atomic::AtomicBool,
}

/// A place among a server's requests in flight, held until dropped: this
/// replica's, and the fleet's with `[ratelimit.shared]` (unless Redis does
/// not answer and `local` says to count here alone).
pub struct Place {
    _permit: OwnedSemaphorePermit,
    _lease: Option<Lease>,
}

impl InFlight {
    pub fn new(limit: &Concurrency) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.max_in_flight)),
            max_in_flight: limit.max_in_flight,
            queue: limit.queue,
            waiting: AtomicUsize::new(0),
            shared_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn refusal(&self, reason: String) -> Refusal {
        Refusal {
            interceptor: Arc::from("ratelimit"),
            denial: Denial::new(code::RATE_LIMITED, reason)
                .with("scope", "concurrency")
                .with("max_in_flight", self.max_in_flight)
                .with("queue", self.queue),
        }
    }

    /// A place among the requests in flight: at once if one is free, after
    /// waiting (at most `wait`) if the queue has room; otherwise a refusal.
    /// With `shared`, the place is the fleet's as well as this replica's:
    /// the replica's own is taken first, so that a replica never has more
    /// than the limit in flight, whether Redis answers or not.
    pub async fn enter(
        &self,
        server: &str,
        wait: Duration,
        shared: Option<&Arc<SharedPlaces>>,
    ) -> Result<Place, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = None;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waiting = self.wait_in_queue();
                if waiting.is_none() {
                    return Err(self.full(server));
                }
                match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(self.waited_too_long(server, wait)),
                }
            }
        };
        let lease = match shared {
            None => None,
            Some(places) => {
                match self
                    .enter_shared(server, (wait, deadline), places, waiting)
                    .await
                {
                    // Redis does not answer, and `local` says: here alone.
                    Err(()) => None,
                    Ok(Ok(lease)) => Some(lease),
                    Ok(Err(refusal)) => return Err(refusal),
                }
            }
        };
        Ok(Place {
            _permit: permit,
            _lease: lease,
        })
    }

    fn full(&self, server: &str) -> Refusal {
        self.refusal(format!(
            "server `{server}` has {} requests in flight and {} waiting, its limit",
            self.max_in_flight, self.queue
        ))
    }

    fn waited_too_long(&self, server: &str, wait: Duration) -> Refusal {
        self.refusal(format!(
            "server `{server}` had no free place for {} ms (at most {} requests in flight)",
            wait.as_millis(),
            self.max_in_flight
        ))
    }

    /// A place in this replica's queue, if it has room (given back when
    /// the guard drops).
    fn wait_in_queue(&self) -> Option<Waiting<'_>> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Waiting(&self.waiting))
    }

    /// The fleet's place: `Err(())` when Redis does not answer and the
    /// config says to fall back on this replica's places. A request that
    /// waits asks Redis again every [`SHARED_POLL`] (and a little), in the
    /// queue place it may already hold.
    async fn enter_shared(
        &self,
        server: &str,
        (wait, deadline): (Duration, tokio::time::Instant),
        places: &Arc<SharedPlaces>,
        mut waiting: Option<Waiting<'_>>,
    ) -> Result<Result<Lease, Refusal>, ()> {
        loop {
            match places.try_take(server, self.max_in_flight).await {
                Ok(Some(lease)) => {
                    self.answered();
                    return Ok(Ok(lease));
                }
                Ok(None) => self.answered(),
                Err(err) => return self.unavailable(server, places.unavailable, &err),
            }
            if waiting.is_none() {
                waiting = self.wait_in_queue();
                if waiting.is_none() {
                    return Ok(Err(self.full(server)));
                }
            }
            // Up to half as long again, at random: waiting replicas do not
            // ask in step.
            let pause = SHARED_POLL + SHARED_POLL.mul_f64(rand_fraction() / 2.0);
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(Err(self.waited_too_long(server, wait)));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Redis did not answer: a refusal, or (`local`) this replica alone.
    fn unavailable(
        &self,
        server: &str,
        unavailable: Unavailable,
        err: &crate::interceptors::ratelimit::SharedError,
    ) -> Result<Result<Lease, Refusal>, ()> {
        let first = !self.shared_down.swap(true, Ordering::Relaxed);
        match unavailable {
            Unavailable::Local => {
                if first {
                    tracing::warn!(error = %err, server, "concurrency limits: Redis does not answer: each replica counts its own requests in flight (`on_unavailable = \"local\"`)");
                }
                Err(())
            }
            Unavailable::Refuse => {
                if first {
                    tracing::error!(error = %err, server, "CONCURRENCY LIMITS UNAVAILABLE: Redis does not answer: requests to servers with a concurrency limit are refused (`on_unavailable = \"refuse\"`)");
                }
                let mut refusal = self.refusal(format!(
                    "server `{server}`'s shared limit on requests in flight cannot be checked (Redis does not answer): refused until it can"
                ));
                refusal.denial = refusal.denial.with("unavailable", true);
                Ok(Err(refusal))
            }
        }
    }

    fn answered(&self) {
        if self.shared_down.swap(false, Ordering::Relaxed) {
            tracing::warn!("concurrency limits: Redis answers again: places are shared again");
        }
    }
}

/// A number in [0, 1) from the OS's randomness (for jitter).
fn rand_fraction() -> f64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    f64::from(u16::from_le_bytes([bytes[0], bytes[1]])) / 65536.0
}

/// A request counted in the queue until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
