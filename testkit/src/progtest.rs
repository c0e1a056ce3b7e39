//! Running real packets through the real loaded programs (BPF_PROG_TEST_RUN), for the packet
//! tests and the micro-benchmark.
//!
//! [`FibNet`] is a network namespace whose routes and permanent neighbour entries let the XDP
//! program's `bpf_fib_lookup` succeed for both families: `turn0` (192.0.2.1/24 and
//! 2001:db8:1::1/64, clients behind it) and `relay0` (198.51.100.1/24 and 2001:db8:2::1/64, peers
//! behind it), each a veth whose other end stays in the same namespace, and `other0`, an
//! interface the agent is not on. [`Programs`] is the skeleton loaded with a given configuration,
//! its maps filled the way the loader fills them. Frames are built with `etherparse` ([`udp4`],
//! [`udp6`]) or, where a test needs every header field under control, with [`Udp4Frame`] (IP
//! ID/TOS/flags/options, broken lengths, VLAN tags, trailers, a chosen UDP checksum) and
//! [`Udp6Frame`] (traffic class, flow label, hop limit, extension headers, broken lengths, a
//! chosen UDP checksum), whose checksums are computed here from scratch.
//!
//! Bindings are installed directly with [`Programs::install_channel`] (any family pair) or
//! learned through the real programs: [`Programs::client_sends`] runs a client's STUN message
//! through XDP on `turn0`, [`Programs::server_sends`] the server's answer through TC egress; both
//! insist that the packet leaves unmodified. [`hex_diff`] and [`expect_delta`] explain a failed
//! packet row; [`verify_udp4`]/[`verify_udp6`] check an output's checksums independently.

use std::fs::File;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, ProgramInput, ProgramMut};

use turn_bpf::maps::{self, bytes_of, from_bytes};
use turn_bpf::skel::types;
use turn_bpf::skel::{Rules, Settings, TurnSkel, TurnSkelBuilder};
use turn_bpf::stats::Counters;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC as the u32 BPF_PROG_TEST_RUN returns.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Largest frame BPF_PROG_TEST_RUN gives an XDP program as one linear buffer (a page less
/// XDP headroom and skb_shared_info). Above it the kernel (6.18) builds a multi-buffer frame
/// even for a program without `xdp.frags`, which the kernel never does outside test runs (such
/// programs only ever see linear frames), so tests keep their frames within this size.
pub const XDP_MAX_LINEAR_FRAME: usize = 4096 - 256 - 320;

/// MAC addresses of the test hosts (what the FIB lookup must resolve to).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
pub const TURN0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const RELAY0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// A client address with no neighbour entry (FIB answers NO_NEIGH).
pub const CLIENT_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
pub const RELAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// A peer reachable only through `other0`, an interface the agent is not attached to.
pub const PEER_UNMANAGED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// A peer on the client side (behind `turn0`, like a second client): relaying to it leaves
/// through the interface the packet came in on (XDP_TX).
pub const PEER_ON_TURN0: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
pub const PEER_ON_TURN0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
/// A peer address behind relay0 with no neighbour entry (FIB answers NO_NEIGH).
pub const PEER_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
pub const TURN_PORT: u16 = 3478;
/// The TURN server's listening endpoint.
pub const SERVER_EP: SocketAddrV4 = SocketAddrV4::new(SERVER, TURN_PORT);
/// MTU of turn0 (the veth default), both families.
pub const TURN0_MTU: u16 = 1500;
/// The IPv4 path MTU through relay0 (small, so MTU rows need no jumbo frames). It is the locked
/// MTU of the IPv4 route to 198.51.100.0/24, which `bpf_fib_lookup` honours like a device MTU:
/// the device itself has [`RELAY0_MTU6`], because Linux refuses IPv6 on a device with an MTU
/// below 1280.
pub const RELAY0_MTU: u16 = 1200;
/// MTU of the relay0 device, and so its IPv6 path MTU: 1280, the IPv6 minimum.
pub const RELAY0_MTU6: u16 = 1280;

// IPv6 addresses of the same hosts (dual stack: the same MACs).
/// The TURN server's IPv6 listening address (on turn0).
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The IPv6 client (neighbour at [`CLIENT_MAC`] on turn0).
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// An IPv6 client address with no neighbour entry (FIB answers NO_NEIGH).
pub const CLIENT6_NO_NEIGH: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x77);
/// The IPv6 relayed address (on relay0).
pub const RELAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The IPv6 peer (neighbour at [`PEER_MAC`] on relay0).
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// An IPv6 peer address behind relay0 with no neighbour entry (FIB answers NO_NEIGH).
pub const PEER6_NO_NEIGH: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x77);
/// An IPv6 peer on the client side (the host of [`PEER_ON_TURN0`], same MAC): relaying to it
/// leaves through the interface the packet came in on (XDP_TX).
pub const PEER6_ON_TURN0: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
/// An IPv6 peer reachable only through `other0` (the host of [`PEER_UNMANAGED`]).
pub const PEER6_UNMANAGED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);
/// The TURN server's IPv6 listening endpoint (the server endpoint of every IPv6 client).
pub const SERVER6_EP: SocketAddrV6 = SocketAddrV6::new(SERVER6, TURN_PORT, 0, 0);
/// MAC of the host behind other0.
pub const UNMANAGED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
/// MAC of other0.
pub const OTHER0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

/// The server endpoint a client of `client`'s family talks to: [`SERVER_EP`] for IPv4 clients,
/// [`SERVER6_EP`] for IPv6 clients.
pub fn server_for(client: SocketAddr) -> SocketAddr {
    match client {
        SocketAddr::V4(_) => SERVER_EP.into(),
        SocketAddr::V6(_) => SERVER6_EP.into(),
    }
}

/// A namespace entered by the current thread; the previous one is restored on drop.
pub struct NsGuard {
    previous: File,
}

