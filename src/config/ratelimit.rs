//! `[ratelimit]`: quotas per client, server and tool, and limits on requests in
//! flight.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::values::QuotaText;
use super::{ClientConfig, ConfigError, Entry, ProxyConfig, ServerConfig, Validator};

/// `[ratelimit]`: quotas per client, per client and server, per client and
/// tool. Off when it names none.
#[derive(Debug, Clone, Default)]
pub struct RatelimitConfig {
    pub rules: Vec<RateRule>,
    /// Per-server limits on requests in flight.
    pub concurrency: Vec<Concurrency>,
    /// `[ratelimit.shared]`: the budgets kept in Redis, shared by replicas.
    pub shared: Option<SharedConfig>,
}

/// `[ratelimit.shared]`: every replica checks the same budgets, in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// `redis://HOST[:PORT][/DB]` on this machine, `rediss://…` beyond it.
    pub redis: String,
    pub password: Option<super::SecretRef>,
    /// What a check does while Redis cannot answer.
    pub on_unavailable: Unavailable,
    /// How long a check waits for Redis.
    pub timeout: Duration,
    /// Put before every key (several fleets in one Redis).
    pub prefix: String,
    /// How long a place among a server's requests in flight is held
    /// without being renewed (a replica that dies gives its places back
    /// this long after).
    pub lease: Duration,
}

/// `[ratelimit.shared] on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Unavailable {
    /// Refuse the requests a shared quota applies to (the default).
    #[default]
    Refuse,
    /// Check them against this replica's own budgets (each replica lets
    /// the whole quota through) until Redis answers again.
    Local,
}

/// `[ratelimit.shared] timeout` by default.
pub const SHARED_TIMEOUT: Duration = Duration::from_millis(250);
/// `[ratelimit.shared] lease` unless set.
pub const SHARED_LEASE: Duration = Duration::from_secs(15);

/// A Redis URL budgets may be kept at: no password in it (it would sit in
/// the config and in errors), TLS (`rediss://`, its certificate verified)
/// unless it is on this machine (a loopback address or a socket).
pub fn check_redis_url(url: &str) -> Result<(), String> {
    use redis::{ConnectionAddr, IntoConnectionInfo as _};
    let info = url
        .into_connection_info()
        .map_err(|err| format!("not a Redis URL: {err}"))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "the URL carries a password: give it as `password` (`env:VAR` or `file:PATH`)".into(),
        );
    }
    match info.addr() {
        ConnectionAddr::Tcp(host, _) if super::audit::loopback_address(host) => Ok(()),
        ConnectionAddr::Tcp(..) => Err(
            "Redis is not on this machine (by address): reach it over TLS with `rediss://`".into(),
        ),
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            Err("`#insecure` turns off the certificate's check: refused".into())
        }
        ConnectionAddr::TcpTls { .. } | ConnectionAddr::Unix(_) => Ok(()),
        _ => Err("a Redis address of a kind not known here".into()),
    }
}

/// `{ server, max_in_flight, queue }`: at most `max_in_flight` requests
/// to the server at once; up to `queue` more wait (no longer than the
/// server's call timeout); past that, requests are refused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    pub server: String,
    pub max_in_flight: usize,
    pub queue: usize,
}

impl RatelimitConfig {
    pub fn enabled(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// One quota and what it applies to. Each client has its own budget under
/// every rule that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRule {
    /// The client it is for; `None`: every client (each its own budget).
    pub client: Option<String>,
    pub scope: RateScope,
    pub quota: Quota,
    /// Where it was written (`ratelimit.rules[2]`, `ratelimit.default`).
    pub key: String,
}

/// What a rate rule counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateScope {
    /// Every request the client sends (but `initialize` and `ping`).
    Client,
    /// Requests routed to one server.
    Server(String),
    /// Calls of one tool (`tools/call`).
    Tool { server: String, tool: String },
}

impl RateScope {
    pub fn level(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server(_) => "server",
            Self::Tool { .. } => "tool",
        }
    }
}

/// `count` calls per `period`, up to `burst` at once (`count` unless set):
/// `"60/min"`, `"5/s"`, `"1000/h burst 50"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let unit = match secs {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            86_400 => "day".to_owned(),
            _ => format!("{}ms", self.period.as_millis()),
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Quota {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "`{text}` is not a quota like `60/min`, `5/s`, `1000/h` or `100/day`, optionally followed by `burst N`"
            )
        };
        let mut words = text.split_whitespace();
        let rate = words.next().ok_or_else(invalid)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => None,
            (Some("burst"), Some(n), None) => Some(n.parse::<u32>().map_err(|_| invalid())?),
            _ => return Err(invalid()),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.parse().map_err(|_| invalid())?;
        let period = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(format!(
                "`{text}`: a quota allows at least one call (to refuse a tool, use a policy)"
            ));
        }
        let burst = burst.unwrap_or(count);
        if burst == 0 {
            return Err(format!("`{text}`: a burst is at least 1"));
        }
        Ok(Self {
            count,
            period,
            burst,
        })
    }
}

