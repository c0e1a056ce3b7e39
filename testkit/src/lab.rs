//! The end-to-end test lab: a Rust face on `scripts/lab.sh`.
//!
//! [`Lab::up`] builds three network namespaces (`<name>-cli`, `<name>-srv`, `<name>-peer`) joined by
//! veths, with an unmodified coturn in the server namespace; dropping the [`Lab`] tears it all down
//! again, also when a test panics. [`Lab::up_pion`] builds the same lab with pion/turn v2.1.0
//! (the lab's own main in `testkit/pion/`, built offline by `scripts/pion.sh`) in place of
//! coturn: same addresses, user and realm, so [`crate::turn_client::TurnClient`] works unchanged.
//! [`in_ns`] and [`spawn_in_ns`] run code on a thread that has
//! entered one of the namespaces, so sockets it creates live there:
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use turn_bpf_testkit::lab::{self, Host, Lab};
//!
//! let lab = Lab::up("tbt-doc", &["--channel-lifetime", "5"]).unwrap();
//! let sock = lab::in_ns(&lab.ns(Host::Peer), || UdpSocket::bind((lab::PEER_V4, 0)).unwrap());
//! ```
//!
//! Addresses, interfaces and credentials are the constants below; they must match
//! `scripts/lab.sh` and `scripts/turnserver.conf`.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::{self, JoinHandle};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Server address on `turn0`, where coturn listens.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Client address on the client namespace's `eth0`.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Server address on `relay0`, where coturn's relayed addresses live.
pub const RELAY_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Peer address on the peer namespace's `eth0`.
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// IPv6 twin of [`SERVER_V4`].
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// IPv6 twin of [`CLIENT_V4`].
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// IPv6 twin of [`RELAY_V4`].
pub const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// IPv6 twin of [`PEER_V4`].
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// coturn's listening port.
pub const TURN_PORT: u16 = 3478;
/// coturn's listening address over IPv4.
pub const TURN_SERVER_V4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(SERVER_V4, TURN_PORT));
/// coturn's listening address over IPv6.
pub const TURN_SERVER_V6: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(SERVER_V6, TURN_PORT, 0, 0));
/// The lab's one static user (long-term credentials).
pub const TURN_USER: &str = "alice";
/// Password of [`TURN_USER`].
pub const TURN_PASS: &str = "alice-secret";
/// coturn's realm.
pub const REALM: &str = "turn-bpf.test";
/// Lowest relayed port coturn hands out.
pub const RELAY_PORT_MIN: u16 = 49152;
/// Highest relayed port coturn hands out.
pub const RELAY_PORT_MAX: u16 = 65535;

/// Client-facing interface in the server namespace (where the agent attaches).
pub const IFACE: &str = "turn0";
/// Peer-facing (relay) interface in the server namespace.
pub const RELAY_IFACE: &str = "relay0";
/// The only veth end in the client namespace.
pub const CLIENT_IFACE: &str = "eth0";
/// The only veth end in the peer namespace.
pub const PEER_IFACE: &str = "eth0";

/// Where `lab.sh` keeps a lab's pid file, log and coturn database.
pub const STATE_ROOT: &str = "/run/turn-bpf-lab";

/// One of the lab's three hosts (network namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The TURN client: `eth0` 192.0.2.2 / 2001:db8:1::2.
    Cli,
    /// The TURN server with coturn: `turn0` towards the client, `relay0` towards the peer.
    Srv,
    /// The peer behind the relay: `eth0` 198.51.100.2 / 2001:db8:2::2.
    Peer,
}

impl Host {
    fn suffix(self) -> &'static str {
        match self {
            Host::Cli => "cli",
            Host::Srv => "srv",
            Host::Peer => "peer",
        }
    }
}

/// Which TURN server a lab runs in its server namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnServer {
    /// coturn 4.6.1 from Debian, configured by `scripts/turnserver.conf`.
    Coturn,
    /// pion/turn v2.1.0 (`testkit/pion/`), started with the same addresses, user and realm.
    Pion,
}

