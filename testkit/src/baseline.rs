//! The baseline forwarder (`bpf/baseline_fwd.bpf.c`) and the BPF_PROG_TEST_RUN micro-benchmark.
//!
//! [`Baseline`] loads the baseline object: `xdp_baseline_fwd` (parse Ethernet/IPv4/UDP or
//! Ethernet/IPv6/UDP, FIB lookup, TTL or hop limit, MACs, redirect: the floor any XDP forwarder
//! of that family pays), and `xdp_bench_restore` + `xdp_bench_nop`. [`run_micro`] times every
//! relay path of `xdp_turn` (one row of [`CASES`] each), an unrelated datagram, and the baseline
//! for each family.
//!
//! How a figure is measured (and why): every case runs its program *directly*, one run per
//! BPF_PROG_TEST_RUN call, so every run starts from the original frame (with `repeat`, a run
//! would see the previous run's rewritten output and take another path). The time is the
//! kernel's own accounting of the program, `run_time_ns / run_cnt` from `bpf_prog_info`, read
//! before and after a case's runs with run-time statistics switched on through
//! `BPF_ENABLE_STATS` (an fd: nothing global to restore). That counts the program from its first
//! to its last instruction plus the two clock reads around it, and nothing of the test-run
//! machinery (copying the frame in and out, the syscall): no estimate is subtracted. The clock
//! reads are the same for every program; `xdp_bench_nop` shows what they amount to
//! (`stats_floor_ns`), left in every figure.
//!
//! Why not the restore harness in front of the program (tail call): the kernel accounts run time
//! only to the program the test run (or the hook) calls, so a tail-called program's statistics
//! never move and its time lands on the harness; [`probe_tail_call_accounting`] checks this on
//! the running kernel and the report says what it found.
//!
//! Every trial runs every case once, in an order rotated by one per trial, after one untimed
//! warm-up round; a case's figure is the median over trials, and a path's ratio is the median of
//! its per-trial ratios to its output family's baseline of the same trial, with the 10th and
//! 90th percentiles as the spread. Every run's verdict is checked, and for `xdp_turn` that the
//! path's counter moved by exactly the number of runs, so a number is only reported for runs
//! that took the path it names; before timing, each case's output is checked once (checksums,
//! payload).

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, ProgramMut};
use serde::{Deserialize, Serialize};

use crate::progtest::{self, FibNet, Programs, RunResult};
use turn_bpf::maps::bytes_of;

/// The generated libbpf-rs skeleton of `bpf/baseline_fwd.bpf.c` (built by `build.rs`).
#[allow(
    clippy::all,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/baseline_fwd.skel.rs"));
}

use skel::types;
use skel::{BaselineFwdSkel, BaselineFwdSkelBuilder};

/// Largest frame the harness restores (`BENCH_MAX_FRAME`).
pub const MAX_FRAME: usize = 512;

/// The loaded baseline object.
pub struct Baseline {
    pub skel: BaselineFwdSkel<'static>,
}

impl Baseline {
    /// Loads the object; the baseline may redirect to `tx_ifindexes`.
    pub fn load(tx_ifindexes: &[u32]) -> Result<Baseline> {
        Baseline::load_with_flows(tx_ifindexes, 1)
    }

    /// Loads the object with room for `flows` entries in the lookup floors' tables:
    /// `xdp_lookup_fwd`'s hash table `bl_flows`, and `xdp_slot_fwd`'s open-addressed array
    /// `bl_slots` ([`slots_for`] slots).
    pub fn load_with_flows(tx_ifindexes: &[u32], flows: u32) -> Result<Baseline> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = BaselineFwdSkelBuilder::default()
            .open(storage)
            .context("opening the baseline BPF object")?;
        open.maps
            .bl_flows
            .set_max_entries(flows.max(1))
            .context("sizing bl_flows")?;
        let slots = slots_for(flows);
        open.maps
            .bl_slots
            .set_max_entries(slots)
            .context("sizing bl_slots")?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .context("the baseline object has no .rodata")?
            .bl_slot_mask = slots - 1;
        let skel = open.load().context("loading the baseline BPF programs")?;
        for i in tx_ifindexes {
            skel.maps
                .bl_tx_ports
                .update(&i.to_ne_bytes(), &i.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("adding ifindex {i} to bl_tx_ports"))?;
        }
        Ok(Baseline { skel })
    }

    /// Runs `frame` through `xdp_baseline_fwd` directly, `repeat` times (the baseline decrements
    /// the TTL, so repeated runs see their own output: use [`Baseline::harnessed`] for timing).
    pub fn xdp_repeat(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(RunResult, Duration)> {
        progtest::xdp_test_run(&self.skel.progs.xdp_baseline_fwd, frame, ifindex, repeat)
    }

    /// Runs `frame` through the harness in front of `prog` (a tail call), `repeat` times:
    /// every run starts from the original bytes of `frame`. Returns the last run's result and
    /// BPF_PROG_TEST_RUN's average time per run (harness and test-run loop included).
    pub fn harnessed_prog(
        &self,
        prog: &ProgramMut<'_>,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(RunResult, Duration)> {
        ensure!(
            frame.len() <= MAX_FRAME,
            "frame of {} bytes > {MAX_FRAME}",
            frame.len()
        );
        let mut f = types::bench_frame {
            len: frame.len() as u32,
            pad: 0,
            data: [0; MAX_FRAME],
        };
        f.data[..frame.len()].copy_from_slice(frame);
        self.skel
            .maps
            .bench_frame
            .update(&0u32.to_ne_bytes(), bytes_of(&f), MapFlags::ANY)
            .context("writing the bench frame")?;
        let fd = prog_raw_fd(prog);
        self.skel
            .maps
            .bench_progs
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("putting the program under test into bench_progs")?;
        progtest::xdp_test_run(&self.skel.progs.xdp_bench_restore, frame, ifindex, repeat)
    }
}

