//! The TURN server's UDP sockets (a sock_diag dump, or `/proc/net/udp{,6}`), who the server is (the
//! process holding the listening sockets of the TURN ports), and the watch on its listening
//! sockets that tells when it stopped or restarted and keeps the trusted socket cookies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use crate::owners::{read_pidfile, ProcFs};
use crate::sockdiag;

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
    /// The UDP sockets of the calling thread's network namespace (the agent's), from one
    /// sock_diag dump per address family: binary, and linear in the number of sockets. Reading
    /// `/proc/net/udp` instead costs 2.8 ms of CPU at 1 000 sockets, 0.1 s at 10 000 and 10 s
    /// at 100 000 (each read(2) of it walks the table again from the start); the dump 0.6 ms,
    /// 6 ms and 53 ms (issue 13). Where sock_diag is unavailable (no `udp_diag`), the text
    /// tables are read.
    pub fn read() -> Result<UdpTable> {
        match sockdiag::udp_sockets() {
            Ok(socks) => Ok(UdpTable::from_sockets(socks.into_iter().map(|d| UdpSock {
                local: SocketAddr::new(d.ip, d.port),
                state: d.state,
                uid: d.uid,
                inode: d.inode,
            }))),
            Err(e) => {
                // said once (at scale the text table costs seconds a read: the operator must
                // know why the agent's CPU went up)
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    log::warn!(
                        "sock_diag: {e:#}: reading /proc/net/udp instead (slow with many \
                         sockets: load udp_diag)"
                    )
                });
                debug!("sock_diag: {e:#}: reading /proc/net/udp instead");
                UdpTable::read_from(std::path::Path::new("/proc/net"))
            }
        }
    }

    /// Read `udp` and `udp6` in `dir` (`/proc/net`: the namespace of this process's main
    /// thread; `/proc/thread-self/net`: the calling thread's). A missing `udp6` (IPv6 disabled)
    /// is no error.
    pub fn read_from(dir: &std::path::Path) -> Result<UdpTable> {
        let v4 = std::fs::read_to_string(dir.join("udp"))
            .with_context(|| format!("reading {}/udp", dir.display()))?;
        let v6 = match std::fs::read_to_string(dir.join("udp6")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}/udp6", dir.display())),
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

/// How the TURN server is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// Not named: the one process that holds the listening sockets of the TURN ports.
    Owner,
    /// `--server-pid`.
    Pid(u32),
    /// `--server-pidfile`, read again whenever the server is looked for (it follows restarts).
    PidFile(PathBuf),
}

/// What the watch needs to know about sockets beyond `/proc/net/udp`: which processes hold
/// them, and their cookies. [`System`] asks this host; the tests answer from fakes.
pub trait SocketInfo {
    /// The processes holding each of `inodes` (an inode nobody holds is left out).
    fn owners(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, BTreeSet<u32>>>;
    /// The socket inodes process `pid` holds; an error when there is no such process.
    fn sockets_of(&self, pid: u32) -> Result<BTreeSet<u64>>;
    /// The command name of `pid`, for messages.
    fn comm(&self, pid: u32) -> String;
    /// The executable `pid` runs.
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    /// The socket cookies of `inodes` (a socket closed meanwhile is missing).
    fn cookies(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, u64>>;
}

/// This host: `/proc/<pid>/fd` for owners, sock_diag for cookies.
#[derive(Debug, Default)]
pub struct System {
    pub proc: ProcFs,
}

impl SocketInfo for System {
    fn owners(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, BTreeSet<u32>>> {
        self.proc.owners(inodes)
    }
    fn sockets_of(&self, pid: u32) -> Result<BTreeSet<u64>> {
        self.proc.sockets_of(pid)
    }
    fn comm(&self, pid: u32) -> String {
        self.proc.comm(pid)
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        self.proc.exe(pid)
    }
    fn cookies(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, u64>> {
        sockdiag::udp_cookies(inodes)
    }
}

/// One trusted socket: the TURN port it listens on and its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSock {
    pub port: u16,
    pub cookie: u64,
}

/// The server process and its listening sockets on the TURN ports, by inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    pid: u32,
    socks: BTreeMap<u64, ServerSock>,
}

/// What a server found after a restart must have in common with the one trusted at start-up:
/// its executable and the uid(s) of its listening sockets. A local user can bind the TURN port
/// while the server is down, but cannot run the server's program as the server's user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Identity {
    exe: Option<PathBuf>,
    uids: BTreeSet<u32>,
}

/// The listening (unconnected) sockets on the TURN ports: inode -> (port, uid).
type Listeners = BTreeMap<u64, (u16, u32)>;

/// What one look at the server's sockets found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Why every binding learned must be forgotten: the server's sockets went away or were
    /// replaced (it stopped or restarted).
    pub forget: Option<String>,
    /// The cookies the snooper must trust from now on (`server_socks`); None: unchanged.
    pub trust: Option<Vec<u64>>,
}