/// `[ratelimit]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRatelimit {
    /// A quota for every client, each its own budget: every request it
    /// sends but `initialize` and `ping`.
    #[schemars(with = "Option<QuotaText>")]
    default: Option<Spanned<String>>,
    /// Quotas for one client, a server or a tool. A request must pass one
    /// rule per level that applies (client, server, tool), the most
    /// specific at each level.
    #[serde(default)]
    #[schemars(with = "Vec<RawRateRule>")]
    rules: Vec<Spanned<RawRateRule>>,
    /// Limits on the requests a server has in flight.
    #[serde(default)]
    #[schemars(with = "Vec<RawConcurrency>")]
    concurrency: Vec<Spanned<RawConcurrency>>,
    /// Keep the quotas' budgets in Redis, shared by every replica that
    /// names the same Redis and prefix.
    shared: Option<RawShared>,
}

/// `[ratelimit.shared]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawShared {
    /// `redis://HOST[:PORT][/DB]` for a Redis on this machine (a loopback
    /// address or `unix:///PATH`), `rediss://HOST…` (TLS) for one beyond.
    #[schemars(with = "String")]
    redis: Spanned<String>,
    /// The Redis password (`env:VAR`, `file:PATH`).
    #[schemars(with = "Option<super::values::SecretText>")]
    password: Option<Spanned<String>>,
    /// While Redis does not answer: `refuse` the requests a quota applies
    /// to, or check them against this replica's own budgets (`local`).
    #[schemars(extend("default" = "refuse"))]
    on_unavailable: Option<Unavailable>,
    /// How long a check waits for Redis before it counts as unavailable.
    #[schemars(with = "Option<super::values::DurationText>", extend("default" = "250ms"))]
    timeout: Option<Spanned<String>>,
    /// Put before every key.
    #[schemars(extend("default" = "portcullis"))]
    prefix: Option<String>,
    /// Concurrency limits: how long a place among a server's requests in
    /// flight is held without being renewed (a replica renews its places a
    /// third of this apart while their requests run). A replica that dies
    /// gives its places back this long after. From 1s to 10min, and at
    /// least four times `timeout`.
    #[schemars(with = "Option<super::values::DurationText>", extend("default" = "15s"))]
    lease: Option<Spanned<String>>,
}

impl RawShared {
    fn validate(self, v: &Validator<'_>) -> Result<SharedConfig, ConfigError> {
        check_redis_url(self.redis.get_ref()).map_err(|message| {
            v.error(Some(self.redis.span()), "ratelimit.shared.redis", message)
        })?;
        let password = match &self.password {
            None => None,
            Some(value) => Some(v.secret_ref(value.get_ref()).map_err(|message| {
                v.error(Some(value.span()), "ratelimit.shared.password", message)
            })?),
        };
        let timeout = v
            .parsed(
                self.timeout.as_ref(),
                "ratelimit.shared.timeout",
                super::parse_duration,
            )?
            .unwrap_or(SHARED_TIMEOUT);
        let lease = v
            .parsed(
                self.lease.as_ref(),
                "ratelimit.shared.lease",
                super::parse_duration,
            )?
            .unwrap_or(SHARED_LEASE);
        // Renewed a third of the lease apart, each renewal waiting at most
        // `timeout` (twice, with the retry): four times leaves room.
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&lease)
            || lease < timeout.saturating_mul(4)
        {
            return Err(v.error(
                self.lease.as_ref().map(Spanned::span),
                "ratelimit.shared.lease",
                format!(
                    "must be from 1s to 10min, and at least four times `timeout` ({timeout:?})"
                ),
            ));
        }
        Ok(SharedConfig {
            redis: self.redis.into_inner(),
            password,
            on_unavailable: self.on_unavailable.unwrap_or_default(),
            timeout,
            prefix: self.prefix.unwrap_or_else(|| "portcullis".into()),
            lease,
        })
    }
}

/// `[[ratelimit.concurrency]]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    /// The server, by its `[[servers]]` name; one limit per server.
    server: String,
    /// Requests to it at once, at least 1.
    max_in_flight: usize,
    /// Requests that may wait past `max_in_flight` (each at most the
    /// server's call timeout), at most 100000; past them a request is
    /// refused at once.
    #[serde(default)]
    queue: usize,
}

/// `[[ratelimit.rules]]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRateRule {
    /// The client it is for, by its `[[clients]]` name.
    #[schemars(extend("x-default" = "every client, each its own budget"))]
    client: Option<String>,
    /// Counts the requests routed to this server (by its `[[servers]]`
    /// name).
    server: Option<String>,
    /// Counts the calls of this tool, by its namespaced name
    /// (`github__create_issue`); not with `server`.
    tool: Option<String>,
    /// The quota.
    #[schemars(with = "QuotaText")]
    quota: Spanned<String>,
}

