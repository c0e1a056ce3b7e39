//! The mirrored TURN state in the BPF maps, seen from userspace: address conversions, the
//! loader-maintained maps (local addresses, --external-ip, egress interfaces), and the sweep that
//! removes what expired and logs what was learned and what went.
//!
//! Correctness never depends on the sweep running on time: the fast path checks every deadline
//! itself. The sweep only frees memory and tells the operator.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use log::{debug, info, warn};

use crate::skel::types::{
    tb_alloc, tb_alloc_key, tb_chan, tb_chan_key, tb_ep, tb_peer_key, tb_perm, tb_perm_key,
};

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// Most entries of each kind one sweep deletes: bounded work per tick.
pub const SWEEP_BUDGET: usize = 4096;

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

fn show(e: &tb_ep) -> String {
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

/// Allow redirects to `ifindex` (an interface the XDP program is attached to).
pub fn add_tx_port(map: &impl MapCore, ifindex: u32) -> Result<()> {
    map.update(
        &ifindex.to_ne_bytes(),
        &ifindex.to_ne_bytes(),
        MapFlags::ANY,
    )
    .with_context(|| format!("adding ifindex {ifindex} to tx_ports"))
}

/// A channel binding as the operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    pub relay: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub channel: u16,
}

impl Binding {
    pub fn of(c: &tb_chan) -> Self {
        Binding {
            client: sockaddr(&c.client),
            server: sockaddr(&c.server),
            relay: sockaddr(&c.relay),
            peer: sockaddr(&c.peer),
            channel: u16::from_be(c.chan),
        }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |a: &Option<SocketAddr>| a.map_or_else(|| "-".into(), |a| a.to_string());
        write!(
            f,
            "client {} peer {} relay {} channel {:#06x}",
            s(&self.client),
            s(&self.peer),
            s(&self.relay),
            self.channel
        )
    }
}

/// Every channel binding in `chans` (the client-side map).
pub fn bindings(chans: &impl MapCore) -> Vec<Binding> {
    chans
        .keys()
        .filter_map(|k| chans.lookup(&k, MapFlags::ANY).ok().flatten())
        .map(|v| Binding::of(&from_bytes::<tb_chan>(&v)))
        .collect()
}

/// The maps the sweep works on.
pub struct StateMaps<'a, M: MapCore> {
    pub allocs: &'a M,
    pub chans: &'a M,
    pub peers: &'a M,
    pub perms: &'a M,
    pub not_local: &'a M,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub allocs_removed: usize,
    pub chans_removed: usize,
    pub perms_removed: usize,
    pub learned: Vec<Binding>,
    pub gone: Vec<Binding>,
}

/// Remembers what was logged, so each binding is announced once when it comes and once when it
/// goes, and each unoffloadable relayed address is reported once.
#[derive(Default)]
pub struct Sweeper {
    known: HashMap<Vec<u8>, Binding>,
    reported_not_local: HashSet<Vec<u8>>,
}

