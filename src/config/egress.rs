//! `[egress]`: the address ranges the proxy may connect to although its
//! egress guard (`src/egress`) refuses them by default.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, OauthConfig, ObservabilityConfig, ServerConfig, UpstreamSpec, Validator};

/// `[egress]`, validated: carried by every part of the config that makes
/// outbound connections (remote servers, identity providers, the trace
/// exporter), so that each builds its client with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// Ranges allowed whatever they are (loopback, private, link-local…).
    pub allow: Arc<[IpNet]>,
}

/// `[egress]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    /// Address ranges (`10.0.0.0/8`, `fd00::/8`, or one address) the proxy
    /// may connect to although its guard refuses them: loopback, private,
    /// link-local, multicast and reserved addresses for an address it
    /// learned from a peer (an identity provider's metadata naming another
    /// host), and link-local addresses (cloud metadata such as
    /// `169.254.169.254`) even where the config itself writes the URL.
    /// Checked on the address a name resolves to, when the connection is
    /// made.
    #[serde(default)]
    #[schemars(with = "Vec<String>", extend("default" = []))]
    allow: Vec<Spanned<String>>,
}

impl RawEgress {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<EgressConfig, ConfigError> {
        let allow = self
            .allow
            .iter()
            .enumerate()
            .map(|(index, range)| {
                parse_range(range.get_ref()).map_err(|message| {
                    v.error(
                        Some(range.span()),
                        &format!("egress.allow[{index}]"),
                        message,
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressConfig {
            allow: allow.into(),
        })
    }
}

/// Gives `[egress]` to every part of the config that connects out: remote
/// servers, the identity providers, the trace exporter.
pub(super) fn hand_out(
    egress: &EgressConfig,
    servers: &mut [ServerConfig],
    oauth: Option<&mut OauthConfig>,
    observability: &mut ObservabilityConfig,
) {
    for server in servers {
        match &mut server.kind {
            UpstreamSpec::Remote(remote) => remote.egress = egress.clone(),
            UpstreamSpec::Container(container) => {
                if let Some(sign_in) = &mut container.sign_in {
                    sign_in.remote.egress = egress.clone();
                }
            }
            UpstreamSpec::Process(_) => {}
        }
    }
    if let Some(oauth) = oauth {
        oauth.egress = egress.clone();
    }
    if let Some(traces) = &mut observability.traces {
        traces.egress = egress.clone();
    }
}

/// An address range as written: CIDR, or one address (its own range).
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        // `10.1.2.3/8` says more than it means: the range is `10.0.0.0/8`.
        if net.addr() != net.network() {
            return Err(format!(
                "`{text}` has bits set past its prefix: write `{}`",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "`{text}` is not an address range: write it as `10.0.0.0/8`, `fd00::/8` or one address"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cidr_or_one_address_and_nothing_looser() {
        assert_eq!(
            parse_range("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(
            parse_range("169.254.169.254").map(|net| net.prefix_len()),
            Ok(32)
        );
        assert_eq!(parse_range("::1").map(|net| net.prefix_len()), Ok(128));
        for bad in [
            "10.0.0.0/33",
            "10.1.2.3/8",
            "localhost",
            "10.0.0",
            "",
            "10.0.0.0/8 x",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert!(
            parse_range("10.1.2.3/8")
                .err()
                .is_some_and(|message| message.contains("`10.0.0.0/8`"))
        );
    }
}
