//! End to end: only the TURN server's own sockets speak for it. Another local process on the
//! TURN port, unprivileged or root, can neither switch the offload off (by binding and closing
//! sockets there, which once made the agent forget every binding) nor have the snooper commit
//! a response it forges; and one present at start-up makes the agent refuse to guess which
//! process is the server unless it is named (`--server-pid`, `--server-pidfile`).
//!
//! Run: `cargo test --release --test e2e_server_trust -- --test-threads=1` (root and coturn;
//! skipped otherwise).

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use turn_bpf::server::parse_proc_net_udp;
use turn_bpf_testkit::agent::{AgentExit, AgentProc};
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::{
    build_message, parse_message, Auth, Class, TurnClient, CHANNEL_BIND,
};

use common::*;

const CHANNEL: u16 = 0x4000;
const FORGED_CHANNEL: u16 = 0x4001;
const FORGET: &str = "forgetting every binding";

/// Allocate, bind CHANNEL to the echo peer, and check that the exchange is offloaded: all
/// echoed, nothing reached the server namespace's sockets (after a warm-up that lets the
/// server's ARP cache learn the neighbours).
fn bind_and_check_offloaded(lab: &Lab, c: &mut TurnClient, echo: &Echo) {
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    assert_eq!(exchange(c, CHANNEL, 0, 5), 5, "warm-up");
    check_offloaded(lab, c, 5, 100);
}

/// `n` datagrams on CHANNEL all echoed, none of them seen by a socket of the server namespace.
fn check_offloaded(lab: &Lab, c: &TurnClient, from: usize, n: usize) {
    let before = lab.nstat_udp_in(Host::Srv);
    assert_eq!(exchange(c, CHANNEL, from, n), n);
    assert_eq!(
        lab.nstat_udp_in(Host::Srv) - before,
        0,
        "the exchange must be offloaded"
    );
}

fn stop(agent: AgentProc) -> AgentExit {
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(exit.counter("ABORTED"), 0, "{}", exit.output);
    exit
}

// ------------------------------------------------------------------------------------------
// A local unprivileged user on the TURN port.

/// A forked child of this test, running as uid/gid 65534 in the server namespace: it binds the
/// TURN address:port (SO_REUSEADDR, next to coturn's own sockets, which allow that) and
/// 127.0.0.1:3478, holds both 490 ms, closes them and starts again 10 ms later, until killed:
/// new sockets every 500 ms, there nearly all the time, so that every sweep (once a second)
/// sees other inodes than the one before. (With a longer pause, sweeps every 1.0 s can lock
/// onto the 500 ms cycle's gaps and never see the sockets.) Killed (by its pid) and reaped on
/// drop, and by the kernel if this test's thread dies.
struct Squatter {
    pid: Pid,
}