impl NsGuard {
    pub fn enter(ns: &str) -> Result<NsGuard> {
        let previous = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening netns {ns}"))?;
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {ns}"))?;
        Ok(NsGuard { previous })
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.previous.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Run `sysctl -qw SETTING` inside network namespace `ns`.
fn sysctl_in(ns: &str, setting: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", setting])
        .output()
        .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl {setting} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The routing fixture: one namespace, deleted on drop.
///
/// | device | IPv4 | IPv6 | MTU | neighbours (permanent) |
/// |---|---|---|---|---|
/// | turn0 | 192.0.2.1/24 | 2001:db8:1::1/64 | 1500 | client .2 / ::2, peer on turn0 .3 / ::3 |
/// | relay0 | 198.51.100.1/24 (route MTU 1200, locked) | 2001:db8:2::1/64 | 1280 | peer .2 / ::2 |
/// | other0 | 203.0.113.1/24 | 2001:db8:3::1/64 | 1500 | unmanaged peer .2 / ::2 |
///
/// IPv6 addresses are `nodad`; forwarding is on for both families on every device (and
/// `net.ipv6.conf.all.forwarding=1`). `.77` / `::77` on turn0 and relay0 have no neighbour entry.
pub struct FibNet {
    pub ns: String,
    pub turn0: u32,
    pub relay0: u32,
    pub other0: u32,
}

impl FibNet {
    pub fn new(ns: &str) -> Result<FibNet> {
        let _ = ip(&["netns", "del", ns]);
        ip(&["netns", "add", ns])?;
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let setup = || -> Result<()> {
            let n = ns;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            for (dev, peer, m) in [
                ("turn0", "c0", TURN0_MAC),
                ("relay0", "p0", RELAY0_MAC),
                ("other0", "o0", OTHER0_MAC),
            ] {
                ip(&[
                    "-n", n, "link", "add", dev, "type", "veth", "peer", "name", peer,
                ])?;
                ip(&["-n", n, "link", "set", dev, "address", &mac(m)])?;
                ip(&["-n", n, "link", "set", dev, "up"])?;
                ip(&["-n", n, "link", "set", peer, "up"])?;
            }
            // IPv6 needs a device MTU of at least 1280 (the kernel refuses IPv6 addresses
            // below it); the IPv4 path keeps its 1200 through a locked route MTU, which
            // bpf_fib_lookup checks the same way.
            ip(&[
                "-n",
                n,
                "link",
                "set",
                "relay0",
                "mtu",
                &RELAY0_MTU6.to_string(),
            ])?;
            ip(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "turn0"])?;
            ip(&["-n", n, "addr", "add", "198.51.100.1/24", "dev", "relay0"])?;
            ip(&["-n", n, "addr", "add", "203.0.113.1/24", "dev", "other0"])?;
            ip(&[
                "-n",
                n,
                "route",
                "replace",
                "198.51.100.0/24",
                "dev",
                "relay0",
                "proto",
                "kernel",
                "scope",
                "link",
                "src",
                "198.51.100.1",
                "mtu",
                "lock",
                &RELAY0_MTU.to_string(),
            ])?;
            for (addr, dev) in [
                ("2001:db8:1::1/64", "turn0"),
                ("2001:db8:2::1/64", "relay0"),
                ("2001:db8:3::1/64", "other0"),
            ] {
                ip(&["-n", n, "addr", "add", addr, "dev", dev, "nodad"])?;
            }
            let neighbours: [(IpAddr, [u8; 6], &str); 8] = [
                (CLIENT.into(), CLIENT_MAC, "turn0"),
                (PEER.into(), PEER_MAC, "relay0"),
                (PEER_UNMANAGED.into(), UNMANAGED_MAC, "other0"),
                (PEER_ON_TURN0.into(), PEER_ON_TURN0_MAC, "turn0"),
                (CLIENT6.into(), CLIENT_MAC, "turn0"),
                (PEER6.into(), PEER_MAC, "relay0"),
                (PEER6_UNMANAGED.into(), UNMANAGED_MAC, "other0"),
                (PEER6_ON_TURN0.into(), PEER_ON_TURN0_MAC, "turn0"),
            ];
            for (addr, m, dev) in neighbours {
                ip(&[
                    "-n",
                    n,
                    "neigh",
                    "replace",
                    &addr.to_string(),
                    "lladdr",
                    &mac(m),
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
            sysctl_in(n, "net.ipv6.conf.all.forwarding=1")?;
            for dev in ["turn0", "relay0", "other0"] {
                sysctl_in(n, &format!("net.ipv4.conf.{dev}.forwarding=1"))?;
                sysctl_in(n, &format!("net.ipv6.conf.{dev}.forwarding=1"))?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = ip(&["netns", "del", ns]);
            return Err(e);
        }
        let _guard = NsGuard::enter(ns)?;
        let idx = |n: &str| turn_bpf::attach::ifindex(n);
        Ok(FibNet {
            ns: ns.to_string(),
            turn0: idx("turn0")?,
            relay0: idx("relay0")?,
            other0: idx("other0")?,
        })
    }

    /// Enter the namespace on this thread (needed around every test run that does a FIB lookup).
    pub fn enter(&self) -> Result<NsGuard> {
        NsGuard::enter(&self.ns)
    }

    /// Switch IPv4 forwarding on `dev` on or off.
    pub fn set_forwarding(&self, dev: &str, on: bool) -> Result<()> {
        sysctl_in(
            &self.ns,
            &format!("net.ipv4.conf.{dev}.forwarding={}", u8::from(on)),
        )
    }

    /// Switch IPv6 forwarding on `dev` on or off (`net.ipv6.conf.all.forwarding` stays 1).
    pub fn set_forwarding6(&self, dev: &str, on: bool) -> Result<()> {
        sysctl_in(
            &self.ns,
            &format!("net.ipv6.conf.{dev}.forwarding={}", u8::from(on)),
        )
    }
}

impl Drop for FibNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// `max_entries` overrides for the state maps, applied between open and load (`None`: the
/// size compiled into the object).
#[derive(Debug, Clone, Default)]
pub struct MapLimits {
    pub allocs: Option<u32>,
    /// Both channel maps (`chans` and `peers`).
    pub chans: Option<u32>,
    pub perms: Option<u32>,
    pub pending: Option<u32>,
}

/// The load-time configuration (the command line's counterpart).
#[derive(Debug, Clone)]
pub struct Config {
    pub turn_ports: Vec<u16>,
    pub spill_every: u32,
    pub channel_lifetime_s: u64,
    pub permission_lifetime_s: u64,
    pub limits: MapLimits,
    /// The pending lifetime, which is also how far a blind spot reaches (short here, so that a
    /// table can show learning going on after one: see [`PAST_BLIND`]).
    pub pending_lifetime_ms: u64,
    /// Let tc_snoop trust the dummy socket BPF_PROG_TEST_RUN gives every packet
    /// (`cfg_trust_test_run`), as if it were one of the server's sockets. With false, only the
    /// cookies put in `server_socks` are trusted, and a test run's socket is never among them
    /// (a new socket with a new cookie every run).
    pub trust_test_run: bool,
    /// The server's rules (coturn's by default).
    pub rules: Rules,
    /// Per-binding counters (`--binding-counters`; off by default, as in the agent).
    pub binding_counters: bool,
}

/// How long a table waits after a blind spot before it shows that learning goes on.
pub const PAST_BLIND: Duration = Duration::from_millis(PENDING_LIFETIME_MS + 50);
const PENDING_LIFETIME_MS: u64 = 100;

impl Default for Config {
    fn default() -> Self {
        Config {
            turn_ports: vec![TURN_PORT],
            spill_every: 0,
            channel_lifetime_s: 600,
            permission_lifetime_s: 300,
            trust_test_run: true,
            limits: MapLimits::default(),
            pending_lifetime_ms: PENDING_LIFETIME_MS,
            rules: Rules::of(&turn_bpf::server_conf::profile::COTURN),
            binding_counters: false,
        }
    }
}

/// Entries in each state map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapCounts {
    pub allocs: usize,
    pub chans: usize,
    pub peers: usize,
    pub perms: usize,
    pub pending: usize,
}

impl MapCounts {
    /// The maps only the server's responses may fill (everything but `pending`).
    pub fn committed(&self) -> (usize, usize, usize, usize) {
        (self.allocs, self.chans, self.peers, self.perms)
    }
}

impl std::fmt::Display for MapCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "allocs {} chans {} peers {} perms {} pending {}",
            self.allocs, self.chans, self.peers, self.perms, self.pending
        )
    }
}

/// Absolute deadlines (CLOCK_MONOTONIC ns) for [`Programs::install_channel_until`].
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub alloc_ns: u64,
    pub perm_ns: u64,
    pub chan_ns: u64,
}

impl Deadlines {
    /// All three `ttl_s` seconds from now.
    pub fn in_secs(ttl_s: u64) -> Deadlines {
        let t = maps::now_ns() + ttl_s * 1_000_000_000;
        Deadlines {
            alloc_ns: t,
            perm_ns: t,
            chan_ns: t,
        }
    }

    /// A deadline `s` seconds ago (already expired).
    pub fn ago(s: u64) -> u64 {
        maps::now_ns().saturating_sub(s * 1_000_000_000)
    }
}

/// What one test run gave back.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub verdict: u32,
    pub out: Vec<u8>,
}

/// The loaded programs and their maps.
/// Ids of installed bindings (`tb_chan.id`): unique, and far from the programs' own sequence.
static INSTALLED_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);

pub struct Programs {
    pub skel: TurnSkel<'static>,
}

