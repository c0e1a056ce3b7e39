//! Start-up checks that catch a wrong setup before anything is changed or attached: interfaces
//! the fast path cannot work on, a client-facing interface the server does not listen on,
//! hooks already taken (a running agent, or the TC filter of one killed with SIGKILL), and relay
//! addresses on interfaces the agent is not attached to (a warning: it runs, and offloads
//! nothing there).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use anyhow::{bail, Context, Result};
use log::warn;

use crate::attach;

/// `ARPHRD_ETHER`: the only link type the fast path handles (it parses and rewrites Ethernet
/// headers).
pub const ARPHRD_ETHER: u32 = 1;

/// Every check that refuses, in order, then the warnings. `listening`: the server's listening
/// sockets on the TURN ports; `relay_ips`: the relay addresses its settings name. `adopting`
/// (--pin-path, with the run lock held: no live agent): turn-bpf's own programs on the hooks are
/// what a stopped agent left pinned, for this one to adopt or replace, not a refusal.
pub fn check(
    ifaces: &[String],
    listening: &[SocketAddr],
    relay_ips: &[IpAddr],
    adopting: bool,
) -> Result<()> {
    for iface in ifaces {
        let t = link_type(iface)?;
        if t != ARPHRD_ETHER {
            bail!("{}", not_ethernet(iface, t));
        }
    }
    let addrs = interface_addresses()?;
    if let Some(why) = not_listening_on(&ifaces[0], listening, &addrs) {
        bail!("{why}");
    }
    for iface in ifaces {
        refuse_xdp_taken(iface, adopting)?;
    }
    refuse_tc_taken(&ifaces[0], adopting)?;
    if let Some(w) = relay_elsewhere(ifaces, relay_ips, &addrs) {
        warn!("{w}");
    }
    Ok(())
}

/// The addresses of the server's listening sockets (`inodes`) on the TURN ports.
pub fn listening(
    table: &crate::server::UdpTable,
    ports: &[u16],
    inodes: &[u64],
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = ports
        .iter()
        .flat_map(|p| table.listeners(*p))
        .filter(|s| inodes.contains(&s.inode))
        .map(|s| s.local)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The device's ARPHRD link type, asked of this network namespace's kernel (SIOCGIFHWADDR on a
/// socket made here): `/sys/class/net` shows the namespace `/sys` was mounted in, which is not
/// this one under `nsenter -n`.
fn link_type(iface: &str) -> Result<u32> {
    use nix::libc;
    use std::os::fd::AsRawFd;

    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to ask for a link type")?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ (names are
    // checked to be at most 15 bytes), and the ioctl writes only into the struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("asking the link type of {iface}"));
    }
    // SAFETY: SIOCGIFHWADDR fills the hardware-address member of the union.
    Ok(u32::from(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family }))
}

/// The refusal of a device that is not Ethernet.
pub fn not_ethernet(iface: &str, link_type: u32) -> String {
    let kind = match link_type {
        772 => "a loopback device (ARPHRD_LOOPBACK)".to_string(),
        65534 => "a device without link-layer headers (ARPHRD_NONE: tun, WireGuard …)".to_string(),
        768 | 769 | 776 | 778 | 823 => format!("an IP tunnel (ARPHRD type {link_type})"),
        t => format!("not an Ethernet device (ARPHRD type {t})"),
    };
    format!(
        "{iface} is {kind}: the fast path works on Ethernet interfaces only (ARPHRD_ETHER); \
         name the interface on which clients reach the TURN server"
    )
}

/// Each interface's addresses, by name.
pub type IfaceAddrs = BTreeMap<String, BTreeSet<IpAddr>>;

fn interface_addresses() -> Result<IfaceAddrs> {
    let mut out = IfaceAddrs::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing the interfaces' addresses")? {
        let Some(a) = ifa.address else { continue };
        let ip = if let Some(v4) = a.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = a.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            out.entry(device_of(&ifa.interface_name)).or_default();
            continue;
        };
        out.entry(device_of(&ifa.interface_name))
            .or_default()
            .insert(ip);
    }
    Ok(out)
}