impl TurnServer {
    /// The value of `TURN_SERVER` for `lab.sh`.
    pub fn script_name(self) -> &'static str {
        match self {
            TurnServer::Coturn => "coturn",
            TurnServer::Pion => "pion",
        }
    }

    /// The server's `/proc/<pid>/comm` (cut to 15 characters by the kernel).
    pub fn comm(self) -> &'static str {
        match self {
            TurnServer::Coturn => "turnserver",
            TurnServer::Pion => "pion-turn-serve",
        }
    }
}

/// A running lab. Dropping it runs `lab.sh down`.
#[derive(Debug)]
pub struct Lab {
    name: String,
    /// Built by this handle, so dropping it tears the lab down.
    owned: bool,
    server: TurnServer,
}

impl Lab {
    /// Builds (or reuses, when identical) the lab `name` with coturn given the extra `turn_args`,
    /// e.g. `&["--channel-lifetime", "5"]` (lab.sh turns `--opt value` into coturn's
    /// `--opt=value`).
    pub fn up(name: &str, turn_args: &[&str]) -> Result<Lab> {
        Lab::up_with(name, turn_args, false)
    }

    /// Like [`Lab::up`]; with `veth_defaults` every veth keeps the kernel's settings (tx
    /// checksum offload on, GRO off), as a container runtime leaves them, instead of the lab's
    /// `tx off` and `gro on` (`LAB_VETH_DEFAULTS=1` of `lab.sh`).
    pub fn up_with(name: &str, turn_args: &[&str], veth_defaults: bool) -> Result<Lab> {
        Lab::up_server(name, TurnServer::Coturn, turn_args, veth_defaults)
    }

    /// Builds (or reuses, when identical) the lab `name` with pion/turn in place of coturn, given
    /// the extra flags `pion_args` after the lab's own (e.g. `&["-channel-lifetime", "5s",
    /// "-log-level", "debug"]`; a flag given again wins). Builds the server first if needed.
    pub fn up_pion(name: &str, pion_args: &[&str]) -> Result<Lab> {
        Lab::up_server(name, TurnServer::Pion, pion_args, false)
    }

    /// Builds (or reuses, when identical) the lab `name` running `server` with `turn_args`, and
    /// the veths as [`Lab::up_with`] says.
    pub fn up_server(
        name: &str,
        server: TurnServer,
        turn_args: &[&str],
        veth_defaults: bool,
    ) -> Result<Lab> {
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("lab name {name:?} must be 1-32 characters of [A-Za-z0-9_-]");
        }
        let mut cmd = lab_script(name);
        cmd.arg("up")
            .env("TURN_SERVER", server.script_name())
            .env("LAB_VETH_DEFAULTS", if veth_defaults { "1" } else { "0" });
        if !turn_args.is_empty() {
            cmd.arg("--").args(turn_args);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {} up", script_path().display()))?;
        if !out.status.success() {
            bail!(
                "lab.sh up (LAB={name}, {} args {turn_args:?}) failed: {}",
                server.script_name(),
                describe(&out)
            );
        }
        Ok(Lab {
            name: name.to_owned(),
            owned: true,
            server,
        })
    }

    /// A lab that is up already (built by `scripts/lab.sh up` or another handle), by name: it
    /// is neither built nor torn down by this handle. An error when a namespace is missing.
    pub fn existing(name: &str) -> Result<Lab> {
        let server = match std::fs::read_to_string(Path::new(STATE_ROOT).join(name).join("server"))
        {
            Ok(kind) if kind.trim() == "pion" => TurnServer::Pion,
            _ => TurnServer::Coturn,
        };
        let lab = Lab {
            name: name.to_owned(),
            owned: false,
            server,
        };
        for host in [Host::Cli, Host::Srv, Host::Peer] {
            let ns = lab.ns(host);
            if !netns_path(&ns).exists() {
                bail!(
                    "network namespace {ns} does not exist: bring the lab up first \
                     (LAB={name} scripts/lab.sh up)"
                );
            }
        }
        Ok(lab)
    }

