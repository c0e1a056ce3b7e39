//! Interfaces as operators have them: veths whose far ends keep the kernel's defaults (tx
//! checksum offload on, GRO off, no XDP program), as a container runtime leaves them, with the
//! real coturn. The lab's usual `tx off`/`gro on` is not applied here (`Lab::up_with(.., true)`)
//! unless a test says so.
//!
//! In native XDP mode a frame redirected into a veth is received only when the veth's far end
//! has NAPI (an XDP program, or GRO on); the fast path redirects everything it relays, also back
//! out of the interface it came in on. The agent checks that at attach and at every sweep
//! (`src/far_end.rs`), and counts what the kernel drops after the program returned
//! (`XMIT_DROPPED`, `XMIT_ERROR`).

mod common;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab, XdpPass};
use turn_bpf_testkit::live_counters::LiveCounters;
use turn_bpf_testkit::turn_client::echo_peer;

use common::*;

const CHANNEL: u16 = 0x4000;
const N: usize = 500;

/// `ethtool -K eth0 <args>` on the only interface of the client or peer namespace.
fn ethtool(lab: &Lab, host: Host, args: &[&str]) {
    let mut all = vec!["ethtool", "-K", "eth0"];
    all.extend_from_slice(args);
    lab.exec(host, &all).unwrap();
}

/// The lab with the kernel's veth defaults, except `tx off` on the client's and the peer's
/// ends: checksums are their own test (`e_*`), the rest of this file is about NAPI.
fn lab_gro_off(name: &str) -> Lab {
    let lab = Lab::up_with(name, &[], true).unwrap();
    for host in [Host::Cli, Host::Peer] {
        ethtool(&lab, host, &["tx", "off"]);
    }
    lab
}

fn warm_neighbours(lab: &Lab) {
    for ip in [lab::CLIENT_V4.to_string(), lab::PEER_V4.to_string()] {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "1", &ip])
            .unwrap();
    }
}

fn ns_path(lab: &Lab, host: Host) -> PathBuf {
    lab::netns_path(&lab.ns(host))
}

