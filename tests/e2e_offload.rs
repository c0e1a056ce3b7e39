//! End to end with the real coturn: a TURN client allocates with long-term credentials, binds a
//! channel and exchanges datagrams with an echo peer while the agent offloads them; the server's
//! sockets must not see the data, the captures must show good checksums, and after Ctrl+C the
//! same exchange goes through coturn alone.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use turn_bpf_testkit::agent::AgentProc;
use turn_bpf_testkit::lab::{self, Host, Lab};

use common::*;

const CHANNEL: u16 = 0x4000;
const N: usize = 1000;

/// tcpdump in a namespace, writing its verbose decode to a file; stopped on drop.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(lab: &Lab, host: Host, name: &str) -> Capture {
        let file = log_path(name);
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(host),
                "tcpdump",
                "-i",
                "eth0",
                "-nn",
                "-vv",
                "-l",
            ])
            .arg("udp")
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(1500));
        Capture { child, file }
    }

    /// (packets with a verified checksum, packets with a bad one)
    fn finish(mut self) -> (usize, usize, String) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGINT,
        );
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let ok = text.matches("udp sum ok").count();
        let bad = text.matches("bad udp cksum").count();
        (ok, bad, text)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rust_client_datagrams_are_relayed_in_the_kernel_byte_exact() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-e2e1", &[]).unwrap();
    let echo = Echo::start(&lab, 7000);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("e2e1"),
    )
    .unwrap();

    let mut c = client(&lab);
    let alloc = c.allocate(None).expect("allocate");
    assert_eq!(alloc.relayed.ip(), std::net::IpAddr::V4(lab::RELAY_V4));
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");

    let cap_peer = Capture::start(&lab, Host::Peer, "e2e1-peer-cap");
    let cap_cli = Capture::start(&lab, Host::Cli, "e2e1-cli-cap");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    let got = exchange(&c, CHANNEL, 0, N);
    let srv_after = lab.nstat_udp_in(Host::Srv);
    let (peer_ok, peer_bad, peer_text) = cap_peer.finish();
    let (cli_ok, cli_bad, cli_text) = cap_cli.finish();

    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);
    assert_eq!(
        got, N,
        "all {N} datagrams (1..=1400 bytes) come back byte-exact"
    );
    // Every datagram is accounted for: relayed in XDP, or passed to coturn because the server had
    // no ARP entry for the next hop yet (the kernel resolves it; the first datagram or two).
    let no_neigh = exit.counter("PASS_NO_NEIGH");
    assert!(no_neigh <= 2, "{}", exit.output);
    assert_eq!(
        exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT") + no_neigh,
        2 * N as u64,
        "{}",
        exit.output
    );
    assert!(
        exit.counter("RELAYED_TO_PEER") >= N as u64 - 2
            && exit.counter("RELAYED_TO_CLIENT") >= N as u64 - 2
    );
    assert_eq!(exit.counter("LEARN_ALLOC"), 1);
    assert_eq!(exit.counter("LEARN_CHANNEL"), 1);
    assert_eq!(exit.counter("ABORTED"), 0);
    assert!(
        exit.output.contains("channel learned: client"),
        "{}",
        exit.output
    );
    // The server's sockets saw only what the agent passed (no spill, no control meanwhile).
    assert_eq!(
        srv_after - srv_before,
        no_neigh,
        "datagrams reached the server's sockets"
    );
    // Every relayed packet carried a correct UDP checksum.
    assert_eq!(peer_bad, 0, "bad checksums at the peer:\n{peer_text}");
    assert_eq!(cli_bad, 0, "bad checksums at the client:\n{cli_text}");
    assert!(
        peer_ok >= 2 * N,
        "peer capture verified {peer_ok} checksums:\n{peer_text}"
    );
    assert!(
        cli_ok >= 2 * N,
        "client capture verified {cli_ok} checksums"
    );

    // Agent gone: the same exchange through coturn alone.
    let srv_before = lab.nstat_udp_in(Host::Srv);
    let got = exchange(&c, CHANNEL, N, 200);
    let srv_after = lab.nstat_udp_in(Host::Srv);
    assert_eq!(got, 200, "coturn alone relays after the agent stopped");
    assert!(
        srv_after - srv_before >= 400,
        "coturn's sockets carried the data again"
    );
    echo.stop();
}

#[test]
fn spill_every_n_goes_through_the_server() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-e2e2", &[]).unwrap();
    let echo = Echo::start(&lab, 7001);
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &[
            "--enable-forwarding",
            "--spill-every",
            "10",
            "turn0",
            "relay0",
        ],
        &log_path("e2e2"),
    )
    .unwrap();
    let mut c = client(&lab);
    c.allocate(None).expect("allocate");
    c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
    let srv_before = lab.nstat_udp_in(Host::Srv);
    let got = exchange(&c, CHANNEL, 0, 300);
    let srv_after = lab.nstat_udp_in(Host::Srv);
    let exit = agent.stop(Signal::SIGINT).unwrap();
    assert_eq!(got, 300);
    let spilled = exit.counter("PASS_SPILL");
    // Every 10th datagram of each direction that got as far as the spill check (a datagram passed
    // for a missing ARP entry never gets there).
    assert!(
        (58..=60).contains(&spilled),
        "every 10th of 300 each way: {}",
        exit.output
    );
    let no_neigh = exit.counter("PASS_NO_NEIGH");
    assert_eq!(
        exit.counter("RELAYED_TO_PEER") + exit.counter("RELAYED_TO_CLIENT") + spilled + no_neigh,
        600
    );
    assert_eq!(
        srv_after - srv_before,
        spilled + no_neigh,
        "exactly what was passed reached the server"
    );
}