    /// Which TURN server runs in the server namespace.
    pub fn server(&self) -> TurnServer {
        self.server
    }

    /// The lab's name (its namespace prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Name of the network namespace of `host`, as under `/run/netns/`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.suffix())
    }

    /// The lab's state directory: coturn's pid file, log and database.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.name)
    }

    /// The server's log file (coturn's, or pion's standard output and error).
    pub fn turnserver_log(&self) -> PathBuf {
        self.state_dir().join("turnserver.log")
    }

    /// Output of `lab.sh status`; an error if the lab is not (fully) up.
    pub fn status(&self) -> Result<String> {
        let out = lab_script(&self.name)
            .arg("status")
            .output()
            .context("running lab.sh status")?;
        if !out.status.success() {
            bail!("lab.sh status (LAB={}): {}", self.name, describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Tears the lab down now and reports failure (dropping does the same but can only print).
    pub fn down(self) -> Result<()> {
        let res = lab_down(&self.name);
        std::mem::forget(self);
        res
    }

    /// Runs `ip netns exec <ns of host> args...` and returns its stdout; the error carries the
    /// exit status and stderr.
    pub fn exec(&self, host: Host, args: &[&str]) -> Result<String> {
        let out = Command::new(tool("ip"))
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {}", self.ns(host)))?;
        if !out.status.success() {
            bail!("{args:?} in {} failed: {}", self.ns(host), describe(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The UDP counters (`/proc/net/snmp` and `/proc/net/snmp6`) of `host`'s namespace.
    pub fn udp_counters(&self, host: Host) -> Result<UdpCounters> {
        let ns = self.ns(host);
        if !netns_path(&ns).exists() {
            bail!("network namespace {ns} does not exist");
        }
        in_ns(&ns, read_udp_counters).with_context(|| format!("reading UDP counters in {ns}"))
    }

    /// `UdpInDatagrams` (IPv4) in `host`'s namespace.
    ///
    /// # Panics
    /// When the counters cannot be read (the namespace is gone): this is a test helper.
    pub fn nstat_udp_in(&self, host: Host) -> u64 {
        self.udp_counters(host)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .v4
            .in_datagrams
    }

    /// `UdpInDatagrams` + `Udp6InDatagrams` in `host`'s namespace.
    ///
    /// # Panics
    /// When the counters cannot be read (the namespace is gone): this is a test helper.
    pub fn nstat_udp_in_all(&self, host: Host) -> u64 {
        let c = self.udp_counters(host).unwrap_or_else(|e| panic!("{e:#}"));
        c.v4.in_datagrams + c.v6.in_datagrams
    }

    /// The server's pid, if it is running (from its pid file, checked against
    /// `/proc/<pid>/comm`).
    pub fn turnserver_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.state_dir().join("turnserver.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == self.server.comm()).then_some(pid)
    }

    /// CPU time the server has used so far (user + system, all threads), in seconds.
    pub fn turnserver_cpu_secs(&self) -> Option<f64> {
        process_cpu_secs(self.turnserver_pid()?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = lab_down(&self.name) {
            eprintln!("warning: tearing down lab {}: {e:#}", self.name);
        }
    }
}

/// UDP counters of one network namespace, per address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// From `/proc/net/snmp` (`Udp:` lines).
    pub v4: UdpFamilyCounters,
    /// From `/proc/net/snmp6` (`Udp6*` lines).
    pub v6: UdpFamilyCounters,
}

/// The UDP MIB counters the tests look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpFamilyCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams for a port nobody listens on.
    pub no_ports: u64,
    /// Datagrams dropped on receive (includes the two below).
    pub in_errors: u64,
    /// Datagrams sent.
    pub out_datagrams: u64,
    /// Dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Dropped for a bad UDP checksum.
    pub in_csum_errors: u64,
}

/// Parses the `Udp:` header/value line pair of `/proc/net/snmp`.
pub fn parse_snmp_udp(text: &str) -> Option<UdpFamilyCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return None;
    }
    let get = |key: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == key)?;
        values[i].parse().ok()
    };
    Some(UdpFamilyCounters {
        in_datagrams: get("InDatagrams")?,
        no_ports: get("NoPorts")?,
        in_errors: get("InErrors")?,
        out_datagrams: get("OutDatagrams")?,
        rcvbuf_errors: get("RcvbufErrors").unwrap_or(0),
        in_csum_errors: get("InCsumErrors").unwrap_or(0),
    })
}

/// Parses the `Udp6*` lines of `/proc/net/snmp6` (`Name value` per line).
pub fn parse_snmp6_udp(text: &str) -> Option<UdpFamilyCounters> {
    let get = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == key).then(|| it.next()?.parse().ok())?
        })
    };
    Some(UdpFamilyCounters {
        in_datagrams: get("Udp6InDatagrams")?,
        no_ports: get("Udp6NoPorts")?,
        in_errors: get("Udp6InErrors")?,
        out_datagrams: get("Udp6OutDatagrams")?,
        rcvbuf_errors: get("Udp6RcvbufErrors").unwrap_or(0),
        in_csum_errors: get("Udp6InCsumErrors").unwrap_or(0),
    })
}