/// The agent's output once `what` appears in it (bounded wait).
fn wait_output(agent: &AgentProc, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = agent.output();
        if out.contains(what) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} within {within:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `turn-bpf ARGS` in the server namespace, expected to refuse: its one error line.
fn refusal(lab: &Lab, log: &str, args: &[&str]) -> String {
    let agent = AgentProc::start(&agent_bin(), &lab.ns(Host::Srv), args, &log_path(log)).unwrap();
    let exit = agent.wait_exit(Duration::from_secs(20)).unwrap();
    assert_ne!(exit.status.code(), Some(0), "{}", exit.output);
    let errors: Vec<&str> = exit
        .output
        .lines()
        .filter(|l| l.starts_with("turn-bpf: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", exit.output);
    assert_clean(lab);
    errors[0].to_string()
}

/// (a) Native mode, the far ends as the kernel made them (no GRO, no XDP program): the agent
/// refuses with one line naming each interface, its far end, that end's namespace and the fix,
/// exits non-zero, and leaves nothing attached; in auto mode (which picks native on a veth), in
/// native mode, and with one interface. Positive control: with GRO on the client's far end the
/// single-interface command starts, and with GRO on both far ends (the peer's given an XDP
/// program instead) the two-interface one.
#[test]
fn a_native_mode_refuses_a_far_end_without_napi() {
    skip_unless_lab!();
    let lab = lab_gro_off("tbv-a");
    let both = ["--enable-forwarding", "turn0", "relay0"];
    for (log, args) in [
        ("tbv-a-auto", both.to_vec()),
        (
            "tbv-a-native",
            [&["--xdp-mode", "native"][..], &both[..]].concat(),
        ),
    ] {
        let line = refusal(&lab, log, &args);
        for (dev, ns) in [("turn0", lab.ns(Host::Cli)), ("relay0", lab.ns(Host::Peer))] {
            let want = format!(
                "{dev} is a veth whose far end eth0 (ifindex 2, network namespace {ns}) has \
                 neither GRO nor an XDP program: in native XDP mode the kernel drops every frame \
                 the fast path sends into {dev}. Fix: ip netns exec {ns} ethtool -K eth0 gro on, \
                 or attach an XDP program to eth0 (XDP_PASS is enough"
            );
            assert!(line.contains(&want), "{line}\nwants\n{want}");
        }
    }

    // An XDP program in generic mode on the far end gives it no NAPI: still refused.
    let generic = XdpPass::attach_generic(&ns_path(&lab, Host::Cli), "eth0").unwrap();
    let line = refusal(&lab, "tbv-a-generic", &both);
    assert!(
        line.contains("turn0 is a veth whose far end eth0") && line.contains("neither GRO nor"),
        "{line}"
    );
    drop(generic);

    // One interface: everything relayed is redirected back out of it.
    let line = refusal(&lab, "tbv-a-one", &["--enable-forwarding", "turn0"]);
    assert!(
        line.contains("turn0 is a veth whose far end eth0") && !line.contains("relay0"),
        "{line}"
    );

    // Positive controls.
    ethtool(&lab, Host::Cli, &["gro", "on"]);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0"],
        &log_path("tbv-a-gro1"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let xdp = XdpPass::attach(&ns_path(&lab, Host::Peer), "eth0").unwrap();
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &both,
        &log_path("tbv-a-gro2"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(!exit.output.contains("far end"), "{}", exit.output);
    drop(xdp);
    assert_clean(&lab);
}

/// (b) Native mode, GRO off everywhere, the far ends given an XDP_PASS program (the README's
/// advice for containers): 500 datagrams of 1–1,400 bytes come back byte-exact, relayed in XDP
/// both ways, and the kernel dropped none of them. Then the sweep: the peer's far end loses its
/// program, so the agent stops sending into relay0 (one warning) and the client→peer direction
/// goes through coturn with no loss; the program comes back, and so does the fast path.
#[test]
fn b_native_mode_with_xdp_on_the_far_ends_relays_and_the_sweep_follows_them() {
    skip_unless_lab!();
    let lab = lab_gro_off("tbv-b");
    let xdp_cli = XdpPass::attach(&ns_path(&lab, Host::Cli), "eth0").unwrap();
    let xdp_peer = XdpPass::attach(&ns_path(&lab, Host::Peer), "eth0").unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7400);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--xdp-mode",
            "native",
            "--enable-forwarding",
            "turn0",
            "relay0",
        ],
        &log_path("tbv-b"),
    )
    .unwrap();
    let live = LiveCounters::of_pid(agent.pid()).unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");

    let before = live.read().unwrap();
    assert_eq!(
        exchange(&c, CHANNEL, 0, N),
        N,
        "0 loss through the fast path"
    );
    let d = live.read().unwrap().since(&before);
    // All in XDP, but for a datagram or two the server's neighbour cache may send to coturn.
    for dir in ["RELAYED_TO_PEER", "RELAYED_TO_CLIENT"] {
        assert!(d.get(dir) >= N as u64 - 2, "{}", d.render());
    }
    assert_eq!(d.get("XMIT_DROPPED") + d.get("XMIT_ERROR"), 0);

    // The far end loses its program: relay0 leaves tx_ports at the next sweep.
    drop(xdp_peer);
    wait_output(
        &agent,
        "the fast path stopped sending out of relay0",
        Duration::from_secs(5),
    );
    let before = live.read().unwrap();
    assert_eq!(exchange(&c, CHANNEL, N, 200), 200, "0 loss through coturn");
    let d = live.read().unwrap().since(&before);
    assert_eq!(d.get("RELAYED_TO_PEER"), 0, "{}", d.render());
    assert!(d.get("PASS_EGRESS_UNMANAGED") >= 198, "{}", d.render());
    assert!(
        d.get("RELAYED_TO_CLIENT") >= 198,
        "turn0 still takes frames"
    );
    assert_eq!(d.get("XMIT_DROPPED"), 0);

    // ... and comes back.
    let xdp_peer = XdpPass::attach(&ns_path(&lab, Host::Peer), "eth0").unwrap();
    wait_output(
        &agent,
        "the fast path sends out of relay0 again",
        Duration::from_secs(5),
    );
    let before = live.read().unwrap();
    assert_eq!(exchange(&c, CHANNEL, N + 200, 200), 200);
    let d = live.read().unwrap().since(&before);
    assert!(d.get("RELAYED_TO_PEER") >= 198, "{}", d.render());
    assert_eq!(d.get("XMIT_DROPPED"), 0);

    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let warned = "the fast path stopped sending out of relay0";
    assert_eq!(exit.output.matches(warned).count(), 1, "{}", exit.output);
    assert!(
        exit.output
            .contains("dropped by the kernel after redirect 0 (redirect errors 0)"),
        "{}",
        exit.output
    );
    drop((xdp_cli, xdp_peer));
    echo.stop();
    assert_clean(&lab);
}

/// A UDP echo on `addr` in the client namespace (a peer behind the client's interface).
fn echo_in_cli(lab: &Lab, port: u16) -> (SocketAddr, Arc<AtomicBool>) {
    let sock = lab::in_ns(&lab.ns(Host::Cli), move || {
        UdpSocket::bind((lab::CLIENT_V4, port)).unwrap()
    });
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    echo_peer(sock, stop.clone());
    (addr, stop)
}

/// (b, one interface) Native mode on turn0 alone with a peer behind turn0 too: both directions
/// are redirected back out of the interface they came in on. With GRO on the far end (no XDP
/// program) all 500 come back byte-exact through XDP; when GRO goes off, the sweep takes turn0
/// out of tx_ports and everything goes through coturn with no loss.
#[test]
fn b_single_interface_needs_napi_on_the_far_end() {
    skip_unless_lab!();
    let lab = lab_gro_off("tbv-b1");
    ethtool(&lab, Host::Cli, &["gro", "on"]);
    warm_neighbours(&lab);
    let (peer, stop) = echo_in_cli(&lab, 7401);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--xdp-mode", "native", "--enable-forwarding", "turn0"],
        &log_path("tbv-b1"),
    )
    .unwrap();
    let live = LiveCounters::of_pid(agent.pid()).unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, peer).expect("channel bind");

    let before = live.read().unwrap();
    assert_eq!(exchange(&c, CHANNEL, 0, N), N);
    let d = live.read().unwrap().since(&before);
    // All in XDP, but for a datagram or two the server's neighbour cache may send to coturn.
    for dir in ["RELAYED_TO_PEER", "RELAYED_TO_CLIENT"] {
        assert!(d.get(dir) >= N as u64 - 2, "{}", d.render());
    }

    ethtool(&lab, Host::Cli, &["gro", "off"]);
    wait_output(
        &agent,
        "the fast path stopped sending out of turn0",
        Duration::from_secs(5),
    );
    let before = live.read().unwrap();
    assert_eq!(exchange(&c, CHANNEL, N, 200), 200, "0 loss through coturn");
    let d = live.read().unwrap().since(&before);
    assert_eq!(
        d.get("RELAYED_TO_PEER") + d.get("RELAYED_TO_CLIENT"),
        0,
        "{}",
        d.render()
    );
    assert!(d.get("PASS_EGRESS_UNMANAGED") >= 396, "{}", d.render());
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    stop.store(true, Ordering::SeqCst);
    assert_clean(&lab);
}

