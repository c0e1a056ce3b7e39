//! The veth far-end rule: in native XDP mode a frame redirected into a veth (`ndo_xdp_xmit`) is
//! received only when the veth's far end (its peer device, usually in another network namespace)
//! runs NAPI: it has an XDP program or GRO on. Otherwise the kernel refuses the redirect after
//! the program returned `XDP_REDIRECT` (Linux 6.18: the veth does not offer `ndo_xdp_xmit`,
//! `xdp:xdp_redirect_err`; older kernels drop the batch with `-ENXIO`, `xdp:xdp_devmap_xmit`), and
//! the frame is lost. The fast path redirects every frame it relays, also back out of the
//! interface it came in on (`fwd.h`), so the rule holds for every attached interface, in
//! single-interface mode too. Generic (skb) mode sends through the normal transmit path, where
//! none of this applies.
//!
//! Wrong at start-up: refused. Wrong later (someone took the far end's XDP program away or
//! switched GRO off): the interface leaves `tx_ports`, so nothing is sent there from XDP (its
//! datagrams go to the server), and comes back when it is right again.
//!
//! The far end is found from the veth's `IFLA_LINK` (its ifindex) and `IFLA_LINK_NETNSID` (its
//! namespace's id as seen from ours), matched against the namespaces under `/run/netns` and of
//! every process (`RTM_GETNSID` with `NETNSA_FD`); its XDP program and GRO are read from a
//! short-lived thread that entered that namespace.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::libc;
use nix::sched::{setns, CloneFlags};

use crate::attach::Mode;

/// The far end of a veth, as read in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarEnd {
    pub name: String,
    pub ifindex: u32,
    /// How to name its namespace to an operator: `tbv-peer` (under /run/netns), `the network
    /// namespace of pid 42 (turnserver)`, or `this network namespace`.
    pub netns: String,
    /// The command prefix that runs a tool there (`ip netns exec NAME `, `nsenter -t PID -n `, or
    /// nothing).
    pub exec: String,
    pub xdp: bool,
    pub gro: bool,
}

/// What could be learned about an interface's far end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not a veth: the rule does not apply.
    NotVeth,
    /// A veth whose far end's namespace could not be found or entered.
    Unreachable {
        nsid: i32,
        why: String,
    },
    Known(FarEnd),
}

/// The decision for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say: not a veth, generic mode, or the far end has NAPI.
    Fine,
    /// Frames sent there would be lost: refuse at start-up, stop sending there later.
    Wrong(String),
    /// Cannot tell: warn once and go on.
    Unknown(String),
}

impl Verdict {
    /// Whether the fast path may send out of this interface.
    pub fn sendable(&self) -> bool {
        !matches!(self, Verdict::Wrong(_))
    }
}

/// The rule, as a pure function of what was seen.
pub fn verdict(iface: &str, mode: Mode, seen: &Seen) -> Verdict {
    if mode == Mode::Generic {
        return Verdict::Fine;
    }
    let far = match seen {
        Seen::NotVeth => return Verdict::Fine,
        Seen::Unreachable { nsid, why } => {
            return Verdict::Unknown(format!(
                "{iface} is a veth whose far end is in a network namespace this agent cannot \
                 reach (nsid {nsid}: {why}): make sure that end has an XDP program or GRO on, or \
                 frames the fast path sends into {iface} in native mode are lost (counted as \
                 XMIT_DROPPED)"
            ))
        }
        Seen::Known(far) => far,
    };
    if far.xdp || far.gro {
        return Verdict::Fine;
    }
    Verdict::Wrong(format!(
        "{iface} is a veth whose far end {} (ifindex {}, {}) has neither GRO nor an XDP program: \
         in native XDP mode the kernel drops every frame the fast path sends into {iface}. Fix: \
         {}ethtool -K {} gro on, or attach an XDP program to {} (XDP_PASS is enough; README: \
         \"veth and containers\"), or run with --xdp-mode generic",
        far.name, far.ifindex, far.netns, far.exec, far.name, far.name
    ))
}

