//! Outbound HTTP, guarded: the one way the proxy builds an HTTP client
//! toward anything outside it (remote servers and their token endpoints,
//! identity providers, the trace collector, the admin API a CLI reads).
//!
//! Every client built here:
//! - follows no redirect: a 3xx is the failure of that request
//!   ([`EgressError::Redirect`]), never retried elsewhere. A redirect would
//!   re-send the request (its body, and the headers the operator set for
//!   that server, API keys included) wherever a server says;
//! - uses no proxy from the environment: a proxy resolves names itself,
//!   past the guard;
//! - checks every address it connects to, when it connects: a name is
//!   resolved by the guard itself ([`Guard`] is the client's resolver), so
//!   a name that resolves to a public address when checked and to
//!   loopback when used (DNS rebinding) is checked on what it is used as;
//!   an address written as such is checked when the request is made
//!   ([`HttpClient::request`]), which is the only way to make one.
//!
//! What is refused depends on who named the host ([`Trust`]): a host the
//! operator wrote may be anything but link-local (cloud metadata); a host
//! a peer named (an identity provider's metadata naming another host) may
//! not be loopback, private, link-local, multicast or reserved either.
//! `[egress] allow` lets ranges through.

mod address;
pub mod document;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub use address::Trust;

use crate::config::EgressConfig;

/// An outbound request that did not go, or whose answer is not one.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("`{url}` is not an http:// or https:// URL with a host")]
    NotHttp { url: String },
    #[error(
        "`{host}` is {address}, a {class} address, which the proxy does not connect to{learned} (`[egress] allow` lets a range through)"
    )]
    Refused {
        host: String,
        address: IpAddr,
        class: &'static str,
        /// `""`, or why the host's class matters (a peer named it).
        learned: &'static str,
    },
    #[error(
        "{url} is not an origin the config writes on `{host}`: a peer may name only those there"
    )]
    OtherOrigin { url: String, host: String },
    #[error("cannot resolve `{host}`: {reason}")]
    Unresolved { host: String, reason: String },
    #[error("{where_} answered HTTP {status} (a redirect{to}): redirects are not followed")]
    Redirect {
        /// The origin that answered (scheme, host, port).
        where_: String,
        status: reqwest::StatusCode,
        /// ` to ORIGIN`, where the answer said.
        to: String,
    },
    #[error("cannot build an HTTP client: {0}")]
    Build(String),
    #[error("{where_}: {reason}")]
    Failed { where_: String, reason: String },
}

/// The timeouts of a client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole request, body included; `None` for streams that stay open.
    pub total: Option<Duration>,
}

/// Decides each address a client connects to, and resolves names for it.
#[derive(Debug)]
struct Guard {
    allow: Arc<[IpNet]>,
    trust: Trust,
    /// Hosts the operator wrote, lower-cased: judged as [`Trust::Written`]
    /// by a client for learned hosts (an identity provider's own host,
    /// whose metadata names the rest).
    written: Vec<String>,
    /// The origins the operator wrote on those hosts (scheme, host, port):
    /// a peer may name no other origin there (another port of the issuer's
    /// host could be any local service).
    origins: Vec<String>,
}

impl Guard {
    fn trust_of(&self, host: &str) -> Trust {
        let host = bare(host);
        match self.trust {
            Trust::Learned if self.written.iter().any(|w| w.eq_ignore_ascii_case(host)) => {
                Trust::Written
            }
            trust => trust,
        }
    }

    fn check(&self, host: &str, address: IpAddr) -> Result<(), EgressError> {
        let trust = self.trust_of(host);
        match address::refusal(address, trust, &self.allow) {
            None => Ok(()),
            Some(class) => Err(EgressError::Refused {
                host: host.to_owned(),
                address,
                class,
                learned: match trust {
                    Trust::Learned => " at an address a peer named",
                    Trust::Written => "",
                },
            }),
        }
    }
}