/// (c) Generic (skb) mode with every veth exactly as the kernel made it (tx checksum offload
/// on, GRO off, no XDP anywhere): no refusal and no warning about far ends; 500 datagrams come
/// back byte-exact, none dropped by the kernel (the client's partial checksums keep it from being
/// learned, so coturn relays them). Then the claim that generic mode needs nothing of the far
/// end, proven with the fast path relaying: the senders' `tx off` (GRO still off, no XDP on any
/// far end), and all 500 are redirected in XDP both ways and arrive; the same with one interface
/// and a peer behind it (redirected back out of turn0 both ways).
#[test]
fn c_generic_mode_needs_nothing_of_the_far_end() {
    skip_unless_lab!();
    let lab = Lab::up_with("tbv-c", &[], true).unwrap();
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7402);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--xdp-mode",
            "generic",
            "--enable-forwarding",
            "turn0",
            "relay0",
        ],
        &log_path("tbv-c"),
    )
    .unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let csum_before = lab.udp_counters(Host::Cli).unwrap().v4.in_csum_errors
        + lab.udp_counters(Host::Peer).unwrap().v4.in_csum_errors;
    assert_eq!(exchange(&c, CHANNEL, 0, N), N, "0 loss in generic mode");
    let csum_after = lab.udp_counters(Host::Cli).unwrap().v4.in_csum_errors
        + lab.udp_counters(Host::Peer).unwrap().v4.in_csum_errors;
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(!exit.output.contains("far end"), "{}", exit.output);
    assert_eq!(csum_after, csum_before, "no bad UDP checksums received");
    assert_eq!(exit.counter("XMIT_DROPPED") + exit.counter("XMIT_ERROR"), 0);
    eprintln!(
        "generic mode, veth defaults: relayed to peer {}, to client {}; passed for partial \
         checksums {}, bad checksums at record {}",
        exit.counter("RELAYED_TO_PEER"),
        exit.counter("RELAYED_TO_CLIENT"),
        exit.counter("PASS_PARTIAL_CSUM"),
        exit.counter("RECORD_BAD_CSUM")
    );

    // Relayed in XDP, into veths whose far ends have neither GRO nor XDP.
    for host in [Host::Cli, Host::Peer] {
        ethtool(&lab, host, &["tx", "off"]);
    }
    let (peer_cli, stop) = echo_in_cli(&lab, 7406);
    for (log, ifaces, peer) in [
        ("tbv-c2", &["turn0", "relay0"][..], echo.addr),
        ("tbv-c1", &["turn0"][..], peer_cli),
    ] {
        let mut args = vec!["--xdp-mode", "generic", "--enable-forwarding"];
        args.extend_from_slice(ifaces);
        let agent = AgentProc::start_ready(&agent_bin(), &lab.ns(Host::Srv), &args, &log_path(log))
            .unwrap();
        let mut c = client(&lab);
        c.allocate(None).expect("allocate");
        c.channel_bind(CHANNEL, peer).expect("channel bind");
        assert_eq!(exchange(&c, CHANNEL, 0, N), N, "{log}: 0 loss");
        let exit = agent.stop(Signal::SIGINT).unwrap();
        assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
        assert!(!exit.output.contains("far end"), "{}", exit.output);
        for dir in ["RELAYED_TO_PEER", "RELAYED_TO_CLIENT"] {
            assert!(exit.counter(dir) >= N as u64 - 2, "{log}: {}", exit.output);
        }
        assert_eq!(exit.counter("XMIT_DROPPED") + exit.counter("XMIT_ERROR"), 0);
    }
    stop.store(true, Ordering::SeqCst);
    echo.stop();
    assert_clean(&lab);
}

