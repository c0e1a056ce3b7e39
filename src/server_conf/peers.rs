//! coturn's peer policy, mirrored: which peer addresses a CreatePermission or a new ChannelBind
//! may name (`good_peer_addr` in coturn 4.6.1's `ns_turn_server.c`), with the address lists as
//! coturn reads them (`add_ip_list_range`, `make_ioa_addr`, `ioa_addr_in_range`).
//!
//! Only the static lists from the command line and the config file are seen here. coturn also
//! re-reads `allowed_peer_ip`/`denied_peer_ip` from its database every few seconds unless it runs
//! with `--no-dynamic-ip-list`; those can deny (or allow) more than this mirror knows.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};

/// `allowed-peer-ip` / `denied-peer-ip` value: one address or `first-last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrRange {
    pub min: IpAddr,
    pub max: IpAddr,
    /// The value as given.
    pub text: String,
}

/// coturn's `make_ioa_addr` for a host name: the first IPv4 address getaddrinfo gives, else the
/// first IPv6 one. A value with a `/` (a CIDR block, which coturn 4.6.1 does not read) is never
/// looked up: no host name has one, and coturn's lookup of it fails too.
pub fn resolve_host(name: &str) -> Option<IpAddr> {
    if name.contains('/') {
        return None;
    }
    let addrs: Vec<IpAddr> = (name, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// coturn's `make_ioa_addr` without a port: spaces (only spaces) trimmed, an empty string is
/// 0.0.0.0, then an IPv4 literal, an IPv6 literal, else a host name via `resolve`.
pub fn make_addr(s: &str, resolve: &dyn Fn(&str) -> Option<IpAddr>) -> Option<IpAddr> {
    let s = s.trim_matches(' ');
    if s.is_empty() {
        return Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    s.parse::<IpAddr>().ok().or_else(|| resolve(s))
}

impl AddrRange {
    /// coturn's `add_ip_list_range`: split at the first `-`; each side must be an address.
    /// `Err` names the part coturn logs as "Wrong address format" before dropping the value.
    pub fn parse(s: &str, resolve: &dyn Fn(&str) -> Option<IpAddr>) -> Result<AddrRange, String> {
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let min = make_addr(first, resolve).ok_or_else(|| first.to_string())?;
        let max = match last {
            Some(b) => make_addr(b, resolve).ok_or_else(|| b.to_string())?,
            None => min,
        };
        Ok(AddrRange {
            min,
            max,
            text: s.to_string(),
        })
    }

    /// coturn's `ioa_addr_in_range`: an all-zero bound is open; otherwise `min <= ip <= max` in
    /// coturn's order (`addr_less_eq`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        (self.min.is_unspecified() || less_eq(self.min, ip))
            && (self.max.is_unspecified() || less_eq(ip, self.max))
    }
}

/// coturn's `addr_less_eq`: across families IPv4 (`AF_INET`, 2) sorts before IPv6 (`AF_INET6`,
/// 10); IPv4 by value; IPv6 only when **every byte** is less or equal (not lexicographic: coturn
/// compares byte by byte and stops at the first greater one).
fn less_eq(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) <= u32::from(b),
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets().iter().zip(b.octets()).all(|(x, y)| *x <= y),
        (IpAddr::V4(_), IpAddr::V6(_)) => true,
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
    }
}

/// `ioa_addr_is_multicast`: IPv4 224.0.0.0 and above (multicast, reserved, broadcast), IPv6
/// ff00::/8.
fn is_multicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] > 223,
        IpAddr::V6(a) => a.octets()[0] == 0xff,
    }
}

/// `ioa_addr_is_loopback`: IPv4 127.0.0.0/8, IPv6 exactly ::1 (not ::ffff:127.0.0.1).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a.is_loopback(),
    }
}

/// `ioa_addr_is_zero`: IPv4 0.0.0.0/8, IPv6 exactly ::.
fn is_zero(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 0,
        IpAddr::V6(a) => a.is_unspecified(),
    }
}

