//! Places among a server's requests in flight shared by every replica
//! (`[[ratelimit.concurrency]]` with `[ratelimit.shared]`): a semaphore in
//! Redis whose places are leases.
//!
//! A server's places are one sorted set (`PREFIX:cc:SERVER`) of lease ids
//! scored by when each lease runs out, on Redis's clock. Taking a place is
//! one script: leases that ran out are dropped, and a new one is added if
//! fewer than the limit are left. A replica renews its leases while their
//! requests run (a third of the lease apart) and removes each when its
//! request ends; a replica that dies renews nothing, so its places come
//! free at most a lease (`[ratelimit.shared] lease`) later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::shared::{Shared, SharedError};
use crate::config::{SharedConfig, Unavailable};

// The set's key lives a second past its latest lease, whichever
// replica's (replicas with different leases do not cut each other's).
const TAKE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
  return 1
end
return 0
";

// A lease that is gone (Redis restarted, or renewals failed for longer
// than the lease) is put back: its request still runs. Returns 1 then.
const RENEW: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
return added
";

/// The replicas' shared places, in the Redis `[ratelimit.shared]` names.
pub struct SharedPlaces {
    shared: Shared,
    prefix: String,
    /// What a replica does while Redis does not answer.
    pub unavailable: Unavailable,
    lease: Duration,
    /// This process's lease ids: a random part, then a count.
    replica: String,
    next: AtomicU64,
    take: redis::Script,
    renew: redis::Script,
}

/// A place held in Redis: renewed while held, given back when dropped.
/// It exists from before the place is asked for: a request whose answer
/// is lost (a timeout, or the client hanging up meanwhile) still gives
/// back the place Redis may have given it.
pub struct Lease {
    renewing: Option<tokio::task::JoinHandle<()>>,
    give_back: Option<(Arc<SharedPlaces>, String, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renewing) = &self.renewing {
            renewing.abort();
        }
        if let Some((places, key, id)) = self.give_back.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // If Redis does not hear of it, the lease runs out on its own.
            runtime.spawn(async move {
                let _ = places.give_back(&key, &id).await;
            });
        }
    }
}

impl SharedPlaces {
    /// The places in the Redis `config` names (its password read now);
    /// nothing is connected until the first request.
    pub fn new(config: &SharedConfig) -> Result<Self, String> {
        Ok(Self {
            shared: Shared::new(config, &[])?,
            prefix: config.prefix.clone(),
            unavailable: config.on_unavailable,
            lease: config.lease,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
            take: redis::Script::new(TAKE),
            renew: redis::Script::new(RENEW),
        })
    }

    fn key(&self, server: &str) -> String {
        format!("{}:cc:{server}", self.prefix)
    }

    /// A place among `server`'s `max` requests in flight, if one is free
    /// now in the whole fleet.
    pub async fn try_take(
        self: &Arc<Self>,
        server: &str,
        max: usize,
    ) -> Result<Option<Lease>, SharedError> {
        let key = self.key(server);
        let id = format!(
            "{}-{}",
            self.replica,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        // Given back if anything below fails or is dropped.
        let mut lease = Lease {
            renewing: None,
            give_back: Some((self.clone(), key.clone(), id.clone())),
        };
        let mut invocation = self.take.prepare_invoke();
        invocation
            .key(&key)
            .arg(max)
            .arg(self.lease.as_millis() as u64)
            .arg(&id);
        let taken: i64 = self.shared.invoke(&invocation).await?;
        if taken != 1 {
            // Not given: nothing to give back.
            lease.give_back = None;
            return Ok(None);
        }
        lease.renewing = Some({
            let (places, key, id) = (self.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(places.lease / 3).await;
                    let mut invocation = places.renew.prepare_invoke();
                    invocation
                        .key(&key)
                        .arg(places.lease.as_millis() as u64)
                        .arg(&id);
                    match places.shared.invoke::<i64>(&invocation).await {
                        Ok(0) => {}
                        Ok(_) => tracing::warn!(
                            "a shared place in flight was gone from Redis (restarted, or unreachable for longer than the lease): put back; the limit may have been passed meanwhile"
                        ),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot renew a shared place in flight: it runs out unless renewed")
                        }
                    }
                }
            })
        });
        Ok(Some(lease))
    }

    async fn give_back(&self, key: &str, id: &str) -> Result<(), SharedError> {
        let mut command = redis::cmd("ZREM");
        command.arg(key).arg(id);
        self.shared.query::<i64>(&command).await.map(|_| ())
    }
}
