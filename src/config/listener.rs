//! `[listener]`: what the HTTP listener allows a peer before it has proved
//! anything: how long it may take to send a request, how many connections
//! it may hold, and how many wrong credentials it may try.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::values::{DurationText, PathText, QuotaText};
use super::{ConfigError, Quota, Validator, parse_duration};

/// The listener's timeouts, connection caps and brute-force throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A request's headers must arrive within this time of the request's
    /// first byte (of the connection's start, for its first request).
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this time of its headers.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request under way is closed after
    /// this long without a byte from the client.
    pub idle_timeout: Duration,
    /// A write the client makes no room for (it stops reading a reply or a
    /// stream) fails after this long, and the connection is closed.
    pub write_timeout: Duration,
    /// Connections open at once, all sources together.
    pub max_connections: usize,
    /// Connections open at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Authentication failures one source may make (one IPv4 address or
    /// IPv6 /64); past it, every attempt from it gets 429.
    pub auth_failures_per_source: Quota,
    /// Authentication failures with tokens that share their first
    /// characters, from any source.
    pub auth_failures_per_credential: Quota,
    /// Failures are written to the audit log as one record per source,
    /// endpoint and reason per interval, with their count.
    pub failure_record_interval: Duration,
    /// Whether a non-loopback `listen` address may serve plain HTTP.
    pub insecure_plaintext: bool,
    /// TLS on the listener, when set.
    pub tls: Option<TlsConfig>,
    /// Whether HTTP+SSE (protocol 2024-11-05) is served at `/sse` and
    /// `/messages` beside `/mcp`.
    pub sse: bool,
}

/// `[listener] tls_cert`, `tls_key`, `tls_client_ca`: PEM files, read at
/// start and again when they change (or on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates a client certificate must chain to (mTLS): a client
    /// presenting one is identified by it (`[[clients]] cert_sha256`); a
    /// client presenting none may still use a bearer token.
    pub client_ca: Option<PathBuf>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_ip: 128,
            auth_failures_per_source: Quota {
                count: 10,
                period: Duration::from_secs(60),
                burst: 10,
            },
            auth_failures_per_credential: Quota {
                count: 30,
                period: Duration::from_secs(60),
                burst: 30,
            },
            failure_record_interval: Duration::from_secs(60),
            insecure_plaintext: false,
            tls: None,
            sse: false,
        }
    }
}

/// `[listener]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    /// A request's headers must arrive within this time of its first byte
    /// (of the connection's start, for its first request; the TLS handshake
    /// counts); from `100ms` to `1h`.
    #[schemars(with = "Option<DurationText>", extend("default" = "10s"))]
    header_read_timeout: Option<Spanned<String>>,
    /// A request's body must arrive within this time of its headers, else
    /// 408 and the connection is closed; from `100ms` to `1h`.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    body_read_timeout: Option<Spanned<String>>,
    /// A kept-alive connection with no request under way is closed after
    /// this long without a byte; from `100ms` to `1h`.
    #[schemars(with = "Option<DurationText>", extend("default" = "60s"))]
    idle_timeout: Option<Spanned<String>>,
    /// A reply or stream the client takes no bytes of for this long ends
    /// the connection; from `100ms` to `1h`.
    #[schemars(with = "Option<DurationText>", extend("default" = "30s"))]
    write_timeout: Option<Spanned<String>>,
    /// Connections open at once, all sources together; past it a
    /// connection is answered 503.
    #[schemars(with = "Option<usize>", extend("default" = 1024))]
    max_connections: Option<Spanned<usize>>,
    /// Connections open at once from one IPv4 address or IPv6 /64, at most
    /// `max_connections`.
    #[schemars(
        with = "Option<usize>",
        extend("x-default" = "`128`, or `max_connections` when that is less")
    )]
    max_connections_per_ip: Option<Spanned<usize>>,
    /// Authentication failures one source (an IPv4 address or IPv6 /64) may
    /// make; past it, every request from it gets 429 until enough have
    /// drained.
    #[schemars(with = "Option<QuotaText>", extend("default" = "10/min"))]
    auth_failures_per_source: Option<Spanned<String>>,
    /// Authentication failures with tokens of one 8-character prefix, from
    /// any source; past it, such tokens get 429.
    #[schemars(with = "Option<QuotaText>", extend("default" = "30/min"))]
    auth_failures_per_credential: Option<Spanned<String>>,
    /// Authentication failures reach the audit log as one `auth_failure`
    /// record per source, endpoint, reason and token owner per interval,
    /// with their count; from `100ms` to `1h`.
    #[schemars(with = "Option<DurationText>", extend("default" = "1m"))]
    failure_record_interval: Option<Spanned<String>>,
    /// Allows plain HTTP on a `[proxy] listen` address that is not loopback,
    /// for a network that is yours alone; the proxy warns `PLAINTEXT` at
    /// every start.
    #[schemars(extend("default" = false))]
    insecure_plaintext: Option<bool>,
    /// HTTPS: the certificate chain (PEM, leaf first), read again when it
    /// changes and on SIGHUP. Needs `tls_key`.
    #[schemars(with = "Option<PathText>")]
    tls_cert: Option<Spanned<PathBuf>>,
    /// The certificate's private key (PEM).
    #[schemars(with = "Option<PathText>")]
    tls_key: Option<Spanned<PathBuf>>,
    /// mTLS: CA certificates (PEM) a client certificate may chain to; a
    /// client presenting one is the client whose `cert_sha256` it has. Needs
    /// `tls_cert` and `tls_key`.
    #[schemars(with = "Option<PathText>")]
    tls_client_ca: Option<Spanned<PathBuf>>,
    /// Serves HTTP+SSE, the transport of protocol 2024-11-05, beside `/mcp`:
    /// `GET /sse` opens a session and its stream, whose first event names
    /// the endpoint its messages are POSTed to (`/messages?session_id=…`).
    /// For clients that speak nothing newer; the same credentials,
    /// Host/Origin checks, limits and chain as `/mcp`. A session lives on
    /// the replica holding its stream (docs/replicas.md).
    #[schemars(extend("default" = false))]
    sse: Option<bool>,
}