/// Slots of `xdp_slot_fwd`'s open-addressed array for `flows` entries: a power of two at least
/// four times as many, so most keys sit in the slot they hash to, and none further than the
/// probes reach.
pub fn slots_for(flows: u32) -> u32 {
    flows
        .clamp(1, 1 << 28)
        .saturating_mul(4)
        .next_power_of_two()
}

/// The slot `xdp_slot_fwd` looks a 16-byte key up in first (`slot_hash` in
/// `bpf/baseline_fwd.bpf.c`: the key's four words as the program loads them, in memory order).
pub fn slot_hash(key: &[u8; 16]) -> u32 {
    let mut h = 0u32;
    for w in key.chunks_exact(4) {
        let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        h = (h ^ w).wrapping_mul(0x9E37_79B1);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// The baseline forwarder attached (native XDP links) to interfaces of a network namespace, with
/// forwarding switched on there for the families it forwards (the FIB lookup needs it, and the
/// kernel forwards what the program passes, e.g. before ARP or ND has resolved a neighbour; for
/// IPv6 that takes `net.ipv6.conf.all.forwarding`). Dropping it detaches the program and
/// restores the forwarding settings.
pub struct AttachedForwarder {
    ns: String,
    base: Baseline,
    links: Vec<libbpf_rs::Link>,
    restore: Vec<(String, String)>,
}

fn ns_sysctl(ns: &str, args: &[&str]) -> Result<String> {
    let out =
        std::process::Command::new(crate::lab::find_tool("ip").unwrap_or_else(|| "ip".into()))
            .args(["netns", "exec", ns, "sysctl"])
            .args(args)
            .output()
            .context("running sysctl")?;
    ensure!(
        out.status.success(),
        "sysctl {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl AttachedForwarder {
    /// Attaches `xdp_baseline_fwd` to `ifaces` in namespace `ns` (redirecting between them),
    /// with IPv4 forwarding on.
    pub fn attach(ns: &str, ifaces: &[&str]) -> Result<AttachedForwarder> {
        AttachedForwarder::attach_families(ns, ifaces, false)
    }

    /// [`AttachedForwarder::attach`], with IPv6 forwarding on too when `ipv6`.
    pub fn attach_families(ns: &str, ifaces: &[&str], ipv6: bool) -> Result<AttachedForwarder> {
        let mut keys: Vec<String> = ifaces
            .iter()
            .map(|dev| format!("net.ipv4.conf.{dev}.forwarding"))
            .collect();
        if ipv6 {
            keys.extend(
                ifaces
                    .iter()
                    .map(|dev| format!("net.ipv6.conf.{dev}.forwarding")),
            );
            // Last, so it is restored first (writing it also writes every interface's).
            keys.push("net.ipv6.conf.all.forwarding".into());
        }
        let mut fwd = AttachedForwarder {
            ns: ns.to_owned(),
            base: Baseline::load(&[])?,
            links: Vec::new(),
            restore: Vec::new(),
        };
        for key in keys {
            let was = ns_sysctl(ns, &["-n", &key])?;
            if was != "1" {
                ns_sysctl(ns, &["-qw", &format!("{key}=1")])?;
                fwd.restore.push((key, was));
            }
        }
        let _in = progtest::NsGuard::enter(ns)?;
        let idx: Vec<u32> = ifaces
            .iter()
            .map(|d| turn_bpf::attach::ifindex(d))
            .collect::<Result<_>>()?;
        for i in &idx {
            fwd.base
                .skel
                .maps
                .bl_tx_ports
                .update(&i.to_ne_bytes(), &i.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("adding ifindex {i} to bl_tx_ports"))?;
        }
        for (dev, i) in ifaces.iter().zip(&idx) {
            let link = fwd
                .base
                .skel
                .progs
                .xdp_baseline_fwd
                .attach_xdp(*i as i32)
                .with_context(|| format!("attaching the baseline forwarder to {dev} in {ns}"))?;
            fwd.links.push(link);
        }
        Ok(fwd)
    }
}

impl Drop for AttachedForwarder {
    fn drop(&mut self) {
        self.links.clear();
        for (key, was) in self.restore.iter().rev() {
            if let Err(e) = ns_sysctl(&self.ns, &["-qw", &format!("{key}={was}")]) {
                log::warn!("restoring {key} in {}: {e:#}", self.ns);
            }
        }
    }
}

fn prog_raw_fd(p: &ProgramMut<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    p.as_fd().as_raw_fd()
}

// ------------------------------------------------------------------------------------------
// The kernel's run-time statistics
// ------------------------------------------------------------------------------------------

/// Run-time statistics switched on (`BPF_ENABLE_STATS`, `BPF_STATS_RUN_TIME`) for as long as
/// this lives: the kernel counts while any such fd is open, so dropping it restores whatever
/// `kernel.bpf_stats_enabled` says, with nothing global to put back.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats> {
        // SAFETY: a plain syscall wrapper; it returns a new fd or a negative errno.
        let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
        if fd < 0 {
            bail!(
                "BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): {}",
                std::io::Error::from_raw_os_error(-fd)
            );
        }
        // SAFETY: the kernel just gave us this fd, and nothing else owns it.
        Ok(RunTimeStats {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// A program's accumulated `(run_time_ns, run_cnt)` from `bpf_prog_info`.
pub fn prog_run_stats(prog: &ProgramMut<'_>) -> Result<(u64, u64)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len describe a buffer of exactly len bytes.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog_raw_fd(prog), &mut info, &mut len) };
    if rc != 0 {
        bail!(
            "bpf_prog_get_info_by_fd: {}",
            std::io::Error::from_raw_os_error(-rc)
        );
    }
    Ok((info.run_time_ns, info.run_cnt))
}

/// Whether the kernel accounts a tail-called program's run time to that program: runs the
/// restore harness in front of `callee` and looks which program's `run_cnt` moved. Needs
/// [`RunTimeStats`] on. Returns (callee counted, harness counted).
pub fn probe_tail_call_accounting(
    base: &Baseline,
    callee: &ProgramMut<'_>,
    frame: &[u8],
    ifindex: u32,
) -> Result<(bool, bool)> {
    const RUNS: u32 = 1000;
    let (_, callee0) = prog_run_stats(callee)?;
    let (_, harness0) = prog_run_stats(&base.skel.progs.xdp_bench_restore)?;
    base.harnessed_prog(callee, frame, ifindex, RUNS)?;
    let (_, callee1) = prog_run_stats(callee)?;
    let (_, harness1) = prog_run_stats(&base.skel.progs.xdp_bench_restore)?;
    Ok((
        callee1 - callee0 == u64::from(RUNS),
        harness1 - harness0 == u64::from(RUNS),
    ))
}

// ------------------------------------------------------------------------------------------
// The cases
// ------------------------------------------------------------------------------------------

/// An address family of a case's input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    /// `4` or `6`, as in the path names.
    pub fn digit(self) -> u8 {
        match self {
            Fam::V4 => 4,
            Fam::V6 => 6,
        }
    }

    /// The key of this family's baseline case.
    pub fn baseline_key(self) -> &'static str {
        match self {
            Fam::V4 => "baseline4",
            Fam::V6 => "baseline6",
        }
    }
}

/// What a row of [`CASES`] measures.
#[derive(Clone, Copy)]
pub enum Kind {
    /// ChannelData from a client of the first family, relayed to a peer of the second (the
    /// binding's relayed address is of the peer's family): `chan<client>_to_udp<peer>`.
    ToPeer(Fam, Fam),
    /// A datagram from a peer of the first family, relayed to a client of the second:
    /// `udp<peer>_to_chan<client>`.
    ToClient(Fam, Fam),
    /// An unrelated IPv4 UDP datagram through `xdp_turn` (passed).
    Unrelated,
    /// A plain UDP datagram of the family through `xdp_baseline_fwd` (forwarded).
    Baseline(Fam),
    /// `xdp_bench_nop`: the kernel's accounting floor.
    Floor,
    /// A path whose bindings and frame a function of its own sets up (see [`hairpin_input`]).
    Custom(fn(&Fixture) -> Result<Input>),
}

/// One row of the case table.
#[derive(Clone, Copy)]
pub struct CaseRow {
    /// The key the figures are reported under (`<key>_ns`, `<key>_ratio`, ...).
    pub key: &'static str,
    pub kind: Kind,
    /// What the frame is, for people.
    pub what: &'static str,
    /// `Some(why)`: not measured yet (reported as pending, never with a figure).
    pub pending: Option<&'static str>,
}

const fn row(key: &'static str, kind: Kind, what: &'static str) -> CaseRow {
    CaseRow {
        key,
        kind,
        what,
        pending: None,
    }
}

/// Every case the micro-benchmark measures: every relay path in `bpf/` (a unit test checks that
/// each `chanX_to_udpY` / `udpX_to_chanY` named there has its row, and that a hairpin unit there
/// has its enabled row), the unrelated datagram, the baselines, and the accounting floor. A row
/// with `pending` set is listed as such and never given a figure.
pub const CASES: &[CaseRow] = &[
    row(
        "chan4_to_udp4",
        Kind::ToPeer(Fam::V4, Fam::V4),
        "IPv4 client→IPv4 peer, ChannelData in, UDP out",
    ),
    row(
        "udp4_to_chan4",
        Kind::ToClient(Fam::V4, Fam::V4),
        "IPv4 peer→IPv4 client, UDP in, ChannelData out",
    ),
    row(
        "chan6_to_udp6",
        Kind::ToPeer(Fam::V6, Fam::V6),
        "IPv6 client→IPv6 peer",
    ),
    row(
        "udp6_to_chan6",
        Kind::ToClient(Fam::V6, Fam::V6),
        "IPv6 peer→IPv6 client",
    ),
    row(
        "chan4_to_udp6",
        Kind::ToPeer(Fam::V4, Fam::V6),
        "IPv4 client→IPv6 peer (head −20 bytes)",
    ),
    row(
        "udp6_to_chan4",
        Kind::ToClient(Fam::V6, Fam::V4),
        "IPv6 peer→IPv4 client",
    ),
    row(
        "chan6_to_udp4",
        Kind::ToPeer(Fam::V6, Fam::V4),
        "IPv6 client→IPv4 peer",
    ),
    row(
        "udp4_to_chan6",
        Kind::ToClient(Fam::V4, Fam::V6),
        "IPv4 peer→IPv6 client",
    ),
    // The hairpin (bpf/lib/hairpin.h): the peer is another allocation's relayed address on
    // this server, and the ChannelData leaves as ChannelData for that allocation's client.
    row(
        "hairpin",
        Kind::Custom(hairpin_input),
        "IPv4 client→IPv4 client, both ends allocations of this server (relayed address IPv4)",
    ),
    row(
        "unrelated",
        Kind::Unrelated,
        "unrelated IPv4 UDP (to port 5353) through xdp_turn (passed)",
    ),
    row(
        "baseline4",
        Kind::Baseline(Fam::V4),
        "plain IPv4 UDP through xdp_baseline_fwd (forwarded)",
    ),
    row(
        "baseline6",
        Kind::Baseline(Fam::V6),
        "plain IPv6 UDP through xdp_baseline_fwd (forwarded)",
    ),
    row(
        "stats_floor",
        Kind::Floor,
        "xdp_bench_nop (XDP_PASS): the two clock reads of the accounting",
    ),
];

/// The hairpin case: clients A and B (IPv4) with IPv4 relayed addresses, A's peer is B's
/// relayed address and B's peer A's, as tests/bpf_families.rs pairs them. A's ChannelData leaves
/// where it came in (a redirect into turn0) as ChannelData from the server to B on B's channel.
pub fn hairpin_input(fx: &Fixture) -> Result<Input> {
    let ra = SocketAddr::from((progtest::RELAY, 51000));
    let rb = SocketAddr::from((progtest::RELAY, 51100));
    let a = SocketAddr::from((progtest::CLIENT, 41000));
    let b = SocketAddr::from((progtest::CLIENT, 41100));
    let (chan_a, chan_b) = (0x4200, 0x4300);
    fx.turn.install_channel(a, ra, rb, chan_a, 3600)?;
    fx.turn.install_channel(b, rb, ra, chan_b, 3600)?;
    Ok(Input {
        prog: Prog::Turn,
        frame: udp_frame(
            progtest::CLIENT_MAC,
            progtest::TURN0_MAC,
            a,
            progtest::server_for(a),
            &progtest::channel_data(chan_a, &fx.data, 0, 0),
        ),
        ingress: fx.net.turn0,
        verdict: progtest::XDP_REDIRECT,
        counter: Some("RELAYED_HAIRPIN"),
        out_family: Some(Fam::V4),
        out_payload: Some(progtest::channel_data(chan_b, &fx.data, 0, 0)),
    })
}

/// The program a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Turn,
    Baseline,
    Nop,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Turn => "xdp_turn",
            Prog::Baseline => "xdp_baseline_fwd",
            Prog::Nop => "xdp_bench_nop",
        }
    }
}