/// Who the TURN server is and the watch on its listening sockets. The server is the process
/// holding the listening UDP sockets of the TURN ports (or the one named on the command line);
/// only its sockets are trusted, by cookie. At every sweep its sockets are compared: when they
/// go away or are replaced, the server stopped or restarted, every binding learned from it is
/// gone there, and the server is looked for again. Sockets of other processes on the TURN
/// ports are never trusted and otherwise ignored.
pub struct ServerWatch {
    ports: Vec<u16>,
    name: ServerName,
    info: Box<dyn SocketInfo + Send>,
    /// None: nobody is trusted (the server is down, or could not be told apart).
    server: Option<Server>,
    identity: Identity,
    /// Listening sockets on the TURN ports known not to be the server's.
    foreign: BTreeSet<u64>,
    /// Why nobody is trusted, as last logged (said again only when it changes).
    said: Option<String>,
    /// The listeners of the last look that found no server to trust, and when: with the same
    /// listeners, the next look (a /proc walk) waits for [`LOOK_AGAIN_EVERY`].
    looked: Option<(BTreeSet<u64>, Instant)>,
}

/// While no server is trusted, how often an unchanged set of listening sockets is looked at
/// again (a process may have dropped its copy of a socket another still holds).
pub const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for ServerWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerWatch")
            .field("ports", &self.ports)
            .field("name", &self.name)
            .field("server", &self.server)
            .field("identity", &self.identity)
            .field("foreign", &self.foreign)
            .finish_non_exhaustive()
    }
}

/// `UDP port 3478` or `UDP ports 3478, 3479`.
fn ports_text(ports: impl IntoIterator<Item = u16>) -> String {
    let p: Vec<String> = ports.into_iter().map(|p| p.to_string()).collect();
    let s = if p.len() == 1 { "" } else { "s" };
    format!("UDP port{s} {}", p.join(", "))
}

impl ServerWatch {
    /// Find the server and its sockets. Refuses when nothing listens on one of the TURN ports
    /// (the agent learns only from the server's responses, so the server must run first), when
    /// the listening sockets belong to several processes and none is named, when no process
    /// holds them, or when the named process holds none on some TURN port.
    pub fn start(
        turn_ports: &[u16],
        name: ServerName,
        t: &UdpTable,
        info: Box<dyn SocketInfo + Send>,
    ) -> Result<ServerWatch> {
        for &port in turn_ports {
            if t.listeners(port).is_empty() {
                anyhow::bail!(
                    "nothing listens on UDP port {port} here: start the TURN server first \
                     (turn-bpf learns from its responses)"
                );
            }
        }
        let mut w = ServerWatch {
            ports: turn_ports.to_vec(),
            name,
            info,
            server: None,
            identity: Identity::default(),
            foreign: BTreeSet::new(),
            said: None,
            looked: None,
        };
        let l = w.listeners(t);
        let server = w.find(&l, true).map_err(anyhow::Error::msg)?;
        w.identity = w.identity_of(server.pid, &l, server.socks.keys());
        w.foreign = l
            .keys()
            .filter(|i| !server.socks.contains_key(i))
            .copied()
            .collect();
        w.server = Some(server);
        Ok(w)
    }