impl Programs {
    /// Load with `cfg`; `local` addresses go into `local_addrs`, `tx_ifindexes` into `tx_ports`.
    pub fn load(cfg: &Config, local: &[IpAddr], tx_ifindexes: &[u32]) -> Result<Programs> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = TurnSkelBuilder::default()
            .open(storage)
            .context("opening the BPF object")?;
        {
            let ro = open.maps.rodata_data.as_deref_mut().context("no .rodata")?;
            Settings {
                turn_ports: cfg.turn_ports.clone(),
                spill_every: cfg.spill_every,
                channel_lifetime_s: cfg.channel_lifetime_s,
                permission_lifetime_s: cfg.permission_lifetime_s,
                pending_lifetime_ms: cfg.pending_lifetime_ms,
                rules: cfg.rules,
                binding_counters: cfg.binding_counters,
            }
            .apply(ro);
            ro.cfg_trust_test_run = u32::from(cfg.trust_test_run);
        }
        {
            let l = &cfg.limits;
            let m = &mut open.maps;
            for (map, n) in [
                (&mut m.allocs, l.allocs),
                (&mut m.chans, l.chans),
                (&mut m.peers, l.chans),
                (&mut m.perms, l.perms),
                (&mut m.pending, l.pending),
            ] {
                if let Some(n) = n {
                    map.set_max_entries(n)
                        .with_context(|| format!("resizing a state map to {n}"))?;
                }
            }
        }
        // An agent that is always alive (the fast path's agent_alive check), unless a test
        // says otherwise with `set_alive_ns`.
        open.maps
            .data_pinned_data
            .as_deref_mut()
            .context("no .data.pinned")?
            .tb_alive_ns = u64::MAX - turn_bpf::consts::TB_AGENT_STALE_NS;
        let skel = open.load().context("loading the BPF programs")?;
        let addrs = local.iter().copied().collect();
        maps::sync_local_addrs(&skel.maps.local_addrs, &addrs)?;
        for i in tx_ifindexes {
            maps::add_tx_port(&skel.maps.tx_ports, *i)?;
        }
        Ok(Programs { skel })
    }

    /// Set the agent's alive stamp (`tb_alive_ns`, CLOCK_MONOTONIC ns): the fast path relays only
    /// while it is at most `TB_AGENT_STALE_NS` old.
    pub fn set_alive_ns(&self, ns: u64) -> Result<()> {
        let g = turn_bpf::pin::Globals::of(&self.skel.maps.data_pinned)?;
        g.clear_alive();
        g.stamp_alive(ns);
        Ok(())
    }

    /// The usual fixture: default config, the server and relay addresses local, turn0 and relay0
    /// managed.
    pub fn load_for(net: &FibNet, cfg: &Config) -> Result<Programs> {
        Programs::load(
            cfg,
            &[SERVER.into(), RELAY.into()],
            &[net.turn0, net.relay0],
        )
    }

    /// [`Programs::load_for`] with the IPv6 server and relay addresses local too.
    pub fn load_for_families(net: &FibNet, cfg: &Config) -> Result<Programs> {
        Programs::load(
            cfg,
            &[SERVER.into(), RELAY.into(), SERVER6.into(), RELAY6.into()],
            &[net.turn0, net.relay0],
        )
    }

    /// Run `frame` through the XDP program as if received on `ifindex`.
    pub fn xdp(&self, frame: &[u8], ifindex: u32) -> Result<RunResult> {
        let (r, _) = self.xdp_repeat(frame, ifindex, 1)?;
        Ok(r)
    }

    /// Run `frame` `repeat` times; also returns the kernel's average time per run.
    pub fn xdp_repeat(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(RunResult, Duration)> {
        xdp_test_run(&self.skel.progs.xdp_turn, frame, ifindex, repeat)
    }

    /// Run `frame` through the TC egress program (as a locally sent packet).
    pub fn tc(&self, frame: &[u8]) -> Result<RunResult> {
        self.tc_from(frame, 0)
    }

    /// Run `frame` through the TC egress program as a packet that came in on `ingress_ifindex`
    /// (0: sent by this host), i.e. one the host forwards.
    pub fn tc_from(&self, frame: &[u8], ingress_ifindex: u32) -> Result<RunResult> {
        let mut out = vec![0u8; frame.len() + 256];
        // The kernel accepts a __sk_buff context with only a few fields set (ingress_ifindex is
        // one of them); everything else must be zero. `__sk_buff` holds a union with a pointer,
        // so it has no Default: build it as zeroed bytes.
        let mut ctx = vec![0u8; std::mem::size_of::<types::__sk_buff>()];
        let off = std::mem::offset_of!(types::__sk_buff, ingress_ifindex);
        ctx[off..off + 4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut input = ProgramInput::default();
        if ingress_ifindex != 0 {
            input.context_in = Some(&mut ctx);
        }
        input.data_in = Some(frame);
        input.data_out = Some(&mut out);
        let o = self
            .skel
            .progs
            .tc_snoop
            .test_run(input)
            .context("BPF_PROG_TEST_RUN (tc)")?;
        let data = o.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok(RunResult {
            verdict: o.return_value,
            out: data,
        })
    }

    /// A client's message to the server: `payload` from `client` to its server endpoint
    /// ([`server_for`]) through XDP on turn0. Fails unless it is passed unmodified.
    pub fn client_sends(
        &self,
        net: &FibNet,
        client: impl Into<SocketAddr>,
        payload: &[u8],
    ) -> Result<RunResult> {
        let frame = to_server(client, payload);
        let r = self.xdp(&frame, net.turn0)?;
        ensure!(
            r.verdict == XDP_PASS,
            "client message not passed (verdict {})",
            r.verdict
        );
        ensure!(
            r.out == frame,
            "client message modified:\n{}",
            hex_diff(&frame, &r.out)
        );
        Ok(r)
    }

    /// The server's message to a client: `payload` from the client's server endpoint
    /// ([`server_for`]) to `client` through TC egress. Fails unless it leaves unmodified with
    /// TC_ACT_UNSPEC.
    pub fn server_sends(&self, client: impl Into<SocketAddr>, payload: &[u8]) -> Result<RunResult> {
        let frame = from_server(client, payload);
        let r = self.tc(&frame)?;
        ensure!(
            r.verdict == TC_ACT_UNSPEC,
            "server message: TC verdict {:#x}",
            r.verdict
        );
        ensure!(
            r.out == frame,
            "server message modified:\n{}",
            hex_diff(&frame, &r.out)
        );
        Ok(r)
    }

    /// A request from `client` and the server's answer to it, both through the real programs.
    pub fn exchange(
        &self,
        net: &FibNet,
        client: impl Into<SocketAddr>,
        request: &[u8],
        response: &[u8],
    ) -> Result<()> {
        let client = client.into();
        self.client_sends(net, client, request)?;
        self.server_sends(client, response)?;
        Ok(())
    }

    /// Learn an allocation for `client` with relayed address `relay` through a real signed
    /// Allocate request and its success response.
    pub fn learn_allocation(
        &self,
        net: &FibNet,
        client: impl Into<SocketAddr>,
        relay: impl Into<SocketAddr>,
        lifetime: u32,
    ) -> Result<()> {
        use crate::turn_client::{build_message, build_request, Attr, Class, ALLOCATE};
        let (client, relay) = (client.into(), relay.into());
        let auth = test_auth();
        let txid = crate::turn_client::new_txid();
        let req = build_request(
            ALLOCATE,
            txid,
            &[Attr::RequestedTransport(17), Attr::Lifetime(lifetime)],
            Some(&auth),
        );
        let resp = build_message(
            Class::Success,
            ALLOCATE,
            txid,
            &[
                Attr::XorRelayedAddress(relay),
                Attr::Lifetime(lifetime),
                Attr::XorMappedAddress(client),
            ],
            Some(&auth),
        );
        self.exchange(net, client, &req, &resp)
    }

    /// Learn channel `chan` to `peer` on `client`'s allocation through a real signed
    /// ChannelBind request and its success response.
    pub fn learn_channel(
        &self,
        net: &FibNet,
        client: impl Into<SocketAddr>,
        peer: impl Into<SocketAddr>,
        chan: u16,
    ) -> Result<()> {
        use crate::turn_client::{build_message, build_request, Attr, Class, CHANNEL_BIND};
        let auth = test_auth();
        let txid = crate::turn_client::new_txid();
        let req = build_request(
            CHANNEL_BIND,
            txid,
            &[Attr::ChannelNumber(chan), Attr::XorPeerAddress(peer.into())],
            Some(&auth),
        );
        let resp = build_message(Class::Success, CHANNEL_BIND, txid, &[], Some(&auth));
        self.exchange(net, client, &req, &resp)
    }

    pub fn counters(&self) -> Counters {
        Counters::read(&self.skel.maps.stats).expect("counters are readable")
    }

    /// Entries in a map (by iterating its keys).
    pub fn count(map: &impl MapCore) -> usize {
        map.keys().count()
    }

    /// The client-side channel entry for (client, server, channel), if committed.
    pub fn channel(
        &self,
        client: impl Into<SocketAddr>,
        server: impl Into<SocketAddr>,
        chan: u16,
    ) -> Option<types::tb_chan> {
        let k = types::tb_chan_key {
            client: maps::ep(client.into()),
            server: maps::ep(server.into()),
            chan: chan.to_be(),
            pad: [0; 2],
        };
        self.skel
            .maps
            .chans
            .lookup(bytes_of(&k), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| from_bytes(&v))
    }

    pub fn allocation(
        &self,
        client: impl Into<SocketAddr>,
        server: impl Into<SocketAddr>,
    ) -> Option<types::tb_alloc> {
        let k = types::tb_alloc_key {
            client: maps::ep(client.into()),
            server: maps::ep(server.into()),
        };
        self.skel
            .maps
            .allocs
            .lookup(bytes_of(&k), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| from_bytes::<types::tb_alloc>(&v))
            .filter(|a| a.expires_ns > maps::now_ns())
    }

    /// The peer-side channel entry for (peer, relay), if committed.
    pub fn peer_channel(
        &self,
        peer: impl Into<SocketAddr>,
        relay: impl Into<SocketAddr>,
    ) -> Option<types::tb_chan> {
        let k = types::tb_peer_key {
            peer: maps::ep(peer.into()),
            relay: maps::ep(relay.into()),
        };
        self.skel
            .maps
            .peers
            .lookup(bytes_of(&k), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| from_bytes(&v))
    }

    /// The permission of `relay`'s allocation for `peer`'s address, if committed.
    pub fn permission(
        &self,
        relay: impl Into<SocketAddr>,
        peer: impl Into<IpAddr>,
    ) -> Option<types::tb_perm> {
        let k = types::tb_perm_key {
            relay: maps::ep(relay.into()),
            peer: maps::ep_ip(peer.into()),
        };
        self.skel
            .maps
            .perms
            .lookup(bytes_of(&k), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| from_bytes(&v))
    }

    /// The programs' `tb_shortened_ns`: when something last voided every channel's validity
    /// cache.
    pub fn shortened_ns(&self) -> Result<u64> {
        let v = self
            .skel
            .maps
            .data_pinned
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("reading .data.pinned")?
            .context("no .data.pinned value")?;
        let at = std::mem::offset_of!(types::data_pinned, tb_shortened_ns);
        Ok(u64::from_ne_bytes(
            v[at..at + 8].try_into().expect("8 bytes"),
        ))
    }

    /// Whether `port` is marked in `relay_ports`.
    pub fn relay_port_marked(&self, port: u16) -> bool {
        self.skel
            .maps
            .relay_ports
            .lookup(&u32::from(port).to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .is_some_and(|v| v != [0; 4])
    }

    /// Entries in every state map.
    pub fn map_counts(&self) -> MapCounts {
        let m = &self.skel.maps;
        MapCounts {
            allocs: Self::live_allocs(&m.allocs),
            chans: Self::count(&m.chans),
            peers: Self::count(&m.peers),
            perms: Self::count(&m.perms),
            pending: Self::count(&m.pending),
        }
    }

    /// Remove recorded requests first seen more than `age` ago, as the loader's sweep does for
    /// those past any answer. Returns how many went.
    pub fn remove_pending_older_than(&self, age: Duration) -> usize {
        let map = &self.skel.maps.pending;
        let cutoff = maps::now_ns().saturating_sub(age.as_nanos() as u64);
        let keys: Vec<Vec<u8>> = map.keys().collect();
        keys.iter()
            .filter(|k| {
                map.lookup(k, MapFlags::ANY)
                    .ok()
                    .flatten()
                    .is_some_and(|v| from_bytes::<types::tb_pending>(&v).created_ns < cutoff)
            })
            .filter(|k| map.delete(k).is_ok())
            .count()
    }

    /// Allocations live here (an ended one stays in the map for a while, dead: see tb_alloc).
    fn live_allocs(map: &impl MapCore) -> usize {
        let now = maps::now_ns();
        map.keys()
            .filter_map(|k| map.lookup(&k, MapFlags::ANY).ok().flatten())
            .filter(|v| from_bytes::<types::tb_alloc>(v).expires_ns > now)
            .count()
    }

    /// Map `public` (an --external-ip address) to the local `private` one.
    pub fn map_external_ip(&self, public: Ipv4Addr, private: Ipv4Addr) -> Result<()> {
        maps::set_external_ips(
            &self.skel.maps.external_ips,
            &[(public.into(), private.into())],
        )
    }

    /// Commit state directly (bypassing the snooper): an allocation and one channel with its
    /// permission, all expiring `ttl_s` seconds from now. Any family pair: the server endpoint is
    /// [`server_for`] the client; `relay` and `peer` must be of one family (the server relays a
    /// peer from the relayed address of its family).
    pub fn install_channel(
        &self,
        client: impl Into<SocketAddr>,
        relay: impl Into<SocketAddr>,
        peer: impl Into<SocketAddr>,
        chan: u16,
        ttl_s: u64,
    ) -> Result<()> {
        self.install_channel_until(client, relay, peer, chan, Deadlines::in_secs(ttl_s))
    }

    /// [`Programs::install_channel`] with each deadline given (e.g. one already past, see
    /// [`Deadlines::ago`]).
    pub fn install_channel_until(
        &self,
        client: impl Into<SocketAddr>,
        relay: impl Into<SocketAddr>,
        peer: impl Into<SocketAddr>,
        chan: u16,
        d: Deadlines,
    ) -> Result<()> {
        let (client, relay, peer) = (client.into(), relay.into(), peer.into());
        ensure!(
            relay.is_ipv4() == peer.is_ipv4(),
            "relay {relay} and peer {peer} of different families"
        );
        let server = server_for(client);
        let id = 1000 + u64::from(chan);
        let ak = types::tb_alloc_key {
            client: maps::ep(client),
            server: maps::ep(server),
        };
        let mut a = types::tb_alloc {
            id,
            expires_ns: d.alloc_ns,
            ..Default::default()
        };
        a.relay[0] = maps::ep(relay);
        self.skel
            .maps
            .allocs
            .update(bytes_of(&ak), bytes_of(&a), MapFlags::ANY)?;
        let c = types::tb_chan {
            client: ak.client,
            server: ak.server,
            relay: a.relay[0],
            peer: maps::ep(peer),
            chan: chan.to_be(),
            alloc_id: id,
            chan_expires_ns: d.chan_ns,
            id: INSTALLED_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        };
        let ck = types::tb_chan_key {
            client: c.client,
            server: c.server,
            chan: c.chan,
            pad: [0; 2],
        };
        let pk = types::tb_peer_key {
            peer: c.peer,
            relay: c.relay,
        };
        self.skel
            .maps
            .chans
            .update(bytes_of(&ck), bytes_of(&c), MapFlags::ANY)?;
        self.skel
            .maps
            .peers
            .update(bytes_of(&pk), bytes_of(&c), MapFlags::ANY)?;
        let mut permk = types::tb_perm_key {
            relay: c.relay,
            peer: c.peer,
        };
        permk.peer.port = 0;
        // epoch 0, as the channel's perm_epoch: the binding is under this permission
        let perm = types::tb_perm {
            alloc_id: id,
            expires_ns: d.perm_ns,
            epoch: 0,
        };
        self.skel
            .maps
            .perms
            .update(bytes_of(&permk), bytes_of(&perm), MapFlags::ANY)?;
        let port = u32::from(relay.port());
        self.skel.maps.relay_ports.update(
            &port.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            MapFlags::ANY,
        )?;
        Ok(())
    }
}

impl Programs {
    /// ChannelData `data` on `chan` from `client` (on turn0) must be relayed as relay -> peer,
    /// byte for byte (TTL 64 -> 63), with RELAYED_TO_PEER counted and nothing else.
    pub fn expect_chan4_to_udp4(
        &self,
        net: &FibNet,
        client: SocketAddrV4,
        chan: u16,
        relay: SocketAddrV4,
        peer: SocketAddrV4,
        data: &[u8],
    ) -> Result<()> {
        let inp = Udp4Frame::new(
            CLIENT_MAC,
            TURN0_MAC,
            client,
            SERVER_EP,
            &channel_data(chan, data, 0, 0),
        );
        let (peer_mac, egress_mac, verdict) = if *peer.ip() == PEER_ON_TURN0 {
            (PEER_ON_TURN0_MAC, TURN0_MAC, XDP_REDIRECT) // into turn0 itself (fwd.h)
        } else {
            (PEER_MAC, RELAY0_MAC, XDP_REDIRECT)
        };
        let mut out = Udp4Frame::new(egress_mac, peer_mac, relay, peer, data);
        out.ttl = inp.ttl - 1;
        self.expect_relay(
            &inp.build(),
            net.turn0,
            verdict,
            &out.build(),
            "RELAYED_TO_PEER",
        )
    }

    /// A datagram `data` from `peer` (behind relay0) to `relay` must reach `client` as
    /// unpadded ChannelData on `chan`, byte for byte, with RELAYED_TO_CLIENT counted and nothing else.
    pub fn expect_udp4_to_chan4(
        &self,
        net: &FibNet,
        peer: SocketAddrV4,
        relay: SocketAddrV4,
        client: SocketAddrV4,
        chan: u16,
        data: &[u8],
    ) -> Result<()> {
        let inp = Udp4Frame::new(PEER_MAC, RELAY0_MAC, peer, relay, data);
        let mut out = Udp4Frame::new(
            TURN0_MAC,
            CLIENT_MAC,
            SERVER_EP,
            client,
            &channel_data(chan, data, 0, 0),
        );
        out.ttl = inp.ttl - 1;
        self.expect_relay(
            &inp.build(),
            net.relay0,
            XDP_REDIRECT,
            &out.build(),
            "RELAYED_TO_CLIENT",
        )
    }

    fn expect_relay(
        &self,
        input: &[u8],
        ifindex: u32,
        verdict: u32,
        want: &[u8],
        counter: &str,
    ) -> Result<()> {
        let c0 = self.counters();
        let r = self.xdp(input, ifindex)?;
        let d = self.counters().since(&c0);
        ensure!(
            r.verdict == verdict,
            "verdict {} want {verdict}; counters:\n{}",
            r.verdict,
            d.render()
        );
        ensure!(
            r.out == want,
            "relayed bytes differ:\n{}",
            hex_diff(want, &r.out)
        );
        verify_udp4(&r.out).context("independent checksum check")?;
        expect_delta(&d, &[(counter, 1)]).map_err(anyhow::Error::msg)
    }

    /// `input` on `ifindex` must be passed unmodified with exactly `counter` counted.
    pub fn expect_pass(&self, input: &[u8], ifindex: u32, counter: &str) -> Result<()> {
        let c0 = self.counters();
        let r = self.xdp(input, ifindex)?;
        let d = self.counters().since(&c0);
        ensure!(
            r.verdict == XDP_PASS,
            "verdict {} want XDP_PASS; counters:\n{}",
            r.verdict,
            d.render()
        );
        ensure!(
            r.out == input,
            "passed bytes modified:\n{}",
            hex_diff(input, &r.out)
        );
        expect_delta(&d, &[(counter, 1)]).map_err(anyhow::Error::msg)
    }
}

/// Long-term credentials for signing test requests and responses (MESSAGE-INTEGRITY).
pub fn test_auth() -> crate::turn_client::Auth {
    crate::turn_client::Auth {
        user: "alice".into(),
        pass: "alice-secret".into(),
        realm: "turn-bpf.test".into(),
        nonce: "0123456789abcdef".into(),
    }
}

/// A client's datagram to the TURN server endpoint of its family (received on turn0; hop
/// limit / TTL 64, correct checksums).
pub fn to_server(client: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    match client.into() {
        SocketAddr::V4(c) => udp4(CLIENT_MAC, TURN0_MAC, c, SERVER_EP, 64, payload),
        SocketAddr::V6(c) => Udp6Frame::new(CLIENT_MAC, TURN0_MAC, c, SERVER6_EP, payload).build(),
    }
}

/// The TURN server's datagram to a client from the server endpoint of its family (sent out of
/// turn0).
pub fn from_server(client: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    match client.into() {
        SocketAddr::V4(c) => udp4(TURN0_MAC, CLIENT_MAC, SERVER_EP, c, 64, payload),
        SocketAddr::V6(c) => Udp6Frame::new(TURN0_MAC, CLIENT_MAC, SERVER6_EP, c, payload).build(),
    }
}

/// BPF_PROG_TEST_RUN of any XDP program as if `frame` arrived on `ifindex`, `repeat` times;
/// returns the last run's verdict and output and the kernel's average time per run.
pub fn xdp_test_run(
    prog: &ProgramMut<'_>,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(RunResult, Duration)> {
    let mut ctx = types::xdp_md {
        data: 0,
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut out = vec![0u8; frame.len() + 256];
    let mut input = ProgramInput::default();
    // SAFETY: xdp_md is plain data; the slice lives as long as `ctx`.
    let ctx_bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut ctx as *mut types::xdp_md).cast::<u8>(),
            std::mem::size_of::<types::xdp_md>(),
        )
    };
    input.context_in = Some(ctx_bytes);
    input.data_in = Some(frame);
    input.data_out = Some(&mut out);
    input.repeat = repeat;
    let o = prog.test_run(input).context("BPF_PROG_TEST_RUN (xdp)")?;
    let data = o.data.map(|d| d.to_vec()).unwrap_or_default();
    Ok((
        RunResult {
            verdict: o.return_value,
            out: data,
        },
        o.duration,
    ))
}