/// Reads the counters of the calling thread's network namespace. `/proc/net` follows the
/// process's (main thread's) namespace, `/proc/thread-self/net` this thread's.
fn read_udp_counters() -> Result<UdpCounters> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .context("reading /proc/thread-self/net/snmp")?;
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6")
        .context("reading /proc/thread-self/net/snmp6")?;
    Ok(UdpCounters {
        v4: parse_snmp_udp(&snmp).context("no Udp: lines in /proc/net/snmp")?,
        v6: parse_snmp6_udp(&snmp6).context("no Udp6 lines in /proc/net/snmp6")?,
    })
}

/// utime and stime (clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_stat_cpu_ticks(&stat)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    Some((utime + stime) as f64 / hz as f64)
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its result. Sockets `f`
/// creates stay in that namespace wherever they are used later. A panic in `f` is passed on.
///
/// # Panics
/// When the namespace does not exist or cannot be entered.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_ns(ns, f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Like [`in_ns`] but returns at once with the thread's handle, for long-running peers.
///
/// # Panics
/// When the namespace does not exist (checked before the thread starts).
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = netns_path(ns);
    let file = File::open(&path)
        .unwrap_or_else(|e| panic!("opening network namespace {}: {e}", path.display()));
    let ns = ns.to_owned();
    thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
            drop(file);
            f()
        })
        .expect("spawning a thread")
}

/// Moves the calling thread into network namespace `ns` for good (threads it spawns inherit it).
/// Prefer [`in_ns`]/[`spawn_in_ns`], which never change the caller's namespace.
pub fn enter_ns(ns: &str) -> Result<()> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {ns}"))
}

/// The generated skeleton of `testkit/bpf/xdp_pass.bpf.c`.
#[allow(
    clippy::all,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
mod xdp_pass_skel {
    include!(concat!(env!("OUT_DIR"), "/xdp_pass.skel.rs"));
}

/// An XDP program that passes everything, attached to `iface` of the network
/// namespace at `ns_path` (what the README advises for the far end of a veth: it gives that end
/// NAPI). Detached on drop.
pub struct XdpPass {
    _link: std::os::fd::OwnedFd,
    _skel: xdp_pass_skel::XdpPassSkel<'static>,
}

impl XdpPass {
    /// Attach to `iface` in the namespace at `ns_path` (`/run/netns/NAME` or any bind mount).
    pub fn attach(ns_path: &Path, iface: &str) -> Result<XdpPass> {
        XdpPass::attach_in(ns_path, iface, false)
    }