// ---- netlink (rtnetlink) ----

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_MULTI: u8 = 4;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What `RTM_GETLINK` says about one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, its peer's ifindex (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace id, when not this namespace.
    pub link_netnsid: Option<i32>,
    /// An XDP program is attached in native (driver) mode: only that gives a veth NAPI. A
    /// generic-mode (skb) program does not.
    pub xdp: bool,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes in `buf` as (type, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(align4(4 + payload.len()));
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(align4(a.len()), 0);
    a
}

fn u32_of(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// Parse an `RTM_NEWLINK` body (ifinfomsg + attributes).
pub fn parse_link(body: &[u8]) -> Result<Link> {
    let attrs_at = 16; // struct ifinfomsg
    if body.len() < attrs_at {
        bail!("short RTM_NEWLINK");
    }
    let mut l = Link::default();
    for (ty, p) in attrs(&body[attrs_at..]) {
        match ty {
            IFLA_IFNAME => {
                l.name =
                    String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or(p)).into_owned()
            }
            IFLA_LINK => l.link = u32_of(p),
            IFLA_LINK_NETNSID => l.link_netnsid = u32_of(p).map(|v| v as i32),
            IFLA_LINKINFO => {
                for (ty, p) in attrs(p) {
                    if ty == IFLA_INFO_KIND {
                        l.kind = Some(
                            String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or(p))
                                .into_owned(),
                        );
                    }
                }
            }
            IFLA_XDP => {
                let xdp = attrs(p);
                let mode = xdp
                    .iter()
                    .find(|(ty, _)| *ty == IFLA_XDP_ATTACHED)
                    .and_then(|(_, p)| p.first().copied());
                let drv_prog = xdp
                    .iter()
                    .any(|(ty, p)| *ty == IFLA_XDP_DRV_PROG_ID && u32_of(p).unwrap_or(0) != 0);
                l.xdp = mode == Some(XDP_ATTACHED_DRV)
                    || (mode == Some(XDP_ATTACHED_MULTI) && drv_prog);
            }
            _ => {}
        }
    }
    Ok(l)
}

/// One request, one answer, on a fresh rtnetlink socket of the calling thread's namespace.
/// Returns the body of the answer of type `want`.
fn rtnl_request(ty: u16, body: &[u8], want: u16) -> Result<Vec<u8>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening an rtnetlink socket");
    }
    // SAFETY: the kernel just gave us this fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
    msg.extend_from_slice(body);
    // SAFETY: msg is a valid buffer of its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("sending an rtnetlink request");
    }
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is a valid buffer of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("reading an rtnetlink answer");
    }
    let buf = &buf[..n as usize];
    if buf.len() < 16 {
        bail!("short rtnetlink answer");
    }
    let len = (u32_of(buf).unwrap_or(0) as usize).min(buf.len());
    let got = u16::from_ne_bytes([buf[4], buf[5]]);
    match got {
        NLMSG_ERROR => {
            let errno = buf
                .get(16..20)
                .map_or(0, |e| i32::from_ne_bytes(e.try_into().expect("4 bytes")));
            Err(io::Error::from_raw_os_error(-errno)).context("rtnetlink")
        }
        NLMSG_DONE => bail!("rtnetlink: no answer"),
        t if t == want => Ok(buf[16..len].to_vec()),
        t => bail!("rtnetlink: unexpected answer type {t}"),
    }
}

/// `RTM_GETLINK` for `ifindex` in the calling thread's namespace.
pub fn get_link(ifindex: u32) -> Result<Link> {
    let mut ifi = [0u8; 16];
    ifi[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let body = rtnl_request(RTM_GETLINK, &ifi, RTM_NEWLINK)
        .with_context(|| format!("reading interface {ifindex}"))?;
    parse_link(&body)
}

/// The id the calling thread's namespace gives the namespace behind `ns` (`None`: none given).
pub fn nsid_of(ns: &impl AsFd) -> Result<Option<i32>> {
    let mut body = vec![0u8; 4]; // struct rtgenmsg, padded
    body.extend(attr(NETNSA_FD, &ns.as_fd().as_raw_fd().to_ne_bytes()));
    let answer = rtnl_request(RTM_GETNSID, &body, RTM_NEWNSID)?;
    Ok(attrs(answer.get(4..).unwrap_or_default())
        .into_iter()
        .find(|(ty, _)| *ty == NETNSA_NSID)
        .and_then(|(_, p)| u32_of(p))
        .map(|v| v as i32)
        .filter(|v| *v >= 0))
}

// ---- ethtool ----

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;

#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Whether GRO is on for `name` in the calling thread's namespace.
pub fn gro_on(name: &str) -> Result<bool> {
    let mut value = [ETHTOOL_GGRO, 0u32];
    let mut req = IfreqData {
        name: [0; 16],
        data: value.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        bail!("interface name {name} is too long");
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket for ethtool");
    }
    // SAFETY: the kernel just gave us this fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req is a valid ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("ETHTOOL_GGRO on {name}"));
    }
    Ok(value[1] != 0)
}

