//! Running real packets through the real loaded programs (BPF_PROG_TEST_RUN), for the packet
//! tests and the micro-benchmark.
//!
//! [`FibNet`] is a network namespace whose routes and permanent neighbour entries let the XDP
//! program's `bpf_fib_lookup` succeed: `turn0` (192.0.2.1/24, clients behind it) and `relay0`
//! (198.51.100.1/24, peers behind it), each a veth whose other end stays in the same namespace.
//! [`Programs`] is the skeleton loaded with a given configuration, its maps filled the way the
//! loader fills them. Frames are built with `etherparse`.

use std::fs::File;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, ProgramInput};

use crate::skel::types;
use crate::skel::{TurnSkel, TurnSkelBuilder};
use crate::state::{self, bytes_of, from_bytes};
use crate::stats::Counters;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC as the u32 BPF_PROG_TEST_RUN returns.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

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
pub const TURN_PORT: u16 = 3478;
/// MTU of relay0 in the test namespace (small, so MTU rows need no jumbo frames).
pub const RELAY0_MTU: u16 = 1200;

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

/// The routing fixture: one namespace, deleted on drop.
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
                ("other0", "o0", [2, 0, 0, 0, 0, 0x12]),
            ] {
                ip(&[
                    "-n", n, "link", "add", dev, "type", "veth", "peer", "name", peer,
                ])?;
                ip(&["-n", n, "link", "set", dev, "address", &mac(m)])?;
                ip(&["-n", n, "link", "set", dev, "up"])?;
                ip(&["-n", n, "link", "set", peer, "up"])?;
            }
            ip(&[
                "-n",
                n,
                "link",
                "set",
                "relay0",
                "mtu",
                &RELAY0_MTU.to_string(),
            ])?;
            ip(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "turn0"])?;
            ip(&["-n", n, "addr", "add", "198.51.100.1/24", "dev", "relay0"])?;
            ip(&["-n", n, "addr", "add", "203.0.113.1/24", "dev", "other0"])?;
            for (addr, m, dev) in [
                (CLIENT, CLIENT_MAC, "turn0"),
                (PEER, PEER_MAC, "relay0"),
                (PEER_UNMANAGED, [2, 0, 0, 0, 0, 0x13], "other0"),
            ] {
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
            for dev in ["turn0", "relay0", "other0"] {
                let out = Command::new("ip")
                    .args(["netns", "exec", n, "sysctl", "-qw"])
                    .arg(format!("net.ipv4.conf.{dev}.forwarding=1"))
                    .output()?;
                ensure!(out.status.success(), "enabling forwarding on {dev}");
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = ip(&["netns", "del", ns]);
            return Err(e);
        }
        let _guard = NsGuard::enter(ns)?;
        let idx = |n: &str| crate::attach::ifindex(n);
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

    /// Switch forwarding on `dev` on or off.
    pub fn set_forwarding(&self, dev: &str, on: bool) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "sysctl", "-qw"])
            .arg(format!("net.ipv4.conf.{dev}.forwarding={}", u8::from(on)))
            .output()?;
        ensure!(out.status.success(), "setting forwarding on {dev}");
        Ok(())
    }
}

impl Drop for FibNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The load-time configuration (the command line's counterpart).
#[derive(Debug, Clone)]
pub struct Config {
    pub turn_ports: Vec<u16>,
    pub spill_every: u32,
    pub channel_lifetime_s: u64,
    pub permission_lifetime_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            turn_ports: vec![TURN_PORT],
            spill_every: 0,
            channel_lifetime_s: 600,
            permission_lifetime_s: 300,
        }
    }
}

/// What one test run gave back.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub verdict: u32,
    pub out: Vec<u8>,
}

/// The loaded programs and their maps.
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
            for (slot, p) in ro.cfg_turn_ports.iter_mut().zip(&cfg.turn_ports) {
                *slot = p.to_be();
            }
            ro.cfg_spill_every = cfg.spill_every;
            ro.cfg_channel_lifetime_ns = cfg.channel_lifetime_s * 1_000_000_000;
            ro.cfg_permission_lifetime_ns = cfg.permission_lifetime_s * 1_000_000_000;
        }
        let skel = open.load().context("loading the BPF programs")?;
        let addrs = local.iter().copied().collect();
        state::sync_local_addrs(&skel.maps.local_addrs, &addrs)?;
        for i in tx_ifindexes {
            state::add_tx_port(&skel.maps.tx_ports, *i)?;
        }
        Ok(Programs { skel })
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
        let mut ctx = types::xdp_md {
            data: 0,
            data_end: frame.len() as u32,
            ingress_ifindex: ifindex,
            ..Default::default()
        };
        let mut out = vec![0u8; frame.len() + 256];
        let mut input = ProgramInput::default();
        // SAFETY: xdp_md is plain data.
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
        let o = self
            .skel
            .progs
            .xdp_turn
            .test_run(input)
            .context("BPF_PROG_TEST_RUN (xdp)")?;
        let data = o.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok((
            RunResult {
                verdict: o.return_value,
                out: data,
            },
            o.duration,
        ))
    }

    /// Run `frame` through the TC egress program (as a locally sent packet).
    pub fn tc(&self, frame: &[u8]) -> Result<RunResult> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut input = ProgramInput::default();
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
        client: SocketAddrV4,
        server: SocketAddrV4,
        chan: u16,
    ) -> Option<types::tb_chan> {
        let k = types::tb_chan_key {
            client: state::ep(client.into()),
            server: state::ep(server.into()),
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
        client: SocketAddrV4,
        server: SocketAddrV4,
    ) -> Option<types::tb_alloc> {
        let k = types::tb_alloc_key {
            client: state::ep(client.into()),
            server: state::ep(server.into()),
        };
        self.skel
            .maps
            .allocs
            .lookup(bytes_of(&k), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| from_bytes(&v))
    }

    /// Commit state directly (bypassing the snooper): an allocation and one channel with its
    /// permission, all expiring `ttl_s` seconds from now.
    pub fn install_channel(
        &self,
        client: SocketAddrV4,
        relay: SocketAddrV4,
        peer: SocketAddrV4,
        chan: u16,
        ttl_s: u64,
    ) -> Result<()> {
        let server = SocketAddrV4::new(SERVER, TURN_PORT);
        let now = state::now_ns();
        let exp = now + ttl_s * 1_000_000_000;
        let id = 1000 + u64::from(chan);
        let ak = types::tb_alloc_key {
            client: state::ep(client.into()),
            server: state::ep(server.into()),
        };
        let mut a = types::tb_alloc {
            id,
            expires_ns: exp,
            ..Default::default()
        };
        a.relay[0] = state::ep(relay.into());
        self.skel
            .maps
            .allocs
            .update(bytes_of(&ak), bytes_of(&a), MapFlags::ANY)?;
        let c = types::tb_chan {
            client: ak.client,
            server: ak.server,
            relay: a.relay[0],
            peer: state::ep(peer.into()),
            chan: chan.to_be(),
            alloc_id: id,
            chan_expires_ns: exp,
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
        let perm = types::tb_perm {
            alloc_id: id,
            expires_ns: exp,
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
