//! The mirrored TURN state's maps seen from userspace: endpoint conversions, and the maps the
//! loader keeps (local addresses, --external-ip, the interfaces redirects may go to, the server's
//! sockets).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use crate::skel::types::{tb_ep, tb_peer_prefix};

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// The bytes of a plain-old-data map key or value.
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of the skeleton's #[repr(C)] integer-only structs (no padding is
    // uninitialised: they are built from Default, which zeroes every field including `pad`).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A map key or value from its bytes.
pub fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    assert_eq!(b.len(), std::mem::size_of::<T>(), "map entry size");
    // SAFETY: size checked; T is plain data valid for any bit pattern.
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

/// An endpoint (address and port) in the map layout.
pub fn ep(addr: SocketAddr) -> tb_ep {
    let mut e = ep_ip(addr.ip());
    e.port = addr.port().to_be();
    e
}

/// An address (port 0) in the map layout. IPv4-mapped IPv6 addresses count as IPv4.
pub fn ep_ip(ip: IpAddr) -> tb_ep {
    let mut e = tb_ep::default();
    match ip {
        IpAddr::V4(v4) => {
            e.ip[..4].copy_from_slice(&v4.octets());
            e.family = AF_INET;
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return ep_ip(IpAddr::V4(v4)),
            None => {
                e.ip.copy_from_slice(&v6.octets());
                e.family = AF_INET6;
            }
        },
    }
    e
}

/// Back from the map layout (None for an empty endpoint).
pub fn sockaddr(e: &tb_ep) -> Option<SocketAddr> {
    let port = u16::from_be(e.port);
    match e.family {
        AF_INET => Some(SocketAddr::new(
            Ipv4Addr::new(e.ip[0], e.ip[1], e.ip[2], e.ip[3]).into(),
            port,
        )),
        AF_INET6 => Some(SocketAddr::new(Ipv6Addr::from(e.ip).into(), port)),
        _ => None,
    }
}

