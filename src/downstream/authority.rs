//! The `Host` header, parsed strictly: what the Host allowlist (DNS
//! rebinding protection) compares, for `/mcp`, the admin API and the
//! console alike. A value that is not exactly an authority of RFC 3986
//! without user info (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`)
//! names no host, and is refused: `127.0.0.1:8811.evil.example` is not
//! loopback with a long port.

use std::net::Ipv6Addr;

/// The host of a `Host` value (lower-cased; an IPv6 address without its
/// brackets) and its port, or `None` when the value is not an authority.
pub fn host_of(value: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let address: Ipv6Addr = inside.parse().ok()?;
            let port = match after {
                "" => None,
                after => Some(port(after.strip_prefix(':')?)?),
            };
            return Some((address.to_string(), port));
        }
        None => match value.split_once(':') {
            Some((host, after)) => (host, Some(port(after)?)),
            None => (value, None),
        },
    };
    let name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    name.then(|| (host.to_ascii_lowercase(), port))
}

/// A port: one to five digits, at most 65535.
fn port(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_an_authority_or_nothing() {
        let ok = [
            ("localhost", ("localhost", None)),
            ("LOCALHOST:8811", ("localhost", Some(8811))),
            ("127.0.0.1:65535", ("127.0.0.1", Some(65535))),
            ("[::1]", ("::1", None)),
            ("[::1]:8811", ("::1", Some(8811))),
            ("[0:0:0:0:0:0:0:1]:80", ("::1", Some(80))),
            ("mcp.example.com:443", ("mcp.example.com", Some(443))),
        ];
        for (value, (host, port)) in ok {
            assert_eq!(host_of(value), Some((host.to_owned(), port)), "{value}");
        }
        let refused = [
            "127.0.0.1:8811.evil.example",
            "localhost:abc",
            "localhost:",
            "localhost:99999",
            "localhost:123456",
            "localhost:1:2",
            "localhost:+80",
            "[::1]evil",
            "[::1]:80.evil",
            "[::1]:",
            "[::1",
            "[evil]",
            "::1",
            "user@localhost",
            "localhost/x",
            "localhost?x",
            "localhost#x",
            " localhost",
            "localhost ",
            "local\u{0}host",
            "",
            ":8811",
        ];
        for value in refused {
            assert_eq!(host_of(value), None, "{value:?}");
        }
    }
}