/// An Ethernet/IPv4/UDP frame with a correct UDP checksum.
pub fn udp4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), ttl)
        .udp(src.port(), dst.port());
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .expect("writing to a Vec cannot fail");
    v
}

/// ChannelData: channel, length, data, then `pad` padding bytes of value `pad_byte`.
pub fn channel_data(chan: u16, data: &[u8], pad: usize, pad_byte: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + pad);
    v.extend_from_slice(&chan.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v.extend(std::iter::repeat_n(pad_byte, pad));
    v
}

/// Check a frame's IPv4 header checksum and UDP checksum independently of the BPF code
/// (a UDP checksum of 0 means "none" and is accepted). Returns the UDP payload.
pub fn verify_udp4(frame: &[u8]) -> Result<Vec<u8>> {
    let p = SlicedPacket::from_ethernet(frame).context("parsing the frame")?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        bail!("not IPv4")
    };
    let h = ip.header().to_header();
    ensure!(
        h.calc_header_checksum() == h.header_checksum,
        "bad IPv4 header checksum"
    );
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        bail!("not UDP")
    };
    let uh = udp.to_header();
    ensure!(
        usize::from(uh.length) == 8 + udp.payload().len(),
        "UDP length {} vs payload {}",
        uh.length,
        udp.payload().len()
    );
    if uh.checksum != 0 {
        let want = uh
            .calc_checksum_ipv4(&h, udp.payload())
            .context("computing UDP checksum")?;
        ensure!(
            want == uh.checksum,
            "bad UDP checksum {:#06x}, want {:#06x}",
            uh.checksum,
            want
        );
    }
    Ok(udp.payload().to_vec())
}