pub fn show(e: &tb_ep) -> String {
    sockaddr(e).map_or_else(|| "-".into(), |a| a.to_string())
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_coarse_ns()` deadlines are on.
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// This host's addresses (in the current network namespace).
pub fn local_addresses() -> Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing local addresses")? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// Bring `local_addrs` in line with `addrs`. Returns how many entries changed.
pub fn sync_local_addrs(map: &impl MapCore, addrs: &HashSet<IpAddr>) -> Result<usize> {
    let want: HashSet<Vec<u8>> = addrs
        .iter()
        .map(|a| bytes_of(&ep_ip(*a)).to_vec())
        .collect();
    let have: HashSet<Vec<u8>> = map.keys().collect();
    let mut changed = 0;
    for k in have.difference(&want) {
        map.delete(k).context("removing a local address")?;
        changed += 1;
    }
    for k in want.difference(&have) {
        map.update(k, &1u32.to_ne_bytes(), MapFlags::ANY)
            .context("adding a local address")?;
        changed += 1;
    }
    Ok(changed)
}

/// Fill `external_ips` from `--external-ip` pairs.
pub fn set_external_ips(map: &impl MapCore, pairs: &[(IpAddr, IpAddr)]) -> Result<()> {
    for (public, private) in pairs {
        map.update(
            bytes_of(&ep_ip(*public)),
            bytes_of(&ep_ip(*private)),
            MapFlags::ANY,
        )
        .with_context(|| format!("mapping external address {public}"))?;
    }
    Ok(())
}

/// Fill `refused_peers` with the prefixes of peer addresses the server's policy refuses.
pub fn set_refused_peers(map: &impl MapCore, prefixes: &[(IpAddr, u8)]) -> Result<()> {
    let max = crate::consts::TB_MAX_PEER_POLICY as usize;
    if prefixes.len() > max {
        anyhow::bail!(
            "the server's peer policy needs {} address prefixes, more than the {max} the agent \
             mirrors: narrow its denied-peer-ip ranges",
            prefixes.len()
        );
    }
    for (net, len) in prefixes {
        // Not ep_ip: an IPv4-mapped IPv6 address stays IPv6 here, as XOR-PEER-ADDRESS carries it.
        let (family, ip, bits) = match net {
            IpAddr::V4(a) => {
                let mut ip = [0u8; 16];
                ip[..4].copy_from_slice(&a.octets());
                (AF_INET, ip, (*len).min(32))
            }
            IpAddr::V6(a) => (AF_INET6, a.octets(), (*len).min(128)),
        };
        let key = tb_peer_prefix {
            prefixlen: 32 + u32::from(bits),
            family,
            ip,
            ..Default::default()
        };
        map.update(bytes_of(&key), &1u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("adding refused peers {net}/{len}"))?;
    }
    Ok(())
}

/// Allow redirects to `ifindex` (an interface the XDP program is attached to).
pub fn add_tx_port(map: &impl MapCore, ifindex: u32) -> Result<()> {
    map.update(
        &ifindex.to_ne_bytes(),
        &ifindex.to_ne_bytes(),
        MapFlags::ANY,
    )
    .with_context(|| format!("adding ifindex {ifindex} to tx_ports"))
}

/// Add `ifindex` to `xmit_ifaces`: the drop counters count frames sent out of or redirected
/// from it.
pub fn add_xmit_iface(map: &impl MapCore, ifindex: u32) -> Result<()> {
    map.update(&ifindex.to_ne_bytes(), &[1u8], MapFlags::ANY)
        .with_context(|| format!("adding ifindex {ifindex} to xmit_ifaces"))
}

/// Make `server_socks` hold exactly `cookies`: the sockets whose responses the snooper trusts.
/// Cookies no longer trusted go first, so a failure part-way never leaves a stale one trusted.
pub fn set_server_socks(map: &impl MapCore, cookies: &[u64]) -> Result<()> {
    let want: HashSet<[u8; 8]> = cookies.iter().map(|c| c.to_ne_bytes()).collect();
    for k in map.keys().collect::<Vec<_>>() {
        if !want.iter().any(|w| w[..] == k[..]) {
            map.delete(&k)
                .context("removing a socket from server_socks")?;
        }
    }
    for k in &want {
        map.update(k, &1u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| {
                format!(
                    "trusting {} server sockets (server_socks holds at most {})",
                    want.len(),
                    crate::consts::TB_MAX_SERVER_SOCKS
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types::{
        tb_alloc, tb_alloc_key, tb_chan, tb_chan_key, tb_peer_key, tb_perm, tb_perm_key,
    };

    #[test]
    fn endpoints_round_trip() {
        for s in ["192.0.2.1:3478", "[2001:db8::1]:49152", "0.0.0.0:0"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(sockaddr(&ep(a)), Some(a));
        }
        let e = ep("198.51.100.7:5000".parse().unwrap());
        assert_eq!(&e.ip[..4], &[198, 51, 100, 7]);
        assert!(e.ip[4..].iter().all(|b| *b == 0));
        assert_eq!(e.port.to_ne_bytes(), 5000u16.to_be_bytes());
        assert_eq!(e.family, AF_INET);
        // mapped addresses are IPv4
        let m = ep_ip("::ffff:192.0.2.9".parse().unwrap());
        assert_eq!(m.family, AF_INET);
        assert_eq!(sockaddr(&tb_ep::default()), None);
    }

    #[test]
    fn struct_sizes_match_the_c_asserts() {
        use std::mem::size_of;
        assert_eq!(size_of::<tb_ep>(), 20);
        assert_eq!(size_of::<tb_alloc_key>(), 40);
        assert_eq!(size_of::<tb_alloc>(), 80);
        assert_eq!(size_of::<tb_chan_key>(), 44);
        assert_eq!(size_of::<tb_peer_key>(), 40);
        assert_eq!(size_of::<tb_chan>(), 136);
        assert_eq!(size_of::<crate::skel::types::tb_binding_count>(), 48);
        assert_eq!(size_of::<tb_perm_key>(), 40);
        assert_eq!(size_of::<tb_perm>(), 24);
        assert_eq!(size_of::<crate::skel::types::tb_pending>(), 120);
    }

    #[test]
    fn bytes_round_trip() {
        let c = tb_chan {
            chan: 0x4001u16.to_be(),
            alloc_id: 7,
            ..Default::default()
        };
        let back: tb_chan = from_bytes(bytes_of(&c));
        assert_eq!(back.alloc_id, 7);
        assert_eq!(u16::from_be(back.chan), 0x4001);
    }
}
