//! End to end: restarts and upgrades without a gap (`--pin-path`).
//!
//! A bpffs is mounted under /run in the host namespace (the agent, run through `ip netns exec`,
//! sees it: that command remounts /sys, not /run). Real coturn, real clients, real packets:
//! - a channel carrying 2,000 datagrams/s each way through coturn with the agent, which is
//!   restarted (SIGTERM, started again with the same DIR) and upgraded (a second agent binary
//!   that loads its own programs while the first one's pins are in place) under that traffic:
//!   every datagram arrives, none reaches coturn's sockets, the programs on the hooks changed,
//!   and the same channel is still relayed in XDP afterwards;
//! - with the agent stopped (pins kept) and coturn restarted, the fast path stops relaying
//!   within a few seconds (PASS_NO_AGENT), and the next agent forgets the old server's state;
//! - a pinned state of another layout: one line, a clean start;
//! - a DIR that is not on a bpffs: one line, exit 1, nothing attached;
//! - SIGKILL with --enable-forwarding: `turn-bpf detach` (or the next agent) restores forwarding.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::{channel_data, parse_channel_data, TurnClient};

use common::*;

const CHANNEL: u16 = 0x4000;
/// Datagrams per second, each way.
const RATE: u64 = 2000;
const PEER_PORT: u16 = 6100;

fn agent_args<'a>(pins: &'a PinFs, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--pin-path", pins.arg()];
    a.extend_from_slice(extra);
    a.extend_from_slice(&["turn0", "relay0"]);
    a
}

/// The id of the XDP program on `dev` and of the TC egress filter's program on turn0.
fn prog_ids(lab: &Lab) -> (String, String) {
    let link = lab
        .exec(Host::Srv, &["ip", "-d", "link", "show", "dev", "turn0"])
        .unwrap();
    let xdp = link
        .split_once("prog/xdp id ")
        .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let tc = tc_filters(lab, "turn0", "egress");
    let tc = tc
        .split_once(" id ")
        .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default();
    (xdp, tc)
}

/// A socket in `host`'s namespace with a receive buffer big enough for seconds of traffic.
fn big_buffers(sock: &UdpSocket) {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
        .expect("SO_RCVBUFFORCE");
}

/// Datagram `seq`'s payload: its number, then filler.
fn numbered(seq: u64) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(200, (seq % 251) as u8);
    p
}

/// Counts which numbered datagrams arrived, until stopped.
struct Receiver {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<u32>>>,
}

impl Receiver {
    /// `channel`: the datagrams are ChannelData (the client's side), else plain UDP (the peer's).
    fn start(sock: UdpSocket, n: usize, channel: bool) -> Receiver {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let handle = std::thread::spawn(move || {
            let mut seen = vec![0u32; n];
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                let Ok(len) = sock.recv(&mut buf) else {
                    continue;
                };
                let payload = if channel {
                    match parse_channel_data(&buf[..len]) {
                        Some((CHANNEL, p)) => p,
                        _ => continue,
                    }
                } else {
                    &buf[..len]
                };
                if payload.len() == 200 {
                    let seq = u64::from_be_bytes(payload[..8].try_into().unwrap()) as usize;
                    if seq < n && payload == numbered(seq as u64) {
                        seen[seq] += 1;
                    }
                }
            }
            seen
        });
        Receiver {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Send `n` numbered datagrams at RATE per second from `sock` to `to`, each built by `frame`.
fn paced_sender(
    sock: UdpSocket,
    to: SocketAddr,
    n: u64,
    frame: fn(u64) -> Vec<u8>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        for seq in 0..n {
            let due = t0 + Duration::from_micros(seq * 1_000_000 / RATE);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            sock.send_to(&frame(seq), to).expect("sending");
        }
    })
}

fn cd_frame(seq: u64) -> Vec<u8> {
    channel_data(CHANNEL, &numbered(seq), false)
}

/// The lost datagrams (numbers not seen) and the duplicated ones.
fn losses(seen: &[u32]) -> (Vec<usize>, usize) {
    let lost = (0..seen.len()).filter(|i| seen[*i] == 0).collect();
    let dups = seen.iter().filter(|c| **c > 1).count();
    (lost, dups)
}