#[test]
fn turnutils_uclient_loses_nothing_through_the_offload() {
    skip_unless_lab!();
    let lab = Lab::up("tbt-e2e3", &[]).unwrap();
    let mut peer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(Host::Peer),
            "turnutils_peer",
            "-L",
            "198.51.100.2",
            "-p",
            "3480",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer");
    let agent = AgentProc::start_ready(
        &agent_bin(),
        &lab.ns(Host::Srv),
        &["--enable-forwarding", "turn0", "relay0"],
        &log_path("e2e3"),
    )
    .unwrap();
    let out = lab.exec(
        Host::Cli,
        &[
            "timeout",
            "60",
            "turnutils_uclient",
            "-u",
            lab::TURN_USER,
            "-w",
            lab::TURN_PASS,
            "-e",
            "198.51.100.2",
            "-r",
            "3480",
            "-n",
            "500",
            "-m",
            "1",
            "-l",
            "400",
            "-c",
            "192.0.2.1",
        ],
    );
    let exit = agent.stop(Signal::SIGINT).unwrap();
    let _ = peer.kill();
    let _ = peer.wait();
    let out = out.unwrap();
    assert!(out.contains("tot_recv_msgs=500"), "{out}");
    assert!(out.contains("Total lost packets 0 (0.000000%)"), "{out}");
    let no_neigh = exit.counter("PASS_NO_NEIGH");
    assert!(no_neigh <= 2, "{}", exit.output);
    assert!(
        exit.counter("RELAYED_TO_PEER") + no_neigh >= 500,
        "{}",
        exit.output
    );
    assert!(
        exit.counter("RELAYED_TO_CLIENT") + no_neigh >= 500,
        "{}",
        exit.output
    );
}

/// coturn behind 1:1 NAT: `--external-ip PUBLIC/PRIVATE` makes XOR-RELAYED-ADDRESS a public
/// address that is on no local interface. The agent takes the mapping from coturn's own command
/// line, and an explicit `--external-ip` saying the same changes nothing: offloaded both ways.
/// (A relayed address that is neither local nor mapped is left to the server: bpf_learning.)
#[test]
fn external_ip_relayed_addresses_are_offloaded_with_the_servers_mapping() {
    skip_unless_lab!();
    const PUBLIC: &str = "203.0.113.9";
    let lab = Lab::up("tbt-e2e4", &["--external-ip", "203.0.113.9/198.51.100.1"]).unwrap();
    for ip in [lab::CLIENT_V4.to_string(), lab::PEER_V4.to_string()] {
        lab.exec(Host::Srv, &["ping", "-c", "1", "-W", "1", &ip])
            .unwrap();
    }
    let echo = Echo::start(&lab, 7002);

    for mapped in [false, true] {
        let mut args = vec!["--enable-forwarding", "turn0", "relay0"];
        if mapped {
            args.extend(["--external-ip", "203.0.113.9=198.51.100.1"]);
        }
        let agent =
            AgentProc::start_ready(&agent_bin(), &lab.ns(Host::Srv), &args, &log_path("e2e4"))
                .unwrap();
        let mut c = client(&lab);
        let alloc = c.allocate(None).expect("allocate");
        assert_eq!(
            alloc.relayed.ip().to_string(),
            PUBLIC,
            "coturn advertises the public address"
        );
        c.channel_bind(CHANNEL, echo.addr).expect("channel bind");
        let srv_before = lab.nstat_udp_in(Host::Srv);
        assert_eq!(exchange(&c, CHANNEL, 0, 50), 50);
        let srv_seen = lab.nstat_udp_in(Host::Srv) - srv_before;
        let exit = agent.stop(Signal::SIGINT).unwrap();
        assert_eq!(exit.status.code(), Some(0));
        assert_eq!(exit.counter("LEARN_ALLOC"), 1, "{}", exit.output);
        assert_eq!(exit.counter("RELAYED_TO_PEER"), 50, "{}", exit.output);
        assert_eq!(exit.counter("RELAYED_TO_CLIENT"), 50, "{}", exit.output);
        assert_eq!(exit.counter("RELAY_NOT_LOCAL"), 0, "{}", exit.output);
        assert_eq!(srv_seen, 0, "explicit mapping {mapped}");
        assert!(
            exit.output.contains("relay 198.51.100.1:"),
            "{}",
            exit.output
        );
    }
    echo.stop();
}