/// The UDP checksum field of an IPv4 frame, as written (None if it is not one).
pub fn udp4_check_field(frame: &[u8]) -> Option<u16> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    match p.transport {
        Some(TransportSlice::Udp(u)) => Some(u.checksum()),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Checksums written out here, independent of the BPF code (RFC 1071).

/// One's complement sum of `bytes` as big-endian 16-bit words (odd length: a zero byte
/// appended), folded to 16 bits, not inverted.
pub fn ones_sum(bytes: &[u8]) -> u16 {
    ones_sum_from(0, bytes)
}

fn ones_sum_from(start: u32, bytes: &[u8]) -> u16 {
    let mut acc = u64::from(start);
    for c in bytes.chunks(2) {
        let hi = u64::from(c[0]) << 8;
        let lo = c.get(1).copied().map_or(0, u64::from);
        acc += hi | lo;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo-header and UDP header+payload summed (checksum field as it is in `udp`).
pub fn udp4_sum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    ones_sum_from(u32::from(ones_sum(&pseudo)), udp)
}

/// The UDP checksum for `udp` (its checksum field ignored); 0 is sent as 0xFFFF.
pub fn udp4_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut u = udp.to_vec();
    u[6] = 0;
    u[7] = 0;
    match !udp4_sum(src, dst, &u) {
        0 => 0xffff,
        c => c,
    }
}

/// The IPv4 header checksum of `hdr` (its checksum field ignored).
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut h = hdr.to_vec();
    h[10] = 0;
    h[11] = 0;
    !ones_sum(&h)
}

