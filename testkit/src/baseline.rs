//! The baseline forwarder (`bpf/baseline_fwd.bpf.c`) and the BPF_PROG_TEST_RUN micro-benchmark.
//!
//! [`Baseline`] loads the baseline object: `xdp_baseline_fwd` (parse Ethernet/IPv4/UDP, FIB
//! lookup, TTL, MACs, redirect: the floor any XDP forwarder pays) and the measurement harness
//! (`xdp_bench_restore` + `xdp_bench_nop`). [`run_micro`] times the real `xdp_turn` program for a
//! client→peer datagram (chan4_to_udp4), a peer→client datagram (udp4_to_chan4) and an unrelated datagram,
//! and the baseline for a plain forwarded datagram, each with `repeat` runs per test run.
//!
//! Why the harness: `repeat` re-runs a program on the same buffer, so a program that rewrites the
//! packet sees its own output from the second run on (chan4_to_udp4's output is "not ours" and passes:
//! a naive average measures the wrong path, and the verdict of the last run gives it away). The
//! harness restores the original frame before every run and tail-calls the program under test;
//! the same harness in front of `xdp_bench_nop` is measured in every trial and subtracted. Every
//! trial checks the verdict of the last run and, for `xdp_turn`, that the path's counter moved by
//! exactly `repeat`, so a number is only reported for runs that took the path it names.

use std::mem::MaybeUninit;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
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

/// The program a harnessed run measures.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// `xdp_turn` of the loaded turn-bpf programs.
    Turn(&'a Programs),
    /// `xdp_baseline_fwd`.
    Baseline,
    /// `xdp_bench_nop`: the harness alone.
    Nop,
}

/// The loaded baseline object.
pub struct Baseline {
    pub skel: BaselineFwdSkel<'static>,
}

impl Baseline {
    /// Loads the object; the baseline may redirect to `tx_ifindexes`.
    pub fn load(tx_ifindexes: &[u32]) -> Result<Baseline> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = BaselineFwdSkelBuilder::default()
            .open(storage)
            .context("opening the baseline BPF object")?;
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

    /// Runs `frame` through the harness in front of `target`, `repeat` times: every run starts
    /// from the original bytes of `frame`. Returns the last run's result and the average time
    /// per run (harness included).
    pub fn harnessed(
        &self,
        target: Target<'_>,
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
        let fd = match target {
            Target::Turn(p) => prog_raw_fd(&p.skel.progs.xdp_turn),
            Target::Baseline => prog_raw_fd(&self.skel.progs.xdp_baseline_fwd),
            Target::Nop => prog_raw_fd(&self.skel.progs.xdp_bench_nop),
        };
        self.skel
            .maps
            .bench_progs
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("putting the program under test into bench_progs")?;
        progtest::xdp_test_run(&self.skel.progs.xdp_bench_restore, frame, ifindex, repeat)
    }
}