impl RawRatelimit {
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        clients: &[ClientConfig],
        servers: &[ServerConfig],
        proxy: &ProxyConfig,
    ) -> Result<RatelimitConfig, ConfigError> {
        let mut rules = Vec::new();
        if let Some(quota) = v.parsed(self.default.as_ref(), "ratelimit.default", str::parse)? {
            rules.push(RateRule {
                client: None,
                scope: RateScope::Client,
                quota,
                key: "ratelimit.default".into(),
            });
        }
        for (at, rule) in v.entries(self.rules, "ratelimit.rules") {
            let rule = rule.validate(&at, clients, servers, proxy)?;
            if let Some(earlier) = rules
                .iter()
                .find(|r: &&RateRule| r.client == rule.client && r.scope == rule.scope)
            {
                return Err(at.error(
                    ".quota",
                    format!(
                        "`{}` already sets a quota for the same client and scope",
                        earlier.key
                    ),
                ));
            }
            rules.push(rule);
        }
        let mut concurrency: Vec<Concurrency> = Vec::new();
        for (at, limit) in v.entries(self.concurrency, "ratelimit.concurrency") {
            let limit = limit.validate(&at, servers, &concurrency)?;
            concurrency.push(limit);
        }
        let shared = self.shared.map(|shared| shared.validate(v)).transpose()?;
        Ok(RatelimitConfig {
            rules,
            concurrency,
            shared,
        })
    }
}

impl RawRateRule {
    fn validate(
        self,
        at: &Entry<'_>,
        clients: &[ClientConfig],
        servers: &[ServerConfig],
        proxy: &ProxyConfig,
    ) -> Result<RateRule, ConfigError> {
        let quota = self
            .quota
            .get_ref()
            .parse()
            .map_err(|message| at.error_in(self.quota.span(), ".quota", message))?;
        if let Some(client) = &self.client
            && !clients.iter().any(|c| &c.name == client)
        {
            return Err(at.error(".client", format!("no client `{client}` in `[[clients]]`")));
        }
        let known = |server: &str| servers.iter().any(|s| s.name == server);
        let separator = &proxy.namespace_separator;
        let scope = match (self.server, self.tool) {
            (None, None) => RateScope::Client,
            (Some(server), None) => {
                if !known(&server) {
                    return Err(
                        at.error(".server", format!("no server `{server}` in `[[servers]]`"))
                    );
                }
                RateScope::Server(server)
            }
            (None, Some(tool)) => {
                let Some((server, name)) = tool.split_once(separator.as_str()) else {
                    return Err(at.error(
                        ".tool",
                        format!(
                            "`{tool}` is not a namespaced tool name like `SERVER{separator}TOOL`"
                        ),
                    ));
                };
                if !known(server) || name.is_empty() {
                    return Err(at.error(
                        ".tool",
                        format!("`{tool}`: no server `{server}` in `[[servers]]`"),
                    ));
                }
                RateScope::Tool {
                    server: server.to_owned(),
                    tool: name.to_owned(),
                }
            }
            (Some(_), Some(_)) => {
                return Err(at.error(
                    ".tool",
                    "set `server` or `tool`, not both (a tool name already names its server)"
                        .into(),
                ));
            }
        };
        Ok(RateRule {
            client: self.client,
            scope,
            quota,
            key: at.key.clone(),
        })
    }
}