/// A network namespace bind-mounted at a file outside /run/netns with no process in it: the
/// agent cannot find it. Unmounted and removed on drop.
struct HiddenNs {
    path: PathBuf,
}

impl HiddenNs {
    fn new(name: &str) -> HiddenNs {
        let dir = Path::new("/run/tbv-hidden");
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        // Left mounted by a run that was killed?
        let _ = Command::new("umount")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        File::create(&path).unwrap();
        let ok = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .status()
            .unwrap()
            .success();
        assert!(ok, "unshare --net={}", path.display());
        HiddenNs { path }
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

impl Drop for HiddenNs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// (d) The drop counter is real. The peer's end of relay0 moves into a namespace the agent
/// cannot find (bind-mounted outside /run/netns, no process in it): the agent warns once and
/// starts. With no GRO and no XDP there, every datagram the fast path redirects into relay0 is
/// dropped by the kernel: the receiver there gets none of them, and XMIT_DROPPED equals the
/// number lost; the same with an XDP program there in generic mode (which gives a veth no NAPI).
/// Positive control: GRO switched on in that namespace, the same 500 arrive byte-exact and
/// XMIT_DROPPED does not move.
#[test]
fn d_frames_dropped_after_a_redirect_are_counted() {
    skip_unless_lab!();
    let lab = lab_gro_off("tbv-d");
    ethtool(&lab, Host::Cli, &["gro", "on"]);
    let hidden = HiddenNs::new("tbv-d-peer");
    lab.exec(
        Host::Peer,
        &[
            "ip",
            "link",
            "set",
            "eth0",
            "netns",
            hidden.path.to_str().unwrap(),
        ],
    )
    .unwrap();
    for cmd in [
        "ip link set lo up",
        "ip addr add 198.51.100.2/24 dev eth0",
        "ip link set eth0 up",
        "ip route add default via 198.51.100.1",
    ] {
        hidden.run(&cmd.split(' ').collect::<Vec<_>>());
    }
    warm_neighbours(&lab);
    let ns = File::open(&hidden.path).unwrap();
    let rx = std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        UdpSocket::bind((lab::PEER_V4, 7403)).unwrap()
    })
    .join()
    .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let peer = rx.local_addr().unwrap();

    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--xdp-mode",
            "native",
            "--enable-forwarding",
            "turn0",
            "relay0",
        ],
        &log_path("tbv-d"),
    )
    .unwrap();
    let out = agent.output();
    let warned = "relay0 is a veth whose far end is in a network namespace this agent cannot reach";
    assert_eq!(out.matches(warned).count(), 1, "{out}");
    let live = LiveCounters::of_pid(agent.pid()).unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, peer).expect("channel bind");

    // Count what arrives, byte for byte, while it is sent (so no receive buffer overflows).
    let send_and_count = |from: usize| -> u64 {
        let done = Arc::new(AtomicBool::new(false));
        let counter = {
            let rx = rx.try_clone().unwrap();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                let mut got = 0u64;
                loop {
                    match rx.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            assert!(
                                (from..from + N).any(|i| payload(i) == buf[..n]),
                                "a datagram arrived changed"
                            );
                            got += 1;
                        }
                        Err(_) if done.load(Ordering::SeqCst) => return got,
                        Err(_) => {}
                    }
                }
            })
        };
        for i in from..from + N {
            c.send_channel_data(CHANNEL, &payload(i)).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::SeqCst);
        counter.join().unwrap()
    };

    let before = live.read().unwrap();
    let got = send_and_count(0);
    let d = live.read().unwrap().since(&before);
    let lost = N as u64 - got;
    eprintln!(
        "far end without NAPI: {got} of {N} arrived; RELAYED_TO_PEER {}, XMIT_DROPPED {}, \
         XMIT_ERROR {}",
        d.get("RELAYED_TO_PEER"),
        d.get("XMIT_DROPPED"),
        d.get("XMIT_ERROR")
    );
    assert!(lost >= N as u64 - 2, "{}", d.render());
    assert_eq!(d.get("XMIT_DROPPED"), lost, "{}", d.render());
    assert_eq!(d.get("RELAYED_TO_PEER"), lost, "{}", d.render());
    assert!(d.get("XMIT_ERROR") > 0, "{}", d.render());

    // An XDP program in generic mode there gives the veth no NAPI: still all dropped.
    let generic = XdpPass::attach_generic(&hidden.path, "eth0").unwrap();
    let before = live.read().unwrap();
    let got = send_and_count(N);
    let d = live.read().unwrap().since(&before);
    assert_eq!(got, 0, "{}", d.render());
    assert_eq!(d.get("XMIT_DROPPED"), N as u64, "{}", d.render());
    drop(generic);

    // Positive control: GRO on there, and the same stream arrives whole.
    hidden.run(&["ethtool", "-K", "eth0", "gro", "on"]);
    let before = live.read().unwrap();
    let got = send_and_count(2 * N);
    let d = live.read().unwrap().since(&before);
    assert_eq!(got, N as u64, "{}", d.render());
    assert_eq!(d.get("RELAYED_TO_PEER"), N as u64, "{}", d.render());
    assert_eq!(d.get("XMIT_DROPPED") + d.get("XMIT_ERROR"), 0);

    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(
        exit.output.contains(&format!(
            "dropped by the kernel after redirect {} (redirect errors",
            lost + N as u64
        )),
        "{}",
        exit.output
    );
    assert_eq!(exit.output.matches(warned).count(), 1, "warned once");
    drop(rx);
    drop(hidden);
}