fn rcvbuf_errors(lab: &Lab, host: Host) -> u64 {
    lab.udp_counters(host).unwrap().v4.rcvbuf_errors
}

/// Allocate, bind CHANNEL to `peer`, and warm the path up until it is relayed in XDP (the
/// neighbour caches need a datagram or two through the server).
fn bind_offloaded(lab: &Lab, pins: &PinFs, c: &mut TurnClient, peer: &UdpSocket) -> SocketAddr {
    let alloc = c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect("channel bind");
    let mut buf = [0u8; 2048];
    for round in 0..50 {
        let before = pins.counters();
        let srv = lab.nstat_udp_in(Host::Srv);
        c.send_channel_data(CHANNEL, b"warm-up").unwrap();
        let got = peer.recv_from(&mut buf);
        peer.send_to(b"warm-up back", alloc.relayed).unwrap();
        let back = c
            .recv_channel_data(&mut buf, Duration::from_secs(1))
            .unwrap();
        let d = pins.counters().since(&before);
        if got.is_ok()
            && back.is_some()
            && d.get("RELAYED_TO_PEER") == 1
            && d.get("RELAYED_TO_CLIENT") == 1
            && lab.nstat_udp_in(Host::Srv) == srv
        {
            return alloc.relayed;
        }
        assert!(round < 49, "the channel was never relayed in XDP");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

/// A socket in the peer namespace on PEER_V4:PEER_PORT.
fn peer_socket(lab: &Lab) -> UdpSocket {
    let sock = lab::in_ns(&lab.ns(Host::Peer), || {
        UdpSocket::bind((lab::PEER_V4, PEER_PORT)).expect("binding the peer socket")
    });
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    sock
}

/// `turn-bpf detach --pin-path DIR turn0 relay0` in the server namespace; its output.
fn detach(lab: &Lab, pin: Option<&str>) -> (bool, String) {
    let mut args = vec!["netns", "exec", &lab.ns(Host::Srv)]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.push(agent_bin().to_str().unwrap().to_string());
    args.push("detach".into());
    if let Some(p) = pin {
        args.extend(["--pin-path".to_string(), p.to_string()]);
    }
    args.extend(["turn0".to_string(), "relay0".to_string()]);
    let out = Command::new("ip").args(&args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Stop an agent with SIGTERM: it must exit 0 and say it left its pins.
fn stop_keeping_pins(agent: AgentProc) -> String {
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(
        exit.output
            .contains("leaving the fast path and the snooper pinned"),
        "{}",
        exit.output
    );
    exit.output
}

#[test]
fn restart_and_upgrade_under_traffic_lose_nothing() {
    skip_unless_lab!();
    let pins = PinFs::mount("tbr-rst1-pins");
    let lab = Lab::up("tbr-rst1", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let args = agent_args(&pins, &["--enable-forwarding"]);
    let first = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst1-a")).unwrap();

    let mut c = client(&lab);
    let peer = peer_socket(&lab);
    let relayed = bind_offloaded(&lab, &pins, &mut c, &peer);
    big_buffers(c.socket());
    big_buffers(&peer);

    // 7 s of traffic each way; a restart at 2 s and an upgrade at 4.5 s.
    let n = RATE * 7;
    let c0 = pins.counters();
    let srv0 = lab.nstat_udp_in(Host::Srv);
    let rcvbuf0 = (
        rcvbuf_errors(&lab, Host::Cli),
        rcvbuf_errors(&lab, Host::Peer),
    );
    let at_client = Receiver::start(c.socket().try_clone().unwrap(), n as usize, true);
    let at_peer = Receiver::start(peer.try_clone().unwrap(), n as usize, false);
    let t0 = Instant::now();
    let to_peer = paced_sender(
        c.socket().try_clone().unwrap(),
        lab::TURN_SERVER_V4,
        n,
        cd_frame,
    );
    let to_client = paced_sender(peer.try_clone().unwrap(), relayed, n, numbered);

    let ids_a = prog_ids(&lab);
    std::thread::sleep(Duration::from_secs(2));
    // Restart: SIGTERM, then the same binary with the same DIR.
    stop_keeping_pins(first);
    let second = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst1-b")).unwrap();
    let ids_b = prog_ids(&lab);
    let restarted_at = t0.elapsed();
    let out_b = second.output();
    assert!(
        out_b.contains("swapped the XDP program under the pinned link on turn0")
            && out_b.contains("replaced the TC egress snooper's program on turn0 in place"),
        "{out_b}"
    );
    // Upgrade: another agent binary loads its own build of the programs while the first
    // one's pins are in place.
    std::thread::sleep(Duration::from_millis(4500).saturating_sub(t0.elapsed()));
    stop_keeping_pins(second);
    let upgrade = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("turn-bpf-upgrade");
    std::fs::copy(agent_bin(), &upgrade).unwrap();
    let third = AgentProc::start_ready(&upgrade, &ns, &args, &log_path("tbr-rst1-c")).unwrap();
    let ids_c = prog_ids(&lab);
    let upgraded_at = t0.elapsed();

    to_peer.join().unwrap();
    to_client.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let seen_peer = at_peer.finish();
    let seen_client = at_client.finish();
    let d = pins.counters().since(&c0);
    let srv = lab.nstat_udp_in(Host::Srv) - srv0;
    let rcvbuf = (
        rcvbuf_errors(&lab, Host::Cli) - rcvbuf0.0,
        rcvbuf_errors(&lab, Host::Peer) - rcvbuf0.1,
    );
    let (lost_p, dups_p) = losses(&seen_peer);
    let (lost_c, dups_c) = losses(&seen_client);
    println!(
        "programs (xdp, tc): first {ids_a:?}, restarted {ids_b:?} at {restarted_at:?}, upgraded \
         {ids_c:?} at {upgraded_at:?}; sent {n} each way; lost to the peer {}, to the client {}; \
         duplicates {dups_p}/{dups_c}; receive-buffer errors (client, peer) {rcvbuf:?}; at \
         coturn's sockets {srv}\n{}",
        lost_p.len(),
        lost_c.len(),
        d.render()
    );
    assert!(
        ids_a != ids_b && ids_b != ids_c && ids_a.0 != ids_c.0 && ids_a.1 != ids_c.1,
        "the programs were not swapped: {ids_a:?} {ids_b:?} {ids_c:?}"
    );
    assert!(
        lost_p.is_empty() && lost_c.is_empty(),
        "lost to the peer {:?}…, to the client {:?}… (receive-buffer errors {rcvbuf:?})",
        &lost_p[..lost_p.len().min(10)],
        &lost_c[..lost_c.len().min(10)]
    );
    assert_eq!((dups_p, dups_c), (0, 0), "duplicates");
    assert_eq!(d.get("RELAYED_TO_PEER"), n, "relayed to the peer in XDP");
    assert_eq!(
        d.get("RELAYED_TO_CLIENT"),
        n,
        "relayed to the client in XDP"
    );
    for pass in [
        "PASS_NO_CHANNEL",
        "PASS_EXPIRED",
        "PASS_NO_AGENT",
        "PASS_STUN",
        "PASS_NO_NEIGH",
    ] {
        assert_eq!(d.get(pass), 0, "{pass}");
    }
    assert_eq!(srv, 0, "datagrams reached coturn's sockets");

    // The same channel, no new allocation: still relayed in XDP by the upgraded agent.
    let c1 = pins.counters();
    let mut buf = [0u8; 2048];
    for i in 0..100u64 {
        c.send_channel_data(CHANNEL, &numbered(i)).unwrap();
        let (len, _) = peer.recv_from(&mut buf).expect("the peer got it");
        assert_eq!(&buf[..len], &numbered(i)[..]);
    }
    let d = pins.counters().since(&c1);
    assert_eq!(d.get("RELAYED_TO_PEER"), 100, "{}", d.render());
    assert_eq!(d.get("LEARN_ALLOC"), 0, "no new allocation");

    // Stop (pins kept), then detach: nothing left, forwarding restored from the record.
    stop_keeping_pins(third);
    assert!(xdp_attached(&lab, "turn0"), "the pinned fast path stays");
    let (ok, out) = detach(&lab, Some(pins.arg()));
    assert!(ok, "{out}");
    let left: Vec<String> = std::fs::read_dir(&pins.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "pins left: {left:?}");
    assert_clean(&lab);
}

/// Set this lab's coturn going again after a SIGTERM, the way `scripts/lab.sh up` does.
fn restart_coturn(lab: &Lab) {
    let pid = lab.turnserver_pid().expect("coturn runs in the lab");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "coturn (pid {pid}) did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/turnserver.conf");
    let st = lab.state_dir();
    let script = format!(
        "ip netns exec '{ns}' setsid turnserver -c '{conf}' --pidfile '{st}/turnserver.pid' \
         --log-file '{st}/turnserver.log' --userdb '{st}/turndb' \
         </dev/null >>'{st}/turnserver.log' 2>&1 &",
        ns = lab.ns(Host::Srv),
        conf = conf.display(),
        st = st.display(),
    );
    assert!(Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = lab.exec(Host::Srv, &["ss", "-Huln"]).unwrap_or_default();
        if ss.contains("192.0.2.1:3478") && lab.turnserver_pid().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "coturn did not come back:\n{ss}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_agent_and_a_restarted_server_stop_the_fast_path() {
    skip_unless_lab!();
    let pins = PinFs::mount("tbr-rst2-pins");
    let lab = Lab::up("tbr-rst2", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let args = agent_args(&pins, &["--enable-forwarding"]);
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst2-a")).unwrap();
    let mut c = client(&lab);
    let peer = peer_socket(&lab);
    bind_offloaded(&lab, &pins, &mut c, &peer);

    stop_keeping_pins(agent);
    let stopped = Instant::now();
    let mut buf = [0u8; 2048];
    // Positive control: right after the agent stopped, the pinned fast path still relays.
    let c0 = pins.counters();
    for i in 0..20u64 {
        c.send_channel_data(CHANNEL, &numbered(i)).unwrap();
        peer.recv_from(&mut buf).expect("relayed without an agent");
    }
    assert_eq!(pins.counters().since(&c0).get("RELAYED_TO_PEER"), 20);

    restart_coturn(&lab);
    // The stamp goes stale TB_AGENT_STALE_NS after the agent's last sweep.
    let stale = Duration::from_nanos(turn_bpf::consts::TB_AGENT_STALE_NS);
    std::thread::sleep((stale + Duration::from_millis(500)).saturating_sub(stopped.elapsed()));
    let c1 = pins.counters();
    let srv1 = lab.nstat_udp_in(Host::Srv);
    for i in 0..50u64 {
        c.send_channel_data(CHANNEL, &numbered(i)).unwrap();
    }
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "relayed although no agent runs and coturn restarted"
    );
    let d = pins.counters().since(&c1);
    println!("{}", d.render());
    assert_eq!(d.get("PASS_NO_AGENT"), 50, "{}", d.render());
    assert_eq!(d.get("RELAYED_TO_PEER"), 0);
    assert!(lab.nstat_udp_in(Host::Srv) - srv1 >= 50, "coturn got them");

    // The next agent sees another server: what was learned from the old one is forgotten, and
    // a new allocation is learned and relayed (the positive control).
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst2-b")).unwrap();
    assert!(
        agent
            .output()
            .contains("the TURN server is not the one the pinned state was learned from"),
        "{}",
        agent.output()
    );
    peer.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut c2 = client(&lab);
    bind_offloaded(&lab, &pins, &mut c2, &peer);
    // DIR is the running agent's: detach is refused, in one line, and changes nothing.
    let (ok, out) = detach(&lab, Some(pins.arg()));
    assert!(
        !ok && out.trim().lines().count() == 1 && out.contains("is in use by another turn-bpf"),
        "{out}"
    );
    assert!(xdp_attached(&lab, "turn0") && pins.dir.join("allocs").exists());
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let (ok, out) = detach(&lab, Some(pins.arg()));
    assert!(ok, "{out}");
    assert_clean(&lab);
}

#[test]
fn another_layout_is_one_line_and_a_clean_start() {
    skip_unless_lab!();
    let pins = PinFs::mount("tbr-rst3-pins");
    let lab = Lab::up("tbr-rst3", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let args = agent_args(&pins, &["--enable-forwarding"]);
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst3-a")).unwrap();
    let mut c = client(&lab);
    let peer = peer_socket(&lab);
    bind_offloaded(&lab, &pins, &mut c, &peer);
    stop_keeping_pins(agent);

    // What an agent of another layout would have pinned.
    let layout = MapHandle::from_pinned_path(pins.dir.join("layout")).unwrap();
    layout
        .update(&0u32.to_ne_bytes(), &999u64.to_ne_bytes(), MapFlags::ANY)
        .unwrap();
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst3-b")).unwrap();
    let out = agent.output();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("cannot be reused"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("layout is version 999") && lines[0].contains("starting clean"),
        "{out}"
    );
    // Clean: the old channel is the server's now (relayed by coturn, not in XDP) ...
    let c0 = pins.counters();
    let srv0 = lab.nstat_udp_in(Host::Srv);
    let mut buf = [0u8; 2048];
    for i in 0..10u64 {
        c.send_channel_data(CHANNEL, &numbered(i)).unwrap();
        peer.recv_from(&mut buf).expect("coturn relays it");
    }
    let d = pins.counters().since(&c0);
    assert_eq!(d.get("PASS_NO_CHANNEL"), 10, "{}", d.render());
    assert_eq!(d.get("RELAYED_TO_PEER"), 0);
    assert!(lab.nstat_udp_in(Host::Srv) - srv0 >= 10);
    // ... and a new allocation is offloaded again.
    let mut c2 = client(&lab);
    let peer2 = lab::in_ns(&lab.ns(Host::Peer), || {
        UdpSocket::bind((lab::PEER_V4, PEER_PORT + 1)).unwrap()
    });
    peer2
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    bind_offloaded(&lab, &pins, &mut c2, &peer2);
    stop_keeping_pins(agent);

    // A state no snooper kept (someone deleted it while no agent ran) is not adopted either.
    lab.exec(Host::Srv, &["tc", "qdisc", "del", "dev", "turn0", "clsact"])
        .unwrap();
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst3-c")).unwrap();
    let out = agent.output();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("cannot be reused"))
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains("no snooper kept it"),
        "{out}"
    );
    let c0 = pins.counters();
    c2.send_channel_data(CHANNEL, &numbered(7)).unwrap();
    peer2.recv_from(&mut buf).expect("coturn relays it");
    assert_eq!(pins.counters().since(&c0).get("PASS_NO_CHANNEL"), 1);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    let (ok, out) = detach(&lab, Some(pins.arg()));
    assert!(ok, "{out}");
    assert_clean(&lab);
}

#[test]
fn not_a_bpffs_is_one_line_and_nothing_attached() {
    skip_unless_lab!();
    let lab = Lab::up("tbr-rst4", &[]).unwrap();
    let dir = PathBuf::from("/run/tbr-rst4-plain");
    std::fs::create_dir_all(&dir).unwrap();
    let args = [
        "--pin-path",
        dir.to_str().unwrap(),
        "--enable-forwarding",
        "turn0",
        "relay0",
    ];
    let agent = AgentProc::start(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &args,
        &log_path("tbr-rst4"),
    )
    .unwrap();
    let exit = agent.wait_exit(Duration::from_secs(20)).unwrap();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(exit.status.code(), Some(1), "{}", exit.output);
    let lines: Vec<&str> = exit.output.lines().collect();
    assert_eq!(lines.len(), 1, "{}", exit.output);
    assert!(
        lines[0].starts_with("turn-bpf: error: --pin-path /run/tbr-rst4-plain is not on a bpffs"),
        "{}",
        exit.output
    );
    assert_clean(&lab);
    let (ok, out) = detach(&lab, Some("/run"));
    assert!(!ok && out.trim().lines().count() == 1, "{out}");
}

#[test]
fn sigkill_then_detach_restores_forwarding() {
    skip_unless_lab!();
    let lab = Lab::up("tbr-rst5", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let args = ["--enable-forwarding", "turn0", "relay0"];
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst5-a")).unwrap();
    assert_eq!(forwarding(&lab, "turn0"), "1");
    let exit = agent.stop(Signal::SIGKILL).unwrap();
    assert_eq!(exit.status.signal(), Some(9));
    assert_eq!(
        forwarding(&lab, "turn0"),
        "1",
        "left on by the killed agent"
    );
    // A detach that cannot write the settings back (here /proc/sys/net read-only in its own
    // mount namespace, as in a container) says so, fails, and keeps the record for the next.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "unshare", "-m", "sh", "-c"])
        .arg(format!(
            "mount --bind -o ro /proc/sys/net /proc/sys/net && exec {} detach turn0 relay0",
            agent_bin().display()
        ))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("could not restore every forwarding setting")
            && !text.contains("restored the forwarding settings"),
        "{text}"
    );
    assert_eq!(forwarding(&lab, "turn0"), "1", "{text}");
    let (ok, out) = detach(&lab, None);
    assert!(ok, "{out}");
    assert!(out.contains("restored the forwarding settings"), "{out}");
    assert_clean(&lab);

    // Killed again; this time the next agent (without --enable-forwarding) finds the record
    // and takes the forwarding left on over as its own: it restores it on exit.
    let agent = AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst5-b")).unwrap();
    agent.stop(Signal::SIGKILL).unwrap();
    assert_eq!(forwarding(&lab, "turn0"), "1");
    // The killed agent's snooper goes with its qdisc; the record stays.
    lab.exec(Host::Srv, &["tc", "qdisc", "del", "dev", "turn0", "clsact"])
        .unwrap();
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["turn0", "relay0"],
        &log_path("tbr-rst5-c"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert!(
        exit.output
            .contains("restored IPv4 forwarding off on turn0"),
        "{}",
        exit.output
    );
    assert_clean(&lab);
}

use std::os::unix::process::ExitStatusExt;

/// A restart with other settings runs with them: the object's constants (.rodata) are not
/// pinned, or the next agent would load its programs with the last one's (a shorter
/// --channel-lifetime given at the restart was ignored, the fast path relaying as long as
/// before). And DIR is turn-bpf's alone: one holding another program's pin is refused in one
/// line, that pin left in place, and `detach` removes only turn-bpf's.
#[test]
fn a_restart_runs_with_its_own_settings_and_the_pin_dir_is_ours_alone() {
    skip_unless_lab!();
    let lab = Lab::up("tbr-rst6", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let pins = PinFs::mount("tbr-rst6-pins");
    let status = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(agent_bin())
            .arg("status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (extra, want) in [
        (&["--channel-lifetime", "7"][..], "lifetimes: channel 7 s"),
        (&[][..], "lifetimes: channel 600 s"),
        (&["--channel-lifetime", "9"][..], "lifetimes: channel 9 s"),
    ] {
        let mut args = vec!["--enable-forwarding"];
        args.extend(agent_args(&pins, extra));
        let agent =
            AgentProc::start_ready(&agent_bin(), &ns, &args, &log_path("tbr-rst6")).unwrap();
        let out = status();
        assert!(out.contains(want), "{extra:?}: {out}");
        stop_keeping_pins(agent);
    }
    assert!(
        !pins.dir.join("turn_bpf_rodata").exists(),
        "the constants are not pinned"
    );

    // Another program's pin in DIR: refused, left alone; detach removes only ours.
    let foreign = pins.dir.join("other_prog_map");
    let st = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&foreign)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "other",
        ])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "bpftool map create (scripts/common.sh installs bpftool)"
    );
    let args = agent_args(&pins, &[]);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(agent_bin())
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        lines.len() == 1 && lines[0].contains("holds what turn-bpf did not pin (other_prog_map)"),
        "{err}"
    );
    assert!(foreign.exists());
    std::fs::remove_file(&foreign).unwrap();
    // An interface that is gone (as one pinned there may be when the package is removed) is
    // named and skipped; everything else is still done.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(agent_bin())
        .args([
            "detach",
            "--pin-path",
            pins.arg(),
            "turn0",
            "gone0",
            "relay0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.trim_end()
            .ends_with("no interface named gone0: skipped (the rest is done)"),
        "{err}"
    );
    // (a bpffs's root shows the kernel's own maps.debug and progs.debug)
    let left: Vec<String> = std::fs::read_dir(&pins.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "every pin removed: {left:?}");
    assert_clean(&lab);
}