/// How the UDP checksum field of a [`Udp4Frame`] is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpCheck {
    /// Computed over the frame as built (0 becomes 0xFFFF).
    Correct,
    /// 0: "no checksum".
    Zero,
    /// This value, whatever the contents.
    Raw(u16),
}

/// An Ethernet/IPv4/UDP frame with every header field under the test's control. Checksums are
/// computed here from scratch (see [`udp4_checksum`]), so a frame built to be what a rewrite
/// must produce checks the BPF's incremental arithmetic byte for byte.
#[derive(Debug, Clone)]
pub struct Udp4Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN tags (TPID, TCI), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes; the IHL follows).
    pub options: Vec<u8>,
    pub udp_check: UdpCheck,
    /// Added to the IP total length / UDP length fields after they are computed.
    pub ip_len_delta: i32,
    pub udp_len_delta: i32,
    pub payload: Vec<u8>,
    /// Bytes after the IP packet (an Ethernet trailer), not counted in any length.
    pub trailer: Vec<u8>,
}

impl Udp4Frame {
    /// TTL 64, TOS 0, ID 0x1234, DF set, correct checksums, no tags, options or trailer.
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> Udp4Frame {
        Udp4Frame {
            src_mac,
            dst_mac,
            vlans: Vec::new(),
            src,
            dst,
            tos: 0,
            id: 0x1234,
            df: true,
            mf: false,
            frag_offset: 0,
            ttl: 64,
            options: Vec::new(),
            udp_check: UdpCheck::Correct,
            ip_len_delta: 0,
            udp_len_delta: 0,
            payload: payload.to_vec(),
            trailer: Vec::new(),
        }
    }

    /// The UDP header and payload as built (with the checksum field filled).
    pub fn udp_bytes(&self) -> Vec<u8> {
        let udp_len = (8 + self.payload.len()) as i32 + self.udp_len_delta;
        let mut u = Vec::with_capacity(8 + self.payload.len());
        u.extend_from_slice(&self.src.port().to_be_bytes());
        u.extend_from_slice(&self.dst.port().to_be_bytes());
        u.extend_from_slice(&(udp_len as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(&self.payload);
        let check = match self.udp_check {
            UdpCheck::Correct => udp4_checksum(*self.src.ip(), *self.dst.ip(), &u),
            UdpCheck::Zero => 0,
            UdpCheck::Raw(v) => v,
        };
        u[6..8].copy_from_slice(&check.to_be_bytes());
        u
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(self.options.len() % 4 == 0 && self.options.len() <= 40);
        let mut f = Vec::with_capacity(64 + self.payload.len() + self.trailer.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let udp = self.udp_bytes();
        let ihl = 5 + self.options.len() / 4;
        let tot_len = (ihl * 4 + udp.len()) as i32 + self.ip_len_delta;
        let flags = (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | self.frag_offset;
        let mut ip = vec![0x40 | ihl as u8, self.tos];
        ip.extend_from_slice(&(tot_len as u16).to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&flags.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, 17, 0, 0]);
        ip.extend_from_slice(&self.src.ip().octets());
        ip.extend_from_slice(&self.dst.ip().octets());
        ip.extend_from_slice(&self.options);
        let c = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f.extend_from_slice(&self.trailer);
        f
    }
}

/// Set the two payload bytes at `at` (an even offset in `frame.payload`) so that the frame's
/// UDP checksum computes to 0, which must be sent as 0xFFFF.
pub fn force_udp_sum_zero(frame: &mut Udp4Frame, at: usize) {
    assert!(at % 2 == 0 && at + 2 <= frame.payload.len());
    frame.payload[at] = 0;
    frame.payload[at + 1] = 0;
    let mut u = frame.udp_bytes();
    u[6] = 0;
    u[7] = 0;
    let s = udp4_sum(*frame.src.ip(), *frame.dst.ip(), &u);
    frame.payload[at..at + 2].copy_from_slice(&(!s).to_be_bytes());
    let mut u = frame.udp_bytes();
    u[6] = 0;
    u[7] = 0;
    debug_assert_eq!(udp4_sum(*frame.src.ip(), *frame.dst.ip(), &u), 0xffff);
}

/// One's complement sum `a + b` (16 bits, end-around carry), for building expected checksums.
pub fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

// ------------------------------------------------------------------------------------------
// IPv6, written out here independently of the BPF code (RFC 8200, RFC 768 over IPv6).

/// IPv6 next-header numbers the builders use.
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_UDP: u8 = 17;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_DEST_OPTS: u8 = 60;

/// The IPv6 pseudo-header (source, destination, 32-bit upper-layer length, next header 17) and
/// UDP header+payload summed (checksum field as it is in `udp`). The length is `udp.len()`.
pub fn udp6_sum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, NEXT_UDP]);
    ones_sum_from(u32::from(ones_sum(&pseudo)), udp)
}

/// The UDP-over-IPv6 checksum for `udp` (its checksum field ignored); 0 is sent as 0xFFFF
/// (over IPv6 a 0 in the field is not "none" but invalid).
pub fn udp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut u = udp.to_vec();
    u[6] = 0;
    u[7] = 0;
    match !udp6_sum(src, dst, &u) {
        0 => 0xffff,
        c => c,
    }
}

/// An IPv6 extension header to put between the fixed header and UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options (0): these option bytes, padded with Pad1/PadN to a multiple of 8.
    HopByHop(Vec<u8>),
    /// Destination options (60), padded the same way.
    DestOpts(Vec<u8>),
    /// Routing (43): type, segments left, then type-specific data (padded with zeros).
    Routing {
        typ: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    /// Fragment (44): offset in 8-byte units, the M flag, identification.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ipv6Ext {
    /// Hop-by-hop with a Router Alert option (RFC 2711, MLD), as real routers see it.
    pub fn router_alert() -> Ipv6Ext {
        Ipv6Ext::HopByHop(vec![5, 2, 0, 0])
    }

    /// Destination options holding only padding.
    pub fn dest_opts_padding() -> Ipv6Ext {
        Ipv6Ext::DestOpts(Vec::new())
    }

    /// A type-4 (segment routing) header with no segments left, which a node may process and
    /// skip.
    pub fn routing_done() -> Ipv6Ext {
        Ipv6Ext::Routing {
            typ: 4,
            segments_left: 0,
            data: vec![0; 4],
        }
    }

    /// Its next-header number.
    pub fn number(&self) -> u8 {
        match self {
            Ipv6Ext::HopByHop(_) => NEXT_HOP_BY_HOP,
            Ipv6Ext::DestOpts(_) => NEXT_DEST_OPTS,
            Ipv6Ext::Routing { .. } => NEXT_ROUTING,
            Ipv6Ext::Fragment { .. } => NEXT_FRAGMENT,
        }
    }

    /// Its bytes, with `next` as its next header.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        let padded = |mut v: Vec<u8>, pad_options: bool| {
            // v holds everything after the 2-byte (next, length) prefix
            let need = (8 - (2 + v.len()) % 8) % 8;
            match (need, pad_options) {
                (0, _) => {}
                (1, true) => v.push(0),
                (n, true) => {
                    v.push(1);
                    v.push((n - 2) as u8);
                    v.extend(std::iter::repeat_n(0, n - 2));
                }
                (n, false) => v.extend(std::iter::repeat_n(0, n)),
            }
            let mut h = vec![next, ((2 + v.len()) / 8 - 1) as u8];
            h.extend_from_slice(&v);
            h
        };
        match self {
            Ipv6Ext::HopByHop(o) | Ipv6Ext::DestOpts(o) => padded(o.clone(), true),
            Ipv6Ext::Routing {
                typ,
                segments_left,
                data,
            } => {
                let mut v = vec![*typ, *segments_left];
                v.extend_from_slice(data);
                padded(v, false)
            }
            Ipv6Ext::Fragment { offset, more, id } => {
                let mut h = vec![next, 0];
                h.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h
            }
        }
    }
}