/// (e, client) The client's veth end keeps tx checksum offload on: its STUN requests reach XDP
/// with a partial UDP checksum, so they are not recorded (RECORD_BAD_CSUM counts them), nothing
/// is learned, and every datagram goes through coturn: 500 back byte-exact, none relayed in XDP,
/// and no bad checksum at either end.
#[test]
fn e_client_with_tx_checksum_offload_goes_through_the_server() {
    skip_unless_lab!();
    let lab = Lab::up("tbv-e1", &[]).unwrap();
    ethtool(&lab, Host::Cli, &["tx", "on"]);
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7404);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbv-e1"),
    )
    .unwrap();
    let csum = |lab: &Lab| {
        lab.udp_counters(Host::Cli).unwrap().v4.in_csum_errors
            + lab.udp_counters(Host::Peer).unwrap().v4.in_csum_errors
    };
    let csum_before = csum(&lab);
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    assert_eq!(exchange(&c, CHANNEL, 0, N), N, "0 loss");
    let srv_after = lab.nstat_udp_in(Host::Srv);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(exit.counter("RECORD_BAD_CSUM") >= 2, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 0, "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT"),
        0
    );
    assert!(srv_after - srv_before >= 2 * N as u64, "coturn relayed it");
    assert_eq!(csum(&lab), csum_before, "no bad UDP checksums received");
    // Positive control: the same client with tx off is learned and relayed in XDP.
    ethtool(&lab, Host::Cli, &["tx", "off"]);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbv-e1b"),
    )
    .unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    assert_eq!(exchange(&c, CHANNEL, 0, 200), 200);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert!(exit.counter("RELAYED_TO_PEER") >= 198, "{}", exit.output);
    echo.stop();
}