/// A case made concrete: what runs, on which frame, and what it must do.
pub struct Input {
    pub prog: Prog,
    pub frame: Vec<u8>,
    pub ingress: u32,
    pub verdict: u32,
    /// The `xdp_turn` counter that moves once per run of this path.
    pub counter: Option<&'static str>,
    /// The family the packet leaves in: the path's ratio is to that family's baseline.
    pub out_family: Option<Fam>,
    /// The UDP payload the output must carry (checked once, with its checksums, before timing).
    pub out_payload: Option<Vec<u8>>,
}

/// One binding per family pair (client family, relayed/peer family), as tests/bpf_families.rs
/// installs them: client behind turn0, peer behind relay0.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    pub client: SocketAddr,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub chan: u16,
}

/// The binding of a family pair.
pub fn binding(client: Fam, peer: Fam) -> Binding {
    let at = |f: Fam, v4: Ipv4Addr, v6: Ipv6Addr, port: u16| match f {
        Fam::V4 => SocketAddr::from((v4, port)),
        Fam::V6 => SocketAddr::from((v6, port)),
    };
    let k = match (client, peer) {
        (Fam::V4, Fam::V4) => 0,
        (Fam::V6, Fam::V6) => 1,
        (Fam::V4, Fam::V6) => 2,
        (Fam::V6, Fam::V4) => 3,
    };
    Binding {
        client: at(client, progtest::CLIENT, progtest::CLIENT6, 40000 + k),
        relay: at(peer, progtest::RELAY, progtest::RELAY6, 50000 + k),
        peer: at(peer, progtest::PEER, progtest::PEER6, 6000 + k),
        chan: 0x4000 + k,
    }
}