/// An Ethernet/IPv6/UDP frame with every header field under the test's control. The UDP checksum
/// is computed here from scratch (see [`udp6_checksum`]), so a frame built to be what a rewrite
/// must produce checks the BPF's incremental arithmetic byte for byte. ChannelData padding is
/// part of `payload` (see [`channel_data`]).
#[derive(Debug, Clone)]
pub struct Udp6Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN tags (TPID, TCI), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub hop_limit: u8,
    /// Extension headers between the fixed header and UDP, in order.
    pub ext: Vec<Ipv6Ext>,
    pub udp_check: UdpCheck,
    /// Added to the IPv6 payload length / UDP length fields after they are computed.
    pub payload_len_delta: i32,
    pub udp_len_delta: i32,
    pub payload: Vec<u8>,
    /// Bytes after the IPv6 packet (an Ethernet trailer), not counted in any length.
    pub trailer: Vec<u8>,
}

impl Udp6Frame {
    /// Hop limit 64, traffic class 0, flow label 0, correct checksum, no tags, extension
    /// headers or trailer.
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV6,
        dst: SocketAddrV6,
        payload: &[u8],
    ) -> Udp6Frame {
        Udp6Frame {
            src_mac,
            dst_mac,
            vlans: Vec::new(),
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            ext: Vec::new(),
            udp_check: UdpCheck::Correct,
            payload_len_delta: 0,
            udp_len_delta: 0,
            payload: payload.to_vec(),
            trailer: Vec::new(),
        }
    }

    /// The UDP header and payload as built (with the checksum field filled). The checksum covers
    /// the real bytes, with the UDP length field as written in the pseudo-header.
    pub fn udp_bytes(&self) -> Vec<u8> {
        let udp_len = (8 + self.payload.len()) as i32 + self.udp_len_delta;
        let mut u = Vec::with_capacity(8 + self.payload.len());
        u.extend_from_slice(&self.src.port().to_be_bytes());
        u.extend_from_slice(&self.dst.port().to_be_bytes());
        u.extend_from_slice(&(udp_len as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(&self.payload);
        let check = match self.udp_check {
            UdpCheck::Correct => udp6_checksum(*self.src.ip(), *self.dst.ip(), &u),
            UdpCheck::Zero => 0,
            UdpCheck::Raw(v) => v,
        };
        u[6..8].copy_from_slice(&check.to_be_bytes());
        u
    }

    /// The one's complement sum the UDP checksum covers, without the checksum itself (the value
    /// whose complement a correct checksum is).
    pub fn udp_sum(&self) -> u16 {
        let mut u = self.udp_bytes();
        u[6] = 0;
        u[7] = 0;
        udp6_sum(*self.src.ip(), *self.dst.ip(), &u)
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(self.flow_label < 1 << 20, "flow label is 20 bits");
        let mut f = Vec::with_capacity(80 + self.payload.len() + self.trailer.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let mut ext = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(NEXT_UDP, Ipv6Ext::number);
            ext.extend_from_slice(&e.bytes(next));
        }
        let udp = self.udp_bytes();
        let payload_len = (ext.len() + udp.len()) as i32 + self.payload_len_delta;
        let first = (6u32 << 28) | (u32::from(self.traffic_class) << 20) | self.flow_label;
        f.extend_from_slice(&first.to_be_bytes());
        f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        f.push(self.ext.first().map_or(NEXT_UDP, Ipv6Ext::number));
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        f.extend_from_slice(&ext);
        f.extend_from_slice(&udp);
        f.extend_from_slice(&self.trailer);
        f
    }
}

/// Set the two payload bytes at `at` (an even offset in `frame.payload`) so that the frame's
/// UDP checksum computes to 0, which must be sent as 0xFFFF.
pub fn force_udp6_sum_zero(frame: &mut Udp6Frame, at: usize) {
    assert!(at % 2 == 0 && at + 2 <= frame.payload.len());
    frame.payload[at] = 0;
    frame.payload[at + 1] = 0;
    let s = frame.udp_sum();
    frame.payload[at..at + 2].copy_from_slice(&(!s).to_be_bytes());
    debug_assert_eq!(frame.udp_sum(), 0xffff);
}

/// Check an Ethernet/IPv6/UDP frame independently of the BPF code, as a rewrite must leave it:
/// no VLAN tag, version 6, next header UDP (no extension headers), payload length = UDP length
/// = the rest of the frame (no trailer), UDP checksum non-zero and correct. Returns the UDP
/// payload.
pub fn verify_udp6(frame: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        frame.len() >= 14 + 40 + 8,
        "{} bytes: too short",
        frame.len()
    );
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    ensure!(ethertype == 0x86dd, "ethertype {ethertype:#06x}, not IPv6");
    let ip = &frame[14..];
    ensure!(ip[0] >> 4 == 6, "IP version {}", ip[0] >> 4);
    ensure!(ip[6] == NEXT_UDP, "next header {}", ip[6]);
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    ensure!(
        40 + payload_len == ip.len(),
        "payload length {payload_len}, but {} bytes follow the IPv6 header",
        ip.len() - 40
    );
    let udp = &ip[40..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    ensure!(
        udp_len == payload_len,
        "UDP length {udp_len} vs payload length {payload_len}"
    );
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    ensure!(check != 0, "UDP checksum 0 (invalid over IPv6)");
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let want = udp6_checksum(src, dst, udp);
    ensure!(
        want == check,
        "bad UDP checksum {check:#06x}, want {want:#06x}"
    );
    Ok(udp[8..].to_vec())
}

/// [`verify_udp4`] or [`verify_udp6`], by the frame's ethertype.
pub fn verify_udp(frame: &[u8]) -> Result<Vec<u8>> {
    match frame.get(12..14) {
        Some([0x86, 0xdd]) => verify_udp6(frame),
        _ => verify_udp4(frame),
    }
}

/// A side-by-side hex dump of `want` and `got`, 16 bytes a line, lines that differ marked `!`
/// (with `^^` under each differing byte).
pub fn hex_diff(want: &[u8], got: &[u8]) -> String {
    let hex = |b: &[u8], start: usize| -> String {
        (start..start + 16)
            .map(|i| b.get(i).map_or("  ".to_string(), |x| format!("{x:02x}")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        "  want {} bytes, got {} bytes{}\n  off   {:<47}   {}\n",
        want.len(),
        got.len(),
        want.iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .or((want.len() != got.len()).then_some(want.len().min(got.len())))
            .map_or(String::new(), |o| format!(", first difference at {o:#06x}")),
        "want",
        "got"
    );
    for start in (0..want.len().max(got.len())).step_by(16) {
        let same = want.get(start..(start + 16).min(want.len()))
            == got.get(start..(start + 16).min(got.len()));
        s.push_str(&format!(
            "{} {start:04x}  {}   {}\n",
            if same { ' ' } else { '!' },
            hex(want, start),
            hex(got, start)
        ));
        if !same {
            let marks: String = (start..start + 16)
                .map(|i| {
                    if want.get(i) == got.get(i) {
                        "   "
                    } else {
                        "^^ "
                    }
                })
                .collect();
            s.push_str(&format!("        {:<47}   {}\n", "", marks.trim_end()));
        }
    }
    s
}

/// Compare a counter delta with what a row expects: the named counters exactly, every other
/// counter zero. Err explains every difference.
pub fn expect_delta(delta: &Counters, want: &[(&str, u64)]) -> std::result::Result<(), String> {
    let mut errs = Vec::new();
    for (i, (_, name, _)) in turn_bpf::stats::STATS.iter().enumerate() {
        let w = want
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .sum::<u64>();
        if delta.0[i] != w {
            errs.push(format!("{name}: want {w}, got {}", delta.0[i]));
        }
    }
    // A name the program does not count (misspelt, or a counter not added to shared.h yet) is
    // an error of its own rather than a panic, so a table goes on to its other rows.
    for (n, _) in want {
        if !turn_bpf::stats::STATS.iter().any(|(_, name, _)| name == n) {
            errs.push(format!("{n}: no such counter in the program"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("counters differ: {}", errs.join("; ")))
    }
}

/// A frame that is not UDP over IPv4: ARP request `who-has target tell sender`.
pub fn arp_request(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An Ethernet/IPv6/UDP frame.
pub fn udp6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::SocketAddrV6,
    dst: std::net::SocketAddrV6,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .expect("writing to a Vec cannot fail");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_agree_with_etherparse() {
        let src = SocketAddrV4::new(CLIENT, 40000);
        for len in [0usize, 1, 2, 3, 100, 1001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = Udp4Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER_EP, &payload);
            f.tos = 0xb8;
            f.id = 0xbeef;
            assert_eq!(verify_udp4(&f.build()).unwrap(), payload);
            let e = udp4(CLIENT_MAC, TURN0_MAC, src, SERVER_EP, 64, &payload);
            // same UDP checksum as etherparse computes
            assert_eq!(udp4_check_field(&f.build()), udp4_check_field(&e));
        }
    }

    #[test]
    fn a_zero_sum_is_sent_as_ffff() {
        let src = SocketAddrV4::new(CLIENT, 40000);
        let mut f = Udp4Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER_EP, &[9; 20]);
        force_udp_sum_zero(&mut f, 4);
        let b = f.build();
        assert_eq!(udp4_check_field(&b), Some(0xffff));
        verify_udp4(&b).unwrap();
    }

    #[test]
    fn udp6_frames_agree_with_etherparse() {
        let src = SocketAddrV6::new(CLIENT6, 40000, 0, 0);
        for len in [0usize, 1, 2, 3, 100, 1001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let f = Udp6Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER6_EP, &payload);
            let e = udp6(CLIENT_MAC, TURN0_MAC, src, SERVER6_EP, &payload);
            assert_eq!(f.build(), e, "len {len}");
            assert_eq!(verify_udp6(&f.build()).unwrap(), payload);
            assert_eq!(verify_udp(&f.build()).unwrap(), payload);
        }
    }

    #[test]
    fn udp6_header_fields_land_where_etherparse_reads_them() {
        let src = SocketAddrV6::new(PEER6, 6000, 0, 0);
        let dst = SocketAddrV6::new(RELAY6, 50000, 0, 0);
        let mut f = Udp6Frame::new(PEER_MAC, RELAY0_MAC, src, dst, b"abc");
        f.traffic_class = 0xb9;
        f.flow_label = 0xabcde;
        f.hop_limit = 7;
        let b = f.build();
        let p = SlicedPacket::from_ethernet(&b).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        assert_eq!(h.traffic_class, 0xb9);
        assert_eq!(h.flow_label.value(), 0xabcde);
        assert_eq!(h.hop_limit, 7);
        assert_eq!(h.payload_length, 11);
        let Some(TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        let want = u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap();
        assert_eq!(u.checksum(), want);
    }

    #[test]
    fn ipv6_extension_headers_chain_and_parse() {
        let src = SocketAddrV6::new(CLIENT6, 40000, 0, 0);
        let mut f = Udp6Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER6_EP, b"hello");
        f.ext = vec![
            Ipv6Ext::router_alert(),
            Ipv6Ext::dest_opts_padding(),
            Ipv6Ext::routing_done(),
            Ipv6Ext::Fragment {
                offset: 0,
                more: false,
                id: 0x01020304,
            },
        ];
        let b = f.build();
        assert_eq!(b[14 + 6], NEXT_HOP_BY_HOP);
        // 8 (hop-by-hop) + 8 (destination options) + 8 (routing) + 8 (fragment) + UDP
        assert_eq!(u16::from_be_bytes([b[18], b[19]]), 32 + 8 + 5);
        let p = etherparse::SlicedPacket::from_ethernet(&b).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
            panic!("not IPv6")
        };
        let kinds: Vec<_> = ip
            .extensions()
            .clone()
            .into_iter()
            .map(|e| match e {
                etherparse::Ipv6ExtensionSlice::HopByHop(_) => "hop-by-hop",
                etherparse::Ipv6ExtensionSlice::DestinationOptions(_) => "dest-opts",
                etherparse::Ipv6ExtensionSlice::Routing(_) => "routing",
                etherparse::Ipv6ExtensionSlice::Fragment(_) => "fragment",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["hop-by-hop", "dest-opts", "routing", "fragment"]);
        match p.transport {
            Some(TransportSlice::Udp(u)) => assert_eq!(u.payload(), b"hello"),
            t => panic!("transport {t:?}"),
        }
        // a later fragment: offset and M flag where RFC 8200 puts them
        let frag = Ipv6Ext::Fragment {
            offset: 185,
            more: true,
            id: 7,
        }
        .bytes(NEXT_UDP);
        assert_eq!(frag, [17, 0, 0x05, 0xc9, 0, 0, 0, 7]);
    }

    #[test]
    fn a_zero_udp6_sum_is_sent_as_ffff_and_zero_is_refused() {
        let src = SocketAddrV6::new(CLIENT6, 40000, 0, 0);
        let mut f = Udp6Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER6_EP, &[9; 20]);
        force_udp6_sum_zero(&mut f, 4);
        let b = f.build();
        assert_eq!(&b[14 + 40 + 6..14 + 40 + 8], &[0xff, 0xff]);
        verify_udp6(&b).unwrap();
        f.udp_check = UdpCheck::Zero;
        assert!(verify_udp6(&f.build()).is_err());
        let mut f = Udp6Frame::new(CLIENT_MAC, TURN0_MAC, src, SERVER6_EP, &[9; 20]);
        f.udp_check = UdpCheck::Raw(0x1234);
        assert!(verify_udp6(&f.build()).is_err());
        f.udp_check = UdpCheck::Correct;
        f.trailer = vec![0; 4];
        assert!(verify_udp6(&f.build()).is_err(), "a trailer is refused");
        f.trailer.clear();
        f.udp_len_delta = -1;
        assert!(
            verify_udp6(&f.build()).is_err(),
            "UDP length != payload length"
        );
    }

    #[test]
    fn udp6_sum_ones_add_and_server_endpoints() {
        let c6 = SocketAddrV6::new(CLIENT6, 40000, 0, 0);
        let f = Udp6Frame::new(CLIENT_MAC, TURN0_MAC, c6, SERVER6_EP, b"odd length");
        assert_eq!(
            !f.udp_sum(),
            u16::from_be_bytes([f.udp_bytes()[6], f.udp_bytes()[7]])
        );
        assert_eq!(ones_add(0xffff, 1), 1);
        assert_eq!(ones_add(0x8000, 0x8000), 1);
        assert_eq!(server_for(c6.into()), SocketAddr::from(SERVER6_EP));
        assert_eq!(
            server_for(SocketAddrV4::new(CLIENT, 1).into()),
            SocketAddr::from(SERVER_EP)
        );
    }

    #[test]
    fn hex_diff_marks_the_difference() {
        let a = [0u8; 20];
        let mut b = a;
        b[17] = 1;
        let d = hex_diff(&a, &b);
        assert!(d.contains("first difference at 0x0011"), "{d}");
        assert!(d.contains("! 0010"), "{d}");
        assert!(d.contains("  0000"), "{d}");
    }
}