impl Sweeper {
    pub fn sweep<M: MapCore>(&mut self, m: &StateMaps<'_, M>, now: u64) -> Result<SweepReport> {
        let mut r = SweepReport::default();

        // Allocations past their deadline.
        let mut live_allocs: HashMap<Vec<u8>, u64> = HashMap::new();
        for k in m.allocs.keys() {
            let Some(v) = m.allocs.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let a: tb_alloc = from_bytes(&v);
            if a.expires_ns <= now && r.allocs_removed < SWEEP_BUDGET {
                let key: tb_alloc_key = from_bytes(&k);
                m.allocs.delete(&k).ok();
                r.allocs_removed += 1;
                info!(
                    "allocation expired: client {} relay {}",
                    show(&key.client),
                    show(&a.relay[0])
                );
            } else {
                live_allocs.insert(k, a.id);
            }
        }
        let alloc_live = |client: &tb_ep, server: &tb_ep, id: u64| {
            let key = tb_alloc_key {
                client: *client,
                server: *server,
            };
            live_allocs.get(bytes_of(&key)) == Some(&id)
        };

        // Channels whose allocation went or whose own lifetime ended.
        let mut seen = HashSet::new();
        for k in m.chans.keys() {
            let Some(v) = m.chans.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let c: tb_chan = from_bytes(&v);
            let dead = c.chan_expires_ns <= now || !alloc_live(&c.client, &c.server, c.alloc_id);
            if dead && r.chans_removed < SWEEP_BUDGET {
                m.chans.delete(&k).ok();
                let pk = tb_peer_key {
                    peer: c.peer,
                    relay: c.relay,
                };
                if let Some(pv) = m.peers.lookup(bytes_of(&pk), MapFlags::ANY)? {
                    if from_bytes::<tb_chan>(&pv).alloc_id == c.alloc_id {
                        m.peers.delete(bytes_of(&pk)).ok();
                    }
                }
                r.chans_removed += 1;
                continue;
            }
            seen.insert(k.clone());
            if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(k) {
                let b = Binding::of(&c);
                e.insert(b.clone());
                r.learned.push(b);
            }
        }
        // Peer-side entries left without their client-side twin.
        for k in m.peers.keys() {
            if r.chans_removed >= SWEEP_BUDGET {
                break;
            }
            let Some(v) = m.peers.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let c: tb_chan = from_bytes(&v);
            let ck = tb_chan_key {
                client: c.client,
                server: c.server,
                chan: c.chan,
                pad: [0; 2],
            };
            let twin = m
                .chans
                .lookup(bytes_of(&ck), MapFlags::ANY)?
                .map(|t| from_bytes::<tb_chan>(&t).alloc_id == c.alloc_id)
                .unwrap_or(false);
            if !twin {
                m.peers.delete(&k).ok();
                r.chans_removed += 1;
            }
        }
        let gone: Vec<Vec<u8>> = self
            .known
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(b) = self.known.remove(&k) {
                r.gone.push(b);
            }
        }

        // Permissions of allocations that went, or past their deadline.
        let live_ids: HashSet<u64> = live_allocs.values().copied().collect();
        for k in m.perms.keys() {
            if r.perms_removed >= SWEEP_BUDGET {
                break;
            }
            let Some(v) = m.perms.lookup(&k, MapFlags::ANY)? else {
                continue;
            };
            let p: tb_perm = from_bytes(&v);
            if p.expires_ns <= now || !live_ids.contains(&p.alloc_id) {
                let _: tb_perm_key = from_bytes(&k);
                m.perms.delete(&k).ok();
                r.perms_removed += 1;
            }
        }

        // Relayed addresses we could not offload: say so once each.
        for k in m.not_local.keys() {
            if self.reported_not_local.insert(k.clone()) {
                let e: tb_ep = from_bytes(&k);
                warn!(
                    "relayed address {} is not local and not mapped by --external-ip: its \
                     allocations stay with the server",
                    sockaddr(&e).map_or_else(|| "?".into(), |a| a.ip().to_string())
                );
            }
        }

        for b in &r.learned {
            info!("channel learned: {b}");
        }
        for b in &r.gone {
            info!("channel gone: {b}");
        }
        if r.allocs_removed + r.chans_removed + r.perms_removed > 0 {
            debug!(
                "sweep removed {} allocations, {} channel entries, {} permissions",
                r.allocs_removed, r.chans_removed, r.perms_removed
            );
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(size_of::<tb_alloc>(), 56);
        assert_eq!(size_of::<tb_chan_key>(), 44);
        assert_eq!(size_of::<tb_peer_key>(), 40);
        assert_eq!(size_of::<tb_chan>(), 128);
        assert_eq!(size_of::<tb_perm_key>(), 40);
        assert_eq!(size_of::<tb_perm>(), 16);
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
        assert_eq!(Binding::of(&back).channel, 0x4001);
    }
}