impl RawConcurrency {
    /// One limit per known server; `earlier` are the limits before it.
    fn validate(
        self,
        at: &Entry<'_>,
        servers: &[ServerConfig],
        earlier: &[Concurrency],
    ) -> Result<Concurrency, ConfigError> {
        if !servers.iter().any(|s| s.name == self.server) {
            return Err(at.error(
                ".server",
                format!("no server `{}` in `[[servers]]`", self.server),
            ));
        }
        if earlier.iter().any(|c| c.server == self.server) {
            return Err(at.error(
                ".server",
                format!("server `{}` has a concurrency limit already", self.server),
            ));
        }
        if self.max_in_flight == 0 || self.queue > 100_000 {
            return Err(at.error(
                "",
                "`max_in_flight` is at least 1 and `queue` at most 100000".into(),
            ));
        }
        Ok(Concurrency {
            server: self.server,
            max_in_flight: self.max_in_flight,
            queue: self.queue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
    }

    const BASE: &str =
        "[[clients]]\nname = \"bot\"\n[[servers]]\nname = \"gh\"\nprocess = { command = \"x\" }\n";

    #[test]
    fn quotas_parse_with_units_and_bursts() {
        let cases = [
            ("60/min", 60, 60, 60),
            ("5/s", 5, 1, 5),
            ("1000/h burst 50", 1000, 3600, 50),
            ("100/day", 100, 86_400, 100),
            ("2/second burst 1", 2, 1, 1),
        ];
        for (text, count, secs, burst) in cases {
            let quota: Result<Quota, _> = text.parse();
            assert_eq!(
                quota,
                Ok(Quota {
                    count,
                    period: Duration::from_secs(secs),
                    burst
                }),
                "{text}"
            );
        }
        assert_eq!(
            "1000/h burst 50".parse::<Quota>().map(|q| q.to_string()),
            Ok("1000/h burst 50".into())
        );
        for bad in [
            "60",
            "60/fortnight",
            "x/min",
            "0/min",
            "5/s burst",
            "5/s burst 0",
            "5/s bust 2",
            "-1/s",
        ] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ratelimit_section_goes_right_after_limits() {
        let config = parse(&format!(
            "{BASE}[ratelimit]\ndefault = \"60/min\"\nrules = [\n  {{ client = \"bot\", quota = \"5/s\" }},\n  {{ server = \"gh\", quota = \"30/min\" }},\n  {{ client = \"bot\", tool = \"gh__create_issue\", quota = \"5/min burst 2\" }},\n]\n"
        ));
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(
            config.chain,
            [
                ChainEntry::Limits,
                ChainEntry::Ratelimit,
                ChainEntry::Pinning,
                ChainEntry::Schema,
                ChainEntry::Redact
            ]
        );
        let scopes: Vec<_> = config
            .ratelimit
            .rules
            .iter()
            .map(|r| (r.client.as_deref(), r.scope.clone(), r.quota.to_string()))
            .collect();
        assert_eq!(
            scopes,
            [
                (None, RateScope::Client, "60/min".to_owned()),
                (Some("bot"), RateScope::Client, "5/s".to_owned()),
                (None, RateScope::Server("gh".into()), "30/min".to_owned()),
                (
                    Some("bot"),
                    RateScope::Tool {
                        server: "gh".into(),
                        tool: "create_issue".into()
                    },
                    "5/min burst 2".to_owned()
                ),
            ]
        );
        assert_eq!(
            parse(BASE).map(|c| c.chain),
            Ok(vec![
                ChainEntry::Limits,
                ChainEntry::Pinning,
                ChainEntry::Schema,
                ChainEntry::Redact
            ]),
            "no quotas, no ratelimit"
        );
    }

    #[test]
    fn bad_quotas_and_unknown_names_are_refused_with_their_place() {
        let cases = [
            (
                "[ratelimit]\ndefault = \"60 per minute\"\n",
                "p.toml:7:11: `ratelimit.default`: `60 per minute` is not a quota",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"bot\", quota = \"5/fortnight\" }]\n",
                "p.toml:7:36: `ratelimit.rules[0].quota`: `5/fortnight` is not a quota",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"nobody\", quota = \"5/s\" }]\n",
                "p.toml:7:10: `ratelimit.rules[0].client`: no client `nobody`",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gl\", quota = \"5/s\" }]\n",
                "`ratelimit.rules[0].server`: no server `gl`",
            ),
            (
                "[ratelimit]\nrules = [{ tool = \"create_issue\", quota = \"5/s\" }]\n",
                "`ratelimit.rules[0].tool`: `create_issue` is not a namespaced tool name like `SERVER__TOOL`",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gh\", tool = \"gh__x\", quota = \"5/s\" }]\n",
                "set `server` or `tool`, not both",
            ),
            (
                "[ratelimit]\nrules = [{ server = \"gh\", quota = \"5/s\" }, { server = \"gh\", quota = \"9/s\" }]\n",
                "`ratelimit.rules[1].quota`: `ratelimit.rules[0]` already sets a quota",
            ),
            (
                "[[chain]]\nkind = \"redact\"\n[[chain]]\nkind = \"schema\"\n[ratelimit]\ndefault = \"5/s\"\n",
                "has no `ratelimit` entry",
            ),
            (
                "[ratelimit]\nrules = [{ client = \"bot\", quota = \"5/s\", colour = 1 }]\n",
                "unknown field `colour`",
            ),
            (
                "[ratelimit]\nconcurrency = [{ server = \"gl\", max_in_flight = 2 }]\n",
                "`ratelimit.concurrency[0].server`: no server `gl`",
            ),
            (
                "[ratelimit]\nconcurrency = [{ server = \"gh\", max_in_flight = 0 }]\n",
                "`max_in_flight` is at least 1",
            ),
        ];
        for (text, expected) in cases {
            match parse(&format!("{BASE}{text}")) {
                Ok(_) => panic!("accepted: {text}"),
                Err(err) => assert!(err.contains(expected), "{err}\nwanted: {expected}"),
            }
        }
    }
}
