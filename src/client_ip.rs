//! The client address of a request and CIDR allow-lists.
//!
//! The address is the TCP peer, unless the peer is a trusted proxy: then it is the right-most
//! address of `X-Forwarded-For` that is not itself a trusted proxy. Left-most entries are
//! written by the client and are never believed.

use ipnet::IpNet;
use std::net::IpAddr;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes plain IPv4 so that IPv4 CIDRs match it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) becomes the IPv4 network it maps
/// (`10.0.0.0/8`): addresses are compared in their canonical form, so the mapped one would
/// never match.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .map(|n| n.trunc())
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Whether the network holds the (canonical) address, the network taken canonically too.
fn holds(net: &IpNet, ip: &IpAddr) -> bool {
    canonical_net(*net).contains(ip)
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| holds(net, &ip))
}

/// Resolves the client address from the peer and the `X-Forwarded-For` values (in header order).
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    proxies: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !trusted(ip, proxies) {
                    return ip;
                }
            }
            // A hop we cannot read ends the chain: the last trusted address is all we know.
            None => return client,
        }
    }
    client
}

/// An `X-Forwarded-For` element: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    None
}

/// Parses one allow-list entry: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address.
/// Host bits are cleared, so `10.1.2.3/8` means `10.0.0.0/8`.
pub fn parse_cidr(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Some(canonical_net(net.trunc()));
    }
    entry
        .parse::<IpAddr>()
        .ok()
        .map(|ip| canonical_net(IpNet::from(ip)))
}

/// Parses an allow-list, naming the first invalid entry the way npm does.
pub fn parse_cidr_list(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| {
            parse_cidr(e).ok_or_else(|| {
                format!(
                    "CIDR whitelist contains invalid CIDR entry: {}",
                    crate::error::clip(e)
                )
            })
        })
        .collect()
}

/// Whether `ip` is allowed by the list; an empty list allows nothing.
pub fn allowed(ip: IpAddr, list: &[IpNet]) -> bool {
    let ip = canonical(ip);
    list.iter().any(|net| holds(net, &ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let ip = resolve("203.0.113.9".parse().unwrap(), ["10.0.0.1"], &[]);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_proxy_gives_rightmost_untrusted_hop() {
        let proxies = nets(&["10.0.0.0/8"]);
        let cases: &[(&[&str], &str)] = &[
            (&["198.51.100.7"], "198.51.100.7"),
            // A spoofed left-most entry is ignored.
            (&["1.1.1.1, 198.51.100.7"], "198.51.100.7"),
            (&["1.1.1.1, 198.51.100.7, 10.0.0.2"], "198.51.100.7"),
            (&["1.1.1.1", "198.51.100.7"], "198.51.100.7"),
            (&[], "10.0.0.5"),
            (&["garbage, 10.0.0.3"], "10.0.0.3"),
            (&["[2001:db8::1]:443"], "2001:db8::1"),
            (&["::ffff:192.0.2.1"], "192.0.2.1"),
            (&["198.51.100.7:5555"], "198.51.100.7"),
        ];
        for (headers, want) in cases {
            let got = resolve(
                "10.0.0.5".parse().unwrap(),
                headers.iter().copied(),
                &proxies,
            );
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{headers:?}");
        }
    }

    #[test]
    fn mapped_ipv6_peer_matches_ipv4_lists() {
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(allowed(peer, &nets(&["127.0.0.0/8"])));
        let ip = resolve(peer, ["192.0.2.4"], &nets(&["127.0.0.1/32"]));
        assert_eq!(ip, "192.0.2.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn cidr_entries() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_cidr("192.0.2.1"),
            Some("192.0.2.1/32".parse().unwrap())
        );
        assert_eq!(
            parse_cidr("2001:db8::/32"),
            Some("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(parse_cidr("::1"), Some("::1/128".parse().unwrap()));
        for bad in [
            "",
            "bogus",
            "10.0.0.0/33",
            "300.1.1.1/8",
            "::/129",
            "10.0.0.0/",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        let err = parse_cidr_list(&["10.0.0.0/8".into(), "x".into()]).unwrap_err();
        assert_eq!(err, "CIDR whitelist contains invalid CIDR entry: x");
        // Found by the properties: a huge entry was repeated whole.
        let err = parse_cidr_list(&["a".repeat(157)]).unwrap_err();
        assert_eq!(
            err,
            format!(
                "CIDR whitelist contains invalid CIDR entry: {}…",
                "a".repeat(40)
            )
        );
    }

    /// Found by the properties: a mapped entry or proxy never matched, since addresses are
    /// compared in their IPv4 form.
    #[test]
    fn mapped_networks_match_ipv4_addresses() {
        let entry = parse_cidr("::ffff:0.0.0.0").unwrap();
        assert_eq!(entry, "0.0.0.0/32".parse::<IpNet>().unwrap());
        assert!(allowed("::ffff:0.0.0.0".parse().unwrap(), &[entry]));
        assert_eq!(
            parse_cidr("::ffff:10.1.0.0/104"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        // A list stored before this change, or a proxy from the config, still matches.
        let stored = nets(&["::ffff:172.16.0.0/108"]);
        assert!(allowed("172.16.3.4".parse().unwrap(), &stored));
        let ip = resolve("10.0.0.1".parse().unwrap(), ["0.0.0.0, 172.16.0.0"], &{
            let mut p = nets(&["10.0.0.0/8"]);
            p.extend(stored);
            p
        });
        assert_eq!(ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        // A prefix shorter than the mapping is an IPv6 network.
        assert_eq!(parse_cidr("::ffff:0:0/80"), Some("::/80".parse().unwrap()));
    }

    #[test]
    fn allow_lists() {
        let list = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(allowed("10.2.3.4".parse().unwrap(), &list));
        assert!(allowed("2001:db8::5".parse().unwrap(), &list));
        assert!(!allowed("11.0.0.1".parse().unwrap(), &list));
        assert!(!allowed("127.0.0.1".parse().unwrap(), &[]));
    }
}