    /// The other processes' listening sockets on the TURN ports, which are ignored, for a
    /// warning at start-up (None: there are none).
    pub fn describe_others(&self) -> Option<String> {
        let pid = self.server.as_ref()?.pid;
        (!self.foreign.is_empty()).then(|| {
            format!(
                "ignoring {} other socket(s) listening on {}{}: only the TURN server's own \
                 (pid {pid}) are trusted",
                self.foreign.len(),
                ports_text(self.ports.iter().copied()),
                self.held_by_text(&self.foreign),
            )
        })
    }

    /// A server is trusted now.
    pub fn trusting(&self) -> bool {
        self.server.is_some()
    }

    /// The cookies of the trusted sockets (for `server_socks`).
    pub fn trusted_cookies(&self) -> Vec<u64> {
        self.server
            .iter()
            .flat_map(|s| s.socks.values().map(|k| k.cookie))
            .collect()
    }

    /// The inodes of the trusted listening sockets.
    pub fn trusted_inodes(&self) -> Vec<u64> {
        self.server
            .iter()
            .flat_map(|s| s.socks.keys().copied())
            .collect()
    }

    /// The trusted server, for the log: `pid 4119 (turnserver): 3 listening socket(s) on UDP
    /// port 3478 (inodes 197916, 197917, 197920)`.
    pub fn describe(&self) -> String {
        let Some(s) = &self.server else {
            return "no TURN server trusted".into();
        };
        let ports: BTreeSet<u16> = s.socks.values().map(|k| k.port).collect();
        let inodes: Vec<String> = s.socks.keys().map(u64::to_string).collect();
        format!(
            "pid {} ({}): {} listening socket(s) on {} (inodes {})",
            s.pid,
            self.info.comm(s.pid),
            s.socks.len(),
            ports_text(ports),
            inodes.join(", ")
        )
    }

    fn listeners(&self, t: &UdpTable) -> Listeners {
        self.ports
            .iter()
            .flat_map(|&p| t.listeners(p))
            .map(|s| (s.inode, (s.local.port(), s.uid)))
            .collect()
    }

    fn identity_of<'a>(
        &self,
        pid: u32,
        l: &Listeners,
        held: impl IntoIterator<Item = &'a u64>,
    ) -> Identity {
        Identity {
            exe: self.info.exe(pid),
            uids: held
                .into_iter()
                .filter_map(|i| l.get(i))
                .map(|s| s.1)
                .collect(),
        }
    }

    /// ` (held by 4200 squatter, 4300 nc)` for sockets in `inodes`, or nothing.
    fn held_by_text(&self, inodes: &BTreeSet<u64>) -> String {
        let pids: BTreeSet<u32> = self
            .info
            .owners(inodes)
            .map(|o| o.into_values().flatten().collect())
            .unwrap_or_default();
        if pids.is_empty() {
            return String::new();
        }
        let who: Vec<String> = pids
            .iter()
            .map(|p| format!("{p} {}", self.info.comm(*p)))
            .collect();
        format!(" (held by {})", who.join(", "))
    }
}