    /// The same in generic (skb) mode, which gives a veth no NAPI.
    pub fn attach_generic(ns_path: &Path, iface: &str) -> Result<XdpPass> {
        XdpPass::attach_in(ns_path, iface, true)
    }

    fn attach_in(ns_path: &Path, iface: &str, generic: bool) -> Result<XdpPass> {
        use libbpf_rs::skel::{OpenSkel, SkelBuilder};
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

        let storage = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
        let skel = xdp_pass_skel::XdpPassSkelBuilder::default()
            .open(storage)
            .context("opening xdp_pass")?
            .load()
            .context("loading xdp_pass")?;
        let prog = skel.progs.xdp_pass.as_fd().as_raw_fd();
        let ns = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        let name = iface.to_string();
        let link = thread::spawn(move || -> Result<OwnedFd> {
            setns(&ns, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
            let c = std::ffi::CString::new(name.clone())?;
            // SAFETY: c is a valid NUL-terminated string.
            let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if idx == 0 {
                bail!("no interface {name} there");
            }
            let opts = libbpf_rs::libbpf_sys::bpf_link_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_link_create_opts>() as _,
                // XDP_FLAGS_SKB_MODE or XDP_FLAGS_DRV_MODE
                flags: if generic { 1 << 1 } else { 1 << 2 },
                ..Default::default()
            };
            // SAFETY: a valid program fd and options struct.
            let fd = unsafe {
                libbpf_rs::libbpf_sys::bpf_link_create(
                    prog,
                    idx as i32,
                    libbpf_rs::libbpf_sys::BPF_XDP,
                    &opts,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::from_raw_os_error(-fd))
                    .with_context(|| format!("attaching xdp_pass to {name}"));
            }
            // SAFETY: the kernel just gave us this fd.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))??;
        Ok(XdpPass {
            _link: link,
            _skel: skel,
        })
    }
}

/// `/run/netns/<ns>`, where `ip netns` keeps its namespaces.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Whether this process runs as root (the lab needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Why the lab cannot run here (not root, a missing tool), or `None` when it can. Lab tests
/// print the reason and return early.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("not running as root (the lab needs network namespaces)".into());
    }
    for (bin, pkg) in [
        ("turnserver", "coturn"),
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("ethtool", "ethtool"),
    ] {
        if find_tool(bin).is_none() {
            return Some(format!("{bin} not found (Debian package {pkg})"));
        }
    }
    None
}

/// Why the pion/turn lab cannot run here, or `None` when it can: [`skip_reason`], plus the Go
/// toolchain and pion/turn v2's Debian sources `scripts/pion.sh` builds from.
pub fn pion_skip_reason() -> Option<String> {
    if let Some(why) = skip_reason() {
        return Some(why);
    }
    if find_tool("go").is_none() && !Path::new("/usr/lib/go/bin/go").is_file() {
        return Some("go not found (Debian package golang-go)".into());
    }
    if !Path::new(PION_DEBIAN_SRC).is_dir() {
        return Some(format!(
            "{PION_DEBIAN_SRC} missing (Debian package golang-github-pion-turn.v2-dev)"
        ));
    }
    None
}

/// Where Debian's golang-github-pion-turn.v2-dev keeps pion/turn v2's sources.
pub const PION_DEBIAN_SRC: &str = "/usr/share/gocode/src/github.com/pion/turn/v2";

/// The lab's pion/turn server executable, built by `scripts/pion.sh` if it is missing or stale.
pub fn pion_server_bin() -> Result<PathBuf> {
    pion_build("build")
}

/// Debian's example pion/turn client (`examples/turn-client/udp`), built like the server.
pub fn pion_client_bin() -> Result<PathBuf> {
    pion_build("client")
}

/// The lab's pion/turn server built in GOPATH mode (no module information in it).
pub fn pion_server_gopath_bin() -> Result<PathBuf> {
    pion_build("gopath")
}

fn pion_build(what: &str) -> Result<PathBuf> {
    let script = project_dir().join("scripts/pion.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {what} failed: {}", script.display(), describe(&out));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The project's top-level directory (the testkit lives in `testkit/` beneath it).
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent directory")
        .to_path_buf()
}