/// The baseline forwarder attached (native XDP links) to interfaces of a network namespace, with
/// IPv4 forwarding switched on there (the FIB lookup needs it, and the kernel forwards what the
/// program passes, e.g. before ARP has resolved a neighbour). Dropping it detaches the program
/// and restores the forwarding settings.
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
    /// Attaches `xdp_baseline_fwd` to `ifaces` in namespace `ns` (redirecting between them).
    pub fn attach(ns: &str, ifaces: &[&str]) -> Result<AttachedForwarder> {
        let mut restore = Vec::new();
        for dev in ifaces {
            let key = format!("net.ipv4.conf.{dev}.forwarding");
            let was = ns_sysctl(ns, &["-n", &key])?;
            if was != "1" {
                ns_sysctl(ns, &["-qw", &format!("{key}=1")])?;
                restore.push((key, was));
            }
        }
        let mut fwd = AttachedForwarder {
            ns: ns.to_owned(),
            base: Baseline::load(&[])?,
            links: Vec::new(),
            restore,
        };
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
        for (key, was) in &self.restore {
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

/// One measured case of the micro-benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroCase {
    /// `chan4_to_udp4`, `udp4_to_chan4`, `non_turn`, `baseline`, `non_turn_direct`.
    pub name: String,
    /// What the frame is.
    pub what: String,
    /// The verdict every trial's last run returned (checked against the expected one).
    pub verdict: String,
    /// Median over trials of the program's own time per run, ns (harness or loop subtracted).
    pub ns: f64,
    /// Every trial's time per run as measured (harness or test-run loop included), ns.
    pub raw_ns: Vec<f64>,
}

/// The micro-benchmark's results (ns per packet, medians over trials).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroReport {
    /// Runs per BPF_PROG_TEST_RUN.
    pub repeat: u32,
    /// Trials per case (alternating between cases).
    pub trials: usize,
    /// `xdp_turn`, client→peer ChannelData relayed (XDP_REDIRECT).
    pub chan4_to_udp4_ns: f64,
    /// `xdp_turn`, peer→client datagram relayed (XDP_REDIRECT).
    pub udp4_to_chan4_ns: f64,
    /// The same two figures under the names earlier reports used.
    pub cli2rem_ns: f64,
    pub rem2cli_ns: f64,
    /// `xdp_turn`, an unrelated UDP datagram (XDP_PASS). The program leaves such a packet
    /// alone, so `repeat` alone is valid: measured without the harness, minus the test-run loop
    /// (`xdp_bench_nop` run the same way).
    pub non_turn_ns: f64,
    /// `xdp_baseline_fwd`, a plain UDP datagram forwarded (XDP_REDIRECT).
    pub baseline_ns: f64,
    /// The unrelated datagram through the harness, minus the harness: a cross-check of the
    /// harness subtraction (should match `non_turn_ns` within a few ns).
    pub non_turn_harnessed_ns: f64,
    /// The unrelated datagram as BPF_PROG_TEST_RUN reports it, the test-run loop included.
    pub non_turn_raw_ns: f64,
    /// The harness alone (restore + tail call + XDP_PASS + the test-run loop), ns per run: what
    /// was subtracted from the harnessed cases.
    pub harness_ns: f64,
    /// `xdp_bench_nop` without the harness: the test-run loop's own cost per run, included in
    /// any raw `repeat` figure and excluded from the figures above.
    pub loop_overhead_ns: f64,
    /// chan4_to_udp4 / baseline.
    pub chan4_to_udp4_vs_baseline: f64,
    /// udp4_to_chan4 / baseline.
    pub udp4_to_chan4_vs_baseline: f64,
    pub cases: Vec<MicroCase>,
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

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs the micro-benchmark in a fresh routing fixture namespace `ns` (deleted afterwards):
/// `trials` rounds over all cases, each a BPF_PROG_TEST_RUN with `repeat` runs.
pub fn run_micro(ns: &str, repeat: u32, trials: usize) -> Result<MicroReport> {
    ensure!(repeat >= 1 && trials >= 1, "repeat and trials must be >= 1");
    let net = FibNet::new(ns).with_context(|| format!("building the routing fixture {ns}"))?;
    let _in = net.enter()?;
    let turn = Programs::load_for(&net, &progtest::Config::default())?;
    let base = Baseline::load(&[net.turn0, net.relay0])?;

    let client = SocketAddrV4::new(progtest::CLIENT, 40000);
    let server = SocketAddrV4::new(progtest::SERVER, progtest::TURN_PORT);
    let relay = SocketAddrV4::new(progtest::RELAY, 50000);
    let peer = SocketAddrV4::new(progtest::PEER, 6000);
    // Long enough for any run; the timing path is the steady state of a live channel.
    turn.install_channel(client, relay, peer, 0x4000, 3600)?;

    // 128-byte payloads, as the load generator's default.
    let data: Vec<u8> = (0..128u8).collect();
    let frame4 = |src_mac, dst_mac, src, dst, payload: &[u8]| {
        progtest::udp4(src_mac, dst_mac, src, dst, 64, payload)
    };
    let chan4_to_udp4 = frame4(
        progtest::CLIENT_MAC,
        progtest::TURN0_MAC,
        client,
        server,
        &progtest::channel_data(0x4000, &data, 0, 0),
    );
    let udp4_to_chan4 = frame4(progtest::PEER_MAC, progtest::RELAY0_MAC, peer, relay, &data);
    let non_turn = frame4(
        progtest::CLIENT_MAC,
        progtest::TURN0_MAC,
        client,
        SocketAddrV4::new(progtest::SERVER, 5353),
        &data,
    );
    // The baseline forwards what chan4_to_udp4 produces, as a plain datagram: client -> peer.
    let plain = frame4(
        progtest::CLIENT_MAC,
        progtest::TURN0_MAC,
        client,
        peer,
        &data,
    );

    // One run each, with the output checked: the paths are the ones we mean.
    let r = turn.xdp(&chan4_to_udp4, net.turn0)?;
    ensure!(
        r.verdict == progtest::XDP_REDIRECT,
        "chan4_to_udp4: verdict {}",
        verdict_name(r.verdict)
    );
    ensure!(
        progtest::verify_udp4(&r.out)? == data,
        "chan4_to_udp4: payload"
    );
    let r = turn.xdp(&udp4_to_chan4, net.relay0)?;
    ensure!(
        r.verdict == progtest::XDP_REDIRECT,
        "udp4_to_chan4: verdict {}",
        verdict_name(r.verdict)
    );
    ensure!(
        progtest::verify_udp4(&r.out)? == progtest::channel_data(0x4000, &data, 0, 0),
        "udp4_to_chan4: payload"
    );
    let (r, _) = base.xdp_repeat(&plain, net.turn0, 1)?;
    ensure!(
        r.verdict == progtest::XDP_REDIRECT,
        "baseline: verdict {}",
        verdict_name(r.verdict)
    );
    ensure!(
        r.out[0..6] == progtest::PEER_MAC && progtest::verify_udp4(&r.out)? == data,
        "baseline: output"
    );

    struct Case<'a> {
        name: &'static str,
        what: &'static str,
        target: Option<Target<'a>>, // None: xdp_turn without the harness
        frame: &'a [u8],
        ifindex: u32,
        expect: u32,
        counter: Option<&'static str>,
        raw: Vec<f64>,
        net: Vec<f64>,
    }
    let mk = |name, what, target, frame, ifindex, expect, counter| Case {
        name,
        what,
        target,
        frame,
        ifindex,
        expect,
        counter,
        raw: Vec::new(),
        net: Vec::new(),
    };
    let mut cases = [
        mk(
            "chan4_to_udp4",
            "client→peer ChannelData through xdp_turn (relayed)",
            Some(Target::Turn(&turn)),
            &chan4_to_udp4[..],
            net.turn0,
            progtest::XDP_REDIRECT,
            Some("RELAYED_TO_PEER"),
        ),
        mk(
            "udp4_to_chan4",
            "peer→client datagram through xdp_turn (relayed)",
            Some(Target::Turn(&turn)),
            &udp4_to_chan4[..],
            net.relay0,
            progtest::XDP_REDIRECT,
            Some("RELAYED_TO_CLIENT"),
        ),
        mk(
            "non_turn",
            "unrelated UDP (to port 5353) through xdp_turn (passed)",
            None,
            &non_turn[..],
            net.turn0,
            progtest::XDP_PASS,
            Some("PASS_NOT_OURS"),
        ),
        mk(
            "baseline",
            "plain client→peer UDP through xdp_baseline_fwd (forwarded)",
            Some(Target::Baseline),
            &plain[..],
            net.turn0,
            progtest::XDP_REDIRECT,
            None,
        ),
        mk(
            "non_turn_harnessed",
            "unrelated UDP through the harness and xdp_turn (cross-check)",
            Some(Target::Turn(&turn)),
            &non_turn[..],
            net.turn0,
            progtest::XDP_PASS,
            Some("PASS_NOT_OURS"),
        ),
    ];
    let mut harness = Vec::new();
    let mut overhead = Vec::new();
    // One untimed round first: caches, branch predictors, the JIT images paged in.
    for t in 0..=trials {
        let (r, d) = base.harnessed(Target::Nop, &plain, net.turn0, repeat)?;
        ensure!(
            r.verdict == progtest::XDP_PASS,
            "harness: verdict {}",
            verdict_name(r.verdict)
        );
        let nop_ns = d.as_nanos() as f64;
        let (r, d) =
            progtest::xdp_test_run(&base.skel.progs.xdp_bench_nop, &plain, net.turn0, repeat)?;
        ensure!(r.verdict == progtest::XDP_PASS, "nop: verdict");
        let loop_ns = d.as_nanos() as f64;
        if t > 0 {
            harness.push(nop_ns);
            overhead.push(loop_ns);
        }
        for c in cases.iter_mut() {
            let before = turn.counters();
            let (r, d) = match c.target {
                Some(t) => base.harnessed(t, c.frame, c.ifindex, repeat)?,
                None => turn.xdp_repeat(c.frame, c.ifindex, repeat)?,
            };
            if r.verdict != c.expect {
                bail!(
                    "{}: the last run returned {}, expected {} (counters:\n{})",
                    c.name,
                    verdict_name(r.verdict),
                    verdict_name(c.expect),
                    turn.counters().since(&before).render()
                );
            }
            if let Some(counter) = c.counter {
                let moved = turn.counters().since(&before).get(counter);
                ensure!(
                    moved == u64::from(repeat),
                    "{}: {counter} moved by {moved}, not {repeat}: not every run took the path",
                    c.name
                );
            }
            if t == 0 {
                continue;
            }
            let raw = d.as_nanos() as f64;
            c.raw.push(raw);
            c.net.push(if c.target.is_some() {
                raw - nop_ns
            } else {
                raw - loop_ns
            });
        }
    }
    let get = |name: &str| {
        cases
            .iter()
            .find(|c| c.name == name)
            .map(|c| median(&c.net))
            .unwrap_or(f64::NAN)
    };
    let (cli, rem, non, base_ns, harnessed) = (
        get("chan4_to_udp4"),
        get("udp4_to_chan4"),
        get("non_turn"),
        get("baseline"),
        get("non_turn_harnessed"),
    );
    let non_raw = cases
        .iter()
        .find(|c| c.name == "non_turn")
        .map_or(f64::NAN, |c| median(&c.raw));
    Ok(MicroReport {
        repeat,
        trials,
        chan4_to_udp4_ns: cli,
        udp4_to_chan4_ns: rem,
        cli2rem_ns: cli,
        rem2cli_ns: rem,
        non_turn_ns: non,
        baseline_ns: base_ns,
        non_turn_harnessed_ns: harnessed,
        non_turn_raw_ns: non_raw,
        harness_ns: median(&harness),
        loop_overhead_ns: median(&overhead),
        chan4_to_udp4_vs_baseline: cli / base_ns,
        udp4_to_chan4_vs_baseline: rem / base_ns,
        cases: cases
            .iter()
            .map(|c| MicroCase {
                name: c.name.to_string(),
                what: c.what.to_string(),
                verdict: verdict_name(c.expect).to_string(),
                ns: median(&c.net),
                raw_ns: c.raw.clone(),
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
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn verdict_names() {
        assert_eq!(verdict_name(progtest::XDP_REDIRECT), "XDP_REDIRECT");
        assert_eq!(verdict_name(progtest::XDP_PASS), "XDP_PASS");
        assert_eq!(verdict_name(99), "?");
    }
}