fn sockaddr_in(addr: SocketAddrV4) -> nix::libc::sockaddr_in {
    nix::libc::sockaddr_in {
        sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: nix::libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl Squatter {
    fn start(lab: &Lab) -> Squatter {
        let netns = std::fs::File::open(format!("/run/netns/{}", lab.ns(Host::Srv))).unwrap();
        let addrs = [
            sockaddr_in(SocketAddrV4::new(lab::SERVER_V4, lab::TURN_PORT)),
            sockaddr_in(SocketAddrV4::new(Ipv4Addr::LOCALHOST, lab::TURN_PORT)),
        ];
        // SAFETY: the child makes raw system calls only (no allocation, no locks: safe after
        // fork in a threaded process) and never returns.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe { squat(netns.as_raw_fd(), &addrs) },
            nix::unistd::ForkResult::Parent { child } => Squatter { pid: child },
        }
    }
}

/// The squatter's life (see [`Squatter`]).
unsafe fn squat(netns: i32, addrs: &[nix::libc::sockaddr_in; 2]) -> ! {
    use nix::libc::*;
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if setns(netns, CLONE_NEWNET) != 0 || setgroups(0, std::ptr::null()) != 0 {
        _exit(2);
    }
    if setgid(65534) != 0 || setuid(65534) != 0 {
        _exit(3);
    }
    let one: c_int = 1;
    let (hold, pause) = (
        timespec {
            tv_sec: 0,
            tv_nsec: 490_000_000,
        },
        timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        },
    );
    loop {
        let mut fds = [-1; 2];
        for (fd, a) in fds.iter_mut().zip(addrs) {
            *fd = socket(AF_INET, SOCK_DGRAM, 0);
            let opt = std::ptr::addr_of!(one).cast();
            setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, opt, 4);
            let len = std::mem::size_of::<sockaddr_in>() as socklen_t;
            bind(*fd, std::ptr::from_ref(a).cast(), len);
        }
        nanosleep(&hold, std::ptr::null_mut());
        for fd in fds {
            close(fd);
        }
        nanosleep(&pause, std::ptr::null_mut());
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The inodes of the sockets of uid 65534 on the TURN port in the server namespace now.
fn squatter_inodes(lab: &Lab) -> BTreeSet<u64> {
    lab::in_ns(&lab.ns(Host::Srv), || {
        let text = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap();
        parse_proc_net_udp(&text)
            .into_iter()
            .filter(|s| s.local.port() == lab::TURN_PORT && s.uid == 65534)
            .map(|s| s.inode)
            .collect()
    })
}

#[test]
fn a_local_user_binding_the_turn_port_does_not_switch_the_offload_off() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-srv1", &[]).unwrap();
    let echo = Echo::start(&lab, 7310);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("srv1"),
    )
    .unwrap();
    let mut c = client(&lab);
    bind_and_check_offloaded(&lab, &mut c, &echo);

    let squatter = Squatter::start(&lab);
    // About six sweeps, each seeing other sockets of the squatter than the one before: the
    // channel stays offloaded all along.
    let t0 = Instant::now();
    let (mut sent, mut seen) = (105, BTreeSet::new());
    while t0.elapsed() < Duration::from_secs(6) {
        check_offloaded(&lab, &c, sent, 20);
        sent += 20;
        seen.extend(squatter_inodes(&lab));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(squatter);
    // The positive control: the squatter really bound new sockets all along (two a round,
    // a round every 500 ms).
    assert!(seen.len() >= 12, "the squatter's sockets seen: {seen:?}");
    check_offloaded(&lab, &c, sent, 20);
    sent += 20;

    let exit = stop(agent);
    assert!(!exit.output.contains(FORGET), "{}", exit.output);
    // (The warm-up's first datagrams may go to coturn while the neighbours are learned.)
    assert!(
        exit.counter("RELAYED_TO_PEER") >= sent as u64 - 5,
        "{sent} sent:\n{}",
        exit.output
    );
    assert_eq!(exit.counter("LEARN_ALLOC"), 1, "{}", exit.output);
    assert_eq!(exit.counter("TC_FOREIGN"), 0, "{}", exit.output);
    assert_clean(&lab);
    echo.stop();
}

// ------------------------------------------------------------------------------------------
// Another root process on the TURN port, forging the server's answers.

/// A UDP socket of this test process (root, and not coturn) bound to `addr` in the server
/// namespace with SO_REUSEADDR and SO_REUSEPORT, next to coturn's own sockets.
fn forger_socket(lab: &Lab, addr: SocketAddrV4) -> UdpSocket {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};
    lab::in_ns(&lab.ns(Host::Srv), move || {
        let fd: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
        setsockopt(&fd, sockopt::ReusePort, &true).expect("SO_REUSEPORT");
        bind(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(addr))
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        UdpSocket::from(fd)
    })
}

/// The client binds FORGED_CHANNEL to `peer`, and `forger` answers instead of coturn: connected
/// to the client's address, it is the socket the kernel hands the client's datagrams to (so
/// coturn never sees the request), and it sends a ChannelBind success for the request's
/// transaction ID, signed with the client's credentials as coturn would sign it. The client
/// accepts it; the agent saw the request (it is pending) and the forged answer leave the host.
fn forged_channel_bind(forger: &UdpSocket, c: &mut TurnClient, peer: SocketAddr) {
    forger.connect(c.local_addr().unwrap()).unwrap();
    let (realm, nonce) = c.realm_nonce().expect("the client was challenged");
    let auth = Auth {
        user: lab::TURN_USER.into(),
        pass: lab::TURN_PASS.into(),
        realm: realm.into(),
        nonce: nonce.into(),
    };
    let sock = forger.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 2048];
        let n = sock
            .recv(&mut buf)
            .expect("the forger got the client's request");
        let req = parse_message(&buf[..n]).expect("a STUN request");
        assert_eq!((req.class, req.method), (Class::Request, CHANNEL_BIND));
        let forged = build_message(Class::Success, CHANNEL_BIND, req.txid, &[], Some(&auth));
        sock.send(&forged).unwrap();
    });
    c.channel_bind(FORGED_CHANNEL, peer)
        .expect("the client accepts the forged answer");
    answer.join().unwrap();
}