impl RawListener {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<ListenerConfig, ConfigError> {
        let defaults = ListenerConfig::default();
        let timeout = |value: Option<Spanned<String>>, key: &str, default: Duration| {
            let duration = v
                .parsed(value.as_ref(), key, parse_duration)?
                .unwrap_or(default);
            if duration < Duration::from_millis(100) || duration > Duration::from_secs(3600) {
                let span = value.as_ref().map(Spanned::span);
                return Err(v.error(span, key, "must be between 100ms and 1h".into()));
            }
            Ok(duration)
        };
        let max_connections = v
            .at_least(self.max_connections, "listener.max_connections", 1)?
            .unwrap_or(defaults.max_connections);
        let per_ip_span = self.max_connections_per_ip.as_ref().map(Spanned::span);
        let max_connections_per_ip = v
            .at_least(
                self.max_connections_per_ip,
                "listener.max_connections_per_ip",
                1,
            )?
            .unwrap_or(defaults.max_connections_per_ip.min(max_connections));
        if max_connections_per_ip > max_connections {
            return Err(v.error(
                per_ip_span,
                "listener.max_connections_per_ip",
                format!("must not exceed listener.max_connections ({max_connections})"),
            ));
        }
        let file = |value: Spanned<PathBuf>| v.resolve(value.into_inner());
        let tls = match (self.tls_cert, self.tls_key, self.tls_client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), client_ca) => Some(TlsConfig {
                cert: file(cert),
                key: file(key),
                client_ca: client_ca.map(file),
            }),
            (cert, key, ca) => {
                let span = cert
                    .as_ref()
                    .or(key.as_ref())
                    .or(ca.as_ref())
                    .map(Spanned::span);
                return Err(v.error(
                    span,
                    "listener.tls_cert",
                    "TLS needs both `tls_cert` and `tls_key` (and `tls_client_ca` needs them)"
                        .into(),
                ));
            }
        };
        Ok(ListenerConfig {
            header_read_timeout: timeout(
                self.header_read_timeout,
                "listener.header_read_timeout",
                defaults.header_read_timeout,
            )?,
            body_read_timeout: timeout(
                self.body_read_timeout,
                "listener.body_read_timeout",
                defaults.body_read_timeout,
            )?,
            idle_timeout: timeout(
                self.idle_timeout,
                "listener.idle_timeout",
                defaults.idle_timeout,
            )?,
            write_timeout: timeout(
                self.write_timeout,
                "listener.write_timeout",
                defaults.write_timeout,
            )?,
            max_connections,
            max_connections_per_ip,
            auth_failures_per_source: v
                .parsed(
                    self.auth_failures_per_source.as_ref(),
                    "listener.auth_failures_per_source",
                    str::parse,
                )?
                .unwrap_or(defaults.auth_failures_per_source),
            auth_failures_per_credential: v
                .parsed(
                    self.auth_failures_per_credential.as_ref(),
                    "listener.auth_failures_per_credential",
                    str::parse,
                )?
                .unwrap_or(defaults.auth_failures_per_credential),
            failure_record_interval: timeout(
                self.failure_record_interval,
                "listener.failure_record_interval",
                defaults.failure_record_interval,
            )?,
            insecure_plaintext: self.insecure_plaintext.unwrap_or(false),
            tls,
            sse: self.sse.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::time::Duration;

    fn load(text: &str) -> Result<Config, String> {
        Config::parse(text, std::path::Path::new("/etc/portcullis/test.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_hold_without_the_section() {
        let config = load("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listener, super::ListenerConfig::default());
    }

    #[test]
    fn keys_are_read_and_checked() {
        let config = load(
            "[listener]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"3s\"\nidle_timeout = \"4s\"\nwrite_timeout = \"5s\"\nmax_connections = 50\nmax_connections_per_ip = 5\nauth_failures_per_source = \"3/min\"\nauth_failures_per_credential = \"5/min burst 2\"\nfailure_record_interval = \"1s\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let listener = config.listener;
        assert_eq!(listener.header_read_timeout, Duration::from_secs(2));
        assert_eq!(listener.body_read_timeout, Duration::from_secs(3));
        assert_eq!(listener.idle_timeout, Duration::from_secs(4));
        assert_eq!(listener.write_timeout, Duration::from_secs(5));
        assert_eq!(
            (listener.max_connections, listener.max_connections_per_ip),
            (50, 5)
        );
        assert_eq!(listener.auth_failures_per_source.burst, 3);
        assert_eq!(listener.auth_failures_per_credential.burst, 2);
        assert_eq!(listener.failure_record_interval, Duration::from_secs(1));

        for (text, says) in [
            (
                "[listener]\nheader_read_timeout = \"0s\"\n",
                "listener.header_read_timeout",
            ),
            (
                "[listener]\nidle_timeout = \"2h\"\n",
                "listener.idle_timeout",
            ),
            (
                "[listener]\nmax_connections = 0\n",
                "listener.max_connections",
            ),
            (
                "[listener]\nmax_connections = 4\nmax_connections_per_ip = 5\n",
                "must not exceed listener.max_connections (4)",
            ),
            (
                "[listener]\nauth_failures_per_source = \"often\"\n",
                "not a quota",
            ),
            ("[listener]\nbacklog = 5\n", "backlog"),
            (
                "[proxy]\nlisten = \"0.0.0.0:8811\"\n",
                "set `[listener] insecure_plaintext = true`",
            ),
            (
                "[proxy]\nlisten = \"[::]:8811\"\n",
                "is not a loopback address",
            ),
        ] {
            let error = load(text)
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_plaintext_bind_off_loopback_needs_saying_so() {
        let config = load(
            "[proxy]\nlisten = \"0.0.0.0:8811\"\nallowed_hosts = [\"MCP.example.com\"]\n[listener]\ninsecure_plaintext = true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.listener.insecure_plaintext);
        assert_eq!(config.proxy.allowed_hosts, ["mcp.example.com"]);
        assert!(load("[proxy]\nlisten = \"127.0.0.1:8811\"\n").is_ok());
        // With TLS, no saying so is needed; TLS needs its key.
        let tls = load(
            "[proxy]\nlisten = \"0.0.0.0:8811\"\n[listener]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let paths = tls.listener.tls.map(|t| (t.cert, t.key, t.client_ca));
        assert_eq!(
            paths,
            Some((
                "/etc/portcullis/tls/cert.pem".into(),
                "/etc/portcullis/tls/key.pem".into(),
                None
            ))
        );
        let error = load("[listener]\ntls_cert = \"cert.pem\"\n")
            .err()
            .unwrap_or_default();
        assert!(
            error.contains("needs both `tls_cert` and `tls_key`"),
            "{error}"
        );
        let error = load(&format!(
            "[[clients]]\nname = \"c\"\ncert_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ))
        .err()
        .unwrap_or_default();
        assert!(error.contains("set `[listener] tls_client_ca`"), "{error}");
        for host in [
            "mcp.example.com:8443",
            "https://mcp.example.com",
            "[2001:db8::1]",
        ] {
            let error = load(&format!("[proxy]\nallowed_hosts = [{host:?}]\n"))
                .err()
                .unwrap_or_default();
            assert!(
                error.contains("is not a host name or address"),
                "{host}: {error}"
            );
        }
        assert!(load("[proxy]\nallowed_hosts = [\"2001:db8::1\", \"10.0.0.5\"]\n").is_ok());
        assert!(load("[proxy]\nlisten = \"[::1]:8811\"\n").is_ok());
    }

    #[test]
    fn a_per_client_session_cap_cannot_pass_the_total() {
        let error = load("[proxy]\nmax_sessions = 10\nmax_sessions_per_client = 11\n")
            .err()
            .unwrap_or_default();
        assert!(error.contains("proxy.max_sessions_per_client"), "{error}");
        let config = load("[proxy]\nmax_sessions = 10\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.proxy.max_sessions_per_client, 10);
    }
}
