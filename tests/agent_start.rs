//! Start-up on the real setup: a wrong interface (loopback, a tunnel, one without the server's
//! address, the interfaces swapped), a leftover TC filter after SIGKILL and bad table sizes are
//! refused in one line before anything is changed or attached; a relay interface left out is
//! warned about; coturn's alternate port is served by coturn and offloaded; small tables show in
//! the kernel, and what does not fit stays with coturn, relayed without loss.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use turn_bpf::sizing;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::agent_maps;
use turn_bpf_testkit::lab::{self, Host, Lab};
use turn_bpf_testkit::turn_client::TurnClient;

use common::*;

const CHANNEL: u16 = 0x4000;

fn run_once(ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .args(args)
        .output()
        .expect("running turn-bpf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the agent, expect a refusal: a non-zero exit, nothing on stdout, exactly one line on
/// stderr, naming `needle`. Returns that line.
fn refused(ns: &str, args: &[&str], needle: &str) -> String {
    let (code, out, err) = run_once(ns, args);
    assert_ne!(code, 0, "{args:?} must fail");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{err}");
    assert!(
        lines[0].starts_with("turn-bpf: error: ") && lines[0].contains(needle),
        "{args:?}: '{}' lacks '{needle}'",
        lines[0]
    );
    assert!(out.trim().is_empty(), "{args:?} printed to stdout: {out}");
    lines[0].to_string()
}

/// A client of the lab's coturn at `server` (its listening port or its alternate one).
fn client_at(lab: &Lab, server: SocketAddr) -> TurnClient {
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).expect("binding the client socket")
    });
    TurnClient::new(sock, server, lab::TURN_USER, lab::TURN_PASS)
}

#[test]
fn a_wrong_setup_is_refused_in_one_line_before_anything_is_attached() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st1", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    // An Ethernet interface with no address of the server's, and a device without link-layer
    // headers (ARPHRD_NONE, as WireGuard's). (Gone with the lab's namespace; a reused lab may
    // still have them.)
    let _ = lab.exec(Host::Srv, &["ip", "link", "del", "spare0"]);
    let _ = lab.exec(Host::Srv, &["ip", "link", "del", "tun0"]);
    lab.exec(
        Host::Srv,
        &[
            "ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1",
        ],
    )
    .unwrap();
    lab.exec(Host::Srv, &["ip", "link", "set", "spare0", "up"])
        .unwrap();
    lab.exec(
        Host::Srv,
        &["ip", "tuntap", "add", "mode", "tun", "name", "tun0"],
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--enable-forwarding", "lo"],
            "lo is a loopback device (ARPHRD_LOOPBACK): the fast path works on Ethernet \
             interfaces only (ARPHRD_ETHER)",
        ),
        (
            &["--enable-forwarding", "turn0", "tun0"],
            "tun0 is a device without link-layer headers (ARPHRD_NONE",
        ),
        // the client-facing and relay interfaces swapped
        (
            &["--enable-forwarding", "relay0", "turn0"],
            "the TURN server listens on 192.0.2.1, 2001:db8:1::1 (UDP 3478, 3479), none of them \
             an address of relay0 (it has 198.51.100.1, 2001:db8:2::1",
        ),
        (
            &["--enable-forwarding", "relay0"],
            "none of them an address of relay0",
        ),
        (
            &["--enable-forwarding", "spare0", "relay0"],
            "none of them an address of spare0",
        ),
        // table sizes
        (
            &["--enable-forwarding", "--max-allocations", "0", "turn0"],
            "'0' for '--max-allocations <N>': 0 is not in 1..=4194304",
        ),
        (
            &["--enable-forwarding", "--max-pending", "5000000", "turn0"],
            "5000000 is not in 16..=1048576",
        ),
        (
            &[
                "--enable-forwarding",
                "--max-channels",
                "4",
                "--max-permissions",
                "3",
                "turn0",
            ],
            "--max-permissions 3 is smaller than --max-channels 4",
        ),
    ];
    for (args, needle) in cases {
        let line = refused(&ns, args, needle);
        eprintln!("{args:?}: {line}");
        // nothing attached, no forwarding switched on (the refusal came first)
        assert_clean(&lab);
        for dev in ["spare0", "tun0"] {
            assert!(!xdp_attached(&lab, dev), "XDP left on {dev}");
            assert_eq!(
                sysctl(&lab, &format!("net.ipv4.conf.{dev}.forwarding")),
                "0"
            );
        }
    }
    // The right interfaces start (the positive control for the same lab).
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbs-st1"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_clean(&lab);
}