// ---- finding the far end's namespace ----

/// A network namespace this agent can enter, and how to name it.
struct Netns {
    fd: OwnedFd,
    name: String,
    exec: String,
}

/// Every network namespace reachable from here: `/run/netns/*`, then every process's. Each
/// namespace once (by inode).
fn candidate_namespaces() -> Vec<Netns> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut consider = |path: &str, name: String, exec: String| {
        let Ok(f) = File::open(path) else { return };
        let Ok(meta) = f.metadata() else { return };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(Netns {
                fd: f.into(),
                name,
                exec,
            });
        }
    };
    if let Ok(dir) = fs::read_dir("/run/netns") {
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            consider(
                &format!("/run/netns/{n}"),
                format!("network namespace {n}"),
                format!("ip netns exec {n} "),
            );
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            consider(
                &format!("/proc/{pid}/ns/net"),
                format!("the network namespace of pid {pid} ({})", comm.trim()),
                format!("nsenter -t {pid} -n "),
            );
        }
    }
    out
}

/// Run `f` on a short-lived thread that entered `ns`.
fn in_netns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).context("entering the far end's namespace")?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread reading the far end panicked"))?
    })
}

/// Reads far ends and remembers where their namespaces are.
#[derive(Default)]
pub struct FarEnds {
    /// nsid -> the namespace found for it.
    found: HashMap<i32, Netns>,
    /// nsid -> when the last search for it failed (searched again after [`SEARCH_AGAIN`]).
    missing: HashMap<i32, (Instant, String)>,
}

/// How long a namespace that could not be found is not looked for again.
const SEARCH_AGAIN: Duration = Duration::from_secs(10);

impl FarEnds {
    /// What can be learned about the far end of `ifindex` (an interface of this namespace).
    pub fn look(&mut self, ifindex: u32) -> Result<Seen> {
        let link = get_link(ifindex)?;
        if link.kind.as_deref() != Some("veth") {
            return Ok(Seen::NotVeth);
        }
        let peer = link
            .link
            .filter(|p| *p != 0)
            .with_context(|| format!("{} is a veth without a peer ifindex", link.name))?;
        let read = move || -> Result<(String, bool, bool)> {
            let l = get_link(peer)?;
            let gro = gro_on(&l.name)?;
            Ok((l.name, l.xdp, gro))
        };
        let Some(nsid) = link.link_netnsid else {
            let (name, xdp, gro) = read()?;
            return Ok(Seen::Known(FarEnd {
                name,
                ifindex: peer,
                netns: "this network namespace".into(),
                exec: String::new(),
                xdp,
                gro,
            }));
        };
        let Some(ns) = self.namespace(nsid) else {
            let why = self
                .missing
                .get(&nsid)
                .map_or_else(String::new, |(_, w)| w.clone());
            return Ok(Seen::Unreachable { nsid, why });
        };
        match in_netns(&ns.fd, read) {
            Ok((name, xdp, gro)) => Ok(Seen::Known(FarEnd {
                name,
                ifindex: peer,
                netns: ns.name.clone(),
                exec: ns.exec.clone(),
                xdp,
                gro,
            })),
            Err(e) => {
                // The namespace may have gone and its id been reused: look again next time.
                self.found.remove(&nsid);
                Ok(Seen::Unreachable {
                    nsid,
                    why: format!("{e:#}"),
                })
            }
        }
    }