/// (e, peer) The peer's veth end keeps tx checksum offload on: its datagrams reach XDP with a
/// partial UDP checksum. They must be passed to coturn (PASS_PARTIAL_CSUM) or relayed with a
/// correct checksum: 500 back byte-exact, and the client's namespace counts no UDP checksum
/// error (`InCsumErrors` of /proc/net/snmp there).
#[test]
fn e_peer_with_tx_checksum_offload_is_passed_or_fixed() {
    skip_unless_lab!();
    let lab = Lab::up("tbv-e2", &[]).unwrap();
    ethtool(&lab, Host::Peer, &["tx", "on"]);
    warm_neighbours(&lab);
    let echo = Echo::start(&lab, 7405);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbv-e2"),
    )
    .unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let bad_before = lab.udp_counters(Host::Cli).unwrap().v4.in_csum_errors;
    let got = exchange(&c, CHANNEL, 0, N);
    let bad = lab.udp_counters(Host::Cli).unwrap().v4.in_csum_errors - bad_before;
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(bad, 0, "bad UDP checksums at the client:\n{}", exit.output);
    assert_eq!(got, N, "0 loss:\n{}", exit.output);
    assert!(exit.counter("RELAYED_TO_PEER") >= N as u64 - 2);
    // Every echo was passed or relayed (other partial-checksum UDP may be passed as well).
    assert!(
        exit.counter("RELAYED_TO_CLIENT") + exit.counter("PASS_PARTIAL_CSUM") >= N as u64,
        "{}",
        exit.output
    );
    echo.stop();
}