/// The peer policy the server runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// `no-multicast-peers` (off by default in coturn 4.6.1).
    pub no_multicast_peers: bool,
    /// `allow-loopback-peers` (off by default).
    pub allow_loopback_peers: bool,
    /// `allowed-peer-ip` ranges, and the private address of each `external-ip PUBLIC/PRIVATE`
    /// (coturn allows those too).
    pub allowed: Vec<AddrRange>,
    /// `denied-peer-ip` ranges.
    pub denied: Vec<AddrRange>,
    /// Values coturn could not read and dropped (it logs "Wrong address format"): CIDR blocks
    /// such as `10.0.0.0/8`, names that do not resolve. They allow or deny nothing.
    pub dropped: Vec<String>,
}

impl PeerPolicy {
    /// Add an `allowed-peer-ip` (`allow`) or `denied-peer-ip` value as coturn does.
    pub fn add(&mut self, allow: bool, value: &str, resolve: &dyn Fn(&str) -> Option<IpAddr>) {
        match AddrRange::parse(value, resolve) {
            Ok(r) if allow => self.allowed.push(r),
            Ok(r) => self.denied.push(r),
            Err(_) => self.dropped.push(value.to_string()),
        }
    }

    /// Whether coturn would let a client name `ip` as a peer, in coturn's order: multicast
    /// (with `no-multicast-peers`), loopback (unless `allow-loopback-peers`) and the zero
    /// address are refused whatever the lists say; then an allowed range allows, a denied range
    /// denies, and anything else is allowed.
    pub fn peer_allowed(&self, ip: IpAddr) -> bool {
        if self.no_multicast_peers && is_multicast(ip) {
            return false;
        }
        if !self.allow_loopback_peers && is_loopback(ip) {
            return false;
        }
        if is_zero(ip) {
            return false;
        }
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return true;
        }
        !self.denied.iter().any(|r| r.contains(ip))
    }
}

impl PeerPolicy {
    /// Address prefixes that cover every peer this policy refuses whatever the allowed list
    /// says, plus the denied ranges taken numerically: a superset of what coturn denies from
    /// these lists (its IPv6 ranges compare byte by byte, which denies a subset of the numeric
    /// range). The fast path refuses to mirror grants for these peers; leaving the allowed list
    /// out only makes it offload less.
    pub fn refused_prefixes(&self) -> Vec<(IpAddr, u8)> {
        // The zero addresses; and IPv4-mapped and IPv4-compatible IPv6 addresses, which coturn
        // lets through as IPv6 peers but its IPv6 relay socket cannot send to (the fast path
        // would).
        let mut out: Vec<(IpAddr, u8)> = vec![
            (Ipv4Addr::UNSPECIFIED.into(), 8),
            (std::net::Ipv6Addr::UNSPECIFIED.into(), 96),
            (Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().into(), 96),
        ];
        if self.no_multicast_peers {
            out.push((Ipv4Addr::new(224, 0, 0, 0).into(), 3));
            out.push((
                std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(),
                8,
            ));
        }
        if !self.allow_loopback_peers {
            out.push((Ipv4Addr::new(127, 0, 0, 0).into(), 8));
            out.push((std::net::Ipv6Addr::LOCALHOST.into(), 128));
        }
        for r in &self.denied {
            out.extend(range_prefixes(r));
        }
        // coturn takes ::ffff:a.b.c.d for an IPv6 peer and checks it as IPv6 (it lets
        // ::ffff:127.0.0.1 through): refuse the mapped form of every refused IPv4 prefix too.
        let mapped: Vec<(IpAddr, u8)> = out
            .iter()
            .filter_map(|(net, len)| match net {
                IpAddr::V4(a) => Some((IpAddr::V6(a.to_ipv6_mapped()), 96 + len)),
                IpAddr::V6(_) => None,
            })
            .collect();
        out.extend(mapped);
        out
    }
}