#[test]
fn after_sigkill_a_new_agent_is_refused_in_one_line_and_changes_nothing() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st2", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbs-st2"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGKILL).unwrap();
    assert!(exit.status.code().is_none(), "killed by a signal");
    std::thread::sleep(Duration::from_millis(200));
    let left = tc_filters(&lab, "turn0", "egress");
    assert!(left.contains("tc_snoop"), "{left}");
    // What the killed agent switched on, switched off again: the refused agent must not touch it.
    let all_off = [
        "net.ipv4.conf.turn0.forwarding=0",
        "net.ipv4.conf.relay0.forwarding=0",
        "net.ipv6.conf.turn0.forwarding=0",
        "net.ipv6.conf.relay0.forwarding=0",
        "net.ipv6.conf.turn0.accept_ra=1",
        "net.ipv6.conf.relay0.accept_ra=1",
    ];
    let mut cmd = vec!["sysctl", "-qw"];
    cmd.extend(all_off);
    lab.exec(Host::Srv, &cmd).unwrap();

    let line = refused(
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        "turn0 still has the TC egress snooper of a turn-bpf killed without detaching",
    );
    assert!(line.contains("turn-bpf detach turn0"), "{line}");
    assert!(!xdp_attached(&lab, "turn0") && !xdp_attached(&lab, "relay0"));
    assert_eq!(
        tc_filters(&lab, "turn0", "egress"),
        left,
        "the filter is untouched"
    );
    for dev in ["turn0", "relay0"] {
        assert_eq!(forwarding(&lab, dev), "0", "{dev}");
        assert_eq!(forwarding6(&lab, dev), "0", "{dev}");
        assert_eq!(accept_ra(&lab, dev), "1", "{dev}");
    }
    // The way out the refusal names, then a clean start.
    let (code, out, err) = run_once(&ns, &["detach", "turn0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("turn0: removed the TC egress snooper"),
        "{out}"
    );
    assert_clean(&lab);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbs-st2b"),
    )
    .unwrap();
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_clean(&lab);
}

#[test]
fn a_relay_interface_left_out_is_warned_about_and_offloads_nothing() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st3", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let echo = Echo::start(&lab, 7000);
    let warning = "the TURN server relays from 198.51.100.1, 2001:db8:2::1 on relay0 (its \
                   relay-ip), where turn-bpf is not attached: allocations on those addresses \
                   are not offloaded; name relay0 as RELAY_IFACE to offload them";

    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0"],
        &log_path("tbs-st3a"),
    )
    .unwrap();
    assert!(agent.output().contains(warning), "{}", agent.output());
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let got = exchange(&c, CHANNEL, 0, 50);
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    // coturn relays all of it; the fast path none, as the warning said
    assert_eq!(got, 50);
    assert_eq!(exit.counter("RELAYED_TO_PEER"), 0, "{}", exit.output);
    assert_eq!(exit.counter("RELAYED_TO_CLIENT"), 0, "{}", exit.output);
    assert_clean(&lab);

    // Named: no warning, and the same exchange is relayed in XDP.
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbs-st3b"),
    )
    .unwrap();
    assert!(
        !agent.output().contains("relays from"),
        "{}",
        agent.output()
    );
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let got = exchange(&c, CHANNEL, 0, 50);
    let exit = agent.stop(Signal::SIGTERM).unwrap();
    assert_eq!(got, 50);
    assert!(exit.counter("RELAYED_TO_PEER") >= 48, "{}", exit.output);
    assert_clean(&lab);
}

/// The "up and not watched" warning names this network namespace's interfaces, also when the
/// agent runs where /sys belongs to another namespace (nsenter, a container): there
/// /sys/class/net lists the host's interfaces, and the warning named the host's eth0.
#[test]
fn unwatched_interfaces_are_this_namespaces_own() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st6", &[]).unwrap();
    let out = Command::new("timeout")
        .args(["--preserve-status", "-s", "INT", "8", "nsenter"])
        .arg(format!("--net=/run/netns/{}", lab.ns(Host::Srv)))
        .arg(agent_bin())
        .args(["--enable-forwarding", "turn0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("not watched")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("interface(s) relay0 are up and not watched"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_clean(&lab);
}

/// With two listening addresses coturn keeps RFC 5780 on and serves TURN on its alternate port
/// (3479) too: shown with coturn alone, then the agent offloads that port by itself.
#[test]
fn coturns_alternate_port_is_offloaded() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st4", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let echo = Echo::start(&lab, 7000);
    let alt = SocketAddr::new(lab::SERVER_V4.into(), lab::TURN_PORT + 1);
    const N: usize = 300;

    // coturn alone allocates and relays on 3479
    let mut c = client_at(&lab, alt);
    let a = c
        .allocate(None)
        .expect("coturn allocates on its alternate port");
    assert_eq!(a.relayed.ip(), std::net::IpAddr::V4(lab::RELAY_V4));
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    assert_eq!(exchange(&c, CHANNEL, 0, 20), 20, "coturn relays on 3479");
    assert!(
        lab.nstat_udp_in(Host::Srv) - srv_before >= 40,
        "through coturn's sockets"
    );

    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("tbs-st4"),
    )
    .unwrap();
    assert!(
        agent
            .output()
            .contains("offloading TURN port(s) [3478, 3479]"),
        "{}",
        agent.output()
    );
    let mut c = client_at(&lab, alt);
    c.allocate(None).expect("allocate on 3479");
    c.channel_bind(CHANNEL, echo.addr)
        .expect("channel bind on 3479");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    let got = exchange(&c, CHANNEL, 0, N);
    let srv_delta = lab.nstat_udp_in(Host::Srv) - srv_before;
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(got, N, "every datagram came back");
    let no_neigh = exit.counter("PASS_NO_NEIGH");
    assert!(no_neigh <= 2, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_ALLOC"), 1, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 1, "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT") + no_neigh,
        2 * N as u64,
        "{}",
        exit.output
    );
    assert_eq!(srv_delta, no_neigh, "datagrams reached coturn's sockets");
    assert_clean(&lab);
}