/// An Ethernet/IP/UDP frame of the addresses' family (hop limit 64, full UDP checksum).
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    p: &[u8],
) -> Vec<u8> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => progtest::udp4(src_mac, dst_mac, s, d, 64, p),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => progtest::udp6(src_mac, dst_mac, s, d, p),
        _ => unreachable!("one family per frame"),
    }
}

/// Everything the cases run against: the routing fixture, both programs, the payload.
pub struct Fixture {
    pub net: FibNet,
    pub turn: Programs,
    pub base: Baseline,
    /// The datagram every case carries (128 bytes, the load generator's default).
    pub data: Vec<u8>,
}

impl Fixture {
    /// The fixture in a fresh namespace `ns` (deleted with it), with one binding per family pair.
    pub fn new(ns: &str) -> Result<Fixture> {
        Fixture::with_counters(ns, false)
    }

    /// [`Fixture::new`], the programs loaded with `--binding-counters` or without.
    pub fn with_counters(ns: &str, binding_counters: bool) -> Result<Fixture> {
        let net = FibNet::new(ns).with_context(|| format!("building the routing fixture {ns}"))?;
        let _in = net.enter()?;
        let cfg = progtest::Config {
            binding_counters,
            ..progtest::Config::default()
        };
        let turn = Programs::load_for_families(&net, &cfg)?;
        let base = Baseline::load(&[net.turn0, net.relay0])?;
        for (c, p) in [
            (Fam::V4, Fam::V4),
            (Fam::V6, Fam::V6),
            (Fam::V4, Fam::V6),
            (Fam::V6, Fam::V4),
        ] {
            let b = binding(c, p);
            // Long enough for any run; the timing path is the steady state of a live channel.
            turn.install_channel(b.client, b.relay, b.peer, b.chan, 3600)?;
        }
        Ok(Fixture {
            net,
            turn,
            base,
            data: (0..128u8).collect(),
        })
    }