/// ChannelData on FORGED_CHANNEL is not relayed: nothing reaches `peer`, nothing comes back.
fn check_forged_channel_not_relayed(c: &TurnClient, peer: Echo) {
    for i in 0..20 {
        c.send_channel_data(FORGED_CHANNEL, &payload(i)).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    let back = c
        .recv_channel_data(&mut buf, Duration::from_millis(500))
        .unwrap();
    assert_eq!(back, None, "the forged channel was relayed");
    assert_eq!(peer.stop(), 0, "the forged channel's peer got datagrams");
}

#[test]
fn a_response_forged_by_another_process_on_the_turn_port_commits_nothing() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-srv2", &[]).unwrap();
    let echo = Echo::start(&lab, 7320);
    let peer2 = Echo::start(&lab, 7321);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("srv2"),
    )
    .unwrap();
    let mut c = client(&lab);
    bind_and_check_offloaded(&lab, &mut c, &echo);

    let turn_addr = SocketAddrV4::new(lab::SERVER_V4, lab::TURN_PORT);
    let forger = forger_socket(&lab, turn_addr);
    // A sweep sees it listening next to coturn's sockets (and then connected: gone from the
    // listeners): neither is a reason to forget anything.
    std::thread::sleep(Duration::from_millis(1200));
    forged_channel_bind(&forger, &mut c, peer2.addr);
    check_forged_channel_not_relayed(&c, peer2);
    drop(forger);
    check_offloaded(&lab, &c, 105, 50);

    let exit = stop(agent);
    assert_eq!(exit.counter("TC_FOREIGN"), 1, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 1, "{}", exit.output);
    assert!(!exit.output.contains(FORGET), "{}", exit.output);
    assert_clean(&lab);
    echo.stop();
}

// ------------------------------------------------------------------------------------------
// Another process's socket on the TURN port when the agent starts.

/// Run the agent and wait (bounded) for it to exit by itself: (exit code, stdout, stderr). An
/// agent still running after 20 s (it started instead of refusing) is stopped with SIGINT, and
/// the test fails.
fn run_to_exit(ns: &str, args: &[&str]) -> (i32, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running turn-bpf");
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            break true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        !running,
        "the agent started instead of refusing:\n{}",
        text(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn another_owner_of_the_turn_port_at_start_up_is_refused_unless_the_server_is_named() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-srv3", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let coturn = lab.turnserver_pid().expect("coturn runs");
    let me = std::process::id();
    // Bound to the wildcard address, coturn's exact bindings keep the clients' datagrams.
    let forger = forger_socket(
        &lab,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, lab::TURN_PORT),
    );

    // Two processes hold listening sockets on the TURN port: which one is the server?
    let (code, out, err) = run_to_exit(&ns, &["--enable-forwarding", "turn0", "relay0"]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    // (the agent watches every port coturn serves TURN on: 3478 and the alternate 3479)
    assert!(
        lines[0].starts_with("turn-bpf: error: the sockets listening on UDP port")
            && lines[0].contains(" 3478")
            && lines[0].contains(" belong to several processes ("),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("): name the TURN server with --server-pid or --server-pidfile"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&format!("({me} ")) || lines[0].contains(&format!(", {me} ")));
    assert!(
        lines[0].contains(&format!("{coturn} turnserver")),
        "{}",
        lines[0]
    );
    assert!(out.trim().is_empty(), "{out}");
    assert_clean(&lab);

    // Named by its pid file: it starts, and says what it ignores.
    let pidfile = lab.state_dir().join("turnserver.pid");
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &[
            "--enable-forwarding",
            "--server-pidfile",
            pidfile.to_str().unwrap(),
            "turn0",
            "relay0",
        ],
        &log_path("srv3a"),
    )
    .unwrap();
    let log = agent.output();
    assert!(
        log.contains(&format!(
            "trusting the TURN server's responses: pid {coturn} (turnserver)"
        )),
        "{log}"
    );
    stop(agent);

    // Named by pid: only coturn's sockets are trusted, the forger's answers are not.
    let echo = Echo::start(&lab, 7330);
    let peer2 = Echo::start(&lab, 7331);
    let pid_arg = coturn.to_string();
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &[
            "--enable-forwarding",
            "--server-pid",
            &pid_arg,
            "turn0",
            "relay0",
        ],
        &log_path("srv3b"),
    )
    .unwrap();
    let log = agent.output();
    // (the agent watches 3478 and coturn's alternate port 3479)
    let warned = format!("(held by {me} ");
    assert_eq!(
        log.matches("ignoring 1 other socket(s) listening on UDP port")
            .zip(log.matches(&warned))
            .count(),
        1,
        "{log}"
    );
    let mut c = client(&lab);
    bind_and_check_offloaded(&lab, &mut c, &echo);
    forged_channel_bind(&forger, &mut c, peer2.addr);
    check_forged_channel_not_relayed(&c, peer2);

    let exit = stop(agent);
    assert_eq!(exit.counter("TC_FOREIGN"), 1, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 1, "{}", exit.output);
    assert!(!exit.output.contains(FORGET), "{}", exit.output);
    assert_eq!(exit.output.matches(&warned).count(), 1, "warned once");
    drop(forger);
    assert_clean(&lab);
    echo.stop();
}