    /// The namespace with id `nsid` here: the one found before if it still has that id, else a
    /// search (not more often than every [`SEARCH_AGAIN`] while it fails).
    fn namespace(&mut self, nsid: i32) -> Option<&Netns> {
        if let Some(ns) = self.found.get(&nsid) {
            if nsid_of(&ns.fd).ok().flatten() != Some(nsid) {
                self.found.remove(&nsid);
            }
        }
        if !self.found.contains_key(&nsid) {
            if let Some((at, _)) = self.missing.get(&nsid) {
                if at.elapsed() < SEARCH_AGAIN {
                    return None;
                }
            }
            match candidate_namespaces()
                .into_iter()
                .find(|ns| nsid_of(&ns.fd).ok().flatten() == Some(nsid))
            {
                Some(ns) => {
                    self.missing.remove(&nsid);
                    self.found.insert(nsid, ns);
                }
                None => {
                    let why = "not under /run/netns and no process of this PID namespace is in it"
                        .to_string();
                    self.missing.insert(nsid, (Instant::now(), why));
                    return None;
                }
            }
        }
        self.found.get(&nsid)
    }
}

/// One attached interface under the rule.
struct Watched {
    iface: String,
    ifindex: u32,
    /// In `tx_ports` now (the fast path may send out of it).
    sending: bool,
    /// The last warning given for it, so each is given once.
    warned: Option<String>,
}

/// The rule applied to every attached interface at start-up and at every sweep.
pub struct Watch {
    mode: Mode,
    ifaces: Vec<Watched>,
    far_ends: FarEnds,
}

impl Watch {
    /// Check every interface before anything is sent out of it. An error (one line, every
    /// wrong interface named) when a far end cannot take what would be sent there; a warning for
    /// a far end that cannot be seen.
    pub fn start(mode: Mode, ifaces: &[(String, u32)]) -> Result<Watch> {
        let mut w = Watch {
            mode,
            ifaces: ifaces
                .iter()
                .map(|(iface, ifindex)| Watched {
                    iface: iface.clone(),
                    ifindex: *ifindex,
                    sending: true,
                    warned: None,
                })
                .collect(),
            far_ends: FarEnds::default(),
        };
        if mode == Mode::Generic {
            return Ok(w);
        }
        let mut wrong = Vec::new();
        for i in 0..w.ifaces.len() {
            match w.check(i) {
                Verdict::Wrong(m) => wrong.push(m),
                Verdict::Unknown(m) => w.warn_once(i, m),
                Verdict::Fine => {}
            }
        }
        if !wrong.is_empty() {
            bail!("{}", wrong.join("; "));
        }
        Ok(w)
    }

    fn check(&mut self, i: usize) -> Verdict {
        let (iface, ifindex) = (self.ifaces[i].iface.clone(), self.ifaces[i].ifindex);
        match self.far_ends.look(ifindex) {
            Ok(seen) => verdict(&iface, self.mode, &seen),
            Err(e) => Verdict::Unknown(format!(
                "cannot read the far end of {iface} ({e:#}): if it is a veth, its far end needs \
                 an XDP program or GRO on in native XDP mode"
            )),
        }
    }

    fn warn_once(&mut self, i: usize, msg: String) {
        if self.ifaces[i].warned.as_deref() != Some(&msg) {
            log::warn!("{msg}");
            self.ifaces[i].warned = Some(msg);
        }
    }