/// Small tables: the kernel's maps have the sizes asked for, the memory line agrees with the
/// kernel's accounting, and a third allocation that does not fit stays with coturn, which relays
/// it without loss, while the first two are relayed in XDP.
#[test]
fn small_tables_are_sized_in_the_kernel_and_what_does_not_fit_stays_with_coturn() {
    skip_unless_lab!();
    let lab = Lab::up("tbs-st5", &[]).unwrap();
    let ns = lab.ns(Host::Srv);
    let echo = Echo::start(&lab, 7000);
    const N: usize = 200;
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &ns,
        &[
            "--enable-forwarding",
            "--max-allocations",
            "2",
            "--max-channels",
            "4",
            "--max-permissions",
            "8",
            "--max-pending",
            "64",
            "turn0",
            "relay0",
        ],
        &log_path("tbs-st5"),
    )
    .unwrap();
    let out = agent.output();
    let line = out
        .lines()
        .find(|l| l.contains("state tables: "))
        .unwrap_or_else(|| panic!("no memory line in:\n{out}"));
    for part in [
        "allocs 2 × ",
        "chans 4 × ",
        "peers 4 × ",
        "perms 8 × ",
        "pending 64 × ",
        "the kernel accounts ",
    ] {
        assert!(line.contains(part), "'{part}' missing in: {line}");
    }

    // The kernel's view of the agent's own maps (through its file descriptors).
    let maps = agent_maps::of_pid(agent.pid()).unwrap();
    let cpus = libbpf_cpus();
    for (name, want) in [
        ("allocs", 2),
        ("chans", 4),
        ("peers", 4),
        ("perms", 8),
        ("pending", 64),
    ] {
        let m = maps
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no map {name} in {maps:?}"));
        assert_eq!(m.max_entries, want, "{name}");
        // The estimate printed against the kernel's memlock. Since Linux 6.4 memlock is the
        // map's real usage (htab_map_mem_usage), which the estimate follows to the byte on the
        // kernel its fixed part was measured on (6.18); other versions' `struct bpf_htab` may
        // differ by some hundred bytes. Before 6.4 memlock is a page-rounded footprint of
        // entries × (key + value).
        let est = sizing::hash_memory(m.max_entries, m.key_size, m.value_size, cpus).total;
        let kernel = m.memlock.expect("the kernel reports memlock");
        eprintln!(
            "{name}: {} entries, estimate {est} B, kernel {kernel} B",
            m.max_entries
        );
        let slack = if kernel_is(6, 18) {
            0
        } else if kernel_at_least(6, 4) {
            1024
        } else {
            8192 + est / 4
        };
        assert!(
            kernel.abs_diff(est) <= slack,
            "{name}: estimate {est} B, kernel {kernel} B"
        );
    }

    // Three clients, one after the other: two fit, the third stays with coturn.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = client(&lab);
        c.allocate(None).expect("allocate");
        c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
        clients.push(c);
    }
    let mut deltas = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let before = lab.nstat_udp_in(Host::Srv);
        let got = exchange(c, CHANNEL, i * N, N);
        deltas.push(lab.nstat_udp_in(Host::Srv) - before);
        assert_eq!(got, N, "client {i}: every datagram came back");
    }
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    eprintln!("datagrams at coturn's sockets per client: {deltas:?}");
    // the first two in XDP (a datagram or two to coturn while the neighbour is resolved) …
    assert!(deltas[0] <= 2 && deltas[1] <= 2, "{deltas:?}");
    // … the third entirely through coturn's sockets: from the client and from the peer
    assert!(deltas[2] >= 2 * N as u64, "{deltas:?}");
    assert_eq!(exit.counter("LEARN_ALLOC"), 2, "{}", exit.output);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 2, "{}", exit.output);
    assert!(exit.counter("STATE_FULL") >= 1, "{}", exit.output);
    let relayed = exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT");
    assert!(
        relayed + deltas[0] + deltas[1] == 4 * N as u64,
        "{relayed} relayed in XDP, {deltas:?}:\n{}",
        exit.output
    );
    assert_clean(&lab);
}

/// The possible CPUs, as the kernel sizes per-CPU spares by them.
fn libbpf_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    // "0-1" or "0"
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The running kernel's `(major, minor)`.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0))
}

fn kernel_is(major: u32, minor: u32) -> bool {
    kernel_version() == (major, minor)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version() >= (major, minor)
}
