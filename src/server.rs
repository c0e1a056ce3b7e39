//! The TURN server's UDP sockets (`/proc/net/udp`, `/proc/net/udp6`) and the watch on its
//! listening sockets that tells when it stopped or restarted.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use log::info;

/// `st` of an unconnected UDP socket in `/proc/net/udp` (TCP_CLOSE): a listening or relay socket,
/// not one connected to a single remote.
pub const UDP_UNCONNECTED: u8 = 7;

/// One UDP socket of this network namespace, from `/proc/net/udp` or `/proc/net/udp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSock {
    /// The bound address and port (an IPv4-mapped IPv6 address is given as IPv4).
    pub local: SocketAddr,
    pub state: u8,
    pub uid: u32,
    pub inode: u64,
}

impl UdpSock {
    /// An unconnected (listening or relay) socket.
    pub fn unconnected(local: SocketAddr, uid: u32, inode: u64) -> UdpSock {
        UdpSock {
            local,
            state: UDP_UNCONNECTED,
            uid,
            inode,
        }
    }
}

/// An address as `/proc/net/udp{,6}` prints it: each 32-bit word of the network-order address
/// as the host reads it, in hex (`0100007F` is 127.0.0.1 on a little-endian host).
fn proc_net_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// The sockets in the text of `/proc/net/udp` or `/proc/net/udp6` (the header and any line that
/// does not parse are skipped).
pub fn parse_proc_net_udp(text: &str) -> Vec<UdpSock> {
    text.lines()
        .filter_map(|line| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !f[0].ends_with(':') {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            Some(UdpSock {
                local: SocketAddr::new(proc_net_ip(ip)?, u16::from_str_radix(port, 16).ok()?),
                state: u8::from_str_radix(f[3], 16).ok()?,
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// The UDP sockets of this network namespace, by local port.
#[derive(Debug, Default, Clone)]
pub struct UdpTable {
    by_port: HashMap<u16, Vec<UdpSock>>,
}

impl UdpTable {
    /// Read `/proc/net/udp` and `/proc/net/udp6`: the sockets of the network namespace of this
    /// process's main thread (the agent's). A missing `udp6` (IPv6 disabled) is no error.
    pub fn read() -> Result<UdpTable> {
        let v4 = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
        let v6 = match std::fs::read_to_string("/proc/net/udp6") {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context("reading /proc/net/udp6"),
        };
        Ok(UdpTable::from_sockets(
            parse_proc_net_udp(&v4)
                .into_iter()
                .chain(parse_proc_net_udp(&v6)),
        ))
    }

    pub fn from_sockets(socks: impl IntoIterator<Item = UdpSock>) -> UdpTable {
        let mut by_port: HashMap<u16, Vec<UdpSock>> = HashMap::new();
        for s in socks {
            by_port.entry(s.local.port()).or_default().push(s);
        }
        UdpTable { by_port }
    }

    /// The unconnected sockets bound to `port` on any address: the server's listening sockets.
    pub fn listeners(&self, port: u16) -> Vec<UdpSock> {
        self.by_port
            .get(&port)
            .into_iter()
            .flatten()
            .filter(|s| s.state == UDP_UNCONNECTED)
            .copied()
            .collect()
    }

    /// Inodes of the sockets bound to `addr`: to exactly that address, or to the wildcard address
    /// on that port (`0.0.0.0`, or `::`, which takes IPv4 too unless it is IPv6-only). Exact
    /// bindings first, each group in inode order.
    pub fn bound_to(&self, addr: SocketAddr) -> Vec<u64> {
        let socks = self.by_port.get(&addr.port()).map_or(&[][..], |v| &v[..]);
        let mut exact: Vec<u64> = socks
            .iter()
            .filter(|s| s.local.ip() == addr.ip())
            .map(|s| s.inode)
            .collect();
        let mut wild: Vec<u64> = socks
            .iter()
            .filter(|s| s.local.ip().is_unspecified())
            .map(|s| s.inode)
            .collect();
        exact.sort_unstable();
        wild.sort_unstable();
        exact.extend(wild);
        exact
    }
}

/// The TURN server's listening sockets, recorded at start-up and compared at every sweep: when
/// they go away or are replaced, the server stopped or restarted and every binding learned from
/// it is gone there.
#[derive(Debug, Clone)]
pub struct ServerWatch {
    /// Per TURN port, the inodes of the listening sockets last seen (empty: nothing listens).
    ports: Vec<(u16, BTreeSet<u64>)>,
}

impl ServerWatch {
    /// Record what listens on each TURN port. Refuses when nothing listens on one of them: the
    /// agent learns only from the server's responses, so the server must be running first.
    pub fn new(turn_ports: &[u16], t: &UdpTable) -> Result<ServerWatch> {
        let mut ports = Vec::new();
        for &port in turn_ports {
            let inodes: BTreeSet<u64> = t.listeners(port).iter().map(|s| s.inode).collect();
            if inodes.is_empty() {
                anyhow::bail!(
                    "nothing listens on UDP port {port} here: start the TURN server first \
                     (turn-bpf learns from its responses)"
                );
            }
            ports.push((port, inodes));
        }
        Ok(ServerWatch { ports })
    }

    /// The one uid owning every listening socket of the TURN ports (the server's user, whose
    /// sockets send the responses the snooper may trust), or every uid seen when they differ.
    pub fn uid(&self, t: &UdpTable) -> Result<u32, BTreeSet<u32>> {
        let uids: BTreeSet<u32> = self
            .ports
            .iter()
            .flat_map(|(port, _)| t.listeners(*port))
            .map(|s| s.uid)
            .collect();
        match uids.len() {
            1 => Ok(*uids.first().expect("one uid")),
            _ => Err(uids),
        }
    }

    /// What is watched, for the log: `port 3478: sockets 1234, 5678 (uid 0)`.
    pub fn describe(&self, t: &UdpTable) -> String {
        self.ports
            .iter()
            .map(|(port, inodes)| {
                let uids: BTreeSet<u32> = t.listeners(*port).iter().map(|s| s.uid).collect();
                let list = |it: Vec<String>| it.join(", ");
                format!(
                    "port {port}: socket inode(s) {} (uid {})",
                    list(inodes.iter().map(u64::to_string).collect()),
                    list(uids.iter().map(u32::to_string).collect())
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Compare with the table now. Returns why everything learned must be forgotten when a
    /// socket recorded before went away (the server stopped) or was replaced (it restarted).
    /// Sockets added next to the recorded ones are adopted; a server that comes back after going
    /// away is adopted too (everything was forgotten when it went).
    pub fn check(&mut self, t: &UdpTable) -> Option<String> {
        let mut why = Vec::new();
        for (port, recorded) in &mut self.ports {
            let now: BTreeSet<u64> = t.listeners(*port).iter().map(|s| s.inode).collect();
            if recorded.is_empty() {
                if !now.is_empty() {
                    info!("a TURN server listens on UDP port {port} again");
                }
            } else if now.is_empty() {
                why.push(format!("socket on port {port} went away"));
            } else if !recorded.is_subset(&now) {
                why.push(format!(
                    "socket on port {port} changed (the server restarted)"
                ));
            }
            *recorded = now;
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // /proc/net/udp and udp6 as coturn 4.6.1 leaves them in the lab (two listener threads per
    // address, one relay socket), plus wildcard and IPv4-mapped sockets.
    const PROC_UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  648: 010200C0:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 197917 2 00000000057704ed 0
  648: 010200C0:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 197916 2 0000000016632412 0
  649: 010200C0:0D97 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 197919 2 0000000041b73ad9 0
  650: 016433C6:CD52 00000000:0000 07 00000000:00000000 00:00000000 00000000   107        0 197933 2 00000000057704ee 0
  651: 00000000:D000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300001 2 00000000057704ef 0
  652: 010200C0:0D96 020200C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 300002 2 00000000057704f0 0
";
    const PROC_UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  648: B80D0120000001000000000001000000:0D96 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 197920 2 0000000056e10487 0
  700: 00000000000000000000000000000000:D001 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300003 2 0000000056e10488 0
  701: 0000000000000000FFFF0000036433C6:D002 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300004 2 0000000056e10489 0
";

    fn table(extra: &[UdpSock]) -> UdpTable {
        UdpTable::from_sockets(
            parse_proc_net_udp(PROC_UDP)
                .into_iter()
                .chain(parse_proc_net_udp(PROC_UDP6))
                .chain(extra.iter().copied()),
        )
    }

    fn sock(addr: &str, inode: u64) -> UdpSock {
        UdpSock::unconnected(addr.parse().unwrap(), 0, inode)
    }

    #[test]
    fn parses_proc_net_udp() {
        let v4 = parse_proc_net_udp(PROC_UDP);
        assert_eq!(v4.len(), 6, "the header is skipped");
        assert_eq!(v4[0], sock("192.0.2.1:3478", 197917));
        assert_eq!(v4[3].local, "198.51.100.1:52562".parse().unwrap());
        assert_eq!((v4[3].uid, v4[3].state), (107, UDP_UNCONNECTED));
        assert_eq!(v4[4].local, "0.0.0.0:53248".parse().unwrap());
        assert_eq!(v4[5].state, 1, "connected");
        let v6 = parse_proc_net_udp(PROC_UDP6);
        assert_eq!(v6[0], sock("[2001:db8:1::1]:3478", 197920));
        assert_eq!(v6[1].local, "[::]:53249".parse().unwrap());
        assert_eq!(
            v6[2].local,
            "198.51.100.3:53250".parse().unwrap(),
            "IPv4-mapped is IPv4"
        );
        assert!(parse_proc_net_udp("garbage\n  1: zz:0D96 0 07 0 0 0 0 0 1\n").is_empty());
    }

    #[test]
    fn listeners_and_relay_sockets() {
        let t = table(&[]);
        let inodes = |v: Vec<UdpSock>| -> Vec<u64> { v.iter().map(|s| s.inode).collect() };
        // unconnected sockets on the port, both families; not the connected one
        let mut l = inodes(t.listeners(3478));
        l.sort();
        assert_eq!(l, [197916, 197917, 197920]);
        assert!(t.listeners(3480).is_empty());
        // a relay socket bound to its address, to 0.0.0.0, to :: or to a mapped address
        assert_eq!(t.bound_to("198.51.100.1:52562".parse().unwrap()), [197933]);
        assert!(t.bound_to("198.51.100.2:52562".parse().unwrap()).is_empty());
        assert!(t.bound_to("198.51.100.1:52563".parse().unwrap()).is_empty());
        assert_eq!(t.bound_to("198.51.100.1:53248".parse().unwrap()), [300001]);
        assert_eq!(t.bound_to("198.51.100.1:53249".parse().unwrap()), [300003]);
        assert_eq!(t.bound_to("198.51.100.3:53250".parse().unwrap()), [300004]);
        // exact bindings come first
        let t = table(&[sock("198.51.100.1:53248", 400000)]);
        assert_eq!(
            t.bound_to("198.51.100.1:53248".parse().unwrap()),
            [400000, 300001]
        );
    }

    #[test]
    fn server_watch_sees_the_server_go_and_come_back() {
        let none = UdpTable::default();
        let e = ServerWatch::new(&[3478], &none).unwrap_err().to_string();
        assert_eq!(
            e,
            "nothing listens on UDP port 3478 here: start the TURN server first (turn-bpf \
             learns from its responses)"
        );
        let e = ServerWatch::new(&[3478, 5000], &table(&[])).unwrap_err();
        assert!(e.to_string().contains("port 5000"), "{e}");

        let mut w = ServerWatch::new(&[3478], &table(&[])).unwrap();
        assert!(w.describe(&table(&[])).contains("197916, 197917, 197920"));
        assert_eq!(w.uid(&table(&[])), Ok(0));
        let mut other = sock("192.0.2.1:3478", 7);
        other.uid = 107;
        assert_eq!(
            w.uid(&table(&[other])),
            Err(BTreeSet::from([0, 107])),
            "another user's socket on the port"
        );
        assert_eq!(w.check(&table(&[])), None, "unchanged");
        // another listener next to the recorded ones is adopted
        assert_eq!(w.check(&table(&[sock("192.0.2.1:3478", 5)])), None);
        assert_eq!(w.check(&table(&[sock("192.0.2.1:3478", 5)])), None);
        // the server stopped
        let why = w.check(&none).unwrap();
        assert_eq!(why, "socket on port 3478 went away");
        assert_eq!(w.check(&none), None, "said once");
        // ... and came back: adopted, nothing more to forget
        let restarted = UdpTable::from_sockets([sock("192.0.2.1:3478", 9)]);
        assert_eq!(w.check(&restarted), None);
        assert_eq!(w.check(&restarted), None);
        // restarted between two looks
        let again = UdpTable::from_sockets([sock("192.0.2.1:3478", 10)]);
        assert_eq!(
            w.check(&again).unwrap(),
            "socket on port 3478 changed (the server restarted)"
        );
        assert_eq!(w.check(&again), None);
        // one of several sockets replaced is a change too
        let mut w = ServerWatch::new(&[3478], &table(&[])).unwrap();
        let t = UdpTable::from_sockets([
            sock("192.0.2.1:3478", 197916),
            sock("192.0.2.1:3478", 197917),
            sock("[2001:db8:1::1]:3478", 11),
        ]);
        assert!(w.check(&t).is_some());
    }
}