    /// Check again (once a sweep). A far end that became wrong: its interface leaves `tx_ports`
    /// (its packets go to the server) with one warning; right again: back, with one info line.
    pub fn sweep(&mut self, tx_ports: &impl libbpf_rs::MapCore) {
        if self.mode == Mode::Generic {
            return;
        }
        for i in 0..self.ifaces.len() {
            let v = self.check(i);
            let w = &self.ifaces[i];
            let (iface, ifindex, sending) = (w.iface.clone(), w.ifindex, w.sending);
            match v {
                Verdict::Wrong(m) if sending => {
                    let key = ifindex.to_ne_bytes();
                    match tx_ports.delete(&key) {
                        Ok(()) => {
                            self.ifaces[i].sending = false;
                            self.warn_once(
                                i,
                                format!(
                                    "{m} — the fast path stopped sending out of {iface}: its \
                                     datagrams go to the server until that is fixed"
                                ),
                            );
                        }
                        Err(e) => log::warn!("taking {iface} out of tx_ports: {e}"),
                    }
                }
                Verdict::Wrong(_) => {}
                ok => {
                    if !sending {
                        match crate::maps::add_tx_port(tx_ports, ifindex) {
                            Ok(()) => {
                                self.ifaces[i].sending = true;
                                self.ifaces[i].warned = None;
                                log::info!(
                                    "the far end of {iface} can take frames again: the fast \
                                     path sends out of {iface} again"
                                );
                            }
                            Err(e) => log::warn!("{e:#}"),
                        }
                    }
                    match ok {
                        Verdict::Unknown(m) => self.warn_once(i, m),
                        _ => self.ifaces[i].warned = None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far(xdp: bool, gro: bool) -> Seen {
        Seen::Known(FarEnd {
            name: "eth0".into(),
            ifindex: 2,
            netns: "network namespace tbv-peer".into(),
            exec: "ip netns exec tbv-peer ".into(),
            xdp,
            gro,
        })
    }

    #[test]
    fn generic_mode_and_other_devices_need_nothing() {
        for (xdp, gro) in [(false, false), (true, false), (false, true)] {
            assert_eq!(
                verdict("relay0", Mode::Generic, &far(xdp, gro)),
                Verdict::Fine
            );
        }
        assert_eq!(verdict("eth1", Mode::Native, &Seen::NotVeth), Verdict::Fine);
    }

    #[test]
    fn native_mode_needs_gro_or_xdp_on_the_far_end() {
        for (xdp, gro) in [(true, false), (false, true), (true, true)] {
            assert_eq!(
                verdict("relay0", Mode::Native, &far(xdp, gro)),
                Verdict::Fine
            );
        }
        let v = verdict("relay0", Mode::Native, &far(false, false));
        assert!(!v.sendable());
        let Verdict::Wrong(m) = v else { panic!() };
        assert_eq!(
            m,
            "relay0 is a veth whose far end eth0 (ifindex 2, network namespace tbv-peer) has \
             neither GRO nor an XDP program: in native XDP mode the kernel drops every frame the \
             fast path sends into relay0. Fix: ip netns exec tbv-peer ethtool -K eth0 gro on, or \
             attach an XDP program to eth0 (XDP_PASS is enough; README: \"veth and \
             containers\"), or run with --xdp-mode generic"
        );
        assert!(!m.contains('\n'));
    }

    #[test]
    fn an_unreachable_far_end_is_a_warning() {
        let seen = Seen::Unreachable {
            nsid: 3,
            why: "not found".into(),
        };
        let v = verdict("relay0", Mode::Native, &seen);
        assert!(v.sendable());
        let Verdict::Unknown(m) = v else { panic!() };
        assert!(
            m.contains("nsid 3: not found") && m.contains("XMIT_DROPPED"),
            "{m}"
        );
    }

    #[test]
    fn netlink_link_attributes_parse() {
        let mut body = vec![0u8; 16];
        body.extend(attr(IFLA_IFNAME, b"relay0\0"));
        body.extend(attr(IFLA_LINK, &7u32.to_ne_bytes()));
        body.extend(attr(IFLA_LINK_NETNSID, &2i32.to_ne_bytes()));
        body.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"veth\0")));
        body.extend(attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[1])));
        let l = parse_link(&body).unwrap();
        assert_eq!(
            l,
            Link {
                name: "relay0".into(),
                kind: Some("veth".into()),
                link: Some(7),
                link_netnsid: Some(2),
                xdp: true,
            }
        );
        // generic (skb) mode gives no NAPI; several modes at once count when one is native
        for (attached, drv_id, native) in
            [(2u8, None, false), (4, Some(9u32), true), (4, None, false)]
        {
            let mut body = vec![0u8; 16];
            let mut xdp = attr(IFLA_XDP_ATTACHED, &[attached]);
            if let Some(id) = drv_id {
                xdp.extend(attr(IFLA_XDP_DRV_PROG_ID, &id.to_ne_bytes()));
            }
            body.extend(attr(IFLA_XDP, &xdp));
            assert_eq!(
                parse_link(&body).unwrap().xdp,
                native,
                "{attached} {drv_id:?}"
            );
        }
        assert!(parse_link(&[0; 4]).is_err());
        assert_eq!(parse_link(&[0; 16]).unwrap(), Link::default());
    }
}