/// The guard as the client's resolver: a name's addresses are looked up
/// here and those refused are dropped; a name none of whose addresses is
/// allowed fails to resolve, with the reason.
struct GuardedResolver(Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|err| EgressError::Unresolved {
                    host: host.clone(),
                    reason: err.to_string(),
                })?;
            let mut kept: Vec<SocketAddr> = Vec::new();
            let mut refused = None;
            for address in found {
                match guard.check(&host, address.ip()) {
                    Ok(()) => kept.push(address),
                    Err(err) => refused = Some(err),
                }
            }
            match (kept.is_empty(), refused) {
                (true, Some(err)) => Err(Box::new(err) as _),
                (true, None) => Err(Box::new(EgressError::Unresolved {
                    host,
                    reason: "no address".into(),
                }) as _),
                (false, _) => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// An HTTP client whose every connection passes the guard.
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for hosts of `trust`; with [`Trust::Learned`], `written`
    /// are the URLs among them that the operator wrote (their origins are
    /// judged as written; no other origin on their hosts may be reached).
    pub fn new(
        egress: &EgressConfig,
        trust: Trust,
        written: &[reqwest::Url],
        timeouts: Timeouts,
    ) -> Result<Self, EgressError> {
        // reqwest is built without a bundled crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let guard = Arc::new(Guard {
            allow: egress.allow.clone(),
            trust,
            written: written
                .iter()
                .filter_map(reqwest::Url::host_str)
                .map(|host| bare(host).to_ascii_lowercase())
                .collect(),
            origins: written.iter().map(origin).collect(),
        });
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .connect_timeout(timeouts.connect);
        if let Some(total) = timeouts.total {
            builder = builder.timeout(total);
        }
        let http = builder
            .build()
            .map_err(|err| EgressError::Build(without_url(&err)))?;
        Ok(Self { http, guard })
    }

    /// A request to `url`, if the guard lets it be made: its scheme is
    /// HTTP, and a host written as an address is checked here (a name is
    /// checked on what it resolves to, when the connection is made).
    pub fn request(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::NotHttp { url: origin(&url) });
        }
        let Some(host) = url.host_str() else {
            return Err(EgressError::NotHttp { url: origin(&url) });
        };
        let host = bare(host);
        // A peer naming another origin on a host the operator wrote: the
        // name would pass as written at connect time, so it is refused
        // here (an address is judged as the peer's).
        let elsewhere = self.guard.trust == Trust::Learned
            && self.guard.trust_of(host) == Trust::Written
            && !self.guard.origins.contains(&origin(&url));
        match host.parse::<IpAddr>() {
            Ok(address) if elsewhere => {
                let refused = address::refusal(address, Trust::Learned, &self.guard.allow);
                if let Some(class) = refused {
                    return Err(EgressError::Refused {
                        host: host.to_owned(),
                        address,
                        class,
                        learned: " at an address a peer named",
                    });
                }
            }
            Ok(address) => self.guard.check(host, address)?,
            Err(_) if elsewhere => {
                return Err(EgressError::OtherOrigin {
                    url: origin(&url),
                    host: host.to_owned(),
                });
            }
            Err(_) => {}
        }
        Ok(self.http.request(method, url))
    }

    /// [`request`](Self::request) of a URL given as text.
    pub fn request_to(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| EgressError::NotHttp {
            url: url.chars().take(200).collect(),
        })?;
        self.request(method, parsed)
    }
}

/// A host without the brackets of an IPv6 address.
fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Sends `request`: an error names where it went (its origin, never its
/// path or query, which may carry credentials) and why; a redirect is an
/// error of its own.
pub async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, EgressError> {
    let response = request.send().await.map_err(|err| EgressError::Failed {
        where_: err
            .url()
            .map(origin)
            .unwrap_or_else(|| "the request".into()),
        reason: without_url(&err),
    })?;
    let status = response.status();
    if status.is_redirection() {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|location| location.to_str().ok())
            .and_then(|location| response.url().join(location).ok())
            .map(|url| format!(" to {}", origin(&url)))
            .unwrap_or_default();
        return Err(EgressError::Redirect {
            where_: origin(response.url()),
            status,
            to,
        });
    }
    Ok(response)
}

/// Where a URL points, as errors may say it: its scheme, host and port
/// (its path, query and user info may carry credentials).
pub fn origin(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let host: String = host.chars().filter(|c| !c.is_control()).take(255).collect();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A reqwest error without its URL (which may carry credentials in its
/// query), with its causes: the guard's refusal among them.
pub fn without_url(err: &reqwest::Error) -> String {
    let mut text = if err.is_connect() {
        "connection failed".to_owned()
    } else if err.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A response's whole body, refused past `limit` bytes.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("cannot read the response: {}", without_url(&err)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the response exceeds {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