/// The prefixes covering `r` as numeric ranges per family (an open bound runs to the end of its
/// family; a range from an IPv4 to an IPv6 address covers the IPv4 addresses from its start
/// and the IPv6 addresses up to its end, as coturn orders IPv4 before IPv6).
fn range_prefixes(r: &AddrRange) -> Vec<(IpAddr, u8)> {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Some(u128::from(u32::from(a))),
        IpAddr::V6(_) => None,
    };
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V6(a) => Some(u128::from(a)),
        IpAddr::V4(_) => None,
    };
    let lo = |ip: IpAddr, f: &dyn Fn(IpAddr) -> Option<u128>| {
        if ip.is_unspecified() {
            Some(0)
        } else {
            f(ip)
        }
    };
    let mut out = Vec::new();
    let (min4, max4) = (
        lo(r.min, &v4),
        if r.max.is_unspecified() || r.max.is_ipv6() {
            Some(u128::from(u32::MAX))
        } else {
            v4(r.max)
        },
    );
    if let (Some(a), Some(b)) = (min4, max4) {
        for (n, len) in cover(a, b, 32) {
            out.push((IpAddr::V4(Ipv4Addr::from(n as u32)), len));
        }
    }
    let (min6, max6) = (
        if r.min.is_unspecified() || r.min.is_ipv4() {
            Some(0)
        } else {
            v6(r.min)
        },
        if r.max.is_unspecified() {
            Some(u128::MAX)
        } else {
            v6(r.max)
        },
    );
    if let (Some(a), Some(b)) = (min6, max6) {
        for (n, len) in cover(a, b, 128) {
            out.push((IpAddr::V6(std::net::Ipv6Addr::from(n)), len));
        }
    }
    out
}