/// Finding the server.
impl ServerWatch {
    /// The server among the listeners `l`, or why there is none to trust. At start-up
    /// (`first`) a named pid is taken as named; after a restart the named pid is gone, and the
    /// new server must be the one process holding the listeners that matches the identity of
    /// the one trusted before. A pid file is always read again.
    fn find(&self, l: &Listeners, first: bool) -> Result<Server, String> {
        let all: BTreeSet<u64> = l.keys().copied().collect();
        let pid = match &self.name {
            ServerName::Pid(pid) if first => *pid,
            ServerName::PidFile(path) => read_pidfile(path).map_err(|e| format!("{e:#}"))?,
            _ => self.single_owner(l, &all, !first)?,
        };
        let held: BTreeSet<u64> = self
            .info
            .sockets_of(pid)
            .map_err(|e| format!("the TURN server (pid {pid}): {e:#}"))?
            .intersection(&all)
            .copied()
            .collect();
        let comm = self.info.comm(pid);
        let mut missing = self
            .ports
            .iter()
            .filter(|p| !held.iter().any(|i| l[i].0 == **p));
        if let Some(p) = missing.next() {
            return Err(format!(
                "process {pid} ({comm}) holds no socket listening on UDP port {p}"
            ));
        }
        let cookies = self.info.cookies(&held).map_err(|e| format!("{e:#}"))?;
        let socks: BTreeMap<u64, ServerSock> = held
            .iter()
            .filter_map(|i| {
                let cookie = *cookies.get(i)?;
                Some((
                    *i,
                    ServerSock {
                        port: l[i].0,
                        cookie,
                    },
                ))
            })
            .collect();
        if socks.is_empty() {
            return Err(format!(
                "the sockets of process {pid} ({comm}) closed meanwhile"
            ));
        }
        Ok(Server { pid, socks })
    }

    /// The one process holding the listeners (with `same_identity`: the one among them that
    /// matches the server trusted before).
    fn single_owner(
        &self,
        l: &Listeners,
        all: &BTreeSet<u64>,
        same_identity: bool,
    ) -> Result<u32, String> {
        let owners = self.info.owners(all).map_err(|e| format!("{e:#}"))?;
        let holding = |pid: u32| {
            owners
                .iter()
                .filter(move |(_, p)| p.contains(&pid))
                .map(|e| e.0)
        };
        let pids: BTreeSet<u32> = owners.values().flatten().copied().collect();
        let who = |pids: &BTreeSet<u32>| -> String {
            let v: Vec<String> = pids
                .iter()
                .map(|p| format!("{p} {}", self.info.comm(*p)))
                .collect();
            v.join(", ")
        };
        let ports = ports_text(self.ports.iter().copied());
        let candidates: BTreeSet<u32> = if same_identity {
            pids.iter()
                .copied()
                .filter(|p| self.identity_of(*p, l, holding(*p)) == self.identity)
                .collect()
        } else {
            pids.clone()
        };
        match candidates.len() {
            1 => Ok(*candidates.first().expect("one")),
            0 if pids.is_empty() => Err(format!(
                "no process holds the sockets listening on {ports} (is the server in another \
                 PID namespace?)"
            )),
            0 => Err(format!(
                "the sockets listening on {ports} are held by {}, which is not the TURN server \
                 trusted before (another program or user)",
                who(&pids)
            )),
            _ => Err(format!(
                "the sockets listening on {ports} belong to several processes ({}): name the \
                 TURN server with --server-pid or --server-pidfile",
                who(&candidates)
            )),
        }
    }
}

/// The watch at every sweep.
impl ServerWatch {
    /// Compare with the socket table now (see [`WatchReport`]).
    pub fn check(&mut self, t: &UdpTable) -> WatchReport {
        let l = self.listeners(t);
        self.foreign.retain(|i| l.contains_key(i));
        let Some(server) = &self.server else {
            return self.look_again(&l);
        };
        let gone: BTreeSet<u16> = server
            .socks
            .iter()
            .filter(|(i, _)| !l.contains_key(i))
            .map(|(_, s)| s.port)
            .collect();
        if gone.is_empty() {
            return self.adopt_new(&l);
        }
        let why: Vec<String> = gone
            .iter()
            .map(|p| {
                let others = l
                    .iter()
                    .any(|(i, s)| s.0 == *p && !self.foreign.contains(i));
                if others {
                    format!("socket on port {p} changed (the server restarted)")
                } else {
                    format!("socket on port {p} went away")
                }
            })
            .collect();
        self.server = None;
        let mut r = self.look_again(&l);
        r.forget = Some(why.join(", "));
        r.trust.get_or_insert_with(Vec::new);
        r
    }