/// The device an address label names: an IPv4 address labelled `eth0:1` (ifupdown's aliases)
/// belongs to `eth0` (the kernel requires a label to start with its device's name).
fn device_of(name: &str) -> String {
    name.split(':').next().unwrap_or(name).to_string()
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `iface` is not where clients reach the server, or None: the server listens on the
/// wildcard address, or on at least one address of `iface`.
pub fn not_listening_on(
    iface: &str,
    listening: &[SocketAddr],
    addrs: &IfaceAddrs,
) -> Option<String> {
    if listening.is_empty() || listening.iter().any(|s| s.ip().is_unspecified()) {
        return None;
    }
    let here = addrs.get(iface).cloned().unwrap_or_default();
    if listening.iter().any(|s| here.contains(&s.ip())) {
        return None;
    }
    // A service address on the loopback device (an anycast or load-balancer address, reached
    // through IFACE): nothing tells which interface its clients come through.
    let on_lo = addrs.get("lo").cloned().unwrap_or_default();
    if listening
        .iter()
        .any(|s| on_lo.contains(&s.ip()) && !s.ip().is_loopback())
    {
        return None;
    }
    let ips: BTreeSet<IpAddr> = listening.iter().map(|s| s.ip()).collect();
    let ports: BTreeSet<u16> = listening.iter().map(|s| s.port()).collect();
    let holders: BTreeSet<&str> = addrs
        .iter()
        .filter(|(_, a)| a.iter().any(|ip| ips.contains(ip)))
        .map(|(name, _)| name.as_str())
        .collect();
    let own = if here.is_empty() {
        "it has no address".to_string()
    } else {
        format!("it has {}", list(&here))
    };
    let hint = if holders.is_empty() {
        String::new()
    } else {
        format!(" ({} on {})", list(&ips), list(&holders))
    };
    Some(format!(
        "the TURN server listens on {} (UDP {}), none of them an address of {iface} ({own}): \
         IFACE must be the interface on which clients reach the server{hint}",
        list(&ips),
        list(&ports),
    ))
}

/// The warning when relay addresses of the server are on interfaces the agent is not attached
/// to: allocations there are not offloaded (their packets arrive where no fast path runs).
pub fn relay_elsewhere(
    ifaces: &[String],
    relay_ips: &[IpAddr],
    addrs: &IfaceAddrs,
) -> Option<String> {
    let mut elsewhere: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for ip in relay_ips {
        for (name, a) in addrs {
            if a.contains(ip) && !ifaces.contains(name) {
                elsewhere.entry(name.as_str()).or_default().push(*ip);
            }
        }
    }
    if elsewhere.is_empty() {
        return None;
    }
    let parts: Vec<String> = elsewhere
        .iter()
        .map(|(name, ips)| format!("{} on {name}", list(ips)))
        .collect();
    let names: Vec<&str> = elsewhere.keys().copied().collect();
    Some(format!(
        "the TURN server relays from {} (its relay-ip), where turn-bpf is not attached: \
         allocations on those addresses are not offloaded; name {} as RELAY_IFACE to offload them",
        parts.join(", "),
        list(names)
    ))
}

/// Refuse an interface that already has an XDP program (a running agent's, or anyone's).
fn refuse_xdp_taken(iface: &str, adopting: bool) -> Result<()> {
    let idx = attach::ifindex(iface)?;
    if let Some((id, mode)) = attach::xdp_attached(idx)? {
        if adopting && attach::prog_name(id).as_deref() == Some(attach::XDP_PROG_NAME) {
            return Ok(());
        }
        let owner = match attach::prog_name(id) {
            Some(n) if n == attach::XDP_PROG_NAME => {
                " (another turn-bpf is running there)".to_string()
            }
            Some(n) => format!(" ({n})"),
            None => String::new(),
        };
        bail!("{iface} already has an XDP program attached: id {id}, {mode} mode{owner}");
    }
    Ok(())
}

/// Refuse a client-facing interface whose egress already holds a filter at the snooper's fixed
/// handle and preference: a running agent's, or the one an agent killed with SIGKILL left.
fn refuse_tc_taken(iface: &str, adopting: bool) -> Result<()> {
    let out = Command::new("tc")
        .args(["-j", "filter", "show", "dev", iface, "egress"])
        .output()
        .with_context(|| format!("running tc to list the egress filters of {iface}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some((id, name)) = filter_at_our_handle(&text) {
        if adopting && name == attach::TC_PROG_NAME {
            return Ok(());
        }
        let holders = attach::prog_holders(id);
        bail!("{}", tc_taken(iface, id, &name, &holders));
    }
    Ok(())
}

/// The program (id, name) of the filter at our handle and preference in `tc -j filter show`.
pub fn filter_at_our_handle(tc_json: &str) -> Option<(u32, String)> {
    let handle = format!("\"handle\":\"{:#x}\"", attach::TC_HANDLE);
    let pref = format!("\"pref\":{}", attach::TC_PRIORITY);
    for entry in tc_json.split("{\"protocol\"").skip(1) {
        if !entry.contains(&pref) || !entry.contains(&handle) {
            continue;
        }
        let prog = entry.split_once("\"prog\":{").map_or("", |(_, p)| p);
        let field = |name: &str| {
            let at = prog.find(&format!("\"{name}\":"))? + name.len() + 3;
            let rest = prog[at..].trim_start_matches('"');
            let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        };
        let id = field("id").and_then(|i| i.parse().ok()).unwrap_or(0);
        return Some((id, field("name").unwrap_or_else(|| "?".into())));
    }
    None
}

/// The refusal when our handle is taken: by a running agent, by one killed without detaching,
/// or by someone else's program.
pub fn tc_taken(iface: &str, id: u32, name: &str, holders: &[u32]) -> String {
    let at = format!(
        "handle {:#x} priority {:#x}",
        attach::TC_HANDLE,
        attach::TC_PRIORITY
    );
    if name != attach::TC_PROG_NAME {
        return format!(
            "{iface} already has a TC egress filter at {at}, where the snooper goes ({name}, \
             program id {id}): remove it or free that handle"
        );
    }
    match holders.first() {
        Some(pid) => format!(
            "{iface} already has the TC egress snooper of a running turn-bpf (process {pid}): \
             one agent per interface"
        ),
        None => format!(
            "{iface} still has the TC egress snooper of a turn-bpf killed without detaching \
             (program id {id}): remove it with `turn-bpf detach {iface}`, then start again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[(&str, &[&str])]) -> IfaceAddrs {
        list.iter()
            .map(|(n, a)| {
                (
                    n.to_string(),
                    a.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect()
    }

    fn lab() -> IfaceAddrs {
        addrs(&[
            ("lo", &["127.0.0.1", "::1"]),
            ("turn0", &["192.0.2.1", "2001:db8:1::1"]),
            ("relay0", &["198.51.100.1", "2001:db8:2::1"]),
            ("spare0", &[]),
        ])
    }

    fn socks(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn an_address_label_is_its_device() {
        assert_eq!(device_of("eth0:1"), "eth0");
        assert_eq!(device_of("eth0"), "eth0");
        assert_eq!(device_of("turn0:vip"), "turn0");
    }

    #[test]
    fn a_service_address_on_the_loopback_device_is_not_refused() {
        let mut a = lab();
        a.get_mut("lo")
            .unwrap()
            .insert("203.0.113.7".parse().unwrap());
        let vip = socks(&["203.0.113.7:3478"]);
        assert_eq!(not_listening_on("turn0", &vip, &a), None);
        // the loopback address itself is no service address for clients
        let local = socks(&["127.0.0.1:3478"]);
        assert!(not_listening_on("turn0", &local, &a).is_some());
    }

    #[test]
    fn the_client_facing_interface_must_hold_a_listening_address() {
        let l = socks(&["192.0.2.1:3478", "[2001:db8:1::1]:3478", "192.0.2.1:3479"]);
        assert_eq!(not_listening_on("turn0", &l, &lab()), None);
        assert_eq!(
            not_listening_on("relay0", &l, &lab()).unwrap(),
            "the TURN server listens on 192.0.2.1, 2001:db8:1::1 (UDP 3478, 3479), none of them \
             an address of relay0 (it has 198.51.100.1, 2001:db8:2::1): IFACE must be the \
             interface on which clients reach the server (192.0.2.1, 2001:db8:1::1 on turn0)"
        );
        let none = not_listening_on("spare0", &l, &lab()).unwrap();
        assert!(none.contains("(it has no address)"), "{none}");
        // the wildcard covers every interface; one address of several is enough
        assert_eq!(
            not_listening_on("relay0", &socks(&["0.0.0.0:3478"]), &lab()),
            None
        );
        assert_eq!(
            not_listening_on("spare0", &socks(&["[::]:3478"]), &lab()),
            None
        );
        let two = socks(&["192.0.2.1:3478", "198.51.100.1:3478"]);
        assert_eq!(not_listening_on("relay0", &two, &lab()), None);
    }

    #[test]
    fn only_the_servers_own_sockets_on_the_turn_ports_count() {
        use crate::server::{UdpSock, UdpTable};
        let sock = |a: &str, inode| UdpSock::unconnected(a.parse().unwrap(), 0, inode);
        let t = UdpTable::from_sockets([
            sock("192.0.2.1:3478", 1),
            sock("192.0.2.1:3478", 2),
            sock("[2001:db8:1::1]:3479", 3),
            sock("198.51.100.1:3478", 4),  // another process's
            sock("198.51.100.1:50000", 5), // a relay socket
        ]);
        assert_eq!(
            listening(&t, &[3478, 3479], &[1, 2, 3, 5]),
            socks(&["192.0.2.1:3478", "[2001:db8:1::1]:3479"])
        );
    }

    #[test]
    fn relay_addresses_elsewhere_are_named_with_their_interface() {
        let relay: Vec<IpAddr> = vec![
            "198.51.100.1".parse().unwrap(),
            "2001:db8:2::1".parse().unwrap(),
        ];
        let ifaces = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            relay_elsewhere(&ifaces(&["turn0", "relay0"]), &relay, &lab()),
            None
        );
        assert_eq!(
            relay_elsewhere(&ifaces(&["turn0"]), &relay, &lab()).unwrap(),
            "the TURN server relays from 198.51.100.1, 2001:db8:2::1 on relay0 (its relay-ip), \
             where turn-bpf is not attached: allocations on those addresses are not offloaded; \
             name relay0 as RELAY_IFACE to offload them"
        );
        // an address on no interface (coturn would not relay from it) is not this warning's
        let gone: Vec<IpAddr> = vec!["203.0.113.9".parse().unwrap()];
        assert_eq!(relay_elsewhere(&ifaces(&["turn0"]), &gone, &lab()), None);
    }

    #[test]
    fn non_ethernet_devices_are_named_by_kind() {
        assert_eq!(
            not_ethernet("lo", 772),
            "lo is a loopback device (ARPHRD_LOOPBACK): the fast path works on Ethernet \
             interfaces only (ARPHRD_ETHER); name the interface on which clients reach the TURN \
             server"
        );
        assert!(not_ethernet("wg0", 65534).contains("ARPHRD_NONE"));
        assert!(not_ethernet("gre1", 778).contains("an IP tunnel"));
        assert!(not_ethernet("ib0", 32).contains("ARPHRD type 32"));
    }

    #[test]
    fn a_leftover_snooper_is_found_and_explained() {
        let json = r#"[{"protocol":"all","pref":29794,"kind":"bpf","chain":0},{"protocol":"all","pref":29794,"kind":"bpf","chain":0,"options":{"handle":"0x7462","bpf_name":"tc_snoop:[109640]","direct-action":true,"not_in_hw":true,"prog":{"id":109640,"name":"tc_snoop","tag":"1538d1694f978043","jited":1}}}]"#;
        assert_eq!(
            filter_at_our_handle(json),
            Some((109640, "tc_snoop".into()))
        );
        assert_eq!(filter_at_our_handle("[]"), None);
        assert_eq!(filter_at_our_handle(""), None);
        let other = r#"[{"protocol":"all","pref":29794,"kind":"bpf","chain":0,"options":{"handle":"0x1","prog":{"id":5,"name":"x"}}}]"#;
        assert_eq!(filter_at_our_handle(other), None);
        assert_eq!(
            tc_taken("turn0", 109640, "tc_snoop", &[]),
            "turn0 still has the TC egress snooper of a turn-bpf killed without detaching \
             (program id 109640): remove it with `turn-bpf detach turn0`, then start again"
        );
        assert!(
            tc_taken("turn0", 1, "tc_snoop", &[4119]).contains("running turn-bpf (process 4119)")
        );
        assert!(tc_taken("turn0", 7, "policer", &[]).contains("(policer, program id 7)"));
    }
}