    /// The concrete input of `kind`.
    pub fn input(&self, kind: Kind) -> Result<Input> {
        let data = &self.data;
        let turn = |frame, ingress, counter, out_family, out_payload| Input {
            prog: Prog::Turn,
            frame,
            ingress,
            verdict: progtest::XDP_REDIRECT,
            counter: Some(counter),
            out_family: Some(out_family),
            out_payload: Some(out_payload),
        };
        Ok(match kind {
            Kind::ToPeer(c, p) => {
                let b = binding(c, p);
                let cd = progtest::channel_data(b.chan, data, 0, 0);
                let frame = udp_frame(
                    progtest::CLIENT_MAC,
                    progtest::TURN0_MAC,
                    b.client,
                    progtest::server_for(b.client),
                    &cd,
                );
                turn(frame, self.net.turn0, "RELAYED_TO_PEER", p, data.clone())
            }
            Kind::ToClient(p, c) => {
                let b = binding(c, p);
                let frame = udp_frame(
                    progtest::PEER_MAC,
                    progtest::RELAY0_MAC,
                    b.peer,
                    b.relay,
                    data,
                );
                let cd = progtest::channel_data(b.chan, data, 0, 0);
                turn(frame, self.net.relay0, "RELAYED_TO_CLIENT", c, cd)
            }
            Kind::Unrelated => Input {
                prog: Prog::Turn,
                frame: udp_frame(
                    progtest::CLIENT_MAC,
                    progtest::TURN0_MAC,
                    SocketAddr::from((progtest::CLIENT, 40000)),
                    SocketAddr::from((progtest::SERVER, 5353)),
                    data,
                ),
                ingress: self.net.turn0,
                verdict: progtest::XDP_PASS,
                counter: Some("PASS_NOT_OURS"),
                out_family: None,
                out_payload: None,
            },
            Kind::Baseline(f) => {
                // What a client → peer path produces, as a plain datagram: client -> peer.
                let b = binding(f, f);
                Input {
                    prog: Prog::Baseline,
                    frame: udp_frame(
                        progtest::CLIENT_MAC,
                        progtest::TURN0_MAC,
                        b.client,
                        b.peer,
                        data,
                    ),
                    ingress: self.net.turn0,
                    verdict: progtest::XDP_REDIRECT,
                    counter: None,
                    out_family: None,
                    out_payload: Some(data.clone()),
                }
            }
            Kind::Floor => Input {
                prog: Prog::Nop,
                frame: udp_frame(
                    progtest::CLIENT_MAC,
                    progtest::TURN0_MAC,
                    SocketAddr::from((progtest::CLIENT, 40000)),
                    SocketAddr::from((progtest::PEER, 6000)),
                    data,
                ),
                ingress: self.net.turn0,
                verdict: progtest::XDP_PASS,
                counter: None,
                out_family: None,
                out_payload: None,
            },
            Kind::Custom(f) => f(self)?,
        })
    }

