//! Which addresses the guard refuses, and why: the classes of address that
//! are not somewhere on the internet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What the proxy knows of a host it is about to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operator wrote it (the config, a command's flag).
    Written,
    /// A peer named it (metadata, a catalog, a registry entry).
    Learned,
}

/// Why an address is refused: its class, as errors name it.
pub(super) fn refusal(ip: IpAddr, trust: Trust, allow: &[IpNet]) -> Option<&'static str> {
    let ip = canonical(ip);
    if allow.iter().any(|range| range.contains(&ip)) {
        return None;
    }
    // Cloud metadata answers on link-local addresses: refused even where
    // the operator wrote the URL (a typo, a template, a URL pasted from a
    // peer), unless `[egress] allow` names the range.
    if let Some(class) = link_local(ip) {
        return Some(class);
    }
    match trust {
        Trust::Written => None,
        Trust::Learned => class(ip),
    }
}

/// An IPv4 address carried in IPv6 (mapped, NAT64's well-known prefix,
/// 6to4), as the IPv4 address it reaches; any other as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let segments = v6.segments();
    let octets = v6.octets();
    let tail = |at: usize| {
        let mut four = [0u8; 4];
        for (to, from) in four.iter_mut().zip(octets.iter().skip(at)) {
            *to = *from;
        }
        Ipv4Addr::from(four)
    };
    match segments {
        // 64:ff9b::/96 (NAT64).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => IpAddr::V4(tail(12)),
        // 2002::/16 (6to4): the IPv4 address follows the prefix.
        [0x2002, ..] => IpAddr::V4(tail(2)),
        // IPv4-compatible (`::a.b.c.d`, deprecated), but for `::` and `::1`.
        [0, 0, 0, 0, 0, 0, high, low] if high != 0 || low > 1 => IpAddr::V4(tail(12)),
        _ => ip,
    }
}

fn link_local(ip: IpAddr) -> Option<&'static str> {
    let metadata_v6 = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (cloud metadata)"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() || v6 == metadata_v6 => {
            Some("link-local (cloud metadata)")
        }
        _ => None,
    }
}

/// The class of an address that is not on the internet, if it is one.
fn class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

fn class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // 100.64.0.0/10 is the carriers' shared space: private to someone.
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a == 0 || ip.is_broadcast() {
        Some("unspecified or broadcast")
    } else if a >= 240
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a == 198 && (b == 18 || b == 19))
    {
        Some("reserved")
    } else {
        None
    }
}

fn class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified or broadcast")
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 {
        // Unique local (fc00::/7), and the old site-local (fec0::/10).
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first == 0x2001 && ip.segments()[1] == 0xdb8
        || (first & 0xe000) != 0x2000
        || ip.segments()[..3] == [0x64, 0xff9b, 1]
    {
        // Documentation, everything outside 2000::/3 (the only global
        // unicast space allocated), and local-use NAT64 (64:ff9b:1::/48,
        // whose IPv4 address is spread over its bits: refused whole).
        Some("reserved")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str, trust: Trust) -> Option<&'static str> {
        let ip: IpAddr = text.parse().unwrap_or_else(|_| unreachable!("{text}"));
        refusal(ip, trust, &[])
    }

    #[test]
    fn a_learned_address_off_the_internet_is_refused_with_its_class() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.31.0.1", "private"),
            ("192.168.0.10", "private"),
            ("100.64.0.1", "private"),
            ("fd12::1", "private"),
            ("fec0::1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("fe80::1", "link-local (cloud metadata)"),
            ("fd00:ec2::254", "link-local (cloud metadata)"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "unspecified or broadcast"),
            ("::", "unspecified or broadcast"),
            ("255.255.255.255", "unspecified or broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.7", "reserved"),
            ("2001:db8::1", "reserved"),
            // IPv4 inside IPv6: judged as the IPv4 address it reaches.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:0a00:0001::1", "private"),
            ("::169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b:1:a9fe:a9:fe00:808:808", "reserved"),
        ];
        for (address, class) in cases {
            assert_eq!(refused(address, Trust::Learned), Some(class), "{address}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert_eq!(refused(public, Trust::Learned), None, "{public}");
        }
    }

    #[test]
    fn a_written_address_is_refused_only_if_link_local() {
        for ok in ["127.0.0.1", "10.0.0.1", "::1", "fd12::1", "8.8.8.8"] {
            assert_eq!(refused(ok, Trust::Written), None, "{ok}");
        }
        for metadata in [
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
        ] {
            assert!(refused(metadata, Trust::Written).is_some(), "{metadata}");
        }
    }

    #[test]
    fn an_allowed_range_lets_its_addresses_through_and_no_others() {
        let allow: Vec<IpNet> = ["127.0.0.0/8", "169.254.169.254/32"]
            .iter()
            .filter_map(|range| range.parse().ok())
            .collect();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or_else(|_| unreachable!());
        assert_eq!(refusal(ip("127.0.0.2"), Trust::Learned, &allow), None);
        assert_eq!(
            refusal(ip("::ffff:127.0.0.2"), Trust::Learned, &allow),
            None
        );
        assert_eq!(refusal(ip("169.254.169.254"), Trust::Written, &allow), None);
        assert!(refusal(ip("169.254.169.253"), Trust::Written, &allow).is_some());
        assert!(refusal(ip("10.0.0.1"), Trust::Learned, &allow).is_some());
        assert!(refusal(ip("::1"), Trust::Learned, &allow).is_some());
    }
}