/// The fewest prefixes of a `bits`-bit space that cover exactly `lo..=hi`: (start, prefix
/// length) pairs, in order.
fn cover(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    loop {
        // the largest aligned block at `lo` that does not pass `hi`
        let mut size_log = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        while size_log > 0 && (size_log >= 128 || lo + ((1u128 << size_log) - 1) > hi) {
            if size_log >= 128 && lo == 0 && hi == u128::MAX {
                break;
            }
            size_log -= 1;
        }
        out.push((lo, (bits - size_log) as u8));
        let last = if size_log >= 128 {
            u128::MAX
        } else {
            lo + ((1u128 << size_log) - 1)
        };
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

impl fmt::Display for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[AddrRange]| -> String {
            if v.is_empty() {
                return "none".into();
            }
            v.iter()
                .map(|r| r.text.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "multicast peers {}, loopback peers {}, 0.0.0.0/8 and :: refused; allowed: {}; \
             denied: {}",
            if self.no_multicast_peers {
                "refused"
            } else {
                "allowed"
            },
            if self.allow_loopback_peers {
                "allowed"
            } else {
                "refused"
            },
            list(&self.allowed),
            list(&self.denied),
        )?;
        if !self.dropped.is_empty() {
            write!(
                f,
                "; ignored as coturn ignores them: {}",
                self.dropped.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_cover_is_exact_and_minimal() {
        assert_eq!(cover(0, u128::from(u32::MAX), 32), vec![(0, 0)]);
        assert_eq!(cover(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(cover(10, 10, 32), vec![(10, 32)]);
        // 10.0.0.0-10.255.255.255 is one /8
        let a = u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)));
        let b = u128::from(u32::from(Ipv4Addr::new(10, 255, 255, 255)));
        assert_eq!(cover(a, b, 32), vec![(a, 8)]);
        // 1..=6: 1/32, 2/31, 4/31, 6/32
        assert_eq!(cover(1, 6, 32), vec![(1, 32), (2, 31), (4, 31), (6, 32)]);
        // every address of a random range is covered, and nothing outside it
        for (lo, hi) in [(5u128, 77u128), (0, 1000), (255, 256), (1023, 4097)] {
            let blocks = cover(lo, hi, 32);
            for x in 0..5000u128 {
                let inside = blocks
                    .iter()
                    .any(|(s, len)| x >= *s && x < s + (1u128 << (32 - u32::from(*len))));
                assert_eq!(inside, (lo..=hi).contains(&x), "{x} in {lo}..={hi}");
            }
        }
    }

    #[test]
    fn refused_prefixes_cover_what_coturn_refuses() {
        let mut p = PeerPolicy {
            no_multicast_peers: true,
            ..PeerPolicy::default()
        };
        let none = |_: &str| None;
        p.add(false, "198.51.100.3", &none);
        p.add(false, "203.0.113.0-203.0.113.127", &none);
        let pre = p.refused_prefixes();
        let refused = |ip: IpAddr| {
            pre.iter().any(|(net, len)| match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    *len == 0 || (u32::from(*n) ^ u32::from(a)) >> (32 - u32::from(*len)) == 0
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    *len == 0 || (u128::from(*n) ^ u128::from(a)) >> (128 - u32::from(*len)) == 0
                }
                _ => false,
            })
        };
        for ip in [
            "198.51.100.3",
            "203.0.113.0",
            "203.0.113.127",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused(ip), "{ip} must be refused");
            assert!(!p.peer_allowed(ip), "coturn refuses {ip} too");
        }
        for ip in ["198.51.100.2", "203.0.113.128", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!refused(ip), "{ip} must not be refused");
            assert!(p.peer_allowed(ip));
        }
    }

    fn no_dns(_: &str) -> Option<IpAddr> {
        None
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(allowed: &[&str], denied: &[&str]) -> PeerPolicy {
        let mut p = PeerPolicy::default();
        for a in allowed {
            p.add(true, a, &no_dns);
        }
        for d in denied {
            p.add(false, d, &no_dns);
        }
        p
    }

    #[test]
    fn ranges_as_coturn_reads_them() {
        let r = AddrRange::parse("10.0.0.1-10.0.0.9", &no_dns).unwrap();
        assert_eq!((r.min, r.max), (ip("10.0.0.1"), ip("10.0.0.9")));
        let r = AddrRange::parse(" 10.0.0.1 ", &no_dns).unwrap();
        assert_eq!((r.min, r.max), (ip("10.0.0.1"), ip("10.0.0.1")));
        // CIDR is not an address: dropped
        assert_eq!(
            AddrRange::parse("10.0.0.0/8", &no_dns),
            Err("10.0.0.0/8".into())
        );
        assert_eq!(AddrRange::parse("10.0.0.1-x", &no_dns), Err("x".into()));
        // only the first '-' splits; a host name is resolved
        let dns = |n: &str| (n == "peer.example").then(|| ip("192.0.2.50"));
        let r = AddrRange::parse("peer.example", &dns).unwrap();
        assert_eq!(r.min, ip("192.0.2.50"));
        assert!(AddrRange::parse("1.1.1.1-2.2.2.2-3.3.3.3", &no_dns).is_err());
        // an empty side is 0.0.0.0, an open bound
        let r = AddrRange::parse("10.0.0.1-", &no_dns).unwrap();
        assert!(r.contains(ip("200.0.0.1")));
        assert!(!r.contains(ip("10.0.0.0")));
        assert!(r.contains(ip("2001:db8::1")), "IPv6 sorts after IPv4");
        assert!(resolve_host("10.0.0.0/8").is_none());
    }

    #[test]
    fn range_membership_follows_coturns_order() {
        let r = AddrRange::parse("198.51.100.0-198.51.100.127", &no_dns).unwrap();
        assert!(r.contains(ip("198.51.100.0")));
        assert!(r.contains(ip("198.51.100.127")));
        assert!(!r.contains(ip("198.51.100.128")));
        assert!(!r.contains(ip("::ffff:198.51.100.2")), "families never mix");
        // IPv6: every byte must be within bounds, byte by byte
        let r = AddrRange::parse("2001:db8:2::-2001:db8:3::5", &no_dns).unwrap();
        assert!(r.contains(ip("2001:db8:2::")));
        assert!(r.contains(ip("2001:db8:2::5")));
        assert!(r.contains(ip("2001:db8:3::5")));
        assert!(
            !r.contains(ip("2001:db8:2::9")),
            "lexicographically inside, but its last byte (9) > the upper bound's (5)"
        );
        assert!(!r.contains(ip("2001:db8:2::1:0")), "byte 13 (1) > 0");
        // 0.0.0.0 alone: both bounds open, everything of every family
        let any = AddrRange::parse("0.0.0.0", &no_dns).unwrap();
        assert!(any.contains(ip("203.0.113.1")) && any.contains(ip("2001:db8::1")));
    }

    #[test]
    fn peer_allowed_in_coturns_order() {
        let mut p = policy(
            &["198.51.100.2", "127.0.0.5", "0.1.2.3", "224.0.0.1"],
            &[
                "198.51.100.0-198.51.100.127",
                "10.0.0.0/8",
                "2001:db8:2::-2001:db8:3::5",
            ],
        );
        p.no_multicast_peers = true;
        assert_eq!(p.dropped, ["10.0.0.0/8"]);
        let cases = [
            ("198.51.100.2", true, "allowed wins over denied"),
            ("198.51.100.3", false, "denied range"),
            ("198.51.100.200", true, "outside the denied range"),
            ("10.1.2.3", true, "the CIDR value was dropped"),
            ("127.0.0.5", false, "loopback before the allowed list"),
            ("0.1.2.3", false, "0.0.0.0/8 before the allowed list"),
            ("224.0.0.1", false, "multicast before the allowed list"),
            ("255.255.255.255", false, "broadcast counts as multicast"),
            ("223.255.255.255", true, "below 224"),
            ("::1", false, "IPv6 loopback"),
            ("::", false, "IPv6 zero"),
            ("::ffff:127.0.0.1", true, "not loopback to coturn"),
            ("ff02::1", false, "IPv6 multicast"),
            ("2001:db8:2::5", false, "IPv6 denied range"),
            ("2001:db8:2::9", true, "byte-wise outside the IPv6 range"),
            ("2001:db8:2::2:0", true, "byte-wise outside (byte 13)"),
        ];
        for (peer, want, why) in cases {
            assert_eq!(p.peer_allowed(ip(peer)), want, "{peer}: {why}");
        }
        // the switches
        p.no_multicast_peers = false;
        assert!(p.peer_allowed(ip("224.0.0.1")), "allowed-listed");
        assert!(p.peer_allowed(ip("239.1.1.1")));
        p.allow_loopback_peers = true;
        assert!(p.peer_allowed(ip("127.0.0.1")) && p.peer_allowed(ip("::1")));
        assert!(!p.peer_allowed(ip("0.0.0.1")), "zero is never allowed");
        // nothing configured: everything but loopback and zero
        let open = PeerPolicy::default();
        assert!(open.peer_allowed(ip("224.0.0.1")));
        assert!(!open.peer_allowed(ip("127.0.0.1")));
        assert!(open.peer_allowed(ip("192.0.2.1")));
    }

    #[test]
    fn the_policy_reads_well_in_the_log() {
        let mut p = policy(&["192.0.2.9"], &["10.0.0.0/8", "10.0.0.1-10.0.0.5"]);
        p.no_multicast_peers = true;
        assert_eq!(
            p.to_string(),
            "multicast peers refused, loopback peers refused, 0.0.0.0/8 and :: refused; \
             allowed: 192.0.2.9; denied: 10.0.0.1-10.0.0.5; ignored as coturn ignores them: \
             10.0.0.0/8"
        );
    }
}