    /// Nobody is trusted: look for the server again (called at every tick then, so the walk of
    /// every process's fds is done only when the listeners changed, or once a second; a pid
    /// file is cheap to read every time).
    fn look_again(&mut self, l: &Listeners) -> WatchReport {
        if l.is_empty() {
            return WatchReport::default();
        }
        let now: BTreeSet<u64> = l.keys().copied().collect();
        let recent = self
            .looked
            .as_ref()
            .is_some_and(|(set, at)| *set == now && at.elapsed() < LOOK_AGAIN_EVERY);
        if recent && !matches!(self.name, ServerName::PidFile(_)) {
            return WatchReport::default();
        }
        self.looked = Some((now, Instant::now()));
        match self.find(l, false) {
            Ok(server) => {
                self.looked = None;
                self.said = None;
                self.foreign = l
                    .keys()
                    .filter(|i| !server.socks.contains_key(i))
                    .copied()
                    .collect();
                self.server = Some(server);
                info!(
                    "the TURN server listens again; trusting {}",
                    self.describe()
                );
                WatchReport {
                    forget: None,
                    trust: Some(self.trusted_cookies()),
                }
            }
            Err(why) => {
                if self.said.as_ref() != Some(&why) {
                    warn!("{why}: trusting no response until that changes (checked every second)");
                    self.said = Some(why);
                }
                WatchReport::default()
            }
        }
    }