    fn prog(&self, p: Prog) -> &ProgramMut<'static> {
        match p {
            Prog::Turn => &self.turn.skel.progs.xdp_turn,
            Prog::Baseline => &self.base.skel.progs.xdp_baseline_fwd,
            Prog::Nop => &self.base.skel.progs.xdp_bench_nop,
        }
    }

    /// One run with its output checked: the case is the path it names.
    fn check(&self, key: &str, inp: &Input) -> Result<()> {
        let before = self.turn.counters();
        let (r, _) = progtest::xdp_test_run(self.prog(inp.prog), &inp.frame, inp.ingress, 1)?;
        ensure!(
            r.verdict == inp.verdict,
            "{key}: verdict {}, expected {} (counters:\n{})",
            verdict_name(r.verdict),
            verdict_name(inp.verdict),
            self.turn.counters().since(&before).render()
        );
        if let Some(want) = &inp.out_payload {
            let got = progtest::verify_udp(&r.out).with_context(|| format!("{key}: output"))?;
            ensure!(&got == want, "{key}: output payload differs");
        }
        if inp.prog == Prog::Baseline {
            ensure!(r.out[0..6] == progtest::PEER_MAC, "{key}: destination MAC");
        }
        Ok(())
    }

    /// `runs` runs of `inp`, one per test run; the program's own time per run (ns) by the
    /// kernel's accounting. Every verdict and the path's counter are checked.
    fn time(&self, key: &str, inp: &Input, runs: u32) -> Result<f64> {
        let prog = self.prog(inp.prog);
        let before = self.turn.counters();
        let (t0, c0) = prog_run_stats(prog)?;
        for _ in 0..runs {
            let (r, _) = progtest::xdp_test_run(prog, &inp.frame, inp.ingress, 1)?;
            if r.verdict != inp.verdict {
                bail!(
                    "{key}: a run returned {}, expected {} (counters:\n{})",
                    verdict_name(r.verdict),
                    verdict_name(inp.verdict),
                    self.turn.counters().since(&before).render()
                );
            }
        }
        let (t1, c1) = prog_run_stats(prog)?;
        ensure!(
            c1 - c0 == u64::from(runs),
            "{key}: {} runs accounted to {}, not {runs}: is something else running it?",
            c1 - c0,
            inp.prog.name()
        );
        if let Some(counter) = inp.counter {
            let moved = self.turn.counters().since(&before).get(counter);
            ensure!(
                moved == u64::from(runs),
                "{key}: {counter} moved by {moved}, not {runs}: not every run took the path"
            );
        }
        Ok((t1 - t0) as f64 / runs as f64)
    }
}

// ------------------------------------------------------------------------------------------
// The report
// ------------------------------------------------------------------------------------------

/// One measured case of the micro-benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroCase {
    /// The row's key (`chan4_to_udp4`, `baseline6`, `unrelated`, ...).
    pub name: String,
    /// What the frame is.
    pub what: String,
    /// The program that ran.
    pub program: String,
    /// The verdict every run returned.
    pub verdict: String,
    /// Median over trials of the program's own time per run, ns.
    pub ns: f64,
    /// Every trial's time per run, ns (in trial order).
    pub trial_ns: Vec<f64>,
    /// The baseline the ratio is to (the output family's), for relay paths.
    pub vs: Option<String>,
    /// Median over trials of this trial's time / the baseline's in the same trial.
    pub ratio: Option<f64>,
    /// 10th and 90th percentiles of the per-trial ratios.
    pub ratio_p10: Option<f64>,
    pub ratio_p90: Option<f64>,
    /// The same ratio with the accounting floor (`stats_floor`, same trial) taken off both
    /// sides: what the programs' own instructions compare as. A derived figure; `ratio` is the
    /// measurement.
    pub net_ratio: Option<f64>,
}

/// A row of the table not measured (yet), and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingCase {
    pub name: String,
    pub what: String,
    pub why: String,
}

/// The micro-benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroReport {
    /// Test runs (one program run each) per case per trial.
    pub runs: u32,
    /// Timed trials (each runs every case once; one untimed warm-up round before).
    pub trials: usize,
    /// Whether the kernel accounted a tail-called program's run time to it (the probe; when
    /// false, a harness in front of the program cannot isolate its time).
    pub tail_call_accounted: bool,
    /// The programs were loaded with `--binding-counters`.
    #[serde(default)]
    pub binding_counters: bool,
    /// Every figure by key: `<case>_ns`, `<path>_ratio`, `<path>_ratio_p10`, `<path>_ratio_p90`,
    /// `<path>_net_ratio`, and the IPv4 aliases `cli2rem_ns`, `rem2cli_ns`, `baseline_ns`.
    pub figures: BTreeMap<String, f64>,
    pub cases: Vec<MicroCase>,
    pub pending: Vec<PendingCase>,
}

impl MicroReport {
    /// A figure by key (NaN when absent).
    pub fn get(&self, key: &str) -> f64 {
        self.figures.get(key).copied().unwrap_or(f64::NAN)
    }

