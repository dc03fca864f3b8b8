//! Per-server limits on requests in flight (`[ratelimit] concurrency`): a
//! semaphore, and a bounded count of requests waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chain::{Denial, Refusal};
use crate::config::Concurrency;
use crate::protocol::code;

pub struct InFlight {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    queue: usize,
    waiting: AtomicUsize,
}

impl InFlight {
    pub fn new(limit: &Concurrency) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.max_in_flight)),
            max_in_flight: limit.max_in_flight,
            queue: limit.queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A place among the requests in flight: at once if one is free, after
    /// waiting (at most `wait`) if the queue has room; otherwise a refusal.
    pub async fn enter(
        &self,
        server: &str,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let refuse = |reason: String| Refusal {
            interceptor: Arc::from("ratelimit"),
            denial: Denial::new(code::RATE_LIMITED, reason)
                .with("scope", "concurrency")
                .with("max_in_flight", self.max_in_flight)
                .with("queue", self.queue),
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(refuse(format!(
                "server `{server}` has {} requests in flight and {} waiting, its limit",
                self.max_in_flight, self.queue
            )));
        }
        let waited = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(refuse(format!(
                "server `{server}` had no free place for {} ms (at most {} requests in flight)",
                wait.as_millis(),
                self.max_in_flight
            ))),
        }
    }
}