/// Path of `scripts/lab.sh` in this source tree.
pub fn script_path() -> PathBuf {
    project_dir().join("scripts/lab.sh")
}

fn lab_script(name: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script_path()).env("LAB", name);
    cmd
}

fn lab_down(name: &str) -> Result<()> {
    let out = lab_script(name)
        .arg("down")
        .output()
        .context("running lab.sh down")?;
    if !out.status.success() {
        bail!("lab.sh down (LAB={name}) failed: {}", describe(&out));
    }
    Ok(())
}

/// Exit status, stderr and stdout of a finished command, for error messages.
fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    format!(
        "{}\n--- stderr:\n{}\n--- stdout:\n{}",
        out.status,
        stderr.trim_end(),
        stdout.trim_end()
    )
}

/// `bin` from `PATH`, or from the sbin directories a non-login root `PATH` may lack.
pub fn find_tool(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

fn tool(bin: &str) -> PathBuf {
    find_tool(bin).unwrap_or_else(|| PathBuf::from(bin))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 1234
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 1000 3 7 998 5 0 2 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";

    const SNMP6: &str = "\
Ip6InReceives                   	12
Udp6InDatagrams                 	42
Udp6NoPorts                     	1
Udp6InErrors                    	2
Udp6OutDatagrams                	40
Udp6RcvbufErrors                	0
Udp6SndbufErrors                	0
Udp6InCsumErrors                	1
UdpLite6InDatagrams             	99
";

    #[test]
    fn parses_snmp_udp_line_pair() {
        let c = parse_snmp_udp(SNMP).unwrap();
        assert_eq!(
            c,
            UdpFamilyCounters {
                in_datagrams: 1000,
                no_ports: 3,
                in_errors: 7,
                out_datagrams: 998,
                rcvbuf_errors: 5,
                in_csum_errors: 2,
            }
        );
    }

    #[test]
    fn snmp_without_udp_lines_is_none() {
        assert_eq!(parse_snmp_udp("Ip: A B\nIp: 1 2\n"), None);
        assert_eq!(parse_snmp_udp("Udp: InDatagrams NoPorts\nUdp: 1\n"), None);
    }

    #[test]
    fn parses_snmp6_udp_lines_and_ignores_udplite() {
        let c = parse_snmp6_udp(SNMP6).unwrap();
        assert_eq!(c.in_datagrams, 42);
        assert_eq!(c.no_ports, 1);
        assert_eq!(c.in_errors, 2);
        assert_eq!(c.out_datagrams, 40);
        assert_eq!(c.in_csum_errors, 1);
        assert_eq!(parse_snmp6_udp("Ip6InReceives 1\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_a_tricky_comm() {
        let stat = "4119 (turn server) (x)) S 1 4119 4119 0 -1 4194560 1072 0 0 0 \
                    250 75 0 0 20 0 5 0 12345 123456789 2048 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((250, 75)));
        assert_eq!(parse_stat_cpu_ticks("12 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_has_cpu_time() {
        let secs = process_cpu_secs(std::process::id()).unwrap();
        assert!(secs >= 0.0);
    }

    #[test]
    fn namespace_names_follow_the_script() {
        // Built by hand: Lab::up would need root.
        let lab = Lab {
            name: "tbq".into(),
            owned: false,
            server: TurnServer::Coturn,
        };
        assert_eq!(lab.ns(Host::Cli), "tbq-cli");
        assert_eq!(lab.ns(Host::Srv), "tbq-srv");
        assert_eq!(lab.ns(Host::Peer), "tbq-peer");
        assert_eq!(lab.state_dir(), Path::new("/run/turn-bpf-lab/tbq"));
        assert_eq!(TURN_SERVER_V4.to_string(), "192.0.2.1:3478");
        assert_eq!(TURN_SERVER_V6.to_string(), "[2001:db8:1::1]:3478");
    }
}