    /// The relay paths (cases with a ratio), worst ratio first.
    pub fn paths_by_ratio(&self) -> Vec<&MicroCase> {
        let mut v: Vec<&MicroCase> = self.cases.iter().filter(|c| c.ratio.is_some()).collect();
        v.sort_by(|a, b| b.ratio.unwrap_or(0.0).total_cmp(&a.ratio.unwrap_or(0.0)));
        v
    }
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        progtest::XDP_ABORTED => "XDP_ABORTED",
        progtest::XDP_DROP => "XDP_DROP",
        progtest::XDP_PASS => "XDP_PASS",
        progtest::XDP_TX => "XDP_TX",
        progtest::XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

/// The median (NaN for none).
pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`th percentile, linearly interpolated between the closest ranks (NaN for none).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        1 => s[0],
        n => {
            let pos = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        }
    }
}

/// Element-wise `a[i] / b[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// Element-wise `(a[i] - floor[i]) / (b[i] - floor[i])`.
pub fn net_ratios(a: &[f64], b: &[f64], floor: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .zip(floor)
        .map(|((x, y), f)| (x - f) / (y - f))
        .collect()
}

/// The order of the cases in trial `t`: rotated by one per trial.
pub fn trial_order(n: usize, t: usize) -> Vec<usize> {
    (0..n).map(|i| (i + t) % n).collect()
}

/// Runs the micro-benchmark in a fresh routing fixture namespace `ns` (deleted afterwards):
/// one warm-up round, then `trials` rounds over every case, `runs` test runs per case per round.
pub fn run_micro(
    ns: &str,
    runs: u32,
    trials: usize,
    binding_counters: bool,
) -> Result<MicroReport> {
    ensure!(runs >= 1 && trials >= 1, "runs and trials must be >= 1");
    let fx = Fixture::with_counters(ns, binding_counters)?;
    let _in = fx.net.enter()?;
    let _stats = RunTimeStats::enable()?;

    let rows: Vec<&CaseRow> = CASES.iter().filter(|r| r.pending.is_none()).collect();
    let inputs: Vec<Input> = rows
        .iter()
        .map(|r| fx.input(r.kind).with_context(|| format!("case {}", r.key)))
        .collect::<Result<_>>()?;
    for (r, inp) in rows.iter().zip(&inputs) {
        fx.check(r.key, inp)?;
    }
    let c2p = &inputs[rows
        .iter()
        .position(|r| r.key == "chan4_to_udp4")
        .context("no chan4_to_udp4 row")?];
    let (callee, harness) =
        probe_tail_call_accounting(&fx.base, fx.prog(Prog::Turn), &c2p.frame, c2p.ingress)?;
    ensure!(
        harness,
        "run-time statistics are not counting (the harness's run_cnt did not move)"
    );

    let mut per: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for t in 0..=trials {
        for i in trial_order(rows.len(), t) {
            let ns = fx.time(rows[i].key, &inputs[i], runs)?;
            if t > 0 {
                per[i].push(ns);
            }
        }
    }

    let idx = |key: &str| rows.iter().position(|r| r.key == key);
    let floor = idx("stats_floor").map(|f| per[f].clone());
    let mut figures = BTreeMap::new();
    let mut cases = Vec::new();
    for (i, (r, inp)) in rows.iter().zip(&inputs).enumerate() {
        let ns = median(&per[i]);
        figures.insert(format!("{}_ns", r.key), ns);
        let vs = inp.out_family.map(Fam::baseline_key);
        let rs = vs.and_then(idx).map(|b| ratios(&per[i], &per[b]));
        let net = match (vs.and_then(idx), &floor) {
            (Some(b), Some(f)) => Some(median(&net_ratios(&per[i], &per[b], f))),
            _ => None,
        };
        if let Some(rs) = &rs {
            figures.insert(format!("{}_ratio", r.key), median(rs));
            figures.insert(format!("{}_ratio_p10", r.key), percentile(rs, 10.0));
            figures.insert(format!("{}_ratio_p90", r.key), percentile(rs, 90.0));
        }
        if let Some(n) = net {
            figures.insert(format!("{}_net_ratio", r.key), n);
        }
        cases.push(MicroCase {
            name: r.key.to_string(),
            what: r.what.to_string(),
            program: inp.prog.name().to_string(),
            verdict: verdict_name(inp.verdict).to_string(),
            ns,
            trial_ns: per[i].clone(),
            vs: vs.map(str::to_string),
            ratio: rs.as_deref().map(median),
            ratio_p10: rs.as_deref().map(|v| percentile(v, 10.0)),
            ratio_p90: rs.as_deref().map(|v| percentile(v, 90.0)),
            net_ratio: net,
        });
    }
    for (alias, key) in [
        ("cli2rem_ns", "chan4_to_udp4_ns"),
        ("rem2cli_ns", "udp4_to_chan4_ns"),
        ("baseline_ns", "baseline4_ns"),
    ] {
        let v = figures.get(key).copied().unwrap_or(f64::NAN);
        figures.insert(alias.to_string(), v);
    }
    Ok(MicroReport {
        runs,
        trials,
        binding_counters,
        tail_call_accounted: callee,
        figures,
        cases,
        pending: CASES
            .iter()
            .filter_map(|r| {
                r.pending.map(|why| PendingCase {
                    name: r.key.to_string(),
                    what: r.what.to_string(),
                    why: why.to_string(),
                })
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=11).map(f64::from).collect(); // 1..=11, unsorted below
        let mut w = v.clone();
        w.reverse();
        assert_eq!(percentile(&w, 0.0), 1.0);
        assert_eq!(percentile(&w, 10.0), 2.0);
        assert_eq!(percentile(&w, 90.0), 10.0);
        assert_eq!(percentile(&w, 100.0), 11.0);
        // 5 values: p10 lies 0.4 of the way from the first to the second.
        let f = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert!((percentile(&f, 10.0) - 14.0).abs() < 1e-9);
        assert!((percentile(&f, 90.0) - 46.0).abs() < 1e-9);
        assert!(percentile(&[], 10.0).is_nan());
    }

    #[test]
    fn per_trial_ratios_are_taken_within_a_trial() {
        // A drift that hits both cases alike cancels in the per-trial ratios.
        let path = [100.0, 200.0, 300.0];
        let base = [50.0, 100.0, 150.0];
        let r = ratios(&path, &base);
        assert_eq!(r, vec![2.0, 2.0, 2.0]);
        assert_eq!(median(&r), 2.0);
        // ... which the ratio of the medians would also give here, but not in general:
        let r = ratios(&[100.0, 300.0, 200.0], &[100.0, 100.0, 50.0]);
        assert_eq!(median(&r), 3.0);
        // Net of a floor of 20 ns in every trial.
        let n = net_ratios(&[100.0, 180.0], &[60.0, 100.0], &[20.0, 20.0]);
        assert_eq!(n, vec![2.0, 2.0]);
    }

    #[test]
    fn trial_order_rotates_and_covers_every_case() {
        for n in 1..6 {
            for t in 0..12 {
                let mut o = trial_order(n, t);
                assert_eq!(o[0], t % n, "trial {t} of {n} starts at case t mod n");
                o.sort_unstable();
                assert_eq!(o, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn verdict_names() {
        assert_eq!(verdict_name(progtest::XDP_REDIRECT), "XDP_REDIRECT");
        assert_eq!(verdict_name(progtest::XDP_PASS), "XDP_PASS");
        assert_eq!(verdict_name(99), "?");
    }

    /// Every identifier in `bpf/` (sources and headers), each with the character after it.
    fn bpf_identifiers() -> Vec<(String, Option<char>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf");
        let mut files = vec![root.clone()];
        let mut out = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let chars: Vec<char> = text.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                if chars[i].is_ascii_alphanumeric() || chars[i] == '_' {
                    let s = i;
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    out.push((chars[s..i].iter().collect(), chars.get(i).copied()));
                } else {
                    i += 1;
                }
            }
        }
        assert!(!out.is_empty(), "no sources under {}", root.display());
        out
    }

    /// `chanX_to_udpY`, `udpX_to_chanY` (and `chanX_to_chanY`) with X, Y in {4, 6}.
    fn is_path_name(id: &str) -> bool {
        let Some((from, to)) = id.split_once("_to_") else {
            return false;
        };
        let unit = |s: &str| ["chan4", "chan6", "udp4", "udp6"].contains(&s);
        unit(from) && unit(to) && !(from.starts_with("udp") && to.starts_with("udp"))
    }

    #[test]
    fn every_path_in_bpf_has_a_row() {
        let ids = bpf_identifiers();
        let mut paths: Vec<&str> = ids
            .iter()
            .map(|(s, _)| s.as_str())
            .filter(|s| is_path_name(s))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        assert!(
            paths.len() >= 8,
            "only {paths:?} found in bpf/: is the scan broken?"
        );
        let enabled = |key: &str| CASES.iter().any(|r| r.key == key && r.pending.is_none());
        for p in &paths {
            let covered = if p.starts_with("chan") && p.contains("_to_chan") {
                enabled("hairpin")
            } else {
                enabled(p)
            };
            assert!(
                covered,
                "bpf/ has the path {p} but CASES has no enabled row for it"
            );
        }
        // A hairpin unit (a function named for it) means the hairpin row must be enabled.
        let hairpin_fns: Vec<&str> = ids
            .iter()
            .filter(|(s, next)| s.contains("hairpin") && *next == Some('('))
            .map(|(s, _)| s.as_str())
            .collect();
        assert!(
            hairpin_fns.is_empty() || enabled("hairpin"),
            "bpf/ has a hairpin unit ({hairpin_fns:?}): enable the HAIRPIN row of CASES"
        );
    }

    #[test]
    fn path_rows_are_named_for_their_families_and_keys_are_unique() {
        let d = Fam::digit;
        for r in CASES {
            match r.kind {
                Kind::ToPeer(c, p) => {
                    assert_eq!(r.key, format!("chan{}_to_udp{}", d(c), d(p)))
                }
                Kind::ToClient(p, c) => {
                    assert_eq!(r.key, format!("udp{}_to_chan{}", d(p), d(c)))
                }
                Kind::Baseline(f) => assert_eq!(r.key, f.baseline_key()),
                _ => {}
            }
            assert_eq!(
                CASES.iter().filter(|o| o.key == r.key).count(),
                1,
                "{}",
                r.key
            );
        }
        // Every family pair, both directions.
        for c in [Fam::V4, Fam::V6] {
            for p in [Fam::V4, Fam::V6] {
                assert!(CASES
                    .iter()
                    .any(|r| matches!(r.kind, Kind::ToPeer(a, b) if a == c && b == p)));
                assert!(CASES
                    .iter()
                    .any(|r| matches!(r.kind, Kind::ToClient(a, b) if a == p && b == c)));
            }
        }
        assert!(
            CASES.iter().any(|r| r.key == "hairpin"),
            "the hairpin row is kept"
        );
    }

    #[test]
    fn bindings_are_distinct_and_of_their_families() {
        let all: Vec<Binding> = [
            (Fam::V4, Fam::V4),
            (Fam::V6, Fam::V6),
            (Fam::V4, Fam::V6),
            (Fam::V6, Fam::V4),
        ]
        .iter()
        .map(|&(c, p)| {
            let b = binding(c, p);
            assert_eq!(b.client.is_ipv4(), c == Fam::V4);
            assert_eq!(b.relay.is_ipv4(), p == Fam::V4);
            assert_eq!(b.peer.is_ipv4(), p == Fam::V4);
            b
        })
        .collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.chan, b.chan);
                assert_ne!(a.client.port(), b.client.port());
                assert_ne!(a.relay.port(), b.relay.port());
            }
        }
    }
}
