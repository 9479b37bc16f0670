//! The client's address behind trusted proxies.
//!
//! Behind a load balancer every connection comes from the balancer, so the per-IP limits would
//! count every client together. When the connection's peer is a trusted proxy
//! (`CHAT_TRUSTED_PROXIES`), the client is the right-most address of `X-Forwarded-For` that is
//! not itself a trusted proxy. Each proxy appends the address it was connected from, so
//! everything to the left of that entry was written by the client and is never believed. A
//! malformed entry on the way falls back to the peer.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use warp::http::header::HeaderValue;

/// An address range: an IP address and a prefix length (`10.0.0.0/8`, `::1/128`); a bare
/// address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the range. IPv4 addresses written as IPv6 (`::ffff:a.b.c.d`) count as
    /// the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `width` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, width: u8, prefix: u8) -> bool {
    let host_bits = u32::from(width.saturating_sub(prefix));
    a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= width => prefix,
                _ => return Err(format!("{text:?}: the prefix length is 0 to {width}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The trusted proxies: addresses and ranges, comma separated; an empty list trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<TrustedProxies, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<IpNet>, String>>()
            .map(TrustedProxies)
    }
}

/// The client's address: `peer`, or, when `peer` is a trusted proxy, what the proxies say in
/// `forwarded_for` (every `X-Forwarded-For` header, in order).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut entries = Vec::new();
    for value in forwarded_for {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        entries.extend(text.split(','));
    }
    let mut client = peer;
    for entry in entries.into_iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            return peer;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:5678`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().filter_map(|text| text.parse().ok()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
    }

    fn resolve(peer: &str, headers: &[&str], trusted: &[&str]) -> IpAddr {
        let headers: Vec<HeaderValue> = headers.iter().map(|text| header(text)).collect();
        client_ip(ip(peer), &headers, &nets(trusted))
    }

    #[test]
    fn ranges_parse_and_match() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap_or(IpNet {
            addr: ip("0.0.0.0"),
            prefix: 32,
        });
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4 written as IPv6");
        assert!(!net.contains(ip("::1")));
        assert_eq!(nets(&["0.0.0.0/0"])[0].to_string(), "0.0.0.0/0");
        assert!(nets(&["0.0.0.0/0"])[0].contains(ip("192.0.2.1")));
        assert!(nets(&["fd00::/8"])[0].contains(ip("fd12:3456::1")));
        assert!(!nets(&["fd00::/8"])[0].contains(ip("fe80::1")));
        assert!(nets(&["127.0.0.1"])[0].contains(ip("127.0.0.1")));
        assert!(!nets(&["127.0.0.1"])[0].contains(ip("127.0.0.2")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "proxy",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxy_lists_may_be_empty() {
        let parse = |text: &str| text.parse::<TrustedProxies>().map(|list| list.0.len());
        assert_eq!(parse(""), Ok(0));
        assert_eq!(parse(" , "), Ok(0));
        assert_eq!(parse("10.0.0.0/8, 192.0.2.7,"), Ok(2));
        assert!(parse("10.0.0.0/8,lb").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        assert_eq!(
            resolve("192.0.2.7", &["203.0.113.1"], &["10.0.0.1"]),
            ip("192.0.2.7")
        );
        assert_eq!(resolve("192.0.2.7", &["203.0.113.1"], &[]), ip("192.0.2.7"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_entry_is_the_client() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            resolve("10.0.0.1", &["203.0.113.1"], &trusted),
            ip("203.0.113.1")
        );
        // The left part was sent by the client: never believed.
        assert_eq!(
            resolve("10.0.0.1", &["198.51.100.9, 203.0.113.1"], &trusted),
            ip("203.0.113.1")
        );
        // A chain of trusted proxies is walked through.
        assert_eq!(
            resolve(
                "10.0.0.1",
                &["198.51.100.9, 203.0.113.1, 10.0.0.2"],
                &trusted
            ),
            ip("203.0.113.1")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            resolve("10.0.0.1", &["198.51.100.9", "203.0.113.1"], &trusted),
            ip("203.0.113.1")
        );
        // Ports and IPv6.
        assert_eq!(
            resolve("10.0.0.1", &["203.0.113.1:4711"], &trusted),
            ip("203.0.113.1")
        );
        assert_eq!(
            resolve("10.0.0.1", &["[2001:db8::1]:4711"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            resolve("::ffff:10.0.0.1", &["2001:db8::1"], &trusted),
            ip("2001:db8::1")
        );
        // Garbage left of the client's entry is never read.
        assert_eq!(
            resolve("10.0.0.1", &["not an address, 203.0.113.1"], &trusted),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn without_a_usable_header_the_peer_is_the_client() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(resolve("10.0.0.1", &[], &trusted), ip("10.0.0.1"));
        assert_eq!(resolve("10.0.0.1", &[""], &trusted), ip("10.0.0.1"));
        assert_eq!(
            resolve("10.0.0.1", &["203.0.113.1, nonsense"], &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve("10.0.0.1", &["203.0.113.1,,"], &trusted),
            ip("10.0.0.1")
        );
        let opaque = HeaderValue::from_bytes(b"203.0.113.1\xff").unwrap_or(header("x"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), [&opaque], &nets(&trusted)),
            ip("10.0.0.1")
        );
        // Only trusted addresses: the furthest one.
        assert_eq!(
            resolve("10.0.0.1", &["10.0.0.3, 10.0.0.2"], &trusted),
            ip("10.0.0.3")
        );
    }
}
