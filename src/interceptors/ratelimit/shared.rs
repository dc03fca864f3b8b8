//! The quotas' budgets in Redis, shared by every replica that names the
//! same Redis and prefix (`[ratelimit.shared]`).
//!
//! One check is one script, run atomically by Redis: the same GCRA as the
//! local limiter (governor's: a budget is its theoretical arrival time;
//! a request is let in unless `now < tat - tau`, and moves it to
//! `max(tat, now) + t`, where `t` is the period over the count and `tau`
//! is `t` times the burst less one), over the levels that apply, from the
//! tool up, stopping at the first refusal — so a request refused by its
//! tool's quota uses none of its client's. Time is Redis's own clock
//! (`TIME`), so replicas whose clocks differ still share one budget. Each
//! budget's key expires once its budget is whole again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::config::{RateRule, SharedConfig};

/// Why a shared check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("Redis was unreachable a moment ago: not asked again yet")]
    Down,
}

const SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i, key in ipairs(KEYS) do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key))
  if tat == nil then tat = now end
  local earliest = tat - tau
  if now < earliest then
    return {i, math.ceil(earliest - now)}
  end
  local nxt = math.max(tat, now) + t
  redis.call('SET', key, string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
end
return {0, 0}
";

/// How long a replica that could not reach Redis answers "unavailable"
/// at once, before it tries again.
const DOWN_FOR: Duration = Duration::from_secs(1);

pub struct Shared {
    client: redis::Client,
    connection: tokio::sync::OnceCell<ConnectionManager>,
    /// Until when Redis counts as down (a connection just failed).
    down_until: Mutex<Option<Instant>>,
    timeout: Duration,
    script: redis::Script,
    /// Per rule: its keys' prefix, and its GCRA `t` and `tau` in µs.
    rules: Vec<(String, u64, u64)>,
}

/// A rule's identity in Redis: what it counts and its quota, not where
/// it is written (replicas whose configs list rules in another order
/// share budgets; a changed quota starts afresh).
fn rule_id(rule: &RateRule) -> String {
    use sha2::Digest as _;
    let identity = format!("{:?}|{:?}|{}", rule.client, rule.scope, rule.quota);
    hex::encode(
        sha2::Sha256::digest(identity.as_bytes())
            .get(..12)
            .unwrap_or_default(),
    )
}

impl Shared {
    /// The budgets of `rules` in the Redis `config` names (its password
    /// read now); nothing is connected until the first check.
    pub fn new(config: &SharedConfig, rules: &[RateRule]) -> Result<Self, String> {
        use redis::IntoConnectionInfo as _;
        let mut info = config
            .redis
            .as_str()
            .into_connection_info()
            .map_err(|err| format!("`ratelimit.shared.redis`: {err}"))?;
        if let Some(password) = &config.password {
            let password = password
                .resolve()
                .map_err(|err| format!("`ratelimit.shared.password`: {err}"))?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        // TLS to Redis is rustls's, with ring like the rest of the proxy.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(info).map_err(|err| err.to_string())?;
        let rules = rules
            .iter()
            .map(|rule| {
                let count = u64::from(rule.quota.count.max(1));
                let t = (rule.quota.period.as_micros() as u64 / count).max(1);
                let tau = t.saturating_mul(u64::from(rule.quota.burst.max(1)) - 1);
                (format!("{}:rl:{}:", config.prefix, rule_id(rule)), t, tau)
            })
            .collect();
        Ok(Self {
            client,
            connection: tokio::sync::OnceCell::new(),
            down_until: Mutex::new(None),
            timeout: config.timeout,
            script: redis::Script::new(SCRIPT),
            rules,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, SharedError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let down = |until: &Mutex<Option<Instant>>| {
            until
                .lock()
                .map(|until| until.is_some_and(|until| Instant::now() < until))
                .unwrap_or(false)
        };
        if down(&self.down_until) {
            return Err(SharedError::Down);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let made = self
            .connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await;
        match made {
            Ok(connection) => Ok(connection.clone()),
            Err(err) => {
                if let Ok(mut until) = self.down_until.lock() {
                    *until = Some(Instant::now() + DOWN_FOR);
                }
                Err(SharedError::Redis(err.to_string()))
            }
        }
    }

    /// Runs a prepared script, within the timeout.
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Err(_) => Err(SharedError::Timeout(self.timeout)),
            Ok(answer) => answer.map_err(|err| SharedError::Redis(err.to_string())),
        }
    }

    /// Runs one command, within the timeout.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, SharedError> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, command.query_async(&mut connection)).await {
            Err(_) => Err(SharedError::Timeout(self.timeout)),
            Ok(answer) => answer.map_err(|err| SharedError::Redis(err.to_string())),
        }
    }

    /// Checks `client`'s budgets under `rules` (indexes, the most specific
    /// level first) in one script: `None` when every one lets the request
    /// in (and each is used), or the first that refuses and how long to
    /// wait.
    pub async fn check(
        &self,
        client: &str,
        rules: &[usize],
    ) -> Result<Option<(usize, Duration)>, SharedError> {
        let mut invocation = self.script.prepare_invoke();
        for &index in rules {
            let Some((prefix, t, tau)) = self.rules.get(index) else {
                continue;
            };
            invocation
                .key(format!("{prefix}{client}"))
                .arg(*t)
                .arg(*tau);
        }
        match self.invoke::<(usize, u64)>(&invocation).await? {
            (0, _) => Ok(None),
            (refused, wait_us) => Ok(rules
                .get(refused - 1)
                .map(|&index| (index, Duration::from_micros(wait_us)))),
        }
    }
}