    /// Listening sockets that appeared next to the server's: trusted when the server holds
    /// them, otherwise remembered as another process's and ignored.
    fn adopt_new(&mut self, l: &Listeners) -> WatchReport {
        let server = self.server.as_mut().expect("a trusted server");
        let new: BTreeSet<u64> = l
            .keys()
            .filter(|i| !server.socks.contains_key(i) && !self.foreign.contains(i))
            .copied()
            .collect();
        if new.is_empty() {
            return WatchReport::default();
        }
        let held: BTreeSet<u64> = self
            .info
            .sockets_of(server.pid)
            .map(|s| s.intersection(&new).copied().collect())
            .unwrap_or_default();
        let cookies = self.info.cookies(&held).unwrap_or_default();
        let before = server.socks.len();
        for (i, cookie) in cookies {
            server.socks.insert(
                i,
                ServerSock {
                    port: l[&i].0,
                    cookie,
                },
            );
        }
        let ignored = new.iter().filter(|i| !server.socks.contains_key(i)).count();
        self.foreign
            .extend(new.iter().filter(|i| !server.socks.contains_key(i)));
        if ignored > 0 {
            debug!("ignoring {ignored} new socket(s) on the TURN port(s) of other processes");
        }
        if server.socks.len() == before {
            return WatchReport::default();
        }
        info!(
            "the TURN server (pid {}) listens on {} more socket(s); trusting them",
            server.pid,
            server.socks.len() - before
        );
        WatchReport {
            forget: None,
            trust: Some(self.trusted_cookies()),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    pub use crate::owners::tests::FakeProc;

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

    /// Fake cookies: the inode plus this.
    pub const COOKIE: u64 = 1 << 40;

    /// Answers from a fake `/proc` tree (which a test may change between looks) and fake
    /// cookies.
    pub struct FakeInfo(pub ProcFs);

    impl SocketInfo for FakeInfo {
        fn owners(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, BTreeSet<u32>>> {
            self.0.owners(inodes)
        }
        fn sockets_of(&self, pid: u32) -> Result<BTreeSet<u64>> {
            self.0.sockets_of(pid)
        }
        fn comm(&self, pid: u32) -> String {
            self.0.comm(pid)
        }
        fn exe(&self, pid: u32) -> Option<PathBuf> {
            self.0.exe(pid)
        }
        fn cookies(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, u64>> {
            Ok(inodes.iter().map(|i| (*i, i + COOKIE)).collect())
        }
    }

    const TURNSERVER: &str = "/usr/bin/turnserver";

    /// A socket table of unconnected sockets: (address, uid, inode).
    fn tbl(socks: &[(&str, u32, u64)]) -> UdpTable {
        UdpTable::from_sockets(
            socks
                .iter()
                .map(|(a, uid, inode)| UdpSock::unconnected(a.parse().unwrap(), *uid, *inode)),
        )
    }

    /// coturn as the lab runs it: pid 100, two listener threads on 192.0.2.1:3478 and one on
    /// [2001:db8:1::1]:3478, a relay socket.
    fn coturn(p: &FakeProc) -> UdpTable {
        p.process(100, "turnserver", TURNSERVER, &[11, 12, 13, 50]);
        tbl(&[
            ("192.0.2.1:3478", 0, 11),
            ("192.0.2.1:3478", 0, 12),
            ("[2001:db8:1::1]:3478", 0, 13),
            ("198.51.100.1:50000", 0, 50),
        ])
    }

    fn with(t: &UdpTable, extra: &[(&str, u32, u64)]) -> UdpTable {
        let mut all: Vec<UdpSock> = t.by_port.values().flatten().copied().collect();
        all.extend(
            extra
                .iter()
                .map(|(a, uid, inode)| UdpSock::unconnected(a.parse().unwrap(), *uid, *inode)),
        );
        UdpTable::from_sockets(all)
    }

    fn start(p: &FakeProc, name: ServerName, t: &UdpTable) -> Result<ServerWatch> {
        ServerWatch::start(&[3478], name, t, Box::new(FakeInfo(p.procfs())))
    }

    fn cookies(inodes: &[u64]) -> Vec<u64> {
        inodes.iter().map(|i| i + COOKIE).collect()
    }

    fn trusts(w: &ServerWatch) -> Vec<u64> {
        let mut c = w.trusted_cookies();
        c.sort_unstable();
        c
    }

    #[test]
    fn the_server_is_the_one_process_holding_the_listening_sockets() {
        let p = FakeProc::new("watch-start");
        let e = start(&p, ServerName::Owner, &UdpTable::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "nothing listens on UDP port 3478 here: start the TURN server first (turn-bpf \
             learns from its responses)"
        );
        let t = coturn(&p);
        let w = start(&p, ServerName::Owner, &t).unwrap();
        assert_eq!(trusts(&w), cookies(&[11, 12, 13]), "not the relay socket");
        assert_eq!(w.describe_others(), None);
        assert_eq!(
            w.describe(),
            "pid 100 (turnserver): 3 listening socket(s) on UDP port 3478 (inodes 11, 12, 13)"
        );
        let e = ServerWatch::start(
            &[3478, 5000],
            ServerName::Owner,
            &t,
            Box::new(FakeInfo(p.procfs())),
        );
        assert!(e.unwrap_err().to_string().contains("port 5000"));

        // A local user's socket on the TURN port (another address) at start-up: refused.
        p.process(200, "squatter", "/usr/bin/python3", &[21]);
        let t = with(&t, &[("127.0.0.1:3478", 65534, 21)]);
        let e = start(&p, ServerName::Owner, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the sockets listening on UDP port 3478 belong to several processes (100 \
             turnserver, 200 squatter): name the TURN server with --server-pid or \
             --server-pidfile"
        );
        // Named, the server's sockets alone are trusted.
        let w = start(&p, ServerName::Pid(100), &t).unwrap();
        assert_eq!(trusts(&w), cookies(&[11, 12, 13]));
        assert_eq!(
            w.describe_others().as_deref(),
            Some(
                "ignoring 1 other socket(s) listening on UDP port 3478 (held by 200 squatter): \
                 only the TURN server's own (pid 100) are trusted"
            )
        );
        let pidfile = p.root.join("turnserver.pid");
        std::fs::write(&pidfile, "100\n").unwrap();
        let w = start(&p, ServerName::PidFile(pidfile.clone()), &t).unwrap();
        assert_eq!(trusts(&w), cookies(&[11, 12, 13]));
        // A named process that holds no listening socket there, or none at all.
        p.process(300, "sleep", "/usr/bin/sleep", &[]);
        let e = start(&p, ServerName::Pid(300), &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "process 300 (sleep) holds no socket listening on UDP port 3478"
        );
        let e = start(&p, ServerName::Pid(999), &t).unwrap_err().to_string();
        assert!(e.starts_with("the TURN server (pid 999): reading "), "{e}");
        std::fs::write(&pidfile, "").unwrap();
        let e = start(&p, ServerName::PidFile(pidfile), &t).unwrap_err();
        assert!(e.to_string().contains("holds no pid"), "{e}");
        // Sockets no visible process holds: nobody to trust.
        let e = start(&p, ServerName::Owner, &tbl(&[("192.0.2.1:3478", 0, 77)])).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("no process holds the sockets listening on UDP port 3478"));
    }

    #[test]
    fn other_processes_on_the_turn_port_are_ignored() {
        let p = FakeProc::new("watch-others");
        let t = coturn(&p);
        let mut w = start(&p, ServerName::Owner, &t).unwrap();
        // A local user binds and closes sockets on the TURN port, again and again.
        for inode in 21..30 {
            p.process(200, "squatter", "/usr/bin/python3", &[inode]);
            let r = w.check(&with(&t, &[("127.0.0.1:3478", 65534, inode)]));
            assert_eq!(r, WatchReport::default(), "socket {inode} bound");
            let r = w.check(&t);
            assert_eq!(r, WatchReport::default(), "socket {inode} closed");
        }
        // Next to the server's own sockets, on its address (SO_REUSEADDR), and held for long.
        let squatted = with(
            &t,
            &[("192.0.2.1:3478", 65534, 31), ("0.0.0.0:3478", 0, 32)],
        );
        p.process(200, "squatter", "/usr/bin/python3", &[31, 32]);
        assert_eq!(w.check(&squatted), WatchReport::default());
        assert_eq!(w.check(&squatted), WatchReport::default());
        assert_eq!(trusts(&w), cookies(&[11, 12, 13]));
        // A socket the server itself opens on the TURN port is trusted too.
        p.process(100, "turnserver", TURNSERVER, &[11, 12, 13, 14, 50]);
        let r = w.check(&with(&squatted, &[("192.0.2.1:3478", 0, 14)]));
        assert_eq!(r.forget, None);
        assert_eq!(r.trust, Some(cookies(&[11, 12, 13, 14])));
    }

    #[test]
    fn a_stopped_or_restarted_server_is_forgotten_and_found_again() {
        let p = FakeProc::new("watch-restart");
        let t = coturn(&p);
        let mut w = start(&p, ServerName::Owner, &t).unwrap();
        assert_eq!(w.check(&t), WatchReport::default(), "unchanged");
        // Restarted between two looks: new sockets, a new pid, the same program and user.
        std::fs::remove_dir_all(p.root.join("100")).unwrap();
        p.process(101, "turnserver", TURNSERVER, &[41, 42]);
        let t2 = tbl(&[("192.0.2.1:3478", 0, 41), ("[2001:db8:1::1]:3478", 0, 42)]);
        let r = w.check(&t2);
        assert_eq!(
            r.forget.as_deref(),
            Some("socket on port 3478 changed (the server restarted)")
        );
        assert_eq!(r.trust, Some(cookies(&[41, 42])));
        assert_eq!(w.check(&t2), WatchReport::default(), "said once");
        // One of several sockets replaced is a restart too.
        p.process(101, "turnserver", TURNSERVER, &[41, 43]);
        let r = w.check(&tbl(&[
            ("192.0.2.1:3478", 0, 41),
            ("[2001:db8:1::1]:3478", 0, 43),
        ]));
        assert!(r.forget.is_some());
        assert_eq!(r.trust, Some(cookies(&[41, 43])));

        // Stopped: nothing to trust; a local user takes the port meanwhile: not the server.
        std::fs::remove_dir_all(p.root.join("101")).unwrap();
        let r = w.check(&UdpTable::default());
        assert_eq!(r.forget.as_deref(), Some("socket on port 3478 went away"));
        assert_eq!(r.trust, Some(vec![]));
        assert_eq!(w.check(&UdpTable::default()), WatchReport::default());
        p.process(200, "squatter", "/usr/bin/python3", &[21]);
        let squat = tbl(&[("192.0.2.1:3478", 65534, 21)]);
        assert_eq!(w.check(&squat), WatchReport::default(), "never trusted");
        assert_eq!(trusts(&w), Vec::<u64>::new());
        // The same program as another user is not the server either.
        p.process(200, "turnserver", TURNSERVER, &[22]);
        let squat = tbl(&[("192.0.2.1:3478", 65534, 22)]);
        assert_eq!(w.check(&squat), WatchReport::default());
        assert_eq!(trusts(&w), Vec::<u64>::new());
        // The server comes back next to it: trusted, the other one still ignored.
        p.process(102, "turnserver", TURNSERVER, &[51]);
        let back = with(&squat, &[("192.0.2.1:3478", 0, 51)]);
        assert_eq!(
            w.check(&back),
            WatchReport {
                forget: None,
                trust: Some(cookies(&[51]))
            }
        );
        assert_eq!(w.check(&back), WatchReport::default());
        // ... and the other one leaving changes nothing.
        std::fs::remove_dir_all(p.root.join("200")).unwrap();
        assert_eq!(
            w.check(&tbl(&[("192.0.2.1:3478", 0, 51)])),
            WatchReport::default()
        );
    }

    #[test]
    fn two_servers_after_a_restart_are_trusted_only_once_one_is_left() {
        let p = FakeProc::new("watch-two");
        let t = coturn(&p);
        let mut w = start(&p, ServerName::Pid(100), &t).unwrap();
        std::fs::remove_dir_all(p.root.join("100")).unwrap();
        p.process(101, "turnserver", TURNSERVER, &[41]);
        p.process(102, "turnserver", TURNSERVER, &[42]);
        let two = tbl(&[("192.0.2.1:3478", 0, 41), ("0.0.0.0:3478", 0, 42)]);
        let r = w.check(&two);
        assert_eq!(
            r.forget.as_deref(),
            Some("socket on port 3478 changed (the server restarted)")
        );
        assert_eq!(r.trust, Some(vec![]), "trust none");
        assert_eq!(w.check(&two), WatchReport::default(), "retried, still two");
        std::fs::remove_dir_all(p.root.join("102")).unwrap();
        let r = w.check(&tbl(&[("192.0.2.1:3478", 0, 41)]));
        assert_eq!(r.trust, Some(cookies(&[41])));
    }

    #[test]
    fn a_pid_file_is_read_again_after_a_restart() {
        let p = FakeProc::new("watch-pidfile");
        let t = coturn(&p);
        let pidfile = p.root.join("turnserver.pid");
        std::fs::write(&pidfile, "100\n").unwrap();
        let mut w = start(&p, ServerName::PidFile(pidfile.clone()), &t).unwrap();
        std::fs::remove_dir_all(p.root.join("100")).unwrap();
        p.process(101, "turnserver", TURNSERVER, &[41]);
        p.process(102, "turnserver", TURNSERVER, &[42]);
        let two = tbl(&[("192.0.2.1:3478", 0, 41), ("0.0.0.0:3478", 0, 42)]);
        // The pid file still names the old server: nobody is trusted yet.
        let r = w.check(&two);
        assert_eq!(r.trust, Some(vec![]));
        std::fs::write(&pidfile, "102\n").unwrap();
        assert_eq!(w.check(&two).trust, Some(cookies(&[42])));
    }
}
